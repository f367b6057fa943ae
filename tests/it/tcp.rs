//! DNS over TCP under the limits of RFC 7766 §6.2: idle, read and write deadlines, the global
//! and per-/24 caps with longest-idle eviction, answers before a bad frame, and 1,100 clients
//! that never read. Clients bind to other 127.0.0.0/8 addresses to stand for other networks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use meridian::connections::Caps;
use meridian::dns::stats::{DnsStats, TcpClose};
use meridian::dns::tcp::{TcpLimits, serve_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Query, zone_dir};

const A: u16 = 1;
const TXT: u16 = 16;

/// A zone with a small answer and an 8 KB one (32 strings of 250 bytes).
fn zone() -> String {
    let big: Vec<String> = (0..32)
        .map(|i| format!("\"{}\"", char::from(b'a' + i % 26).to_string().repeat(250)))
        .collect();
    format!(
        "origin = \"tcp.test.\"\n[soa]\nmname = \"ns1.tcp.test.\"\nrname = \"h@tcp.test\"\n\
         [records.www]\nA = [\"192.0.2.1\"]\n[records.big]\nTXT = [{}]\n",
        big.join(", ")
    )
}

/// `serve_tcp` on 127.0.0.1:0 with `limits`, serving [`zone`].
struct TcpServer {
    addr: SocketAddr,
    stats: Arc<DnsStats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    async fn start(limits: TcpLimits) -> TcpServer {
        let dir = zone_dir("tcp", &[("tcp.toml", &zone())]);
        let snap = meridian::config::load_dir(&meridian::config::LoadOptions {
            zones_dir: &dir,
            previous: None,
        })
        .expect("zone loads");
        let health = Arc::new(meridian::health::View::unknown(&snap));
        let world = Arc::new(arc_swap::ArcSwap::from_pointee(
            meridian::world::World::new(Arc::new(snap), health, None),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(DnsStats::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve_tcp(listener, world, stats.clone(), limits, stop_rx));
        TcpServer {
            addr,
            stats,
            stop,
            task,
        }
    }

    fn closed(&self, why: TcpClose) -> u64 {
        self.stats.tcp_totals().closed[why as usize]
    }

    /// Wait (at most `limit`) until `n` connections have closed for `why`.
    async fn wait_closed(&self, why: TcpClose, n: u64, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.closed(why) < n {
            assert!(
                started.elapsed() < limit,
                "{n} closed for {why:?} not seen in {limit:?}: {:?}",
                self.stats.tcp_totals()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Caps as given; the I/O deadline long enough that a busy connection stays busy however
/// loaded the machine is.
fn limits(total: usize, per_network: usize) -> TcpLimits {
    TcpLimits {
        caps: Caps { total, per_network },
        io_timeout: Duration::from_secs(10),
        ..TcpLimits::with_max_connections(total)
    }
}

/// A connection from `src` (any 127.0.0.0/8 address).
async fn connect_from(src: &str, server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(src.parse().expect("src"), 0))
        .expect("bind source");
    tokio::time::timeout(Duration::from_secs(3), sock.connect(server))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn frame(packet: &[u8]) -> Vec<u8> {
    let mut f = (packet.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(packet);
    f
}

fn query(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut q = Query::new(name, qtype);
    q.id = id;
    frame(&q.packet())
}

/// The next reply, or `None` when the connection closes or `wait` passes.
async fn reply(s: &mut TcpStream, wait: Duration) -> Option<Message> {
    let read = async {
        let len = s.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).expect("reply parses"))
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// Whether the server closes `s` within `wait` (whatever it sends before is discarded).
async fn closes_within(s: &mut TcpStream, wait: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, drain).await.is_ok()
}

/// Ask `www` on a fresh connection from `src`; the time to the answer.
async fn answered_from(src: &str, server: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = connect_from(src, server).await;
    s.write_all(&query("www.tcp.test", A, 7))
        .await
        .expect("write");
    let m = reply(&mut s, Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("{src}: no answer"));
    assert_eq!(m.answers.len(), 1);
    started.elapsed()
}

#[tokio::test]
async fn idle_connections_and_started_messages_have_deadlines() {
    let mut l = limits(16, 16);
    l.idle_timeout = Duration::from_millis(1500);
    l.io_timeout = Duration::from_millis(300);
    let srv = TcpServer::start(l).await;
    let started = Instant::now();
    let mut silent = connect_from("127.0.0.1", srv.addr).await;
    // Answered, then half a message that never ends.
    let mut stalled = connect_from("127.0.0.1", srv.addr).await;
    stalled
        .write_all(&query("www.tcp.test", A, 1))
        .await
        .expect("write");
    assert!(reply(&mut stalled, Duration::from_secs(2)).await.is_some());
    stalled.write_all(&[0, 40, 1, 2, 3]).await.expect("write");
    // A message dribbled a byte every 50 ms: the deadline runs from its first byte.
    let mut dribbler = connect_from("127.0.0.1", srv.addr).await;
    let dribble = tokio::spawn(async move {
        let f = query("www.tcp.test", A, 2);
        for b in f {
            if dribbler.write_all(&[b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reply(&mut dribbler, Duration::from_millis(100))
            .await
            .is_some()
    });
    assert!(closes_within(&mut stalled, Duration::from_millis(1200)).await);
    assert!(
        !dribble.await.expect("task"),
        "a 30-byte message at 20 bytes/s is not answered"
    );
    srv.wait_closed(TcpClose::ReadTimeout, 2, Duration::from_secs(2))
        .await;
    assert!(closes_within(&mut silent, Duration::from_secs(3)).await);
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(1400),
        "the idle timeout, not the I/O one, closed the silent client ({idle:?})"
    );
    srv.wait_closed(TcpClose::Idle, 1, Duration::from_secs(1))
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_full_cap_closes_the_longest_idle_connection_and_refuses_only_when_all_are_busy() {
    let srv = TcpServer::start(limits(2, 2)).await;
    let mut a = connect_from("127.0.0.1", srv.addr).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut b = connect_from("127.0.1.1", srv.addr).await;
    b.write_all(&query("www.tcp.test", A, 1)).await.expect("b");
    assert!(reply(&mut b, Duration::from_secs(2)).await.is_some());
    // The cap is full of idle connections: a, idle the longest, gives way.
    let mut c = connect_from("127.0.2.1", srv.addr).await;
    assert!(closes_within(&mut a, Duration::from_secs(1)).await);
    c.write_all(&query("www.tcp.test", A, 2)).await.expect("c");
    assert!(reply(&mut c, Duration::from_secs(2)).await.is_some());
    // Both busy (each in the middle of a message): a newcomer is refused.
    b.write_all(&[0]).await.expect("b");
    c.write_all(&[0]).await.expect("c");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = connect_from("127.0.3.1", srv.addr).await;
    let _ = d.write_all(&query("www.tcp.test", A, 3)).await;
    assert!(reply(&mut d, Duration::from_millis(500)).await.is_none());
    let t = srv.stats.tcp_totals().table;
    assert_eq!((t.open, t.evicted, t.refused), (2, 1, 1));
    srv.stop().await;
}

#[tokio::test]
async fn one_network_holds_at_most_its_share() {
    let srv = TcpServer::start(limits(100, 2)).await;
    let mut idle = connect_from("127.1.1.1", srv.addr).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut busy = connect_from("127.1.1.2", srv.addr).await;
    busy.write_all(&[0]).await.expect("busy");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Same /24: the idle one gives way, though the global cap is far.
    let mut third = connect_from("127.1.1.3", srv.addr).await;
    assert!(closes_within(&mut idle, Duration::from_secs(1)).await);
    third.write_all(&[0]).await.expect("third");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_from("127.1.1.4", srv.addr).await;
    let _ = fourth.write_all(&query("www.tcp.test", A, 4)).await;
    assert!(
        reply(&mut fourth, Duration::from_millis(500))
            .await
            .is_none(),
        "the /24 is full of busy connections"
    );
    // Another /24 is not affected.
    answered_from("127.1.2.1", srv.addr).await;
    let t = srv.stats.tcp_totals().table;
    assert_eq!((t.evicted, t.refused), (1, 1));
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_by_the_write_deadline() {
    let mut l = limits(16, 16);
    l.io_timeout = Duration::from_millis(500);
    let srv = TcpServer::start(l).await;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(srv.addr).await.expect("connect");
    // 100 queries for 8 KB each: far more than the socket buffers hold.
    let burst: Vec<u8> = (0..100)
        .flat_map(|i| query("big.tcp.test", TXT, i))
        .collect();
    s.write_all(&burst).await.expect("write");
    let took = srv
        .wait_closed(TcpClose::WriteTimeout, 1, Duration::from_secs(6))
        .await;
    assert!(took < Duration::from_secs(6));
    assert_eq!(srv.stats.tcp_totals().table.open, 0);
    drop(s);
    srv.stop().await;
}

#[tokio::test]
async fn what_was_read_is_answered_in_order_before_a_bad_frame_closes_the_connection() {
    let srv = TcpServer::start(limits(16, 16)).await;
    // A query, a 3-byte frame (no DNS message fits), another query.
    let mut s = connect_from("127.0.0.1", srv.addr).await;
    let mut bytes = query("www.tcp.test", A, 1);
    bytes.extend_from_slice(&[0, 3, b'x', b'y', b'z']);
    bytes.extend_from_slice(&query("www.tcp.test", A, 2));
    s.write_all(&bytes).await.expect("write");
    let first = reply(&mut s, Duration::from_secs(2)).await.expect("first");
    assert_eq!(first.metadata.id, 1);
    assert!(reply(&mut s, Duration::from_secs(2)).await.is_none());
    srv.wait_closed(TcpClose::BadFrame, 1, Duration::from_secs(2))
        .await;
    // A query, then a frame that announces 65,535 bytes and stops: the query is answered
    // at once, not when the frame's deadline passes.
    let mut s = connect_from("127.0.0.1", srv.addr).await;
    let mut bytes = query("www.tcp.test", A, 3);
    bytes.extend_from_slice(&[0xff, 0xff, 1, 2, 3, 4]);
    let started = Instant::now();
    s.write_all(&bytes).await.expect("write");
    let m = reply(&mut s, Duration::from_secs(2))
        .await
        .expect("answered");
    assert_eq!(m.metadata.id, 3);
    assert!(started.elapsed() < Duration::from_millis(500));
    // A malformed message that frames fine gets FORMERR, and the connection goes on.
    let mut s = connect_from("127.0.0.1", srv.addr).await;
    let mut bytes = frame(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&query("www.tcp.test", A, 4));
    s.write_all(&bytes).await.expect("write");
    let m = reply(&mut s, Duration::from_secs(2))
        .await
        .expect("formerr");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (9, ResponseCode::FormErr)
    );
    let m = reply(&mut s, Duration::from_secs(2)).await.expect("next");
    assert_eq!(m.metadata.id, 4);
    srv.stop().await;
}

/// Issue 8: 1,100 clients from five /24s pipeline queries and never read their replies.
/// With the old single cap of 1,024 they held every slot and a new client got nothing. Now
/// each /24 holds at most 1/16 of the cap, the write deadline closes them, and a client
/// from another /24 is answered within 200 ms throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_clients_that_never_read_do_not_lock_out_another_network() {
    const CLIENTS: usize = 1100;
    const NETWORKS: usize = 5;
    let fd_limit = meridian::connections::raise_fd_limit();
    assert!(
        fd_limit >= 3 * CLIENTS as u64,
        "this test needs {} open files (client and server side); the hard limit is {fd_limit}",
        3 * CLIENTS
    );
    let mut l = TcpLimits::with_max_connections(1024);
    // Long enough that earlier waves still hold their /24's share when later ones come.
    l.io_timeout = Duration::from_secs(3);
    let per_network = l.caps.per_network;
    let srv = TcpServer::start(l).await;
    let addr = srv.addr;
    // Each client: a small receive buffer, 32 pipelined queries for 8 KB answers (more than
    // the socket buffers of both ends hold), no reads.
    let burst: Arc<Vec<u8>> = Arc::new(
        (0..32)
            .flat_map(|i| query("big.tcp.test", TXT, i))
            .collect(),
    );
    let mut held = Vec::with_capacity(CLIENTS);
    let mut worst = Duration::ZERO;
    let attack_started = Instant::now();
    for wave in 0..CLIENTS / 100 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in wave * 100..(wave + 1) * 100 {
            let burst = burst.clone();
            tasks.spawn(async move {
                let src = format!("127.{}.0.{}", 10 + i % NETWORKS, 1 + i / NETWORKS % 250);
                let sock = TcpSocket::new_v4().ok()?;
                sock.set_recv_buffer_size(4096).ok()?;
                sock.bind(SocketAddr::new(src.parse().ok()?, 0)).ok()?;
                let mut s = tokio::time::timeout(Duration::from_secs(3), sock.connect(addr))
                    .await
                    .ok()?
                    .ok()?;
                // A refused client may see its write fail; it holds the socket regardless.
                let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&burst)).await;
                Some(s)
            });
        }
        while let Some(r) = tasks.join_next().await {
            held.extend(r.expect("client task"));
        }
        let open = srv.stats.tcp_totals().table.open as usize;
        assert!(
            open <= NETWORKS * per_network + 1,
            "{open} open: more than {per_network} per /24"
        );
        worst = worst.max(answered_from("127.200.0.1", addr).await);
    }
    eprintln!(
        "{} clients held; another /24 answered within {worst:?} at worst",
        held.len()
    );
    assert!(
        held.len() >= CLIENTS * 9 / 10,
        "{} clients connected",
        held.len()
    );
    assert!(
        worst < Duration::from_millis(200),
        "another /24 waited {worst:?} for an answer"
    );
    let t = srv.stats.tcp_totals();
    assert!(t.table.refused > 0, "the per-/24 cap was reached: {t:?}");
    // The write deadline frees every slot though all 1,100 still hold their sockets.
    let started = Instant::now();
    while srv.stats.tcp_totals().table.open > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still open: {:?}",
            srv.stats.tcp_totals()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(srv.closed(TcpClose::WriteTimeout) > 0);
    assert!(
        attack_started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        attack_started.elapsed()
    );
    drop(held);
    srv.stop().await;
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit_and_sizes_the_caps() {
    use nix::sys::resource::{Resource, getrlimit};
    let limit = meridian::connections::raise_fd_limit();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert_eq!((soft, limit), (hard, hard));
    let l = TcpLimits::for_fd_limit(limit, 1);
    assert_eq!(
        l.caps.total as u64,
        (limit / 2).min(meridian::dns::tcp::TCP_MAX_CONNECTIONS as u64)
    );
}
