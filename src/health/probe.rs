//! One probe of one address (SPEC §5): a TCP connect, or an HTTP/HTTPS request that follows
//! no redirects and reads at most 64 KiB (http.rs). The check's timeout bounds the whole
//! probe, so a backend that accepts and never answers, drips bytes or sends an endless body
//! fails on time. The prober (prober.rs) schedules these; the result feeds state.rs.
//!
//! HTTP and HTTPS probes keep their connection for the next probe of the same endpoint, as
//! Envoy's health checker does (`reuse_connection`), and open a fresh one after any failure,
//! when the server does not keep the connection, and at least every
//! [`MAX_PROBES_PER_CONNECTION`] probes, so that connecting is still tested. A kept
//! connection that gives no response at all (the server closed it while idle) is retried once
//! on a fresh connection within the same timeout. TLS sessions are resumed from rustls'
//! in-memory cache, so a fresh https connection costs an abbreviated handshake.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use crate::health::http::MAX_BODY;
use crate::health::http::{self, Expect, Failure};
pub use crate::health::state::ProbeResult;
use crate::model::{CheckKind, CheckSpec};

/// A kept connection carries at most this many probes before a fresh one is opened, so a
/// backend that stopped accepting connections is noticed within this many intervals (20 s at
/// the example's 2 s) even while an old connection still answers. Envoy has no such bound by
/// default; Apache closes a keep-alive connection after 100 requests (MaxKeepAliveRequests).
pub const MAX_PROBES_PER_CONNECTION: u32 = 10;

/// Kept connections use at most a quarter of the process' open files limit (RLIMIT_NOFILE,
/// raised to the hard limit at start): TCP DNS may take half (Knot's `tcp-max-clients`,
/// dns/tcp.rs), the rest is left for probes being opened, UDP sockets, the admin API and
/// files. Past it, probes open a connection each time.
const KEPT_SHARE_OF_FD_LIMIT: usize = 4;

/// Install rustls' ring provider as the process default. Tests that build reqwest clients
/// (built with `rustls-no-provider`) need one (notes/hickory-0.26.md §1). Calling it again, or
/// after someone else installed a provider, does nothing.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Shared TLS settings of every probe: the Mozilla roots and the no-verification config are
/// built once; a `ca_file` config is built per probe target (the file may change on reload).
/// Also counts the connections kept between probes against their budget.
#[derive(Clone)]
pub struct Clients {
    mozilla: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
    kept: Arc<KeptBudget>,
    /// `--probe-source`: the local address probes bind to (SPEC §5).
    source: Option<IpAddr>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

impl Clients {
    pub fn new() -> Clients {
        install_crypto_provider();
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mozilla = tls_config(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let insecure = tls_config(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify))
                .with_no_client_auth(),
        );
        Clients {
            mozilla: Arc::new(mozilla),
            insecure: Arc::new(insecure),
            kept: Arc::new(KeptBudget::new(fd_limit() / KEPT_SHARE_OF_FD_LIMIT)),
            source: None,
        }
    }

    /// Probes bind to `source` (`--probe-source`); targets of the other address family
    /// keep the system's choice, as a socket of one family cannot bind an address of the
    /// other.
    pub fn with_source(mut self, source: Option<IpAddr>) -> Clients {
        self.source = source;
        self
    }

    /// The source address for a probe of `addr`, when one is set and of its family.
    fn source_for(&self, addr: IpAddr) -> Option<IpAddr> {
        self.source.filter(|s| s.is_ipv4() == addr.is_ipv4())
    }

    /// Everything a probe of `addr` needs that does not change between runs: the address,
    /// the TLS connector and server name, the rendered request. Errors (a bad `host` or
    /// header, an unreadable `ca_file`) become the failure of every run.
    pub fn target(&self, addr: IpAddr, spec: &Arc<CheckSpec>) -> Target {
        let http = match spec.kind {
            CheckKind::Tcp => None,
            CheckKind::Http | CheckKind::Https => Some(self.http(addr, spec)),
        };
        Target {
            addr,
            spec: Arc::clone(spec),
            http,
            conn: None,
            kept: Arc::clone(&self.kept),
            source: self.source_for(addr),
        }
    }

    fn http(&self, addr: IpAddr, spec: &CheckSpec) -> Result<HttpTarget, String> {
        let host = spec.host.as_deref().map(str::to_ascii_lowercase);
        let name = match &host {
            Some(h) => h.clone(),
            None => match addr {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            },
        };
        let default_port = match spec.kind {
            CheckKind::Https => 443,
            _ => 80,
        };
        // RFC 9110 §7.2: Host carries the port unless it is the scheme's default.
        let authority = if spec.port == default_port {
            name.clone()
        } else {
            format!("{name}:{}", spec.port)
        };
        let tls = match spec.kind {
            CheckKind::Https => {
                let config = self.tls_for(spec)?;
                let sni = name.trim_matches(['[', ']']).to_string();
                let server_name =
                    ServerName::try_from(sni).map_err(|e| format!("bad host {name:?}: {e}"))?;
                Some((TlsConnector::from(config), server_name))
            }
            _ => None,
        };
        Ok(HttpTarget {
            sock: SocketAddr::new(addr, spec.port),
            tls,
            request: http::request(spec, &authority)?,
        })
    }

    fn tls_for(&self, spec: &CheckSpec) -> Result<Arc<ClientConfig>, String> {
        if !spec.tls_verify {
            return Ok(Arc::clone(&self.insecure));
        }
        let Some(path) = &spec.ca_file else {
            return Ok(Arc::clone(&self.mozilla));
        };
        let pem =
            std::fs::read(path).map_err(|e| format!("tls: ca_file {}: {e}", path.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("tls: ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls: ca_file {}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("tls: ca_file {}: no certificate", path.display()));
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(tls_config(config)))
    }
}

/// Probe `addr` once with `spec`, on a fresh connection. The prober keeps a [`Target`] per
/// key instead, so the request is rendered once and connections are reused; this is for
/// one-off probes and tests.
pub async fn run(clients: &Clients, addr: IpAddr, spec: &CheckSpec) -> ProbeResult {
    clients.target(addr, &Arc::new(spec.clone())).run().await
}

/// A prepared probe of one (address, check) pair, with its kept connection.
#[derive(Debug)]
pub struct Target {
    addr: IpAddr,
    spec: Arc<CheckSpec>,
    http: Option<Result<HttpTarget, String>>,
    conn: Option<Conn>,
    kept: Arc<KeptBudget>,
    source: Option<IpAddr>,
}

struct HttpTarget {
    sock: SocketAddr,
    /// https: the connector (its config holds the session cache) and the SNI/verified name.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    request: Box<[u8]>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("sock", &self.sock)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A connection kept between probes; holds one unit of the [`KeptBudget`] while kept.
#[derive(Debug)]
struct Conn {
    stream: Stream,
    probes: u32,
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Target {
    /// Run the probe once; never takes longer than the check's timeout (plus scheduling).
    pub async fn run(&mut self) -> ProbeResult {
        let start = Instant::now();
        let timeout = self.spec.timeout;
        let outcome = tokio::time::timeout(timeout, self.attempt()).await;
        let rtt = start.elapsed();
        match outcome {
            Ok(Ok(())) => ProbeResult::pass(rtt),
            Ok(Err(e)) => ProbeResult::fail(rtt, e),
            Err(_) => ProbeResult::fail(rtt, format!("timeout after {}", human(timeout))),
        }
    }

    async fn attempt(&mut self) -> Result<(), String> {
        let h = match &self.http {
            None => {
                return open(SocketAddr::new(self.addr, self.spec.port), self.source)
                    .await
                    .map(drop);
            }
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(h)) => h,
        };
        let expect = Expect {
            status: &self.spec.expect_status,
            body: self.spec.expect_body.as_deref().map(str::as_bytes),
        };
        // Taken out first: whatever happens below (a failure, the timeout dropping this
        // future), a connection is only kept again after a clean pass.
        if let Some(mut conn) = self.conn.take() {
            self.kept.release();
            match exchange(&mut conn.stream, &h.request, &expect).await {
                Ok(reusable) => {
                    self.conn = keep(conn, reusable, &self.kept);
                    return Ok(());
                }
                // Closed while idle: try a fresh connection, as HTTP clients do.
                Err(Failure::NoResponse(_)) => {}
                Err(f) => return Err(f.into_message()),
            }
        }
        let mut conn = Conn {
            stream: connect(h, self.source).await?,
            probes: 0,
        };
        match exchange(&mut conn.stream, &h.request, &expect).await {
            Ok(reusable) => {
                self.conn = keep(conn, reusable, &self.kept);
                Ok(())
            }
            Err(f) => Err(f.into_message()),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.kept.release();
        }
    }
}

/// Keep `conn` for the next probe if the exchange allows it, it is not due for renewal and
/// the budget has room.
fn keep(mut conn: Conn, reusable: bool, budget: &KeptBudget) -> Option<Conn> {
    conn.probes += 1;
    (reusable && conn.probes < MAX_PROBES_PER_CONNECTION && budget.acquire()).then_some(conn)
}

async fn exchange(
    stream: &mut Stream,
    request: &[u8],
    expect: &Expect<'_>,
) -> Result<bool, Failure> {
    match stream {
        Stream::Plain(s) => http::exchange(s, request, expect).await,
        Stream::Tls(s) => http::exchange(s.as_mut(), request, expect).await,
    }
}

async fn connect(h: &HttpTarget, source: Option<IpAddr>) -> Result<Stream, String> {
    let tcp = open(h.sock, source).await?;
    // One small request and one response: nothing to gain from Nagle's delay.
    let _ = tcp.set_nodelay(true);
    match &h.tls {
        None => Ok(Stream::Plain(tcp)),
        Some((connector, name)) => connector
            .connect(name.clone(), tcp)
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| tls_error(&e)),
    }
}

/// A TCP connection to `sock`, from `source` when set.
async fn open(sock: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let Some(source) = source else {
        return TcpStream::connect(sock).await.map_err(|e| io_error(&e));
    };
    let socket = if sock.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| io_error(&e))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("cannot bind probe source {source}: {e}"))?;
    socket.connect(sock).await.map_err(|e| io_error(&e))
}

/// How many connections may be kept between probes at once (see [`KEPT_SHARE_OF_FD_LIMIT`]).
#[derive(Debug)]
struct KeptBudget {
    kept: AtomicUsize,
    max: usize,
}

impl KeptBudget {
    fn new(max: usize) -> KeptBudget {
        KeptBudget {
            kept: AtomicUsize::new(0),
            max,
        }
    }

    fn acquire(&self) -> bool {
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.kept.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open files limit in force ([`crate::connections::fd_limit`]), as a count.
fn fd_limit() -> usize {
    usize::try_from(crate::connections::fd_limit()).unwrap_or(usize::MAX)
}

/// `tls: ...` for a handshake or certificate problem, else the I/O error.
fn tls_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("tls: {tls}"),
        None => io_error(e),
    }
}

pub(super) fn io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "connect timed out".into(),
        UnexpectedEof => "connection closed early".into(),
        _ => e.to_string(),
    }
}

/// `1s`, `1500ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// HTTP/1.1 only: the probe speaks nothing else.
fn tls_config(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// `tls_verify = false`: any certificate, but the handshake signatures are still checked so
/// the connection is real TLS.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_zone_file() {
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human(Duration::from_millis(200)), "200ms");
    }
}
