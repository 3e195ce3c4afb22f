//! Delivery against the local HTTPS bridge stand-in: what the bridge actually received, how
//! often, with which headers, through failures, outages and certificate trouble (with
//! certificates made the way operators make them, and a bridge requiring a client
//! certificate), and the check before capture.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use sipnotify_agent::{
    cli::{DeliveryArgs, sink_settings},
    event::{CaptureMeta, Notification},
    queue::NotificationQueue,
    sink::{BridgeCheck, BridgeConfigError, Delivery, DeliveryReport, Fingerprint, SinkSettings},
};
use sipnotify_testkit::{
    BridgeOptions, Reply, TestBridge,
    certs::{
        ClientCertificate, MadeCertificate, ServerIdentity, client_certificate, mkcert_style,
        openssl_one_liner, openssl_or_skip, private_ca,
    },
};
use tokio_util::sync::CancellationToken;

fn notification(i: u32) -> Notification {
    Notification {
        dn: format!("{}", 1000 + i % 50),
        call_id: format!("call-{}@192.0.2.10", i / 2),
        call_uuid: Some(format!("UIVB8J6JE91C53UIM3VI59VHQ4{i:06}")),
        event: if i.is_multiple_of(2) { "talk" } else { "hold" }.to_owned(),
        caller: Some("5551234".to_owned()),
        cseq: i,
        via_branch: Some(format!("z9hG4bK-{i}")),
        extra_headers: Vec::new(),
        meta: CaptureMeta {
            captured_at: SystemTime::now(),
            src: (Ipv4Addr::new(192, 0, 2, 10), 5060).into(),
            dst: (Ipv4Addr::new(192, 0, 2, 20), 5061).into(),
            iface: None,
        },
    }
}

/// A bridge and a CA file trusting it.
struct Fixture {
    bridge: TestBridge,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
}

async fn fixture(options: BridgeOptions) -> Fixture {
    let bridge = TestBridge::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("bridge-ca.pem");
    bridge.write_ca_file(&ca_file).unwrap();
    Fixture {
        bridge,
        dir,
        ca_file,
    }
}

impl Fixture {
    /// Verified TLS with `--ca-file`, quick retries for short tests.
    fn args(&self) -> DeliveryArgs {
        DeliveryArgs {
            bridge_url: Some(self.bridge.url().to_owned()),
            ca_file: Some(self.ca_file.clone()),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(200),
            ..DeliveryArgs::default()
        }
    }
}

fn settings(args: &DeliveryArgs) -> SinkSettings {
    sink_settings(args, &Default::default()).unwrap()
}

/// Delivers from `queue` with `settings` until it is drained, or `shutdown` and its deadline.
async fn deliver(
    queue: NotificationQueue,
    settings: SinkSettings,
    shutdown: CancellationToken,
) -> DeliveryReport {
    Delivery::new(settings).unwrap().run(queue, shutdown).await
}

/// Queues `notifications`, closes the queue and delivers everything.
async fn deliver_all(args: &DeliveryArgs, notifications: &[Notification]) -> DeliveryReport {
    let queue = NotificationQueue::new(100_000);
    for n in notifications {
        queue.push(n.clone());
    }
    queue.close();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        deliver(queue, settings(args), CancellationToken::new()),
    )
    .await;
    report.unwrap()
}

/// Asserts the bridge acknowledged each of `sent` exactly once, under its idempotency key.
fn assert_received_exactly_once(bridge: &TestBridge, sent: &[Notification]) {
    let received = bridge.received();
    let mut by_uuid: HashMap<String, usize> = HashMap::new();
    for r in &received {
        let uuid = r.object["call_uuid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *by_uuid.entry(uuid).or_default() += 1;
    }
    for n in sent {
        let uuid = n.call_uuid.clone().unwrap_or_default();
        assert_eq!(
            by_uuid.get(&uuid),
            Some(&1),
            "{uuid} received {:?} times",
            by_uuid.get(&uuid)
        );
    }
    assert_eq!(received.len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_mode_posts_one_object_per_request_with_its_key() {
    let f = fixture(BridgeOptions::default()).await;
    let sent: Vec<_> = (0..200).map(notification).collect();
    let report = deliver_all(&f.args(), &sent).await;
    assert_eq!(report.delivered, 200);
    assert_eq!(report.requests, 200);
    assert_eq!(
        (report.rejected, report.expired, report.undelivered),
        (0, 0, 0)
    );
    assert_received_exactly_once(&f.bridge, &sent);

    let expected_keys: HashMap<String, String> = sent
        .iter()
        .map(|n| (n.call_uuid.clone().unwrap_or_default(), n.idempotency_key()))
        .collect();
    for r in f.bridge.received() {
        let object = r.object.as_object().unwrap();
        let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["dn", "call_id", "call_uuid", "event"])
        );
        let uuid = object["call_uuid"].as_str().unwrap();
        assert_eq!(
            r.idempotency_key.as_deref(),
            expected_keys.get(uuid).map(String::as_str)
        );
    }
    for request in f.bridge.requests() {
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert!(!request.array);
        assert_eq!(request.authorization, None);
        assert_eq!(request.version, "HTTP/1.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_mode_posts_arrays_whose_objects_carry_their_id() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        array_mode: true,
        batch_max_events: 100,
        ..f.args()
    };
    let sent: Vec<_> = (0..1_000).map(notification).collect();
    let report = deliver_all(&args, &sent).await;
    assert_eq!(report.delivered, 1_000);
    assert_received_exactly_once(&f.bridge, &sent);
    let requests = f.bridge.requests();
    assert!(requests.iter().all(|r| r.array && r.objects <= 100));
    assert!(requests.len() >= 10, "{} requests", requests.len());
    assert_eq!(report.requests, requests.len() as u64);
    let ids: BTreeSet<String> = f
        .bridge
        .received()
        .iter()
        .map(|r| r.object["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: BTreeSet<String> = sent.iter().map(Notification::idempotency_key).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_503_is_retried_until_the_bridge_accepts() {
    let f = fixture(BridgeOptions::default()).await;
    f.bridge
        .script([Reply::Status(503), Reply::Status(502), Reply::ok()]);
    let sent = [notification(1)];
    let report = deliver_all(&f.args(), &sent).await;
    let statuses: Vec<u16> = f.bridge.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 502, 200]);
    assert_eq!(
        (report.delivered, report.retries, report.requests),
        (1, 2, 3)
    );
    assert_received_exactly_once(&f.bridge, &sent);
    // Every try carries the same key, so the bridge could drop a re-delivery.
    let keys: BTreeSet<_> = f
        .bridge
        .requests()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let f = fixture(BridgeOptions::default()).await;
    f.bridge.script([Reply::RetryAfter {
        status: 429,
        seconds: 1,
    }]);
    let sent = [notification(1)];
    let report = deliver_all(&f.args(), &sent).await;
    let requests = f.bridge.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].status, requests[1].status), (429, 200));
    let gap = requests[1]
        .received_at
        .duration_since(requests[0].received_at)
        .unwrap_or_default();
    // The backoff alone would retry within 10 ms.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert_eq!(report.delivered, 1);
    assert_received_exactly_once(&f.bridge, &sent);
}

#[tokio::test]
async fn a_400_is_rejected_without_retry() {
    let f = fixture(BridgeOptions::default()).await;
    f.bridge.script([Reply::Body {
        status: 400,
        body: r#"{"error":"dn missing"}"#.to_owned(),
    }]);
    f.bridge.set_default_reply(Reply::Status(501));
    let report = deliver_all(&f.args(), &[notification(1), notification(2)]).await;
    // One 400, one 501: both final.
    let mut statuses: Vec<u16> = f.bridge.requests().iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [400, 501]);
    assert_eq!(
        (report.rejected, report.delivered, report.retries),
        (2, 0, 0)
    );
    assert!(f.bridge.received().is_empty());
}

/// Checks the bridge as `run` does before capturing; the configuration error's message.
async fn check_error(args: &DeliveryArgs) -> String {
    let delivery = Delivery::new(settings(args)).unwrap();
    let error = delivery.check_bridge().await.unwrap_err();
    let message = error.to_string();
    eprintln!("{message}");
    message
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_configuration_error_naming_both_remedies() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        ca_file: None,
        ..f.args()
    };
    let message = check_error(&args).await;
    assert!(message.contains("--ca-file PEM"), "{message}");
    assert!(message.contains("--insecure"), "{message}");
    assert!(message.contains("not trusted"), "{message}");
    assert!(message.contains(f.bridge.url()), "{message}");
    assert!(
        message.contains("unknown certificate authority"),
        "{message}"
    );
    assert!(f.bridge.requests().is_empty());
}

/// Found only at delivery time (the certificate changed after the check), an untrusted
/// certificate loses nothing: delivery keeps the notification and retries until shutdown.
#[tokio::test]
async fn an_untrusted_certificate_at_delivery_time_keeps_the_notifications() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        ca_file: None,
        shutdown_timeout: Duration::from_millis(200),
        ..f.args()
    };
    let queue = NotificationQueue::new(10);
    queue.push(notification(1));
    let shutdown = CancellationToken::new();
    let delivering = tokio::spawn(deliver(queue.clone(), settings(&args), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !delivering.is_finished(),
        "delivery gave up on a certificate error"
    );
    shutdown.cancel();
    let report = delivering.await.unwrap();
    assert_eq!((report.delivered, report.undelivered), (0, 1), "{report:?}");
    assert!(report.retries >= 2, "{report:?}");
    assert!(f.bridge.requests().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_name_is_untrusted_too() {
    let f = fixture(BridgeOptions {
        subject_alt_names: vec!["bridge.example".to_owned()],
        ..BridgeOptions::default()
    })
    .await;
    let message = check_error(&f.args()).await;
    assert!(
        message.contains("--ca-file PEM") && message.contains("--insecure"),
        "{message}"
    );
    assert!(message.contains("not valid for name"), "{message}");
}

/// The check before capture, through the delivery client: a wrong path or an untrusted
/// certificate is a configuration error; a bridge that is not there is not.
#[tokio::test]
async fn the_bridge_check_tells_configuration_errors_from_an_absent_bridge() {
    let f = fixture(BridgeOptions::default()).await;
    let check = |args: DeliveryArgs| async move {
        Delivery::new(settings(&args)).unwrap().check_bridge().await
    };
    let delivery = Delivery::new(settings(&f.args())).unwrap();
    let answered = delivery.check_bridge().await;
    assert!(
        matches!(answered, Ok(Some(BridgeCheck::Answered { status })) if status == 200),
        "{answered:?}"
    );
    assert!(delivery.health().has_answered());
    assert!(f.bridge.received().is_empty(), "the check posts nothing");

    let wrong_path = DeliveryArgs {
        bridge_url: Some(f.bridge.url().replace("/genesys-call-notify", "/notify")),
        ..f.args()
    };
    let error = check(wrong_path).await.unwrap_err();
    assert!(
        matches!(error, BridgeConfigError::NotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("404"), "{error}");

    let untrusted = DeliveryArgs {
        ca_file: None,
        ..f.args()
    };
    let error = check(untrusted).await.unwrap_err().to_string();
    assert!(
        error.contains("not trusted")
            && error.contains("--ca-file")
            && error.contains("--insecure"),
        "{error}"
    );

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let down = DeliveryArgs {
        bridge_url: Some(format!("https://127.0.0.1:{port}/genesys-call-notify")),
        ..f.args()
    };
    let unreachable = check(down).await;
    assert!(
        matches!(unreachable, Ok(Some(BridgeCheck::Unreachable { .. }))),
        "{unreachable:?}"
    );
    let stdout_only = DeliveryArgs {
        stdout: true,
        no_bridge: true,
        ..f.args()
    };
    assert_eq!(check(stdout_only).await, Ok(None));
}

#[tokio::test]
async fn ca_file_and_insecure_both_connect() {
    let f = fixture(BridgeOptions::default()).await;
    let with_ca = deliver_all(&f.args(), &[notification(1)]).await;
    assert_eq!(with_ca.delivered, 1);
    let insecure = DeliveryArgs {
        ca_file: None,
        insecure: true,
        ..f.args()
    };
    let without_verification = deliver_all(&insecure, &[notification(2)]).await;
    assert_eq!(without_verification.delivered, 1);
    assert_received_exactly_once(&f.bridge, &[notification(1), notification(2)]);
}

#[tokio::test]
async fn the_bearer_token_is_sent_when_configured() {
    let f = fixture(BridgeOptions::default()).await;
    let token_file = f.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let args = DeliveryArgs {
        bridge_token_file: Some(token_file),
        ..f.args()
    };
    deliver_all(&args, &[notification(1)]).await;
    let requests = f.bridge.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer s3cret-token")
    );
}

/// Pushes `count` notifications spread over `over`, like live capture, then closes.
async fn produce(queue: NotificationQueue, count: u32, over: Duration) -> Vec<Notification> {
    let mut sent = Vec::new();
    let pause = over / count;
    for i in 0..count {
        let n = notification(i);
        sent.push(n.clone());
        queue.push(n);
        tokio::time::sleep(pause).await;
    }
    queue.close();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_refused_connections_loses_nothing() {
    let f = fixture(BridgeOptions::default()).await;
    let queue = NotificationQueue::new(100_000);
    let delivery = Delivery::new(settings(&f.args())).unwrap();
    let health = delivery.health();
    assert!(!health.has_answered());
    let running = tokio::spawn(delivery.run(queue.clone(), CancellationToken::new()));
    let producer = tokio::spawn(produce(queue, 600, Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(health.has_answered());
    f.bridge
        .refuse_connections_for(Duration::from_secs(2))
        .await
        .unwrap();
    let sent = producer.await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.delivered, 600, "{report:?}");
    assert!(report.retries > 0, "{report:?}");
    assert_received_exactly_once(&f.bridge, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_503_replies_loses_nothing_in_array_mode() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        array_mode: true,
        batch_max_events: 50,
        ..f.args()
    };
    let queue = NotificationQueue::new(100_000);
    let running = tokio::spawn(deliver(
        queue.clone(),
        settings(&args),
        CancellationToken::new(),
    ));
    f.bridge
        .fail_for(Duration::from_secs(2), Reply::Status(503));
    let sent = produce(queue, 1_000, Duration::from_secs(3)).await;
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.delivered, 1_000, "{report:?}");
    assert!(f.bridge.requests().iter().any(|r| r.status == 503));
    assert_received_exactly_once(&f.bridge, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_at_the_deadline_and_counts_the_rest() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        shutdown_timeout: Duration::from_millis(300),
        max_in_flight: 4,
        ..f.args()
    };
    f.bridge
        .refuse_connections_for(Duration::from_secs(30))
        .await
        .unwrap();
    let queue = NotificationQueue::new(1_000);
    for i in 0..20 {
        queue.push(notification(i));
    }
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(deliver(queue.clone(), settings(&args), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    shutdown.cancel();
    let report = running.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.undelivered, 20, "{report:?}");
    assert_eq!(report.delivered, 0);
    assert!(queue.is_closed());
}

#[tokio::test]
async fn notifications_older_than_max_age_are_dropped_and_counted() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        max_age: Duration::from_secs(60),
        ..f.args()
    };
    let mut old = notification(1);
    old.meta.captured_at = SystemTime::now() - Duration::from_secs(120);
    let fresh = notification(2);
    let report = deliver_all(&args, &[old, fresh.clone()]).await;
    assert_eq!((report.expired, report.delivered), (1, 1));
    assert_received_exactly_once(&f.bridge, &[fresh]);
}

#[tokio::test]
async fn http2_is_used_when_the_bridge_offers_it() {
    let f = fixture(BridgeOptions {
        http2: true,
        ..BridgeOptions::default()
    })
    .await;
    let sent: Vec<_> = (0..20).map(notification).collect();
    let report = deliver_all(&f.args(), &sent).await;
    assert_eq!(report.delivered, 20);
    assert!(f.bridge.requests().iter().all(|r| r.version == "HTTP/2.0"));
    assert_received_exactly_once(&f.bridge, &sent);
}

#[tokio::test]
async fn stdout_and_bridge_get_the_same_objects() {
    let f = fixture(BridgeOptions::default()).await;
    let args = DeliveryArgs {
        stdout: true,
        extras: true,
        ..f.args()
    };
    let queue = NotificationQueue::new(10);
    let sent = [notification(1), notification(2)];
    for n in &sent {
        queue.push(n.clone());
    }
    queue.close();
    let mut out = Vec::new();
    let delivery = Delivery::new(settings(&args))
        .unwrap()
        .with_stdout(&mut out);
    let report = delivery.run(queue, CancellationToken::new()).await;
    assert_eq!(report.delivered, 2);
    // Compare as parsed values (the bridge's record has its keys sorted).
    let lines: BTreeSet<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap()
                .to_string()
        })
        .collect();
    let posted: BTreeSet<String> = f
        .bridge
        .received()
        .iter()
        .map(|r| r.object.to_string())
        .collect();
    assert_eq!(lines, posted);
    assert!(lines.iter().all(|line| line.contains("\"cseq\"")));
}

#[tokio::test]
async fn a_paused_bridge_delays_but_loses_nothing() {
    let f = fixture(BridgeOptions::default()).await;
    f.bridge.pause_for(Duration::from_millis(500));
    let sent: Vec<_> = (0..5).map(notification).collect();
    let started = Instant::now();
    let report = deliver_all(&f.args(), &sent).await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((report.delivered, report.retries), (5, 0));
    assert_received_exactly_once(&f.bridge, &sent);
    assert!(
        f.bridge
            .wait_for_acknowledged(5, Duration::from_secs(1))
            .await
    );
}

// Bridge certificates made the way people make them, over real TLS connections: the openssl
// one-liner's self-signed certificate given as --ca-file (`CA:TRUE`, which webpki alone
// refuses), mkcert's local CA or its leaf, a private CA with an intermediate, a --pin-sha256;
// and the wrong certificate or one for another name, which fail naming the remedies.

async fn bridge_serving(identity: &ServerIdentity) -> TestBridge {
    TestBridge::start(BridgeOptions {
        identity: Some(identity.clone()),
        ..BridgeOptions::default()
    })
    .await
    .unwrap()
}

fn tls_args(bridge: &TestBridge, ca_file: Option<PathBuf>, pins: &[String]) -> DeliveryArgs {
    DeliveryArgs {
        bridge_url: Some(bridge.url().to_owned()),
        ca_file,
        pin_sha256: pins.to_vec(),
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(100),
        ..DeliveryArgs::default()
    }
}

/// Delivers one notification with `args`.
async fn deliver_one(args: &DeliveryArgs) -> DeliveryReport {
    let settings = settings(args);
    let queue = NotificationQueue::new(10);
    queue.push(notification(1));
    queue.close();
    tokio::time::timeout(
        Duration::from_secs(20),
        deliver(queue, settings, CancellationToken::new()),
    )
    .await
    .expect("delivery ends")
}

/// Delivers one notification and asserts the bridge acknowledged it exactly once.
async fn assert_delivers(bridge: &TestBridge, args: &DeliveryArgs) {
    let report = deliver_one(args).await;
    assert_eq!((report.delivered, report.undelivered), (1, 0), "{report:?}");
    assert_eq!(bridge.received().len(), 1);
}

fn openssl(dir: &tempfile::TempDir, test: &str, name: &str, san: &str) -> Option<MadeCertificate> {
    openssl_or_skip(test, openssl_one_liner(dir.path(), name, "bridge", san))
}

#[tokio::test]
async fn the_openssl_one_liner_certificate_as_ca_file_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let test = "the_openssl_one_liner_certificate_as_ca_file_delivers";
    let Some(made) = openssl(&dir, test, "bridge", "IP:127.0.0.1") else {
        return;
    };
    let bridge = bridge_serving(&made.identity).await;
    assert_delivers(&bridge, &tls_args(&bridge, Some(made.ca_file), &[])).await;
}

#[tokio::test]
async fn mkcert_root_or_its_leaf_as_ca_file_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (made, leaf) = mkcert_style(dir.path(), &["127.0.0.1", "localhost"]);
    let bridge = bridge_serving(&made.identity).await;
    assert_delivers(&bridge, &tls_args(&bridge, Some(made.ca_file), &[])).await;
    let bridge = bridge_serving(&made.identity).await;
    assert_delivers(&bridge, &tls_args(&bridge, Some(leaf), &[])).await;
}

#[tokio::test]
async fn a_private_ca_with_an_intermediate_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let made = private_ca(dir.path(), &["127.0.0.1"]);
    let bridge = bridge_serving(&made.identity).await;
    assert_delivers(&bridge, &tls_args(&bridge, Some(made.ca_file), &[])).await;
}

#[tokio::test]
async fn a_pinned_fingerprint_delivers_without_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_pinned_fingerprint_delivers_without_a_ca_file";
    let Some(made) = openssl(&dir, test, "bridge", "IP:127.0.0.1") else {
        return;
    };
    // As the operator gets it: `openssl x509 -noout -fingerprint -sha256 -in bridge.crt`.
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&made.ca_file)
        .output()
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(line.parse::<Fingerprint>().is_ok(), "{line}");
    let bridge = bridge_serving(&made.identity).await;
    assert_delivers(&bridge, &tls_args(&bridge, None, &[line])).await;
}

#[tokio::test]
async fn the_wrong_certificate_fails_naming_both_remedies() {
    let dir = tempfile::tempdir().unwrap();
    let test = "the_wrong_certificate_fails_naming_both_remedies";
    let Some(served) = openssl(&dir, test, "served", "IP:127.0.0.1") else {
        return;
    };
    let Some(other) = openssl(&dir, test, "other", "IP:127.0.0.1") else {
        return;
    };
    let bridge = bridge_serving(&served.identity).await;
    let message = check_error(&tls_args(&bridge, Some(other.ca_file), &[])).await;
    assert!(
        message.contains("a self-signed (CA:TRUE) certificate that is not the one in --ca-file"),
        "{message}"
    );
    assert!(
        message.contains("--ca-file PEM with the bridge's own certificate")
            && message.contains("--insecure"),
        "{message}"
    );
    assert!(bridge.received().is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_naming_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_certificate_for_another_name_fails_naming_the_host";
    let Some(made) = openssl(&dir, test, "bridge", "IP:127.0.0.2") else {
        return;
    };
    let bridge = bridge_serving(&made.identity).await;
    let message = check_error(&tls_args(&bridge, Some(made.ca_file), &[])).await;
    assert!(
        message.contains("not valid for name \"127.0.0.1\""),
        "{message}"
    );
    assert!(message.contains("127.0.0.2"), "{message}");
    assert!(
        message.contains("--bridge-url")
            && message.contains("--ca-file")
            && message.contains("--insecure"),
        "{message}"
    );
    assert!(bridge.received().is_empty());
}

// A bridge that requires a client certificate (mutual TLS): with --client-cert/--client-key
// the agent delivers; without them the check before capture is a configuration error that
// names both flags, and nothing reaches the bridge.

/// A bridge requiring a client certificate from the CA of `client`.
async fn bridge_requiring(client: &ClientCertificate) -> Fixture {
    fixture(BridgeOptions {
        client_ca_pem: Some(client.ca_pem.clone()),
        ..BridgeOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_bridge_requiring_a_client_certificate_gets_one_from_client_cert() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_certificate(dir.path(), "sipnotify");
    let f = bridge_requiring(&client).await;
    let args = DeliveryArgs {
        client_cert: Some(client.cert_file.clone()),
        client_key: Some(client.key_file.clone()),
        ..f.args()
    };
    let check = Delivery::new(settings(&args))
        .unwrap()
        .check_bridge()
        .await
        .unwrap();
    assert!(
        matches!(check, Some(BridgeCheck::Answered { .. })),
        "{check:?}"
    );
    assert_delivers(&f.bridge, &args).await;
}

#[tokio::test]
async fn without_client_cert_the_refusal_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_certificate(dir.path(), "sipnotify");
    let f = bridge_requiring(&client).await;
    let message = check_error(&f.args()).await;
    assert!(message.contains(f.bridge.url()), "{message}");
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    assert!(
        message.contains("--client-cert PEM --client-key PEM"),
        "{message}"
    );

    // A certificate from a CA the bridge does not trust is refused too, saying so.
    let stranger = client_certificate(&dir.path().join("stranger"), "stranger");
    let args = DeliveryArgs {
        client_cert: Some(stranger.cert_file.clone()),
        client_key: Some(stranger.key_file.clone()),
        ..f.args()
    };
    let message = check_error(&args).await;
    assert!(
        message.contains("refused the client certificate"),
        "{message}"
    );
    assert!(f.bridge.requests().is_empty());
    assert!(f.bridge.received().is_empty());
}
