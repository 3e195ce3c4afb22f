//! The classic BPF socket filter of the AF_PACKET source, generated from the port list.
//!
//! It runs in the kernel for every frame the interface receives, before anything is copied
//! to the ring, so the agent only ever sees candidates: UDP to a watched port whose payload
//! starts with `NOTIFY ` (after at most four keep-alive CRLFs); TCP segments to a watched port
//! that carry data or SYN, FIN or RST, for stream reassembly; every later IP fragment of UDP or
//! TCP (classic BPF keeps no state, so the agent's copy of the program's fragment map picks
//! those of a NOTIFY); plus the first bytes of payloads that start like a TLS or DTLS record,
//! so the TLS warning works on this path too. It is a pre-filter only: the agent runs the shared capture
//! decision (`sipnotify_common::decide`) on what it receives and counts that.
//!
//! Classic BPF (not eBPF) because it is accepted by every kernel since 2.2 without any
//! capability beyond the socket's own CAP_NET_RAW, which is what this path exists for.
//! What it handles, by construction:
//! - frames sent by this host are refused (`SKF_AD_PKTTYPE`), as XDP sees only receptions;
//! - Ethernet with zero, one or two 802.1Q/802.1ad tags left in the frame (a tag the NIC or
//!   the stack stripped is in the ring's metadata instead, and the frame then looks untagged);
//! - IPv4 with any IHL, fragments included;
//! - IPv6 without extension headers, or with a fragment header first.
//!
//! Jump offsets in classic BPF are 8 bits, so each link-layer offset (14, 18 or 22 bytes) gets
//! its own self-contained section with its own returns, and the sections are chained.

use std::collections::HashMap;

/// Bytes passed for a TLS or DTLS record start: every header plus the record's first bytes.
pub const TLS_SNAPLEN: u32 = 256;
/// Bytes passed for a NOTIFY: all of it.
pub const NOTIFY_SNAPLEN: u32 = 0x0004_0000;

/// Scratch slot holding where the IP datagram ends (its length fields, from the link header),
/// which tells a TCP payload from Ethernet padding.
const IP_END: u32 = 0;

/// `PACKET_OUTGOING`, as `SKF_AD_PKTTYPE` reports it.
const PACKET_OUTGOING: u32 = 4;

// Opcodes (linux/filter.h); built from the libc constants so the numbers are not retyped.
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LD_W_IND: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_IND) as u16;
const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
const LDX_IMM: u16 = (libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM) as u16;
const LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
const LD_MEM: u16 = (libc::BPF_LD | libc::BPF_MEM) as u16;
const ST: u16 = libc::BPF_ST as u16;
const ADD_K: u16 = (libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K) as u16;
const ADD_X: u16 = (libc::BPF_ALU | libc::BPF_ADD | libc::BPF_X) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const LSH_K: u16 = (libc::BPF_ALU | libc::BPF_LSH | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const JGT_X: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_X) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const TXA: u16 = (libc::BPF_MISC | libc::BPF_TXA) as u16;

/// `SKF_AD_OFF + SKF_AD_PKTTYPE`: where an absolute load reads the packet type.
const PKTTYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;

/// Why a filter could not be generated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// No port to watch.
    #[error("the socket filter needs at least one port")]
    NoPorts,
    /// A jump does not fit classic BPF's 8-bit offsets (too many ports).
    #[error("the socket filter for {ports} ports does not fit classic BPF's jump range")]
    TooLong {
        /// How many ports were asked for.
        ports: usize,
    },
}

/// Where a jump goes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The next instruction.
    Next,
    /// A label.
    Label(&'static str, u32),
}

/// One instruction before its jumps are resolved.
struct Insn {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
}

/// A tiny assembler: instructions, labels (a name and the section they belong to), and jumps
/// resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<(&'static str, u32), usize>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.insns.push(Insn {
            code,
            jt: Target::Next,
            jf: Target::Next,
            k,
        });
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn { code, jt, jf, k });
    }

    fn label(&mut self, name: &'static str, section: u32) {
        self.labels.insert((name, section), self.insns.len());
    }

    fn finish(self, ports: usize) -> Result<Vec<libc::sock_filter>, FilterError> {
        let resolve = |at: usize, target: Target| -> Result<u8, FilterError> {
            let to = match target {
                Target::Next => at + 1,
                Target::Label(name, section) => *self
                    .labels
                    .get(&(name, section))
                    .ok_or(FilterError::TooLong { ports })?,
            };
            to.checked_sub(at + 1)
                .and_then(|off| u8::try_from(off).ok())
                .ok_or(FilterError::TooLong { ports })
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(at, insn)| {
                if insn.code == JA {
                    // An unconditional jump carries its offset in `k`.
                    return Ok(libc::sock_filter {
                        code: insn.code,
                        jt: 0,
                        jf: 0,
                        k: u32::from(resolve(at, insn.jt)?),
                    });
                }
                Ok(libc::sock_filter {
                    code: insn.code,
                    jt: resolve(at, insn.jt)?,
                    jf: resolve(at, insn.jf)?,
                    k: insn.k,
                })
            })
            .collect()
    }
}

/// Generates the filter for `ports`.
pub fn notify_filter(ports: &[u16]) -> Result<Vec<libc::sock_filter>, FilterError> {
    if ports.is_empty() {
        return Err(FilterError::NoPorts);
    }
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let mut a = Asm::default();
    let next = Target::Next;
    let to = |name, section| Target::Label(name, section);

    // Receptions only.
    a.op(LD_B_ABS, PKTTYPE);
    a.jump(JEQ_K, PACKET_OUTGOING, to("drop", 0), next);
    a.jump(JA, 0, to("ether", 14), next);
    a.label("drop", 0);
    a.op(RET_K, 0);

    for link in [14u32, 18, 22] {
        section(&mut a, link, &ports);
    }
    a.finish(ports.len())
}

/// The section for frames whose EtherType is at `link - 2`: dispatch on it, then IPv4 and
/// IPv6 into the UDP and TCP checks, with local returns.
fn section(a: &mut Asm, link: u32, ports: &[u16]) {
    let next = Target::Next;
    let to = |name, section| Target::Label(name, section);
    let drop = to("drop", link);
    let ethertype = link - 2;

    a.label("ether", link);
    a.op(LD_H_ABS, ethertype);
    a.jump(
        JEQ_K,
        u32::from(sipnotify_common::net::ETH_P_IPV4),
        to("ip4", link),
        next,
    );
    a.jump(
        JEQ_K,
        u32::from(sipnotify_common::net::ETH_P_IPV6),
        to("ip6", link),
        next,
    );
    if link < 22 {
        // One more tag (802.1Q or 802.1ad) moves everything four bytes on.
        a.jump(JEQ_K, 0x8100, to("ether", link + 4), next);
        a.jump(JEQ_K, 0x88a8, to("ether", link + 4), drop);
    } else {
        a.jump(JA, 0, drop, drop);
    }

    // IPv4: X = IHL * 4; M[IP_END] = the total length. Later fragments carry no transport
    // header: those of UDP and TCP go to the agent, which follows the NOTIFYs among them.
    a.label("ip4", link);
    a.op(LD_H_ABS, link + 2);
    a.op(ST, IP_END);
    a.op(LD_H_ABS, link + 6);
    a.jump(JSET_K, 0x1fff, to("later4", link), next);
    a.op(LDX_MSH, link);
    a.op(LD_B_ABS, link + 9);
    a.jump(JEQ_K, 17, to("udp", link), next);
    a.jump(JEQ_K, 6, to("tcp", link), drop);
    a.label("later4", link);
    a.op(LD_B_ABS, link + 9);
    a.jump(JEQ_K, 17, to("pass", link), next);
    a.jump(JEQ_K, 6, to("pass", link), drop);

    // IPv6 without extension headers: X = 40; M[IP_END] = 40 + the payload length. A
    // fragment header goes to the agent whole, first fragment or not.
    a.label("ip6", link);
    a.op(LD_H_ABS, link + 4);
    a.op(ADD_K, 40);
    a.op(ST, IP_END);
    a.op(LDX_IMM, 40);
    a.op(LD_B_ABS, link + 6);
    a.jump(JEQ_K, 17, to("udp", link), next);
    a.jump(
        JEQ_K,
        u32::from(sipnotify_common::net::IPV6_FRAGMENT),
        to("pass", link),
        next,
    );
    a.jump(JEQ_K, 6, to("tcp", link), drop);

    // UDP: the destination port, then the payload at X + link + 8.
    a.label("udp", link);
    a.op(LD_H_IND, link + 2);
    port_checks(a, ports, to("udp_watched", link), drop);
    a.label("udp_watched", link);
    let payload = link + 8;
    a.op(LD_H_IND, payload);
    a.jump(JEQ_K, 0x1603, to("tls", link), next);
    a.jump(JEQ_K, 0x16fe, to("tls", link), next);
    // Up to MAX_LEADING_CRLF keep-alive CRLFs, unrolled: X moves two bytes per CRLF.
    for _ in 0..sipnotify_common::decide::MAX_LEADING_CRLF {
        a.jump(JEQ_K, 0x0d0a, next, to("notify", link));
        a.op(TXA, 0);
        a.op(ADD_K, 2);
        a.op(TAX, 0);
        a.op(LD_H_IND, payload);
    }
    a.label("notify", link);
    a.op(LD_W_IND, payload);
    a.jump(JEQ_K, u32::from_be_bytes(*b"NOTI"), next, drop);
    a.op(LD_H_IND, payload + 4);
    a.jump(JEQ_K, u32::from(u16::from_be_bytes(*b"FY")), next, drop);
    a.op(LD_B_IND, payload + 6);
    a.jump(JEQ_K, u32::from(b' '), to("pass", link), drop);

    // TCP: the destination port; SYN, FIN or RST pass; otherwise X += data offset * 4, and a
    // segment whose IP length ends past its headers has data: a TLS record start, or a
    // piece of the SIP stream.
    a.label("tcp", link);
    a.op(LD_H_IND, link + 2);
    port_checks(a, ports, to("tcp_watched", link), drop);
    a.label("tcp_watched", link);
    a.op(LD_B_IND, link + 13);
    a.jump(JSET_K, 0x07, to("pass", link), next);
    a.op(LD_B_IND, link + 12);
    a.op(RSH_K, 4);
    a.op(LSH_K, 2);
    a.op(ADD_X, 0);
    a.op(TAX, 0);
    a.op(LD_MEM, IP_END);
    a.jump(JGT_X, 0, next, drop);
    a.op(LD_B_IND, link);
    a.jump(JEQ_K, 0x16, to("tls", link), to("pass", link));

    a.label("pass", link);
    a.op(RET_K, NOTIFY_SNAPLEN);
    a.label("tls", link);
    a.op(RET_K, TLS_SNAPLEN);
    a.label("drop", link);
    a.op(RET_K, 0);
}

/// `A == port` for each port: to `hit` on a match, to `miss` after the last.
fn port_checks(a: &mut Asm, ports: &[u16], hit: Target, miss: Target) {
    for (i, &port) in ports.iter().enumerate() {
        let jf = if i + 1 == ports.len() {
            miss
        } else {
            Target::Next
        };
        a.jump(JEQ_K, u32::from(port), hit, jf);
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, VlanId};

    use super::*;

    /// A classic BPF interpreter for the instructions the generator emits, with the kernel's
    /// rule that a load past the end of the packet ends the filter with 0.
    fn run(filter: &[libc::sock_filter], packet: &[u8], pkttype: u32) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let mut mem = [0u32; 16];
        let load = |at: u32, n: usize| -> Option<u32> {
            if at == PKTTYPE {
                return Some(pkttype);
            }
            let at = usize::try_from(at).ok()?;
            let bytes = packet.get(at..at.checked_add(n)?)?;
            Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
        };
        loop {
            let insn = filter[pc];
            pc += 1;
            let loaded = match insn.code {
                LD_B_ABS => Some(load(insn.k, 1)),
                LD_H_ABS => Some(load(insn.k, 2)),
                LD_W_IND => Some(load(x.wrapping_add(insn.k), 4)),
                LD_H_IND => Some(load(x.wrapping_add(insn.k), 2)),
                LD_B_IND => Some(load(x.wrapping_add(insn.k), 1)),
                _ => None,
            };
            if let Some(value) = loaded {
                match value {
                    Some(v) => a = v,
                    None => return 0,
                }
                continue;
            }
            match insn.code {
                LDX_IMM => x = insn.k,
                LD_MEM => a = mem[insn.k as usize],
                ST => mem[insn.k as usize] = a,
                LDX_MSH => match load(insn.k, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                ADD_K => a = a.wrapping_add(insn.k),
                ADD_X => a = a.wrapping_add(x),
                RSH_K => a >>= insn.k,
                LSH_K => a <<= insn.k,
                TAX => x = a,
                TXA => a = x,
                RET_K => return insn.k,
                JA => pc += insn.k as usize,
                JEQ_K | JSET_K | JGT_X => {
                    let taken = match insn.code {
                        JEQ_K => a == insn.k,
                        JSET_K => a & insn.k != 0,
                        _ => a > x,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                other => panic!("opcode {other:#x} not emitted"),
            }
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const NOTIFY: &[u8] = b"NOTIFY sip:a@b SIP/2.0\r\n\r\n";
    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
    const HOST: u32 = 0;

    fn udp4(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5060, port)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn accepts(filter: &[libc::sock_filter], frame: &[u8]) -> u32 {
        run(filter, frame, HOST)
    }

    #[test]
    fn passes_notifies_to_watched_ports_only() {
        let filter = notify_filter(&[5061, 5070]).unwrap();
        assert_eq!(accepts(&filter, &udp4(5061, NOTIFY)), NOTIFY_SNAPLEN);
        assert_eq!(accepts(&filter, &udp4(5070, NOTIFY)), NOTIFY_SNAPLEN);
        assert_eq!(accepts(&filter, &udp4(5060, NOTIFY)), 0);
        assert_eq!(accepts(&filter, &udp4(5061, b"INVITE sip:a SIP/2.0")), 0);
        assert_eq!(accepts(&filter, &udp4(5061, b"NOTIFYX")), 0);
        assert_eq!(accepts(&filter, &udp4(5061, b"NOTIF")), 0);
        assert_eq!(accepts(&filter, &udp4(5061, b"")), 0);
        // Sent by this host: XDP would not see it, so neither does this path.
        assert_eq!(run(&filter, &udp4(5061, NOTIFY), PACKET_OUTGOING), 0);
    }

    #[test]
    fn walks_ihl_vlan_tags_and_ipv6() {
        let filter = notify_filter(&[5061]).unwrap();
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [1; 4], [2; 4]).unwrap();
        ip.options = [1, 1, 1, 1, 1, 1, 1, 0][..].try_into().unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(1, 5061)
            .write(&mut frame, NOTIFY)
            .unwrap();
        assert_eq!(accepts(&filter, &frame), NOTIFY_SNAPLEN, "IHL 7");

        let vlan = VlanId::try_new(210).unwrap();
        for tags in [1, 2] {
            let builder = || {
                let eth = PacketBuilder::ethernet2(MAC, MAC);
                if tags == 1 {
                    eth.single_vlan(vlan)
                } else {
                    eth.double_vlan(vlan, vlan)
                }
            };
            let mut v4 = Vec::new();
            builder()
                .ipv4([1; 4], [2; 4], 64)
                .udp(1, 5061)
                .write(&mut v4, NOTIFY)
                .unwrap();
            assert_eq!(accepts(&filter, &v4), NOTIFY_SNAPLEN, "{tags} tags, v4");
            let mut v6 = Vec::new();
            builder()
                .ipv6([1; 16], [2; 16], 64)
                .udp(1, 5061)
                .write(&mut v6, NOTIFY)
                .unwrap();
            assert_eq!(accepts(&filter, &v6), NOTIFY_SNAPLEN, "{tags} tags, v6");
        }
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv6([1; 16], [2; 16], 64)
            .udp(1, 5062)
            .write(&mut v6, NOTIFY)
            .unwrap();
        assert_eq!(accepts(&filter, &v6), 0, "v6, other port");
    }

    #[test]
    fn fragments_crlfs_and_tls() {
        let filter = notify_filter(&[5061]).unwrap();
        let mut first = udp4(5061, NOTIFY);
        first[20] |= 0x20; // MF, offset 0
        assert_eq!(accepts(&filter, &first), NOTIFY_SNAPLEN);
        // Later fragments carry no port: the agent's fragment map judges them.
        let mut later = udp4(5061, NOTIFY);
        later[21] = 8;
        assert_eq!(accepts(&filter, &later), NOTIFY_SNAPLEN);
        later[23] = 1; // ICMP
        assert_eq!(accepts(&filter, &later), 0);

        for pairs in 0..=4 {
            let mut payload = b"\r\n".repeat(pairs);
            payload.extend_from_slice(NOTIFY);
            assert_eq!(
                accepts(&filter, &udp4(5061, &payload)),
                NOTIFY_SNAPLEN,
                "{pairs}"
            );
        }
        let mut five = b"\r\n".repeat(5);
        five.extend_from_slice(NOTIFY);
        assert_eq!(accepts(&filter, &udp4(5061, &five)), 0);

        assert_eq!(accepts(&filter, &udp4(5061, CLIENT_HELLO)), TLS_SNAPLEN);
        assert_eq!(
            accepts(&filter, &udp4(5061, &[0x16, 0xfe, 0xfd])),
            TLS_SNAPLEN
        );
        let tcp = |port, payload: &[u8]| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(MAC, MAC)
                .ipv4([1; 4], [2; 4], 64)
                .tcp(40000, port, 1, 1000)
                .write(&mut frame, payload)
                .unwrap();
            frame
        };
        assert_eq!(accepts(&filter, &tcp(5061, CLIENT_HELLO)), TLS_SNAPLEN);
        assert_eq!(accepts(&filter, &tcp(443, CLIENT_HELLO)), 0);
    }

    #[test]
    fn tcp_segments_with_data_or_syn_fin_rst_pass() {
        let filter = notify_filter(&[5061]).unwrap();
        let tcp = |port, payload: &[u8], v6: bool, syn: bool| {
            let mut frame = Vec::new();
            let eth = PacketBuilder::ethernet2(MAC, MAC);
            let ip = if v6 {
                eth.ipv6([1; 16], [2; 16], 64)
            } else {
                eth.ipv4([1; 4], [2; 4], 64)
            };
            let mut tcp = ip.tcp(40000, port, 1, 1000);
            if syn {
                tcp = tcp.syn();
            }
            tcp.write(&mut frame, payload).unwrap();
            frame
        };
        for v6 in [false, true] {
            // Any piece of a stream: the middle of a NOTIFY, or a single byte.
            assert_eq!(
                accepts(&filter, &tcp(5061, b"Call-ID: x\r\n", v6, false)),
                NOTIFY_SNAPLEN
            );
            assert_eq!(
                accepts(&filter, &tcp(5061, b"N", v6, false)),
                NOTIFY_SNAPLEN
            );
            assert_eq!(accepts(&filter, &tcp(5061, b"", v6, true)), NOTIFY_SNAPLEN);
            assert_eq!(
                accepts(&filter, &tcp(5061, NOTIFY, v6, false)),
                NOTIFY_SNAPLEN
            );
            assert_eq!(accepts(&filter, &tcp(5062, NOTIFY, v6, false)), 0);
            assert_eq!(
                accepts(&filter, &tcp(5061, b"", v6, false)),
                0,
                "a bare ACK"
            );
        }
        // A bare ACK padded to the Ethernet minimum has no data either.
        let mut padded = tcp(5061, b"", false, false);
        padded.resize(60, 0);
        assert_eq!(accepts(&filter, &padded), 0);
        // IPv6 fragments go to the agent whole.
        let mut fragment = tcp(5061, b"", true, false);
        fragment[14 + 6] = 44;
        assert_eq!(accepts(&filter, &fragment), NOTIFY_SNAPLEN);
    }

    #[test]
    fn sixteen_ports_fit_and_no_port_is_an_error() {
        let ports: Vec<u16> = (5061..5077).collect();
        let filter = notify_filter(&ports).unwrap();
        assert!(filter.len() < usize::from(u16::MAX));
        for &port in &ports {
            assert_eq!(
                accepts(&filter, &udp4(port, NOTIFY)),
                NOTIFY_SNAPLEN,
                "{port}"
            );
        }
        assert_eq!(accepts(&filter, &udp4(5077, NOTIFY)), 0);
        assert!(matches!(notify_filter(&[]), Err(FilterError::NoPorts)));
    }
}
