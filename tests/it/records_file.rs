//! `records_file` (SPEC §12): a zone's static records from an RFC 1035 master file, with
//! `$ORIGIN`, `$TTL`, `$INCLUDE` and the file's own SOA, compiled into the same names as
//! `[records]` and answered over real UDP. Its errors are golden fixtures under
//! `tests/fixtures/zones/bad/records-file*`.

use std::path::Path;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use meridian::config::compile::summary;
use meridian::config::{LoadOptions, load_dir};
use meridian::model::{Node, Snapshot, Zone, ZoneId, rtype, wire};

use crate::support::{Query, Server, answers, settings, zone_dir};

const DIR: &str = "tests/fixtures/zones/records-file";

fn load(dir: &Path) -> Snapshot {
    load_dir(&LoadOptions {
        zones_dir: dir,
        previous: None,
    })
    .unwrap_or_else(|d| panic!("{dir:?} must load:\n{d}"))
}

fn node<'z>(z: &'z Zone, n: &str) -> Node<'z> {
    let w = wire::from_text(n).expect("valid name");
    z.nodes.get(&w).unwrap_or_else(|| panic!("{n} is a name"))
}

/// (TTL, RDATA) of one RRset.
fn rrset(z: &Zone, n: &str, t: u16) -> (u32, Vec<Vec<u8>>) {
    let set = node(z, n)
        .rrset(t)
        .unwrap_or_else(|| panic!("{n} has {}", rtype::name(t)));
    (set.ttl, set.rdatas().map(|r| r.to_vec()).collect())
}

fn name(s: &str) -> Vec<u8> {
    wire::from_text(s).expect("valid name").to_vec()
}

#[test]
fn a_master_file_loads_with_origin_ttl_include_and_its_own_soa() {
    let snap = load(Path::new(DIR));
    assert_eq!(summary(&snap), "ok: 1 zones, 13 names, 1 pools, 0 checks");
    let z = snap.zone(ZoneId(0));
    // The zone file has no [soa]: the master file's SOA is the zone's.
    assert_eq!(z.serial, 2026120101);
    assert_eq!(z.soa_ttl, 3600);
    assert_eq!(&*z.soa.mname, &name("ns1.bulk.test.")[..]);
    assert_eq!(&*z.soa.rname, &name("hostmaster.example.test.")[..]);
    assert_eq!(
        (z.soa.refresh, z.soa.retry, z.soa.expire, z.soa.minimum),
        (7200, 900, 1_209_600, 60)
    );
    assert_eq!(
        rrset(z, "bulk.test.", rtype::NS),
        (120, vec![name("ns1.bulk.test.")])
    );
    // Blank owners continue the last one; `A` is `a` again and its duplicate is dropped;
    // the zone's `ttl` is the default before any $TTL.
    assert_eq!(
        rrset(z, "a.bulk.test.", rtype::A),
        (120, vec![vec![192, 0, 2, 1], vec![192, 0, 2, 2]])
    );
    assert_eq!(rrset(z, "a.bulk.test.", rtype::AAAA).1[0].len(), 16);
    let mut mx = vec![0, 10];
    mx.extend(name("mx1.example.net."));
    assert_eq!(rrset(z, "mail.bulk.test.", rtype::MX).1, [mx]);
    assert_eq!(
        rrset(z, "txt.bulk.test.", rtype::TXT).1,
        [b"\x0bhello world\x0dsecond string".to_vec()]
    );
    assert_eq!(
        rrset(z, "alias.bulk.test.", rtype::CNAME).1,
        [name("a.bulk.test.")]
    );
    assert_eq!(rrset(z, "short.bulk.test.", rtype::A).0, 30);
    assert_eq!(rrset(z, "long.bulk.test.", rtype::A).0, 86400);
    // $INCLUDE with an origin; the parent's origin and $TTL are back after it.
    assert_eq!(
        rrset(z, "acme.customers.bulk.test.", rtype::A).1,
        [vec![203, 0, 113, 1]]
    );
    assert_eq!(
        rrset(z, "globex.customers.bulk.test.", rtype::CNAME).1,
        [name("acme.customers.bulk.test.")]
    );
    assert_eq!(
        rrset(z, "after.bulk.test.", rtype::A),
        (30, vec![vec![192, 0, 2, 5]])
    );
    assert!(
        node(z, "customers.bulk.test.").is_empty(),
        "an empty non-terminal"
    );
    // TOML names sit beside the file's.
    assert_eq!(
        rrset(z, "extra.bulk.test.", rtype::A).1,
        [vec![192, 0, 2, 200]]
    );
    assert!(node(z, "www.bulk.test.").policy.is_some());
}

#[tokio::test]
async fn names_of_the_master_file_are_answered() {
    let s = Server::start(settings(Path::new(DIR), None)).await;
    let m = s.ask(&Query::new("GLOBEX.customers.bulk.test", 1)).await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(answers(&m), ["203.0.113.1", "acme.customers.bulk.test."]);
    let m = s.ask(&Query::new("a.bulk.test", 1)).await;
    assert_eq!(answers(&m), ["192.0.2.1", "192.0.2.2"]);
    assert!(m.answers.iter().all(|r| r.ttl == 120));
    let m = s.ask(&Query::new("nope.bulk.test", 1)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // RFC 2308: the negative TTL is min(SOA TTL, MINIMUM) of the file's SOA.
    assert_eq!(m.authorities[0].ttl, 60);
    s.stop().await;
}

#[test]
fn a_zone_file_with_windows_line_ends_and_no_final_newline_loads() {
    let dir = zone_dir(
        "crlf",
        &[(
            "z.toml",
            "origin = \"crlf.test.\"\nrecords_file = \"z.zone\"\n[soa]\nmname = \"ns1\"\nrname = \"h@crlf.test\"\n",
        )],
    );
    std::fs::write(dir.join("z.zone"), "a IN A 192.0.2.1\r\nb IN A 192.0.2.2").expect("write");
    let snap = load(&dir);
    let z = snap.zone(ZoneId(0));
    assert_eq!(rrset(z, "b.crlf.test.", rtype::A).1, [vec![192, 0, 2, 2]]);
}

#[test]
fn reloads_asked_for_during_a_run_share_the_next_one() {
    // Big enough that a run lasts while the other callers arrive.
    let mut text = String::from("$ORIGIN many.test.\n");
    for i in 0..5_000 {
        text.push_str(&format!("n{i} IN A 192.0.2.{}\n", i % 250));
    }
    let dir = zone_dir(
        "coalesce",
        &[(
            "z.toml",
            "origin = \"many.test.\"\nrecords_file = \"z.zone\"\n[soa]\nmname = \"ns1\"\nrname = \"h@many.test\"\n",
        )],
    );
    std::fs::write(dir.join("z.zone"), text).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let s = rt.block_on(Server::start(settings(&dir, None)));
    let control = s.running.control.clone();
    const CALLERS: usize = 6;
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CALLERS)
            .map(|_| scope.spawn(|| control.reload()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // The first caller's run, then at most one (rarely two, on a slow machine) for the rest.
    let runs = control.reload_runs();
    assert!(
        (1..=3).contains(&runs),
        "{CALLERS} callers took {runs} runs"
    );
    rt.block_on(s.stop());
}
