//! A local HTTPS stand-in for the WebRTC bridge, with failures on demand.
//!
//! It serves `POST /genesys-call-notify` over TLS with a certificate from its own throw-away
//! CA (rcgen), records every request and every object it acknowledged (with receipt time and
//! `Idempotency-Key`), and can be told to misbehave the ways a real bridge does: a scripted
//! sequence of replies (503 then 200, 429 with `Retry-After`, 400), an outage during which
//! connections are refused, a window of failing statuses, or a pause that holds replies back.
//! Tests assert on what it received; `cargo xtask demo` and the benches use it as the bridge.
//!
//! It binds where it is told (use `127.0.0.1:0`); it never connects anywhere.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use serde::de::IgnoredAny;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, oneshot},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The path the agent posts to by default.
pub const DEFAULT_PATH: &str = "/genesys-call-notify";

/// Why the bridge could not start or be controlled.
#[derive(Debug, thiserror::Error)]
pub enum TestBridgeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot make the test certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration failed.
    #[error("cannot set up tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Writing the CA file failed.
    #[error("cannot write the ca file `{}`: {source}", path.display())]
    WriteCa {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bridge's server task has ended.
    #[error("the test bridge has stopped")]
    Stopped,
}

/// How to start the bridge.
#[derive(Clone, Debug)]
pub struct BridgeOptions {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// The endpoint path; other paths get 404.
    pub path: String,
    /// Offer HTTP/2 by ALPN besides HTTP/1.1 (the real bridge, an Express app, speaks only
    /// HTTP/1.1).
    pub http2: bool,
    /// Keep every acknowledged object (tests); off, only counts are kept (benches).
    pub record_objects: bool,
    /// Names in the server certificate.
    pub subject_alt_names: Vec<String>,
    /// Serve this certificate chain and key (see [`super::certs`]) instead of one from the
    /// bridge's own throw-away CA; `subject_alt_names` is then unused.
    pub identity: Option<super::certs::ServerIdentity>,
    /// Require a client certificate signed by this CA (PEM): mutual TLS, as a bridge that
    /// only lets the agent in does. A handshake without one is refused.
    pub client_ca_pem: Option<String>,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            path: DEFAULT_PATH.to_owned(),
            http2: false,
            record_objects: true,
            subject_alt_names: vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            identity: None,
            client_ca_pem: None,
        }
    }
}

/// A scripted reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, with a short JSON body.
    Status(u16),
    /// This status with `Retry-After: seconds`.
    RetryAfter {
        /// The status (429 or 503).
        status: u16,
        /// The `Retry-After` value.
        seconds: u64,
    },
    /// This status with this body.
    Body {
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
}

impl Reply {
    /// 200 OK.
    pub fn ok() -> Self {
        Self::Status(200)
    }

    fn status(&self) -> u16 {
        match self {
            Self::Status(status) | Self::RetryAfter { status, .. } | Self::Body { status, .. } => {
                *status
            }
        }
    }
}

/// One object the bridge acknowledged (2xx).
#[derive(Clone, Debug)]
pub struct Received {
    /// The JSON object.
    pub object: serde_json::Value,
    /// The request's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// When the request arrived.
    pub received_at: SystemTime,
    /// The index of the request that carried it (see [`RequestRecord::index`]).
    pub request: u64,
}

/// One request, whatever the bridge answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Arrival order, from 0.
    pub index: u64,
    /// When it arrived (before any pause).
    pub received_at: SystemTime,
    /// The status the bridge answered.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Whether the body was a JSON array.
    pub array: bool,
    /// Objects in the body (1 for an object).
    pub objects: usize,
    /// The HTTP version, e.g. `HTTP/1.1`.
    pub version: String,
}

#[derive(Debug, Default)]
struct Script {
    replies: VecDeque<Reply>,
    default: Option<Reply>,
    failing: Option<(Instant, Reply)>,
    paused_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<RequestRecord>,
    received: Vec<Received>,
}

#[derive(Debug)]
struct Shared {
    path: String,
    record_objects: bool,
    script: Mutex<Script>,
    log: Mutex<Log>,
    next_index: AtomicU64,
    acknowledged: AtomicU64,
    changed: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Control {
    Refuse {
        window: Duration,
        closed: oneshot::Sender<()>,
    },
}

/// The running bridge. Dropping it stops the server.
#[derive(Debug)]
pub struct TestBridge {
    addr: SocketAddr,
    url: String,
    ca_pem: String,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    stop: CancellationToken,
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestBridge {
    /// Starts a bridge with default options on `127.0.0.1:0`.
    pub async fn start_default() -> Result<Self, TestBridgeError> {
        Self::start(BridgeOptions::default()).await
    }

    /// Generates a CA and a server certificate, binds, and serves in the background.
    pub async fn start(options: BridgeOptions) -> Result<Self, TestBridgeError> {
        let (ca_pem, tls) = tls_config(&options)?;
        let listener =
            TcpListener::bind(options.addr)
                .await
                .map_err(|source| TestBridgeError::Bind {
                    addr: options.addr,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TestBridgeError::Bind {
                addr: options.addr,
                source,
            })?;
        let shared = Arc::new(Shared {
            path: options.path.clone(),
            record_objects: options.record_objects,
            script: Mutex::new(Script::default()),
            log: Mutex::new(Log::default()),
            next_index: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let stop = CancellationToken::new();
        let (control, commands) = mpsc::unbounded_channel();
        tokio::spawn(serve(
            listener,
            addr,
            TlsAcceptor::from(Arc::new(tls)),
            Arc::clone(&shared),
            commands,
            stop.clone(),
        ));
        Ok(Self {
            addr,
            url: format!("https://{addr}{}", options.path),
            ca_pem,
            shared,
            control,
            stop,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL, `https://127.0.0.1:PORT/genesys-call-notify`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM of the CA that signed the server certificate (what `--ca-file` needs); with an
    /// [`BridgeOptions::identity`], its chain.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes [`TestBridge::ca_pem`] to `path`.
    pub fn write_ca_file(&self, path: &Path) -> Result<(), TestBridgeError> {
        std::fs::write(path, &self.ca_pem).map_err(|source| TestBridgeError::WriteCa {
            path: path.to_owned(),
            source,
        })
    }

    /// Queues replies for the next requests, one each, in order; after them the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).replies.extend(replies);
    }

    /// The reply once the script is used up (200 unless set).
    pub fn set_default_reply(&self, reply: Reply) {
        lock(&self.shared.script).default = Some(reply);
    }

    /// Answers every request with `reply` for `window` from now (before the script).
    pub fn fail_for(&self, window: Duration, reply: Reply) {
        lock(&self.shared.script).failing = Some((Instant::now() + window, reply));
    }

    /// Holds the reply of every request that arrives in the next `window` until it ends.
    pub fn pause_for(&self, window: Duration) {
        lock(&self.shared.script).paused_until = Some(Instant::now() + window);
    }

    /// Refuses connections for `window`: the listening socket is closed and open connections
    /// are closed gracefully (requests being answered finish first), then it listens again on
    /// the same port. Returns once the socket is closed.
    pub async fn refuse_connections_for(&self, window: Duration) -> Result<(), TestBridgeError> {
        let (closed, was_closed) = oneshot::channel();
        self.control
            .send(Control::Refuse { window, closed })
            .map_err(|_| TestBridgeError::Stopped)?;
        was_closed.await.map_err(|_| TestBridgeError::Stopped)
    }

    /// Every object acknowledged so far (empty when `record_objects` is off).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.log).received.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).requests.clone()
    }

    /// Objects acknowledged so far (counted even when not recorded).
    pub fn acknowledged(&self) -> u64 {
        self.shared.acknowledged.load(Ordering::Acquire)
    }

    /// Waits until at least `count` objects were acknowledged; false on timeout.
    pub async fn wait_for_acknowledged(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.acknowledged() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.acknowledged() >= count;
            }
        }
    }

    /// Stops the server (also done on drop).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A CA, a server certificate it signs, and the rustls server configuration.
fn tls_config(options: &BridgeOptions) -> Result<(String, ServerConfig), TestBridgeError> {
    if let Some(identity) = &options.identity {
        let chain = CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rustls::Error::General(format!("the identity's chain: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(|e| rustls::Error::General(format!("the identity's key: {e}")))?;
        let config = server_config(options, chain, key)?;
        return Ok((identity.chain_pem.clone(), config));
    }
    let ca_key = KeyPair::generate()?;
    let ca = super::certs::ca_params("sipnotify test bridge CA", None)?.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(options.subject_alt_names.clone())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "sipnotify test bridge");
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config = server_config(options, vec![server.der().clone()], key)?;
    Ok((ca.pem(), config))
}

fn server_config(
    options: &BridgeOptions,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &options.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                let cert =
                    cert.map_err(|e| rustls::Error::General(format!("the client ca: {e}")))?;
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(format!("the client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = if options.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The accept loop, with outages.
async fn serve(
    mut listener: TcpListener,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
) {
    // Cancelled to close the connections opened so far (outage or stop).
    let mut connections = stop.child_token();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            command = commands.recv() => {
                let Some(Control::Refuse { window, closed }) = command else { return };
                drop(listener);
                connections.cancel();
                connections = stop.child_token();
                let _ = closed.send(());
                tokio::select! {
                    () = tokio::time::sleep(window) => {}
                    () = stop.cancelled() => return,
                }
                listener = match rebind(addr).await {
                    Some(listener) => listener,
                    None => return,
                };
            }
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(
                        stream,
                        acceptor.clone(),
                        Arc::clone(&shared),
                        connections.clone(),
                    ));
                }
            }
        }
    }
}

/// Listens on the same address again after an outage (the port may linger briefly).
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Some(listener),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tracing::error!(%addr, "test bridge cannot listen again after the outage");
    None
}

async fn connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    close: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let tls = tokio::select! {
        tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)) => tls,
        () = close.cancelled() => return,
    };
    // A failed handshake (e.g. a client that does not trust us) just ends the connection.
    let Ok(Ok(tls)) = tls else { return };
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(serving);
    tokio::select! {
        _ = serving.as_mut() => {}
        () = close.cancelled() => {
            serving.as_mut().graceful_shutdown();
            let _ = serving.await;
        }
    }
}

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let received_at = SystemTime::now();
    if request.uri().path() != shared.path {
        return Ok(respond(&Reply::Status(404)));
    }
    if request.method() == Method::OPTIONS {
        // As Express answers OPTIONS on a route it has.
        let mut response = respond(&Reply::Status(200));
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return Ok(response);
    }
    if request.method() != Method::POST {
        return Ok(respond(&Reply::Status(405)));
    }
    let content_type = header(&request, "content-type");
    let authorization = header(&request, "authorization");
    let idempotency_key = header(&request, "idempotency-key");
    let version = format!("{:?}", request.version());
    let Ok(body) = request.into_body().collect().await else {
        return Ok(respond(&Reply::Status(400)));
    };
    let body = body.to_bytes();

    let paused_until = lock(&shared.script).paused_until;
    if let Some(until) = paused_until {
        tokio::time::sleep_until(until).await;
    }
    let reply = {
        let mut script = lock(&shared.script);
        let now = Instant::now();
        match &script.failing {
            Some((until, reply)) if now < *until => reply.clone(),
            _ => script
                .replies
                .pop_front()
                .or_else(|| script.default.clone())
                .unwrap_or_else(Reply::ok),
        }
    };

    // Like the Express bridge: a body that is not JSON is a 400, whatever the script says.
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let (objects, values) = if shared.record_objects {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(values)) => (values.len(), values),
            Ok(value @ serde_json::Value::Object(_)) => (1, vec![value]),
            _ => return Ok(invalid_json()),
        }
    } else if array {
        match serde_json::from_slice::<Vec<IgnoredAny>>(&body) {
            Ok(values) => (values.len(), Vec::new()),
            Err(_) => return Ok(invalid_json()),
        }
    } else {
        match serde_json::from_slice::<IgnoredAny>(&body) {
            Ok(_) => (1, Vec::new()),
            Err(_) => return Ok(invalid_json()),
        }
    };

    let status = reply.status();
    let acknowledged = (200..300).contains(&status);
    {
        let mut log = lock(&shared.log);
        let index = shared.next_index.fetch_add(1, Ordering::Relaxed);
        log.requests.push(RequestRecord {
            index,
            received_at,
            status,
            content_type,
            authorization,
            idempotency_key: idempotency_key.clone(),
            array,
            objects,
            version,
        });
        if acknowledged {
            log.received
                .extend(values.into_iter().map(|object| Received {
                    object,
                    idempotency_key: idempotency_key.clone(),
                    received_at,
                    request: index,
                }));
        }
    }
    if acknowledged {
        shared
            .acknowledged
            .fetch_add(objects as u64, Ordering::AcqRel);
    }
    shared.changed.notify_waiters();
    Ok(respond(&reply))
}

fn invalid_json() -> Response<Full<Bytes>> {
    respond(&Reply::Body {
        status: 400,
        body: r#"{"error":"invalid json"}"#.to_owned(),
    })
}

fn respond(reply: &Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match reply {
        Reply::Body { body, .. } => body.clone(),
        _ if status.is_success() => r#"{"ok":true}"#.to_owned(),
        _ => format!(r#"{{"error":"scripted {}"}}"#, status.as_u16()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Reply::RetryAfter { seconds, .. } = reply {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(*seconds),
        );
    }
    response
}
