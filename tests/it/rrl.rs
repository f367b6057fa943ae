//! Response rate limiting (SPEC §9) over real sockets: clients bound to their own addresses
//! in 127.0.0.0/8 (each test its own /24s), the server's counters read in-process.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use meridian::dns::rrl::{self, Config, Mode};
use meridian::dns::stats::RrlCounts;
use tokio::net::{TcpSocket, UdpSocket};

use crate::support::{IO_TIMEOUT, Query, Server, ip, settings, tcp_exchange, zone_dir};

const A: u16 = 1;
const TXT: u16 = 16;

/// An answer, a wildcard, a delegation: one zone for every response class.
const ZONE: &str = r#"
origin = "rrl.test."
ttl = 60
[soa]
mname = "ns1.rrl.test."
rname = "hostmaster@rrl.test"
serial = 1
minimum = 30
[records."@"]
NS = ["ns1.rrl.test."]
[records.ns1]
A = ["192.0.2.53"]
[records.txt]
TXT = ["0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
       "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
       "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"]
[records."*.wild"]
A = ["192.0.2.80"]
[records.sub]
NS = ["ns.sub.rrl.test."]
[records."ns.sub"]
A = ["192.0.2.54"]
"#;

/// The default rate: a bucket's burst.
const RATE: usize = rrl::DEFAULT_RATE as usize;
/// Responses a bucket may earn while a test's queries are being sent (a few ms at 20/s).
const SLACK: usize = 2;

async fn server(config: Config) -> Server {
    let dir = zone_dir("rrl", &[("rrl.toml", ZONE)]);
    let mut s = settings(&dir, None);
    s.rrl = config;
    Server::start(s).await
}

/// What came back for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// A normal response.
    Full(Message),
    /// An RRL slip: TC=1, AA=1, the question and nothing else.
    Slip,
    Nothing,
}

#[derive(Debug, Default)]
struct Tally {
    full: usize,
    slips: usize,
    nothing: usize,
}

fn tally(replies: &[Reply]) -> Tally {
    let mut t = Tally::default();
    for r in replies {
        match r {
            Reply::Full(_) => t.full += 1,
            Reply::Slip => t.slips += 1,
            Reply::Nothing => t.nothing += 1,
        }
    }
    t
}

/// Send every packet at once from one socket on `src` (one flow, so one server worker), then
/// collect the replies for a short while. Packet ids must differ.
async fn burst(server: SocketAddr, src: &str, packets: &[Vec<u8>]) -> Vec<Reply> {
    let sock = UdpSocket::bind((ip(src), 0)).await.expect("bind source");
    for p in packets {
        sock.send_to(p, server).await.expect("send");
    }
    let mut replies = vec![Reply::Nothing; packets.len()];
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let Some(i) = packets
            .iter()
            .position(|p| u16::from_be_bytes([p[0], p[1]]) == id)
        else {
            continue;
        };
        replies[i] = read_reply(&buf[..n], &packets[i]);
    }
    replies
}

/// Tell a slip from a response, checking what SPEC §9 says a slip is.
fn read_reply(bytes: &[u8], query: &[u8]) -> Reply {
    let m = Message::from_vec(bytes).expect("reply parses");
    if !m.metadata.truncation {
        return Reply::Full(m);
    }
    assert!(m.metadata.authoritative, "a slip has AA=1");
    assert!(
        m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty(),
        "a slip has no records: {m:?}"
    );
    assert!(m.edns.is_none(), "a slip has no OPT either, to stay small");
    assert!(
        bytes.len() <= query.len(),
        "a slip is no bigger than the query"
    );
    assert_eq!(
        bytes[12..],
        query[12..bytes.len()],
        "the question is echoed"
    );
    Reply::Slip
}

/// `n` queries for `name`/`qtype` with ids 1..=n.
fn queries(n: usize, name: impl Fn(usize) -> String, qtype: u16) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut q = Query::new(&name(i), qtype);
            q.id = i as u16 + 1;
            q.packet()
        })
        .collect()
}

/// The server's RRL counters once they reach `limited` (workers fold counts in every second).
async fn counts(server: &Server, limited: u64) -> RrlCounts {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let c = server.running.control.dns_stats.totals().rrl;
        if c.limited >= limited || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bucket_sends_its_burst_then_every_second_limited_response_slips() {
    let s = server(Config::default()).await;
    // Each query claims another client subnet in ECS: RRL keys on the packet's source only.
    let packets: Vec<Vec<u8>> = (0..100u16)
        .map(|i| {
            let mut q = Query::new("txt.rrl.test", TXT)
                .ecs(IpAddr::from([198, 51, (i >> 8) as u8, i as u8]), 24);
            q.id = i + 1;
            q.packet()
        })
        .collect();
    let replies = burst(s.dns, "127.0.10.1", &packets).await;
    let t = tally(&replies);
    assert!((RATE..=RATE + SLACK).contains(&t.full), "{t:?}");
    for r in &replies[..RATE] {
        let Reply::Full(m) = r else {
            panic!("the burst is answered: {replies:?}")
        };
        assert!(!m.answers.is_empty(), "{m:?}");
    }
    let limited = 100 - t.full;
    assert!(t.slips.abs_diff(limited / 2) <= 1, "{t:?}");
    assert_eq!(t.slips + t.nothing, limited);

    // Another address of the same /24 shares the bucket, in each worker's table: a new flow
    // may meet another worker (SO_REUSEPORT), which allows one burst more at most.
    let more = tally(&burst(s.dns, "127.0.10.200", &packets[..30]).await);
    assert!(more.full <= RATE + SLACK, "{more:?}");

    let limited = (limited + 30 - more.full) as u64;
    let c = counts(&s, limited).await;
    assert_eq!(c.limited, limited, "{c:?}");
    assert_eq!(c.slipped, (t.slips + more.slips) as u64, "{c:?}");
    assert_eq!(c.slipped + c.dropped, c.limited, "{c:?}");
    s.stop().await;
}

#[tokio::test]
async fn slip_zero_drops_every_limited_response() {
    let s = server(Config {
        slip: 0,
        ..Config::default()
    })
    .await;
    let t = tally(
        &burst(
            s.dns,
            "127.0.20.1",
            &queries(60, |_| "txt.rrl.test".into(), TXT),
        )
        .await,
    );
    assert!((RATE..=RATE + SLACK).contains(&t.full), "{t:?}");
    assert_eq!((t.slips, t.nothing), (0, 60 - t.full), "{t:?}");
    s.stop().await;
}

#[tokio::test]
async fn an_exempt_source_is_never_limited() {
    let s = server(Config {
        exempt: vec!["127.0.11.0/24".parse().expect("net")],
        ..Config::default()
    })
    .await;
    let packets = queries(100, |_| "txt.rrl.test".into(), TXT);
    let t = tally(&burst(s.dns, "127.0.11.9", &packets).await);
    assert_eq!(t.full, 100, "{t:?}");
    let t = tally(&burst(s.dns, "127.0.12.9", &packets).await);
    assert!((RATE..=RATE + SLACK).contains(&t.full), "{t:?}");
    s.stop().await;
}

#[tokio::test]
async fn tcp_is_never_limited() {
    let s = server(Config::default()).await;
    let packets = queries(60, |_| "txt.rrl.test".into(), TXT);
    let t = tally(&burst(s.dns, "127.0.13.1", &packets).await);
    assert!(t.full <= RATE + SLACK, "the UDP bucket is limited: {t:?}");
    let replies = tcp_from(
        "127.0.13.1",
        s.dns,
        &queries(100, |_| "txt.rrl.test".into(), TXT),
    )
    .await;
    assert_eq!(replies.len(), 100);
    for r in replies {
        let m = Message::from_vec(&r).expect("parses");
        assert!(!m.metadata.truncation);
        assert!(!m.answers.is_empty(), "{m:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn random_names_in_a_zone_share_one_bucket() {
    let s = server(Config::default()).await;
    let nx = burst(
        s.dns,
        "127.0.16.1",
        &queries(80, |i| format!("r{i}x.rrl.test"), A),
    )
    .await;
    let t = tally(&nx);
    assert!((RATE..=RATE + SLACK).contains(&t.full), "NXDOMAIN: {t:?}");
    for r in &nx[..RATE] {
        let Reply::Full(m) = r else { panic!("{nx:?}") };
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    let wild = burst(
        s.dns,
        "127.0.17.1",
        &queries(80, |i| format!("r{i}.wild.rrl.test"), A),
    )
    .await;
    let t = tally(&wild);
    assert!((RATE..=RATE + SLACK).contains(&t.full), "wildcard: {t:?}");
    let referral = burst(
        s.dns,
        "127.0.18.1",
        &queries(80, |i| format!("r{i}.sub.rrl.test"), A),
    )
    .await;
    let t = tally(&referral);
    assert!((RATE..=RATE + SLACK).contains(&t.full), "referral: {t:?}");
    let nodata = burst(
        s.dns,
        "127.0.18.1",
        &queries(80, |_| "ns1.rrl.test".into(), TXT),
    )
    .await;
    assert!(
        (RATE..=RATE + SLACK).contains(&tally(&nodata).full),
        "NODATA"
    );
    let refused = burst(
        s.dns,
        "127.0.18.1",
        &queries(80, |i| format!("r{i}.example.net"), A),
    )
    .await;
    assert!(
        (RATE..=RATE + SLACK).contains(&tally(&refused).full),
        "REFUSED"
    );
    // Answers are per name and type: two names get two bursts.
    let mut two = queries(30, |_| "txt.rrl.test".into(), TXT);
    two.extend(queries(30, |_| "ns1.rrl.test".into(), A));
    for (i, p) in two.iter_mut().enumerate() {
        p[..2].copy_from_slice(&(i as u16 + 1).to_be_bytes());
    }
    let t = tally(&burst(s.dns, "127.0.19.1", &two).await);
    assert!((2 * RATE..=2 * RATE + SLACK).contains(&t.full), "{t:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_flood_does_not_limit_another_prefix_and_a_same_prefix_resolver_gets_through_over_tcp() {
    let s = server(Config::default()).await;
    let dns = s.dns;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn(flood(dns, "127.0.14", stop.clone()));

    // Give the flood time to empty the bucket, then resolve from both prefixes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = 0;
    let mut same = 0;
    let mut same_over_tcp = 0;
    for _ in 0..10 {
        if let Some(Reply::Full(m)) = ask_udp("127.0.15.1", dns, Duration::from_millis(500)).await
            && !m.answers.is_empty()
        {
            other += 1;
        }
        match resolve("127.0.14.250", dns).await {
            Some(true) => {
                same += 1;
                same_over_tcp += 1;
            }
            Some(false) => same += 1,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.expect("flood ends");
    assert!(sent > 500, "the flood ran: {sent}");
    assert_eq!(other, 10, "another /24 is never limited");
    // Five tries with slip 2: a resolution fails with odds 1/32.
    assert!(same >= 7, "same /24 resolver: {same}/10");
    assert!(
        same_over_tcp >= 5,
        "it got through over TCP: {same_over_tcp}"
    );
    assert!(counts(&s, 500).await.limited >= 500);
    s.stop().await;
}

/// Queries for txt.rrl.test from eight addresses of `net`.0/24 until `stop`, about 2,000 a
/// second (bounded to 20 s); returns how many were sent.
async fn flood(
    server: SocketAddr,
    net: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let mut socks = Vec::new();
    for host in 1..=8 {
        socks.push(
            UdpSocket::bind((ip(&format!("{net}.{host}")), 0))
                .await
                .expect("bind"),
        );
    }
    let packet = Query::new("txt.rrl.test", TXT).packet();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        for s in &socks {
            for _ in 0..2 {
                if s.send_to(&packet, server).await.is_ok() {
                    sent += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sent
}

/// One UDP query for txt.rrl.test from `src`.
async fn ask_udp(src: &str, server: SocketAddr, wait: Duration) -> Option<Reply> {
    let sock = UdpSocket::bind((ip(src), 0)).await.expect("bind");
    let packet = Query::new("txt.rrl.test", TXT).packet();
    sock.send_to(&packet, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(read_reply(&buf[..n], &packet)),
        _ => None,
    }
}

/// A resolver: up to five UDP tries (150 ms each), over TCP after a TC=1. `Some(over_tcp)`
/// when it got the answer.
async fn resolve(src: &str, server: SocketAddr) -> Option<bool> {
    for _ in 0..5 {
        match ask_udp(src, server, Duration::from_millis(150)).await {
            Some(Reply::Full(m)) => return (!m.answers.is_empty()).then_some(false),
            Some(Reply::Slip) => {
                let packet = Query::new("txt.rrl.test", TXT).packet();
                let r = tcp_from(src, server, &[packet]).await;
                let m = Message::from_vec(r.first()?).ok()?;
                return (!m.answers.is_empty()).then_some(true);
            }
            Some(Reply::Nothing) | None => {}
        }
    }
    None
}

/// Queries pipelined on one TCP connection from `src`, their replies in order.
async fn tcp_from(src: &str, server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(ip(src), 0)).expect("bind");
    let s = tokio::time::timeout(IO_TIMEOUT, sock.connect(server))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp_exchange(s, packets).await
}

#[tokio::test]
async fn log_only_sends_everything_and_counts_what_it_would_limit() {
    let s = server(Config {
        mode: Mode::LogOnly,
        ..Config::default()
    })
    .await;
    let t = tally(
        &burst(
            s.dns,
            "127.0.21.1",
            &queries(100, |_| "txt.rrl.test".into(), TXT),
        )
        .await,
    );
    assert_eq!(t.full, 100, "{t:?}");
    let c = counts(&s, (100 - RATE - SLACK) as u64).await;
    assert!(c.limited >= (100 - RATE - SLACK) as u64, "{c:?}");
    assert_eq!((c.slipped, c.dropped), (0, 0), "{c:?}");
    s.stop().await;
}

#[tokio::test]
async fn rrl_off_sends_everything() {
    let s = server(Config::off()).await;
    let t = tally(
        &burst(
            s.dns,
            "127.0.22.1",
            &queries(100, |_| "txt.rrl.test".into(), TXT),
        )
        .await,
    );
    assert_eq!(t.full, 100, "{t:?}");
    assert_eq!(
        s.running.control.dns_stats.totals().rrl,
        RrlCounts::default()
    );
    s.stop().await;
}
