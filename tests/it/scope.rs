//! The ECS scope promise (SPEC §4, RFC 7871 §7.3.1): a resolver reuses an answer for every
//! client inside the returned scope, so every address inside it must get the same answer.
//! Checked as a property over generated nested cidr rules and latency-table rows, against
//! the shipped GeoIP databases, with random pools down.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use meridian::config::{LoadOptions, load_dir};
use meridian::geo::{GeoDb, Locate};
use meridian::health::{Override, View};
use meridian::model::{PoolId, Snapshot, ZoneId};
use meridian::policy::{self, Client, Ctx, NoTrace, Outcome};
use meridian::world::World as Served;
use proptest::prelude::*;

use crate::support::zone_dir;

/// The shipped databases: ours, and MaxMind's City and Country test databases.
const DATABASES: [&str; 3] = [
    "geoip/test-city.mmdb",
    "geoip/testdata/GeoIP2-City-Test.mmdb",
    "geoip/testdata/GeoLite2-Country-Test.mmdb",
];

/// Where generated rules, rows and clients cluster: networks of the databases (so rules
/// nest inside and around GeoIP networks), private and loopback space, and everything.
const BASES: [&str; 14] = [
    "10.0.0.0/8",
    "81.2.69.0/24",
    "89.160.20.0/24",
    "202.196.224.0/20",
    "216.160.83.0/24",
    "203.0.113.0/24",
    "198.51.100.0/24",
    "192.0.2.0/24",
    "127.0.0.0/8",
    "0.0.0.0/0",
    "2001:db8::/32",
    "2a02:cf40::/29",
    "2001:218::/32",
    "::/0",
];

const POOLS: [&str; 4] = ["p0", "p1", "p2", "p3"];

/// Policies of the generated zone: geo with every level, geo with cidr only, latency with
/// a table, latency by distance, sticky weighted, plain weighted, failover.
const POLICIES: [&str; 7] = ["g", "gc", "l", "d", "s", "w", "f"];

/// Addresses drawn inside each returned scope, besides its first and last address.
const DRAWS: usize = 10;

fn databases() -> &'static [Arc<GeoDb>] {
    static DBS: OnceLock<Vec<Arc<GeoDb>>> = OnceLock::new();
    DBS.get_or_init(|| {
        DATABASES
            .iter()
            .map(|p| Arc::new(GeoDb::open(p.as_ref(), None).expect("shipped database opens")))
            .collect()
    })
}

fn max_len(net: &IpNet) -> u8 {
    if net.addr().is_ipv4() { 32 } else { 128 }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

fn from_bits(like: IpAddr, bits: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(bits.into()),
    }
}

/// Mask of the host bits below a prefix of `len` in a family of `max` bits.
fn host_mask(len: u8, max: u8) -> u128 {
    let all = if max == 128 {
        u128::MAX
    } else {
        (1u128 << max) - 1
    };
    if len >= max { 0 } else { all >> len }
}

/// The address of `net` whose host bits come from `random`.
fn addr_in(net: IpNet, random: u128) -> IpAddr {
    let m = host_mask(net.prefix_len(), max_len(&net));
    from_bits(net.addr(), (bits_of(net.network()) & !m) | (random & m))
}

/// A network `extra` bits longer than `base`, inside it, chosen by `random`.
fn inside(base: IpNet, extra: u8, random: u128) -> IpNet {
    let len = (base.prefix_len() + extra).min(max_len(&base));
    IpNet::new(addr_in(base, random), len)
        .expect("length within the family")
        .trunc()
}

fn base(i: usize) -> IpNet {
    BASES[i % BASES.len()].parse().expect("base network")
}

/// (base index, extra bits, random bits): a network nested in one of the bases.
fn net_strategy() -> impl Strategy<Value = IpNet> {
    (0..BASES.len(), 0u8..=20, any::<u128>()).prop_map(|(b, extra, r)| inside(base(b), extra, r))
}

/// A client clustered around the bases (so inside and beside the rules).
fn client_strategy() -> impl Strategy<Value = IpAddr> {
    (0..BASES.len(), any::<u128>()).prop_map(|(b, r)| addr_in(base(b), r))
}

#[derive(Debug, Clone)]
struct World {
    rules: Vec<(IpNet, usize)>,
    rows: Vec<(IpNet, usize, u32)>,
    fallback: &'static str,
    down: [bool; 4],
    db: usize,
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        prop::collection::vec((net_strategy(), 0..POOLS.len()), 1..14),
        prop::collection::vec((net_strategy(), 0..POOLS.len(), 1u32..300), 0..14),
        prop::sample::select(vec!["nearest", "next", "none"]),
        any::<[bool; 4]>(),
        0..DATABASES.len(),
    )
        .prop_map(|(mut rules, rows, fallback, down, db)| {
            // A TOML table has one value per key: keep the first rule of each network.
            let mut seen = std::collections::HashSet::new();
            rules.retain(|(n, _)| seen.insert(*n));
            World {
                rules,
                rows,
                fallback,
                down,
                db,
            }
        })
}

/// The zone of one generated world, loaded through `check`'s own loader.
fn snapshot(w: &World) -> Snapshot {
    let cidr: Vec<String> = w
        .rules
        .iter()
        .map(|(n, p)| format!("\"{n}\" = \"{}\"", POOLS[*p]))
        .collect();
    let zone = format!(
        r#"
origin = "s.test."
[soa]
mname = "ns.s.test."
rname = "h.s.test."
[pools.p0]
A = ["192.0.2.10"]
location = [39.04, -77.49]
[pools.p1]
A = ["192.0.2.11"]
location = [51.5, -0.12]
[pools.p2]
A = ["192.0.2.12"]
location = [1.35, 103.82]
[pools.p3]
A = ["192.0.2.13"]
location = [-23.55, -46.63]
[policies.g]
geo.cidr = {{ {cidr} }}
geo.subdivision = {{ "US-WA" = "p3", "GB-ENG" = "p2", "US-CA" = "p1" }}
geo.country = {{ GB = "p1", SE = "p2", US = "p0", PH = "p3", IN = "p2", JP = "p1" }}
geo.continent = {{ EU = ["p1", "p0"], AS = ["p2", "p3"], OC = "p3" }}
geo.default = "p0"
fallback = "{fallback}"
[policies.gc]
geo.cidr = {{ {cidr} }}
geo.default = "p3"
fallback = "{fallback}"
[policies.l]
latency = ["p0", "p1", "p2", "p3"]
latency_table = "t.csv"
[policies.d]
latency = ["p0", "p1", "p2", "p3"]
[policies.s]
weighted = {{ p0 = 1, p1 = 2, p2 = 3, p3 = 1 }}
sticky = true
[policies.w]
weighted = {{ p0 = 1, p1 = 1 }}
[policies.f]
failover = ["p2", "p1"]
"#,
        cidr = cidr.join(", "),
        fallback = w.fallback,
    );
    let mut csv = String::from("client_prefix,pool,rtt_ms\n");
    for (n, p, rtt) in &w.rows {
        csv.push_str(&format!("{n},{},{rtt}\n", POOLS[*p]));
    }
    let dir = zone_dir("scope", &[("s.toml", &zone), ("t.csv", &csv)]);
    let snap = load_dir(&LoadOptions {
        zones_dir: &dir,
        previous: None,
    })
    .unwrap_or_else(|e| panic!("generated zone loads: {e:?}\n{zone}\n{csv}"));
    let _ = std::fs::remove_dir_all(&dir);
    snap
}

fn view(snap: &Snapshot, down: [bool; 4]) -> View {
    let mut overrides = vec![None; snap.pools.len()];
    for (name, d) in POOLS.iter().zip(down) {
        if d {
            let p: PoolId = snap.find_pool(ZoneId(0), name).expect("pool");
            overrides[p.0 as usize] = Some(Override::Down);
        }
    }
    View::unknown(snap).with_overrides(snap, overrides, Default::default())
}

/// The pool (and whether it failed open) one client gets, and the scope.
fn ask<L: Locate + ?Sized>(
    ctx: &Ctx<'_, L>,
    policy: &str,
    addr: IpAddr,
    source: u8,
) -> (Outcome, u8) {
    let id = ctx.snap.find_policy(ZoneId(0), policy).expect("policy");
    let client = Client {
        addr,
        source_prefix: Some(source),
    };
    // A fixed seed: plain weighted then answers alike too, and its scope is 0.
    let d = policy::answer(ctx, id, client, 7, &mut NoTrace);
    (d.outcome, d.scope)
}

/// Every address inside `addr`/`scope` gets `want`: the first, the last and some between.
fn same_answer_inside<L: Locate + ?Sized>(
    ctx: &Ctx<'_, L>,
    policy: &str,
    addr: IpAddr,
    scope: u8,
    want: Outcome,
    mut random: u128,
) -> Result<(), TestCaseError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let net = IpNet::new(addr, scope)
        .expect("scope within the family")
        .trunc();
    let mut probes = vec![net.network(), net.broadcast()];
    for _ in 0..DRAWS {
        random = random
            .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
            .wrapping_add(0x5851_f42d_4c95_7f2d_1405_7b7e_f767_814f);
        probes.push(addr_in(net, random.rotate_left(64)));
    }
    for other in probes {
        let (got, _) = ask(ctx, policy, other, max);
        prop_assert_eq!(
            got,
            want,
            "policy {} : {} got another answer than {} inside its scope {}",
            policy,
            other,
            addr,
            net
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For random clients, every address inside the returned scope gets the same answer,
    /// and the scope never exceeds the source prefix. Answered as the DNS path does, through
    /// a served world and its geo policy trees; the whole trie gives the same answers with
    /// scopes never wider.
    #[test]
    fn every_address_inside_the_scope_gets_the_same_answer(
        world in world_strategy(),
        clients in prop::collection::vec((client_strategy(), any::<u128>(), any::<u8>()), 1..12),
    ) {
        let snap = Arc::new(snapshot(&world));
        let health = Arc::new(view(&snap, world.down));
        let db = &databases()[world.db];
        let served = Served::new(snap.clone(), health.clone(), Some(db.clone()));
        let ctx = Ctx { snap: &snap, health: &health, geo: &served };
        let whole = Ctx { snap: &snap, health: &health, geo: &**db };
        for (addr, random, cut) in clients {
            let max = if addr.is_ipv4() { 32u8 } else { 128 };
            for policy in POLICIES {
                // A full-length source: the scope is exactly what the walk found.
                let (want, scope) = ask(&ctx, policy, addr, max);
                prop_assert!(scope <= max);
                let (whole_want, whole_scope) = ask(&whole, policy, addr, max);
                prop_assert_eq!(want, whole_want, "{}: the tree answers {} otherwise", policy, addr);
                prop_assert!(scope <= whole_scope, "{policy}: {addr} scope {scope} > {whole_scope}");
                same_answer_inside(&ctx, policy, addr, scope, want, random)?;
                // A shorter source: the address is the subnet; the scope is capped at it,
                // and an uncapped scope still holds for every full address inside.
                let source = cut % (max + 1);
                let masked = IpNet::new(addr, source).expect("prefix").trunc().addr();
                let (want, scope) = ask(&ctx, policy, masked, source);
                prop_assert!(scope <= source, "{policy}: scope {scope} over source {source}");
                if scope < source {
                    same_answer_inside(&ctx, policy, masked, scope, want, random)?;
                }
            }
        }
    }
}

/// The cases of issue 9, each with the scope it must now get (MaxMind's City test database).
#[test]
fn nested_rules_and_rows_cut_the_scope() {
    let world = World {
        rules: vec![
            ("10.0.0.0/8".parse().expect("net"), 0),
            ("10.1.0.0/16".parse().expect("net"), 1),
            ("192.0.2.0/24".parse().expect("net"), 0),
            ("192.0.2.128/25".parse().expect("net"), 1),
            ("2001:db8::/32".parse().expect("net"), 0),
            ("2001:db8:1::/48".parse().expect("net"), 1),
        ],
        rows: vec![
            ("10.0.0.0/8".parse().expect("net"), 0, 10),
            ("10.1.0.0/16".parse().expect("net"), 1, 10),
            ("202.196.232.0/24".parse().expect("net"), 2, 10),
        ],
        fallback: "nearest",
        down: [false; 4],
        db: 1,
    };
    let snap = snapshot(&world);
    let health = view(&snap, world.down);
    let ctx = Ctx {
        snap: &snap,
        health: &health,
        geo: &*databases()[1],
    };
    let pool = |o: Outcome| match o {
        Outcome::Pool { pool, .. } => snap.pool(pool).name.clone(),
        Outcome::Servfail => "SERVFAIL".into(),
    };
    // (policy, client, pool, scope)
    let rows: &[(&str, &str, &str, u8)] = &[
        ("gc", "10.5.5.5", "p0", 14),
        ("gc", "10.1.2.3", "p1", 16),
        ("gc", "192.0.2.1", "p0", 25),
        ("gc", "2001:db8:2::1", "p0", 47),
        ("l", "10.5.5.5", "p0", 14),
        ("l", "10.1.2.3", "p1", 16),
        // A row inside the GeoIP network 202.196.224.0/20 cuts it.
        ("l", "202.196.224.1", "p2", 21),
        ("l", "202.196.232.1", "p2", 24),
        // Unlocated, beside located networks in the same /24 (81.2.69.142/31 is GB).
        ("g", "81.2.69.5", "p0", 25),
    ];
    for (policy, client, want, scope) in rows {
        let addr: IpAddr = client.parse().expect("ip");
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let (got, s) = ask(&ctx, policy, addr, max);
        assert_eq!(
            (pool(got), s),
            ((*want).to_owned(), *scope),
            "{policy} from {client}"
        );
    }
}
