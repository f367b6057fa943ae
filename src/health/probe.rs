//! One probe of one address (SPEC §5): a TCP connect, or an HTTP/HTTPS request that follows
//! no redirects and reads at most 64 KiB. The check's timeout bounds the whole probe, so a
//! backend that accepts and never answers, drips bytes or sends an endless body fails on
//! time. The prober (prober.rs) schedules these; the result feeds state.rs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::time::Instant;

pub use crate::health::state::ProbeResult;
use crate::model::{CheckKind, CheckSpec};

/// SPEC §5: HTTP probes read at most the first 64 KiB of a body.
pub const MAX_BODY: usize = 64 * 1024;

/// Install rustls' ring provider as the process default. reqwest 0.13 built with
/// `rustls-no-provider` panics when a `Client` is built without one (notes/hickory-0.26.md
/// §1). Calling it again, or after someone else installed a provider, does nothing.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Shared TLS settings of every probe: the Mozilla roots and the no-verification config are
/// built once; a `ca_file` config is built per probe target (the file may change on reload).
#[derive(Clone)]
pub struct Clients {
    mozilla: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
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

    /// Everything a probe of `addr` needs that does not change between runs: the HTTP client
    /// (pinned to `addr` whatever `host` says), the URL and the headers. Errors (a bad
    /// `host`, an unreadable `ca_file`) become the failure of every run.
    pub fn target(&self, addr: IpAddr, spec: &Arc<CheckSpec>) -> Target {
        let http = match spec.kind {
            CheckKind::Tcp => None,
            CheckKind::Http | CheckKind::Https => Some(self.http(addr, spec)),
        };
        Target {
            addr,
            spec: Arc::clone(spec),
            http,
            source: self.source_for(addr),
        }
    }

    fn http(&self, addr: IpAddr, spec: &CheckSpec) -> Result<HttpTarget, String> {
        let tls = self.tls_for(spec)?;
        let scheme = if spec.kind == CheckKind::Https {
            "https"
        } else {
            "http"
        };
        let sock = SocketAddr::new(addr, spec.port);
        let host = spec.host.as_deref().map(str::to_ascii_lowercase);
        let authority = match &host {
            Some(h) => h.clone(),
            None => match addr {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            },
        };
        let url = format!("{scheme}://{authority}:{}{}", spec.port, spec.path);
        let url = reqwest::Url::parse(&url).map_err(|e| format!("bad url {url}: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // A fresh connection per probe: pooled ones would hide connect failures.
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .local_address(self.source_for(addr))
            .tls_backend_preconfigured((*tls).clone());
        let is_name = |h: &str| h.trim_matches(['[', ']']).parse::<IpAddr>().is_err();
        if let Some(h) = host.as_deref().filter(|h| is_name(h)) {
            // The name in the URL gives Host and SNI; the connection still goes to `addr`.
            builder = builder.resolve(h, sock);
        }
        let client = builder.build().map_err(|e| format!("client: {e}"))?;
        Ok(HttpTarget {
            client,
            url,
            headers: headers(spec)?,
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

/// Probe `addr` once with `spec`. The prober keeps a [`Target`] per key instead, so the
/// client is built once; this is for one-off probes and tests.
pub async fn run(clients: &Clients, addr: IpAddr, spec: &CheckSpec) -> ProbeResult {
    clients.target(addr, &Arc::new(spec.clone())).run().await
}

/// A prepared probe of one (address, check) pair.
#[derive(Debug)]
pub struct Target {
    addr: IpAddr,
    spec: Arc<CheckSpec>,
    http: Option<Result<HttpTarget, String>>,
    source: Option<IpAddr>,
}

#[derive(Debug)]
struct HttpTarget {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

impl Target {
    /// Run the probe once; never takes longer than the check's timeout (plus scheduling).
    pub async fn run(&self) -> ProbeResult {
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

    async fn attempt(&self) -> Result<(), String> {
        match &self.http {
            None => tcp(SocketAddr::new(self.addr, self.spec.port), self.source).await,
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(h)) => http(h, &self.spec).await,
        }
    }
}

async fn tcp(sock: SocketAddr, source: Option<IpAddr>) -> Result<(), String> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect(sock)
            .await
            .map(drop)
            .map_err(|e| io_error(&e));
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
    socket
        .connect(sock)
        .await
        .map(drop)
        .map_err(|e| io_error(&e))
}

async fn http(t: &HttpTarget, spec: &CheckSpec) -> Result<(), String> {
    let mut resp = t
        .client
        .get(t.url.clone())
        .headers(t.headers.clone())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = resp.status().as_u16();
    if !spec.expect_status.contains(status) {
        return Err(format!("status {status}"));
    }
    let Some(want) = spec.expect_body.as_deref() else {
        return Ok(());
    };
    let want_bytes = want.as_bytes();
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? else {
            break;
        };
        // Search only the new bytes and the overlap with the old ones; stop at the first hit.
        let from = body
            .len()
            .saturating_sub(want_bytes.len().saturating_sub(1));
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - body.len())]);
        if contains(&body[from..], want_bytes) {
            return Ok(());
        }
    }
    if contains(&body, want_bytes) {
        Ok(())
    } else {
        Err(format!("body lacks {want:?}"))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn headers(spec: &CheckSpec) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in &spec.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value of header {k:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// An operator-friendly line for a reqwest error: the innermost cause that says something,
/// with `tls:` in front of certificate and handshake problems.
fn describe(err: &reqwest::Error) -> String {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    let mut io_kind = None;
    // Bounded: error chains are a handful deep; this guards against a cyclic one.
    for _ in 0..16 {
        let Some(e) = next else { break };
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("tls: {tls}");
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => {
                io_kind = Some(io);
                // An io::Error's source() skips the error it wraps; look at that one too.
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => e.source(),
        };
        last = e.to_string();
    }
    match io_kind {
        Some(io) if !matches!(io.kind(), std::io::ErrorKind::Other) => io_error(io),
        _ => last,
    }
}

fn io_error(e: &std::io::Error) -> String {
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

/// HTTP/1.1 only: reqwest is built without HTTP/2, and a preconfigured config carries its own
/// ALPN list.
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

    #[test]
    fn body_search_is_a_byte_substring() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"o k", b"ok"));
        assert!(contains(b"", b""));
    }
}
