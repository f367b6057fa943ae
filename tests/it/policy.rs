//! SPEC §3 as tables (client, health, expected pool, expected scope) and properties, on the
//! pure policy engine; then the same over real UDP with ECS against the shipped and
//! MaxMind's test databases.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use meridian::config::{LoadOptions, load_dir};
use meridian::geo::{Locate, Located, Location, Subdivision};
use meridian::health::{Override, View};
use meridian::model::{Coords, PoolId, Snapshot, ZoneId};
use meridian::policy::{self, Client, Ctx, Decision, NoTrace, Outcome};
use meridian::prefix::PrefixMap;
use proptest::prelude::*;

use crate::support::{Query, Server, answers, ecs_scope, ip, settings, zone_dir};

const ZONE: &str = r#"
origin = "p.test."
[soa]
mname = "ns.p.test."
rname = "h.p.test."
[pools.us]
A = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
AAAA = ["2001:db8:1::10"]
location = [39.04, -77.49]
[pools.eu]
A = ["203.0.113.10"]
location = [53.35, -6.26]
[pools.ap]
A = ["192.0.2.100"]
location = [19.07, 72.87]
# One pool per geo rule, so every row shows which rule matched. No location: `nearest`
# never picks them.
[pools.ca]
A = ["198.51.100.20"]
[pools.in]
A = ["203.0.113.20"]
[pools.dflt]
A = ["192.0.2.20"]
[pools.net]
A = ["192.0.2.21"]
[policies.geo]
geo.continent = { EU = ["eu", "us"], AS = "ap" }
geo.country = { IN = "in" }
geo.subdivision = { "US-CA" = "ca" }
geo.cidr = { "10.0.0.0/8" = "net" }
geo.default = "dflt"
[policies.geonext]
geo.country = { IN = "ap" }
geo.continent = { AS = "eu" }
geo.default = "us"
fallback = "next"
[policies.fo]
failover = ["us", "eu"]
[policies.w]
weighted = { us = 3, eu = 1 }
[policies.sticky]
weighted = { us = 1, eu = 1, ap = 1 }
sticky = true
[policies.lat]
latency = ["us", "eu", "ap"]
[policies.sf]
failover = ["eu"]
fallback = "servfail"
[policies.nested]
failover = ["eu", "w"]
[policies.one]
failover = ["us"]
max_answers = 1
"#;

/// A GeoIP stand-in with exact networks, so each row states what the client is. A miss
/// reports the empty region around the client, as the maxminddb reader does.
struct Table(PrefixMap<Location>);

impl Locate for Table {
    fn locate(&self, ip: IpAddr) -> Located {
        let m = self.0.lookup(ip);
        Located {
            location: m.entry.map(|(n, l)| Location {
                prefix_len: n.prefix_len(),
                ..*l
            }),
            prefix_len: m.scope,
        }
    }
}

fn loc(country: &str, sub: Option<&str>, continent: &str, lat: f64, lon: f64) -> Location {
    let code = |s: &str| -> [u8; 2] { s.as_bytes().try_into().expect("two letters") };
    Location {
        country: Some(code(country)),
        subdivision: sub.and_then(Subdivision::new),
        continent: Some(code(continent)),
        coords: Some(Coords { lat, lon }),
        prefix_len: 0,
        asn: None,
    }
}

fn table() -> Table {
    let net = |s: &str| s.parse::<IpNet>().expect("net");
    Table(PrefixMap::new(vec![
        (net("81.2.69.0/24"), loc("GB", None, "EU", 51.5, -0.13)),
        (net("203.0.113.128/25"), loc("IN", None, "AS", 19.07, 72.87)),
        (
            net("198.51.100.0/25"),
            loc("US", Some("CA"), "NA", 37.4, -122.1),
        ),
        (net("192.0.2.0/26"), loc("JP", None, "AS", 35.68, 139.69)),
        (net("10.0.0.0/16"), loc("US", None, "NA", 39.0, -77.0)),
        (
            net("100.64.0.0/10"),
            loc("BR", Some("SP"), "SA", -23.55, -46.63),
        ),
    ]))
}

fn snapshot() -> Snapshot {
    let dir = zone_dir("policy", &[("p.toml", ZONE)]);
    load_dir(&LoadOptions {
        zones_dir: &dir,
        previous: None,
    })
    .expect("the policy zone loads")
}

fn health(snap: &Snapshot, down: &[&str]) -> View {
    let mut overrides = vec![None; snap.pools.len()];
    for name in down {
        overrides[pool(snap, name).0 as usize] = Some(Override::Down);
    }
    View::unknown(snap).with_overrides(snap, overrides, Default::default())
}

fn pool(snap: &Snapshot, name: &str) -> PoolId {
    snap.find_pool(ZoneId(0), name).expect("pool")
}

fn decide(
    snap: &Snapshot,
    view: &View,
    geo: &Table,
    policy: &str,
    client: &str,
    source: Option<u8>,
    seed: u64,
) -> Decision {
    let ctx = Ctx {
        snap,
        health: view,
        geo,
    };
    let id = snap.find_policy(ZoneId(0), policy).expect("policy");
    let client = Client {
        addr: ip(client),
        source_prefix: source,
    };
    policy::answer(&ctx, id, client, seed, &mut NoTrace)
}

fn chosen(snap: &Snapshot, d: &Decision) -> String {
    match d.outcome {
        Outcome::Pool { pool, fail_open } => {
            format!(
                "{}{}",
                snap.pool(pool).name,
                if fail_open { " (fail open)" } else { "" }
            )
        }
        Outcome::Servfail => "SERVFAIL".into(),
    }
}

#[test]
fn policies_choose_as_the_spec_says() {
    let snap = snapshot();
    let geo = table();
    // (policy, client, pools down, expected pool, expected scope with an ECS /32 source)
    let rows: &[(&str, &str, &[&str], &str, u8)] = &[
        // Each geo rule has its own pool: continent, its list's next, country over
        // continent, subdivision over country, continent, cidr over the (US) record,
        // default for a located client no rule names and for an unlocated one.
        ("geo", "81.2.69.1", &[], "eu", 24),
        ("geo", "81.2.69.1", &["eu"], "us", 24),
        ("geo", "203.0.113.200", &[], "in", 25),
        ("geo", "198.51.100.7", &[], "ca", 25),
        ("geo", "192.0.2.1", &[], "ap", 26),
        ("geo", "10.1.2.3", &[], "net", 8),
        ("geo", "100.64.1.1", &[], "dflt", 10),
        // Unlocated: the empty region around 8.8.8.8 reaches to 8.0.0.0/7.
        ("geo", "8.8.8.8", &[], "dflt", 7),
        // The matched value is down: `nearest` (the default fallback) by distance.
        ("geo", "203.0.113.200", &["in"], "ap", 25),
        ("geo", "203.0.113.200", &["in", "ap"], "eu", 25),
        (
            "geo",
            "81.2.69.1",
            &["eu", "us", "ap"],
            "eu (fail open)",
            24,
        ),
        ("geonext", "203.0.113.200", &[], "ap", 25),
        ("geonext", "203.0.113.200", &["ap"], "eu", 25),
        ("geonext", "203.0.113.200", &["ap", "eu"], "us", 25),
        ("fo", "81.2.69.1", &[], "us", 0),
        ("fo", "81.2.69.1", &["us"], "eu", 0),
        ("fo", "81.2.69.1", &["us", "eu"], "us (fail open)", 0),
        ("sf", "81.2.69.1", &["eu"], "SERVFAIL", 0),
        ("nested", "81.2.69.1", &["eu"], "us", 0),
        ("lat", "81.2.69.1", &[], "eu", 24),
        ("lat", "203.0.113.200", &[], "ap", 25),
        ("lat", "198.51.100.7", &[], "us", 25),
        ("lat", "81.2.69.1", &["eu"], "us", 24),
        // Sticky: rendezvous hashing of the client's /24 with the name, the same pool on
        // every instance and after every restart; the whole /24 shares it.
        ("sticky", "81.2.69.1", &[], "us", 24),
        ("sticky", "81.2.69.254", &[], "us", 24),
        ("sticky", "203.0.113.200", &[], "eu", 24),
        ("sticky", "198.51.100.7", &[], "eu", 24),
    ];
    for (policy, client, down, want, scope) in rows {
        let view = health(&snap, down);
        let d = decide(&snap, &view, &geo, policy, client, Some(32), 42);
        assert_eq!(
            chosen(&snap, &d),
            *want,
            "{policy} from {client} with {down:?} down"
        );
        assert_eq!(
            d.scope, *scope,
            "scope of {policy} from {client} with {down:?} down"
        );
    }
}

#[test]
fn max_answers_and_families_shape_the_answer() {
    let snap = snapshot();
    let view = health(&snap, &[]);
    let geo = table();
    let d = decide(&snap, &view, &geo, "one", "81.2.69.1", None, 1);
    let mut out = Vec::new();
    policy::select_addresses(&snap, &view, &d, false, &mut out);
    assert_eq!(out.len(), 1);
    let d = decide(&snap, &view, &geo, "fo", "81.2.69.1", None, 1);
    policy::select_addresses(&snap, &view, &d, true, &mut out);
    assert_eq!(out, [ip("2001:db8:1::10")]);
    let eu = decide(&snap, &view, &geo, "sf", "81.2.69.1", None, 1);
    policy::select_addresses(&snap, &view, &eu, true, &mut out);
    assert!(out.is_empty(), "a pool without AAAA gives NODATA");
}

#[test]
fn endpoint_order_is_shuffled_per_query() {
    let snap = snapshot();
    let view = health(&snap, &[]);
    let geo = table();
    let mut orders = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let d = decide(&snap, &view, &geo, "fo", "81.2.69.1", None, seed);
        let mut out = Vec::new();
        policy::select_addresses(&snap, &view, &d, false, &mut out);
        assert_eq!(out.len(), 3);
        orders.insert(out);
    }
    assert!(orders.len() >= 4, "{} orders", orders.len());
}

#[test]
fn weighted_shares_converge_to_their_weights() {
    let snap = snapshot();
    let view = health(&snap, &[]);
    let geo = table();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let n = 20_000u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let d = decide(&snap, &view, &geo, "w", "81.2.69.1", None, seed >> 11);
        *counts.entry(chosen(&snap, &d)).or_default() += 1;
    }
    let us = f64::from(counts["us"]) / n as f64;
    assert!((us - 0.75).abs() < 0.02, "us share {us}");
    let view = health(&snap, &["us"]);
    let d = decide(&snap, &view, &geo, "w", "81.2.69.1", None, 3);
    assert_eq!(chosen(&snap, &d), "eu", "only up targets share");
}

fn client_v4(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sticky: a target going down moves only its own clients; the others keep theirs.
    #[test]
    fn sticky_moves_only_the_clients_of_a_failed_target(addrs in prop::collection::vec(any::<u32>(), 1..40), down in 0usize..3) {
        let snap = snapshot();
        let geo = table();
        let all_up = health(&snap, &[]);
        let name = ["us", "eu", "ap"][down];
        let one_down = health(&snap, &[name]);
        for a in addrs {
            let c = client_v4(a);
            let before = chosen(&snap, &decide(&snap, &all_up, &geo, "sticky", &c, None, 1));
            let again = chosen(&snap, &decide(&snap, &all_up, &geo, "sticky", &c, None, 99));
            prop_assert_eq!(&before, &again, "sticky ignores the per-query seed");
            let after = chosen(&snap, &decide(&snap, &one_down, &geo, "sticky", &c, None, 1));
            if before != name {
                prop_assert_eq!(before, after);
            } else {
                prop_assert_ne!(after, name);
            }
        }
    }

    /// The ECS scope never exceeds the source prefix the client sent.
    #[test]
    fn scope_never_exceeds_the_source_prefix(a in any::<u32>(), prefix in 0u8..=32, p in 0usize..6) {
        let snap = snapshot();
        let geo = table();
        let view = health(&snap, &[]);
        let policy = ["geo", "geonext", "fo", "w", "sticky", "lat"][p];
        let d = decide(&snap, &view, &geo, policy, &client_v4(a), Some(prefix), 5);
        prop_assert!(d.scope <= prefix);
    }

    /// Failing open never answers empty.
    #[test]
    fn fail_open_never_answers_empty(a in any::<u32>(), p in 0usize..7) {
        let snap = snapshot();
        let geo = table();
        let view = health(&snap, &["us", "eu", "ap"]);
        let policy = ["geo", "geonext", "fo", "w", "sticky", "lat", "nested"][p];
        let d = decide(&snap, &view, &geo, policy, &client_v4(a), None, 5);
        let mut out = Vec::new();
        policy::select_addresses(&snap, &view, &d, false, &mut out);
        prop_assert!(!out.is_empty());
    }
}

#[tokio::test]
async fn the_example_zone_answers_ecs_clients_by_location() {
    let s = Server::example().await;
    // (ECS client, expected answers, expected scope)
    let rows: &[(&str, u8, &[&str], u8)] = &[
        ("203.0.113.7", 24, &["203.0.113.10", "203.0.113.11"], 24),
        ("203.0.113.7", 32, &["203.0.113.10", "203.0.113.11"], 25),
        ("203.0.113.200", 32, &["192.0.2.100"], 25),
        // California (198.51.100.0/25) goes to us-east as the default does: the scope is
        // the widest network where every address gets us-east, 196.0.0.0/6 in this database.
        ("198.51.100.7", 32, &["198.51.100.10", "198.51.100.11"], 6),
        ("203.0.113.7", 0, &["198.51.100.10", "198.51.100.11"], 0),
    ];
    for (client, prefix, want, scope) in rows {
        let m = s
            .ask(&Query::new("www.gslb.example.test", 1).ecs(ip(client), *prefix))
            .await;
        assert_eq!(answers(&m), *want, "{client}/{prefix}");
        assert_eq!(ecs_scope(&m), Some((*prefix, *scope)), "{client}/{prefix}");
        assert_eq!(m.answers[0].ttl, 30);
    }
    let api = s
        .ask(&Query::new("api.gslb.example.test", 1).ecs(ip("203.0.113.7"), 24))
        .await;
    assert_eq!(
        ecs_scope(&api),
        Some((24, 0)),
        "failover does not depend on the client"
    );
    assert_eq!(api.answers[0].ttl, 10);
    let canary = s
        .ask(&Query::new("canary.gslb.example.test", 1).ecs(ip("203.0.113.7"), 24))
        .await;
    assert_eq!(ecs_scope(&canary), Some((24, 24)), "sticky weighted: /24");
    s.stop().await;
}

#[tokio::test]
async fn maxmind_test_database_locates_real_style_records() {
    let zone = r#"
origin = "mm.test."
[soa]
mname = "ns.mm.test."
rname = "h.mm.test."
[pools.gb]
A = ["192.0.2.1"]
[pools.se]
A = ["192.0.2.2"]
[pools.other]
A = ["192.0.2.3"]
[policies.www]
geo.country = { GB = "gb", SE = "se" }
geo.default = "other"
"#;
    let db = "geoip/testdata/GeoIP2-City-Test.mmdb";
    if !Path::new(db).exists() {
        panic!("{db} is shipped with the repo");
    }
    let dir = zone_dir("maxmind", &[("mm.toml", zone)]);
    let s = Server::start(settings(&dir, Some(db))).await;
    let rows: &[(&str, &str)] = &[
        ("81.2.69.142", "192.0.2.1"),
        ("89.160.20.113", "192.0.2.2"),
        ("8.8.8.8", "192.0.2.3"),
    ];
    for (client, want) in rows {
        let m = s
            .ask(&Query::new("www.mm.test", 1).ecs(ip(client), 32))
            .await;
        assert_eq!(answers(&m), [*want], "{client}");
    }
    s.stop().await;
}

/// Geo and latency end to end: a real server with the shipped database answers ECS
/// clients, one pool per geo rule so each rule shows, and a latency table that ranks pools
/// against their distance (a longer row prefix winning over a shorter one).
#[tokio::test]
async fn geo_rules_and_latency_table_rank_through_a_real_server() {
    let zone = r#"
origin = "e2e.test."
[soa]
mname = "ns.e2e.test."
rname = "h.e2e.test."
[pools.sub]
A = ["192.0.2.1"]
location = [37.4, -122.1]
[pools.country]
A = ["192.0.2.2"]
location = [47.6, -122.3]
[pools.continent]
A = ["192.0.2.3"]
location = [51.5, -0.13]
[pools.default]
A = ["192.0.2.4"]
location = [-33.9, 18.4]
[pools.net]
A = ["192.0.2.5"]
[policies.geo]
geo.cidr = { "10.0.0.0/8" = "net" }
geo.subdivision = { "US-CA" = "sub" }
geo.country = { US = "country", IN = "country" }
geo.continent = { EU = "continent", AS = "continent" }
geo.default = "default"
[policies.fast]
latency = ["sub", "continent", "default"]
latency_table = "rtt.csv"
"#;
    // 203.0.113.0/25 is London in the shipped database, 203.0.113.128/25 Mumbai.
    let rtt = "client_prefix,pool,rtt_ms\n\
               203.0.113.0/24,default,5\n\
               203.0.113.0/24,continent,40\n\
               203.0.113.0/25,sub,3\n";
    let dir = zone_dir("geo-e2e", &[("e2e.toml", zone), ("rtt.csv", rtt)]);
    let s = Server::start(settings(&dir, Some("geoip/test-city.mmdb"))).await;
    // (policy, ECS client, expected answer, why)
    let rows: &[(&str, &str, &str, &str)] = &[
        ("geo", "198.51.100.7", "192.0.2.1", "US-CA: subdivision"),
        ("geo", "198.51.100.200", "192.0.2.2", "US-WA: country US"),
        (
            "geo",
            "203.0.113.200",
            "192.0.2.2",
            "IN: country over continent AS",
        ),
        ("geo", "192.0.2.1", "192.0.2.3", "JP: continent AS"),
        ("geo", "203.0.113.7", "192.0.2.3", "GB: continent EU"),
        ("geo", "192.0.2.65", "192.0.2.4", "BR: default"),
        ("geo", "10.1.2.3", "192.0.2.5", "cidr"),
        (
            "fast",
            "203.0.113.7",
            "192.0.2.1",
            "the /25 row beats the /24 rows",
        ),
        (
            "fast",
            "203.0.113.200",
            "192.0.2.4",
            "the /24 rows: default 5 ms",
        ),
        (
            "fast",
            "198.51.100.200",
            "192.0.2.1",
            "no row: by distance, California is nearest to Washington",
        ),
        (
            "fast",
            "192.0.2.193",
            "192.0.2.4",
            "no row: by distance, Cape Town is nearest to Gauteng",
        ),
    ];
    for (policy, client, want, why) in rows {
        let m = s
            .ask(&Query::new(&format!("{policy}.e2e.test"), 1).ecs(ip(client), 32))
            .await;
        assert_eq!(answers(&m), [*want], "{policy} from {client}: {why}");
    }
    s.stop().await;
}
