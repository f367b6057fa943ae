//! `[policies.*]` → [`Policy`]: targets resolved into ids, kinds and options checked, and
//! reference cycles between policies found.

use std::collections::HashMap;
use std::sync::Arc;

use toml::de::DeTable;

use super::compile::{Builder, PolicyName, PoolName, ZoneCx};
use super::diag::{FileCx, Span};
use super::latency;
use super::raw::{self, Value};
use super::values;
use crate::model::{
    Fallback, GeoRules, LatencyTable, MAX_MESSAGE, MAX_POLICY_DEPTH, Policy, PolicyId, PolicyKind,
    PoolId, Target, smallest_answer,
};
use crate::prefix::PrefixMap;

const POLICY_KEYS: &[&str] = &[
    "failover",
    "weighted",
    "latency",
    "geo",
    "ttl",
    "max_answers",
    "sticky",
    "fallback",
    "publish",
    "latency_table",
];
const KINDS: &[&str] = &["failover", "weighted", "latency", "geo"];
const GEO_KEYS: &[&str] = &["continent", "country", "subdivision", "cidr", "default"];
/// SPEC §2: addresses of the chosen pool beyond this are dropped.
const DEFAULT_MAX_ANSWERS: usize = 8;

/// Every `[policies.*]` of the zone, added to the snapshot in file order.
pub(crate) fn compile_policies(
    t: &DeTable<'_>,
    zc: &ZoneCx,
    pools: &[PoolName],
    b: &mut Builder<'_>,
    cx: &mut FileCx<'_>,
) -> Vec<PolicyName> {
    let entries = raw::entries(t);
    let base = b.snap.policies.len();
    let mut r = Resolver {
        zc,
        pools: pools
            .iter()
            .map(|p| (p.name.to_ascii_lowercase(), p.id))
            .collect(),
        policies: HashMap::new(),
        has_location: pools
            .iter()
            .map(|p| (p.id, b.snap.pool(p.id).location.is_some()))
            .collect(),
        tables: HashMap::new(),
        edges: vec![Vec::new(); entries.len()],
        base,
        current: 0,
        name: String::new(),
    };
    for (i, (k, _)) in entries.iter().enumerate() {
        let id = PolicyId((base + i) as u32);
        if r.policies
            .insert(k.get_ref().to_ascii_lowercase(), id)
            .is_some()
        {
            let what = k.get_ref();
            cx.err(
                &k.span(),
                format!("policy \"{what}\" is written twice (names are case-insensitive)"),
            );
        }
    }
    let mut out = Vec::new();
    for (i, (key, v)) in entries.iter().enumerate() {
        let name = key.get_ref().to_string();
        r.current = i;
        r.name = name.clone();
        let policy = match raw::table(v, &format!("[policies.{name}]"), cx) {
            Some(table) => r.policy(table, &key.span(), cx),
            None => placeholder(&name, zc),
        };
        let owner = if policy.publish {
            zc.owner(&name)
                .map_err(|e| cx.err(&key.span(), format!("policy \"{name}\": {e}")))
                .ok()
        } else {
            None
        };
        out.push(PolicyName {
            name,
            span: key.span(),
            owner,
            id: PolicyId((base + i) as u32),
            publish: policy.publish,
        });
        b.snap.policies.push(policy);
    }
    r.find_cycles(&out, cx);
    check_answer_sizes(&out, b, cx);
    if let Some((span, path)) = &zc.latency_table
        && !r.tables.contains_key(path)
    {
        // Checked even when no latency policy uses it yet.
        latency::load(path, span, zc, &r.pools, cx);
    }
    out
}

/// A published policy's largest answer must fit a DNS message: `max_answers` addresses, or
/// all of a reachable pool's addresses of one family when fewer (RFC 1035 §4.2.2).
fn check_answer_sizes(names: &[PolicyName], b: &Builder<'_>, cx: &mut FileCx<'_>) {
    let snap = &b.snap;
    for p in names {
        let Some(owner) = &p.owner else { continue };
        let policy = snap.policy(p.id);
        let mut largest = 0;
        for pool in reachable_pools(snap, p.id) {
            let addrs = &snap.pool(pool).endpoints;
            let v6 = addrs.iter().filter(|e| e.addr.is_ipv6()).count();
            for (count, len) in [(addrs.len() - v6, 4), (v6, 16)] {
                let n = count.min(policy.max_answers);
                largest = largest.max(smallest_answer(owner, std::iter::repeat_n(len, n)));
            }
        }
        if largest > MAX_MESSAGE {
            cx.err(
                &p.span,
                format!(
                    "policy \"{}\": its largest answer is {largest} bytes; a DNS message holds at most {MAX_MESSAGE} (RFC 1035 §4.2.2): lower `max_answers`",
                    p.name
                ),
            );
        }
    }
}

/// Every pool a policy may answer from, through nested policies (each visited once).
fn reachable_pools(snap: &crate::model::Snapshot, id: PolicyId) -> Vec<PoolId> {
    let mut pools = Vec::new();
    let mut seen = vec![id];
    let mut todo = vec![id];
    while let Some(id) = todo.pop() {
        let targets = snap.policy(id).kind.targets();
        for t in targets {
            match t {
                Target::Pool(p) if !pools.contains(&p) => pools.push(p),
                Target::Policy(q) if !seen.contains(&q) => {
                    seen.push(q);
                    todo.push(q);
                }
                _ => {}
            }
        }
    }
    pools
}

/// Stands in for a policy that could not be read, so that ids stay in step.
fn placeholder(name: &str, zc: &ZoneCx) -> Policy {
    Policy {
        name: name.to_owned(),
        zone: zc.zone,
        kind: PolicyKind::Failover(Vec::new()),
        ttl: zc.policy_ttl,
        max_answers: DEFAULT_MAX_ANSWERS,
        fallback: Fallback::None,
        publish: false,
    }
}

/// Resolves target names of one zone's policies and records the policy → policy edges.
struct Resolver<'z> {
    zc: &'z ZoneCx,
    pools: HashMap<String, PoolId>,
    policies: HashMap<String, PolicyId>,
    has_location: HashMap<PoolId, bool>,
    /// Latency tables by path as written, loaded once per zone.
    tables: HashMap<String, Option<Arc<LatencyTable>>>,
    /// Per policy (index from `base`): the policies it names, with where.
    edges: Vec<Vec<(usize, Span)>>,
    base: usize,
    current: usize,
    name: String,
}

impl Resolver<'_> {
    fn policy(&mut self, t: &DeTable<'_>, at: &Span, cx: &mut FileCx<'_>) -> Policy {
        let name = self.name.clone();
        raw::check_keys(t, POLICY_KEYS, &format!("[policies.{name}]"), cx);
        let mut policy = placeholder(&name, self.zc);
        let kinds: Vec<_> = raw::entries(t)
            .into_iter()
            .filter(|(k, _)| KINDS.contains(&k.get_ref().as_ref()))
            .collect();
        let kind = match kinds[..] {
            [] => {
                cx.err(
                    at,
                    format!(
                        "policy \"{name}\" has no kind: set one of failover, weighted, latency, geo"
                    ),
                );
                None
            }
            [(k, v)] => Some((k.get_ref().as_ref(), k.span(), v)),
            [(first, _), (second, _), ..] => {
                cx.err(
                    &second.span(),
                    format!(
                        "policy \"{name}\" has two kinds, {} and {}; a policy has exactly one",
                        first.get_ref(),
                        second.get_ref()
                    ),
                );
                None
            }
        };
        let opt = |key: &str| raw::get(t, key);
        if let Some((_, v)) = opt("ttl") {
            policy.ttl = raw::u32_(v, "ttl", cx).unwrap_or(policy.ttl);
        }
        if let Some((_, v)) = opt("max_answers") {
            policy.max_answers = raw::int_in(v, "max_answers", 1, 65535, cx)
                .map_or(DEFAULT_MAX_ANSWERS, |n| n as usize);
        }
        policy.publish = opt("publish")
            .map_or(Some(true), |(_, v)| raw::boolean(v, "publish", cx))
            .unwrap_or(true);
        let sticky = opt("sticky").and_then(|(k, v)| raw::boolean(v, "sticky", cx).map(|s| (k, s)));
        let table = opt("latency_table").and_then(|(_, v)| {
            raw::string(v, "latency_table", cx).map(|s| (v.span(), s.to_owned()))
        });
        let Some((kind, kind_span, v)) = kind else {
            return policy;
        };
        if let (Some((k, _)), false) = (&sticky, kind == "weighted") {
            cx.err(
                k,
                format!("policy \"{name}\": `sticky` applies only to weighted policies"),
            );
        }
        if let (Some((span, _)), false) = (&table, kind == "latency") {
            cx.err(
                span,
                format!("policy \"{name}\": `latency_table` applies only to latency policies"),
            );
        }
        policy.kind = match kind {
            "failover" => PolicyKind::Failover(self.targets(v, kind, &kind_span, cx)),
            "weighted" => PolicyKind::Weighted {
                targets: self.weighted(v, &kind_span, cx),
                sticky: sticky.is_some_and(|(_, s)| s),
            },
            "latency" => self.latency(v, &kind_span, table, cx),
            _ => PolicyKind::Geo(self.geo(v, &kind_span, cx)),
        };
        policy.fallback =
            match matches!(policy.kind, PolicyKind::Geo(_) | PolicyKind::Latency { .. }) {
                true => Fallback::Nearest,
                false => Fallback::None,
            };
        if let Some((_, v)) = opt("fallback") {
            policy.fallback = match raw::string(v, "fallback", cx) {
                Some("nearest") => Fallback::Nearest,
                Some("next") => Fallback::Next,
                Some("none") => Fallback::None,
                Some("servfail") => Fallback::Servfail,
                Some(other) => {
                    cx.err(&v.span(), format!("policy \"{name}\": bad fallback \"{other}\": use nearest, next, none or servfail"));
                    policy.fallback
                }
                None => policy.fallback,
            };
        }
        policy
    }

    /// One target name → the pool or policy it names.
    fn target(&mut self, s: &str, span: &Span, cx: &mut FileCx<'_>) -> Option<Target> {
        let lower = s.to_ascii_lowercase();
        if let Some(id) = self.pools.get(&lower) {
            return Some(Target::Pool(*id));
        }
        if let Some(id) = self.policies.get(&lower) {
            self.edges[self.current].push((id.0 as usize - self.base, span.clone()));
            return Some(Target::Policy(*id));
        }
        cx.err(
            span,
            format!(
                "policy \"{}\": target \"{s}\" names no pool or policy",
                self.name
            ),
        );
        None
    }

    /// One target or a list of them (non-empty).
    fn targets(&mut self, v: &Value<'_>, key: &str, at: &Span, cx: &mut FileCx<'_>) -> Vec<Target> {
        match raw::strings(v, key, cx) {
            Some(items) => self.resolve_all(items, key, at, cx),
            None => Vec::new(),
        }
    }

    fn resolve_all(
        &mut self,
        items: Vec<(Span, &str)>,
        key: &str,
        at: &Span,
        cx: &mut FileCx<'_>,
    ) -> Vec<Target> {
        if items.is_empty() {
            cx.err(
                at,
                format!("policy \"{}\": `{key}` has no targets", self.name),
            );
        }
        items
            .into_iter()
            .filter_map(|(span, s)| self.target(s, &span, cx))
            .collect()
    }

    /// `weighted = { target = weight }`: non-negative integers, not all 0.
    fn weighted(&mut self, v: &Value<'_>, at: &Span, cx: &mut FileCx<'_>) -> Vec<(Target, u32)> {
        let Some(t) = raw::table(v, "weighted", cx) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut weights_ok = true;
        for (k, w) in raw::entries(t) {
            let target = self.target(k.get_ref(), &k.span(), cx);
            let weight = match raw::int_of(w.get_ref()) {
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
                _ => {
                    weights_ok = false;
                    cx.err(
                        &w.span(),
                        format!(
                            "policy \"{}\": the weight of \"{}\" must be a non-negative integer",
                            self.name,
                            k.get_ref()
                        ),
                    );
                    continue;
                }
            };
            out.extend(target.map(|t| (t, weight)));
        }
        if t.is_empty() {
            cx.err(
                at,
                format!("policy \"{}\": `weighted` has no targets", self.name),
            );
        } else if weights_ok && out.iter().all(|(_, w)| *w == 0) && !out.is_empty() {
            cx.err(at, format!("policy \"{}\": all weights are 0", self.name));
        }
        out
    }

    fn latency(
        &mut self,
        v: &Value<'_>,
        at: &Span,
        table: Option<(Span, String)>,
        cx: &mut FileCx<'_>,
    ) -> PolicyKind {
        let items = raw::strings(v, "latency", cx).unwrap_or_default();
        for (span, s) in &items {
            let pool = self.pools.get(&s.to_ascii_lowercase());
            if pool.is_some_and(|id| !self.has_location[id]) {
                let name = &self.name;
                cx.err(
                    span,
                    format!("policy \"{name}\": latency over a pool without location: pool \"{s}\" has no `location`"),
                );
            }
        }
        let targets = self.resolve_all(items, "latency", at, cx);
        let table = table
            .or_else(|| self.zc.latency_table.clone())
            .and_then(|(span, path)| {
                if !self.tables.contains_key(&path) {
                    let loaded = latency::load(&path, &span, self.zc, &self.pools, cx);
                    self.tables.insert(path.clone(), loaded);
                }
                self.tables[&path].clone()
            });
        PolicyKind::Latency { targets, table }
    }

    fn geo(&mut self, v: &Value<'_>, at: &Span, cx: &mut FileCx<'_>) -> GeoRules {
        let mut rules = GeoRules::default();
        let mut cidr = Vec::new();
        let Some(t) = raw::table(v, "geo", cx) else {
            return rules;
        };
        // The all-down rule answers from the first target of some rule: a geo policy
        // needs at least one (an empty map is a mistake too, so it is named).
        if !GEO_KEYS.iter().any(|k| raw::get(t, k).is_some()) {
            cx.err(
                at,
                format!(
                    "policy \"{}\": `geo` has no rules: give at least one of default, cidr, subdivision, country, continent",
                    self.name
                ),
            );
        }
        raw::check_keys(t, GEO_KEYS, &format!("geo of policy \"{}\"", self.name), cx);
        if let Some((k, v)) = raw::get(t, "default") {
            rules.default = Some(self.targets(v, "geo.default", &k, cx));
        }
        for key in ["continent", "country", "subdivision", "cidr"] {
            let Some((map, table)) = raw::get(t, key)
                .and_then(|(_, v)| raw::table(v, &format!("geo.{key}"), cx).map(|t| (v.span(), t)))
            else {
                continue;
            };
            if table.is_empty() {
                cx.err(
                    &map,
                    format!("policy \"{}\": `geo.{key}` has no rules", self.name),
                );
            }
            for (code, v) in raw::entries(table) {
                let targets = self.targets(v, &format!("geo.{key}"), &code.span(), cx);
                let c = code.get_ref().as_ref();
                let parsed = match key {
                    "continent" => {
                        values::parse_continent(c).map(|c| drop(rules.continent.insert(c, targets)))
                    }
                    "country" => {
                        values::parse_country(c).map(|c| drop(rules.country.insert(c, targets)))
                    }
                    "subdivision" => values::parse_subdivision(c)
                        .map(|c| drop(rules.subdivision.insert(c, targets))),
                    _ => values::parse_cidr(c).map(|c| cidr.push((c, targets))),
                };
                if let Err(e) = parsed {
                    cx.err(&code.span(), format!("policy \"{}\": {e}", self.name));
                }
            }
        }
        rules.cidr = PrefixMap::new(cidr);
        rules
    }

    /// Report every reference cycle between the zone's policies once, at the reference
    /// that closes it, and every policy whose chain of nested policies is deeper than the
    /// walk follows. Iterative, so that a long chain cannot overflow the stack of `check`.
    fn find_cycles(&self, names: &[PolicyName], cx: &mut FileCx<'_>) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let n = self.edges.len();
        let mut mark = vec![Mark::New; n];
        // Policies in the longest chain from each one, itself included.
        let mut depth = vec![1usize; n];
        let mut cycles = false;
        for root in 0..n {
            if mark[root] != Mark::New {
                continue;
            }
            // (policy, index of its next edge): the path from `root`.
            let mut stack = vec![(root, 0usize)];
            mark[root] = Mark::OnPath;
            while let Some((u, next)) = stack.last_mut() {
                let u = *u;
                let Some((v, span)) = self.edges[u].get(*next) else {
                    stack.pop();
                    mark[u] = Mark::Done;
                    let below = self.edges[u].iter().map(|(v, _)| depth[*v]).max();
                    depth[u] = 1 + below.unwrap_or(0);
                    continue;
                };
                *next += 1;
                match mark[*v] {
                    Mark::New => {
                        mark[*v] = Mark::OnPath;
                        stack.push((*v, 0));
                    }
                    Mark::OnPath => {
                        let from = stack
                            .iter()
                            .position(|(p, _)| p == v)
                            .expect("a policy on the path is in it");
                        let cycle: Vec<&str> = stack[from..]
                            .iter()
                            .map(|(i, _)| *i)
                            .chain([*v])
                            .map(|i| names[i].name.as_str())
                            .collect();
                        cx.err(
                            span,
                            format!(
                                "policy \"{}\": reference cycle between policies: {}",
                                names[u].name,
                                cycle.join(" -> ")
                            ),
                        );
                        cycles = true;
                    }
                    Mark::Done => {}
                }
            }
        }
        if cycles {
            return;
        }
        // Once per over-long chain: at the policy one step past the limit.
        for (u, d) in depth.iter().enumerate() {
            if *d == MAX_POLICY_DEPTH + 1 {
                cx.err(
                    &names[u].span,
                    format!(
                        "policy \"{}\": starts a chain of {d} nested policies; at most {MAX_POLICY_DEPTH} are followed",
                        names[u].name
                    ),
                );
            }
        }
    }
}
