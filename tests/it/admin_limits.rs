//! The admin API's limits over real sockets: half-sent requests closed within seconds while
//! `/healthz` keeps answering, the connection cap with longest-idle eviction, the body size
//! and time limits, and the connection lifetime.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian::admin::{AdminLimits, serve_with_limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Server, settings};

const HALF_SENT: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: meridian\r\n";

/// The status of the response to `request`, `None` if the connection closes without one.
async fn status(s: &mut TcpStream, request: &[u8], wait: Duration) -> Option<u16> {
    s.write_all(request).await.ok()?;
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        std::str::from_utf8(got.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// `GET /healthz` on a new connection: its status and how long it took.
async fn healthz(addr: SocketAddr) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut s = connect(addr).await;
    let code = status(
        &mut s,
        b"GET /healthz HTTP/1.1\r\nHost: meridian\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    (code, started.elapsed())
}

/// Whether the server closes `s` within `wait`.
async fn closes_within(mut s: TcpStream, wait: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, drain).await.is_ok()
}

/// The admin API of a running server on its own listener, with `limits`.
async fn admin_with(limits: AdminLimits) -> (Server, SocketAddr, tokio::sync::watch::Sender<bool>) {
    let server = Server::start(settings(std::path::Path::new("zones"), None)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve_with_limits(
        listener,
        server.running.control.clone(),
        stop_rx,
        limits,
    ));
    (server, addr, stop)
}

fn short_limits() -> AdminLimits {
    AdminLimits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        max_body: 1024,
        max_connections: 4,
        lifetime: Duration::from_secs(60),
        grace: Duration::from_millis(300),
    }
}

/// Issue 8: 2,000 half-sent requests were held for 70 s and more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_requests_are_closed_within_seconds_and_healthz_answers() {
    const HALF_OPEN: usize = 2000;
    let mut cfg = settings(std::path::Path::new("zones"), None);
    cfg.admin = Some("127.0.0.1:0".parse().expect("addr"));
    let server = Server::start(cfg).await;
    let fd_limit = meridian::connections::fd_limit();
    assert!(
        fd_limit >= 3 * HALF_OPEN as u64,
        "this test needs {} open files; the limit is {fd_limit}",
        3 * HALF_OPEN
    );
    let addr = server.running.admin.expect("admin listening");
    let opened = Instant::now();
    let mut held = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        let mut s = connect(addr).await;
        // The server may already have closed an older one to make room; that is the point.
        let _ = s.write_all(HALF_SENT).await;
        held.push(s);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let (code, took) = healthz(addr).await;
        assert_eq!(
            code,
            Some(200),
            "/healthz with {HALF_OPEN} half-sent requests"
        );
        worst = worst.max(took);
    }
    eprintln!("/healthz answered within {worst:?} at worst beside {HALF_OPEN} half-sent requests");
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    // Every half-sent request is closed by the head deadline (5 s) or eviction.
    let limit = meridian::admin::limits::ADMIN_HEADER_TIMEOUT + Duration::from_secs(3);
    let mut checks = tokio::task::JoinSet::new();
    for s in held {
        let wait = limit.saturating_sub(opened.elapsed());
        checks.spawn(closes_within(s, wait));
    }
    let mut open = 0;
    while let Some(closed) = checks.join_next().await {
        open += usize::from(!closed.expect("task"));
    }
    assert_eq!(open, 0, "half-sent requests still open after {limit:?}");
    assert_eq!(healthz(addr).await.0, Some(200));
    server.stop().await;
}

#[tokio::test]
async fn a_full_cap_closes_the_longest_idle_connection_and_refuses_only_when_all_are_busy() {
    let mut limits = short_limits();
    limits.header_timeout = Duration::from_secs(30);
    limits.body_timeout = Duration::from_secs(30);
    let (server, addr, stop) = admin_with(limits).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = connect(addr).await;
        s.write_all(HALF_SENT).await.expect("write");
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: /healthz takes the place of the oldest half-sent request.
    assert_eq!(healthz(addr).await.0, Some(200));
    assert!(closes_within(idle.remove(0), Duration::from_secs(1)).await);
    // Four requests waiting for their bodies are busy: a fifth connection is refused.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut s = connect(addr).await;
        s.write_all(
            b"PUT /v1/overrides/gslb.example.test./us-east HTTP/1.1\r\nHost: m\r\n\
              Content-Length: 20\r\n\r\n{\"state\"",
        )
        .await
        .expect("write");
        busy.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(healthz(addr).await.0, None, "every connection is busy");
    drop(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(healthz(addr).await.0, Some(200));
    let _ = stop.send(true);
    server.stop().await;
}

#[tokio::test]
async fn bodies_are_bounded_in_size_and_time_and_heads_and_connections_in_time() {
    let (server, addr, stop) = admin_with(short_limits()).await;
    let put = "PUT /v1/overrides/gslb.example.test./us-east HTTP/1.1\r\nHost: m\r\n";
    // Declared too large: 413 before anything is read.
    let mut s = connect(addr).await;
    let big = format!("{put}Content-Length: 100000\r\n\r\n");
    assert_eq!(
        status(&mut s, big.as_bytes(), Duration::from_secs(2)).await,
        Some(413)
    );
    // Chunked past the limit: 413 too.
    let mut s = connect(addr).await;
    let mut chunked = format!("{put}Transfer-Encoding: chunked\r\n\r\n800\r\n").into_bytes();
    chunked.extend_from_slice(&[b'x'; 0x800]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(
        status(&mut s, &chunked, Duration::from_secs(2)).await,
        Some(413)
    );
    // A body that stops half-way: 408 once the body deadline passes.
    let mut s = connect(addr).await;
    let started = Instant::now();
    let slow = format!("{put}Content-Length: 20\r\n\r\n{{\"state\"");
    assert_eq!(
        status(&mut s, slow.as_bytes(), Duration::from_secs(3)).await,
        Some(408)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2900),
        "{took:?}"
    );
    // A head over 16 KiB: 431, before the head is complete.
    let mut s = connect(addr).await;
    let mut huge = b"GET /healthz HTTP/1.1\r\nHost: m\r\nX-Pad: ".to_vec();
    huge.resize(meridian::admin::limits::ADMIN_MAX_HEAD + 1024, b'a');
    assert_eq!(
        status(&mut s, &huge, Duration::from_secs(2)).await,
        Some(431)
    );
    // A head that never ends is closed after the head deadline.
    let mut s = connect(addr).await;
    s.write_all(HALF_SENT).await.expect("write");
    let started = Instant::now();
    assert!(closes_within(s, Duration::from_secs(2)).await);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A keep-alive connection waiting for its next request: the same deadline.
    let mut s = connect(addr).await;
    let get = b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n";
    assert_eq!(status(&mut s, get, Duration::from_secs(2)).await, Some(200));
    assert!(closes_within(s, Duration::from_secs(2)).await);
    let _ = stop.send(true);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_at_the_end_of_its_lifetime() {
    let mut limits = short_limits();
    limits.header_timeout = Duration::from_secs(30);
    limits.lifetime = Duration::from_millis(800);
    let (server, addr, stop) = admin_with(limits).await;
    let mut s = connect(addr).await;
    let get = b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n";
    assert_eq!(status(&mut s, get, Duration::from_secs(2)).await, Some(200));
    let started = Instant::now();
    assert!(closes_within(s, Duration::from_secs(3)).await);
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = stop.send(true);
    server.stop().await;
}
