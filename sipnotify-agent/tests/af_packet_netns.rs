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
use support::{RECEIVER_MAC_TEXT, VethPair, call_id, genesys_notify, send_raw, tagged};

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
        .ip(&["link", "set", "veth1", "address", RECEIVER_MAC_TEXT]);
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
            let mut fragments = capture::FragmentFollower::default();
            let mut seen: BTreeMap<String, (u16, u8)> = BTreeMap::new();
            let ifindex = socket.ifindex();
            loop {
                let last = done.load(Ordering::Acquire);
                socket.drain(|frame| {
                    let spliced = frame.spliced();
                    let inspected = capture::inspect(
                        &spliced,
                        &config,
                        &sipnotify_agent::source_filter::SourceFilter::default(),
                        &mut fragments,
                        &mut counts,
                        0,
                        ifindex,
                    );
                    if let Ok(record) = inspected {
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
