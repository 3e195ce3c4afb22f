//! A real Kamailio (Debian's `kamailio` + `kamailio-tls-modules`) in a test's namespace,
//! mirroring every SIP message it receives and sends as HEP with `siptrace` (TLS ones in
//! clear), and the clients that hand it NOTIFYs over UDP and TLS. Kamailio answers every
//! request with 200 itself (`sl_send_reply`), as a UA would, so each NOTIFY it receives is
//! mirrored once; with `forward_to` it is a proxy instead: it sends NOTIFYs on, statelessly
//! under its own Via, to an [`AnsweringUa`] there, and mirrors each twice (as received and as
//! sent on). The whole process group is killed on drop.
#![allow(
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    reason = "test support: a panic with context is the report"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{NetNs, certs};

/// Where Debian installs Kamailio's modules.
const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/// How Kamailio is set up.
#[derive(Clone, Debug)]
pub struct KamailioOptions {
    /// Its UDP SIP address.
    pub udp: SocketAddr,
    /// Its TLS SIP address, if any.
    pub tls: Option<SocketAddr>,
    /// Where `siptrace` sends HEP.
    pub hep_to: SocketAddr,
    /// `hep_version`: 1, 2 or 3.
    pub hep_version: u8,
    /// `auth_key` (HEPv3 only).
    pub auth_key: Option<String>,
    /// Forward NOTIFYs to this address (UDP) instead of answering them.
    pub forward_to: Option<SocketAddr>,
}

/// A running Kamailio; killed (with its children) on drop.
pub struct Kamailio {
    child: Child,
    /// The TLS CA the client trusts, PEM.
    ca_pem: String,
    options: KamailioOptions,
    dir: tempfile::TempDir,
}

impl Kamailio {
    /// Whether Kamailio with its TLS module is installed; when not, prints why the test
    /// skips, and under `CI=true` fails (CI installs it through `cargo xtask setup`).
    pub fn available(test: &str) -> bool {
        let present = Path::new("/usr/sbin/kamailio").exists()
            && Path::new(MODULES).join("siptrace.so").exists()
            && Path::new(MODULES).join("tls.so").exists();
        if !present {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} cannot be skipped in CI: kamailio and kamailio-tls-modules are not installed"
            );
            eprintln!("skipping {test}: kamailio and kamailio-tls-modules are not installed");
        }
        present
    }

    /// Starts Kamailio in `ns` and waits until it answers on UDP (the probes' HEP is sent
    /// before anything listens for it, so start the agent after this).
    pub fn start(ns: &NetNs, options: KamailioOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (made, _) = certs::mkcert_style(
            dir.path(),
            &[&options
                .tls
                .map_or("127.0.0.1".to_owned(), |a| a.ip().to_string())],
        );
        let cert = dir.path().join("kamailio.pem");
        let key = dir.path().join("kamailio.key");
        std::fs::write(&cert, &made.identity.chain_pem).unwrap();
        std::fs::write(&key, &made.identity.key_pem).unwrap();
        let ca_pem = std::fs::read_to_string(&made.ca_file).unwrap();
        let config = dir.path().join("kamailio.cfg");
        std::fs::write(&config, config_text(&options, &cert, &key)).unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        let child = ns
            .command("kamailio")
            .args(["-DD", "-E", "-f"])
            .arg(&config)
            .arg("-Y")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-w")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so drop reaches the children it forks.
            .process_group(0)
            .spawn()
            .expect("start kamailio");
        let kamailio = Self {
            child,
            ca_pem,
            options,
            dir,
        };
        kamailio.wait_ready(ns);
        kamailio
    }

    /// Kamailio's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    fn wait_ready(&self, ns: &NetNs) {
        let udp = self.options.udp;
        let log = || self.log();
        ns.enter(|| {
            let socket = UdpSocket::bind(SocketAddr::new(udp.ip(), 0)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            let probe = format!(
                "OPTIONS sip:{udp} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-probe\r\n\
                 From: <sip:probe@{udp}>;tag=1\r\nTo: <sip:{udp}>\r\nCall-ID: probe\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                socket.local_addr().unwrap()
            );
            let mut buf = [0; 2048];
            loop {
                socket.send_to(probe.as_bytes(), udp).unwrap();
                if socket.recv(&mut buf).is_ok() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "kamailio did not start:\n{}",
                    log()
                );
            }
        });
        if let Some(tls) = self.options.tls {
            // The TLS listener is up with the UDP one; the port must accept.
            ns.enter(|| {
                let deadline = Instant::now() + Duration::from_secs(5);
                while TcpStream::connect(tls).is_err() {
                    assert!(
                        Instant::now() < deadline,
                        "kamailio tls did not start:\n{}",
                        log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    }

    /// Sends each message over UDP from `from` and waits for its reply.
    pub fn send_udp(&self, ns: &NetNs, from: SocketAddr, messages: &[Vec<u8>]) {
        let to = self.options.udp;
        ns.enter(|| {
            let socket = UdpSocket::bind(from).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0; 4096];
            for message in messages {
                socket.send_to(message, to).unwrap();
                let n = socket
                    .recv(&mut buf)
                    .expect("a reply from kamailio over udp");
                assert!(
                    buf[..n].starts_with(b"SIP/2.0 200"),
                    "{}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
        });
    }

    /// Sends each message over one TLS connection (rustls, trusting Kamailio's test CA) and
    /// waits for every reply.
    pub fn send_tls(&self, ns: &NetNs, messages: &[Vec<u8>]) {
        let to = self.options.tls.expect("kamailio started with tls");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::from(to.ip());
        ns.enter(|| {
            let tcp = TcpStream::connect(to).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            for message in messages {
                tls.write_all(message).unwrap();
            }
            tls.flush().unwrap();
            let mut replies = Vec::new();
            let mut buf = [0; 4096];
            while count(&replies, b"SIP/2.0 200") < messages.len() {
                let n = tls.read(&mut buf).expect("replies from kamailio over tls");
                assert!(n > 0, "kamailio closed the tls connection");
                replies.extend_from_slice(&buf[..n]);
            }
        });
    }
}

use rustls::pki_types::pem::PemObject as _;

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn config_text(options: &KamailioOptions, cert: &Path, key: &Path) -> String {
    let mut cfg = format!(
        "#!KAMAILIO\n\
         debug=1\nlog_stderror=yes\nchildren=1\ntcp_children=1\nauto_aliases=no\n\
         listen=udp:{udp}\n\
         mpath=\"{MODULES}/\"\n\
         loadmodule \"sl.so\"\nloadmodule \"siptrace.so\"\n\
         modparam(\"siptrace\", \"duplicate_uri\", \"sip:{hep}\")\n\
         modparam(\"siptrace\", \"hep_mode_on\", 1)\n\
         modparam(\"siptrace\", \"hep_version\", {version})\n\
         modparam(\"siptrace\", \"hep_capture_id\", 2001)\n\
         modparam(\"siptrace\", \"trace_on\", 1)\n\
         modparam(\"siptrace\", \"trace_mode\", 1)\n\
         modparam(\"siptrace\", \"trace_to_database\", 0)\n",
        udp = options.udp,
        hep = options.hep_to,
        version = options.hep_version,
    );
    if let Some(key) = &options.auth_key {
        cfg.push_str(&format!(
            "modparam(\"siptrace\", \"auth_key\", \"{key}\")\n"
        ));
    }
    if let Some(tls) = options.tls {
        cfg.push_str(&format!(
            "listen=tls:{tls}\nenable_tls=yes\nloadmodule \"tls.so\"\n\
             modparam(\"tls\", \"certificate\", \"{}\")\n\
             modparam(\"tls\", \"private_key\", \"{}\")\n\
             modparam(\"tls\", \"tls_method\", \"TLSv1.2+\")\n\
             modparam(\"tls\", \"verify_certificate\", 0)\n\
             modparam(\"tls\", \"require_certificate\", 0)\n",
            cert.display(),
            key.display()
        ));
    }
    // Replies go where the request came from, whatever its Via says (the test NOTIFYs name
    // the Genesys host). Forwarding is stateless (core `forward`, no tm): the reply comes
    // back through Kamailio by the Via it added.
    let forward = options.forward_to.map_or_else(String::new, |to| {
        format!(
            "  if (method==\"NOTIFY\") {{\n    forward(\"{}\", {});\n    exit;\n  }}\n",
            to.ip(),
            to.port()
        )
    });
    cfg.push_str(&format!(
        "request_route {{\n  force_rport();\n{forward}  sl_send_reply(\"200\", \"OK\");\n  exit;\n}}\n"
    ));
    cfg
}

/// A UA that answers every request it receives on a UDP address with 200, copying the Vias
/// and the dialog headers, as the far end of a proxied NOTIFY does. Stops on drop.
pub struct AnsweringUa {
    addr: SocketAddr,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AnsweringUa {
    /// Listens on `addr` in `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let socket = ns.enter(|| UdpSocket::bind(addr).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (answered, stop) = (answered.clone(), stop.clone());
            move || {
                let mut buf = [0; 65_536];
                while !stop.load(Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let request = String::from_utf8_lossy(&buf[..n]);
                    if request.starts_with("SIP/2.0") {
                        continue;
                    }
                    let mut reply = String::from("SIP/2.0 200 OK\r\n");
                    for line in request.lines() {
                        let name = line.split(':').next().unwrap_or("").trim();
                        let copied = ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"];
                        if copied.iter().any(|c| name.eq_ignore_ascii_case(c)) {
                            reply.push_str(line);
                            reply.push_str("\r\n");
                        }
                    }
                    reply.push_str("Content-Length: 0\r\n\r\n");
                    if socket.send_to(reply.as_bytes(), from).is_ok() {
                        answered.fetch_add(1, Relaxed);
                    }
                }
            }
        });
        Self {
            addr,
            answered,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for AnsweringUa {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: signalling the process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
