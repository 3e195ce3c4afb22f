//! HEP from a real Kamailio (`siptrace`, Debian 12's 5.6) to the agent, in namespaces the
//! tests create: NOTIFYs reaching Kamailio over UDP and over TLS are each delivered once, in
//! HEP v1, v2 and v3; with an auth key only packets with that key deliver (a wrong key and
//! v1 count `auth_failed`); the same NOTIFYs on the wire and in HEP deliver once; a NOTIFY
//! Kamailio forwards, mirrored as received and as sent on, delivers once; and `--hep-forward`
//! relays every datagram byte for byte.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use sipnotify_agent::hep::decode::build;
use support::{
    Agent, AnsweringUa, Kamailio, KamailioOptions, NetNs, VethPair, call_id, genesys_notify,
    start_agent,
};

const METRICS: &str = "127.0.0.1:9464";
const HEP: &str = "127.0.0.1:9060";

/// NOTIFY `i`, its Via naming `transport` (Kamailio answers TLS on the connection).
fn notify(i: u32, transport: &str) -> Vec<u8> {
    let text = String::from_utf8(genesys_notify(i, "1002", "talk")).unwrap();
    text.replace("SIP/2.0/UDP", &format!("SIP/2.0/{transport}"))
        .into_bytes()
}

/// The HEP packet counts of the agent's metrics, by outcome.
fn hep_counts(ns: &NetNs) -> BTreeMap<String, f64> {
    let (_, body) = ns.http_get(METRICS, "/metrics");
    support::prometheus::samples(&body, "sipnotify_hep_packets_total")
        .map(|(labels, v)| (labels.to_owned(), v))
        .collect()
}

fn outcome(counts: &BTreeMap<String, f64>, label: &str) -> f64 {
    counts
        .iter()
        .filter(|(labels, _)| labels.contains(&format!("outcome=\"{label}\"")))
        .map(|(_, v)| v)
        .sum()
}

/// Waits until the agent has accepted `n` notifications.
fn wait_accepted(ns: &NetNs, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = ns.http_get(METRICS, "/metrics");
        let got = support::metric(&body, "sipnotify_notifications_total", &[]).unwrap_or(0.0);
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {n} notifications accepted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Call-IDs of the agent's stdout JSON lines, with how often each came.
fn delivered(stdout: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in stdout.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        *seen
            .entry(value["call_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

fn kamailio(version: u8, key: Option<&str>, udp: &str) -> KamailioOptions {
    KamailioOptions {
        udp: udp.parse().unwrap(),
        tls: Some("127.0.0.1:5061".parse().unwrap()),
        hep_to: HEP.parse().unwrap(),
        hep_version: version,
        auth_key: key.map(str::to_owned),
        forward_to: None,
    }
}

fn hep_agent(ns: &NetNs, extra: &[&str]) -> Agent {
    let mut args = vec![
        "run",
        "--hep-listen",
        HEP,
        "--stdout",
        "--spool",
        "off",
        "--metrics-listen",
        METRICS,
    ];
    args.extend_from_slice(extra);
    start_agent(ns, &args)
}

#[test]
fn kamailio_hep_v1_v2_v3_deliver_udp_and_tls_notifies_once_each() {
    if !support::privileged("kamailio_hep_v1_v2_v3")
        || !Kamailio::available("kamailio_hep_v1_v2_v3")
    {
        return;
    }
    let ns = NetNs::new("hepk");
    let agent = hep_agent(&ns, &[]);
    let from: SocketAddr = "127.0.0.1:5090".parse().unwrap();
    let mut expected = Vec::new();
    for version in [1u8, 2, 3] {
        let kam = Kamailio::start(&ns, kamailio(version, None, "127.0.0.1:5060"));
        let base = u32::from(version) * 100;
        let udp: Vec<_> = (base..base + 3).map(|i| notify(i, "UDP")).collect();
        let tls: Vec<_> = (base + 50..base + 53).map(|i| notify(i, "TLS")).collect();
        kam.send_udp(&ns, from, &udp);
        // Retransmissions over UDP are mirrored too and must not deliver again.
        kam.send_udp(&ns, from, &udp[..1]);
        kam.send_tls(&ns, &tls);
        expected.extend((base..base + 3).chain(base + 50..base + 53));
        wait_accepted(&ns, expected.len() as f64);
    }
    let counts = hep_counts(&ns);
    let stdout = agent.stop();
    let seen = delivered(&stdout);
    let want: BTreeMap<String, usize> = expected.iter().map(|&i| (call_id(i), 1)).collect();
    assert_eq!(seen, want, "hep counts {counts:?}");
    assert!(outcome(&counts, "sip") >= 21.0, "{counts:?}");
    assert_eq!(
        outcome(&counts, "bad_length") + outcome(&counts, "not_hep"),
        0.0,
        "{counts:?}"
    );
}

#[test]
fn with_an_auth_key_only_kamailio_with_that_key_delivers() {
    if !support::privileged("hep_auth_key") || !Kamailio::available("hep_auth_key") {
        return;
    }
    let ns = NetNs::new("hepa");
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "s3cret\n").unwrap();
    let agent = hep_agent(
        &ns,
        &["--hep-auth-key-file", key_file.path().to_str().unwrap()],
    );
    let from: SocketAddr = "127.0.0.1:5090".parse().unwrap();

    let wrong = Kamailio::start(&ns, kamailio(3, Some("guess"), "127.0.0.1:5060"));
    wrong.send_udp(&ns, from, &[notify(1, "UDP")]);
    wrong.send_tls(&ns, &[notify(2, "TLS")]);
    drop(wrong);
    let v1 = Kamailio::start(&ns, kamailio(1, None, "127.0.0.1:5060"));
    v1.send_udp(&ns, from, &[notify(3, "UDP")]);
    drop(v1);
    let right = Kamailio::start(&ns, kamailio(3, Some("s3cret"), "127.0.0.1:5060"));
    right.send_udp(&ns, from, &[notify(4, "UDP")]);
    right.send_tls(&ns, &[notify(5, "TLS")]);
    wait_accepted(&ns, 2.0);
    let counts = hep_counts(&ns);
    let stdout = agent.stop();
    let seen = delivered(&stdout);
    let want: BTreeMap<String, usize> = [4, 5].iter().map(|&i| (call_id(i), 1)).collect();
    assert_eq!(seen, want);
    // Each NOTIFY and its 200 are mirrored: 2 + 2 with the wrong key, 2 in v1, and the
    // readiness probes of the two keyless starts.
    assert!(outcome(&counts, "auth_failed") >= 6.0, "{counts:?}");
}

#[test]
fn a_notify_on_the_wire_and_in_hep_is_delivered_once() {
    if !support::privileged("wire_and_hep") || !Kamailio::available("wire_and_hep") {
        return;
    }
    let net = VethPair::new("hepw");
    let kam = Kamailio::start(
        &net.receiver,
        KamailioOptions {
            tls: None,
            ..kamailio(3, None, "10.200.0.2:5060")
        },
    );
    let agent = hep_agent(&net.receiver, &["--iface", "veth1", "--port", "5060"]);
    let notifies: Vec<_> = (0..20).map(|i| notify(i, "UDP")).collect();
    kam.send_udp(&net.sender, "10.200.0.1:5090".parse().unwrap(), &notifies);
    wait_accepted(&net.receiver, 20.0);
    // Let the second copy of the last ones arrive before counting.
    std::thread::sleep(Duration::from_millis(300));
    let counts = hep_counts(&net.receiver);
    let (_, body) = net.receiver.http_get(METRICS, "/metrics");
    let dedup = support::metric(&body, "sipnotify_dedup_hits_total", &[]).unwrap_or(0.0);
    let stdout = agent.stop();
    let want: BTreeMap<String, usize> = (0..20).map(|i| (call_id(i), 1)).collect();
    assert_eq!(delivered(&stdout), want);
    assert!(outcome(&counts, "sip") >= 20.0, "{counts:?}");
    assert!(dedup >= 20.0, "each NOTIFY seen twice, {dedup} duplicates");
}

#[test]
fn a_notify_kamailio_forwards_is_delivered_once() {
    if !support::privileged("kamailio_forwards") || !Kamailio::available("kamailio_forwards") {
        return;
    }
    let ns = NetNs::new("hepp");
    let ua = AnsweringUa::start(&ns, "127.0.0.1:5070".parse().unwrap());
    let kam = Kamailio::start(
        &ns,
        KamailioOptions {
            tls: None,
            forward_to: Some(ua.addr()),
            ..kamailio(3, None, "127.0.0.1:5060")
        },
    );
    let agent = hep_agent(&ns, &[]);
    let notifies: Vec<_> = (0..20).map(|i| notify(i, "UDP")).collect();
    // Each waits for its 200, which comes from the UA through Kamailio.
    kam.send_udp(&ns, "127.0.0.1:5090".parse().unwrap(), &notifies);
    wait_accepted(&ns, 20.0);
    // Let the copies sent on be read before counting.
    std::thread::sleep(Duration::from_millis(300));
    let counts = hep_counts(&ns);
    let (_, body) = ns.http_get(METRICS, "/metrics");
    let dedup = support::metric(&body, "sipnotify_dedup_hits_total", &[]).unwrap_or(0.0);
    let stdout = agent.stop();
    assert_eq!(ua.answered(), 20, "{}", kam.log());
    let want: BTreeMap<String, usize> = (0..20).map(|i| (call_id(i), 1)).collect();
    assert_eq!(delivered(&stdout), want, "hep counts {counts:?}");
    // Each NOTIFY and its 200, as received and as sent on.
    assert!(outcome(&counts, "sip") >= 80.0, "{counts:?}");
    assert_eq!(dedup, 20.0, "each forwarded copy is a duplicate");
}

#[test]
fn hep_forward_relays_every_datagram_byte_for_byte() {
    if !support::privileged("hep_forward") {
        return;
    }
    let ns = NetNs::new("hepf");
    let collector = ns.udp("127.0.0.1:9061");
    collector
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let agent = hep_agent(&ns, &["--hep-forward", "127.0.0.1:9061"]);
    let (src, dst) = (
        "192.0.2.1:5090".parse().unwrap(),
        "192.0.2.2:5061".parse().unwrap(),
    );
    let mut datagrams: Vec<Vec<u8>> = (0..50)
        .map(|i| build::V3::sip(src, dst, &notify(i, "UDP")).encode())
        .collect();
    datagrams.push(b"not hep at all".to_vec());
    datagrams.push(build::v12(1, src, dst, (0, 0), &notify(99, "UDP")));
    datagrams.push(vec![0x48; 1400]);
    let sender = ns.udp("127.0.0.1:0");
    for d in &datagrams {
        sender.send_to(d, HEP).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0; 65_536];
    for _ in &datagrams {
        let n = collector.recv(&mut buf).expect("a forwarded datagram");
        got.push(buf[..n].to_vec());
    }
    assert_eq!(got, datagrams);
    wait_accepted(&ns, 51.0);
    let counts = hep_counts(&ns);
    agent.stop();
    assert_eq!(
        outcome(&counts, "forwarded"),
        datagrams.len() as f64,
        "{counts:?}"
    );
    assert_eq!(outcome(&counts, "forward_failed"), 0.0);
    assert_eq!(outcome(&counts, "not_hep"), 2.0, "{counts:?}");
}
