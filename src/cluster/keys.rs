//! Where the cluster's data lives in etcd and what its values look like (SPEC §10). Pure:
//! key building and parsing, value (de)serialization and the stable probe id.
//!
//! | key (under the prefix) | value | lifetime |
//! |---|---|---|
//! | `v1/instances/<instance>` | [`InstanceValue`] | the instance lease |
//! | `v1/verdicts/<instance>/<probe id>` | [`Verdict`] | the instance lease |
//! | `v1/overrides/<zone>/<pool>[/<address>]` | `OverrideEntry` | persistent |
//!
//! Segments are percent-escaped (`%` and `/`), so any pool name stays one segment.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::health::overrides::PoolRef;
use crate::model::{CheckSpec, ProbeKey};

/// Format version of the layout; a later incompatible layout gets `v2/` beside it.
const LAYOUT: &str = "v1/";

/// The keys of one cluster prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

/// What a key under the root names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Instance(String),
    Verdict { instance: String, probe: String },
    Override(PoolRef),
}

impl Keys {
    /// `prefix` starts and ends with `/` (settings check it).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{prefix}{LAYOUT}"),
        }
    }

    /// Every key of the cluster starts with this.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn instance(&self, name: &str) -> String {
        format!("{}instances/{}", self.root, escape(name))
    }

    pub fn verdict(&self, instance: &str, probe: &str) -> String {
        format!(
            "{}verdicts/{}/{}",
            self.root,
            escape(instance),
            escape(probe)
        )
    }

    pub fn override_key(&self, (zone, pool, address): &PoolRef) -> String {
        let mut k = format!("{}overrides/{}/{}", self.root, escape(zone), escape(pool));
        if let Some(a) = address {
            k.push('/');
            k.push_str(&escape(&a.to_string()));
        }
        k
    }

    /// What `key` names; `None` for keys of another layout or malformed ones (ignored).
    pub fn parse(&self, key: &[u8]) -> Option<Parsed> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let parts: Vec<String> = key.split('/').map(unescape).collect::<Option<_>>()?;
        match parts.as_slice() {
            [kind, name] if kind == "instances" => Some(Parsed::Instance(name.clone())),
            [kind, instance, probe] if kind == "verdicts" => Some(Parsed::Verdict {
                instance: instance.clone(),
                probe: probe.clone(),
            }),
            [kind, zone, pool] if kind == "overrides" => {
                Some(Parsed::Override((zone.clone(), pool.clone(), None)))
            }
            [kind, zone, pool, addr] if kind == "overrides" => Some(Parsed::Override((
                zone.clone(),
                pool.clone(),
                Some(addr.parse().ok()?),
            ))),
            _ => None,
        }
    }
}

fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

fn unescape(segment: &str) -> Option<String> {
    if segment.is_empty() {
        return None;
    }
    Some(segment.replace("%2F", "/").replace("%25", "%"))
}

/// What an instance says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceValue {
    pub started: String,
    /// Refreshed with every lease keep-alive.
    pub last_seen: String,
    /// [`crate::cluster::zones_digest`] of its zone directory.
    pub zones_digest: String,
    pub version: String,
}

/// One instance's verdict on one probe, written when its state flips (edge-triggered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub up: bool,
    /// Why it is down (the last error), or why it came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// When the state flipped (RFC 3339).
    pub since: String,
    pub address: IpAddr,
}

/// A probe's id, the same on every instance with the same check: the probed address, kind
/// and port for people, and a hash of the whole check (its `quorum` aside, which decides
/// how verdicts are counted, not what they are) for machines.
pub fn probe_id(key: &ProbeKey) -> String {
    let c: &CheckSpec = &key.check;
    let canonical = format!(
        "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}|{}",
        key.addr,
        c.kind.as_str(),
        c.port,
        c.path,
        c.host,
        c.expect_status,
        c.expect_body,
        c.headers,
        c.interval,
        c.timeout,
        c.rise,
        c.fall,
        c.ca_file,
        c.tls_verify
    );
    format!(
        "{}-{}-{}-{:016x}",
        key.addr,
        c.kind.as_str(),
        c.port,
        fnv1a(canonical.as_bytes())
    )
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hashers promise neither).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    /// FNV parameters for 64 bits (draft-eastlake-fnv §2.1.2).
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_parse() {
        let k = Keys::new("/meridian/");
        assert_eq!(k.instance("ns1"), "/meridian/v1/instances/ns1");
        assert_eq!(
            k.parse(k.instance("ns1").as_bytes()),
            Some(Parsed::Instance("ns1".into()))
        );
        let v = k.verdict("ns1", "127.0.0.1-http-80-00ff");
        assert_eq!(
            k.parse(v.as_bytes()),
            Some(Parsed::Verdict {
                instance: "ns1".into(),
                probe: "127.0.0.1-http-80-00ff".into()
            })
        );
        for r in [
            ("gslb.test.".to_string(), "us/east%".to_string(), None),
            (
                "gslb.test.".to_string(),
                "eu".to_string(),
                Some("2001:db8::1".parse().expect("ip")),
            ),
        ] {
            let key = k.override_key(&r);
            assert_eq!(k.parse(key.as_bytes()), Some(Parsed::Override(r)), "{key}");
        }
        assert_eq!(k.parse(b"/meridian/v2/instances/x"), None);
        assert_eq!(k.parse(b"/meridian/v1/verdicts/x"), None);
        assert_eq!(k.parse(b"/meridian/v1/overrides/z/p/not-an-ip"), None);
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
