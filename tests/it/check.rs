//! Zone loading as `meridian check` does it: golden diagnostics for every rejection rule
//! (`tests/fixtures/zones/bad/<case>/` → `<case>.expected`) and the compiled content of
//! the valid zones in `tests/fixtures/zones/ok/`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test it check` rewrites the `.expected` files; review the
//! diff by eye before committing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meridian::config::compile::summary;
use meridian::config::{LoadOptions, Source, load_dir, load_sources, load_str};
use meridian::model::{Fallback, PolicyKind, Snapshot, Target, ZoneId, rtype, wire};

const BAD: &str = "tests/fixtures/zones/bad";
const OK: &str = "tests/fixtures/zones/ok";

fn load(dir: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
    load_dir(&LoadOptions {
        zones_dir: dir,
        previous,
    })
    .map_err(|d| d.to_string())
}

fn load_ok() -> Snapshot {
    load(Path::new(OK), None).unwrap_or_else(|e| panic!("ok zones must load:\n{e}"))
}

#[test]
fn every_bad_case_reports_its_golden_diagnostics() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(BAD)
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "expected a case per rejection rule, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in cases {
        let got = match load(&case, None) {
            Ok(_) => "(loaded without errors)\n".to_owned(),
            Err(e) => e,
        };
        let golden = case.with_extension("expected");
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Where the SPEC lives beside a checkout (`MERIDIAN_SPEC` overrides it).
const SPEC: &str = "../shared/SPEC.md";
/// SPEC §2's example as of the last run beside the SPEC: what a clean clone, which has no
/// SPEC next to it, compares the shipped example with.
const SPEC_EXAMPLE: &str = "tests/fixtures/spec-example.toml";

#[test]
fn the_shipped_example_loads_clean() {
    let snap = load(Path::new("zones"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary(&snap), "ok: 1 zones, 10 names, 3 pools, 2 checks");
    let example = std::fs::read_to_string("zones/example.toml").expect("example");
    let copy = std::fs::read_to_string(SPEC_EXAMPLE).expect("the SPEC example's copy");
    assert_eq!(
        example, copy,
        "zones/example.toml must be SPEC §2's example verbatim, as {SPEC_EXAMPLE} is"
    );
    let path = std::env::var("MERIDIAN_SPEC").unwrap_or_else(|_| SPEC.into());
    match std::fs::read_to_string(&path) {
        Ok(spec) => assert!(
            spec.contains(&example),
            "zones/example.toml (and {SPEC_EXAMPLE}) must be {path} §2's example verbatim"
        ),
        // A clean clone: the copy above is all there is to compare with. Said on stderr,
        // so the run shows which comparison it made.
        Err(e) => {
            eprintln!("note: {path}: {e}; zones/example.toml was compared with {SPEC_EXAMPLE} only")
        }
    }
}

#[test]
fn ok_zones_compile_to_the_expected_snapshot() {
    let snap = load_ok();
    assert_eq!(summary(&snap), "ok: 2 zones, 22 names, 5 pools, 3 checks");
    assert!(snap.loaded_at.is_some());
    // Files load in name order: example.toml, then records.toml.
    let ex = snap.zone(ZoneId(0));
    assert_eq!(ex.origin, "gslb.example.test.");
    assert_eq!(ex.file, Path::new(OK).join("example.toml"));
    assert_eq!(ex.serial, 2026112401);
    assert_eq!(
        (ex.soa_ttl, ex.policy_ttl, ex.soa.minimum, ex.soa.expire),
        (300, 30, 30, 1209600)
    );
    assert_eq!(wire::to_text(&ex.soa.rname), "hostmaster.example.test.");
    let rec = snap.zone(ZoneId(1));
    assert_eq!(rec.origin, "records.test.");
    assert_eq!(snap.find_zone(&name("www.records.test.")), Some(ZoneId(1)));
    assert_eq!(wire::to_text(&rec.soa.rname), "dns-admin.records.test.");
    assert_eq!(wire::to_text(&rec.soa.mname), "ns1.records.test.");
    assert_eq!((rec.soa.refresh, rec.soa.retry), (7200, 600));
}

fn node<'z>(z: &'z meridian::model::Zone, n: &str) -> meridian::model::Node<'z> {
    z.nodes
        .get(&name(n))
        .unwrap_or_else(|| panic!("{n} is a name"))
}

fn name(s: &str) -> Box<[u8]> {
    wire::from_text(s).expect("valid name")
}

#[test]
fn pools_endpoints_and_probes_are_deduplicated_across_zones() {
    let snap = load_ok();
    let ex = ZoneId(0);
    let names: Vec<&str> = snap
        .zone(ex)
        .pools
        .iter()
        .map(|p| snap.pool(*p).name.as_str())
        .collect();
    assert_eq!(names, ["us-east", "eu-west", "ap-south"]);
    let us = snap.pool(snap.find_pool(ex, "us-east").expect("us-east"));
    let addrs: Vec<String> = us.endpoints.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["198.51.100.10", "198.51.100.11", "2001:db8:1::10"]);
    assert_eq!(us.check_name.as_deref(), Some("web"));
    assert_eq!(us.min_healthy, 1);
    assert_eq!(us.location.map(|c| (c.lat, c.lon)), Some((39.04, -77.49)));
    let check = us.check.as_ref().expect("check");
    assert_eq!(
        (check.port, check.path.as_str(), check.rise, check.fall),
        (8053, "/healthz", 2, 2)
    );
    assert_eq!(check.interval, std::time::Duration::from_secs(2));
    assert_eq!(check.expect_status.codes, [200, 204]);
    assert_eq!(
        check.headers,
        [("User-Agent".to_owned(), "meridian-probe".to_owned())]
    );
    // us-east's two v4 endpoints share the probe at 127.0.0.1; its v6 one is probed at ::1.
    let probes: Vec<_> = us
        .endpoints
        .iter()
        .map(|e| e.probe.expect("checked pool"))
        .collect();
    assert_eq!(probes[0], probes[1]);
    assert_eq!(
        snap.probe(probes[2]).addr,
        "::1".parse::<IpAddr>().expect("ip")
    );
    // (127.0.0.1, web) once, (::1, web), (127.0.0.1, tcp443); records.test's identical check
    // on 127.0.0.1 reuses the first; its unmapped v6 endpoint is probed at its own address.
    assert_eq!(snap.probes.len(), 4);
    let one = snap.pool(snap.find_pool(ZoneId(1), "one").expect("one"));
    assert_eq!(one.endpoints[0].probe, Some(probes[0]));
    assert_eq!(
        snap.probe(one.endpoints[1].probe.expect("probe")).addr,
        one.endpoints[1].addr
    );
    let two = snap.pool(snap.find_pool(ZoneId(1), "two").expect("two"));
    assert!(two.check.is_none() && two.endpoints[0].probe.is_none());
}

#[test]
fn policies_resolve_targets_and_defaults() {
    let snap = load_ok();
    let ex = ZoneId(0);
    let pool = |n| Target::Pool(snap.find_pool(ex, n).expect("pool"));
    let policy = |n| snap.policy(snap.find_policy(ex, n).expect("policy"));
    let www = policy("www");
    assert_eq!(
        (www.ttl, www.max_answers, www.fallback, www.publish),
        (30, 8, Fallback::Nearest, true)
    );
    let PolicyKind::Geo(geo) = &www.kind else {
        panic!("www is geo")
    };
    assert_eq!(geo.continent[b"EU"], [pool("eu-west"), pool("us-east")]);
    assert_eq!(geo.continent[b"AS"], [pool("ap-south")]);
    assert_eq!(geo.country[b"IN"], [pool("ap-south")]);
    assert_eq!(geo.subdivision["US-CA"], [pool("us-east")]);
    assert_eq!(geo.cidr.entries()[0].0.to_string(), "10.0.0.0/8");
    assert_eq!(geo.default.as_deref(), Some(&[pool("us-east")][..]));
    assert_eq!(policy("api").ttl, 10);
    assert!(
        matches!(policy("api").kind, PolicyKind::Failover(ref t) if t[..] == [pool("us-east"), pool("eu-west")])
    );
    assert_eq!(policy("api").fallback, Fallback::None);
    let PolicyKind::Weighted { targets, sticky } = &policy("canary").kind else {
        panic!("weighted")
    };
    assert_eq!(
        (&targets[..], *sticky),
        (&[(pool("us-east"), 90), (pool("eu-west"), 10)][..], true)
    );
    let split = snap.find_policy(ex, "na-split").expect("na-split");
    assert!(!snap.policy(split).publish);
    assert!(
        matches!(policy("eu-or-split").kind, PolicyKind::Failover(ref t) if t[..] == [pool("eu-west"), Target::Policy(split)])
    );
    assert!(
        matches!(policy("fast").kind, PolicyKind::Latency { ref table, .. } if table.is_none())
    );

    let rz = ZoneId(1);
    let lat = snap.policy(snap.find_policy(rz, "lat").expect("lat"));
    assert_eq!(
        (lat.ttl, lat.max_answers, lat.fallback),
        (15, 1, Fallback::Servfail)
    );
    let PolicyKind::Latency {
        table: Some(table), ..
    } = &lat.kind
    else {
        panic!("latency with table")
    };
    let one = snap.find_pool(rz, "one").expect("one");
    let two = snap.find_pool(rz, "two").expect("two");
    let (net, rows) = table
        .lookup("10.1.2.3".parse().expect("ip"))
        .entry
        .expect("row");
    assert_eq!(
        (net.to_string(), &rows[..]),
        ("10.1.0.0/16".to_owned(), &[(two, 5)][..])
    );
    let (_, rows) = table
        .lookup("10.9.9.9".parse().expect("ip"))
        .entry
        .expect("row");
    assert_eq!(rows[..], [(one, 20), (two, 90)]);
    let xlat = snap.policy(snap.find_policy(rz, "x.lat").expect("x.lat"));
    let PolicyKind::Geo(geo) = &xlat.kind else {
        panic!("geo")
    };
    let prefixes: Vec<String> = geo
        .cidr
        .entries()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(prefixes, ["2001:db8::/32", "10.1.0.0/16", "10.0.0.0/8"]);
    assert_eq!(geo.country[b"DE"], [Target::Pool(two)]);
    assert_eq!(
        geo.default.as_deref(),
        Some(&[Target::Policy(snap.find_policy(rz, "lat").expect("lat"))][..])
    );
}

#[test]
fn names_hold_records_policies_and_empty_non_terminals() {
    let snap = load_ok();
    let ex = snap.zone(ZoneId(0));
    let apex = node(ex, "gslb.example.test.");
    assert!(
        apex.rrset(rtype::SOA).is_none(),
        "the SOA is synthesized from Zone.soa"
    );
    assert_eq!(apex.rrset(rtype::NS).expect("NS").len(), 2);
    assert_eq!(
        apex.rrset(rtype::TXT)
            .expect("TXT")
            .rdatas()
            .next()
            .expect("a record"),
        b"\x12meridian demo zone"
    );
    let st = node(ex, "static.gslb.example.test.");
    assert_eq!(st.rrset(rtype::A).expect("A").ttl, 600);
    assert_eq!(
        node(ex, "ns1.gslb.example.test.")
            .rrset(rtype::A)
            .expect("A")
            .ttl,
        300
    );
    assert_eq!(
        node(ex, "*.wild.gslb.example.test.")
            .rrset(rtype::A)
            .expect("A")
            .rdatas()
            .next()
            .expect("a record"),
        [192, 0, 2, 9]
    );
    assert!(
        node(ex, "wild.gslb.example.test.").is_empty(),
        "an empty non-terminal"
    );
    assert_eq!(
        node(ex, "www.gslb.example.test.").policy,
        snap.find_policy(ZoneId(0), "www")
    );
    assert!(
        !ex.nodes.contains_key(&name("na-split.gslb.example.test.")),
        "publish = false"
    );
    assert!(
        !ex.nodes.contains_key(&name("us-east.gslb.example.test.")),
        "pools are not names"
    );
    assert_eq!(ex.name_count, 10);

    let rz = snap.zone(ZoneId(1));
    let apex = node(rz, "records.test.");
    assert!(!apex.delegation);
    let mx: Vec<&[u8]> = apex.rrset(rtype::MX).expect("MX").rdatas().collect();
    assert_eq!(mx[0], b"\x00\x0a\x03mx1\x07records\x04test\x00");
    assert_eq!(mx[1], b"\x00\x14\x03mx2\x09elsewhere\x07example\x00");
    assert_eq!(
        apex.rrset(rtype::CAA)
            .expect("CAA")
            .rdatas()
            .next()
            .expect("a record"),
        b"\x00\x05issueletsencrypt.org"
    );
    assert_eq!(apex.rrset(rtype::MX).expect("MX").ttl, 120);
    let srv = node(rz, "_https._tcp.records.test.")
        .rrset(rtype::SRV)
        .expect("SRV");
    assert_eq!(
        srv.rdatas().next().expect("a record"),
        b"\x00\x0a\x00\x05\x01\xbb\x03www\x07records\x04test\x00"
    );
    assert!(node(rz, "_tcp.records.test.").is_empty());
    assert!(
        node(rz, "1.2.0.192.in-addr.records.test.")
            .rrset(rtype::PTR)
            .is_some()
    );
    assert!(node(rz, "a.b.records.test.").is_empty() && node(rz, "b.records.test.").is_empty());
    assert_eq!(
        node(rz, "deep.a.b.records.test.")
            .rrset(rtype::TXT)
            .expect("TXT")
            .ttl,
        60
    );
    assert!(node(rz, "sub.records.test.").delegation);
    assert!(node(rz, "ns.sub.records.test.").rrset(rtype::A).is_some());
    assert_eq!(
        node(rz, "alias.records.test.")
            .rrset(rtype::CNAME)
            .expect("CNAME")
            .rdatas()
            .next()
            .expect("a record"),
        &*name("target.elsewhere.example.")
    );
    let long = &node(rz, "long.records.test.")
        .rrset(rtype::TXT)
        .expect("TXT")
        .rdatas()
        .next()
        .expect("a record");
    assert_eq!((long[0], long[256], long.len()), (255, 25, 282));
    assert_eq!(
        node(rz, "x.lat.records.test.").policy,
        snap.find_policy(ZoneId(1), "x.lat")
    );
    assert!(!rz.nodes.contains_key(&name("hidden.records.test.")));
    // 10 static owners + lat + x.lat.
    assert_eq!(rz.name_count, 12);
}

#[test]
fn serials_grow_with_every_reload() {
    let first = load_ok();
    let auto = first.zone(ZoneId(1)).serial;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as u32;
    assert!(
        auto >= now - 5 && auto <= now + 5,
        "a fresh serial is the clock"
    );
    let second = load(Path::new(OK), Some(&first)).expect("reload");
    let s2 = second.zone(ZoneId(1)).serial;
    assert!(
        s2 > auto,
        "one more than before, even within the same second"
    );
    let third = load(Path::new(OK), Some(&second)).expect("reload");
    assert!(third.zone(ZoneId(1)).serial > s2);
    assert_eq!(
        third.zone(ZoneId(0)).serial,
        2026112401,
        "an explicit serial is kept"
    );
}

#[test]
fn a_missing_or_empty_directory_is_a_diagnostic() {
    let err = load(Path::new("tests/fixtures/zones/nowhere"), None).expect_err("missing dir");
    assert!(
        err.starts_with("tests/fixtures/zones/nowhere: cannot read the zones directory"),
        "{err}"
    );
}

#[test]
fn any_line_of_the_example_removed_never_panics_and_points_inside_the_file() {
    let example = std::fs::read_to_string("zones/example.toml").expect("example");
    let lines: Vec<&str> = example.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        if let Err(diags) = load_str(Path::new("zones/example.toml"), &text.join("\n")) {
            for d in &diags.0 {
                assert!(
                    d.line >= 1 && d.line <= text.len() + 1,
                    "line {skip} removed: {d}"
                );
            }
        }
    }
}

#[test]
fn zone_text_compiles_from_memory_as_from_its_file() {
    let path = Path::new("zones/example.toml");
    let text = std::fs::read_to_string(path).expect("example");
    let from_str = load_str(path, &text).expect("the example loads from a string");
    assert_eq!(
        summary(&from_str),
        summary(&load(Path::new("zones"), None).expect("dir"))
    );
    let two = [
        Source {
            path: "a.toml".into(),
            text: "origin = \"a.test.\"\n".into(),
        },
        Source {
            path: "b.toml".into(),
            text: "origin = \"a.test.\"\n".into(),
        },
    ];
    let err = load_sources(&two, None)
        .expect_err("same origin twice")
        .to_string();
    assert!(
        err.contains("b.toml:1:10: origin a.test. is already the origin of a.toml"),
        "{err}"
    );
}

/// SPEC §1: `check` counts every `[checks.*]` it validated, also one no pool uses and one
/// with the same settings as another (the prober shares their probes, the count does not).
#[test]
fn the_summary_counts_every_check() {
    let dir = crate::support::zone_dir(
        "check-count",
        &[(
            "z.toml",
            "origin = \"count.test.\"\n[soa]\nmname = \"ns.count.test.\"\nrname = \"h.count.test.\"\n\
             [checks.a]\nkind = \"tcp\"\nport = 1\n\
             [checks.b]\nkind = \"tcp\"\nport = 1\n\
             [checks.unused]\nkind = \"tcp\"\nport = 2\n\
             [pools.p]\nA = [\"192.0.2.1\"]\ncheck = \"a\"\n\
             [pools.q]\nA = [\"192.0.2.2\"]\ncheck = \"b\"\n",
        )],
    );
    let snap = load(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary(&snap), "ok: 1 zones, 0 names, 2 pools, 3 checks");
}

/// Every name of a zone with what it holds, in name order: (name, RRsets as (type, TTL,
/// RDATA), policy, delegation).
type Dump = Vec<(String, Vec<(u16, u32, Vec<Vec<u8>>)>, Option<u32>, bool)>;

fn dump(z: &meridian::model::Zone) -> Dump {
    let mut all: Dump = z
        .nodes
        .iter()
        .map(|(n, node)| {
            let sets = node
                .rrsets()
                .map(|s| (s.rtype, s.ttl, s.rdatas().map(<[u8]>::to_vec).collect()))
                .collect();
            (
                wire::to_text(n),
                sets,
                node.policy.map(|p| p.0),
                node.delegation,
            )
        })
        .collect();
    all.sort();
    all
}

/// The same owners as plain `[records.x]` tables (read beside the toml tree) and as inline
/// tables under `[records]` (read by the toml crate): the same names, RRsets and problems.
#[test]
fn plain_record_tables_compile_as_the_toml_tree_does() {
    let head = "origin = \"p.test.\"\n[soa]\nmname = \"ns1\"\nrname = \"h.p.test.\"\nserial = 1\n";
    // (key, plain table body, the same as an inline table)
    let owners = [
        (
            "\"@\"",
            "NS = [\"ns1\", \"ns2.elsewhere.\"]\nTXT = 'apex'",
            "NS = [\"ns1\", \"ns2.elsewhere.\"], TXT = 'apex'",
        ),
        ("ns1", "A = \"192.0.2.53\"", "A = \"192.0.2.53\""),
        (
            "www",
            "A = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.1\"] # a duplicate\nttl = 60",
            "A = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.1\"], ttl = 60",
        ),
        (
            "\"deep.a.b\"",
            "TXT = [\n  \"one\", # first\n  \"two\",\n]",
            "TXT = [\"one\", \"two\"]",
        ),
        ("sub", "NS = \"ns.sub\"", "NS = \"ns.sub\""),
        (
            "\"ns.sub\"",
            "AAAA = \"2001:db8::53\"",
            "AAAA = \"2001:db8::53\"",
        ),
        ("alias", "CNAME = \"www\"", "CNAME = \"www\""),
        (
            "mail",
            "MX = [\"10 mx1\", \"20 mx2.elsewhere.\"]\nSRV = \"1 2 25 mail\"",
            "MX = [\"10 mx1\", \"20 mx2.elsewhere.\"], SRV = \"1 2 25 mail\"",
        ),
        // An escape: this table goes to the toml crate among plain ones.
        ("esc", "TXT = \"a\\\"b\"", "TXT = \"a\\\"b\""),
    ];
    let plain: String = owners
        .iter()
        .map(|(k, body, _)| format!("[records.{k}]\n{body}\n\n"))
        .collect();
    let inline: String = owners
        .iter()
        .map(|(k, _, body)| format!("{k} = {{ {body} }}\n"))
        .collect();
    let a = load_str(Path::new("plain.toml"), &format!("{head}{plain}"))
        .unwrap_or_else(|d| panic!("plain tables load:\n{d}"));
    let b = load_str(
        Path::new("tree.toml"),
        &format!("{head}[records]\n{inline}"),
    )
    .unwrap_or_else(|d| panic!("inline tables load:\n{d}"));
    let (a, b) = (dump(a.zone(ZoneId(0))), dump(b.zone(ZoneId(0))));
    assert_eq!(a, b);
    let www = a.iter().find(|(n, ..)| n == "www.p.test.").expect("www");
    assert_eq!(
        www.1,
        [(rtype::A, 60, vec![vec![192, 0, 2, 1], vec![192, 0, 2, 2]])]
    );
    assert!(a.iter().any(|(n, _, _, d)| n == "sub.p.test." && *d));
    assert!(
        a.iter()
            .any(|(n, s, ..)| n == "a.b.p.test." && s.is_empty())
    );
}

/// Plain tables and tables only the toml crate reads, mixed: a name written twice is
/// reported at its second key with the line of the first, whichever way each was read; the
/// same key twice is the toml crate's own error, as if no table were plain.
#[test]
fn plain_and_tree_tables_report_names_written_twice_in_file_order() {
    let head = "origin = \"p.test.\"\n[soa]\nmname = \"ns1\"\nrname = \"h.p.test.\"\n";
    let text = format!(
        "{head}[records.www]\nA = \"192.0.2.1\"\n[records.\"WWW\"]\nTXT = \"x\\ty\"\n[records.\"www.p.test.\"]\nA = \"192.0.2.3\"\n"
    );
    let err = load_str(Path::new("z.toml"), &text)
        .expect_err("written twice")
        .to_string();
    assert_eq!(
        err,
        "z.toml:7:10: name WWW is written twice (also at line 5)\nz.toml:9:10: name www.p.test. is written twice (also at line 5)\n"
    );
    let text =
        format!("{head}[records.www]\nA = \"192.0.2.1\"\n[records.www]\nA = \"192.0.2.3\"\n");
    let plain_err = load_str(Path::new("z.toml"), &text)
        .expect_err("a table twice")
        .to_string();
    assert!(
        plain_err.starts_with("z.toml:7:") && plain_err.contains("TOML syntax"),
        "{plain_err}"
    );
}

/// Enough plain tables (over a megabyte) that a thread of its own reads them while the
/// loader compiles, batch by batch: a table only the toml crate reads, placed past the
/// first batches, still comes in file order, and a problem deep in the file keeps its
/// line and column.
#[test]
fn a_big_zone_of_plain_tables_loads_in_file_order_with_positions() {
    const TABLES: usize = 30_000;
    let head = "origin = \"big.test.\"\n[soa]\nmname = \"ns1\"\nrname = \"h.big.test.\"\n";
    let mut text = String::from(head);
    for i in 0..TABLES {
        text.push_str(&format!(
            "[records.n{i}]\nA = [\"10.0.{}.{}\"]\n",
            i / 256 % 256,
            i % 256
        ));
        if i == 20_000 {
            // An escape: read by the toml crate, named like a plain table before it.
            text.push_str("[records.\"N19999\"]\nTXT = \"a\\tb\"\n");
        }
    }
    let snap = load_str(Path::new("big.toml"), &text).expect_err("N19999 is written twice");
    let line = 4 + 2 * 20_001 + 1;
    assert_eq!(
        snap.to_string(),
        format!(
            "big.toml:{line}:10: name N19999 is written twice (also at line {})\n",
            4 + 2 * 19_999 + 1
        )
    );
    let text = text.replace("[records.\"N19999\"]", "[records.\"t\"]");
    let snap = load_str(Path::new("big.toml"), &text).unwrap_or_else(|d| panic!("{d}"));
    let z = snap.zone(ZoneId(0));
    assert_eq!(z.name_count, TABLES + 1);
    let n = node(z, "n29999.big.test.");
    assert_eq!(
        n.rrset(rtype::A).expect("A").rdatas().next(),
        Some(&[10, 0, 117, 47][..])
    );
    let t = node(z, "t.big.test.").rrset(rtype::TXT).expect("TXT");
    assert_eq!(t.rdatas().next(), Some(&b"\x03a\tb"[..]));
    let bad = text.replace("10.0.100.250", "10.0.100.x");
    let err = load_str(Path::new("big.toml"), &bad)
        .expect_err("a bad address")
        .to_string();
    // The head, two lines a table before it, the table "t", then its A line.
    let at = 4 + 2 * (100 * 256 + 250) + 2 + 2;
    assert_eq!(
        err,
        format!("big.toml:{at}:6: A record of n25850: bad IPv4 address \"10.0.100.x\"\n")
    );
}
