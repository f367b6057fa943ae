//! Text and JSON views of a lookup, for `meridian geoip IP` (the CLI prints them as is).

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{CoordsSource, GeoDb, GeoReport, code_str};

/// The multi-line `key: value` text `meridian geoip IP` prints, for example:
///
/// ```text
/// address: 203.0.113.7
/// network: 203.0.113.0/25
/// country: GB
/// subdivision: GB-ENG
/// continent: EU
/// coordinates: 51.5074,-0.1278 (record)
/// asn: -
/// database: Meridian-Test-City, built 2026-01-01T00:00:00Z
/// ```
///
/// An address without a record prints `address`, `found: no` and `database`.
pub fn render_geoip(db: &GeoDb, ip: IpAddr) -> String {
    let mut out = String::new();
    match db.describe(ip) {
        None => {
            let _ = writeln!(out, "address: {}", ip.to_canonical());
            let _ = writeln!(
                out,
                "found: no (the database has no record for this address)"
            );
        }
        Some(r) => write_report(&mut out, &r),
    }
    let _ = writeln!(out, "database: {}", db.database_line());
    out
}

/// The same facts as [`render_geoip`] as JSON; absent values are `null`.
pub fn render_geoip_json(db: &GeoDb, ip: IpAddr) -> Value {
    let database = db.database_line();
    let Some(r) = db.describe(ip) else {
        return json!({ "address": ip.to_canonical().to_string(), "found": false, "database": database });
    };
    let loc = &r.location;
    json!({
        "address": r.ip.to_string(),
        "found": true,
        "network": r.network.to_string(),
        "prefix_len": loc.prefix_len,
        "country": loc.country.as_ref().map(code_str),
        "subdivision": subdivision(&r),
        "continent": loc.continent.as_ref().map(code_str),
        "continent_source": loc.continent.map(|_| if r.continent_from_table { "countries table" } else { "record" }),
        "latitude": loc.coords.map(|c| c.lat),
        "longitude": loc.coords.map(|c| c.lon),
        "coordinates_source": r.coords_source.map(source_name),
        "asn": loc.asn,
        "database": database,
    })
}

fn write_report(out: &mut String, r: &GeoReport) {
    let loc = &r.location;
    let dash = || "-".to_owned();
    let _ = writeln!(out, "address: {}", r.ip);
    let _ = writeln!(out, "network: {}", r.network);
    let _ = writeln!(
        out,
        "country: {}",
        loc.country.as_ref().map_or("-", code_str)
    );
    let _ = writeln!(out, "subdivision: {}", subdivision(r).unwrap_or_else(dash));
    let continent = match loc.continent {
        None => dash(),
        Some(c) if r.continent_from_table => format!("{} (countries table)", code_str(&c)),
        Some(c) => code_str(&c).to_owned(),
    };
    let _ = writeln!(out, "continent: {continent}");
    let coords = match (loc.coords, r.coords_source) {
        (Some(c), Some(src)) => format!("{:.4},{:.4} ({})", c.lat, c.lon, source_name(src)),
        _ => dash(),
    };
    let _ = writeln!(out, "coordinates: {coords}");
    let _ = writeln!(
        out,
        "asn: {}",
        loc.asn.map_or_else(dash, |a| format!("AS{a}"))
    );
}

/// `US-CA`: the SPEC §3 form geo rules match on.
fn subdivision(r: &GeoReport) -> Option<String> {
    let (country, sub) = (r.location.country?, r.location.subdivision?);
    Some(format!("{}-{}", code_str(&country), sub.as_str()))
}

fn source_name(source: CoordsSource) -> &'static str {
    match source {
        CoordsSource::Record => "record",
        CoordsSource::CountryTable => "country capital, countries table",
        CoordsSource::ContinentTable => "continent, continent table",
    }
}
