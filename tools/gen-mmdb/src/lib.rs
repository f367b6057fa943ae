//! Builds Meridian's test GeoIP database (`geoip/test-city.mmdb`) from a CSV table.
//!
//! The output uses a subset of MaxMind's GeoIP2-City record layout, so every reader that
//! understands GeoIP2 City understands it too:
//!
//! ```text
//! { continent: { code }, country: { iso_code }, registered_country: { iso_code },
//!   location: { latitude (double), longitude (double), accuracy_radius (uint16) },
//!   subdivisions: [ { iso_code } ] }
//! ```
//!
//! The build epoch is fixed, so the same CSV always gives the same bytes; a test in the main
//! crate regenerates the shipped database and compares it byte for byte.
//!
//! CSV columns (a header line, `#` comments and blank lines are skipped):
//! `network,continent,country,subdivision,latitude,longitude,accuracy_radius,label`.
//! Every column but `network` may be empty, which leaves that part out of the record
//! (country-only, continent-only and empty records exercise the reader's fallbacks).
//! `label` is documentation only and is not written.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
/// Re-exported so tests can build in-memory databases of other layouts without a second
/// dependency declaration.
pub use mmdb_writer;
use mmdb_writer::{IpVersion, Ipv4Aliasing, Value, Writer};

/// `database_type` of the generated file. Not `GeoIP2-City`: it must never pass for MaxMind data.
pub const DATABASE_TYPE: &str = "Meridian-Test-City";
/// 2026-01-01T00:00:00Z. Fixed so the output is reproducible byte for byte.
pub const BUILD_EPOCH: u64 = 1_767_225_600;
/// English description written to the metadata.
pub const DESCRIPTION: &str =
    "Meridian test GeoIP database: documentation and loopback ranges only, not real geodata";

/// The CSV header line `build` expects (it is also accepted as the first data line's skip).
pub const HEADER: &str =
    "network,continent,country,subdivision,latitude,longitude,accuracy_radius,label";

/// One parsed CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub network: IpNet,
    pub continent: Option<String>,
    pub country: Option<String>,
    pub subdivision: Option<String>,
    pub coords: Option<(f64, f64)>,
    pub accuracy_radius: Option<u16>,
}

/// Parse `csv` and build the database. Errors name the line: `line 7: bad network "..."`.
pub fn build(csv: &str) -> Result<Vec<u8>, String> {
    let rows = parse(csv)?;
    let mut writer = new_writer();
    for row in &rows {
        writer
            .insert_value(row.network, record(row))
            .map_err(|e| format!("{}: {e}", row.network))?;
    }
    writer.to_bytes().map_err(|e| e.to_string())
}

/// A writer with the fixed options of the shipped database: IPv6 tree with the IPv4 aliases
/// (`::ffff:0:0/96`, `2002::/16`, Teredo), English description and fixed build epoch.
pub fn new_writer() -> Writer {
    Writer::builder(DATABASE_TYPE)
        .languages(["en"])
        .description(&[("en", DESCRIPTION)])
        .ip_version(IpVersion::V6)
        .ipv4_aliasing(Ipv4Aliasing::Enabled)
        .build_epoch(UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH))
        .build()
}

/// Read every data row; collects nothing silently: the first bad line is an error.
pub fn parse(csv: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("network,") {
            continue;
        }
        rows.push(parse_row(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(rows)
}

fn parse_row(line: &str) -> Result<Row, String> {
    let cols: Vec<&str> = line.split(',').map(str::trim).collect();
    if cols.len() < 7 {
        return Err(format!(
            "expected at least 7 columns ({HEADER}), got {}",
            cols.len()
        ));
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_ascii_uppercase());
    let network: IpNet = cols[0]
        .parse()
        .map_err(|_| format!("bad network {:?}", cols[0]))?;
    let coords = match (cols[4], cols[5]) {
        ("", "") => None,
        (lat, lon) => Some((parse_f64(lat, -90.0, 90.0)?, parse_f64(lon, -180.0, 180.0)?)),
    };
    let accuracy_radius = match cols[6] {
        "" => None,
        s => Some(
            s.parse()
                .map_err(|_| format!("bad accuracy_radius {s:?}"))?,
        ),
    };
    let row = Row {
        network: network.trunc(),
        continent: opt(cols[1]),
        country: opt(cols[2]),
        subdivision: opt(cols[3]),
        coords,
        accuracy_radius,
    };
    check_codes(&row)?;
    Ok(row)
}

fn parse_f64(s: &str, min: f64, max: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("bad coordinate {s:?} (expected {min}..={max})")),
    }
}

fn check_codes(row: &Row) -> Result<(), String> {
    let alpha = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    if let Some(c) = &row.continent
        && !["AF", "AN", "AS", "EU", "NA", "OC", "SA"].contains(&c.as_str())
    {
        return Err(format!("bad continent {c:?}"));
    }
    if let Some(c) = &row.country
        && !alpha(c, 2..=2)
    {
        return Err(format!("bad country {c:?}"));
    }
    if let Some(s) = &row.subdivision
        && (!alpha(s, 1..=3) || row.country.is_none())
    {
        return Err(format!(
            "bad subdivision {s:?} (1-3 characters, needs a country)"
        ));
    }
    Ok(())
}

/// The GeoIP2-City-shaped record of one row.
pub fn record(row: &Row) -> Value {
    let mut map = BTreeMap::new();
    let code = |key: &str, v: &str| Value::map([(key, Value::from(v))]);
    if let Some(c) = &row.continent {
        map.insert("continent".to_owned(), code("code", c));
    }
    if let Some(c) = &row.country {
        map.insert("country".to_owned(), code("iso_code", c));
        map.insert("registered_country".to_owned(), code("iso_code", c));
    }
    if let Some(s) = &row.subdivision {
        map.insert(
            "subdivisions".to_owned(),
            Value::array([code("iso_code", s)]),
        );
    }
    if let Some((lat, lon)) = row.coords {
        let mut loc = BTreeMap::new();
        loc.insert("latitude".to_owned(), Value::Double(lat));
        loc.insert("longitude".to_owned(), Value::Double(lon));
        if let Some(r) = row.accuracy_radius {
            loc.insert("accuracy_radius".to_owned(), Value::U16(r));
        }
        map.insert("location".to_owned(), Value::Map(loc));
    }
    Value::Map(map)
}

/// The fixed build time as a `SystemTime`.
pub fn build_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "network,continent,country,subdivision,latitude,longitude,accuracy_radius,label\n\
        # comment\n\
        192.0.2.0/25,EU,GB,ENG,51.5,-0.12,20,London\n\
        192.0.2.128/26,EU,DE,,,,,country only\n\
        192.0.2.192/26,,,,,,,empty\n";

    #[test]
    fn reproducible() {
        let a = build(CSV).expect("valid csv");
        let b = build(CSV).expect("valid csv");
        assert_eq!(a, b);
        assert!(a.len() < 4096, "{} bytes", a.len());
    }

    #[test]
    fn rows_parse_with_empty_fields() {
        let rows = parse(CSV).expect("valid csv");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].subdivision.as_deref(), Some("ENG"));
        assert_eq!(rows[1].coords, None);
        assert_eq!(rows[2].country, None);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let err = build("192.0.2.0/24,XX,GB,,,,,\n").expect_err("bad continent");
        assert!(err.starts_with("line 1: bad continent"), "{err}");
        let err = build("\n192.0.2.0/33,EU,GB,,,,,\n").expect_err("bad network");
        assert!(err.starts_with("line 2: bad network"), "{err}");
    }
}
