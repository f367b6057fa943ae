//! GeoIP: where a client address is. `GeoDb` (mmdb.rs) reads MaxMind DB files of several
//! layouts; the policy engine sees only [`Location`] through the [`Locate`] trait, so it
//! never touches maxminddb.

pub mod codes;
mod countries;
mod mmdb;
mod policies;
mod record;
mod render;
mod trie;

pub use countries::{CONTINENTS, Country, continent_coords, countries, country, is_continent};
pub use mmdb::{CoordsSource, GeoDb, GeoError, GeoReport};
pub use policies::PolicyTrees;
pub use render::{render_geoip, render_geoip_json};
pub use trie::TrieStats;

use std::net::IpAddr;

use crate::model::Coords;

/// What a GeoIP database says about one address. Codes are uppercase ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Location {
    /// ISO 3166-1 alpha-2.
    pub country: Option<[u8; 2]>,
    /// The database's first subdivision code (`WA` in `US`); up to 3 characters.
    pub subdivision: Option<Subdivision>,
    /// AF AN AS EU NA OC SA; from the record, else the country's (countries table).
    pub continent: Option<[u8; 2]>,
    /// From the record, else the country's capital from `geoip/countries.csv`, else the
    /// continent's point ([`CONTINENTS`]); `None` for a record with neither.
    pub coords: Option<Coords>,
    /// Prefix length of the database network that holds the address (ECS scope).
    pub prefix_len: u8,
    /// Autonomous system number, from the ASN database or a record that carries one.
    pub asn: Option<u32>,
}

/// An ISO 3166-2 subdivision code without its country (`CA`, `ENG`), uppercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subdivision {
    bytes: [u8; 3],
    len: u8,
}

impl Subdivision {
    /// `None` unless 1 to 3 ASCII alphanumerics.
    pub fn new(code: &str) -> Option<Self> {
        let b = code.as_bytes();
        if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0; 3];
        for (d, s) in bytes.iter_mut().zip(b) {
            *d = s.to_ascii_uppercase();
        }
        Some(Subdivision {
            bytes,
            len: b.len() as u8,
        })
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("built from ASCII")
    }

    /// The `CC-XX` key of this subdivision of country `cc` (as geo rules name it), written
    /// into `buf` without allocating.
    pub fn key<'b>(&self, cc: [u8; 2], buf: &'b mut [u8; 6]) -> &'b str {
        buf[..2].copy_from_slice(&cc);
        buf[2] = b'-';
        let s = self.as_str().as_bytes();
        buf[3..3 + s.len()].copy_from_slice(s);
        std::str::from_utf8(&buf[..3 + s.len()]).expect("ASCII codes")
    }
}

/// One database lookup: the record, if any, and how far it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Located {
    /// `None` when the database has no record for the address.
    pub location: Option<Location>,
    /// Prefix length of the database network that holds the address; for a miss, of the
    /// empty region around it (the tree walk stops there). 0 without a database. Every
    /// address inside this prefix gets the same lookup: it bounds the ECS scope.
    pub prefix_len: u8,
}

/// Anything that can locate a client: the real database, or a table in tests.
pub trait Locate {
    fn locate(&self, ip: IpAddr) -> Located;

    /// What geo policy `policy`'s rules see of `ip` through its own decision tree
    /// ([`PolicyTrees::locate`]); `None` (the default) when it has none: use `locate`.
    fn locate_for(&self, _policy: crate::model::PolicyId, _ip: IpAddr) -> Option<Located> {
        None
    }

    /// What geo policy `policy`'s subdivision, country and continent rules match at `ip`,
    /// with its tree's class there ([`PolicyTrees::rule_targets`]); `None` (the default)
    /// when it has no tree.
    fn rule_targets(&self, _policy: crate::model::PolicyId, _ip: IpAddr) -> Option<RuleClass<'_>> {
        None
    }
}

/// What a geo policy's tree says of one address.
#[derive(Debug, Clone, Copy)]
pub struct RuleClass<'a> {
    /// The targets of the rules the address's class matches.
    pub targets: RuleTargets<'a>,
    /// The widest prefix around the address that has the same class.
    pub prefix_len: u8,
    /// The class: addresses of one class get the same targets.
    pub class: u32,
}

/// The targets of the subdivision, country and continent rules a place matches, in that
/// order (`None`: no rule of that level matches).
pub type RuleTargets<'a> = [Option<&'a [crate::model::Target]>; 3];

/// No database: every client is unlocated and matches only `cidr` and `default`.
pub struct NoGeo;

impl Locate for NoGeo {
    fn locate(&self, _ip: IpAddr) -> Located {
        Located::default()
    }
}

/// Render a two-letter code.
pub fn code_str(code: &[u8; 2]) -> &str {
    std::str::from_utf8(code).unwrap_or("??")
}
