//! `cargo xtask demo`: the main job end to end on an embedded default, on any fresh machine.
//!
//! Two private network namespaces joined by a veth pair stand in for the Genesys SIP Server
//! and the Asterisk host. On the Asterisk side run the real agent (XDP program attached to
//! the veth) and a local HTTPS bridge stand-in with a self-signed certificate. The SIP Server
//! side sends a realistic stream: calls ringing (INVITE, 180), `talk` NOTIFYs that Asterisk
//! never answers and so are retransmitted (T1 = 500 ms doubling, compressed 10×), a `hold`
//! later in the same dialog, OPTIONS keep-alives and a response or two. Then the demo shows
//! what the bridge received and the agent's counters, and removes everything it created.

use std::{
    net::UdpSocket,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sipnotify_testkit::{Agent, BridgeOptions, NamespacedBridge, VethPair, metric};

const CALLS: u32 = 12;

/// One in-dialog NOTIFY of call `call`, as the Genesys SIP Server sends it.
fn notify(call: u32, cseq: u32, event: &str) -> Vec<u8> {
    let dn = 1001 + call % 4;
    format!(
        "NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
From: sip:{caller}@192.168.210.81:5060;tag=A2BB77D7-EABF-4274-8BD4-6D98F1BD8715-{call}\r\n\
To: <sip:{dn}@192.168.210.81>;tag=f90c6227-8e6d-4205-a84d-6eda8248601f\r\n\
Call-ID: {call:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81\r\n\
CSeq: {cseq} NOTIFY\r\n\
Content-Length: 0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bKD15025DA-{call:04X}-{cseq}\r\n\
Contact: <sip:1003@192.168.210.81:5060>\r\n\
Event: {event}\r\n\
Subscription-State: active\r\n\
Max-Forwards: 70\r\n\
X-Genesys-CallUUID: UIVB8J6JE91C53UIM3VI59VHQ4{call:06}\r\n\r\n",
        caller = 5550100 + call,
    )
    .into_bytes()
}

fn other_sip(call: u32) -> [Vec<u8>; 3] {
    let invite = format!(
        "INVITE sip:{}@192.168.210.54:5061 SIP/2.0\r\nCall-ID: {call:08X}@192.168.210.81\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        1001 + call % 4
    );
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\nCall-ID: {call:08X}@192.168.210.81\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let options = "OPTIONS sip:192.168.210.54:5061 SIP/2.0\r\nCall-ID: keepalive@192.168.210.81\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_owned();
    [
        invite.into_bytes(),
        ringing.into_bytes(),
        options.into_bytes(),
    ]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: needs root (network namespaces and XDP); run `sudo cargo xtask demo`");
        std::process::exit(1);
    }
    let agent_binary =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sipnotify-agent");
    let agent_binary = agent_binary.to_str().unwrap().to_owned();

    println!("== sipnotify demo ==");
    println!("1. two network namespaces joined by a veth pair:");
    println!("     SIP Server 10.200.0.1 (veth0)  <->  Asterisk host 10.200.0.2 (veth1)");
    let net = VethPair::new("demo");

    let stand_in = NamespacedBridge::start(&net.receiver, BridgeOptions::default(), "bridge");
    let bridge = &stand_in.bridge;
    println!(
        "2. a local HTTPS bridge stand-in (self-signed): {}",
        bridge.url()
    );

    let mut args = vec!["run", "--iface", "veth1", "--port", "5061"];
    args.extend(stand_in.agent_args());
    let agent = Agent::start(&agent_binary, &net.receiver, &args);
    println!("3. sipnotify-agent attached its XDP program to veth1 and is capturing UDP :5061");

    // Asterisk's socket: every datagram must still arrive, NOTIFY or not.
    let asterisk = net.receiver.udp("10.200.0.2:5061");
    asterisk
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let asterisk = {
        let done = done.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut received = 0u32;
            loop {
                match asterisk.recv(&mut buf) {
                    Ok(_) => received += 1,
                    Err(_) if done.load(Ordering::Relaxed) => return received,
                    Err(_) => {}
                }
            }
        })
    };
    println!(
        "4. the SIP Server sends {CALLS} calls: INVITE, 180, NOTIFY talk (retransmitted), NOTIFY hold, OPTIONS"
    );
    let start = Instant::now();
    let (mut notifies_sent, mut other_sent) = (0, 0);
    net.sender.enter(|| {
        let socket = UdpSocket::bind("10.200.0.1:5060").unwrap();
        let send = |bytes: &[u8]| socket.send_to(bytes, "10.200.0.2:5061").unwrap();
        for call in 0..CALLS {
            for message in other_sip(call) {
                send(&message);
                other_sent += 1;
            }
            // Asterisk swallows the NOTIFY, so SIP Server retransmits it (Timer E).
            let talk = notify(call, 2, "talk");
            let copies = 1 + call % 4;
            for copy in 0..copies {
                send(&talk);
                notifies_sent += 1;
                thread::sleep(Duration::from_millis(50 << copy));
            }
            if call % 3 == 0 {
                send(&notify(call, 3, "hold"));
                notifies_sent += 1;
            }
        }
    });
    let expected = u64::from(CALLS + CALLS.div_ceil(3));
    let arrived = stand_in.wait_for(expected, Duration::from_secs(10));
    let elapsed = start.elapsed();
    let (_, metrics) = net.receiver.http_get("127.0.0.1:9464", "/metrics");
    agent.stop();
    done.store(true, Ordering::Relaxed);
    let reached_asterisk = asterisk.join().unwrap();

    println!(
        "\n5. what the bridge received ({} POSTs in {:.1} s):",
        bridge.received().len(),
        elapsed.as_secs_f64()
    );
    println!("   {:<6} {:<58} {:<34} event", "dn", "call_id", "call_uuid");
    for received in bridge.received() {
        let o = &received.object;
        println!(
            "   {:<6} {:<58} {:<34} {}",
            o["dn"].as_str().unwrap_or("?"),
            o["call_id"].as_str().unwrap_or("?"),
            o["call_uuid"].as_str().unwrap_or("?"),
            o["event"].as_str().unwrap_or("?"),
        );
    }

    let kernel = |outcome| {
        metric(
            &metrics,
            "sipnotify_kernel_packets_total",
            &[("iface", "veth1"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let user = |name| metric(&metrics, name, &[]).unwrap_or(0.0);
    println!("\n6. the agent's counters:");
    println!(
        "   sent by the SIP Server:      {notifies_sent} NOTIFYs (with retransmissions), {other_sent} other SIP messages"
    );
    println!(
        "   XDP: packets seen {:.0}, UDP to :5061 {:.0}, NOTIFY matched {:.0}, copied {:.0}, ring full {:.0}",
        kernel("packets_seen"),
        kernel("udp_watched"),
        kernel("notify_matched"),
        kernel("copied"),
        kernel("ringbuf_full")
    );
    println!(
        "   agent: notifications {:.0}, retransmissions dropped {:.0}, delivered {}",
        user("sipnotify_notifications_total"),
        user("sipnotify_dedup_hits_total"),
        bridge.acknowledged()
    );
    let all_sent = notifies_sent + other_sent;
    println!("   Asterisk's socket received:  {reached_asterisk} of {all_sent} datagrams");
    if arrived && bridge.acknowledged() == expected && reached_asterisk == all_sent {
        println!(
            "\nOK: every NOTIFY transaction reached the bridge exactly once ({expected}), \
             and every datagram still reached Asterisk."
        );
    } else {
        println!(
            "\nFAILED: the bridge acknowledged {} of {expected}; Asterisk received {reached_asterisk} of {all_sent}",
            bridge.acknowledged()
        );
        std::process::exit(1);
    }
    println!("7. cleaning up: agent stopped (XDP detached), namespaces removed.");
}
