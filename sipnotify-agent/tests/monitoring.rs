//! The shipped monitoring (`monitoring/alerts.yaml`, `monitoring/dashboard.json`) checked
//! against Prometheus's own tools and against the agent: the rules pass `promtool check rules`
//! and a unit test per alert (`promtool test rules`), every dashboard expression parses, every
//! metric either names is one a running agent exports before any traffic, and a real
//! Prometheus scraping a real agent fires `SipnotifyBridgeFailing` when the bridge stops and
//! resolves it when the bridge is back, `SipnotifyAgentDown` when the agent stops, and
//! `SipnotifyNotificationsDropped` on the first notification the bridge refuses.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use sipnotify_testkit::{BridgeOptions, NamespacedBridge};
use support::{VethPair, genesys_notify, start_agent};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn read(file: &str) -> String {
    let path = monitoring_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `program` (from Debian's `prometheus` package) is on PATH; when not, prints why
/// the test skips, and under `CI=true` fails (`cargo xtask setup` installs it).
fn have(program: &str, test: &str) -> bool {
    let found = Command::new(program).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot be skipped in CI: `{program}` is missing (apt-get install prometheus)"
        );
        eprintln!("skipping {test}: `{program}` is missing (apt-get install prometheus)");
    }
    found
}

/// Runs `promtool args…`, failing the test with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// The alert names in `alerts.yaml`, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// The dashboard's variable queries (`label_values(METRIC{…}, label)`).
fn dashboard_variable_queries(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["query"]["query"].as_str().map(str::to_owned))
        .collect()
}

/// `expr` with Grafana's variables replaced by what they stand for, so promtool can parse it.
fn with_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$job", "sipnotify")
        .replace("$instance", ".*")
        .replace("$iface", ".*")
}

/// The metric names an expression refers to (ours and the process metrics; `up` is
/// Prometheus's own).
fn metric_names(text: &str) -> BTreeSet<String> {
    let names = regex::Regex::new(r"\b(?:sipnotify|process)_[a-z0-9_]+").expect("regex");
    names
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[test]
fn the_rules_pass_promtool_check_and_every_alert_unit_test() {
    if !have(
        "promtool",
        "the_rules_pass_promtool_check_and_every_alert_unit_test",
    ) {
        return;
    }
    let dir = monitoring_dir();
    let rules = dir.join("alerts.yaml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()]);
    let rules_text = read("alerts.yaml");
    let names = alert_names(&rules_text);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{out}"
    );
    let tests = dir.join("alerts.test.yaml");
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_one_that_does_not() {
    let rules = read("alerts.yaml");
    let tests = read("alerts.test.yaml");
    let names = alert_names(&rules);
    assert!(names.len() >= 12, "{names:?}");
    // (alert, whether the case expects it to fire), from `alertname:` and the next line.
    let mut cases = BTreeSet::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname: ") {
            let next = lines.get(i + 1).copied().unwrap_or_default();
            cases.insert((name.to_owned(), next != "exp_alerts: []"));
        }
    }
    for name in &names {
        assert!(
            name.starts_with("Sipnotify"),
            "{name}: alert names start with Sipnotify"
        );
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.clone(), fires)),
                "{name} has no unit test where it {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
    }
    // The conventions: a severity, the three annotations, and a runbook entry in the README.
    let readme = std::fs::read_to_string(monitoring_dir().join("../README.md")).unwrap();
    let severity = regex::Regex::new(r"severity: (critical|warning|info)\n").unwrap();
    for block in rules.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim();
        assert!(
            severity.is_match(block),
            "{name}: severity critical, warning or info"
        );
        for key in ["summary:", "description:", "runbook_url:"] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            block.contains(&anchor),
            "{name}: runbook_url ends in {anchor}"
        );
        assert!(
            readme.contains(&format!("### {name}\n")),
            "the README's Monitoring section has no `### {name}` (the runbook_url target)"
        );
    }
}

#[test]
fn every_dashboard_expression_parses() {
    if !have("promtool", "every_dashboard_expression_parses") {
        return;
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    let datasource = &dashboard["templating"]["list"][0];
    assert_eq!(
        datasource["type"], "datasource",
        "the data source is a variable"
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["datasource", "instance", "iface"] {
        assert!(variables.contains(&wanted), "no `{wanted}` variable");
    }
    // One recording rule per expression: promtool parses each one.
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 12, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = with_grafana_variables(expr);
        rules.push_str(&format!(
            "      - record: sipnotify_dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

/// Every metric name the rules and the dashboard refer to.
fn referenced_metrics() -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    let mut names = metric_names(&read("alerts.yaml"));
    for expr in dashboard_exprs(&dashboard)
        .into_iter()
        .chain(dashboard_variable_queries(&dashboard))
    {
        names.extend(metric_names(&expr));
    }
    names
}

/// Whether the Prometheus text `metrics` has a sample named `name`.
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().filter(|l| !l.starts_with('#')).any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(['{', ' ']))
    })
}

/// The agent's flags: capture on veth1, deliver to `bridge`, then `extra`.
fn agent_args<'a>(bridge: &'a NamespacedBridge, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--iface", "veth1"];
    args.extend(bridge.agent_args());
    args.extend_from_slice(extra);
    args
}

/// A bridge stand-in and the agent on veth1 of a fresh namespace pair, with `extra` flags.
fn agent_with_bridge(
    tag: &str,
    extra: &[&str],
) -> (VethPair, NamespacedBridge, sipnotify_testkit::Agent) {
    let net = VethPair::new(tag);
    let bridge = NamespacedBridge::start(&net.receiver, BridgeOptions::default(), "mon-bridge");
    let agent = start_agent(&net.receiver, &agent_args(&bridge, extra));
    (net, bridge, agent)
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_exported_before_any_traffic() {
    if !support::privileged(
        "every_metric_the_rules_and_dashboard_use_is_exported_before_any_traffic",
    ) {
        return;
    }
    let referenced = referenced_metrics();
    for name in [
        "sipnotify_bridge_up",
        "sipnotify_dropped_total",
        "process_cpu_seconds_total",
    ] {
        assert!(referenced.contains(name), "{referenced:?}");
    }
    // With a HEP listener too, so its metrics are linted as well.
    let (net, _bridge, agent) = agent_with_bridge("mexp", &["--hep-listen", "127.0.0.1:9060"]);
    // The scrape before any NOTIFY: what exists only after a first event would be missing.
    let (status, metrics) = net.receiver.http_get("127.0.0.1:9464", "/metrics");
    assert!(status.contains("200"), "{status}");
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|name| !exported(&metrics, name))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced by monitoring/ but not exported by the agent: {missing:?}\n{metrics}"
    );
    assert!(
        exported(&metrics, "sipnotify_hep_datagrams_total"),
        "the HEP listener's metrics are missing: the lint below would not see them"
    );
    // The conventions: counters end in _total, and the build information is there.
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} has no _total");
            }
        }
    }
    // Prometheus's own linter: HELP on every metric, units, suffixes.
    if have("promtool", "promtool check metrics") {
        use std::io::Write as _;
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        lint.stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics (a new metric needs a line in telemetry.rs HELP):\n{said}"
        );
    }
    let build = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sipnotify_build_info{")
                && l.contains(&build)
                && l.ends_with(" 1")),
        "no sipnotify_build_info with {build}:\n{metrics}"
    );
    assert!(
        sipnotify_testkit::metric(&metrics, "sipnotify_bridge_up", &[]) == Some(1.0),
        "the bridge answered the check before capture, so it is up before any delivery"
    );
    agent.stop();
}

/// A Prometheus server in a namespace, killed on drop; its files live in a temporary directory.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `alerts.yaml` with every `for:` set to `hold`, so a test waits seconds, not minutes.
fn with_short_for(rules: &str, hold: &str) -> String {
    rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!(
                "{}for: {hold}",
                &line[..line.len() - line.trim_start().len()]
            ),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET path` from `addr` in `ns`, as HTTP/1.0 (no chunked replies); the body.
fn get(ns: &sipnotify_testkit::NetNs, addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    ns.enter(|| {
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.contains(" 200 ").then(|| body.to_owned())
    })
}

/// The state (`pending`, `firing`) of alert `name` in Prometheus's `/api/v1/alerts`; `None`
/// when it is not active.
fn alert_state(ns: &sipnotify_testkit::NetNs, name: &str) -> Option<String> {
    let body = get(ns, "127.0.0.1:9090", "/api/v1/alerts")?;
    let reply: serde_json::Value = serde_json::from_str(&body).ok()?;
    reply["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

/// Polls `check` every 100 ms until it is true; the time it took, or `None` after `timeout`.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_real_prometheus_fires_and_resolves_alerts_against_a_live_agent() {
    const TEST: &str = "a_real_prometheus_fires_and_resolves_alerts_against_a_live_agent";
    if !support::privileged(TEST) || !have("prometheus", TEST) {
        return;
    }
    // The shipped rules, with `for: 5s` instead of minutes; scraped and evaluated every second.
    const HOLD: Duration = Duration::from_secs(5);
    const OUTAGE: Duration = Duration::from_secs(25);
    let (net, bridge, agent) = agent_with_bridge("mprom", &["--retry-max", "1s"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alerts.yaml"),
        with_short_for(&read("alerts.yaml"), "5s"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
         rule_files: [alerts.yaml]\n\
         scrape_configs:\n  - job_name: sipnotify\n    static_configs: [{targets: ['127.0.0.1:9464']}]\n",
    )
    .unwrap();
    let child = net
        .receiver
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus { child, _dir: dir };
    let ns = &net.receiver;

    // Prometheus has scraped the agent and sees the bridge up; nothing is alerting about it.
    let ready = wait_until(Duration::from_secs(30), || {
        get(
            ns,
            "127.0.0.1:9090",
            "/api/v1/query?query=sipnotify_bridge_up%3D%3D1",
        )
        .is_some_and(|body| body.contains("\"value\""))
    });
    assert!(
        ready.is_some(),
        "prometheus never saw sipnotify_bridge_up == 1"
    );
    let send = |i: u32| {
        net.sender.enter(|| {
            let socket = std::net::UdpSocket::bind("10.200.0.1:0").unwrap();
            socket
                .send_to(&genesys_notify(i, "1002", "talk"), "10.200.0.2:5061")
                .unwrap();
        });
    };
    send(0);
    assert!(bridge.wait_for(1, Duration::from_secs(10)), "no delivery");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(alert_state(ns, "SipnotifyBridgeFailing"), None);

    // Stop the bridge and capture a NOTIFY: the agent's requests fail.
    let stopped = Instant::now();
    bridge
        .runtime
        .block_on(bridge.bridge.refuse_connections_for(OUTAGE))
        .unwrap();
    send(1);
    let mut pending = None;
    let fired = wait_until(OUTAGE, || {
        match alert_state(ns, "SipnotifyBridgeFailing").as_deref() {
            Some("pending") => {
                pending.get_or_insert(stopped.elapsed());
                false
            }
            Some("firing") => true,
            _ => false,
        }
    });
    let fired = fired
        .map(|_| stopped.elapsed())
        .expect("SipnotifyBridgeFailing did not fire while the bridge was stopped");
    let pending = pending.expect("SipnotifyBridgeFailing fired without being pending first");
    assert!(
        fired >= pending + HOLD - Duration::from_secs(1),
        "fired at {fired:?}, pending since {pending:?}: `for` was not honoured"
    );

    // The bridge is back when the outage ends: the retried NOTIFY is delivered, and the alert
    // resolves.
    let back = OUTAGE.saturating_sub(stopped.elapsed());
    assert!(
        bridge.wait_for(2, back + Duration::from_secs(10)),
        "not delivered after the outage"
    );
    let delivered = stopped.elapsed();
    let resolved = wait_until(Duration::from_secs(20), || {
        alert_state(ns, "SipnotifyBridgeFailing").is_none()
    })
    .map(|_| stopped.elapsed())
    .expect("SipnotifyBridgeFailing did not resolve once the bridge was back");
    eprintln!(
        "SipnotifyBridgeFailing (for: {HOLD:?}, scrape and evaluation every 1 s): bridge stopped at 0 s; \
         pending at {pending:.1?}; firing at {fired:.1?}; bridge back at {OUTAGE:?}, retried NOTIFY \
         delivered at {delivered:.1?}; resolved at {resolved:.1?}"
    );

    // The agent stops: SipnotifyAgentDown fires; it starts again: the alert resolves.
    agent.stop();
    let agent_stopped = Instant::now();
    let down = wait_until(Duration::from_secs(30), || {
        alert_state(ns, "SipnotifyAgentDown").as_deref() == Some("firing")
    })
    .expect("SipnotifyAgentDown did not fire after the agent stopped");
    let restarted = start_agent(ns, &agent_args(&bridge, &["--retry-max", "1s"]));
    let started_again = agent_stopped.elapsed();
    let up = wait_until(Duration::from_secs(20), || {
        alert_state(ns, "SipnotifyAgentDown").is_none()
    })
    .map(|_| agent_stopped.elapsed())
    .expect("SipnotifyAgentDown did not resolve once the agent was back");
    eprintln!(
        "SipnotifyAgentDown (for: {HOLD:?}): agent stopped at 0 s; firing at {down:.1?}; agent \
         capturing again at {started_again:.1?}; resolved at {up:.1?}"
    );

    // The bridge refuses a NOTIFY for good (400): one `rejected` drop. The series exists at
    // zero from the start, so `increase()` sees this first drop and the alert fires.
    bridge
        .bridge
        .script([sipnotify_testkit::Reply::Status(400)]);
    send(2);
    let dropped = wait_until(Duration::from_secs(20), || {
        alert_state(ns, "SipnotifyNotificationsDropped").as_deref() == Some("firing")
    })
    .expect("SipnotifyNotificationsDropped did not fire for a notification the bridge refused");
    eprintln!(
        "SipnotifyNotificationsDropped (no `for`): NOTIFY refused with 400 at 0 s; firing at {dropped:.1?}"
    );
    drop(prometheus);
    restarted.stop();
}
