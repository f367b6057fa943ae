//! The one record type every supported `.mmdb` layout decodes into, borrowed from the
//! database buffer. Each field accepts every shape the known layouts use (a map with a code
//! inside, or a bare string; float32 or double) through hand-written visitors that skip
//! what they do not need, instead of serde's untagged enums, which buffer (allocate).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::countries;
use crate::model::Coords;

/// A City/Country record of any known layout. Unknown keys are skipped without decoding.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRecord<'a> {
    /// GeoIP2: `{iso_code}`; legacy IPinfo: a code; IPinfo Lite: a name (ignored).
    #[serde(borrow)]
    country: Code<'a>,
    #[serde(borrow)]
    registered_country: Code<'a>,
    #[serde(borrow)]
    represented_country: Code<'a>,
    /// Flat layouts (IPinfo Lite, ip-location-db).
    #[serde(borrow)]
    country_code: Code<'a>,
    /// GeoIP2: `{code}`; legacy IPinfo: a code; IPinfo Lite: a name (ignored).
    #[serde(borrow)]
    continent: Code<'a>,
    #[serde(borrow)]
    continent_code: Code<'a>,
    /// GeoIP2: `[{iso_code}, ...]`; only the first is kept.
    #[serde(borrow)]
    pub(super) subdivisions: FirstCode<'a>,
    location: Option<LatLon>,
    /// ip-location-db city files: top-level, float32.
    latitude: Option<Number>,
    longitude: Option<Number>,
    /// IPinfo: `"AS15169"`; some layouts: a number.
    asn: Option<Asn>,
    autonomous_system_number: Option<Asn>,
}

impl RawRecord<'_> {
    /// The first valid country code of: country, country_code, registered, represented.
    pub(super) fn country(&self) -> Option<[u8; 2]> {
        [
            self.country,
            self.country_code,
            self.registered_country,
            self.represented_country,
        ]
        .iter()
        .find_map(|c| c.0.and_then(country_code))
    }

    pub(super) fn continent(&self) -> Option<[u8; 2]> {
        [self.continent, self.continent_code]
            .iter()
            .find_map(|c| c.0.and_then(country_code))
            .filter(|c| countries::is_continent(*c))
    }

    /// Record coordinates: nested `location`, else top-level; (0, 0) counts as none, since
    /// some flat files write zeros for "unknown".
    pub(super) fn coords(&self) -> Option<Coords> {
        let nested = self
            .location
            .and_then(|l| Some((l.latitude?, l.longitude?)));
        let (lat, lon) = nested.or(self.latitude.zip(self.longitude))?;
        let (lat, lon) = (lat.0, lon.0);
        let valid = (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon);
        (valid && (lat, lon) != (0.0, 0.0)).then_some(Coords { lat, lon })
    }

    pub(super) fn asn(&self) -> Option<u32> {
        self.autonomous_system_number.or(self.asn).and_then(|a| a.0)
    }
}

/// An ASN database record (GeoLite2-ASN, or a flat `asn`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct AsnRecord {
    autonomous_system_number: Option<Asn>,
    asn: Option<Asn>,
}

impl AsnRecord {
    pub(super) fn number(&self) -> Option<u32> {
        self.autonomous_system_number.or(self.asn).and_then(|a| a.0)
    }
}

/// Two ASCII letters, uppercased: a country or continent code.
fn country_code(s: &str) -> Option<[u8; 2]> {
    match s.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
struct LatLon {
    latitude: Option<Number>,
    longitude: Option<Number>,
}

/// A code that is a bare string, or a map holding it under `iso_code` or `code`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Code<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for Code<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CodeVisitor)
    }
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = Code<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a code string or a map with iso_code/code")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Code<'de>, E> {
        Ok(Code(Some(s)))
    }

    /// A transient string cannot be borrowed; no supported reader produces one.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Code<'de>, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<&'de str>()? {
            if code.is_none() && (key == "iso_code" || key == "code") {
                code = map.next_value::<Code<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Code(code))
    }

    /// Any other type (number, bool, array) is not a code: skip it, don't fail the record.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Code<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Code(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Code<'de>, E> {
        Ok(Code(None))
    }
}

/// The code of the first element of an array of `{iso_code}` maps.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FirstCode<'a>(pub(super) Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstCode<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FirstCodeVisitor)
    }
}

struct FirstCodeVisitor;

impl<'de> Visitor<'de> for FirstCodeVisitor {
    type Value = FirstCode<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of subdivisions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstCode<'de>, A::Error> {
        let first = seq.next_element::<Code<'de>>()?.and_then(|c| c.0);
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FirstCode(first))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FirstCode<'de>, A::Error> {
        CodeVisitor.visit_map(map).map(|c| FirstCode(c.0))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<FirstCode<'de>, E> {
        Ok(FirstCode(Some(s)))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<FirstCode<'de>, E> {
        Ok(FirstCode(None))
    }
}

/// A coordinate stored as MMDB double or float32 (or, oddly, an integer).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Number, E> {
        // Via the shortest decimal, so 51.5142f32 becomes 51.5142, not 51.514198303222656.
        Ok(Number(f64_from_f32(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number(v as f64))
    }
}

/// Round an f32 to the f64 nearest its shortest decimal form, without allocating: 7
/// significant digits are all an f32 holds.
fn f64_from_f32(v: f32) -> f64 {
    let x = f64::from(v);
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(6 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// An AS number: an integer, or a string like `"AS15169"` / `"15169"`.
#[derive(Debug, Clone, Copy)]
struct Asn(Option<u32>);

impl<'de> Deserialize<'de> for Asn {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AsnVisitor)
    }
}

struct AsnVisitor;

impl<'de> Visitor<'de> for AsnVisitor {
    type Value = Asn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AS number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Asn, E> {
        Ok(Asn(u32::try_from(v).ok()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Asn, E> {
        Ok(Asn(u32::try_from(v).ok()))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Asn, E> {
        let digits = s
            .strip_prefix("AS")
            .or_else(|| s.strip_prefix("as"))
            .unwrap_or(s);
        Ok(Asn(digits.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_rounding_keeps_the_written_digits() {
        assert_eq!(f64_from_f32(51.5142), 51.5142);
        assert_eq!(f64_from_f32(-0.0931), -0.0931);
        assert_eq!(f64_from_f32(-122.3321), -122.3321);
        assert_eq!(f64_from_f32(0.0), 0.0);
    }

    #[test]
    fn codes_are_two_letters() {
        assert_eq!(country_code("gb"), Some(*b"GB"));
        assert_eq!(country_code("United States"), None);
        assert_eq!(country_code("G1"), None);
    }
}
