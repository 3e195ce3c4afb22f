//! Signed requests verified by a real Node process running the README's verification (node's
//! own `crypto` and `http`, no packages): what `replay --bridge-signing-key-file` posts is
//! accepted, and a request with a forged signature is refused.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
};

const KEY: &str = "0123456789abcdef0123456789abcdef";

/// The README's check, in a bare `http` server: 200 for a valid signature, 401 otherwise;
/// prints `ok <dn>` or `bad` per POST.
const BRIDGE: &str = r#"
const crypto = require('crypto');
const http = require('http');
const KEY = process.env.SIPNOTIFY_BRIDGE_SIGNING_KEY;
function verify(header, body) {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header || '');
  if (!m || Math.abs(Date.now() / 1000 - Number(m[1])) > 300) return false;
  const want = crypto.createHmac('sha256', KEY).update(`${m[1]}.`).update(body).digest();
  return crypto.timingSafeEqual(want, Buffer.from(m[2], 'hex'));
}
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.method !== 'POST') { res.writeHead(200); return res.end(); }
    const body = Buffer.concat(chunks);
    if (!verify(req.headers['x-sipnotify-signature'], body)) {
      console.log('bad'); res.writeHead(401); return res.end();
    }
    console.log('ok ' + JSON.parse(body).dn); res.writeHead(200); res.end();
  });
});
server.listen(0, '127.0.0.1', () => console.log('port ' + server.address().port));
"#;

#[test]
fn a_node_bridge_accepts_the_agents_signatures_and_refuses_a_forged_one() {
    let Ok(out) = Command::new("node").arg("--version").output() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node is required in CI"
        );
        eprintln!("skipping: node is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bridge.js");
    std::fs::write(&script, BRIDGE).unwrap();
    let mut node = Command::new("node")
        .arg(&script)
        .env("SIPNOTIFY_BRIDGE_SIGNING_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("port ")
        .unwrap()
        .parse()
        .unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let capture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/pcaps/genesys_notify_talk_retrans_SYNTHETIC.pcap");
    let url = format!("http://127.0.0.1:{port}/genesys-call-notify");
    let (mut command, _config) = support::isolated_agent();
    let output = command
        .arg("replay")
        .arg(&capture)
        .args(["--bridge-url", &url, "--bridge-signing-key-file"])
        .arg(&key_file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert!(log.contains("1 delivered"), "{log}");
    // A request signed with another key.
    let body = br#"{"dn":"6666","call_id":"x","call_uuid":"y","event":"talk"}"#;
    let forged = format!(
        "POST /genesys-call-notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Sipnotify-Signature: t={},v1={}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        "0".repeat(64),
        body.len()
    );
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.write_all(forged.as_bytes()).unwrap();
    socket.write_all(body).unwrap();
    let mut reply = String::new();
    socket.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    let _ = node.kill();
    let _ = node.wait();
    let seen: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(seen, ["ok 1002", "bad"], "{log}");
}
