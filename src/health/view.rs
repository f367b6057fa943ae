//! The health view the DNS path reads: one immutable value per probe and per pool, swapped
//! as a whole by the probers and the overrides API. Pure: no tokio, no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::clock::rfc3339_millis;
use crate::model::{Endpoint, Pool, PoolId, Snapshot};

/// State of one (address, check) pair (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// No result yet; counts as up.
    #[default]
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn is_up(self) -> bool {
        self != Health::Down
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// What the probers know of one probe, for the DNS path, explain and `/v1/status`.
#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    pub health: Health,
    /// Consecutive failures (0 after a pass).
    pub failures: u32,
    /// Consecutive passes (0 after a failure).
    pub passes: u32,
    /// Error of the last failed probe.
    pub last_error: Option<Arc<str>>,
    /// Duration of the last probe.
    pub last_rtt: Option<Duration>,
    /// When the last probe finished.
    pub last_at: Option<SystemTime>,
    /// Probes that passed since this (address, check) pair appeared.
    pub total_passes: u64,
    /// Probes that failed since this (address, check) pair appeared.
    pub total_failures: u64,
}

/// An operator's override of a pool (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    /// Up whatever the probes say; every endpoint is answered.
    Up,
    /// Down for answers.
    Down,
    /// Down for new answers, reported apart from `down`.
    Drain,
}

impl Override {
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Up => "up",
            Override::Down => "down",
            Override::Drain => "drain",
        }
    }
}

/// Overrides of single endpoints: (pool, index in `Pool::endpoints`).
pub type EndpointOverrides = BTreeMap<(PoolId, usize), Override>;

/// Health of every probe and override of every pool, indexed like the snapshot it was built
/// for. Built once per change and then only read: what the DNS path asks of it (is this pool
/// up, may this endpoint be answered) is worked out when it is built.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// By `ProbeId`.
    probes: Vec<ProbeStatus>,
    /// By `PoolId`.
    overrides: Vec<Option<Override>>,
    /// Usually empty; a pool's own override wins over its endpoints'.
    endpoint_overrides: EndpointOverrides,
    /// By `PoolId`: [`View::pool_up`] as built.
    pools_up: Box<[bool]>,
    /// [`View::endpoint_up`] as built: pool `p`'s endpoints from `endpoint_base[p]` on.
    endpoints_up: Box<[bool]>,
    endpoint_base: Box<[usize]>,
}

impl View {
    /// The view of `snap` with these probe results and overrides.
    pub fn new(
        snap: &Snapshot,
        probes: Vec<ProbeStatus>,
        overrides: Vec<Option<Override>>,
        endpoint_overrides: EndpointOverrides,
    ) -> View {
        let mut v = View {
            probes,
            overrides,
            endpoint_overrides,
            ..View::default()
        };
        let mut base = Vec::with_capacity(snap.pools.len());
        let mut endpoints = Vec::new();
        for (i, p) in snap.pools.iter().enumerate() {
            base.push(endpoints.len());
            let id = PoolId(i as u32);
            endpoints.extend(
                p.endpoints
                    .iter()
                    .enumerate()
                    .map(|(k, e)| v.endpoint_answerable(id, k, e)),
            );
        }
        v.endpoint_base = base.into();
        v.endpoints_up = endpoints.into();
        // Each pool from its endpoints' answers, just worked out.
        v.pools_up = (0..snap.pools.len())
            .map(|i| v.pool_answerable(snap, PoolId(i as u32)))
            .collect();
        v
    }

    /// Every probe unknown (so up), no overrides: `explain` offline, and the first view.
    pub fn unknown(snap: &Snapshot) -> View {
        View::new(
            snap,
            vec![ProbeStatus::default(); snap.probes.len()],
            vec![None; snap.pools.len()],
            EndpointOverrides::new(),
        )
    }

    /// The same probe results under other overrides.
    pub fn with_overrides(
        self,
        snap: &Snapshot,
        overrides: Vec<Option<Override>>,
        endpoint_overrides: EndpointOverrides,
    ) -> View {
        View::new(snap, self.probes, overrides, endpoint_overrides)
    }

    /// Probe results by `ProbeId`.
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    /// Pool overrides by `PoolId`.
    pub fn overrides(&self) -> &[Option<Override>] {
        &self.overrides
    }

    /// Endpoint overrides.
    pub fn endpoint_overrides(&self) -> &EndpointOverrides {
        &self.endpoint_overrides
    }

    pub fn override_of(&self, pool: PoolId) -> Option<Override> {
        self.overrides.get(pool.0 as usize).copied().flatten()
    }

    /// The probe state behind an endpoint; an endpoint without a check is always up.
    pub fn endpoint_health(&self, endpoint: &Endpoint) -> Health {
        match endpoint.probe {
            None => Health::Up,
            Some(id) => self
                .probes
                .get(id.0 as usize)
                .map_or(Health::Unknown, |p| p.health),
        }
    }

    /// The override of one endpoint (by its index in the pool).
    pub fn endpoint_override(&self, pool: PoolId, index: usize) -> Option<Override> {
        if self.endpoint_overrides.is_empty() {
            return None;
        }
        self.endpoint_overrides.get(&(pool, index)).copied()
    }

    /// Whether endpoint `index` of `pool` may be answered: the pool's override, else the
    /// endpoint's, else its probe.
    #[inline]
    pub fn endpoint_up(&self, pool: PoolId, index: usize, endpoint: &Endpoint) -> bool {
        match self
            .endpoint_base
            .get(pool.0 as usize)
            .and_then(|b| self.endpoints_up.get(b + index))
        {
            Some(up) => *up,
            // Not a pool of the snapshot this view was built for.
            None => self.endpoint_answerable(pool, index, endpoint),
        }
    }

    fn endpoint_answerable(&self, pool: PoolId, index: usize, endpoint: &Endpoint) -> bool {
        match self
            .override_of(pool)
            .or_else(|| self.endpoint_override(pool, index))
        {
            Some(Override::Up) => true,
            Some(Override::Down | Override::Drain) => false,
            None => self.endpoint_health(endpoint).is_up(),
        }
    }

    /// SPEC §3: up when the overrides allow it and at least `min_healthy` endpoints are up.
    #[inline]
    pub fn pool_up(&self, snap: &Snapshot, pool: PoolId) -> bool {
        match self.pools_up.get(pool.0 as usize) {
            Some(up) => *up,
            None => self.pool_answerable(snap, pool),
        }
    }

    fn pool_answerable(&self, snap: &Snapshot, pool: PoolId) -> bool {
        let p: &Pool = snap.pool(pool);
        match self.override_of(pool) {
            Some(Override::Up) => true,
            Some(Override::Down | Override::Drain) => false,
            None => {
                let up = p
                    .endpoints
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| self.endpoint_up(pool, *i, e))
                    .count();
                up as u64 >= u64::from(p.min_healthy.max(1)).min(p.endpoints.len() as u64)
                    && !p.endpoints.is_empty()
            }
        }
    }

    /// The status of the probe behind an endpoint (`None` without a check), with the
    /// address it probes.
    pub fn probe_of(&self, snap: &Snapshot, endpoint: &Endpoint) -> Option<(IpAddr, ProbeStatus)> {
        endpoint.probe.map(|id| {
            let status = self.probes.get(id.0 as usize).cloned().unwrap_or_default();
            (snap.probe(id).addr, status)
        })
    }

    /// An endpoint and the probe behind it, as `/v1/status` and `/v1/explain` show it.
    /// Without a check it is always up and has no results.
    pub fn endpoint_json(
        &self,
        snap: &Snapshot,
        pool: PoolId,
        index: usize,
        endpoint: &Endpoint,
    ) -> Value {
        let probe = self.probe_of(snap, endpoint);
        let status = probe.as_ref().map(|(_, s)| s);
        json!({
            "address": endpoint.addr.to_string(),
            "probe_address": probe.as_ref().map(|(addr, _)| addr.to_string()),
            "state": self.endpoint_health(endpoint).as_str(),
            "override": self.endpoint_override(pool, index).map(|o| o.as_str()),
            "answered": self.endpoint_up(pool, index, endpoint),
            "last_result": status.and_then(ProbeStatus::last_result),
            "last_error": status.and_then(|s| s.last_error.as_deref()),
            "last_rtt_ms": status.and_then(|s| s.last_rtt).map(rtt_ms),
            "last_at": status.and_then(|s| s.last_at).map(rfc3339_millis),
            "failures": status.map_or(0, |s| s.failures),
            "passes": status.map_or(0, |s| s.passes),
        })
    }
}

/// A probe round-trip time in milliseconds, to the microsecond.
pub fn rtt_ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl ProbeStatus {
    /// `"ok"` or `"fail"` for the latest probe, `None` before the first one. Streaks reset on
    /// the opposite result, so a probe that has finished has exactly one of them non-zero.
    pub fn last_result(&self) -> Option<&'static str> {
        self.last_at?;
        Some(if self.passes > 0 { "ok" } else { "fail" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a view worked out when built is what its rules say, under every mix of probe
    /// results and overrides tried (the DNS path reads only the built answers).
    #[test]
    fn built_answers_follow_probes_and_overrides() {
        let snap = crate::config::load_dir(&crate::config::LoadOptions {
            zones_dir: std::path::Path::new("zones"),
            previous: None,
        })
        .expect("the example zone loads");
        let states = [Health::Unknown, Health::Up, Health::Down];
        let pool_overrides = [
            None,
            Some(Override::Up),
            Some(Override::Down),
            Some(Override::Drain),
        ];
        let mut checked = 0;
        for round in 0..120usize {
            let probes: Vec<ProbeStatus> = (0..snap.probes.len())
                .map(|i| ProbeStatus {
                    health: states[(round / 3usize.pow(i as u32 % 4)) % 3],
                    ..ProbeStatus::default()
                })
                .collect();
            let overrides: Vec<Option<Override>> = (0..snap.pools.len())
                .map(|i| pool_overrides[(round + i) % 4].filter(|_| round % 5 == 0))
                .collect();
            let mut endpoint_overrides = EndpointOverrides::new();
            if round % 7 == 0 {
                endpoint_overrides.insert((PoolId(0), 1), Override::Down);
                endpoint_overrides.insert((PoolId(1), 0), Override::Up);
            }
            let v = View::new(&snap, probes, overrides, endpoint_overrides);
            for (i, p) in snap.pools.iter().enumerate() {
                let id = PoolId(i as u32);
                assert_eq!(v.pool_up(&snap, id), v.pool_answerable(&snap, id));
                for (k, e) in p.endpoints.iter().enumerate() {
                    assert_eq!(v.endpoint_up(id, k, e), v.endpoint_answerable(id, k, e));
                    checked += 1;
                }
                match v.override_of(id) {
                    Some(Override::Up) => assert!(v.pool_up(&snap, id)),
                    Some(Override::Down | Override::Drain) => assert!(!v.pool_up(&snap, id)),
                    None => {}
                }
            }
        }
        assert!(checked > 500, "{checked}");
        // A probe going down takes its pool down (min_healthy 1, every endpoint on one probe).
        let down = vec![
            ProbeStatus {
                health: Health::Down,
                ..ProbeStatus::default()
            };
            snap.probes.len()
        ];
        let v = View::new(
            &snap,
            down,
            vec![None; snap.pools.len()],
            EndpointOverrides::new(),
        );
        let checked_pools = snap
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.endpoints.iter().all(|e| e.probe.is_some()));
        for (i, _) in checked_pools {
            assert!(!v.pool_up(&snap, PoolId(i as u32)));
        }
        assert!(View::unknown(&snap).pool_up(&snap, PoolId(0)));
    }

    #[test]
    fn last_result_follows_the_streaks() {
        let mut s = ProbeStatus::default();
        assert_eq!(s.last_result(), None);
        s.last_at = Some(SystemTime::now());
        s.passes = 1;
        assert_eq!(s.last_result(), Some("ok"));
        s.passes = 0;
        s.failures = 2;
        assert_eq!(s.last_result(), Some("fail"));
    }
}
