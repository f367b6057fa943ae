//! `geo`: the most specific rule wins: cidr, subdivision, country, continent, default.

use super::Trace;
use super::walk::Walker;
use crate::geo::{Locate, Location, code_str};
use crate::model::{Fallback, GeoRules, PolicyId, PoolId, Snapshot, Target};

/// One matched level of the chain, most specific first.
struct Matched<'r> {
    level: &'static str,
    key: MatchKey,
    targets: &'r [Target],
}

#[derive(Clone, Copy)]
enum MatchKey {
    Cidr(ipnet::IpNet),
    Code([u8; 2]),
    Subdivision([u8; 2], crate::geo::Subdivision),
    None,
}

/// The levels a policy tree's class gives targets for, in [`crate::geo::RuleTargets`] order.
const LEVELS: [&str; 3] = ["subdivision", "country", "continent"];

/// Walk the matched levels; with `fallback = "next"` go on down the chain.
pub(super) fn choose<L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, '_, L, T>,
    id: PolicyId,
    rules: &GeoRules,
    fallback: Fallback,
) -> Option<PoolId> {
    let mut chain = [None, None, None, None, None];
    matches(w, id, rules, fallback == Fallback::Next, &mut chain);
    if chain.iter().all(Option::is_none) {
        w.note("rule", || "no rule matches".into());
    }
    let snap = w.ctx.snap;
    for m in chain.iter().flatten() {
        w.note("rule", || {
            let key = key_text(m.key);
            let sep = if key.is_empty() { "" } else { " " };
            format!("{}{sep}{key} -> {}", m.level, targets_text(snap, m.targets))
        });
        if let Some(pool) = w.first_up(m.targets) {
            return Some(pool);
        }
        if fallback != Fallback::Next {
            break;
        }
        w.note("fallback", || "fallback next".into());
    }
    None
}

/// The first target of the most specific matched value, for the all-down rule; `None` only
/// for rules `check` rejects (no rule, or a rule without targets).
pub(super) fn first_matched_target<L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, '_, L, T>,
    id: PolicyId,
    rules: &GeoRules,
) -> Option<Target> {
    let mut chain = [None, None, None, None, None];
    matches(w, id, rules, false, &mut chain);
    let first = |t: &[Target]| t.first().copied();
    chain
        .iter()
        .flatten()
        .find_map(|m| first(m.targets))
        .or_else(|| rules.default.as_deref().and_then(first))
        .or_else(|| rules.cidr.entries().iter().find_map(|c| first(&c.1)))
        .or_else(|| rules.country.values().find_map(|v| first(v)))
        .or_else(|| rules.continent.values().find_map(|v| first(v)))
        .or_else(|| rules.subdivision.values().find_map(|v| first(v)))
}

/// The chain of matches: [cidr, subdivision, country, continent, default], written into the
/// caller's all-`None` array: returned by value, its 280 octets were copied once per query
/// (a `memcpy` that was 4% of a worker's time with a random /24 per query).
fn matches<'a: 'r, 'r, L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, 'a, L, T>,
    id: PolicyId,
    rules: &'r GeoRules,
    go_on: bool,
    chain: &mut [Option<Matched<'r>>; 5],
) {
    let cidr = w.cidr_rule(id, rules);
    if let Some((net, targets)) = cidr {
        chain[0] = Some(Matched {
            level: "cidr",
            key: MatchKey::Cidr(*net),
            targets,
        });
    }
    // A matched cidr rule decides alone unless the walk may go on down the chain.
    if cidr.is_none() || go_on {
        if let Some(targets) = w.rule_targets(id) {
            for ((slot, level), targets) in chain[1..4].iter_mut().zip(LEVELS).zip(targets) {
                *slot = targets.map(|targets| Matched {
                    level,
                    key: MatchKey::None,
                    targets,
                });
            }
        } else if let Some(loc) = w.rule_location(id) {
            level_matches(rules, &loc, chain);
        }
    }
    if let Some(d) = &rules.default {
        chain[4] = Some(Matched {
            level: "default",
            key: MatchKey::None,
            targets: d,
        });
    }
}

fn level_matches<'r>(rules: &'r GeoRules, loc: &Location, chain: &mut [Option<Matched<'r>>; 5]) {
    if let (Some(cc), Some(sub)) = (loc.country, loc.subdivision) {
        let mut buf = [0u8; 6];
        let key = sub.key(cc, &mut buf);
        if let Some(t) = rules.subdivision.get(key) {
            chain[1] = Some(Matched {
                level: "subdivision",
                key: MatchKey::Subdivision(cc, sub),
                targets: t,
            });
        }
    }
    if let Some(cc) = loc.country
        && let Some(t) = rules.country.get(&cc)
    {
        chain[2] = Some(Matched {
            level: "country",
            key: MatchKey::Code(cc),
            targets: t,
        });
    }
    if let Some(ct) = loc.continent
        && let Some(t) = rules.continent.get(&ct)
    {
        chain[3] = Some(Matched {
            level: "continent",
            key: MatchKey::Code(ct),
            targets: t,
        });
    }
}

fn key_text(key: MatchKey) -> String {
    match key {
        MatchKey::Cidr(net) => net.to_string(),
        MatchKey::Code(c) => code_str(&c).to_string(),
        MatchKey::Subdivision(cc, sub) => format!("{}-{}", code_str(&cc), sub.as_str()),
        MatchKey::None => String::new(),
    }
}

fn targets_text(snap: &Snapshot, targets: &[Target]) -> String {
    let names: Vec<&str> = targets.iter().map(|t| snap.target_name(*t)).collect();
    format!("[{}]", names.join(", "))
}
