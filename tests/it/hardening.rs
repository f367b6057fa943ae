//! Issue 8, item 1: no zone can stop the DNS workers. Shapes that used to break them are
//! refused by `serve` as by `check`; shapes at the limits are served over real UDP and TCP
//! sockets and every reply parses; a panic while answering (forced with a snapshot that
//! `check` would never produce) is one SERVFAIL and a count; a dead worker turns `/healthz`
//! to 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use meridian::config::load_str;
use meridian::health::View;
use meridian::model::{PolicyKind, PoolId, Snapshot, Target, ZoneId};
use meridian::world::World;

use crate::support::{Query, Server, answers, settings, tcp, zone_dir};

const A: u16 = 1;
const TXT: u16 = 16;
const AAAA: u16 = 28;

/// `n` distinct IPv6 addresses, as a TOML array body.
fn v6_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("\"2001:db8::{i:x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

const HEAD: &str = r#"
origin = "edge.test."
[soa]
mname = "ns1"
rname = "hostmaster@edge.test"
serial = 1
"#;

/// Data at the edge of what fits, and policy shapes at the edge of what `check` accepts.
fn edge_zone() -> String {
    let mut z = HEAD.to_owned();
    // 12 + 15 + 4 + 2,338 x 28 = 65,495 bytes: the largest AAAA RRset that fits.
    z += &format!("[records.fits]\nAAAA = [{}]\n", v6_list(2338));
    // Reached through a CNAME its owner is written in full: past 65,535, so TC over TCP.
    z += "[records.via]\nCNAME = \"fits\"\n";
    // One TXT record of 65,000 bytes (65,255 with its length bytes): fits.
    z += &format!("[records.long]\nTXT = [\"{}\"]\n", "t".repeat(65_000));
    z += &format!("[pools.wide]\nAAAA = [{}]\n", v6_list(2338));
    z += "[pools.p]\nA = [\"192.0.2.7\"]\n";
    z += "[policies.all-of-wide]\nfailover = [\"wide\"]\nmax_answers = 2338\n";
    // A client that matches no rule (127.0.0.1 is in no GeoIP record) fails open to "p".
    z += "[policies.country-only]\ngeo = { country = { NZ = [\"p\"] } }\n";
    // 16 nested policies: the deepest chain the walk follows.
    for i in 1..=16 {
        let target = if i == 16 {
            "p".into()
        } else {
            format!("d{}", i + 1)
        };
        z += &format!("[policies.d{i}]\nfailover = [\"{target}\"]\n");
    }
    z
}

#[tokio::test]
async fn shapes_that_broke_the_workers_are_refused_at_their_line() {
    let cases = [
        (
            "[policies.g]\ngeo = {}\n",
            "zone.toml:10:1: policy \"g\": `geo` has no rules",
        ),
        (
            "[policies.g]\ngeo = { country = {} }\n",
            "zone.toml:10:19: policy \"g\": `geo.country` has no rules",
        ),
        (
            &format!("[records.t]\nTXT = [\"{}\"]\n", "x".repeat(66_000)),
            "zone.toml:10:8: TXT record of t: 66259 bytes of RDATA",
        ),
        (
            &format!("[records.t]\nAAAA = [{}]\n", v6_list(2400)),
            "zone.toml:10:1: AAAA records of t: the smallest answer with them is 67229 bytes",
        ),
    ];
    for (tail, want) in cases {
        let text = format!("{HEAD}[pools.p]\nA = [\"192.0.2.7\"]\n{tail}");
        let err = load_str("zone.toml".as_ref(), &text)
            .expect_err("check refuses it")
            .to_string();
        assert!(err.contains(want), "want {want}\ngot {err}");
        let dir = zone_dir("refused", &[("zone.toml", &text)]);
        let started = meridian::app::start(settings(&dir, None)).await;
        let err = format!("{:#}", started.err().expect("serve refuses it too"));
        assert!(err.contains(&want[10..]), "want {want}\ngot {err}");
    }
}

#[tokio::test]
async fn zones_at_the_limits_are_answered_over_udp_and_tcp() {
    let zone = edge_zone();
    let dir = zone_dir("edge", &[("zone.toml", &zone)]);
    let s = Server::start(settings(&dir, Some("geoip/test-city.mmdb"))).await;

    // The largest RRset: TC over UDP, all of it over TCP (65,495 bytes, one TCP message).
    for name in ["fits.edge.test", "all-of-wide.edge.test"] {
        let q = Query::new(name, AAAA).edns(1232);
        let udp = s.ask(&q).await;
        assert!(udp.metadata.truncation && udp.answers.is_empty(), "{name}");
        let reply = tcp(s.dns, &[Query::new(name, AAAA).packet()]).await;
        let bytes = reply.first().expect("a TCP reply");
        let m = Message::from_vec(bytes).expect("the 64 KB reply parses");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(m.answers.len(), 2338, "{name}");
        assert!(!m.metadata.truncation);
        assert!(
            bytes.len() <= 65_535 && bytes.len() > 65_000,
            "{}",
            bytes.len()
        );
    }

    // Through a CNAME the same RRset cannot fit a message: TC=1 over TCP too, never a
    // wrapped length (the next query on the connection is still read right).
    let replies = tcp(
        s.dns,
        &[
            Query::new("via.edge.test", AAAA).packet(),
            Query::new("d1.edge.test", A).packet(),
        ],
    )
    .await;
    assert_eq!(replies.len(), 2, "both replies, in order");
    let m = Message::from_vec(&replies[0]).expect("parses");
    assert!(m.metadata.truncation && m.answers.is_empty());
    let m = Message::from_vec(&replies[1]).expect("parses");
    assert_eq!(answers(&m), ["192.0.2.7"]);

    // One 65,255-byte TXT record.
    let m = s.ask_tcp(&Query::new("long.edge.test", TXT)).await;
    let Some(RData::TXT(txt)) = m.answers.first().map(|r| &r.data) else {
        panic!("a TXT answer: {m:?}");
    };
    assert_eq!(txt.txt_data.iter().map(|s| s.len()).sum::<usize>(), 65_000);

    // The deepest chain, and the all-down rule of a geo policy the client matches nothing of.
    for name in ["d1.edge.test", "country-only.edge.test"] {
        let q = Query::new(name, A);
        assert_eq!(answers(&s.ask(&q).await), ["192.0.2.7"], "{name} over UDP");
        assert_eq!(
            answers(&s.ask_tcp(&q).await),
            ["192.0.2.7"],
            "{name} over TCP"
        );
    }
    s.stop().await;
}

/// The example zone, compiled, then broken by `breaking` as only a bug could break it.
fn broken_world(breaking: impl FnOnce(&mut Snapshot)) -> Arc<World> {
    let text = std::fs::read_to_string("zones/example.toml").expect("example");
    let mut snap = load_str("zones/example.toml".as_ref(), &text).expect("example loads");
    breaking(&mut snap);
    let health = Arc::new(View::unknown(&snap));
    Arc::new(World::new(Arc::new(snap), health, None))
}

fn policy_index(snap: &Snapshot, name: &str) -> usize {
    snap.policies
        .iter()
        .position(|p| p.name == name)
        .expect("policy of the example")
}

async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let resp = http
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .expect("admin answers");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn admin_settings(dir: &std::path::Path) -> meridian::settings::Settings {
    let mut s = settings(dir, None);
    s.admin = Some("127.0.0.1:0".parse().expect("addr"));
    s
}

#[tokio::test]
async fn a_panic_while_answering_is_one_servfail_and_counted() {
    let s = Server::start(admin_settings(std::path::Path::new("zones"))).await;
    let admin = s.running.admin.expect("admin");
    // A target naming a pool that does not exist: `check` never builds that, a bug could.
    let world = broken_world(|snap| {
        let i = policy_index(snap, "www");
        snap.policies[i].kind = PolicyKind::Failover(vec![Target::Pool(PoolId(u32::MAX))]);
    });
    s.running.control.world.store(world);

    let q = Query::new("www.gslb.example.test", A);
    for m in [s.ask(&q).await, s.ask_tcp(&q).await] {
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, q.id);
        assert_eq!(m.queries[0].name().to_string(), "www.gslb.example.test.");
    }
    // The workers go on: the next query is answered as usual.
    let m = s.ask(&Query::new("static.gslb.example.test", A)).await;
    assert_eq!(answers(&m), ["192.0.2.1", "192.0.2.2"]);

    // Counted once per query (UDP counters fold in within a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = admin_get(admin, "/metrics").await;
        if metrics.contains("\nmeridian_panics_total 2\n") {
            break;
        }
        assert!(Instant::now() < deadline, "no panics counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admin_get(admin, "/healthz").await, (200, "ok\n".into()));
    s.stop().await;
}

/// A UDP worker guards a whole batch: a panic in the middle of one answers that query with
/// SERVFAIL and every query after it in the batch as usual.
#[tokio::test]
async fn a_panic_amid_a_batch_spoils_only_its_own_query() {
    let s = Server::start(settings(std::path::Path::new("zones"), None)).await;
    let world = broken_world(|snap| {
        let i = policy_index(snap, "www");
        snap.policies[i].kind = PolicyKind::Failover(vec![Target::Pool(PoolId(u32::MAX))]);
    });
    s.running.control.world.store(world);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // Sent back to back, so that the worker takes many of them in one batch.
    const BURST: u16 = 48;
    for id in 0..BURST {
        let name = if id % 3 == 1 {
            "www.gslb.example.test"
        } else {
            "static.gslb.example.test"
        };
        let q = Query {
            id,
            ..Query::new(name, A)
        };
        sock.send_to(&q.packet(), s.dns).await.expect("send");
    }
    let mut seen = vec![false; usize::from(BURST)];
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf))
            .await
            .expect("every query answered within 5 s")
            .expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("reply parses");
        let id = m.metadata.id;
        if id % 3 == 1 {
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "id {id}");
        } else {
            assert_eq!(answers(&m), ["192.0.2.1", "192.0.2.2"], "id {id}");
        }
        seen[usize::from(id)] = true;
    }
    s.stop().await;
}

#[tokio::test]
async fn healthz_is_503_once_a_dns_worker_has_died() {
    let s = Server::start(admin_settings(std::path::Path::new("zones"))).await;
    let admin = s.running.admin.expect("admin");
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    // A policy of a zone that does not exist: the answer is fine, but folding its counter
    // into the totals (outside the per-query guard, once a second) panics the worker.
    let world = broken_world(|snap| {
        let i = policy_index(snap, "www");
        snap.policies[i].zone = ZoneId(u32::MAX);
    });
    s.running.control.world.store(world);
    let m = s.ask(&Query::new("www.gslb.example.test", A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = admin_get(admin, "/healthz").await;
        if status == 503 {
            assert_eq!(body, "dns workers not running: 1\n");
            break;
        }
        assert!(Instant::now() < deadline, "healthz still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
