//! Scalar formats of zone files, each parsed on its own: durations, HTTP status sets, geo
//! codes, CIDR prefixes, owner names and static RDATA in presentation format. Errors are
//! plain sentences; the caller adds the position.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use crate::geo::codes;
use crate::model::{StatusSet, WireName, rtype, wire};

/// Continent codes of GeoIP databases (MaxMind, DB-IP, ipinfo).
pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// RFC 1035 §3.3: a character-string holds at most 255 bytes.
const MAX_CHARACTER_STRING: usize = 255;

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"`: a positive whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("bad duration \"{s}\": use a number and a unit, like \"500ms\", \"2s\" or \"1m\"")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("duration \"{s}\" must be more than zero"));
    }
    Ok(d)
}

/// One `expect_status` item: a code (`301`, `"301"`) or a class (`"2xx"`).
pub fn add_status(set: &mut StatusSet, item: &str) -> Result<(), String> {
    let lower = item.to_ascii_lowercase();
    if let Some(class) = lower.strip_suffix("xx") {
        if let Ok(c @ 1..=5) = class.parse::<u8>() {
            set.classes.push(c);
            return Ok(());
        }
    } else if let Ok(code @ 100..=599) = lower.parse::<u16>() {
        set.codes.push(code);
        return Ok(());
    }
    Err(format!(
        "bad HTTP status \"{item}\": use a code from 100 to 599 or a class like \"2xx\""
    ))
}

/// ISO 3166-1 alpha-2, any case, to uppercase.
pub fn parse_country(s: &str) -> Result<[u8; 2], String> {
    let [a, b] = s.as_bytes() else {
        return Err(format!(
            "bad country code \"{s}\": use two letters (ISO 3166-1 alpha-2), like \"DE\""
        ));
    };
    let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
    let up = std::str::from_utf8(&code).unwrap_or_default();
    if codes::is_country(up) {
        return Ok(code);
    }
    Err(format!(
        "unknown country code \"{s}\": not in ISO 3166-1{}",
        suggestion(codes::nearest_country(up))
    ))
}

/// One of [`CONTINENTS`], any case.
pub fn parse_continent(s: &str) -> Result<[u8; 2], String> {
    let up = s.to_ascii_uppercase();
    match CONTINENTS.iter().find(|c| **c == up) {
        Some(c) => Ok([c.as_bytes()[0], c.as_bytes()[1]]),
        None => Err(format!(
            "unknown continent \"{s}\": use one of {}",
            CONTINENTS.join(" ")
        )),
    }
}

/// `CC-XX`: an ISO 3166-2 code (the country, a dash, the region); uppercased.
pub fn parse_subdivision(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "bad subdivision \"{s}\": use the country code, a dash and the region code, like \"US-CA\""
        )
    };
    let (cc, sub) = s.split_once('-').ok_or_else(bad)?;
    if cc.len() != 2
        || !(1..=3).contains(&sub.len())
        || !cc
            .bytes()
            .chain(sub.bytes())
            .all(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad());
    }
    let up = s.to_ascii_uppercase();
    if codes::is_subdivision(&up) {
        return Ok(up);
    }
    Err(format!(
        "unknown subdivision \"{s}\": not in ISO 3166-2{}",
        suggestion(codes::nearest_subdivision(&up))
    ))
}

/// `; did you mean "XX"?`, or nothing.
fn suggestion(code: Option<&str>) -> String {
    code.map(|c| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

/// A CIDR prefix without host bits (`10.0.0.0/8`); a bare address is a host prefix.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "bad CIDR prefix \"{s}\": use an address, a slash and a length, like \"10.0.0.0/8\""
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "CIDR prefix \"{s}\" has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// An IPv4 or IPv6 address.
pub fn parse_addr(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("bad address \"{s}\""))
}

/// An owner name or a name inside RDATA: `@` is the apex, names ending in a dot are
/// absolute, others are relative to `origin` (presentation, with its trailing dot).
/// With `inside`, an absolute name must be the origin or below it.
pub fn resolve_name(s: &str, origin: &str, inside: bool) -> Result<WireName, String> {
    let text = if s == "@" {
        origin.to_owned()
    } else if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.{}", origin.trim_start_matches('.'))
    };
    if s.is_empty()
        || text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        return Err(format!("bad name \"{s}\""));
    }
    let name = wire::from_text(&text)
        .ok_or_else(|| format!("bad name \"{s}\": empty label or too long"))?;
    if inside {
        let origin_wire =
            wire::from_text(origin).ok_or_else(|| format!("bad origin \"{origin}\""))?;
        if !wire::is_within(&name, &origin_wire) {
            return Err(format!("name {s} is outside the origin {origin}"));
        }
    }
    Ok(name)
}

/// A plain relative name (`www`, `a.b`: letters, digits, `-`, `_`, `*`) below `origin`
/// (wire), without building text; `None` for anything else, which [`resolve_name`] then
/// reads (and explains when wrong).
pub fn relative_name(s: &str, origin: &[u8]) -> Option<WireName> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*');
    if s.is_empty() || s.len() + 1 + origin.len() > 255 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() + 1 + origin.len());
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 || !label.bytes().all(plain) {
            return None;
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.extend_from_slice(origin);
    Some(out.into_boxed_slice())
}

/// SOA RNAME: `hostmaster.example.test.` or `hostmaster@example.test` (the local part
/// becomes the first label, RFC 1035 §8).
pub fn parse_rname(s: &str, origin: &str) -> Result<WireName, String> {
    match s.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !local.contains('.') => {
            let domain = if domain.ends_with('.') {
                domain.to_owned()
            } else {
                format!("{domain}.")
            };
            resolve_name(&format!("{local}.{domain}"), origin, false)
        }
        Some(_) => Err(format!("bad mailbox \"{s}\"")),
        None => resolve_name(s, origin, false),
    }
}

/// Static RDATA in presentation format → uncompressed wire format (names relative to
/// `origin`). `rtype` is one of the types [`static_type`] accepts.
pub fn encode_rdata(t: u16, s: &str, origin: &str) -> Result<Vec<u8>, String> {
    let name = |n: &str| resolve_name(n, origin, false).map(Vec::from);
    // Split only for the types with several fields: A and AAAA are the bulk of big zones.
    let fields = || s.split_whitespace().collect::<Vec<&str>>();
    match t {
        rtype::A => match s.parse::<Ipv4Addr>() {
            Ok(a) => Ok(a.octets().to_vec()),
            Err(_) => Err(format!("bad IPv4 address \"{s}\"")),
        },
        rtype::AAAA => match s.parse::<Ipv6Addr>() {
            Ok(a) => Ok(a.octets().to_vec()),
            Err(_) => Err(format!("bad IPv6 address \"{s}\"")),
        },
        rtype::CNAME | rtype::NS | rtype::PTR => name(s.trim()),
        rtype::TXT => Ok(encode_txt(s)),
        rtype::MX => match fields()[..] {
            [pref, target] => {
                let mut out = u16_field(pref, "MX preference")?.to_be_bytes().to_vec();
                out.extend(name(target)?);
                Ok(out)
            }
            _ => Err(format!(
                "bad MX \"{s}\": use \"preference exchange\", like \"10 mx1.example.net.\""
            )),
        },
        rtype::SRV => match fields()[..] {
            [prio, weight, port, target] => {
                let mut out = Vec::new();
                for (v, what) in [
                    (prio, "SRV priority"),
                    (weight, "SRV weight"),
                    (port, "SRV port"),
                ] {
                    out.extend(u16_field(v, what)?.to_be_bytes());
                }
                out.extend(name(target)?);
                Ok(out)
            }
            _ => Err(format!(
                "bad SRV \"{s}\": use \"priority weight port target\", like \"10 5 443 www\""
            )),
        },
        rtype::CAA => encode_caa(s),
        _ => Err(format!("record type {} is not supported", rtype::name(t))),
    }
}

/// Record types a `[records.*]` table may hold.
pub fn static_type(key: &str) -> Option<u16> {
    const STATIC: [u16; 9] = [
        rtype::A,
        rtype::AAAA,
        rtype::CNAME,
        rtype::MX,
        rtype::TXT,
        rtype::SRV,
        rtype::CAA,
        rtype::NS,
        rtype::PTR,
    ];
    rtype::from_name(key)
        .filter(|t| STATIC.contains(t) && key.bytes().all(|b| b.is_ascii_uppercase()))
}

/// One TXT record: the string split into character-strings of at most 255 bytes.
fn encode_txt(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return vec![0];
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / MAX_CHARACTER_STRING + 1);
    for chunk in bytes.chunks(MAX_CHARACTER_STRING) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// RFC 8659 §4.1: `flags tag value`, the value quoted or not.
fn encode_caa(s: &str) -> Result<Vec<u8>, String> {
    let bad = || {
        format!(
            "bad CAA \"{s}\": use \"flags tag value\", like \"0 issue \\\"letsencrypt.org\\\"\""
        )
    };
    let mut parts = s.trim().splitn(3, char::is_whitespace);
    let (flags, tag, value) = match (parts.next(), parts.next(), parts.next()) {
        (Some(f), Some(t), Some(v)) => (f, t, v.trim()),
        _ => return Err(bad()),
    };
    let flags: u8 = flags.parse().map_err(|_| bad())?;
    if tag.is_empty() || tag.len() > 15 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    let value = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or_else(bad)?,
        None => value,
    };
    let mut out = vec![flags, tag.len() as u8];
    out.extend(tag.to_ascii_lowercase().bytes());
    out.extend(value.bytes());
    Ok(out)
}

fn u16_field(s: &str, what: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("bad {what} \"{s}\": use a number from 0 to 65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "gslb.example.test.";

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "2", "s", "2 s", "-1s", "0s", "1.5s", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses() {
        let mut s = StatusSet {
            codes: vec![],
            classes: vec![],
        };
        add_status(&mut s, "2xx").expect("class");
        add_status(&mut s, "301").expect("code");
        assert_eq!(
            s,
            StatusSet {
                codes: vec![301],
                classes: vec![2]
            }
        );
        for bad in ["6xx", "99", "600", "abc", "2x"] {
            assert!(add_status(&mut s, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn geo_codes() {
        assert_eq!(parse_country("de"), Ok(*b"DE"));
        assert!(parse_country("DEU").is_err() && parse_country("1A").is_err());
        assert_eq!(parse_continent("eu"), Ok(*b"EU"));
        assert!(parse_continent("XX").is_err());
        assert_eq!(parse_subdivision("us-ca").as_deref(), Ok("US-CA"));
        assert_eq!(parse_subdivision("GB-ENG").as_deref(), Ok("GB-ENG"));
        assert!(parse_subdivision("US").is_err() && parse_subdivision("US-ABCD").is_err());
        assert_eq!(
            parse_country("uk"),
            Err("unknown country code \"uk\": not in ISO 3166-1; did you mean \"GB\"?".into())
        );
        assert_eq!(
            parse_subdivision("US-CAL"),
            Err(
                "unknown subdivision \"US-CAL\": not in ISO 3166-2; did you mean \"US-CA\"?".into()
            )
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(
            parse_cidr("192.0.2.1"),
            Ok("192.0.2.1/32".parse().expect("net"))
        );
        assert!(
            parse_cidr("10.0.0.1/8")
                .expect_err("host bits")
                .contains("10.0.0.0/8")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err() && parse_cidr("x").is_err());
    }

    #[test]
    fn names() {
        let w = |s: &str| wire::from_text(s).expect("valid");
        assert_eq!(resolve_name("@", ORIGIN, true), Ok(w(ORIGIN)));
        assert_eq!(
            resolve_name("WWW", ORIGIN, true),
            Ok(w("www.gslb.example.test."))
        );
        assert_eq!(
            resolve_name("*.wild", ORIGIN, true),
            Ok(w("*.wild.gslb.example.test."))
        );
        assert_eq!(
            resolve_name("a.gslb.example.test.", ORIGIN, true),
            Ok(w("a.gslb.example.test."))
        );
        assert_eq!(
            resolve_name("www.example.test.", ORIGIN, true),
            Err("name www.example.test. is outside the origin gslb.example.test.".into())
        );
        assert!(
            resolve_name("a..b", ORIGIN, true).is_err()
                && resolve_name("a b", ORIGIN, true).is_err()
        );
        assert_eq!(
            parse_rname("hostmaster@example.test", ORIGIN),
            Ok(w("hostmaster.example.test."))
        );
        assert_eq!(
            parse_rname("hostmaster.example.test.", ORIGIN),
            Ok(w("hostmaster.example.test."))
        );
    }

    #[test]
    fn rdata() {
        let enc = |t, s| encode_rdata(t, s, ORIGIN);
        assert_eq!(enc(rtype::A, "192.0.2.1"), Ok(vec![192, 0, 2, 1]));
        assert!(enc(rtype::A, "2001:db8::1").is_err());
        assert_eq!(enc(rtype::AAAA, "::1").map(|v| v.len()), Ok(16));
        assert_eq!(
            enc(rtype::MX, "10 mx1"),
            Ok(b"\x00\x0a\x03mx1\x04gslb\x07example\x04test\x00".to_vec())
        );
        assert_eq!(
            enc(rtype::SRV, "1 2 443 t.example."),
            Ok(b"\x00\x01\x00\x02\x01\xbb\x01t\x07example\x00".to_vec())
        );
        assert_eq!(enc(rtype::TXT, "hi"), Ok(b"\x02hi".to_vec()));
        assert_eq!(enc(rtype::TXT, ""), Ok(vec![0]));
        let text = "x".repeat(300);
        let long = encode_rdata(rtype::TXT, &text, ORIGIN).expect("txt");
        assert_eq!((long[0], long[256], long.len()), (255, 45, 302));
        assert_eq!(
            enc(rtype::CAA, "0 issue \"letsencrypt.org\""),
            Ok(b"\x00\x05issueletsencrypt.org".to_vec())
        );
        assert!(enc(rtype::CAA, "0 issue").is_err() && enc(rtype::MX, "mx1").is_err());
    }
}
