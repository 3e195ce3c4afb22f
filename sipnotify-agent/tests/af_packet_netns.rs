//! The AF_PACKET source over a real veth pair, without the rest of the agent: the kernel's
//! classic BPF pre-filter and the TPACKET_V3 ring deliver every NOTIFY once (IPv4 and IPv6,
//! untagged and 802.1Q-tagged), the shared decision counts every frame it is shown, and every
//! untagged datagram still reaches its socket: a packet socket only ever receives copies.

mod support;

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use sipnotify_agent::capture::{
    self,
    af_packet::{AfPacketSettings, PacketSocket},
};
use sipnotify_common::{Counter, CounterSet, SipConfig};
use support::{VethPair, call_id, genesys_notify};

/// The receiver's MAC, set by the test so tagged frames can be addressed to it.
const RECEIVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];

/// An 802.1Q-tagged (VLAN 210) frame carrying `payload` to the receiver's :5061. Sent raw:
/// this kernel has no VLAN devices (CONFIG_VLAN_8021Q), so the tag cannot come from a
/// socket, and the receiving stack discards these frames after capture saw them.
fn tagged(v6: bool, payload: &[u8]) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], RECEIVER_MAC)
        .single_vlan(etherparse::VlanId::try_new(210).unwrap());
    let mut frame = Vec::new();
    if v6 {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0]);
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        eth.ipv6(src, dst, 64)
            .udp(40000, 5061)
            .write(&mut frame, payload)
            .unwrap();
    } else {
        eth.ipv4([10, 200, 0, 1], [10, 200, 0, 2], 64)
            .udp(40000, 5061)
            .write(&mut frame, payload)
            .unwrap();
    }
    frame
}

/// Sends `frame` raw on the calling thread's `veth0`.
fn send_raw(frame: &[u8]) {
    // SAFETY: plain socket(2); checked, and closed at the end of this function.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `fd` is ours.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; family and index are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = sipnotify_agent::bpf::interface_index("veth0").unwrap() as i32;
    addr.sll_halen = 6;
    // SAFETY: `frame` and `addr` are valid for the call.
    let sent = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// Receives on `socket` until it has been quiet for a second; returns the datagram count.
fn count_until_quiet(socket: &UdpSocket) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 65536];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn the_ring_sees_each_notify_once_and_the_host_every_datagram() {
    if !support::privileged("the_ring_sees_each_notify_once_and_the_host_every_datagram") {
        return;
    }
    let net = VethPair::new("afp");
    net.receiver
        .ip(&["link", "set", "veth1", "address", "02:00:00:00:02:02"]);
    let settings = AfPacketSettings {
        ports: vec![5061],
        ring_bytes: 1 << 20,
        block_timeout: Duration::from_millis(1),
    };
    let mut socket = net.receiver.enter(|| {
        let ifindex = sipnotify_agent::bpf::interface_index("veth1").unwrap();
        PacketSocket::open("veth1", ifindex, &settings).expect("open the packet socket")
    });
    let targets = ["10.200.0.2:5061", "[fd00:200::2]:5061"];
    // Counted while the sender runs, so no socket buffer overflows.
    let receivers: Vec<_> = targets
        .iter()
        .map(|t| {
            let socket = net.receiver.udp(t);
            thread::spawn(move || count_until_quiet(&socket))
        })
        .collect();
    let other = net.receiver.udp("10.200.0.2:5060");
    let other = thread::spawn(move || count_until_quiet(&other));

    // Drained while the sender runs, as the agent drains: every millisecond.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        thread::spawn(move || {
            let mut config = SipConfig::empty();
            config.watch(5061);
            let mut counts = CounterSet::default();
            let mut seen: BTreeMap<String, (u16, u8)> = BTreeMap::new();
            let ifindex = socket.ifindex();
            loop {
                let last = done.load(Ordering::Acquire);
                socket.drain(|frame| {
                    let spliced = frame.spliced();
                    if let Ok(record) = capture::inspect(&spliced, &config, &mut counts, 0, ifindex)
                    {
                        let text = String::from_utf8_lossy(record.payload);
                        let id = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Call-ID: "))
                            .unwrap_or_default()
                            .to_owned();
                        let header = record.header;
                        let previous = seen.insert(id, (header.vlan_tci, header.ip_version));
                        assert!(previous.is_none(), "a NOTIFY was delivered twice");
                    }
                });
                if last {
                    let (_, drops) = socket.statistics().unwrap();
                    return (seen, counts, drops);
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    const PER_TARGET: u32 = 100;
    const UNTAGGED: u32 = PER_TARGET * 2;
    const TAGGED: u32 = 100;
    net.sender.enter(|| {
        let s4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        let s6 = UdpSocket::bind("[::]:0").unwrap();
        for i in 0..PER_TARGET * targets.len() as u32 {
            let target = targets[(i % targets.len() as u32) as usize];
            let from = if target.starts_with('[') { &s6 } else { &s4 };
            let mut message = genesys_notify(i, "1002", "talk");
            if i % 5 == 0 {
                // Keep-alive CRLFs in front of the request line.
                message.splice(0..0, *b"\r\n\r\n");
            }
            from.send_to(&message, target).unwrap();
            // Traffic the filter must keep from the ring.
            from.send_to(b"INVITE sip:1002@x SIP/2.0\r\n\r\n", target)
                .unwrap();
            s4.send_to(&message, "10.200.0.2:5060").unwrap();
            if i % 20 == 19 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        // Tagged NOTIFYs, IPv4 and IPv6, numbered after the untagged ones.
        for i in 0..TAGGED {
            let message = genesys_notify(UNTAGGED + i, "1002", "hold");
            send_raw(&tagged(i % 2 == 1, &message));
            send_raw(&tagged(i % 2 == 1, b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
        }
    });

    // Blocks are handed over within the 1 ms block timeout; give the reader a few.
    thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Release);
    let (seen, counts, drops) = reader.join().unwrap();
    assert_eq!(drops, 0, "ring drops");

    let total = UNTAGGED + TAGGED;
    assert_eq!(seen.len(), total as usize, "every NOTIFY once");
    for i in 0..UNTAGGED {
        let target = targets[(i % targets.len() as u32) as usize];
        let expected = (0, if target.starts_with('[') { 6 } else { 4 });
        assert_eq!(seen[&call_id(i)], expected, "NOTIFY {i} to {target}");
    }
    for i in 0..TAGGED {
        // The NIC-stripped tag is put back: the record says VLAN 210, as XDP's would.
        let expected = (210, if i % 2 == 1 { 6 } else { 4 });
        assert_eq!(seen[&call_id(UNTAGGED + i)], expected, "tagged NOTIFY {i}");
    }
    // The pre-filter let only NOTIFYs through; each was counted once, with one outcome.
    assert_eq!(counts.get(Counter::Copied), u64::from(total));
    assert_eq!(counts.get(Counter::PacketsSeen), u64::from(total));
    assert_eq!(counts.outcomes(), counts.get(Counter::PacketsSeen));

    for (receiver, target) in receivers.into_iter().zip(targets) {
        assert_eq!(
            receiver.join().unwrap(),
            2 * PER_TARGET as usize,
            "datagrams to {target}"
        );
    }
    assert_eq!(
        other.join().unwrap(),
        UNTAGGED as usize,
        "datagrams to :5060"
    );
}
