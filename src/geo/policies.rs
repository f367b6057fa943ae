//! Each geo policy's own decision tree: the compiled trie projected onto the codes its rules
//! name (gdnsd compiles one tree per map the same way). A policy that asks only which
//! continent, country or subdivision rule matches walks a tree of a few thousand lines
//! instead of the whole database's, and the depth of its leaf is the widest prefix over
//! which that match holds: the ECS scope of the answer (issue 9).
//!
//! Built with the world (at start and on the reload thread, never on a DNS worker) for
//! each distinct set of rule codes; policies with the same codes share one tree.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::trie::GeoTrie;
use super::{GeoDb, Located, Location};
use crate::model::{GeoRules, PolicyId, PolicyKind, Snapshot};

/// Distinct rule sets given their own tree; the geo policies beyond answer through the
/// whole trie (the same answers, a slower lookup). Bounds the reload thread's work: one
/// pass over the merged trie each, about 0.1 s for GeoLite2-City (README, GeoIP section).
const MAX_POLICY_TREES: usize = 16;
/// Heap bytes all policy trees may take together; a tree that would go past it is dropped
/// and its policies answer through the whole trie.
const MAX_POLICY_TREE_BYTES: usize = 256 << 20;

/// No tree for this policy.
const NO_TREE: u32 = u32::MAX;

/// The policy trees of one snapshot over one database.
#[derive(Default)]
pub struct PolicyTrees {
    /// Policy → index in `trees`, or [`NO_TREE`].
    of_policy: Box<[u32]>,
    trees: Box<[GeoTrie]>,
    /// Heap bytes of `trees`.
    bytes: usize,
    /// Geo policies left without a tree by the bounds.
    skipped: usize,
    /// How long building took.
    took: std::time::Duration,
}

impl PolicyTrees {
    /// The trees of `snap`'s geo policies over `db` (none without a compiled database).
    pub fn build(snap: &Snapshot, db: Option<&GeoDb>) -> PolicyTrees {
        Self::build_bounded(snap, db, MAX_POLICY_TREES, MAX_POLICY_TREE_BYTES)
    }

    fn build_bounded(
        snap: &Snapshot,
        db: Option<&GeoDb>,
        max_trees: usize,
        max_bytes: usize,
    ) -> PolicyTrees {
        let Some(whole) = db.and_then(GeoDb::compiled_trie) else {
            return PolicyTrees::default();
        };
        let started = std::time::Instant::now();
        let mut of_policy = vec![NO_TREE; snap.policies.len()];
        let mut trees = Vec::new();
        let mut by_codes: FxHashMap<RuleCodes, u32> = FxHashMap::default();
        let (mut bytes, mut skipped) = (0, 0);
        for (slot, policy) in of_policy.iter_mut().zip(&snap.policies) {
            let PolicyKind::Geo(rules) = &policy.kind else {
                continue;
            };
            let codes = RuleCodes::of(rules);
            if let Some(&tree) = by_codes.get(&codes) {
                *slot = tree;
                continue;
            }
            if trees.len() >= max_trees {
                skipped += 1;
                continue;
            }
            let tree = whole.project(|l| codes.keep(l));
            if bytes + tree.bytes() > max_bytes {
                skipped += 1;
                continue;
            }
            bytes += tree.bytes();
            let index = trees.len() as u32;
            trees.push(tree);
            by_codes.insert(codes, index);
            *slot = index;
        }
        PolicyTrees {
            of_policy: of_policy.into_boxed_slice(),
            trees: trees.into_boxed_slice(),
            bytes,
            skipped,
            took: started.elapsed(),
        }
    }

    /// What geo policy `policy`'s rules see of `ip`: a location holding only the codes they
    /// name (`None` where none applies), and the widest prefix over which that holds.
    /// `None` when the policy has no tree: ask the whole database. Allocation-free.
    #[inline]
    pub fn locate(&self, policy: PolicyId, ip: IpAddr) -> Option<Located> {
        let tree = *self.of_policy.get(policy.0 as usize)?;
        self.trees.get(tree as usize).map(|t| t.locate(ip))
    }

    /// `3 geo policy trees, 120 KiB, built in 40 ms` for the load log line, with the
    /// policies the bounds left out.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} geo policy trees, {} KiB, built in {} ms",
            self.trees.len(),
            self.bytes.div_ceil(1024),
            self.took.as_millis()
        );
        if self.skipped > 0 {
            s.push_str(&format!(
                "; {} geo policies over the bounds use the whole trie",
                self.skipped
            ));
        }
        s
    }
}

/// The codes one geo policy's rules name at each level, sorted: what its tree keeps.
#[derive(PartialEq, Eq, Hash)]
struct RuleCodes {
    /// `CC-XX` keys.
    subdivisions: Vec<String>,
    countries: Vec<[u8; 2]>,
    continents: Vec<[u8; 2]>,
}

impl RuleCodes {
    fn of(rules: &GeoRules) -> RuleCodes {
        fn sorted<T: Ord + Clone>(keys: impl Iterator<Item = T>) -> Vec<T> {
            let mut v: Vec<T> = keys.collect();
            v.sort_unstable();
            v
        }
        RuleCodes {
            subdivisions: sorted(rules.subdivision.keys().cloned()),
            countries: sorted(rules.country.keys().copied()),
            continents: sorted(rules.continent.keys().copied()),
        }
    }

    /// `l` with only the codes a rule names (the country kept for a named subdivision,
    /// whose key includes it), without coordinates; `None` when no rule applies, so that
    /// such places merge with the database's gaps (neither matches a level).
    fn keep(&self, l: &Location) -> Option<Location> {
        let subdivision = match (l.country, l.subdivision) {
            (Some(cc), Some(sub)) => {
                let mut buf = [0; 6];
                let key = sub.key(cc, &mut buf);
                let named = self.subdivisions.binary_search_by(|s| s.as_str().cmp(key));
                named.is_ok().then_some(sub)
            }
            _ => None,
        };
        let country = l
            .country
            .filter(|cc| subdivision.is_some() || self.countries.binary_search(cc).is_ok());
        let continent = l
            .continent
            .filter(|c| self.continents.binary_search(c).is_ok());
        (country.is_some() || continent.is_some()).then_some(Location {
            country,
            subdivision,
            continent,
            coords: None,
            prefix_len: 0,
            asn: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    /// Our test database: 203.0.113.0/25 GB-ENG and 81.2.69.0/24 GB (EU), 198.51.100.0/25
    /// US-CA (NA), and others.
    fn db() -> GeoDb {
        GeoDb::open("geoip/test-city.mmdb".as_ref(), None).expect("shipped database")
    }

    fn snapshot(policies: &str) -> Snapshot {
        let zone = format!(
            "origin = \"t.test.\"\n[soa]\nmname = \"ns1.t.test.\"\n\
             rname = \"hostmaster.t.test.\"\n[records.\"@\"]\nNS = [\"ns1.t.test.\"]\n\
             [records.ns1]\nA = [\"192.0.2.53\"]\n[pools.a]\nA = [\"192.0.2.1\"]\n\
             [pools.b]\nA = [\"192.0.2.2\"]\n{policies}"
        );
        load_str("t.toml".as_ref(), &zone).expect("zone loads")
    }

    #[test]
    fn policies_with_the_same_codes_share_a_tree_and_the_bounds_hold() {
        const COUNTRIES: [&str; 20] = [
            "GB", "SE", "US", "IN", "JP", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PL",
            "PT", "IE", "DK", "NO", "FI", "CZ",
        ];
        assert!(COUNTRIES.len() >= MAX_POLICY_TREES + 2);
        // p0 and p1 name the same country with other targets; each later one another.
        let mut policies = String::new();
        let codes = std::iter::once("GB").chain(COUNTRIES.iter().copied());
        for (i, code) in codes.take(MAX_POLICY_TREES + 3).enumerate() {
            let target = if i == 1 { "b" } else { "a" };
            policies.push_str(&format!(
                "[policies.p{i:02}]\ngeo.country = {{ {code} = \"{target}\" }}\ngeo.default = \"b\"\n"
            ));
        }
        let snap = snapshot(&policies);
        let db = db();
        let trees = PolicyTrees::build(&snap, Some(&db));
        assert_eq!(trees.trees.len(), MAX_POLICY_TREES);
        assert_eq!(trees.of_policy[0], trees.of_policy[1]);
        assert_eq!(trees.skipped, 2);
        let ip: IpAddr = "81.2.69.1".parse().expect("ip");
        let id = |name: &str| {
            snap.find_policy(crate::model::ZoneId(0), name)
                .expect("policy")
        };
        assert!(trees.locate(id("p00"), ip).is_some());
        assert!(
            trees
                .locate(id(&format!("p{:02}", MAX_POLICY_TREES)), ip)
                .is_some()
        );
        assert!(
            trees
                .locate(id(&format!("p{:02}", MAX_POLICY_TREES + 1)), ip)
                .is_none()
        );
        assert!(trees.summary().contains("2 geo policies over the bounds"));
        // Bounded in bytes below one tree: none at all.
        let none = PolicyTrees::build_bounded(&snap, Some(&db), MAX_POLICY_TREES, 1);
        assert!(none.trees.is_empty());
        assert_eq!(none.skipped, MAX_POLICY_TREES + 3);
        assert!(
            PolicyTrees::build(&snap, None)
                .locate(id("p00"), ip)
                .is_none()
        );
    }

    #[test]
    fn a_tree_keeps_only_the_named_codes_and_widens_the_prefix() {
        let snap = snapshot(
            "[policies.eu]\ngeo.continent = { EU = \"a\" }\ngeo.default = \"b\"\n\
             [policies.eng]\ngeo.subdivision = { \"GB-ENG\" = \"a\" }\ngeo.default = \"b\"\n",
        );
        let db = db();
        let trees = PolicyTrees::build(&snap, Some(&db));
        let gb: IpAddr = "203.0.113.1".parse().expect("ip");
        let whole = crate::geo::Locate::locate(&db, gb);
        let eu = trees.locate(PolicyId(0), gb).expect("tree");
        let loc = eu.location.expect("EU is named");
        assert_eq!(
            (loc.continent, loc.country, loc.coords),
            (Some(*b"EU"), None, None)
        );
        assert!(eu.prefix_len <= whole.prefix_len, "{eu:?} {whole:?}");
        let eng = trees
            .locate(PolicyId(1), gb)
            .expect("tree")
            .location
            .expect("named");
        assert_eq!(eng.country, Some(*b"GB"));
        assert_eq!(
            eng.subdivision.map(|s| s.as_str().to_owned()),
            Some("ENG".into())
        );
        assert_eq!(eng.continent, None);
        // 81.2.69.0/24 is in Europe but has no subdivision; California is neither.
        let named = |policy: u32, ip: &str| {
            let ip: IpAddr = ip.parse().expect("ip");
            trees
                .locate(PolicyId(policy), ip)
                .expect("tree")
                .location
                .is_some()
        };
        assert!(named(0, "81.2.69.1") && !named(1, "81.2.69.1"));
        assert!(!named(0, "198.51.100.1") && !named(1, "198.51.100.1"));
    }
}
