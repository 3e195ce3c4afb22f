//! End to end over a real veth pair: the agent attached to the receiving end prints every
//! NOTIFY that crosses the wire, exactly once, and every datagram (NOTIFY or not) still
//! reaches the socket bound on the receiving side: the XDP program observes and never drops.

mod support;

use std::{
    collections::BTreeSet,
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{VethPair, call_id, call_uuid, genesys_notify, start_agent};

/// Counts datagrams arriving on `socket` until told to stop.
fn count_received(socket: UdpSocket, done: Arc<AtomicUsize>) -> thread::JoinHandle<usize> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut received = 0;
        loop {
            match socket.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(_) if done.load(Ordering::Relaxed) == 1 => return received,
                Err(_) => {}
            }
        }
    })
}

#[test]
fn every_notify_is_printed_once_and_every_datagram_is_delivered() {
    if !support::privileged("every_notify_is_printed_once_and_every_datagram_is_delivered") {
        return;
    }
    let net = VethPair::new("cap");
    let agent = start_agent(
        &net.receiver,
        &[
            "run",
            "--iface",
            "veth1",
            "--port",
            "5061",
            "--stdout",
            "--no-bridge",
        ],
    );

    let done = Arc::new(AtomicUsize::new(0));
    let watched4 = count_received(net.receiver.udp("10.200.0.2:5061"), done.clone());
    let other4 = count_received(net.receiver.udp("10.200.0.2:5060"), done.clone());
    let watched6 = count_received(net.receiver.udp("[fd00:200::2]:5061"), done.clone());

    const V4: u32 = 300;
    const V6: u32 = 100;
    const OTHER: u32 = 100;
    net.sender.enter(|| {
        let s4 = UdpSocket::bind("10.200.0.1:0").unwrap();
        let s6 = UdpSocket::bind("[fd00:200::1]:0").unwrap();
        for i in 0..V4 + V6 {
            let event = if i % 2 == 0 { "talk" } else { "hold" };
            let message = genesys_notify(i, "1002", event);
            if i < V4 {
                s4.send_to(&message, "10.200.0.2:5061").unwrap();
            } else {
                s6.send_to(&message, "[fd00:200::2]:5061").unwrap();
            }
            if i < OTHER {
                // Traffic the agent must ignore: other methods, an unwatched port.
                s4.send_to(
                    b"INVITE sip:1002@10.200.0.2 SIP/2.0\r\n\r\n",
                    "10.200.0.2:5061",
                )
                .unwrap();
                s4.send_to(&message, "10.200.0.2:5060").unwrap();
            }
            if i % 50 == 49 {
                // Stay well inside the receivers' socket buffers.
                thread::sleep(Duration::from_millis(5));
            }
        }
    });

    // Give the 1 ms ring poll and stdout a moment, then stop the agent.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // The metrics endpoint counts what crossed the wire.
    let (status, health) = net.receiver.http_get("127.0.0.1:9464", "/healthz");
    assert!(status.contains("200"), "{status}: {health}");
    let (_, text) = net.receiver.http_get("127.0.0.1:9464", "/metrics");
    let kernel = |outcome| {
        support::metric(
            &text,
            "sipnotify_kernel_packets_total",
            &[("iface", "veth1"), ("outcome", outcome)],
        )
    };
    let notifies = f64::from(V4 + V6);
    assert_eq!(kernel("notify_matched"), Some(notifies), "{text}");
    assert_eq!(kernel("copied"), Some(notifies));
    assert_eq!(kernel("udp_watched"), Some(notifies + f64::from(OTHER)));
    assert_eq!(kernel("ringbuf_full"), Some(0.0));
    assert_eq!(
        support::metric(&text, "sipnotify_notifications_total", &[]),
        Some(notifies)
    );

    let stdout = agent.stop();
    done.store(1, Ordering::Relaxed);

    assert_eq!(
        watched4.join().unwrap(),
        (V4 + OTHER) as usize,
        "IPv4 :5061"
    );
    assert_eq!(other4.join().unwrap(), OTHER as usize, "IPv4 :5060");
    assert_eq!(watched6.join().unwrap(), V6 as usize, "IPv6 :5061");

    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect();
    assert_eq!(lines.len(), (V4 + V6) as usize, "one line per NOTIFY");
    let seen: BTreeSet<String> = lines
        .iter()
        .map(|v| v["call_id"].as_str().unwrap().to_owned())
        .collect();
    let sent: BTreeSet<String> = (0..V4 + V6).map(call_id).collect();
    assert_eq!(seen, sent);
    for line in &lines {
        let id = line["call_id"].as_str().unwrap();
        let i = u32::from_str_radix(&id[..8], 16).unwrap();
        assert_eq!(line["dn"], "1002");
        assert_eq!(line["call_uuid"], call_uuid(i));
        assert_eq!(line["event"], if i % 2 == 0 { "talk" } else { "hold" });
    }
}
