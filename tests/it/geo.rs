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
    assert_eq!(loc.asn, Some(3320));
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
    assert_eq!(
        db.locate(ip("203.0.113.7")).location.expect("found").asn,
        Some(64_500)
    );
    assert_eq!(
        db.locate(ip("198.51.100.7")).location.expect("found").asn,
        None
    );
    assert!(render_geoip(&db, ip("203.0.113.7")).contains("asn: AS64500"));
    assert!(db.metadata_summary().contains("; asn: GeoLite2-ASN"));
}
