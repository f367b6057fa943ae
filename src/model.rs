//! The compiled, immutable configuration: every zone, pool, policy and check, indexed by id.
//!
//! `config::compile` turns zone files into a [`Snapshot`]; the DNS path, the policy engine,
//! the probers and the admin API read it. Nothing here does I/O, and names are already
//! resolved into ids, so answering a query never looks a string up or meets a config error.
//! Domain names are kept as lowercase, uncompressed wire format ([`WireName`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use crate::prefix::{Match, PrefixMap};

mod nodes;
pub use nodes::{Node, Nodes, NodesBuilder, Rdatas, RrSet, TooBig};

/// Names to values, hashed fast (see the note on `rustc-hash` in Cargo.toml).
pub type NameMap<V> = FxHashMap<WireName, V>;

/// A domain name in lowercase, uncompressed wire format, root label included
/// (`\x03www\x04gslb\x07example\x04test\x00`).
pub type WireName = Box<[u8]>;

/// RFC 1035 §4.2.2: a message over TCP follows a 16-bit length, so no DNS message is
/// longer than this; `check` rejects data whose smallest answer would be, and the writer
/// truncates (TC=1) rather than wrap a length.
pub const MAX_MESSAGE: usize = 65_535;
/// RFC 1035 §3.2.1: RDLENGTH is 16 bits.
pub const MAX_RDATA: usize = 65_535;
/// RFC 1035 §4.1.1: the fixed header of every message.
pub const HEADER_LEN: usize = 12;
/// Bytes of one record besides its RDATA when its owner is a compression pointer (2) to the
/// question: TYPE, CLASS, TTL, RDLENGTH (RFC 1035 §4.1.3).
pub const RR_FIXED_LEN: usize = 2 + 10;

/// The smallest message that answers `owner` with `rdata_lens`: header, question, and each
/// record with its owner compressed to the question name.
pub fn smallest_answer(owner: &[u8], rdata_lens: impl IntoIterator<Item = usize>) -> usize {
    let records: usize = rdata_lens.into_iter().map(|n| RR_FIXED_LEN + n).sum();
    HEADER_LEN + owner.len() + 4 + records
}

/// Policies nest at most this deep (the asked policy counts as one): `check` rejects deeper
/// chains, and the walk stops there, so a bug can never recurse without bound.
pub const MAX_POLICY_DEPTH: usize = 16;

/// Index of a zone in [`Snapshot::zones`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId(pub u32);
/// Index of a pool in [`Snapshot::pools`] (pools of every zone share one index space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u32);
/// Index of a policy in [`Snapshot::policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);
/// Index of a distinct (probe address, check) pair in [`Snapshot::probes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u32);

/// Up to this many zones, `find_zone` compares each origin with the question's tail; beyond,
/// it hashes the tails (one per origin length), which costs more for a few zones.
const LINEAR_ZONES: usize = 8;

/// Everything Meridian serves, compiled from one load of the zone directory.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub zones: Vec<Zone>,
    /// Zone origin (lowercase wire) to zone.
    pub zone_by_origin: NameMap<ZoneId>,
    /// Label counts of the origins, longest first: `find_zone` tries only suffixes of these
    /// lengths.
    pub origin_labels: Vec<usize>,
    pub pools: Vec<Pool>,
    pub policies: Vec<Policy>,
    /// Every distinct (probe address, check) pair, probed once however many pools use it.
    pub probes: Vec<ProbeKey>,
    /// When this snapshot was compiled.
    pub loaded_at: Option<SystemTime>,
}

/// One zone file.
#[derive(Debug)]
pub struct Zone {
    /// Origin in presentation format with the trailing dot, lowercase.
    pub origin: String,
    pub origin_wire: WireName,
    pub file: PathBuf,
    pub serial: u32,
    pub soa: Soa,
    /// TTL of the SOA record itself (the zone's `ttl`).
    pub soa_ttl: u32,
    /// Default TTL of policy answers.
    pub policy_ttl: u32,
    /// Every name of the zone, empty non-terminals included (with no data).
    pub nodes: Nodes,
    /// Number of names an operator wrote (static and published policies).
    pub name_count: usize,
    /// Number of `[checks.*]` tables the zone defines, used by a pool or not.
    pub check_count: usize,
    /// Names of the zone's pools, for the admin API and explain.
    pub pools: Vec<PoolId>,
    /// `dnssec = true`: the (line, column) of that key, for messages about the zone's key.
    pub dnssec: Option<(usize, usize)>,
    /// The zone's signing key, attached after compiling (`dnssec::attach_keys`) from the
    /// state directory; `None` for an unsigned zone, or a signed one whose key is missing.
    pub key: Option<Arc<crate::dnssec::ZoneKey>>,
}

#[derive(Debug, Clone)]
pub struct Soa {
    pub mname: WireName,
    pub rname: WireName,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum: u32,
}

/// A region: endpoints, where it is and how it is checked.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub zone: ZoneId,
    pub endpoints: Vec<Endpoint>,
    /// Latitude, longitude in degrees.
    pub location: Option<Coords>,
    pub check: Option<Arc<CheckSpec>>,
    /// The check's name in its zone, for display.
    pub check_name: Option<String>,
    pub min_healthy: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coords {
    pub lat: f64,
    pub lon: f64,
}

/// One answered address of a pool.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address put in answers.
    pub addr: IpAddr,
    /// Where it is probed (its `probe_address`, else `addr`); `None` when the pool has no check.
    pub probe: Option<ProbeId>,
}

/// A distinct probe: one address checked one way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    pub addr: IpAddr,
    pub check: Arc<CheckSpec>,
}

/// A health check as the zone describes it (the name is not part of its identity, so two
/// zones with the same check on the same address share one probe).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub port: u16,
    /// HTTP path, starting with `/`.
    pub path: String,
    /// Host header and SNI; the probed address when absent.
    pub host: Option<String>,
    pub expect_status: StatusSet,
    pub expect_body: Option<String>,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// PEM file of the CA to trust instead of the Mozilla roots (https).
    pub ca_file: Option<PathBuf>,
    pub tls_verify: bool,
    /// With a cluster: how many instances' down verdicts take an endpoint down (SPEC §5).
    pub quorum: Quorum,
}

/// A check's `quorum` (SPEC §5, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quorum {
    /// Down when more than half of the reporting instances say down.
    #[default]
    Majority,
    /// Down when at least this many reporting instances say down.
    AtLeast(u32),
}

impl Quorum {
    /// For explain and status: `majority`, `2`.
    pub fn text(self) -> String {
        match self {
            Quorum::Majority => "majority".into(),
            Quorum::AtLeast(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    Http,
    Https,
    Tcp,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Tcp => "tcp",
        }
    }
}

/// Accepted HTTP statuses: a list of codes and whole classes (`"2xx"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusSet {
    pub codes: Vec<u16>,
    /// Classes by first digit: `2` for `2xx`.
    pub classes: Vec<u8>,
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.codes.contains(&status) || self.classes.iter().any(|c| u16::from(*c) == status / 100)
    }
}

impl Default for StatusSet {
    /// SPEC §2: `expect_status` defaults to `"2xx"`.
    fn default() -> Self {
        StatusSet {
            codes: Vec::new(),
            classes: vec![2],
        }
    }
}

/// A pool or a policy, as named by a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Pool(PoolId),
    Policy(PolicyId),
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub zone: ZoneId,
    pub kind: PolicyKind,
    pub ttl: u32,
    /// Addresses of the chosen pool beyond this are dropped.
    pub max_answers: usize,
    pub fallback: Fallback,
    pub publish: bool,
}

#[derive(Debug)]
pub enum PolicyKind {
    Failover(Vec<Target>),
    Weighted {
        targets: Vec<(Target, u32)>,
        sticky: bool,
    },
    Latency {
        targets: Vec<Target>,
        table: Option<Arc<LatencyTable>>,
    },
    Geo(GeoRules),
}

impl PolicyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::Failover(_) => "failover",
            PolicyKind::Weighted { .. } => "weighted",
            PolicyKind::Latency { .. } => "latency",
            PolicyKind::Geo(_) => "geo",
        }
    }

    /// Every target the policy names, in rule order (repeats kept). Off the DNS path: the
    /// callers list the pools a policy can reach (size checks, explain).
    pub fn targets(&self) -> Vec<Target> {
        match self {
            PolicyKind::Failover(t) | PolicyKind::Latency { targets: t, .. } => t.clone(),
            PolicyKind::Weighted { targets, .. } => targets.iter().map(|(t, _)| *t).collect(),
            PolicyKind::Geo(g) => g
                .cidr
                .iter()
                .map(|(_, t)| t)
                .chain(g.subdivision.values())
                .chain(g.country.values())
                .chain(g.continent.values())
                .chain(g.default.iter())
                .flatten()
                .copied()
                .collect(),
        }
    }
}

/// What a policy does when the value it matched has no up target (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The nearest up pool of the zone by distance.
    Nearest,
    /// Keep going down the match chain (geo: country, continent, default).
    Next,
    /// Straight to the all-down rule (fail open).
    None,
    /// Answer SERVFAIL when nothing is up.
    Servfail,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Nearest => "nearest",
            Fallback::Next => "next",
            Fallback::None => "none",
            Fallback::Servfail => "servfail",
        }
    }
}

/// Geo rules, most specific first. Each value is an ordered list (first up wins).
#[derive(Debug, Default)]
pub struct GeoRules {
    /// Longest prefix wins; the trie also gives the ECS scope of the match.
    pub cidr: PrefixMap<Vec<Target>>,
    /// Key `CC-XX`, uppercase.
    pub subdivision: FxHashMap<String, Vec<Target>>,
    /// Key ISO 3166-1 alpha-2, uppercase.
    pub country: FxHashMap<[u8; 2], Vec<Target>>,
    /// Key continent code (AF AN AS EU NA OC SA).
    pub continent: FxHashMap<[u8; 2], Vec<Target>>,
    pub default: Option<Vec<Target>>,
}

/// `client_prefix,pool,rtt_ms` rows of a latency table.
#[derive(Debug, Default)]
pub struct LatencyTable {
    pub file: PathBuf,
    /// Each client prefix with its (pool, rtt ms) rows; longest prefix wins.
    pub rows: PrefixMap<Vec<(PoolId, u32)>>,
}

impl LatencyTable {
    /// The rows of the longest prefix that contains `ip`, with the ECS scope of that match.
    pub fn lookup(&self, ip: IpAddr) -> Match<'_, Vec<(PoolId, u32)>> {
        self.rows.lookup(ip)
    }
}

impl Snapshot {
    pub fn zone(&self, id: ZoneId) -> &Zone {
        &self.zones[id.0 as usize]
    }
    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id.0 as usize]
    }
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0 as usize]
    }
    pub fn probe(&self, id: ProbeId) -> &ProbeKey {
        &self.probes[id.0 as usize]
    }

    /// The zone whose origin is the longest suffix of `qname` (lowercase wire). A few zones
    /// are compared with the question's tail one by one; more are looked up by hash, one
    /// tail per origin length.
    pub fn find_zone(&self, qname: &[u8]) -> Option<ZoneId> {
        if self.zones.len() <= LINEAR_ZONES {
            self.find_zone_linear(qname)
        } else {
            self.find_zone_hashed(qname)
        }
    }

    /// [`Snapshot::find_zone`] by comparing each origin with the tails of `qname` at its
    /// label boundaries (only the tail of the origin's length compares octets): no hash for
    /// a single zone, where the hash path walked the labels twice, hashed the tail and then
    /// compared it.
    fn find_zone_linear(&self, qname: &[u8]) -> Option<ZoneId> {
        let mut best: Option<(usize, usize)> = None;
        for (i, z) in self.zones.iter().enumerate() {
            let origin = &*z.origin_wire;
            if origin.len() > qname.len() || best.is_some_and(|(len, _)| len >= origin.len()) {
                continue;
            }
            if wire::is_within(qname, origin) {
                best = Some((origin.len(), i));
            }
        }
        best.map(|(_, i)| ZoneId(i as u32))
    }

    fn find_zone_hashed(&self, qname: &[u8]) -> Option<ZoneId> {
        let labels = wire::label_count(qname);
        for &want in &self.origin_labels {
            if want > labels {
                continue;
            }
            let mut at = qname;
            for _ in 0..labels - want {
                at = wire::parent(at)?;
            }
            if let Some(id) = self.zone_by_origin.get(at) {
                return Some(*id);
            }
        }
        None
    }

    /// The name of a pool or policy.
    pub fn target_name(&self, t: Target) -> &str {
        match t {
            Target::Pool(p) => &self.pool(p).name,
            Target::Policy(p) => &self.policy(p).name,
        }
    }

    /// A policy by zone and name, for explain and the admin API.
    pub fn find_policy(&self, zone: ZoneId, name: &str) -> Option<PolicyId> {
        self.policies
            .iter()
            .position(|p| p.zone == zone && p.name.eq_ignore_ascii_case(name))
            .map(|i| PolicyId(i as u32))
    }

    /// A pool by zone and name.
    pub fn find_pool(&self, zone: ZoneId, name: &str) -> Option<PoolId> {
        self.zone(zone)
            .pools
            .iter()
            .copied()
            .find(|p| self.pool(*p).name.eq_ignore_ascii_case(name))
    }

    /// A zone by its origin in presentation format (trailing dot optional, any case).
    pub fn find_zone_by_name(&self, origin: &str) -> Option<ZoneId> {
        let want = origin.trim_end_matches('.');
        self.zones
            .iter()
            .position(|z| z.origin.trim_end_matches('.').eq_ignore_ascii_case(want))
            .map(|i| ZoneId(i as u32))
    }
}

/// DNS record types Meridian knows by name (RFC 1035, 3596, 2782, 8659, 6891).
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const DS: u16 = 43;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;

    /// The type's mnemonic, or `TYPEnnn` (RFC 3597).
    pub fn name(t: u16) -> std::borrow::Cow<'static, str> {
        let s = match t {
            A => "A",
            NS => "NS",
            CNAME => "CNAME",
            SOA => "SOA",
            PTR => "PTR",
            MX => "MX",
            TXT => "TXT",
            AAAA => "AAAA",
            SRV => "SRV",
            OPT => "OPT",
            DS => "DS",
            ANY => "ANY",
            CAA => "CAA",
            _ => return format!("TYPE{t}").into(),
        };
        s.into()
    }

    /// The type for a mnemonic or `TYPEnnn`, any case.
    pub fn from_name(s: &str) -> Option<u16> {
        let up = s.to_ascii_uppercase();
        let t = match up.as_str() {
            "A" => A,
            "NS" => NS,
            "CNAME" => CNAME,
            "SOA" => SOA,
            "PTR" => PTR,
            "MX" => MX,
            "TXT" => TXT,
            "AAAA" => AAAA,
            "SRV" => SRV,
            "DS" => DS,
            "ANY" => ANY,
            "CAA" => CAA,
            _ => return up.strip_prefix("TYPE")?.parse().ok(),
        };
        Some(t)
    }
}

/// Wire-format name helpers.
pub mod wire {
    use super::WireName;

    /// Parse a presentation name (absolute, trailing dot optional) into lowercase wire
    /// format. `None` when a label is empty or over 63 bytes or the name over 255.
    pub fn from_text(name: &str) -> Option<WireName> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut out = Vec::with_capacity(name.len() + 2);
        if !name.is_empty() {
            for label in name.split('.') {
                if label.is_empty() || label.len() > 63 {
                    return None;
                }
                out.push(label.len() as u8);
                out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
            }
        }
        out.push(0);
        (out.len() <= 255).then(|| out.into_boxed_slice())
    }

    /// Presentation format with the trailing dot (`.` for the root).
    pub fn to_text(wire: &[u8]) -> String {
        let mut out = String::new();
        let mut at = 0;
        while let Some(&len) = wire.get(at) {
            if len == 0 {
                break;
            }
            let label = wire.get(at + 1..at + 1 + len as usize).unwrap_or_default();
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\{b:03}"));
                }
            }
            out.push('.');
            at += 1 + len as usize;
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }

    /// The name without its first label (`None` at the root).
    pub fn parent(wire: &[u8]) -> Option<&[u8]> {
        let len = *wire.first()? as usize;
        (len != 0).then(|| &wire[1 + len..])
    }

    /// True when `name` is `zone` or below it.
    pub fn is_within(name: &[u8], zone: &[u8]) -> bool {
        let mut at = name;
        loop {
            if at == zone {
                return true;
            }
            match parent(at) {
                Some(p) => at = p,
                None => return false,
            }
        }
    }

    /// Number of labels, root excluded.
    pub fn label_count(wire: &[u8]) -> usize {
        let mut n = 0;
        let mut at = wire;
        while let Some(p) = parent(at) {
            n += 1;
            at = p;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most specific zone wins; a name is only in a zone at a label boundary.
    #[test]
    fn the_longest_origin_on_a_label_boundary_finds_the_zone() {
        let dir = std::env::temp_dir().join(format!("meridian-find-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (file, origin) in [
            ("a.toml", "example.test"),
            ("b.toml", "sub.example.test"),
            ("c.toml", "b.test"),
            ("d.toml", "other.test"),
        ] {
            let text =
                format!("origin = \"{origin}\"\n[soa]\nmname = \"ns1\"\nrname = \"h@{origin}\"\n");
            std::fs::write(dir.join(file), text).expect("zone file");
        }
        let snap = crate::config::load_dir(&crate::config::LoadOptions {
            zones_dir: &dir,
            previous: None,
        })
        .expect("the zones load");
        let _ = std::fs::remove_dir_all(&dir);
        // Both ways of finding a zone, which must agree (four zones take the linear one).
        let find_wire = |name: &[u8]| {
            let found = snap.find_zone_linear(name);
            assert_eq!(found, snap.find_zone_hashed(name), "{name:?}");
            assert_eq!(found, snap.find_zone(name), "{name:?}");
            found.map(|z| snap.zone(z).origin.trim_end_matches('.').to_string())
        };
        let find = |name: &str| find_wire(&wire::from_text(name).expect("name"));
        // The tail is `b.test`'s origin octet for octet, inside one label `x\001b\004test`.
        assert_eq!(find_wire(b"\x08x\x01b\x04test\x00"), None);
        assert_eq!(find_wire(b"\x01y\x08x\x01b\x04test\x00"), None);
        assert_eq!(find("example.test").as_deref(), Some("example.test"));
        assert_eq!(find("www.example.test").as_deref(), Some("example.test"));
        assert_eq!(
            find("sub.example.test").as_deref(),
            Some("sub.example.test")
        );
        assert_eq!(
            find("a.b.sub.example.test").as_deref(),
            Some("sub.example.test")
        );
        assert_eq!(find("xsub.example.test").as_deref(), Some("example.test"));
        assert_eq!(find("b.test").as_deref(), Some("b.test"));
        assert_eq!(find("ab.test"), None);
        assert_eq!(find("x.other.test").as_deref(), Some("other.test"));
        assert_eq!(find("test"), None);
        assert_eq!(find("."), None);
        assert_eq!(find("example.org"), None);
    }

    #[test]
    fn wire_names_round_trip() {
        let w = wire::from_text("WWW.Gslb.example.test.").expect("valid name");
        assert_eq!(&*w, b"\x03www\x04gslb\x07example\x04test\x00");
        assert_eq!(wire::to_text(&w), "www.gslb.example.test.");
        assert_eq!(wire::to_text(&wire::from_text(".").expect("root")), ".");
        assert!(wire::from_text("a..b").is_none());
        assert_eq!(wire::label_count(&w), 4);
        let zone = wire::from_text("example.test").expect("valid");
        assert!(wire::is_within(&w, &zone));
        assert!(!wire::is_within(&zone, &w));
    }

    #[test]
    fn status_sets_match_codes_and_classes() {
        let s = StatusSet {
            codes: vec![301],
            classes: vec![2],
        };
        assert!(s.contains(200) && s.contains(299) && s.contains(301));
        assert!(!s.contains(302) && !s.contains(500));
    }
}
