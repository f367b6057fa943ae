//! The scheduler: one tokio task per distinct (probe address, check) pair of the current
//! snapshot, probing it every `interval` with bounded parallelism, feeding state.rs and
//! handing the statuses to a sink (the app turns them into a `health::View`).
//!
//! Each key is probed at once when it appears, then at a random phase within its interval,
//! then every interval from there, so 2,000 keys on a 2 s interval spread evenly instead of
//! firing together. At most [`MAX_CONCURRENT_PROBES`] probes run at once. The sink is called
//! when something worth publishing changed (a flip, a streak moving towards one, a new
//! error), coalesced over [`PUBLISH_DEBOUNCE`], and otherwise at most every
//! [`REFRESH_PERIOD`] so `/v1/status` shows recent RTTs and times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustc_hash::FxBuildHasher;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::health::probe::{Clients, ProbeResult};
use crate::health::state::{self, Change};
use crate::health::view::{Health, ProbeStatus};
use crate::model::{CheckKind, CheckSpec, ProbeKey, Snapshot};

/// Receives the statuses of every probe, indexed by `ProbeId` of the current snapshot.
pub type Sink = Arc<dyn Fn(Vec<ProbeStatus>) + Send + Sync>;

/// SPEC §5 "bounded parallelism": enough to keep 2,000 keys at a 2 s interval on time when
/// probes take ~10 ms (64 × 2 s / 10 ms ≫ 2,000), few enough to cap sockets and memory
/// when every backend hangs until its timeout.
pub const MAX_CONCURRENT_PROBES: usize = 64;

/// Major changes (a flip, a new error) of several probes in this window go out in one call.
pub const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(50);

/// Minor changes (RTT, time, counters of a steady probe) go out at most this often.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(1);

/// Publishes in a row when reloads keep overtaking the sink; the next tick catches up anyway.
const MAX_REPUBLISH: usize = 3;

/// Floor of a check's interval, so a hand-built zero interval cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Upper bounds (seconds) of the probe duration histogram, Prometheus style: from a loopback
/// connect (sub-ms) to the longest sensible timeout.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Runs the probes of one snapshot at a time; see the module doc.
pub struct Prober {
    shared: Arc<Shared>,
    publisher: JoinHandle<()>,
}

/// Probe results and durations for `/metrics`, one entry per check label.
#[derive(Debug, Clone, Default)]
pub struct ProbeStats {
    /// Sorted by label.
    pub checks: Vec<CheckStats>,
}

#[derive(Debug, Clone)]
pub struct CheckStats {
    /// The check's name (`web`), or `http:8053/healthz` when no pool names it: see
    /// [`check_labels`].
    pub label: String,
    pub kind: CheckKind,
    pub ok: u64,
    pub fail: u64,
    pub duration: Histogram,
}

/// A Prometheus histogram: `counts[i]` observations took at most `bounds[i]` seconds
/// (cumulative); `count` is the `+Inf` bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub count: u64,
    /// Seconds.
    pub sum: f64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            bounds: DURATION_BUCKETS,
            counts: vec![0; DURATION_BUCKETS.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if secs <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// The metrics label of every check of `snapshot`: its name in the zones (`web`; names joined
/// with `+` when zones name one check differently), else kind, port and path
/// (`http:8053/healthz`). One pass over the pools, so 10,000 pools cost 10,000 steps, not
/// 10,000 per probe key.
pub fn check_labels(snapshot: &Snapshot) -> HashMap<&CheckSpec, String> {
    let mut names: HashMap<&CheckSpec, std::collections::BTreeSet<&str>> = HashMap::new();
    for pool in &snapshot.pools {
        if let Some(spec) = pool.check.as_deref() {
            let set = names.entry(spec).or_default();
            set.extend(pool.check_name.as_deref());
        }
    }
    let mut labels: HashMap<&CheckSpec, String> = names
        .into_iter()
        .filter(|(_, set)| !set.is_empty())
        .map(|(spec, set)| (spec, set.into_iter().collect::<Vec<_>>().join("+")))
        .collect();
    for key in &snapshot.probes {
        labels
            .entry(&key.check)
            .or_insert_with(|| unnamed_label(&key.check));
    }
    labels
}

fn unnamed_label(spec: &CheckSpec) -> String {
    match spec.kind {
        CheckKind::Tcp => format!("tcp:{}", spec.port),
        k => format!("{}:{}{}", k.as_str(), spec.port, spec.path),
    }
}

impl Prober {
    /// Start probing every key of `snapshot` (the first probe of each runs at once). Must be
    /// called inside a tokio runtime; the tasks run on it. Statuses start as
    /// `ProbeStatus::default()` (unknown), like `View::unknown`.
    ///
    /// The sink is called from a prober task, never under a prober lock.
    pub fn start(snapshot: Arc<Snapshot>, sink: Sink) -> Prober {
        Prober::start_with(snapshot, sink, Clients::new())
    }

    /// [`Prober::start`] with prepared clients (`--probe-source`).
    pub fn start_with(snapshot: Arc<Snapshot>, sink: Sink, clients: Clients) -> Prober {
        let runtime = Handle::current();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                snapshot: Arc::new(Snapshot::default()),
                keys: HashMap::default(),
                dirty: None,
                next_gen: 0,
                epoch: 0,
            }),
            clients,
            permits: Semaphore::new(MAX_CONCURRENT_PROBES),
            stats: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            sink,
            runtime: runtime.clone(),
        });
        shared.reconfigure(snapshot);
        let publisher = runtime.spawn(publish_loop(Arc::clone(&shared)));
        Prober { shared, publisher }
    }

    /// Switch to a new snapshot: keys that still exist (by value, never by position) keep
    /// their state and schedule, keys that are gone stop, new keys are probed at once.
    /// Returns the statuses for `snapshot`, to publish together with it.
    ///
    /// No prober lock is held while the sink runs (the caller may hold its own lock around
    /// this call and inside the sink), so a sink call built just before this call can still
    /// arrive just after it; the publisher then sends fresh statuses for `snapshot` at once.
    /// A sink should drop a vector whose length differs from its current snapshot's probes.
    pub fn reconfigure(&self, snapshot: Arc<Snapshot>) -> Vec<ProbeStatus> {
        self.shared.reconfigure(snapshot)
    }

    /// Probe counts and durations per check label, for `/metrics`. Labels stay once seen,
    /// as Prometheus counters must.
    pub fn stats(&self) -> ProbeStats {
        let stats = lock(&self.shared.stats);
        let mut checks: Vec<CheckStats> = stats.values().map(|s| lock(s).clone()).collect();
        checks.sort_by(|a, b| a.label.cmp(&b.label));
        ProbeStats { checks }
    }

    /// The statuses of the current snapshot, as the sink last saw them or newer.
    pub fn statuses(&self) -> Vec<ProbeStatus> {
        lock(&self.shared.state).statuses()
    }

    /// Stop every probe task and the publisher, and wait for them to end.
    pub async fn shutdown(self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut state = lock(&self.shared.state);
            state.keys.drain().map(|(_, slot)| slot.task).collect()
        };
        self.publisher.abort();
        for task in &tasks {
            task.abort();
        }
        // Err(cancelled) is the expected end of each.
        let _ = self.publisher.await;
        for task in tasks {
            let _ = task.await;
        }
    }
}

struct Shared {
    state: Mutex<State>,
    clients: Clients,
    permits: Semaphore,
    /// By check label; each task keeps its own `Arc` so a probe does not hash the label.
    stats: Mutex<HashMap<String, Arc<Mutex<CheckStats>>>>,
    /// A major change is waiting to be published.
    wake: Notify,
    sink: Sink,
    runtime: Handle,
}

struct State {
    snapshot: Arc<Snapshot>,
    /// Fx, not SipHash: every probe result and every publish looks keys up here, a key
    /// hashes a whole check (path, headers ...), and keys come from the operator's zones.
    keys: HashMap<ProbeKey, Slot, FxBuildHasher>,
    /// The largest change not yet published.
    dirty: Option<Change>,
    next_gen: u64,
    /// Bumped by every reconfigure, to catch a sink call that raced one.
    epoch: u64,
}

/// One key's status and task. `generation` tells a task still finishing its last probe
/// after removal from the task of the same key added again later.
struct Slot {
    status: ProbeStatus,
    generation: u64,
    task: JoinHandle<()>,
}

impl State {
    fn statuses(&self) -> Vec<ProbeStatus> {
        self.snapshot
            .probes
            .iter()
            .map(|k| {
                self.keys
                    .get(k)
                    .map(|s| s.status.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Shared {
    fn reconfigure(self: &Arc<Self>, snapshot: Arc<Snapshot>) -> Vec<ProbeStatus> {
        let mut state = lock(&self.state);
        let edited = edited_checks(&state.snapshot, &snapshot);
        let mut old = std::mem::take(&mut state.keys);
        let mut keys = HashMap::with_capacity_and_hasher(snapshot.probes.len(), FxBuildHasher);
        let labels = check_labels(&snapshot);
        for key in &snapshot.probes {
            if keys.contains_key(key) {
                continue;
            }
            let slot = match old.remove(key) {
                Some(slot) => slot,
                None => {
                    state.next_gen += 1;
                    let label = labels
                        .get(&*key.check)
                        .cloned()
                        .unwrap_or_else(|| unnamed_label(&key.check));
                    let mut slot = self.spawn(key.clone(), state.next_gen, label);
                    let before = edited.get(key).and_then(|k| old.get(k).or(keys.get(k)));
                    if let Some(before) = before {
                        slot.status = carried(&before.status);
                    }
                    slot
                }
            };
            keys.insert(key.clone(), slot);
        }
        for (_, gone) in old {
            gone.task.abort();
        }
        drop(labels);
        state.keys = keys;
        state.snapshot = snapshot;
        state.dirty = None;
        state.epoch += 1;
        state.statuses()
    }

    fn spawn(self: &Arc<Self>, key: ProbeKey, generation: u64, label: String) -> Slot {
        let stats = self.stats_of(&key.check, label);
        let task = self
            .runtime
            .spawn(probe_loop(Arc::clone(self), key, generation, stats));
        Slot {
            status: ProbeStatus::default(),
            generation,
            task,
        }
    }

    fn stats_of(&self, spec: &CheckSpec, label: String) -> Arc<Mutex<CheckStats>> {
        let mut stats = lock(&self.stats);
        let entry = stats.entry(label.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(CheckStats {
                label,
                kind: spec.kind,
                ok: 0,
                fail: 0,
                duration: Histogram::new(),
            }))
        });
        Arc::clone(entry)
    }

    fn record(&self, key: &ProbeKey, generation: u64, result: &ProbeResult, label: &str) {
        let mut state = lock(&self.state);
        let Some(slot) = state
            .keys
            .get_mut(key)
            .filter(|s| s.generation == generation)
        else {
            return;
        };
        let before = slot.status.health;
        let change = state::record(&mut slot.status, &key.check, result, SystemTime::now());
        let flip = (slot.status.health != before).then(|| Flip {
            from: before,
            status: slot.status.clone(),
        });
        let major = change == Change::Major;
        state.dirty = state.dirty.max(Some(change));
        let endpoints = flip.as_ref().map(|_| endpoints_of(&state.snapshot, key));
        drop(state);
        if major {
            self.wake.notify_one();
        }
        if let (Some(flip), Some(endpoints)) = (flip, endpoints) {
            log_flip(key, label, &endpoints, &flip, result);
        }
    }

    /// Hand the statuses to the sink if anything changed. When a reconfigure overtook the
    /// call, publish again for the new snapshot (bounded: reloads are rare).
    fn publish(&self) {
        for _ in 0..MAX_REPUBLISH {
            let (statuses, epoch) = {
                let mut state = lock(&self.state);
                if state.dirty.take().is_none() {
                    return;
                }
                (state.statuses(), state.epoch)
            };
            (self.sink)(statuses);
            let mut state = lock(&self.state);
            if state.epoch == epoch {
                return;
            }
            state.dirty = Some(Change::Major);
        }
    }
}

/// An endpoint's state changed with the result just recorded.
struct Flip {
    from: Health,
    status: ProbeStatus,
}

/// Every up/down change goes to the log with its reason: the probe's failure for a fall, the
/// run of passes for a rise.
fn log_flip(key: &ProbeKey, label: &str, endpoints: &str, flip: &Flip, result: &ProbeResult) {
    let s = &flip.status;
    let rtt_ms = crate::health::view::rtt_ms(result.rtt);
    match s.health {
        Health::Down => {
            let reason = result.error.as_deref().unwrap_or("failed");
            tracing::warn!(
                probe = %key.addr,
                check = label,
                endpoints,
                from = flip.from.as_str(),
                reason,
                failures = s.failures,
                "endpoint down: {reason} ({} failed probes in a row, fall {})",
                s.failures,
                key.check.fall.max(1)
            );
        }
        Health::Up => tracing::info!(
            probe = %key.addr,
            check = label,
            endpoints,
            from = flip.from.as_str(),
            rtt_ms,
            passes = s.passes,
            "endpoint up: {} passed probes in a row (rise {}), the last in {rtt_ms} ms",
            s.passes,
            key.check.rise.max(1)
        ),
        Health::Unknown => {}
    }
}

/// The endpoints a probe key stands for, as `pool address` (zone origin first when the
/// snapshot has several zones), for log lines. Runs only on a state change.
fn endpoints_of(snap: &Snapshot, key: &ProbeKey) -> String {
    let Some(id) = snap.probes.iter().position(|k| k == key) else {
        return String::new();
    };
    let mut out = Vec::new();
    for pool in &snap.pools {
        for e in pool
            .endpoints
            .iter()
            .filter(|e| e.probe.is_some_and(|p| p.0 as usize == id))
        {
            match snap.zones.len() {
                1 => out.push(format!("{} {}", pool.name, e.addr)),
                _ => out.push(format!(
                    "{} {} {}",
                    snap.zone(pool.zone).origin,
                    pool.name,
                    e.addr
                )),
            }
        }
    }
    out.join(", ")
}

/// Keys whose check was edited (same zone, check name and probe address, other settings):
/// new key → old key. SPEC §5: a reload keeps the state of every (address, check) pair that
/// still exists, also when the check's settings were edited.
fn edited_checks(old: &Snapshot, new: &Snapshot) -> HashMap<ProbeKey, ProbeKey> {
    let old_by_name = named_probes(old);
    named_probes(new)
        .into_iter()
        .filter_map(|(name, key)| {
            let before = old_by_name.get(&name)?;
            (*before != key).then(|| (key, before.clone()))
        })
        .collect()
}

/// Every probe by (zone origin, check name, probe address).
fn named_probes(snap: &Snapshot) -> HashMap<(&str, &str, std::net::IpAddr), ProbeKey> {
    let mut out = HashMap::new();
    for pool in &snap.pools {
        let Some(check) = pool.check_name.as_deref() else {
            continue;
        };
        let Some(zone) = snap.zones.get(pool.zone.0 as usize) else {
            continue;
        };
        for id in pool.endpoints.iter().filter_map(|e| e.probe) {
            let key = snap.probe(id);
            out.insert((zone.origin.as_str(), check, key.addr), key.clone());
        }
    }
    out
}

/// The status an edited check starts from: the last verdict and what led to it, with the
/// streaks reset (they counted results of the old settings).
fn carried(before: &ProbeStatus) -> ProbeStatus {
    ProbeStatus {
        health: before.health,
        last_error: before.last_error.clone(),
        last_rtt: before.last_rtt,
        last_at: before.last_at,
        ..ProbeStatus::default()
    }
}

/// Probe one key forever: at once, then at a random phase, then every interval.
async fn probe_loop(
    shared: Arc<Shared>,
    key: ProbeKey,
    generation: u64,
    stats: Arc<Mutex<CheckStats>>,
) {
    let mut target = shared.clients.target(key.addr, &key.check);
    let label = lock(&stats).label.clone();
    let interval = key.check.interval.max(MIN_INTERVAL);
    let mut next = Instant::now();
    let mut first = true;
    loop {
        tokio::time::sleep_until(next).await;
        let result = {
            let _permit = shared
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            target.run().await
        };
        {
            let mut s = lock(&stats);
            if result.ok {
                s.ok += 1;
            } else {
                s.fail += 1;
            }
            s.duration.observe(result.rtt);
        }
        shared.record(&key, generation, &result, &label);
        next = if first {
            first = false;
            Instant::now() + random_phase(interval)
        } else {
            // Start to start; when a probe overran its slot, skip the missed ones.
            (next + interval).max(Instant::now())
        };
    }
}

fn random_phase(interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(rand::rng().random_range(0..nanos))
}

async fn publish_loop(shared: Arc<Shared>) {
    loop {
        let woken = tokio::time::timeout(REFRESH_PERIOD, shared.wake.notified())
            .await
            .is_ok();
        if woken {
            tokio::time::sleep(PUBLISH_DEBOUNCE).await;
        }
        shared.publish();
    }
}

/// A poisoned lock only means another probe task panicked; the data is still consistent
/// (every update is a few field writes), so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count, 3);
        assert_eq!(h.counts[0], 1); // ≤ 1 ms
        assert_eq!(h.counts[4], 2); // ≤ 50 ms
        assert_eq!(*h.counts.last().expect("buckets"), 2); // ≤ 10 s
        assert!((h.sum - 60.0305).abs() < 1e-9);
    }

    #[test]
    fn random_phase_stays_within_the_interval() {
        for _ in 0..100 {
            assert!(random_phase(Duration::from_millis(5)) < Duration::from_millis(5));
        }
    }
}
