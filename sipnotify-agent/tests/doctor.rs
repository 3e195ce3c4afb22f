//! `sipnotify-agent doctor` on this machine, through the built binary: as root the kernel,
//! BTF, permission, object and load rows pass; a missing interface fails with a fix; and the
//! bridge rows tell a trusted, an untrusted and an absent bridge apart (against the local
//! HTTPS bridge stand-in, whose CA is generated per test), and say when the bridge requires a
//! client certificate.

mod support;

use std::{path::Path, process::Output};

use sipnotify_testkit::{
    BridgeOptions, TestBridge,
    certs::{client_certificate, openssl_one_liner, openssl_or_skip},
};

/// Runs `doctor ARGS…` with an empty config file and no SIPNOTIFY_* variables.
fn doctor(args: &[&str]) -> Output {
    let (mut command, _config) = support::isolated_agent();
    command.arg("doctor").args(args).output().unwrap()
}

async fn doctor_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        doctor(&args)
    })
    .await
    .unwrap()
}

/// A report row: status and detail, and the fix line under it, if any.
#[derive(Debug)]
struct Row {
    status: String,
    detail: String,
    fix: Option<String>,
}

/// Finds the row named `name` in the report on stdout.
fn row(output: &Output, name: &str) -> Row {
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.first().copied().unwrap_or_default();
    let status_at = header.find("STATUS").unwrap_or_default();
    let detail_at = header.find("DETAIL").unwrap_or_default();
    let (i, line) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.get(..status_at).map(str::trim_end) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` row in:\n{text}"));
    let fix = lines
        .get(i + 1)
        .map(|l| l.trim_start())
        .and_then(|l| l.strip_prefix("fix: "))
        .map(str::to_owned);
    Row {
        status: line[status_at..detail_at].trim().to_owned(),
        detail: line[detail_at..].to_owned(),
        fix,
    }
}

#[test]
fn kernel_permission_and_object_rows_pass_as_root() {
    if !support::privileged("kernel_permission_and_object_rows_pass_as_root") {
        return;
    }
    let output = doctor(&["--iface", "lo", "--no-bridge"]);
    let report = String::from_utf8_lossy(&output.stdout);
    for name in [
        "kernel",
        "btf",
        "ebpf object",
        "permissions",
        "xdp programs",
        "ring buffer",
        "bpf_xdp_load_bytes",
        "program load",
        "iface lo",
    ] {
        let row = row(&output, name);
        assert_eq!(row.status, "OK", "{name}: {row:?}\n{report}");
        assert!(row.fix.is_none(), "{name}: {row:?}");
    }
    assert!(!report.contains("FAIL"), "{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");
}

#[test]
fn a_missing_interface_fails_with_a_fix() {
    let output = doctor(&["--iface", "nosuch0", "--no-bridge"]);
    assert_eq!(output.status.code(), Some(1));
    let row = row(&output, "iface nosuch0");
    assert_eq!(row.status, "FAIL");
    assert_eq!(row.detail, "interface `nosuch0` does not exist");
    let fix = row.fix.unwrap_or_default();
    assert!(fix.starts_with("pick an existing interface: "), "{fix}");
    assert!(fix.contains("lo"), "{fix}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .trim_end()
            .ends_with("checks failed; the fixes are listed under them"),
        "{stderr}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let output = doctor(&["--ca-file", "x.pem", "--insecure"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("sipnotify: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_certificate_is_judged() {
    let bridge = TestBridge::start_default().await.unwrap();
    let url = bridge.url().to_owned();

    // Its CA is not in the system store: untrusted, with both remedies.
    let output = doctor_async(vec!["--bridge-url".into(), url.clone()]).await;
    let answer = row(&output, "bridge");
    assert_eq!(answer.status, "OK", "{answer:?}");
    assert!(answer.detail.contains("answers (HTTP "), "{answer:?}");
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "FAIL");
    assert!(
        tls.detail
            .starts_with("untrusted: signed by an unknown certificate authority (sha-256 "),
        "{tls:?}"
    );
    let fix = tls.fix.unwrap_or_default();
    assert!(
        fix.contains("--ca-file PEM") && fix.contains("--insecure"),
        "{fix}"
    );
    assert_eq!(output.status.code(), Some(1));

    // With its CA: verified.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    bridge.write_ca_file(&ca).unwrap();
    let output = doctor_async(vec![
        "--bridge-url".into(),
        url.clone(),
        "--ca-file".into(),
        path(&ca),
    ])
    .await;
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "OK", "{tls:?}");
    assert!(tls.detail.contains("signed by a trusted CA"), "{tls:?}");

    // --insecure: works, with a warning saying what --ca-file would fix.
    let output = doctor_async(vec!["--bridge-url".into(), url, "--insecure".into()]).await;
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "WARN", "{tls:?}");
    assert!(tls.fix.unwrap_or_default().contains("--ca-file"));

    // Nothing listening.
    drop(bridge);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}/genesys-call-notify");
    let output = doctor_async(vec!["--bridge-url".into(), url.clone()]).await;
    let answer = row(&output, "bridge");
    assert_eq!(answer.status, "FAIL");
    assert_eq!(answer.detail, format!("{url}: connection refused"));
    assert!(
        answer
            .fix
            .unwrap_or_default()
            .starts_with("start the bridge")
    );
    assert_eq!(output.status.code(), Some(1));
}

/// The field report's setup: the bridge serves the openssl one-liner's self-signed
/// certificate and the operator passes that very file as --ca-file, or pins its fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_which_kind_of_trust_applies() {
    let dir = tempfile::tempdir().unwrap();
    let test = "doctor_says_which_kind_of_trust_applies";
    let made = openssl_one_liner(dir.path(), "bridge", "bridge", "IP:127.0.0.1");
    let Some(made) = openssl_or_skip(test, made) else {
        return;
    };
    let bridge = TestBridge::start(BridgeOptions {
        identity: Some(made.identity.clone()),
        ..BridgeOptions::default()
    })
    .await
    .unwrap();
    let url = bridge.url().to_owned();

    let output = doctor_async(vec![
        "--bridge-url".into(),
        url.clone(),
        "--ca-file".into(),
        path(&made.ca_file),
    ])
    .await;
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "OK", "{tls:?}");
    assert!(
        tls.detail
            .contains("the bridge's own certificate from --ca-file"),
        "{tls:?}"
    );

    // Untrusted, the row shows the fingerprint to pin; pinned, it says so.
    let output = doctor_async(vec!["--bridge-url".into(), url.clone()]).await;
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "FAIL", "{tls:?}");
    let fingerprint = tls
        .detail
        .split("(sha-256 ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no fingerprint in {tls:?}"))
        .to_owned();
    assert!(tls.fix.unwrap_or_default().contains("--pin-sha256"));
    let output = doctor_async(vec![
        "--bridge-url".into(),
        url,
        "--pin-sha256".into(),
        fingerprint,
    ])
    .await;
    let tls = row(&output, "bridge tls");
    assert_eq!(tls.status, "OK", "{tls:?}");
    assert!(tls.detail.contains("matches --pin-sha256"), "{tls:?}");
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A bridge requiring a client certificate: without --client-cert the row fails naming the
/// flags; with one the bridge answers and the row says it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_bridge_asking_for_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_certificate(dir.path(), "sipnotify");
    let bridge = TestBridge::start(BridgeOptions {
        client_ca_pem: Some(client.ca_pem.clone()),
        ..BridgeOptions::default()
    })
    .await
    .unwrap();
    let ca_file = dir.path().join("bridge-ca.pem");
    bridge.write_ca_file(&ca_file).unwrap();
    let base = vec![
        "--bridge-url".to_owned(),
        bridge.url().to_owned(),
        "--ca-file".to_owned(),
        path(&ca_file),
    ];

    let output = doctor_async(base.clone()).await;
    let answer = row(&output, "bridge client certificate");
    assert_eq!(answer.status, "FAIL", "{answer:?}");
    assert!(
        answer.detail.contains("requires a client certificate"),
        "{answer:?}"
    );
    assert!(answer.fix.unwrap_or_default().contains("--client-cert PEM"));

    let mut with_cert = base;
    with_cert.extend([
        "--client-cert".to_owned(),
        path(&client.cert_file),
        "--client-key".to_owned(),
        path(&client.key_file),
    ]);
    let output = doctor_async(with_cert).await;
    assert_eq!(row(&output, "bridge").status, "OK");
    let answer = row(&output, "bridge client certificate");
    assert_eq!(answer.status, "OK", "{answer:?}");
    assert!(
        answer.detail.contains("asked for a client certificate"),
        "{answer:?}"
    );
}
