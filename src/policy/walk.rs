//! The walk from a policy to a pool: evaluate targets (pools, or nested policies), apply the
//! policy's fallback, and fail open when nothing at all is up (SPEC §3).

use std::time::SystemTime;

use super::replay::{Read, Reads};
use super::scope::Scope;
use super::{Client, Ctx, Outcome, Trace, geo, latency, locate, weighted};
use crate::geo::{Locate, Located, Location, RuleTargets};
use crate::health::Health;
use crate::model::{
    Coords, Fallback, MAX_POLICY_DEPTH, PolicyId, PolicyKind, PoolId, Target, ZoneId,
};

/// Nested policies deeper than this are cut off (`check` rejects cycles and deeper chains;
/// this only bounds the damage of a bug).
const MAX_DEPTH: usize = MAX_POLICY_DEPTH;

/// Mean Earth radius in km (IUGG), for great-circle distances.
const EARTH_RADIUS_KM: f64 = 6371.0;

pub(super) struct Walker<'c, 'a, L: Locate + ?Sized, T: Trace> {
    pub(super) ctx: &'c Ctx<'a, L>,
    pub(super) client: Client,
    pub(super) seed: u64,
    pub(super) trace: &'c mut T,
    located: Option<Located>,
    pub(super) scope: Scope,
    pub(super) order_seed: u64,
    pub(super) sticky_order: bool,
    pub(super) uses_seed: bool,
    /// The reads of the client that can be replayed for another client.
    pub(super) reads: Reads,
    pub(super) depth: usize,
}

impl<'c, 'a, L: Locate + ?Sized, T: Trace> Walker<'c, 'a, L, T> {
    pub(super) fn new(ctx: &'c Ctx<'a, L>, client: Client, seed: u64, trace: &'c mut T) -> Self {
        Walker {
            ctx,
            client,
            seed,
            trace,
            located: None,
            scope: Scope::default(),
            order_seed: seed,
            sticky_order: false,
            uses_seed: false,
            reads: Reads::default(),
            depth: 0,
        }
    }

    /// The policy asked by name: its choice, else the all-down rule.
    pub(super) fn top(&mut self, id: PolicyId) -> Outcome {
        if let Some(pool) = self.choose_policy(id) {
            return Outcome::Pool {
                pool,
                fail_open: false,
            };
        }
        let policy = self.ctx.snap.policy(id);
        if policy.fallback == Fallback::Servfail {
            self.note("servfail", || {
                "nothing is up: SERVFAIL (fallback = \"servfail\")".into()
            });
            return Outcome::Servfail;
        }
        // Total even for shapes `check` rejects (no target at all): SERVFAIL, never a panic.
        let Some(pool) = self.fail_open_pool(Target::Policy(id), 0) else {
            self.note("servfail", || {
                "nothing is up and no target to fail open to".into()
            });
            return Outcome::Servfail;
        };
        let name = &self.ctx.snap.pool(pool).name;
        self.note("fail-open", || {
            format!("nothing is up: failing open to {name} (every endpoint answered)")
        });
        Outcome::Pool {
            pool,
            fail_open: true,
        }
    }

    /// The up pool a policy chooses, its fallback included; `None` when it is down.
    pub(super) fn choose_policy(&mut self, id: PolicyId) -> Option<PoolId> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        let policy = self.ctx.snap.policy(id);
        self.note("policy", || {
            format!("policy {} ({})", policy.name, policy.kind.as_str())
        });
        self.depth += 1;
        let chosen = match &policy.kind {
            PolicyKind::Failover(targets) => self.first_up(targets),
            PolicyKind::Weighted { targets, sticky } => {
                weighted::choose(self, &policy.name, targets, *sticky)
            }
            PolicyKind::Latency { targets, table } => {
                latency::choose(self, targets, table.as_deref())
            }
            PolicyKind::Geo(rules) => geo::choose(self, id, rules, policy.fallback),
        };
        let chosen = match (chosen, policy.fallback) {
            (None, Fallback::Nearest) => self.nearest(policy.zone),
            (c, _) => c,
        };
        self.depth -= 1;
        chosen
    }

    /// A target's up pool, or `None` when it is down.
    pub(super) fn eval(&mut self, target: Target) -> Option<PoolId> {
        match target {
            Target::Pool(pool) => {
                let up = self.ctx.health.pool_up(self.ctx.snap, pool);
                self.note_pool(pool, up);
                up.then_some(pool)
            }
            Target::Policy(id) => self.choose_policy(id),
        }
    }

    /// Failover: the first target that is up.
    pub(super) fn first_up(&mut self, targets: &[Target]) -> Option<PoolId> {
        for &t in targets {
            if let Some(pool) = self.eval(t) {
                self.note_chosen(pool);
                return Some(pool);
            }
        }
        None
    }

    /// `fallback = "nearest"`: the up pool of the zone nearest the client.
    fn nearest(&mut self, zone: ZoneId) -> Option<PoolId> {
        let Some(from) = self.client_coords() else {
            self.note("fallback", || {
                "fallback nearest: client has no coordinates".into()
            });
            return None;
        };
        let snap = self.ctx.snap;
        let best = snap
            .zone(zone)
            .pools
            .iter()
            .copied()
            .filter_map(|p| Some((p, snap.pool(p).location?)))
            .filter(|(p, _)| self.ctx.health.pool_up(snap, *p))
            .map(|(p, at)| (p, distance_km(from, at)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((pool, km)) => {
                let name = &snap.pool(pool).name;
                self.note("fallback", || {
                    format!("fallback nearest: {name} ({km:.0} km)")
                });
                Some(pool)
            }
            None => {
                self.note("fallback", || {
                    "fallback nearest: no up pool with a location".into()
                });
                None
            }
        }
    }

    /// The all-down rule: the first target's pool (following nested policies); `None` only
    /// for shapes `check` rejects (a policy without targets, nesting past [`MAX_DEPTH`]).
    fn fail_open_pool(&mut self, target: Target, depth: usize) -> Option<PoolId> {
        match target {
            Target::Pool(p) => Some(p),
            Target::Policy(_) if depth >= MAX_DEPTH => None,
            Target::Policy(id) => {
                let policy = self.ctx.snap.policy(id);
                let first = match &policy.kind {
                    PolicyKind::Failover(t) | PolicyKind::Latency { targets: t, .. } => {
                        t.first().copied()
                    }
                    PolicyKind::Weighted { targets, .. } => targets.first().map(|(t, _)| *t),
                    PolicyKind::Geo(rules) => geo::first_matched_target(self, id, rules),
                }?;
                self.fail_open_pool(first, depth + 1)
            }
        }
    }

    /// The client's GeoIP record, looked up once per walk. Reading it makes the answer
    /// depend on the database network around the client (for a miss, the empty region
    /// around it), so the scope takes that network's prefix.
    pub(super) fn location(&mut self) -> Option<Location> {
        let located = self.located();
        self.read_client(located.prefix_len);
        located.location
    }

    /// A read of the client that is not replayed: constant over `prefix`.
    pub(super) fn read_client(&mut self, prefix: u8) {
        self.scope.widen(prefix);
        self.reads.opaque();
    }

    /// Geo policy `policy`'s cidr rule that matches the client, if any.
    pub(super) fn cidr_rule<'r>(
        &mut self,
        policy: PolicyId,
        rules: &'r crate::model::GeoRules,
    ) -> Option<(&'r ipnet::IpNet, &'r Vec<Target>)> {
        let (entry, scope) = rules.cidr.lookup_index(self.client.addr.to_canonical());
        // The trie's scope covers the rules around the client, matched or not: inside it
        // every address has this same match (an outer rule is cut by the more specific
        // rules in it).
        self.scope.widen(scope);
        self.reads.note(Read::Cidr { policy, entry });
        let (net, targets) = rules.cidr.entries().get(entry? as usize)?;
        Some((net, targets))
    }

    fn located(&mut self) -> Located {
        *self
            .located
            .get_or_insert_with(|| locate(self.ctx.geo, self.client.addr))
    }

    /// What geo policy `policy`'s rules see of the client: through the policy's own tree
    /// when it has one (a location its rules treat as they treat the client's, over the
    /// widest prefix where they do), else the whole record. The scope takes the prefix
    /// read. A traced walk (explain) matches the rules against the client's own record,
    /// which gives the same answer, so that it names the client's own codes.
    pub(super) fn rule_location(&mut self, policy: PolicyId) -> Option<Location> {
        match self
            .ctx
            .geo
            .locate_for(policy, self.client.addr.to_canonical())
        {
            Some(seen) => {
                self.read_client(seen.prefix_len);
                if T::ON {
                    return self.located().location;
                }
                seen.location
            }
            None => self.location(),
        }
    }

    /// What geo policy `policy`'s subdivision, country and continent rules match for the
    /// client, found with its tree's class (the scope takes the class's prefix); `None`
    /// without a tree, and in a traced walk, which matches the rules against
    /// [`Walker::rule_location`] to name the client's own codes.
    pub(super) fn rule_targets(&mut self, policy: PolicyId) -> Option<RuleTargets<'a>> {
        if T::ON {
            return None;
        }
        let geo: &'a L = self.ctx.geo;
        let c = geo.rule_targets(policy, self.client.addr.to_canonical())?;
        self.scope.widen(c.prefix_len);
        self.reads.note(Read::Tree {
            policy,
            class: c.class,
        });
        Some(c.targets)
    }

    /// The client's coordinates, from its GeoIP record.
    pub(super) fn client_coords(&mut self) -> Option<Coords> {
        self.location()?.coords
    }

    pub(super) fn note(&mut self, kind: &'static str, text: impl FnOnce() -> String) {
        if T::ON {
            self.trace.step(self.depth, kind, text());
        }
    }

    pub(super) fn note_chosen(&mut self, pool: PoolId) {
        if T::ON {
            let name = &self.ctx.snap.pool(pool).name;
            self.trace
                .step(self.depth, "chosen", format!("{name}: chosen"));
        }
    }

    /// A candidate pool with its state, as explain shows it.
    pub(super) fn note_pool(&mut self, pool: PoolId, up: bool) {
        if T::ON {
            let text = pool_state(self.ctx, pool, up, self.trace.now());
            self.trace.step(self.depth, "candidate", text);
        }
    }
}

/// `eu-west: down (2 failures, last: connection refused, 4s ago)`.
fn pool_state<L: Locate + ?Sized>(
    ctx: &Ctx<'_, L>,
    pool: PoolId,
    up: bool,
    now: SystemTime,
) -> String {
    let p = ctx.snap.pool(pool);
    let mut text = format!("{}: {}", p.name, if up { "up" } else { "down" });
    if let Some(o) = ctx.health.override_of(pool) {
        text.push_str(&format!(" (override {})", o.as_str()));
        return text;
    }
    let mut worst = None;
    let (mut n_up, mut n_unknown) = (0, 0);
    let mut n_pinned = 0;
    for (i, e) in p.endpoints.iter().enumerate() {
        if ctx.health.endpoint_up(pool, i, e) {
            n_up += 1;
        }
        if ctx.health.endpoint_override(pool, i).is_some() {
            n_pinned += 1;
        } else if ctx.health.endpoint_health(e) == Health::Unknown {
            n_unknown += 1;
        }
        if let Some(id) = e.probe {
            let s = &ctx.health.probes()[id.0 as usize];
            if s.failures > 0 && worst.is_none_or(|(f, _)| s.failures > f) {
                worst = Some((s.failures, s));
            }
        }
    }
    let total = p.endpoints.len();
    text.push_str(&format!(" ({n_up}/{total} endpoints up"));
    if n_unknown > 0 {
        text.push_str(&format!(", {n_unknown} not probed yet"));
    }
    if n_pinned > 0 {
        text.push_str(&format!(", {n_pinned} overridden"));
    }
    if let Some((failures, s)) = worst {
        text.push_str(&format!(", {failures} failures"));
        if let Some(err) = &s.last_error {
            text.push_str(&format!(", last: {err}"));
        }
        if let Some(ago) = s.last_at.and_then(|at| now.duration_since(at).ok()) {
            text.push_str(&format!(", {}s ago", ago.as_secs()));
        }
    }
    text.push(')');
    text
}

/// Great-circle distance (haversine).
pub(super) fn distance_km(a: Coords, b: Coords) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_great_circle() {
        let dublin = Coords {
            lat: 53.35,
            lon: -6.26,
        };
        let ashburn = Coords {
            lat: 39.04,
            lon: -77.49,
        };
        let km = distance_km(dublin, ashburn);
        assert!((5400.0..5600.0).contains(&km), "{km}");
        assert_eq!(distance_km(dublin, dublin), 0.0);
    }
}
