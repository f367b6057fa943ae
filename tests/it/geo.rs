//! geo: the shipped test database, MaxMind's test databases and the flat layouts of other
//! vendors (built in memory), all through `GeoDb`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gen_mmdb::mmdb_writer::{IpVersion, Value, Writer};
use meridian::geo::{
    CoordsSource, GeoDb, Locate, Location, code_str, render_geoip, render_geoip_json,
};

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn shipped() -> GeoDb {
    GeoDb::open(&path("geoip/test-city.mmdb"), None).expect("shipped db opens")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn code(c: Option<[u8; 2]>) -> Option<String> {
    c.as_ref().map(|c| code_str(c).to_owned())
}

/// (country, subdivision, continent, prefix_len) of a located address.
fn summary(loc: &Location) -> (Option<String>, Option<String>, Option<String>, u8) {
    (
        code(loc.country),
        loc.subdivision.map(|s| s.as_str().to_owned()),
        code(loc.continent),
        loc.prefix_len,
    )
}

/// One row of the shipped-database table: address, country, subdivision, continent, prefix.
type Expect = (
    &'static str,
    Option<String>,
    Option<String>,
    Option<String>,
    u8,
);

fn near(loc: &Location, lat: f64, lon: f64) -> bool {
    loc.coords
        .is_some_and(|c| (c.lat - lat).abs() < 0.01 && (c.lon - lon).abs() < 0.01)
}

#[test]
fn shipped_db_is_reproducible_from_csv() {
    let csv = std::fs::read_to_string(path("geoip/test-city.csv")).expect("csv");
    let built = gen_mmdb::build(&csv).expect("csv compiles");
    let shipped = std::fs::read(path("geoip/test-city.mmdb")).expect("mmdb");
    assert!(
        built == shipped,
        "geoip/test-city.mmdb is stale: run `cargo run -p gen-mmdb -- geoip/test-city.csv geoip/test-city.mmdb`"
    );
}

#[test]
fn shipped_db_table() {
    let db = shipped();
    let s = |c: &str| Some(c.to_owned());
    #[rustfmt::skip]
    let table: &[Expect] = &[
        // address          country  subdivision continent prefix
        ("203.0.113.7",     s("GB"), s("ENG"), s("EU"), 25),
        ("203.0.113.200",   s("IN"), s("MH"),  s("AS"), 25),
        ("198.51.100.7",    s("US"), s("CA"),  s("NA"), 25),
        ("198.51.100.200",  s("US"), s("WA"),  s("NA"), 25),
        ("192.0.2.1",       s("JP"), s("13"),  s("AS"), 26),
        ("192.0.2.65",      s("BR"), s("SP"),  s("SA"), 26),
        ("192.0.2.129",     s("AU"), s("NSW"), s("OC"), 26),
        ("192.0.2.193",     s("ZA"), s("GP"),  s("AF"), 27),
        ("192.0.2.225",     s("AQ"), None,     s("AN"), 28),
        ("192.0.2.241",     s("DE"), None,     s("EU"), 29),
        ("192.0.2.249",     None,    None,     s("EU"), 29),
        ("127.0.0.1",       s("US"), s("VA"),  s("NA"), 8),
        ("::1",             s("US"), s("VA"),  s("NA"), 128),
        ("2001:db8::1",     s("DE"), s("HE"),  s("EU"), 48),
        ("2001:db8:1::1",   s("US"), s("VA"),  s("NA"), 48),
        ("2001:db8:2::1",   s("SG"), None,     s("AS"), 48),
        ("2001:db8:fffe::1", s("FR"), None,    s("EU"), 48),
        ("2001:db8:ffff::1", None,   None,     None,    48),
    ];
    for (addr, country, sub, cont, prefix) in table {
        let loc = db
            .locate(ip(addr))
            .location
            .unwrap_or_else(|| panic!("{addr} not found"));
        assert_eq!(
            summary(&loc),
            (country.clone(), sub.clone(), cont.clone(), *prefix),
            "{addr}"
        );
    }
}

#[test]
fn team_lead_expectations() {
    let db = shipped();
    let gb = db.locate(ip("203.0.113.7")).location.expect("found");
    assert_eq!(
        (code(gb.country), code(gb.continent), gb.prefix_len),
        (Some("GB".into()), Some("EU".into()), 25)
    );
    assert!(near(&gb, 51.5074, -0.1278), "{gb:?}");
    let ca = db.locate(ip("198.51.100.7")).location.expect("found");
    assert_eq!(
        ca.subdivision.map(|s| s.as_str().to_owned()).as_deref(),
        Some("CA")
    );
    let india = db.locate(ip("203.0.113.200")).location.expect("found");
    assert_eq!(
        (code(india.country), code(india.continent)),
        (Some("IN".into()), Some("AS".into()))
    );
    let lo = db.locate(ip("127.0.0.1")).location.expect("found");
    assert_eq!(
        (code(lo.country), code(lo.continent)),
        (Some("US".into()), Some("NA".into()))
    );
    assert!(near(&lo, 39.04, -77.49));
}

#[test]
fn mapped_and_aliased_addresses_are_ipv4() {
    let db = shipped();
    let plain = db.locate(ip("203.0.113.7")).location.expect("found");
    assert_eq!(db.locate(ip("::ffff:203.0.113.7")).location, Some(plain));
    // 6to4 goes through the database's own aliases; its prefix is in IPv6 bits.
    let six_to_four = db
        .locate(ip("2002:cb00:7107::1"))
        .location
        .expect("6to4 alias");
    assert_eq!(six_to_four.country, plain.country);
    let report = db.describe(ip("::ffff:203.0.113.7")).expect("found");
    assert_eq!(report.ip, ip("203.0.113.7"));
    assert_eq!(report.network.to_string(), "203.0.113.0/25");
}

#[test]
fn unknown_addresses_are_none() {
    let db = shipped();
    for addr in [
        "8.8.8.8",
        "10.1.2.3",
        "2001:4860::1",
        "2001:db9::1",
        "0.0.0.0",
    ] {
        assert_eq!(db.locate(ip(addr)).location, None, "{addr}");
        assert_eq!(db.describe(ip(addr)), None, "{addr}");
    }
}

#[test]
fn fallback_coordinates() {
    let db = shipped();
    let de = db.describe(ip("192.0.2.241")).expect("country-only");
    assert_eq!(de.coords_source, Some(CoordsSource::CountryTable));
    assert!(near(&de.location, 52.5244, 13.4105), "Berlin: {de:?}");
    let eu = db.describe(ip("192.0.2.249")).expect("continent-only");
    assert_eq!(eu.coords_source, Some(CoordsSource::ContinentTable));
    assert!(eu.location.coords.is_some());
    let empty = db.describe(ip("2001:db8:ffff::1")).expect("empty record");
    assert_eq!((empty.location.coords, empty.coords_source), (None, None));
    let record = db.describe(ip("203.0.113.7")).expect("found");
    assert_eq!(record.coords_source, Some(CoordsSource::Record));
}

#[test]
fn render_text_and_json() {
    let db = shipped();
    let text = render_geoip(&db, ip("::ffff:198.51.100.7"));
    for line in [
        "address: 198.51.100.7",
        "network: 198.51.100.0/25",
        "country: US",
        "subdivision: US-CA",
        "continent: NA",
        "coordinates: 37.7749,-122.4194 (record)",
        "asn: -",
        "database: Meridian-Test-City, built 2026-01-01T00:00:00Z",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let text = render_geoip(&db, ip("192.0.2.241"));
    assert!(
        text.contains("(country capital, countries table)"),
        "{text}"
    );
    let text = render_geoip(&db, ip("8.8.8.8"));
    assert!(text.contains("found: no"), "{text}");
    let json = render_geoip_json(&db, ip("203.0.113.7"));
    assert_eq!(json["country"], "GB");
    assert_eq!(json["prefix_len"], 25);
    assert_eq!(json["network"], "203.0.113.0/25");
    assert_eq!(render_geoip_json(&db, ip("8.8.8.8"))["found"], false);
    let summary = db.metadata_summary();
    assert!(
        summary
            .starts_with("Meridian-Test-City built 2026-01-01T00:00:00Z (epoch 1767225600), IPv6"),
        "{summary}"
    );
}

#[test]
fn open_errors_name_the_file() {
    let err = GeoDb::open(&path("geoip/nope.mmdb"), None)
        .err()
        .expect("missing file");
    assert!(err.to_string().contains("geoip/nope.mmdb"), "{err}");
    let err = GeoDb::open(&path("geoip/test-city.csv"), None)
        .err()
        .expect("not an mmdb");
    assert!(err.to_string().contains("test-city.csv"), "{err}");
    assert!(GeoDb::from_bytes(b"garbage".to_vec(), None).is_err());
}

// MaxMind's official fake databases (geoip/testdata, Apache-2.0 OR MIT).

fn maxmind(name: &str) -> GeoDb {
    GeoDb::open(&path(&format!("geoip/testdata/{name}")), None).expect("maxmind test db")
}

#[test]
fn maxmind_city_test_db() {
    let db = maxmind("GeoIP2-City-Test.mmdb");
    let gb = db.locate(ip("81.2.69.142")).location.expect("81.2.69.142");
    assert_eq!(
        summary(&gb),
        (Some("GB".into()), Some("ENG".into()), Some("EU".into()), 31)
    );
    assert!(near(&gb, 51.5142, -0.0931), "{gb:?}");
    assert_eq!(db.locate(ip("::ffff:81.2.69.142")).location, Some(gb));
    let wa = db
        .locate(ip("216.160.83.56"))
        .location
        .expect("216.160.83.56");
    assert_eq!(
        summary(&wa),
        (Some("US".into()), Some("WA".into()), Some("NA".into()), 29)
    );
    assert!(near(&wa, 47.2513, -122.3149));
    let eu = db.describe(ip("2.3.3.1")).expect("continent-only record");
    assert_eq!(summary(&eu.location), (None, None, Some("EU".into()), 24));
    assert_eq!(eu.coords_source, Some(CoordsSource::ContinentTable));
    let anycast = db
        .locate(ip("214.1.1.1"))
        .location
        .expect("traits-only record");
    assert_eq!(summary(&anycast), (None, None, None, 24));
    assert_eq!(anycast.coords, None);
    let v6 = db
        .locate(ip("2a02:d500::1"))
        .location
        .expect("location without country");
    assert_eq!((v6.country, code(v6.continent)), (None, Some("EU".into())));
    assert!(near(&v6, 48.69096, 9.14062));
    assert_eq!(db.locate(ip("8.8.8.8")).location, None);
    assert!(
        db.metadata_summary().starts_with("GeoIP2-City "),
        "{}",
        db.metadata_summary()
    );
}

#[test]
fn maxmind_country_test_db_fills_coordinates() {
    let db = maxmind("GeoLite2-Country-Test.mmdb");
    let report = db.describe(ip("81.2.69.142")).expect("found");
    assert_eq!(code(report.location.country).as_deref(), Some("GB"));
    assert_eq!(code(report.location.continent).as_deref(), Some("EU"));
    assert_eq!(report.coords_source, Some(CoordsSource::CountryTable));
    assert!(
        near(&report.location, 51.5085, -0.1257),
        "London: {report:?}"
    );
    let se = db.locate(ip("89.160.20.130")).location.expect("found");
    assert_eq!(code(se.country).as_deref(), Some("SE"));
    assert!(se.coords.is_some());
}

// Flat layouts of other vendors, built in memory.

fn flat_db(version: IpVersion, records: &[(&str, Value)]) -> GeoDb {
    let mut w = Writer::builder("Flat-Test").ip_version(version).build();
    for (net, value) in records {
        w.insert_value(net.parse::<ipnet::IpNet>().expect("net"), value.clone())
            .expect("insert");
    }
    GeoDb::from_bytes(w.to_bytes().expect("bytes"), None).expect("reader")
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

#[test]
fn ip_location_db_flat_f32_ipv4_only() {
    let db = flat_db(
        IpVersion::V4,
        &[(
            "192.0.2.0/24",
            map(&[
                ("country_code", Value::from("JP")),
                ("city", Value::from("Tokyo")),
                ("latitude", Value::Float(35.6895)),
                ("longitude", Value::Float(139.6917)),
            ]),
        )],
    );
    let loc = db.locate(ip("192.0.2.9")).location.expect("found");
    // No continent in the record: from the countries table.
    assert_eq!(
        summary(&loc),
        (Some("JP".into()), None, Some("AS".into()), 24)
    );
    assert_eq!(
        loc.coords.map(|c| (c.lat, c.lon)),
        Some((35.6895, 139.6917))
    );
    // An IPv6 lookup in an IPv4-only database is no match, not an error.
    assert_eq!(db.locate(ip("2001:db8::1")).location, None);
    assert_eq!(db.locate(ip("::ffff:192.0.2.9")).location, Some(loc));
}

#[test]
fn ipinfo_lite_flat() {
    let db = flat_db(
        IpVersion::V6,
        &[(
            "198.51.100.0/24",
            map(&[
                ("asn", Value::from("AS15169")),
                ("as_name", Value::from("Google LLC")),
                ("country", Value::from("United States")),
                ("country_code", Value::from("US")),
                ("continent", Value::from("North America")),
                ("continent_code", Value::from("NA")),
            ]),
        )],
    );
    let report = db.describe(ip("198.51.100.1")).expect("found");
    let loc = report.location;
    assert_eq!(
        summary(&loc),
        (Some("US".into()), None, Some("NA".into()), 24)
    );
    assert_eq!(loc.asn, Some(15169));
    assert!(!report.continent_from_table);
    assert_eq!(report.coords_source, Some(CoordsSource::CountryTable));
}

#[test]
fn legacy_ipinfo_codes_as_strings() {
    let db = flat_db(
        IpVersion::V6,
        &[(
            "2001:db8::/32",
            map(&[
                ("country", Value::from("de")),
                ("continent", Value::from("EU")),
                ("asn", Value::U32(3320)),
            ]),
        )],
    );
    let loc = db.locate(ip("2001:db8::5")).location.expect("found");
    assert_eq!(
        summary(&loc),
        (Some("DE".into()), None, Some("EU".into()), 32)
    );
    // The ASN is in the record (`meridian geoip`, explain), not in the compiled trie.
    let record = db.locate_record(ip("2001:db8::5")).location.expect("found");
    assert_eq!(record.asn, Some(3320));
}

#[test]
fn asn_database_joins_the_city_record() {
    let city = std::fs::read(path("geoip/test-city.mmdb")).expect("mmdb");
    let mut w = Writer::builder("GeoLite2-ASN").build();
    let rec = map(&[
        ("autonomous_system_number", Value::U32(64_500)),
        ("autonomous_system_organization", Value::from("Example")),
    ]);
    w.insert_value("203.0.113.0/24".parse::<ipnet::IpNet>().expect("net"), rec)
        .expect("insert");
    let db = GeoDb::from_bytes(city, Some(w.to_bytes().expect("bytes"))).expect("reader");
    // The ASN is part of the database's own record; the compiled trie leaves it out, as no
    // rule reads it.
    let asn = |a: &str| db.locate_record(ip(a)).location.expect("found").asn;
    assert_eq!(asn("203.0.113.7"), Some(64_500));
    assert_eq!(asn("198.51.100.7"), None);
    assert!(render_geoip(&db, ip("203.0.113.7")).contains("asn: AS64500"));
    assert!(db.metadata_summary().contains("; asn: GeoLite2-ASN"));
}

/// The compiled trie (`Locate`) against the reader's own record (`locate_record`), on every
/// shipped database: the same location at random addresses and at random addresses inside
/// the prefix the trie returned (an exact ECS scope input, issue 9), a prefix never narrower
/// than the reader's network, and IPv4 answered alike through `::ffff:0:0/96`, MaxMind's
/// `::/96` subtree and the 6to4 alias.
mod trie_agrees_with_the_reader {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::OnceLock;

    use meridian::geo::{GeoDb, Locate, Located};
    use proptest::prelude::*;

    use super::path;

    const DATABASES: [&str; 3] = [
        "geoip/test-city.mmdb",
        "geoip/testdata/GeoIP2-City-Test.mmdb",
        "geoip/testdata/GeoLite2-Country-Test.mmdb",
    ];

    /// Where the databases have networks, so draws land on and beside them.
    const NEAR: [&str; 12] = [
        "81.2.69.0/24",
        "89.160.20.0/24",
        "202.196.224.0/20",
        "216.160.83.0/24",
        "214.0.0.0/15",
        "203.0.113.0/24",
        "192.0.2.0/24",
        "2001:db8::/32",
        "2a02:cf40::/29",
        "2001:218::/32",
        "2a02:d500::/24",
        "::/0",
    ];

    fn dbs() -> &'static [GeoDb] {
        static DBS: OnceLock<Vec<GeoDb>> = OnceLock::new();
        DBS.get_or_init(|| {
            DATABASES
                .iter()
                .map(|p| GeoDb::open(&path(p), None).expect("shipped database opens"))
                .collect()
        })
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(a) => (u128::from(a.to_bits()), 32),
            IpAddr::V6(a) => (a.to_bits(), 128),
        }
    }

    fn addr(bits: u128, width: u8) -> IpAddr {
        match width {
            32 => IpAddr::V4(Ipv4Addr::from_bits(bits as u32)),
            _ => IpAddr::V6(Ipv6Addr::from_bits(bits)),
        }
    }

    /// `ip` with the bits below `len` taken from `random`.
    fn inside(ip: IpAddr, len: u8, random: u128) -> IpAddr {
        let (b, width) = bits(ip);
        let all = u128::MAX >> (128 - u32::from(width));
        let host = all.checked_shr(u32::from(len)).unwrap_or(0);
        addr(b & !host | random & host, width)
    }

    /// The location without what the trie leaves out (its prefix is checked apart).
    fn class(l: &Located) -> Option<meridian::geo::Location> {
        l.location.map(|mut l| {
            l.prefix_len = 0;
            l.asn = None;
            l
        })
    }

    fn client() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from_bits(b))),
            any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
            (0..NEAR.len(), any::<u128>()).prop_map(|(i, r)| {
                let net: ipnet::IpNet = NEAR[i].parse().expect("network");
                inside(net.network(), net.prefix_len(), r)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn at_random_addresses_and_inside_the_returned_prefix(
            db in 0..3usize,
            ip in client(),
            draws in proptest::collection::vec(any::<u128>(), 8),
        ) {
            let db = &dbs()[db];
            let got = db.locate(ip);
            let raw = db.locate_record(ip);
            prop_assert_eq!(class(&got), class(&raw), "{}", ip);
            prop_assert!(got.prefix_len <= raw.prefix_len, "{}: /{} narrower than /{}", ip, got.prefix_len, raw.prefix_len);
            if let Some(l) = got.location {
                prop_assert_eq!(l.prefix_len, got.prefix_len);
            }
            let ip = ip.to_canonical();
            let first = inside(ip, got.prefix_len, 0);
            let last = inside(ip, got.prefix_len, u128::MAX);
            for other in [first, last].into_iter().chain(draws.iter().map(|&r| inside(ip, got.prefix_len, r))) {
                let there = db.locate_record(other);
                prop_assert_eq!(class(&got), class(&there), "{} /{}: {} differs", ip, got.prefix_len, other);
                prop_assert_eq!(db.locate(other), got, "{}: the trie differs at {}", ip, other);
            }
        }

        #[test]
        fn ipv4_through_mapped_compatible_and_6to4_addresses(
            db in 0..3usize,
            v4 in prop_oneof![
                any::<u32>(),
                (0..7usize, any::<u32>()).prop_map(|(i, r)| {
                    let net: ipnet::Ipv4Net = NEAR[i].parse().expect("v4");
                    let host = u32::MAX.checked_shr(u32::from(net.prefix_len())).unwrap_or(0);
                    net.network().to_bits() & !host | r & host
                }),
            ],
            low in any::<u64>(),
        ) {
            let db = &dbs()[db];
            let a = Ipv4Addr::from_bits(v4);
            let plain = db.locate(IpAddr::V4(a));
            // ::ffff:a.b.c.d is the IPv4 address itself, prefix in IPv4 bits.
            prop_assert_eq!(db.locate(IpAddr::V6(a.to_ipv6_mapped())), plain);
            // ::a.b.c.d walks MaxMind's IPv4 subtree as IPv6: same place, prefix + 96.
            let compat = db.locate(IpAddr::V6(Ipv6Addr::from_bits(u128::from(v4))));
            prop_assert_eq!(class(&compat), class(&plain));
            if plain.prefix_len > 0 {
                prop_assert_eq!(compat.prefix_len, plain.prefix_len + 96);
            } else {
                prop_assert!(compat.prefix_len <= 96);
            }
            prop_assert_eq!(class(&compat), class(&db.locate_record(IpAddr::V6(Ipv6Addr::from_bits(u128::from(v4))))));
            // 2002:a.b.c.d::/48 (6to4) answers like the reader, which follows the
            // database's own alias (when it has one).
            let six = IpAddr::V6(Ipv6Addr::from_bits(0x2002u128 << 112 | u128::from(v4) << 80 | u128::from(low)));
            prop_assert_eq!(class(&db.locate(six)), class(&db.locate_record(six)), "{}", six);
        }
    }

    /// The aliases of the shipped database point at IPv4: a known GB network answers GB
    /// through all of them, from the trie.
    #[test]
    fn aliases_of_a_known_network() {
        let db = &dbs()[0];
        let want = db.locate("203.0.113.7".parse().expect("ip"));
        assert!(want.location.is_some());
        for a in ["::ffff:203.0.113.7", "::203.0.113.7", "2002:cb00:7107::1"] {
            let got = db.locate(a.parse().expect("ip"));
            assert_eq!(class(&got), class(&want), "{a}");
        }
    }
}
