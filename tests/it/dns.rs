//! DNS behaviour of SPEC §4 over real UDP and TCP sockets.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::{Query, Server, answers, ecs_scope, ip, settings, tcp, udp_wait, zone_dir};

const A: u16 = 1;
const NS: u16 = 2;
const SOA: u16 = 6;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const ANY: u16 = 255;

/// A zone with what the example lacks: a delegation with glue, a big RRset, a CNAME loop.
const EXTRA: &str = r#"
origin = "extra.test."
ttl = 120
[soa]
mname = "ns1.extra.test."
rname = "hostmaster@extra.test"
serial = 7
minimum = 60
[records."@"]
NS = ["ns1.extra.test."]
[records.ns1]
A = ["192.0.2.53"]
[records.sub]
NS = ["ns.sub.extra.test."]
[records."ns.sub"]
A = ["192.0.2.54"]
[records.big]
TXT = [
  "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
  "1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111",
  "2222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222",
  "3333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333",
  "4444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444",
  "5555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555",
  "6666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666",
  "7777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777",
]
[records.loop1]
CNAME = "loop2"
[records.loop2]
CNAME = "loop1"
[records.out]
CNAME = "www.example.net."
"#;

async fn example_with_extra() -> Server {
    let example = std::fs::read_to_string("zones/example.toml").expect("example zone");
    let dir = zone_dir("dns", &[("example.toml", &example), ("extra.toml", EXTRA)]);
    Server::start(settings(&dir, Some("geoip/test-city.mmdb"))).await
}

fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

#[tokio::test]
async fn static_answers_are_authoritative_and_echo_the_case() {
    let s = example_with_extra().await;
    for m in [
        s.ask(&Query::new("StAtIc.GSLB.example.TEST", A)).await,
        s.ask_tcp(&Query::new("StAtIc.GSLB.example.TEST", A)).await,
    ] {
        assert_eq!(rcode(&m), ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(answers(&m), ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(m.queries[0].name().to_string(), "StAtIc.GSLB.example.TEST.");
        assert_eq!(m.answers[0].name.to_string(), "StAtIc.GSLB.example.TEST.");
        assert_eq!(m.answers[0].ttl, 600);
    }
    let m = s.ask(&Query::new("gslb.example.test", NS)).await;
    assert_eq!(
        answers(&m),
        ["ns1.gslb.example.test.", "ns2.gslb.example.test."]
    );
    let m = s.ask(&Query::new("gslb.example.test", SOA)).await;
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    s.stop().await;
}

#[tokio::test]
async fn negative_answers_carry_the_soa_with_the_negative_ttl() {
    let s = example_with_extra().await;
    let nx = s.ask(&Query::new("nope.gslb.example.test", A)).await;
    assert_eq!(rcode(&nx), ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative && nx.answers.is_empty());
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].ttl, 30, "min(SOA TTL 300, minimum 30)");
    let nodata = s.ask(&Query::new("static.gslb.example.test", TXT)).await;
    assert_eq!(rcode(&nodata), ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    let extra = s.ask(&Query::new("nope.extra.test", A)).await;
    assert_eq!(
        extra.authorities[0].ttl, 60,
        "min(zone ttl 120, minimum 60)"
    );
    s.stop().await;
}

#[tokio::test]
async fn names_outside_every_zone_are_refused() {
    let s = example_with_extra().await;
    let m = s.ask(&Query::new("www.example.com", A)).await;
    assert_eq!(rcode(&m), ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    s.stop().await;
}

#[tokio::test]
async fn cnames_inside_the_zone_are_followed_in_one_answer() {
    let s = example_with_extra().await;
    let m = s.ask(&Query::new("docs.gslb.example.test", A)).await;
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(m.answers[0].data.to_string(), "www.gslb.example.test.");
    assert!(
        m.answers[1..]
            .iter()
            .all(|r| r.record_type() == RecordType::A)
    );
    assert!(m.answers.len() >= 2, "the policy answer follows the CNAME");
    assert_eq!(m.answers[1].name.to_string(), "www.gslb.example.test.");
    let cname_only = s.ask(&Query::new("docs.gslb.example.test", 5)).await;
    assert_eq!(cname_only.answers.len(), 1);
    let out = s.ask(&Query::new("out.extra.test", A)).await;
    assert_eq!(answers(&out), ["www.example.net."]);
    let looped = s.ask(&Query::new("loop1.extra.test", A)).await;
    assert_eq!(rcode(&looped), ResponseCode::NoError);
    assert!(looped.answers.len() <= 8, "a CNAME loop stops");
    s.stop().await;
}

#[tokio::test]
async fn wildcards_synthesise_the_asked_name() {
    let s = example_with_extra().await;
    let m = s
        .ask(&Query::new("anything.wild.gslb.example.test", A))
        .await;
    assert_eq!(answers(&m), ["192.0.2.9"]);
    assert_eq!(
        m.answers[0].name.to_string(),
        "anything.wild.gslb.example.test."
    );
    let deeper = s.ask(&Query::new("a.b.wild.gslb.example.test", A)).await;
    assert_eq!(answers(&deeper), ["192.0.2.9"]);
    let nodata = s.ask(&Query::new("x.wild.gslb.example.test", TXT)).await;
    assert!(nodata.answers.is_empty() && rcode(&nodata) == ResponseCode::NoError);
    s.stop().await;
}

#[tokio::test]
async fn ns_below_the_apex_is_a_referral_with_glue() {
    let s = example_with_extra().await;
    let m = s.ask(&Query::new("host.sub.extra.test", A)).await;
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::NS);
    assert_eq!(m.authorities[0].name.to_string(), "sub.extra.test.");
    assert_eq!(
        m.additionals
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .count(),
        1
    );
    // DS at the cut is the parent's: authoritative NODATA, not a referral.
    let ds = s.ask(&Query::new("sub.extra.test", 43)).await;
    assert!(ds.metadata.authoritative && ds.answers.is_empty());
    assert_eq!(ds.authorities[0].record_type(), RecordType::SOA);
    s.stop().await;
}

#[tokio::test]
async fn any_is_answered_minimally() {
    let s = example_with_extra().await;
    let m = s.ask(&Query::new("static.gslb.example.test", ANY)).await;
    let types: std::collections::BTreeSet<_> = m.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(types.len(), 1, "RFC 8482: one RRset");
    s.stop().await;
}

#[tokio::test]
async fn udp_answers_that_do_not_fit_are_truncated_and_tcp_has_them_all() {
    let s = example_with_extra().await;
    let small = s.ask(&Query::new("big.extra.test", TXT)).await;
    assert!(small.metadata.truncation, "over 512 bytes without EDNS");
    assert!(small.answers.is_empty());
    let fits = s.ask(&Query::new("big.extra.test", TXT).edns(4096)).await;
    assert!(!fits.metadata.truncation);
    assert_eq!(fits.answers.len(), 8);
    let capped = s
        .udp(&Query::new("big.extra.test", TXT).edns(600).packet())
        .await
        .expect("reply");
    assert!(capped.len() <= 600);
    assert!(
        Message::from_vec(&capped)
            .expect("parses")
            .metadata
            .truncation
    );
    let over_tcp = s.ask_tcp(&Query::new("big.extra.test", TXT)).await;
    assert_eq!(over_tcp.answers.len(), 8);
    s.stop().await;
}

#[tokio::test]
async fn edns_is_honoured_and_versions_above_zero_get_badvers() {
    let s = example_with_extra().await;
    let m = s
        .ask(&Query::new("static.gslb.example.test", A).edns(1232))
        .await;
    assert_eq!(m.edns.as_ref().expect("OPT echoed").max_payload(), 1232);
    let plain = s.ask(&Query::new("static.gslb.example.test", A)).await;
    assert!(plain.edns.is_none(), "no OPT without EDNS");
    let mut v1 = Query::new("static.gslb.example.test", A).edns(1232);
    v1.edns_version = 1;
    let m = s.ask(&v1).await;
    assert_eq!(
        u16::from(rcode(&m)),
        16,
        "BADVERS (shares 16 with TSIG BADSIG)"
    );
    let mut unknown = Query::new("static.gslb.example.test", A).edns(1232);
    unknown.options.push((65001, vec![1, 2, 3]));
    assert_eq!(answers(&s.ask(&unknown).await), ["192.0.2.1", "192.0.2.2"]);
    s.stop().await;
}

#[tokio::test]
async fn ecs_is_echoed_with_scope_zero_for_static_data_and_malformed_ecs_is_formerr() {
    let s = example_with_extra().await;
    let m = s
        .ask(&Query::new("static.gslb.example.test", A).ecs(ip("203.0.113.7"), 24))
        .await;
    assert_eq!(ecs_scope(&m), Some((24, 0)));
    let mut bad = Query::new("static.gslb.example.test", A).edns(1232);
    bad.options.push((8, vec![0, 1, 20, 0, 203, 0, 113])); // bits set past /20
    let m = s.ask(&bad).await;
    assert_eq!(rcode(&m), ResponseCode::FormErr);
    s.stop().await;
}

#[tokio::test]
async fn malformed_packets_get_formerr_notimp_or_silence() {
    let s = example_with_extra().await;
    let good = Query::new("static.gslb.example.test", A).packet();
    assert!(s.udp(&good[..7]).await.is_none(), "under 12 bytes: dropped");
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(s.udp(&response).await.is_none(), "QR=1: dropped");
    let mut two = good.clone();
    two[5] = 2;
    let m = Message::from_vec(&s.udp(&two).await.expect("reply")).expect("parses");
    assert_eq!(rcode(&m), ResponseCode::FormErr);
    let mut notify = Query::new("static.gslb.example.test", A)
        .edns(1232)
        .packet();
    notify[2] |= 4 << 3;
    let m = Message::from_vec(&s.udp(&notify).await.expect("reply")).expect("parses");
    assert_eq!(rcode(&m), ResponseCode::NotImp);
    assert!(
        m.edns.is_some() && m.queries.len() == 1,
        "NOTIMP keeps the question and OPT"
    );
    let truncated_question = &good[..good.len() - 3];
    let m = Message::from_vec(&s.udp(truncated_question).await.expect("reply")).expect("parses");
    assert_eq!(rcode(&m), ResponseCode::FormErr);
    // Still serving.
    assert_eq!(
        answers(&s.ask(&Query::new("static.gslb.example.test", A)).await).len(),
        2
    );
    s.stop().await;
}

#[tokio::test]
async fn tcp_answers_pipelined_queries_in_order() {
    let s = example_with_extra().await;
    let mut packets = Vec::new();
    for (i, name) in [
        "static.gslb.example.test",
        "nope.gslb.example.test",
        "ns1.gslb.example.test",
    ]
    .iter()
    .enumerate()
    {
        let mut q = Query::new(name, A);
        q.id = i as u16 + 1;
        packets.push(q.packet());
    }
    let replies = tcp(s.dns, &packets).await;
    assert_eq!(replies.len(), 3);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            Message::from_vec(r).expect("parses").metadata.id,
            i as u16 + 1
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_failed_reload_keeps_serving_and_a_good_one_swaps_everything() {
    let example = std::fs::read_to_string("zones/example.toml").expect("example zone");
    let dir = zone_dir("reload", &[("example.toml", &example)]);
    let s = Server::start(settings(&dir, Some("geoip/test-city.mmdb"))).await;
    let control = s.running.control.clone();
    std::fs::write(
        dir.join("broken.toml"),
        "origin = \"broken.test.\"\nbogus = 1\n",
    )
    .expect("write");
    let err = control
        .reload()
        .expect_err("a broken file fails the reload");
    assert!(
        err.messages().iter().any(|m| m.contains("broken.toml:2:1")),
        "{:?}",
        err.messages()
    );
    assert_eq!(
        answers(&s.ask(&Query::new("static.gslb.example.test", A)).await).len(),
        2
    );
    std::fs::remove_file(dir.join("broken.toml")).expect("remove");
    std::fs::write(
        dir.join("example.toml"),
        example.replace("192.0.2.1\", \"192.0.2.2", "192.0.2.77"),
    )
    .expect("edit");
    let serials = control.reload().expect("reload");
    assert_eq!(serials.len(), 1);
    assert_eq!(
        answers(&s.ask(&Query::new("static.gslb.example.test", A)).await),
        ["192.0.2.77"]
    );
    s.stop().await;
}

#[tokio::test]
async fn the_serial_grows_on_every_reload_when_the_file_sets_none() {
    let dir = zone_dir(
        "serial",
        &[(
            "z.toml",
            "origin = \"z.test.\"\n[soa]\nmname = \"ns.z.test.\"\nrname = \"h.z.test.\"\n",
        )],
    );
    let s = Server::start(settings(&dir, None)).await;
    let serial = |m: &Message| match &m.answers[0].data {
        hickory_proto::rr::RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    };
    let first = serial(&s.ask(&Query::new("z.test", SOA)).await);
    s.running.control.reload().expect("reload");
    let second = serial(&s.ask(&Query::new("z.test", SOA)).await);
    assert!(second > first, "{second} > {first}");
    s.stop().await;
}

#[tokio::test]
async fn aaaa_and_a_of_one_client_come_from_the_same_pool() {
    let s = example_with_extra().await;
    let client = ip("198.51.100.7");
    let a = s
        .ask(&Query::new("www.gslb.example.test", A).ecs(client, 24))
        .await;
    let aaaa = s
        .ask(&Query::new("www.gslb.example.test", AAAA).ecs(client, 24))
        .await;
    assert!(
        answers(&a).iter().all(|x| x.starts_with("198.51.100.")),
        "{:?}",
        answers(&a)
    );
    assert_eq!(answers(&aaaa), ["2001:db8:1::10"]);
    s.stop().await;
}

#[tokio::test]
async fn udp_and_random_bytes_never_stop_the_server() {
    let s = example_with_extra().await;
    let mut seed = 0x1234_5678_9abc_def0u64;
    let base = Query::new("www.gslb.example.test", A)
        .ecs(ip("203.0.113.7"), 24)
        .packet();
    for i in 0..120 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut p = base.clone();
        if i % 2 == 0 {
            let at = (seed as usize) % p.len();
            p[at] = (seed >> 32) as u8;
            p.truncate(p.len() - (seed >> 40) as usize % 4);
        } else {
            p = (0..(seed % 64) as usize)
                .map(|j| (seed >> (j % 56)) as u8)
                .collect();
        }
        if let Some(reply) = udp_wait(s.dns, &p, std::time::Duration::from_millis(150)).await {
            Message::from_vec(&reply).expect("every reply parses");
        }
    }
    assert_eq!(
        answers(&s.ask(&Query::new("static.gslb.example.test", A)).await).len(),
        2
    );
    s.stop().await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Any bytes into the handler: no panic, and every reply re-parses with the question
    /// id it was sent with.
    #[test]
    fn the_packet_path_never_panics_and_every_reply_parses(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        mutate_valid in proptest::prelude::any::<bool>(),
        at in proptest::prelude::any::<usize>(),
    ) {
        use meridian::dns::handler::{Local, Transport, handle};
        let world = example_world();
        let mut packet = bytes.clone();
        if mutate_valid {
            packet = Query::new("www.gslb.example.test", A).ecs(ip("203.0.113.7"), 24).packet();
            let i = at % packet.len();
            packet[i] = bytes.first().copied().unwrap_or(0xff);
            packet.truncate(packet.len() - (at >> 8) % 3);
        }
        let mut out = Vec::new();
        let mut local = Local::default();
        for transport in [Transport::Udp, Transport::Tcp] {
            if handle(world, &packet, &ip("192.0.2.1"), transport, 9, &mut out, &mut local).is_some() {
                let m = Message::from_vec(&out).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}")))?;
                proptest::prop_assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
            }
        }
    }
}

/// The example zone and database as the DNS path sees them, without sockets.
fn example_world() -> &'static meridian::world::World {
    static WORLD: std::sync::OnceLock<meridian::world::World> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| {
        let snap = meridian::config::load_dir(&meridian::config::LoadOptions {
            zones_dir: std::path::Path::new("zones"),
            previous: None,
        })
        .expect("example loads");
        let geo = meridian::geo::GeoDb::open(std::path::Path::new("geoip/test-city.mmdb"), None)
            .expect("db");
        let health = std::sync::Arc::new(meridian::health::View::unknown(&snap));
        meridian::world::World::new(
            std::sync::Arc::new(snap),
            health,
            Some(std::sync::Arc::new(geo)),
        )
        .with_nsid(Some(std::sync::Arc::from("ns-test")))
    })
}

#[tokio::test]
async fn watch_zones_reloads_when_a_zone_file_changes() {
    let example = std::fs::read_to_string("zones/example.toml").expect("example zone");
    let dir = zone_dir("watch", &[("example.toml", &example)]);
    let mut cfg = settings(&dir, None);
    cfg.watch_zones = true;
    let s = Server::start(cfg).await;
    std::fs::write(
        dir.join("example.toml"),
        example.replace("192.0.2.1\", \"192.0.2.2", "192.0.2.99"),
    )
    .expect("edit");
    let started = std::time::Instant::now();
    while answers(&s.ask(&Query::new("static.gslb.example.test", A)).await) != ["192.0.2.99"] {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[test]
fn answering_a_query_allocates_nothing() {
    use meridian::dns::handler::{Local, Transport, UDP_CACHE_SLOTS, handle};
    use meridian::dns::packet_cache::PacketCache;
    use meridian::dns::rrl;
    let world = example_world();
    let mut local = Local::new(UDP_CACHE_SLOTS);
    // Rate limiting as the UDP loop does it: four /24s, so buckets are made, then limited.
    let mut limiter = rrl::Shared::new(rrl::Config::default())
        .limiter()
        .expect("rrl is on");
    let mut out = Vec::with_capacity(4096);
    let queries = [
        Query::new("static.gslb.example.test", A).packet(),
        Query::new("www.gslb.example.test", A)
            .ecs(ip("203.0.113.7"), 24)
            .packet(),
        Query::new("www.gslb.example.test", AAAA)
            .ecs(ip("198.51.100.7"), 24)
            .packet(),
        Query::new("canary.gslb.example.test", A)
            .edns(1232)
            .packet(),
        Query::new("fast.gslb.example.test", A)
            .ecs(ip("192.0.2.1"), 24)
            .packet(),
        Query::new("nope.gslb.example.test", A).packet(),
        nsid_query("www.gslb.example.test").packet(),
        Query::new("docs.gslb.example.test", A).packet(),
        Query::new("x.wild.gslb.example.test", A).packet(),
        Query::new("www.example.com", A).packet(),
        crate::tsig::signed_query(),
    ];
    // Warm up: caches, counters and buffers reach their size.
    for (i, q) in queries.iter().enumerate() {
        assert!(
            handle(
                world,
                q,
                &ip("192.0.2.1"),
                Transport::Udp,
                i as u64,
                &mut out,
                &mut local
            )
            .is_some()
        );
    }
    assert!(
        densa_alloc::is_active(),
        "the counting allocator is installed"
    );
    let src = ip("192.0.2.1");
    // And through the UDP worker's caches, as it answers: the static answers and the ECS
    // geo answers are replayed after the first round.
    let mut cache = PacketCache::new();
    let ((), stats) = densa_alloc::measure(|| {
        for round in 0..100u64 {
            limiter.tick(std::time::Instant::now());
            for (i, q) in queries.iter().enumerate() {
                let reply = if i % 2 == round as usize % 2 {
                    cache.answer(world, q, &src, round, &mut out, &mut local)
                } else {
                    handle(world, q, &src, Transport::Udp, round, &mut out, &mut local)
                }
                .expect("a reply");
                let from = std::net::IpAddr::from([10, 0, (round % 4) as u8, 1]);
                let verdict =
                    limiter.check(from, reply.class, reply.qname(&local), &world.snapshot);
                local.stats.rrl(verdict);
                if verdict == rrl::Verdict::Slip {
                    meridian::dns::response::slip(&mut out, reply.head_len);
                }
            }
        }
    });
    assert!(
        stats.is_zero(),
        "heap operations while answering: {stats:?}"
    );
    assert!(
        limiter_slipped(&mut local, world) > 0,
        "rate limiting was exercised"
    );
}

/// Slips counted by the test above (folded into a scratch total).
fn limiter_slipped(
    local: &mut meridian::dns::handler::Local,
    world: &meridian::world::World,
) -> u64 {
    let totals = meridian::dns::stats::WorkerTotals::default();
    local.stats.flush(&world.snapshot, &totals);
    totals.0.lock().expect("not poisoned").rrl.slipped
}

/// A query asking for the server's NSID (RFC 5001: an empty option 3).
fn nsid_query(name: &str) -> Query {
    let mut q = Query::new(name, 1).edns(1232);
    q.options.push((3, Vec::new()));
    q
}

#[tokio::test]
async fn nsid_answers_the_instance_name_and_only_when_asked() {
    let zones = crate::support::zone_dir(
        "nsid",
        &[(
            "z.toml",
            "origin = \"n.test.\"\n[soa]\nmname = \"ns1.n.test.\"\nrname = \"h.n.test.\"\n[records.a]\nA = [\"192.0.2.1\"]\n",
        )],
    );
    let mut settings = crate::support::settings(&zones, None);
    settings.instance = "ns-eu-1".into();
    let server = crate::support::Server::start(settings).await;
    let nsid_of = |bytes: Vec<u8>| {
        use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        let m = hickory_proto::op::Message::from_vec(&bytes).expect("parses");
        match m
            .edns
            .as_ref()
            .and_then(|e| e.option(EdnsCode::NSID).cloned())
        {
            Some(EdnsOption::NSID(p)) => Some(String::from_utf8_lossy(p.as_ref()).into_owned()),
            _ => None,
        }
    };
    for name in ["a.n.test.", "missing.n.test.", "elsewhere.example."] {
        let reply = server.udp(&nsid_query(name).packet()).await.expect("reply");
        assert_eq!(nsid_of(reply).as_deref(), Some("ns-eu-1"), "{name}");
        let plain = server
            .udp(&Query::new(name, 1).edns(1232).packet())
            .await
            .expect("reply");
        assert_eq!(nsid_of(plain), None, "{name}: NSID only when asked");
    }
    // A non-empty NSID option is not a request (RFC 5001 §2.3).
    let mut q = Query::new("a.n.test.", 1).edns(1232);
    q.options.push((3, b"x".to_vec()));
    assert_eq!(nsid_of(server.udp(&q.packet()).await.expect("reply")), None);
    server.stop().await;
}
