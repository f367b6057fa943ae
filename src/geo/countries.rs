//! The countries table (`geoip/countries.csv`, compiled in) and the continent table: where a
//! client is when its GeoIP record names only a country or only a continent. `GeoDb` fills
//! `Location::coords` (and a missing continent) from here, so latency and `nearest` fallback
//! still have a point to measure from.
//!
//! Country points are capitals, from GeoNames (geonames.org, CC BY 4.0); see geoip/README.md.

use std::sync::LazyLock;

use crate::model::Coords;

/// One row of `geoip/countries.csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Country {
    /// ISO 3166-1 alpha-2, uppercase.
    pub code: [u8; 2],
    /// GeoNames continent code (the scheme MaxMind uses: RU in EU, TR in AS).
    pub continent: [u8; 2],
    /// The capital's coordinates.
    pub coords: Coords,
    pub name: &'static str,
}

/// The seven continent codes GeoIP databases use, with a representative point each
/// (GeoNames' continent coordinates).
pub const CONTINENTS: [([u8; 2], Coords); 7] = [
    (
        *b"AF",
        Coords {
            lat: 7.1881,
            lon: 21.0938,
        },
    ),
    (
        *b"AN",
        Coords {
            lat: -78.1586,
            lon: 16.4063,
        },
    ),
    (
        *b"AS",
        Coords {
            lat: 29.8406,
            lon: 89.2969,
        },
    ),
    (
        *b"EU",
        Coords {
            lat: 48.6910,
            lon: 9.1406,
        },
    ),
    (
        *b"NA",
        Coords {
            lat: 46.0732,
            lon: -100.5469,
        },
    ),
    (
        *b"OC",
        Coords {
            lat: -18.3128,
            lon: 138.5156,
        },
    ),
    (
        *b"SA",
        Coords {
            lat: -14.6049,
            lon: -57.6563,
        },
    ),
];

/// The table's source, compiled into the binary so a server needs no extra file.
const COUNTRIES_CSV: &str = include_str!("../../geoip/countries.csv");

/// 26 × 26 slots indexed by the two letters: a lookup is two subtractions, no hashing.
type Table = [Option<Country>; 26 * 26];

static TABLE: LazyLock<Box<Table>> = LazyLock::new(|| {
    let mut table: Box<Table> = Box::new([None; 26 * 26]);
    for country in COUNTRIES_CSV.lines().skip(1).filter_map(parse_row) {
        if let Some(i) = slot(country.code) {
            table[i] = Some(country);
        }
    }
    table
});

/// The row of an ISO 3166-1 alpha-2 code (any case), if the table has it.
pub fn country(code: [u8; 2]) -> Option<&'static Country> {
    TABLE[slot(code)?].as_ref()
}

/// Every country of the table, in code order.
pub fn countries() -> impl Iterator<Item = &'static Country> {
    TABLE.iter().flatten()
}

/// The representative point of a continent code (AF AN AS EU NA OC SA).
pub fn continent_coords(code: [u8; 2]) -> Option<Coords> {
    CONTINENTS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, coords)| *coords)
}

/// Whether `code` is one of the seven continent codes.
pub fn is_continent(code: [u8; 2]) -> bool {
    CONTINENTS.iter().any(|(c, _)| *c == code)
}

fn slot(code: [u8; 2]) -> Option<usize> {
    let [a, b] = code.map(|c| c.to_ascii_uppercase());
    (a.is_ascii_uppercase() && b.is_ascii_uppercase())
        .then(|| usize::from(a - b'A') * 26 + usize::from(b - b'A'))
}

/// `iso2,continent,lat,lon,name`; the name is last and may contain commas.
fn parse_row(line: &'static str) -> Option<Country> {
    let mut cols = line.splitn(5, ',');
    let code = two_letters(cols.next()?)?;
    let continent = two_letters(cols.next()?)?;
    let lat = cols.next()?.parse().ok()?;
    let lon = cols.next()?.parse().ok()?;
    let name = cols.next()?.trim();
    Some(Country {
        code,
        continent,
        coords: Coords { lat, lon },
        name,
    })
}

fn two_letters(s: &str) -> Option<[u8; 2]> {
    match s.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_parses() {
        let lines = COUNTRIES_CSV.lines().skip(1).count();
        assert_eq!(countries().count(), lines);
        assert!(lines > 240, "{lines} countries");
    }

    #[test]
    fn continents_follow_geonames() {
        for (code, continent) in [
            ("RU", "EU"),
            ("TR", "AS"),
            ("CY", "EU"),
            ("EG", "AF"),
            ("PA", "NA"),
            ("AQ", "AN"),
            ("XK", "EU"),
        ] {
            let c = country(code.as_bytes().try_into().expect("2 bytes")).expect(code);
            assert_eq!(&c.continent, continent.as_bytes(), "{code}");
            assert!(is_continent(c.continent));
        }
    }

    #[test]
    fn capitals_and_case() {
        let gb = country(*b"gb").expect("GB");
        assert_eq!(gb.name, "United Kingdom");
        assert!((gb.coords.lat - 51.5).abs() < 0.1 && (gb.coords.lon + 0.13).abs() < 0.1);
        assert_eq!(
            country(*b"BQ").expect("BQ").name,
            "Bonaire, Saint Eustatius and Saba"
        );
        assert!(country(*b"ZZ").is_none());
        assert!(country(*b"1A").is_none());
        assert!(continent_coords(*b"EU").is_some());
        assert!(continent_coords(*b"XX").is_none());
    }
}
