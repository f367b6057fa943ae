//! Each geo policy's own decision tree: the compiled trie projected onto what the policy
//! does with each place (gdnsd compiles one tree per map the same way). Places whose matched
//! rules make the walk try the same targets in the same order are one class, so their
//! neighbourhoods merge: the tree is a few MiB where the whole trie is tens, and the depth
//! of its leaf is the widest prefix over which the answer is the same in every health
//! state: the ECS scope of the answer (issue 9).
//!
//! Built with the world (at start and on the reload thread, never on a DNS worker) for
//! each distinct set of rules; policies with the same rules share one tree.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::trie::GeoTrie;
use super::{GeoDb, Located, Location, RuleClass, RuleTargets};
use crate::model::{Fallback, GeoRules, PolicyId, PolicyKind, Snapshot, Target};

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
    /// Per tree, per class: the targets of the subdivision, country and continent rules the
    /// class matches, found once here instead of in three maps per query.
    levels: Box<[Box<[OwnedTargets]>]>,
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
        let mut levels = Vec::new();
        let mut by_key: FxHashMap<RuleKey, u32> = FxHashMap::default();
        let (mut bytes, mut skipped) = (0, 0);
        for (slot, policy) in of_policy.iter_mut().zip(&snap.policies) {
            let PolicyKind::Geo(rules) = &policy.kind else {
                continue;
            };
            let key = RuleKey::of(rules, policy.fallback);
            if let Some(&tree) = by_key.get(&key) {
                *slot = tree;
                continue;
            }
            if trees.len() >= max_trees {
                skipped += 1;
                continue;
            }
            let tree = whole.project(key.projection());
            if bytes + tree.bytes() > max_bytes {
                skipped += 1;
                continue;
            }
            bytes += tree.bytes();
            let index = trees.len() as u32;
            levels.push(key.levels_of(&tree));
            trees.push(tree);
            by_key.insert(key, index);
            *slot = index;
        }
        PolicyTrees {
            of_policy: of_policy.into_boxed_slice(),
            trees: trees.into_boxed_slice(),
            levels: levels.into_boxed_slice(),
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

    /// What geo policy `policy`'s rules match at `ip`: the targets of its subdivision,
    /// country and continent rules, as [`RuleKey::matched`] finds them for the location of
    /// [`PolicyTrees::locate`], with the same prefix, and the tree's class there. `None`
    /// when the policy has no tree. Allocation-free.
    #[inline]
    pub fn rule_targets(&self, policy: PolicyId, ip: IpAddr) -> Option<RuleClass<'_>> {
        let tree = *self.of_policy.get(policy.0 as usize)? as usize;
        let (class, prefix_len) = self.trees.get(tree)?.classify(ip);
        let levels = self.levels.get(tree)?.get(class as usize)?;
        Some(RuleClass {
            targets: levels.each_ref().map(|t| t.as_deref()),
            prefix_len,
            class,
        })
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

/// One geo policy's rules by level, sorted by code, with what its walk does after a matched
/// level fails: policies with equal keys share a tree.
#[derive(PartialEq, Eq, Hash)]
struct RuleKey {
    /// `fallback = "next"`: the walk goes on down the matched levels and the default.
    next: bool,
    /// `CC-XX` keys.
    subdivisions: Vec<(String, Vec<Target>)>,
    countries: Vec<([u8; 2], Vec<Target>)>,
    continents: Vec<([u8; 2], Vec<Target>)>,
    default: Option<Vec<Target>>,
}

/// [`RuleTargets`] kept with a tree, one per class.
type OwnedTargets = [Option<Box<[Target]>>; 3];

/// What a policy's walk does for the places of one location, whatever is up: the targets
/// it tries in order, and the first target of the most specific matched level (the all-down
/// rule fails open through it). Places with equal signatures get the same answer in every
/// health state.
#[derive(PartialEq, Eq, Hash)]
struct Signature {
    tried: Vec<Target>,
    first: Option<Target>,
}

impl RuleKey {
    fn of(rules: &GeoRules, fallback: Fallback) -> RuleKey {
        fn sorted<K: Ord + Clone>(map: &FxHashMap<K, Vec<Target>>) -> Vec<(K, Vec<Target>)> {
            let mut v: Vec<(K, Vec<Target>)> =
                map.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
            v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            v
        }
        RuleKey {
            next: fallback == Fallback::Next,
            subdivisions: sorted(&rules.subdivision),
            countries: sorted(&rules.country),
            continents: sorted(&rules.continent),
            default: rules.default.clone(),
        }
    }

    /// The targets of the subdivision, country and continent rules `l` matches, as the
    /// walk's `level_matches` finds them.
    fn matched(&self, l: &Location) -> RuleTargets<'_> {
        fn find<'k, K: Ord + ?Sized, Q: std::borrow::Borrow<K>>(
            rules: &'k [(Q, Vec<Target>)],
            key: &K,
        ) -> Option<&'k [Target]> {
            let i = rules.binary_search_by(|r| r.0.borrow().cmp(key)).ok()?;
            Some(&rules[i].1)
        }
        let subdivision = match (l.country, l.subdivision) {
            (Some(cc), Some(sub)) => {
                let mut buf = [0; 6];
                find::<str, String>(&self.subdivisions, sub.key(cc, &mut buf))
            }
            _ => None,
        };
        let country = l.country.and_then(|cc| find(&self.countries, &cc));
        let continent = l.continent.and_then(|c| find(&self.continents, &c));
        [subdivision, country, continent]
    }

    /// The rules each class of `tree` (built from this key's projection) matches.
    fn levels_of(&self, tree: &GeoTrie) -> Box<[OwnedTargets]> {
        tree.classes()
            .iter()
            .map(|class| match class {
                Some(l) => self.matched(l).map(|t| t.map(Box::from)),
                None => [None, None, None],
            })
            .collect()
    }

    /// `l` with only the codes its `matched` rules name (the country kept for a named
    /// subdivision, whose key includes it), without coordinates; `None` when no rule applies.
    /// Matching the result finds the same rules as matching `l`.
    fn keep(l: &Location, [subdivision, country, continent]: RuleTargets<'_>) -> Option<Location> {
        let subdivision = subdivision.and(l.subdivision);
        let country = l
            .country
            .filter(|_| subdivision.is_some() || country.is_some());
        let continent = continent.and(l.continent);
        (country.is_some() || continent.is_some()).then_some(Location {
            country,
            subdivision,
            continent,
            coords: None,
            prefix_len: 0,
            asn: None,
        })
    }

    /// What the walk (`policy::geo::choose` and `first_matched_target`) does with a place
    /// whose subdivision, country and continent rules are `matched`.
    fn signature(&self, [a, b, c]: RuleTargets<'_>) -> Signature {
        let levels = [a, b, c, self.default.as_deref()];
        let mut matched = levels.into_iter().flatten();
        let first = matched.clone().find_map(|t| t.first().copied());
        let tried = if self.next {
            let mut tried: Vec<Target> = Vec::new();
            for t in matched.flatten() {
                if !tried.contains(t) {
                    tried.push(*t);
                }
            }
            tried
        } else {
            matched.next().map(<[Target]>::to_vec).unwrap_or_default()
        };
        Signature { tried, first }
    }

    /// The tree's view of a location: one representative location per signature (the
    /// first met), `None` for the signature of no location, so that places the rules treat
    /// alike merge, with the database's gaps too.
    fn projection(&self) -> impl FnMut(&Location) -> Option<Location> + '_ {
        let none = self.signature([None; 3]);
        let mut representative: FxHashMap<Signature, Location> = FxHashMap::default();
        move |l| {
            let matched = self.matched(l);
            let signature = self.signature(matched);
            if signature == none {
                return None;
            }
            let kept = RuleKey::keep(l, matched)?;
            Some(*representative.entry(signature).or_insert(kept))
        }
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
    fn policies_with_the_same_rules_share_a_tree_and_the_bounds_hold() {
        const COUNTRIES: [&str; 20] = [
            "GB", "SE", "US", "IN", "JP", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PL",
            "PT", "IE", "DK", "NO", "FI", "CZ",
        ];
        assert!(COUNTRIES.len() >= MAX_POLICY_TREES + 2);
        // p0 and p1 have the same rules; each later one names another country.
        let mut policies = String::new();
        let codes = std::iter::once("GB").chain(COUNTRIES.iter().copied());
        for (i, code) in codes.take(MAX_POLICY_TREES + 3).enumerate() {
            policies.push_str(&format!(
                "[policies.p{i:02}]\ngeo.country = {{ {code} = \"a\" }}\ngeo.default = \"b\"\n"
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
    #[test]
    fn places_the_rules_treat_alike_share_a_leaf() {
        let snap = snapshot(
            "[policies.eu]\ngeo.continent = { EU = \"a\" }\ngeo.default = \"b\"\n\
             [policies.eugb]\ngeo.continent = { EU = \"a\" }\ngeo.country = { GB = \"a\" }\n\
             geo.default = \"b\"\n\
             [policies.cab]\ngeo.subdivision = { \"US-CA\" = \"b\" }\ngeo.default = \"b\"\n\
             [policies.cab_next]\ngeo.subdivision = { \"US-CA\" = \"b\" }\n\
             geo.country = { US = \"a\" }\ngeo.default = \"b\"\nfallback = \"next\"\n\
             [policies.ca_next]\ngeo.subdivision = { \"US-CA\" = \"a\" }\n\
             geo.country = { US = \"b\" }\ngeo.default = \"a\"\nfallback = \"next\"\n",
        );
        let db = db();
        let trees = PolicyTrees::build(&snap, Some(&db));
        let id = |name: &str| {
            snap.find_policy(crate::model::ZoneId(0), name)
                .expect("policy")
        };
        let at = |policy: &str, ip: &str| {
            trees
                .locate(id(policy), ip.parse().expect("ip"))
                .expect("tree")
        };
        // GB is in Europe and goes where Europe goes: naming it changes nothing, so the two
        // policies get trees of the same shape, and a GB client the same scope.
        let tree = |policy: &str| &trees.trees[trees.of_policy[id(policy).0 as usize] as usize];
        assert_eq!(tree("eu").bytes(), tree("eugb").bytes());
        for ip in ["203.0.113.1", "81.2.69.1", "198.51.100.1", "192.0.2.250"] {
            assert_eq!(at("eu", ip).prefix_len, at("eugb", ip).prefix_len, "{ip}");
        }
        // California goes where the default goes: one leaf over the whole address space.
        let ca = at("cab", "198.51.100.1");
        assert_eq!((ca.location, ca.prefix_len), (None, 0));
        // With fallback next, California tries b then a, the rest of the US a then b, and
        // elsewhere b: three outcomes.
        let ca = at("cab_next", "198.51.100.1").location.expect("matched");
        assert!(ca.subdivision.is_some());
        assert!(at("cab_next", "198.51.100.200").location.is_some());
        // Here California tries a then b, the US b then a, elsewhere a: none alike either.
        assert!(at("ca_next", "198.51.100.1").location.is_some());
        assert!(at("ca_next", "81.2.69.1").location.is_none());
    }

    /// The rules a class's targets come from are the rules its location matches, at the
    /// same prefix, for every kind of place the test database holds and for misses.
    #[test]
    fn a_class_gives_the_targets_of_the_rules_its_location_matches() {
        let snap = snapshot(
            "[policies.www]\ngeo.continent = { EU = [\"a\", \"b\"], AS = \"b\" }\n\
             geo.country = { IN = \"b\" }\ngeo.subdivision = { \"US-CA\" = \"a\" }\n\
             geo.default = \"a\"\n\
             [policies.next]\ngeo.subdivision = { \"GB-ENG\" = \"b\" }\n\
             geo.country = { GB = \"a\", US = \"b\" }\ngeo.continent = { EU = \"b\" }\n\
             fallback = \"next\"\n",
        );
        let db = db();
        let trees = PolicyTrees::build(&snap, Some(&db));
        let mut ips: Vec<IpAddr> = (0..=255u8)
            .flat_map(|a| [[a, 0, 0, 1], [a, 128, 7, 200]])
            .map(IpAddr::from)
            .collect();
        for ip in [
            "203.0.113.1",
            "203.0.113.200",
            "81.2.69.1",
            "198.51.100.1",
            "198.51.100.200",
            "192.0.2.250",
            "2001:db8::1",
            "::1",
        ] {
            ips.push(ip.parse().expect("ip"));
        }
        let mut matched = 0;
        for (i, policy) in snap.policies.iter().enumerate() {
            let PolicyKind::Geo(rules) = &policy.kind else {
                continue;
            };
            let key = RuleKey::of(rules, policy.fallback);
            let id = PolicyId(i as u32);
            for &ip in &ips {
                let seen = trees.locate(id, ip).expect("tree");
                let RuleClass {
                    targets,
                    prefix_len,
                    ..
                } = trees.rule_targets(id, ip).expect("tree");
                let want = seen.location.map_or([None; 3], |l| key.matched(&l));
                assert_eq!((targets, prefix_len), (want, seen.prefix_len), "{ip}");
                matched += usize::from(targets.iter().any(Option::is_some));
            }
        }
        assert!(matched >= 4, "the addresses reach some rules: {matched}");
    }
}
