//! Health: real probes against real backends on 127.0.0.0/8 (HTTP 200/503/302, a hung, a
//! dripping and an endless backend, HTTPS with a CA made here, TCP), and the prober's
//! rise/fall timing, reconfigure and isolation of slow probes. Real sockets need real time,
//! so intervals are 100-300 ms and the whole module stays within a few seconds per test.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU16;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian::health::probe::{self, Clients};
use meridian::health::{Health, ProbeStatus, Prober, Sink};
use meridian::model::{CheckKind, CheckSpec, ProbeKey, Snapshot, StatusSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest a backend keeps a hung connection or keeps writing, so nothing outlives a test.
const BACKEND_HOLD: Duration = Duration::from_secs(20);

fn spec(kind: CheckKind, port: u16) -> CheckSpec {
    CheckSpec {
        kind,
        port,
        path: "/health".into(),
        host: None,
        expect_status: StatusSet::default(),
        expect_body: None,
        headers: Vec::new(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        rise: 1,
        fall: 1,
        ca_file: None,
        tls_verify: true,
        quorum: Default::default(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

// ---------------------------------------------------------------------------------------
// Backends

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// 200 "ok".
    Ok,
    Status(u16),
    /// 302 to itself.
    Redirect,
    /// Accepts, reads the request, never answers.
    Hang,
    /// One byte of a valid response every 200 ms.
    Drip,
    /// 200 and a body that never ends, repeating this text.
    Endless(&'static str),
}

struct Backend {
    addr: SocketAddr,
    /// Host header of every request, in order.
    hosts: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Backend {
    fn port(&self) -> u16 {
        self.addr.port()
    }
    fn requests(&self) -> usize {
        self.hosts.lock().expect("hosts").len()
    }
    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP backend on `ip` (port 0 = any).
async fn http_backend(ip: &str, port: u16, mode: Mode) -> Backend {
    let sock = SocketAddr::new(self::ip(ip), port);
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(sock).expect("bind backend");
    let listener = socket.listen(1024).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn(serve(listener, mode, Arc::clone(&hosts)));
    Backend { addr, hosts, task }
}

async fn serve(listener: TcpListener, mode: Mode, hosts: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let hosts = Arc::clone(&hosts);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(BACKEND_HOLD, answer(conn, mode, hosts)).await;
        });
    }
}

async fn answer(
    mut conn: TcpStream,
    mode: Mode,
    hosts: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let head = read_head(&mut conn).await?;
    hosts
        .lock()
        .expect("hosts")
        .push(header(&head, "host").unwrap_or_default());
    match mode {
        Mode::Ok => reply(&mut conn, "200 OK", "", "ok\n").await,
        Mode::Status(code) => reply(&mut conn, &format!("{code} Whatever"), "", "no\n").await,
        Mode::Redirect => reply(&mut conn, "302 Found", "Location: /health\r\n", "").await,
        Mode::Hang => {
            tokio::time::sleep(BACKEND_HOLD).await;
            Ok(())
        }
        Mode::Drip => {
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n" {
                conn.write_all(&[*b]).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        }
        Mode::Endless(text) => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await?;
            let chunk = text.repeat(4096 / text.len().max(1) + 1);
            // Bounded: 1 GiB at most, and BACKEND_HOLD bounds the time.
            for _ in 0..(1 << 30) / chunk.len() {
                conn.write_all(chunk.as_bytes()).await?;
            }
            Ok(())
        }
    }
}

async fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

async fn reply(conn: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

/// A port on `ip` where nothing listens (bound, then closed).
fn closed_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((self::ip(ip), 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------
// One probe

struct Case {
    what: &'static str,
    mode: Mode,
    tweak: fn(&mut CheckSpec),
    /// None = pass; Some(text) = fails with an error containing it.
    fails_with: Option<&'static str>,
}

#[tokio::test]
async fn http_probe_outcomes() {
    let cases = [
        Case {
            what: "200",
            mode: Mode::Ok,
            tweak: |_| {},
            fails_with: None,
        },
        Case {
            what: "200 with body",
            mode: Mode::Ok,
            tweak: |s| s.expect_body = Some("ok".into()),
            fails_with: None,
        },
        Case {
            what: "body lacks text",
            mode: Mode::Ok,
            tweak: |s| s.expect_body = Some("healthy".into()),
            fails_with: Some("body lacks \"healthy\""),
        },
        Case {
            what: "503",
            mode: Mode::Status(503),
            tweak: |_| {},
            fails_with: Some("status 503"),
        },
        Case {
            what: "503 expected",
            mode: Mode::Status(503),
            tweak: |s| {
                s.expect_status = StatusSet {
                    codes: vec![503],
                    classes: vec![],
                }
            },
            fails_with: None,
        },
        Case {
            what: "302 not followed",
            mode: Mode::Redirect,
            tweak: |_| {},
            fails_with: Some("status 302"),
        },
        Case {
            what: "302 expected",
            mode: Mode::Redirect,
            tweak: |s| {
                s.expect_status = StatusSet {
                    codes: vec![302],
                    classes: vec![],
                }
            },
            fails_with: None,
        },
        Case {
            what: "hung backend",
            mode: Mode::Hang,
            tweak: |s| s.timeout = Duration::from_millis(300),
            fails_with: Some("timeout after 300ms"),
        },
        Case {
            what: "dripping backend",
            mode: Mode::Drip,
            tweak: |s| s.timeout = Duration::from_millis(300),
            fails_with: Some("timeout after 300ms"),
        },
        Case {
            what: "endless body without the text",
            mode: Mode::Endless("xxxxxxxx"),
            tweak: |s| s.expect_body = Some("ok".into()),
            fails_with: Some("body lacks \"ok\""),
        },
        Case {
            what: "endless body with the text",
            mode: Mode::Endless("all ok, "),
            tweak: |s| s.expect_body = Some("ok".into()),
            fails_with: None,
        },
    ];
    let clients = Clients::new();
    for case in cases {
        let backend = http_backend("127.0.0.1", 0, case.mode).await;
        let mut s = spec(CheckKind::Http, backend.port());
        (case.tweak)(&mut s);
        let started = Instant::now();
        let r = probe::run(&clients, backend.addr.ip(), &s).await;
        let took = started.elapsed();
        match case.fails_with {
            None => assert!(r.ok, "{}: {r:?}", case.what),
            Some(text) => {
                assert!(!r.ok, "{}: {r:?}", case.what);
                let e = r.error.as_deref().unwrap_or_default();
                assert!(
                    e.contains(text),
                    "{}: error {e:?} lacks {text:?}",
                    case.what
                );
            }
        }
        // The timeout bounds the whole probe, whatever the backend does.
        assert!(
            took < s.timeout + Duration::from_millis(200),
            "{}: took {took:?}",
            case.what
        );
        if matches!(case.mode, Mode::Redirect) {
            assert_eq!(
                backend.requests(),
                1,
                "{}: the redirect was followed",
                case.what
            );
        }
    }
}

#[tokio::test]
async fn endless_body_stops_after_64_kib() {
    let backend = http_backend("127.0.0.1", 0, Mode::Endless("x")).await;
    let mut s = spec(CheckKind::Http, backend.port());
    s.expect_body = Some("ok".into());
    s.timeout = Duration::from_secs(5);
    let started = Instant::now();
    let r = probe::run(&Clients::new(), backend.addr.ip(), &s).await;
    assert_eq!(r.error.as_deref(), Some("body lacks \"ok\""));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "read the endless body for {:?}",
        started.elapsed()
    );
}

/// `--probe-source`: HTTP and TCP probes leave from the given address (the backend sees
/// it as the peer), with no cluster involved.
#[tokio::test]
async fn probes_bind_to_the_probe_source() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, peer)) = listener.accept().await else {
                return;
            };
            seen.lock().expect("peers").push(peer.ip());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let clients = Clients::new().with_source(Some(ip("127.0.0.77")));
    for kind in [CheckKind::Http, CheckKind::Tcp] {
        let r = probe::run(&clients, ip("127.0.0.1"), &spec(kind, port)).await;
        assert!(r.ok, "{kind:?}: {r:?}");
    }
    // An IPv6 target keeps the system's source (a v4 source cannot bind a v6 socket).
    let r = probe::run(
        &clients,
        ip("::1"),
        &spec(CheckKind::Tcp, closed_port("127.0.0.1")),
    )
    .await;
    assert!(r.error.is_some_and(|e| !e.contains("bind")));
    assert_eq!(
        *peers.lock().expect("peers"),
        [ip("127.0.0.77"), ip("127.0.0.77")]
    );
    task.abort();
}

#[tokio::test]
async fn connection_refused_and_tcp_probes() {
    let clients = Clients::new();
    let closed = closed_port("127.0.0.1");
    let r = probe::run(&clients, ip("127.0.0.1"), &spec(CheckKind::Http, closed)).await;
    assert_eq!(r.error.as_deref(), Some("connection refused"), "{r:?}");
    let r = probe::run(&clients, ip("127.0.0.1"), &spec(CheckKind::Tcp, closed)).await;
    assert_eq!(r.error.as_deref(), Some("connection refused"), "{r:?}");

    // A TCP check passes on connect alone, even when the backend never says a word.
    let open = http_backend("127.0.0.1", 0, Mode::Hang).await;
    let r = probe::run(
        &clients,
        ip("127.0.0.1"),
        &spec(CheckKind::Tcp, open.port()),
    )
    .await;
    assert!(r.ok, "{r:?}");
}

#[tokio::test]
async fn host_header_names_the_host_but_the_address_is_probed() {
    // 127.0.0.2 proves that the probe goes to the address, not to what `host` resolves to.
    let backend = http_backend("127.0.0.2", 0, Mode::Ok).await;
    let mut s = spec(CheckKind::Http, backend.port());
    s.host = Some("www.example.test".into());
    s.headers = vec![
        ("User-Agent".into(), "meridian-probe".into()),
        ("X-Probe".into(), "1".into()),
    ];
    let r = probe::run(&Clients::new(), ip("127.0.0.2"), &s).await;
    assert!(r.ok, "{r:?}");
    let hosts = backend.hosts.lock().expect("hosts").clone();
    assert_eq!(hosts, [format!("www.example.test:{}", backend.port())]);

    // Without `host`, the Host header is the address.
    let r = probe::run(
        &Clients::new(),
        ip("127.0.0.2"),
        &spec(CheckKind::Http, backend.port()),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let last = backend.hosts.lock().expect("hosts").last().cloned();
    assert_eq!(last, Some(format!("127.0.0.2:{}", backend.port())));
}

// ---------------------------------------------------------------------------------------
// Connection reuse

/// A keep-alive HTTP/1.1 backend: answers every request of a connection with the current
/// status (and body "ok"), and closes a connection silently after `per_conn` requests.
struct KeepAlive {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive_backend(per_conn: usize) -> KeepAlive {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let status = Arc::new(AtomicU16::new(200));
    let (c, r, s) = (conns.clone(), requests.clone(), status.clone());
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the backend closes them too.
        let mut open = tokio::task::JoinSet::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            while open.try_join_next().is_some() {}
            c.fetch_add(1, SeqCst);
            let (r, s) = (r.clone(), s.clone());
            open.spawn(tokio::time::timeout(BACKEND_HOLD, async move {
                for _ in 0..per_conn {
                    let head = read_head(&mut conn).await.unwrap_or_default();
                    if head.is_empty() {
                        return;
                    }
                    r.fetch_add(1, SeqCst);
                    let msg = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: 2\r\n\r\nok",
                        s.load(SeqCst)
                    );
                    if conn.write_all(msg.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }));
        }
    });
    KeepAlive {
        addr,
        conns,
        requests,
        status,
        task,
    }
}

#[tokio::test]
async fn http_probes_reuse_one_connection_and_renew_it_every_n_probes() {
    let backend = keep_alive_backend(1000).await;
    let mut s = spec(CheckKind::Http, backend.addr.port());
    s.expect_body = Some("ok".into());
    let mut target = Clients::new().target(backend.addr.ip(), &Arc::new(s));
    let n = 2 * probe::MAX_PROBES_PER_CONNECTION as usize + 5;
    for i in 0..n {
        let r = target.run().await;
        assert!(r.ok, "probe {i}: {r:?}");
    }
    assert_eq!(backend.requests.load(SeqCst), n);
    // Connecting is still tested: a fresh connection every MAX_PROBES_PER_CONNECTION probes.
    assert_eq!(backend.conns.load(SeqCst), 3);
}

#[tokio::test]
async fn a_failed_probe_drops_its_connection() {
    let backend = keep_alive_backend(1000).await;
    let mut target = Clients::new().target(
        backend.addr.ip(),
        &Arc::new(spec(CheckKind::Http, backend.addr.port())),
    );
    assert!(target.run().await.ok);
    backend.status.store(503, SeqCst);
    let r = target.run().await;
    assert_eq!(r.error.as_deref(), Some("status 503"), "{r:?}");
    backend.status.store(200, SeqCst);
    assert!(target.run().await.ok);
    assert_eq!(
        backend.conns.load(SeqCst),
        2,
        "no fresh connection after the failure"
    );
}

#[tokio::test]
async fn a_kept_connection_closed_while_idle_is_retried_on_a_fresh_one() {
    // The server closes after each response without saying so (no `Connection: close`).
    let backend = keep_alive_backend(1).await;
    let mut target = Clients::new().target(
        backend.addr.ip(),
        &Arc::new(spec(CheckKind::Http, backend.addr.port())),
    );
    for i in 0..5 {
        // Let the close arrive, as it would during an interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = target.run().await;
        assert!(r.ok, "probe {i}: {r:?}");
    }
    assert_eq!(backend.requests.load(SeqCst), 5);
    assert_eq!(backend.conns.load(SeqCst), 5);
}

#[tokio::test]
async fn a_dead_backend_fails_the_probe_even_with_a_kept_connection() {
    let backend = keep_alive_backend(1000).await;
    let mut target = Clients::new().target(
        backend.addr.ip(),
        &Arc::new(spec(CheckKind::Http, backend.addr.port())),
    );
    assert!(target.run().await.ok);
    // Listener and connections gone: the kept one is retried fresh, and that is refused.
    backend.task.abort();
    drop(backend);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = target.run().await;
    assert!(!r.ok, "{r:?}");
}

// ---------------------------------------------------------------------------------------
// HTTPS with a CA made here

struct TlsBackend {
    port: u16,
    ca_file: std::path::PathBuf,
    /// SNI of every handshake.
    sni: Arc<Mutex<Vec<Option<String>>>>,
    /// Full or resumed, for every handshake.
    kinds: Arc<Mutex<Vec<Option<rustls::HandshakeKind>>>>,
}

/// A blocking rustls server on 127.0.0.1 for `name`, its certificate signed by a fresh CA
/// written to a PEM file. Serves at most `max_conns` connections, on a thread of its own.
fn tls_backend(name: &str, max_conns: usize) -> TlsBackend {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");

    let dir =
        std::env::temp_dir().join(format!("meridian-health-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");

    meridian::health::install_crypto_provider();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sni);
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let kinds_seen = Arc::clone(&kinds);
    std::thread::spawn(move || {
        for conn in listener.incoming().take(max_conns) {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let Ok(tls) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let _ = serve_tls(&mut stream);
            kinds_seen
                .lock()
                .expect("kinds")
                .push(stream.conn.handshake_kind());
            seen.lock()
                .expect("sni")
                .push(stream.conn.server_name().map(str::to_string));
        }
    });
    TlsBackend {
        port,
        ca_file,
        sni,
        kinds,
    }
}

fn serve_tls(
    stream: &mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")?;
    stream.conn.send_close_notify();
    stream.flush()
}

#[tokio::test]
async fn https_verifies_against_ca_file_mozilla_or_nothing() {
    let backend = tls_backend("www.example.test", 8);
    let clients = Clients::new();
    let https = |ca: Option<&std::path::Path>, verify: bool, host: &str| {
        let mut s = spec(CheckKind::Https, backend.port);
        s.host = Some(host.into());
        s.expect_body = Some("ok".into());
        s.ca_file = ca.map(|p| p.to_path_buf());
        s.tls_verify = verify;
        s
    };
    let lo = ip("127.0.0.1");

    let r = probe::run(
        &clients,
        lo,
        &https(Some(&backend.ca_file), true, "www.example.test"),
    )
    .await;
    assert!(r.ok, "ca_file: {r:?}");

    // The Mozilla roots do not know our CA.
    let r = probe::run(&clients, lo, &https(None, true, "www.example.test")).await;
    let e = r.error.unwrap_or_default();
    assert!(e.starts_with("tls:"), "mozilla roots: {e:?}");

    // The right CA, the wrong name.
    let r = probe::run(
        &clients,
        lo,
        &https(Some(&backend.ca_file), true, "other.example.test"),
    )
    .await;
    let e = r.error.unwrap_or_default();
    assert!(e.starts_with("tls:"), "wrong name: {e:?}");

    let r = probe::run(&clients, lo, &https(None, false, "other.example.test")).await;
    assert!(r.ok, "tls_verify = false: {r:?}");

    // SNI came from `host` in every handshake.
    let deadline = Instant::now() + Duration::from_secs(2);
    while backend.sni.lock().expect("sni").len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sni = backend.sni.lock().expect("sni").clone();
    assert_eq!(
        sni.first(),
        Some(&Some("www.example.test".to_string())),
        "{sni:?}"
    );
    assert_eq!(
        sni.last(),
        Some(&Some("other.example.test".to_string())),
        "{sni:?}"
    );
}

#[tokio::test]
async fn https_probes_resume_their_tls_session() {
    let backend = tls_backend("www.example.test", 3);
    let mut s = spec(CheckKind::Https, backend.port);
    s.host = Some("www.example.test".into());
    s.ca_file = Some(backend.ca_file.clone());
    let mut target = Clients::new().target(ip("127.0.0.1"), &Arc::new(s));
    // The backend closes every connection, so each probe connects and shakes hands anew.
    for i in 0..3 {
        let r = target.run().await;
        assert!(r.ok, "probe {i}: {r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while backend.kinds.lock().expect("kinds").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(
        *backend.kinds.lock().expect("kinds"),
        [Some(Full), Some(Resumed), Some(Resumed)]
    );
}

#[tokio::test]
async fn unreadable_ca_file_fails_every_probe() {
    let mut s = spec(CheckKind::Https, closed_port("127.0.0.1"));
    s.ca_file = Some("/nonexistent/ca.pem".into());
    let r = probe::run(&Clients::new(), ip("127.0.0.1"), &s).await;
    let e = r.error.unwrap_or_default();
    assert!(e.starts_with("tls: ca_file /nonexistent/ca.pem"), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// The prober

/// A sink that keeps every call.
fn recording_sink() -> (Sink, Arc<Mutex<Vec<Vec<ProbeStatus>>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::clone(&calls);
    let sink: Sink = Arc::new(move |v| c.lock().expect("calls").push(v));
    (sink, calls)
}

fn snapshot(keys: &[ProbeKey]) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        probes: keys.to_vec(),
        ..Snapshot::default()
    })
}

fn key(addr: &str, spec: CheckSpec) -> ProbeKey {
    ProbeKey {
        addr: ip(addr),
        check: Arc::new(spec),
    }
}

/// Poll the prober until `want` holds for probe `i`; the time it took, or None after `limit`.
async fn wait_for(
    prober: &Prober,
    i: usize,
    limit: Duration,
    want: impl Fn(&ProbeStatus) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if prober.statuses().get(i).is_some_and(&want) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn killed_backend_goes_down_within_fall_intervals_and_comes_back_after_rise() {
    let backend = http_backend("127.0.0.3", 0, Mode::Ok).await;
    let port = backend.port();
    let mut s = spec(CheckKind::Http, port);
    s.rise = 2;
    s.fall = 2;
    let interval = s.interval;
    let (sink, calls) = recording_sink();
    let prober = Prober::start(snapshot(&[key("127.0.0.3", s)]), sink);
    // Until then it is unknown (counted as up); the first probe ran at once.
    let slack = Duration::from_millis(150);
    let took = wait_for(&prober, 0, interval * 3 + slack, |p| p.health == Health::Up).await;
    assert!(took.is_some(), "never came up");

    // Steady state: probes go on, the sink hears of them at most once per refresh period.
    let (calls0, probes0) = (
        calls.lock().expect("calls").len(),
        prober.statuses()[0].total_passes,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (calls1, probes1) = (
        calls.lock().expect("calls").len(),
        prober.statuses()[0].total_passes,
    );
    assert!(
        probes1 - probes0 >= 4,
        "{} probes in 1 s",
        probes1 - probes0
    );
    assert!(
        calls1 - calls0 <= 2,
        "{} sink calls for {} steady probes",
        calls1 - calls0,
        probes1 - probes0
    );

    backend.kill();
    let took = wait_for(&prober, 0, interval * 3 + slack, |p| {
        p.health == Health::Down
    })
    .await;
    let took = took.expect("not down within fall × interval + interval");
    let st = prober.statuses()[0].clone();
    assert_eq!(st.last_error.as_deref(), Some("connection refused"));
    assert!(st.failures >= 2, "{st:?}");
    eprintln!("down after {took:?}");

    let _again = http_backend("127.0.0.3", port, Mode::Ok).await;
    let took = wait_for(&prober, 0, interval * 3 + slack, |p| p.health == Health::Up).await;
    assert!(took.is_some(), "not up within rise × interval + interval");

    // The sink saw the flips (debounced), and not a call per probe.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let calls = calls.lock().expect("calls").clone();
    let healths: Vec<Health> = calls.iter().map(|v| v[0].health).collect();
    assert!(
        healths.contains(&Health::Down) && healths.last() == Some(&Health::Up),
        "{healths:?}"
    );
    prober.shutdown().await;
}

#[tokio::test]
async fn reconfigure_keeps_state_by_key_and_drops_removed_keys() {
    let up = http_backend("127.0.0.4", 0, Mode::Ok).await;
    let gone = http_backend("127.0.0.5", 0, Mode::Ok).await;
    let down_port = closed_port("127.0.0.6");
    let k_up = key("127.0.0.4", spec(CheckKind::Http, up.port()));
    let k_gone = key("127.0.0.5", spec(CheckKind::Http, gone.port()));
    let k_down = key("127.0.0.6", spec(CheckKind::Tcp, down_port));
    let (sink, _calls) = recording_sink();
    let prober = Prober::start(
        snapshot(&[k_up.clone(), k_gone.clone(), k_down.clone()]),
        sink,
    );
    let limit = Duration::from_secs(2);
    assert!(
        wait_for(&prober, 0, limit, |p| p.health == Health::Up)
            .await
            .is_some()
    );
    assert!(
        wait_for(&prober, 2, limit, |p| p.health == Health::Down)
            .await
            .is_some()
    );

    // New order, one key gone, one new: equal keys (built anew, not the same Arcs) keep
    // their state; the new key starts unknown and is probed at once.
    let fresh = http_backend("127.0.0.7", 0, Mode::Ok).await;
    let k_new = key("127.0.0.7", spec(CheckKind::Http, fresh.port()));
    let same_down = key("127.0.0.6", spec(CheckKind::Tcp, down_port));
    let same_up = key("127.0.0.4", spec(CheckKind::Http, up.port()));
    let statuses = prober.reconfigure(snapshot(&[same_down, k_new, same_up]));
    assert_eq!(statuses.len(), 3);
    assert_eq!(statuses[0].health, Health::Down);
    assert_eq!(statuses[1].health, Health::Unknown);
    assert_eq!(statuses[2].health, Health::Up);
    assert!(statuses[2].total_passes >= 1);

    let waited = wait_for(&prober, 1, Duration::from_millis(300), |p| {
        p.health == Health::Up
    })
    .await;
    assert!(waited.is_some(), "the new key was not probed at once");

    // The removed key is not probed any more.
    let before = gone.requests();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gone.requests(), before, "a removed key is still probed");
    assert!(up.requests() >= 3, "a kept key stopped being probed");
    prober.shutdown().await;
}

#[tokio::test]
async fn hung_probes_do_not_stall_a_fast_one() {
    let hung = http_backend("127.0.0.8", 0, Mode::Hang).await;
    let fast = http_backend("127.0.0.9", 0, Mode::Ok).await;
    let mut keys = Vec::new();
    keys.push(key("127.0.0.9", spec(CheckKind::Http, fast.port())));
    for i in 0..20 {
        let mut s = spec(CheckKind::Http, hung.port());
        s.path = format!("/hung/{i}");
        s.timeout = Duration::from_secs(1);
        keys.push(key("127.0.0.8", s));
    }
    let (sink, _calls) = recording_sink();
    let prober = Prober::start(snapshot(&keys), sink);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let st = prober.statuses();
    // One at once, one at a random phase within 200 ms, then every 200 ms: about 10 in 2 s.
    assert!(
        st[0].total_passes >= 8,
        "the fast probe ran {} times in {window:?}",
        st[0].total_passes
    );
    assert_eq!(st[0].health, Health::Up);
    let hung_done: u64 = st[1..].iter().map(|s| s.total_failures).sum();
    assert!(hung_done >= 20, "hung probes finished {hung_done} times");
    assert_eq!(st[1].last_error.as_deref(), Some("timeout after 1s"));
    let stats = prober.stats();
    let fast_label = format!("http:{}/health", fast.port());
    let fast_stats = stats
        .checks
        .iter()
        .find(|c| c.label == fast_label)
        .expect("stats of the fast check");
    assert!(fast_stats.ok >= 8 && fast_stats.fail == 0, "{fast_stats:?}");
    assert_eq!(fast_stats.duration.count, fast_stats.ok);
    let hung_label = format!("http:{}/hung/0", hung.port());
    let hung_stats = stats
        .checks
        .iter()
        .find(|c| c.label == hung_label)
        .expect("stats of a hung check");
    assert!(hung_stats.fail >= 1 && hung_stats.ok == 0, "{hung_stats:?}");
    prober.shutdown().await;
}

/// The app holds its own lock around `reconfigure` and takes it inside the sink (reload.rs):
/// that must not deadlock, and the last sink call must match the last snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_under_the_callers_lock_does_not_deadlock() {
    let closed = closed_port("127.0.0.10");
    let published = Arc::new(Mutex::new(Vec::<ProbeStatus>::new()));
    let p = Arc::clone(&published);
    let sink: Sink = Arc::new(move |v| *p.lock().expect("published") = v);
    let set = move |n: usize, offset: usize| -> Arc<Snapshot> {
        let keys: Vec<ProbeKey> = (0..n)
            .map(|i| {
                let mut s = spec(CheckKind::Tcp, closed);
                s.interval = Duration::from_millis(20);
                s.path = format!("/{}", i + offset);
                s.port = closed;
                s.timeout = Duration::from_millis(100 + (i + offset) as u64);
                key("127.0.0.10", s)
            })
            .collect();
        snapshot(&keys)
    };
    let prober = Arc::new(Prober::start(set(10, 0), sink));
    let churn = {
        let prober = Arc::clone(&prober);
        let published = Arc::clone(&published);
        tokio::task::spawn_blocking(move || {
            for round in 0..40 {
                let snap = set(5 + round % 7, round * 3);
                let mut guard = published.lock().expect("published");
                *guard = prober.reconfigure(Arc::clone(&snap));
                drop(guard);
                std::thread::sleep(Duration::from_millis(15));
            }
            set(5 + 39 % 7, 39 * 3).probes.len()
        })
    };
    let last_len = tokio::time::timeout(Duration::from_secs(10), churn)
        .await
        .expect("reconfigure deadlocked with the sink")
        .expect("churn task");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(published.lock().expect("published").len(), last_len);
    Arc::into_inner(prober).expect("one owner").shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Load: `cargo test --release --test it -- --ignored probe_load --nocapture`

/// CPU seconds (user + system) of the threads whose name starts with `prefix`.
fn cpu_seconds(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !prefix.is_empty() && !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the name: state is field 3 of stat(5), utime 14, stime 15.
        let utime: u64 = fields[11].parse().unwrap_or(0);
        let stime: u64 = fields[12].parse().unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
}

#[test]
#[ignore = "load measurement, ~25 s: run with --release --ignored probe_load --nocapture"]
fn probe_load() {
    const KEYS: usize = 2000;
    const BACKENDS: usize = 20;
    const RUN: Duration = Duration::from_secs(20);
    // Backends on their own runtime and threads, so the prober's CPU can be told apart.
    let backends_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("backend")
        .enable_all()
        .build()
        .expect("backend runtime");
    let backends: Vec<Backend> = (0..BACKENDS)
        .map(|i| backends_rt.block_on(http_backend(&format!("127.0.2.{}", i + 1), 0, Mode::Ok)))
        .collect();
    let probe_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("prober")
        .enable_all()
        .build()
        .expect("probe runtime");
    let keys: Vec<ProbeKey> = (0..KEYS)
        .map(|i| {
            let b = &backends[i % BACKENDS];
            let mut s = spec(CheckKind::Http, b.port());
            s.interval = Duration::from_secs(2);
            s.timeout = Duration::from_secs(1);
            s.rise = 2;
            s.fall = 2;
            s.path = format!("/health/{i}");
            s.expect_body = Some("ok".into());
            ProbeKey {
                addr: b.addr.ip(),
                check: Arc::new(s),
            }
        })
        .collect();
    let sink_calls = Arc::new(Mutex::new(0usize));
    let c = Arc::clone(&sink_calls);
    let sink: Sink = Arc::new(move |_| *c.lock().expect("calls") += 1);
    let prober = probe_rt.block_on(async { Prober::start(snapshot(&keys), sink) });
    // Skip the start (every key at once), measure the steady state.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, all0, t0) = (
        cpu_seconds("prober"),
        cpu_seconds(""),
        std::time::Instant::now(),
    );
    let probes0: u64 = prober
        .statuses()
        .iter()
        .map(|s| s.total_passes + s.total_failures)
        .sum();
    std::thread::sleep(RUN);
    let (cpu1, all1, wall) = (
        cpu_seconds("prober"),
        cpu_seconds(""),
        t0.elapsed().as_secs_f64(),
    );
    let st = prober.statuses();
    let probes1: u64 = st.iter().map(|s| s.total_passes + s.total_failures).sum();
    let failures: u64 = st.iter().map(|s| s.total_failures).sum();
    let down = st.iter().filter(|s| s.health == Health::Down).count();
    let served: usize = backends.iter().map(Backend::requests).sum();
    println!(
        "probe_load: {KEYS} keys, interval 2s, {wall:.1}s: {:.0} probes/s (expected {}), prober threads {:.3} CPU s/s, whole process (backends included) {:.3} CPU s/s, {failures} failures total, {down} down, {} sink calls, {served} requests served",
        (probes1 - probes0) as f64 / wall,
        KEYS / 2,
        (cpu1 - cpu0) / wall,
        (all1 - all0) / wall,
        *sink_calls.lock().expect("calls"),
    );
    probe_rt.block_on(prober.shutdown());
    assert_eq!(down, 0, "loopback backends went down under load");
}

// ---------------------------------------------------------------------------------------
// Overrides

#[test]
fn overrides_resolve_by_zone_and_pool_name_and_keep_unknown_entries() {
    use meridian::health::{Override, OverrideStore};
    use meridian::model::{Pool, PoolId, Soa, Zone, ZoneId, wire};

    let zone = |origin: &str, pools: Vec<PoolId>| Zone {
        origin: origin.into(),
        origin_wire: wire::from_text(origin).expect("origin"),
        file: format!("zones/{origin}toml").into(),
        serial: 1,
        soa: Soa {
            mname: wire::from_text("ns1.example.test.").expect("mname"),
            rname: wire::from_text("hostmaster.example.test.").expect("rname"),
            refresh: 3600,
            retry: 600,
            expire: 1_209_600,
            minimum: 30,
        },
        soa_ttl: 300,
        policy_ttl: 30,
        nodes: Default::default(),
        name_count: 0,
        check_count: 0,
        pools,
        dnssec: None,
        key: None,
    };
    let pool = |name: &str, zone: u32| Pool {
        name: name.into(),
        zone: ZoneId(zone),
        endpoints: Vec::new(),
        location: None,
        check: None,
        check_name: None,
        min_healthy: 1,
    };
    let snap = Snapshot {
        zones: vec![
            zone("a.example.test.", vec![PoolId(0), PoolId(1)]),
            zone("b.example.test.", vec![PoolId(2)]),
        ],
        pools: vec![pool("us-east", 0), pool("eu-west", 0), pool("us-east", 1)],
        ..Snapshot::default()
    };

    let dir =
        std::env::temp_dir().join(format!("meridian-health-overrides-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = OverrideStore::load(&dir).expect("empty store");
    store
        .set("A.example.test", "EU-west", None, Override::Drain)
        .expect("set");
    store
        .set("b.example.test.", "us-east", None, Override::Down)
        .expect("set");
    store
        .set("gone.example.test.", "us-east", None, Override::Up)
        .expect("set");
    assert_eq!(
        store.resolve(&snap),
        [None, Some(Override::Drain), Some(Override::Down)]
    );

    // A restart reads the same, the entry for a zone not loaded included.
    let again = OverrideStore::load(&dir).expect("reload");
    assert_eq!(
        again.resolve(&snap),
        [None, Some(Override::Drain), Some(Override::Down)]
    );
    assert_eq!(
        again.get("gone.example.test", "us-east", None),
        Some(Override::Up)
    );
    let text = std::fs::read_to_string(dir.join("overrides.json")).expect("file");
    assert!(text.contains("\"drain\""), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// End to end: real backends, real probes, real DNS answers

/// The answer of `name` from the in-process server.
async fn dns_answer(server: &crate::support::Server, name: &str) -> Vec<String> {
    let started = std::time::Instant::now();
    let m = server.ask(&crate::support::Query::new(name, 1)).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "DNS kept answering promptly"
    );
    crate::support::answers(&m)
}

/// Poll `name` until it answers `want`; the time it took.
async fn until_answer(
    server: &crate::support::Server,
    name: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if dns_answer(server, name).await == [want] {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{name} did not move to {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_follows_a_killed_backend_and_its_return() {
    let primary = http_backend("127.0.0.3", 0, Mode::Ok).await;
    let port = primary.port();
    let _backup = http_backend("127.0.0.4", port, Mode::Ok).await;
    let _hung = http_backend("127.0.0.5", port, Mode::Hang).await;
    let _endless = http_backend("127.0.0.6", port, Mode::Endless("x")).await;
    let zone = format!(
        r#"
origin = "hc.test."
[soa]
mname = "ns.hc.test."
rname = "h.hc.test."
[pools.primary]
A = ["198.51.100.1"]
check = "web"
probe_address = {{ "198.51.100.1" = "127.0.0.3" }}
[pools.backup]
A = ["198.51.100.2"]
check = "web"
probe_address = {{ "198.51.100.2" = "127.0.0.4" }}
[pools.hung]
A = ["198.51.100.3"]
check = "web"
probe_address = {{ "198.51.100.3" = "127.0.0.5" }}
[pools.endless]
A = ["198.51.100.4"]
check = "web"
probe_address = {{ "198.51.100.4" = "127.0.0.6" }}
[checks.web]
kind = "http"
port = {port}
expect_body = "ok"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 2
[policies.www]
failover = ["primary", "backup"]
[policies.slow]
failover = ["hung", "backup"]
[policies.big]
failover = ["endless", "backup"]
"#
    );
    let dir = crate::support::zone_dir("e2e-health", &[("hc.toml", &zone)]);
    let server = crate::support::Server::start(crate::support::settings(&dir, None)).await;
    assert_eq!(dns_answer(&server, "www.hc.test").await, ["198.51.100.1"]);

    // A hung backend and an endless body fail on the timeout; DNS answers all along.
    let limit = Duration::from_secs(3);
    until_answer(&server, "slow.hc.test", "198.51.100.2", limit).await;
    until_answer(&server, "big.hc.test", "198.51.100.2", limit).await;

    // fall × interval, plus one interval (the probe in flight), plus scheduling slack.
    primary.kill();
    let down = until_answer(&server, "www.hc.test", "198.51.100.2", limit).await;
    assert!(down < Duration::from_millis(1200), "failover took {down:?}");

    let _back = http_backend("127.0.0.3", port, Mode::Ok).await;
    let up = until_answer(&server, "www.hc.test", "198.51.100.1", limit).await;
    assert!(up < Duration::from_millis(1200), "recovery took {up:?}");
    server.stop().await;
}

/// With the clock paused, time is virtual: the schedule is checked exactly, however busy the
/// machine. Every probe fails (nothing listens), so each key must be down after `fall`
/// results: the first at once, the next at a random phase inside the interval, then one per
/// interval.
#[tokio::test(start_paused = true)]
async fn paused_clock_probes_run_at_once_then_every_interval_and_flip_after_fall() {
    let port = closed_port("127.0.0.7");
    let mut s = spec(CheckKind::Tcp, port);
    s.interval = Duration::from_secs(2);
    s.timeout = Duration::from_secs(1);
    s.fall = 3;
    let keys: Vec<ProbeKey> = (1..=40)
        .map(|i| key(&format!("127.0.7.{i}"), s.clone()))
        .collect();
    let (sink, _calls) = recording_sink();
    let started = tokio::time::Instant::now();
    let prober = Prober::start(snapshot(&keys), sink);

    tokio::time::sleep(Duration::from_millis(1)).await;
    let first: Vec<u64> = prober.statuses().iter().map(|p| p.total_failures).collect();
    assert!(
        first.iter().all(|n| *n >= 1),
        "the first probe runs at once: {first:?}"
    );

    loop {
        if prober.statuses().iter().all(|p| p.health == Health::Down) {
            break;
        }
        assert!(started.elapsed() < s.interval * 4, "not all down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    // fall = 3: at once, at a phase in (0, interval], then one interval later.
    assert!(took <= s.interval * 2 + s.timeout, "down after {took:?}");

    tokio::time::sleep(s.interval * 10).await;
    let counts: Vec<u64> = prober.statuses().iter().map(|p| p.total_failures).collect();
    let elapsed = started.elapsed().as_secs_f64() / s.interval.as_secs_f64();
    for n in &counts {
        assert!(
            (*n as f64 - elapsed).abs() <= 2.0,
            "one probe per interval: {n} probes in {elapsed:.1} intervals"
        );
    }
    prober.shutdown().await;
}
