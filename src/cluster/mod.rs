//! Several instances, one answer (SPEC §10): health verdicts and overrides shared through
//! etcd. The DNS path never sees any of this: the store loop (store.rs) keeps an in-memory
//! [`ClusterState`] fed by list-then-watch, and the control plane folds it into the health
//! view it publishes (`reload::Control`), so answering still reads one immutable world.
//!
//! ```text
//!  prober ──local statuses──► Control ──edges──► Cluster::desired ──put (lease)──► etcd
//!                               ▲                                                  │
//!                               └──── on_change ◄── ClusterState ◄── list + watch ─┘
//! ```
//!
//! While etcd has answered within two lease TTLs the effective health of each probe is the
//! check's quorum over the verdicts of the live instances (keys.rs, quorum.rs); after that the
//! instance says it is disconnected and follows its local verdicts and the last overrides it
//! knew, which stay mirrored in `state/overrides.json`.

pub mod keys;
pub mod quorum;
mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::clock::rfc3339_millis;
use crate::health::overrides::{OverrideEntry, PoolRef};
use crate::health::{Health, ProbeStatus};
use crate::model::{ProbeKey, Snapshot};
use crate::settings::ClusterSettings;

pub use keys::{InstanceValue, Keys, Verdict, probe_id};
pub use quorum::{Tally, decide};
pub use store::{OverrideWrite, WriteError};

/// Files of the zone directory read for the digest: far more than any real zone set, and a
/// bound on a directory that is not one.
const MAX_DIGEST_FILES: usize = 10_000;
/// Directory depth the digest follows (zones/, an include directory, one more).
const MAX_DIGEST_DEPTH: usize = 3;

/// What this instance knows of the cluster; replaced as a whole on every change.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// etcd answered within two lease TTLs.
    pub connected: bool,
    /// When `connected` last changed (start counts as a change to false).
    pub since: SystemTime,
    /// Live instances (their keys exist under their leases), this one included once
    /// published.
    pub instances: BTreeMap<String, InstanceValue>,
    /// By probe id, then instance.
    pub verdicts: BTreeMap<String, BTreeMap<String, Verdict>>,
    /// The shared overrides with the revision each was last written at.
    pub overrides: BTreeMap<PoolRef, (OverrideEntry, i64)>,
    /// Whether `overrides` came from etcd yet (else the local copy is the last known set).
    pub overrides_known: bool,
}

/// Counters of the store loop's recoveries, for metrics and the recovery tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub lease_grants: AtomicU64,
    pub relists: AtomicU64,
    pub watch_resumes: AtomicU64,
    pub compactions: AtomicU64,
}

/// The cluster side of one instance.
pub struct Cluster {
    pub settings: ClusterSettings,
    pub instance: String,
    pub keys: Keys,
    pub stats: Stats,
    state: ArcSwap<ClusterState>,
    /// Serialises writers of `state` (the loop and the admin API's own writes).
    writer: Mutex<()>,
    /// This instance's verdicts as they should be in etcd, by probe id.
    desired: Mutex<BTreeMap<String, Verdict>>,
    /// `desired` changed.
    wake: Notify,
    /// Called (from a blocking thread) after verdicts, instances, overrides or the
    /// connection changed.
    on_change: OnceLock<Box<dyn Fn() + Send + Sync>>,
    zones_digest: Mutex<String>,
    started: SystemTime,
    client: OnceLock<etcd_client::Client>,
    /// Monotonic origin of `last_ok_ms`.
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` of the last successful round trip with etcd.
    last_ok_ms: AtomicU64,
}

impl Cluster {
    /// A cluster handle, disconnected until the store loop reaches etcd.
    pub fn new(settings: ClusterSettings, instance: String, zones_dir: &Path) -> Arc<Cluster> {
        let now = SystemTime::now();
        Arc::new(Cluster {
            keys: Keys::new(&settings.prefix),
            settings,
            instance,
            stats: Stats::default(),
            state: ArcSwap::from_pointee(ClusterState {
                connected: false,
                since: now,
                instances: BTreeMap::new(),
                verdicts: BTreeMap::new(),
                overrides: BTreeMap::new(),
                overrides_known: false,
            }),
            writer: Mutex::new(()),
            desired: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            on_change: OnceLock::new(),
            zones_digest: Mutex::new(zones_digest(zones_dir)),
            started: now,
            client: OnceLock::new(),
            epoch: std::time::Instant::now(),
            last_ok_ms: AtomicU64::new(0),
        })
    }

    /// Where changes are reported (the control plane). Set once, before [`Cluster::spawn`].
    pub fn on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(f);
    }

    /// The store loop, to spawn; it ends (revoking the lease) when `stop` turns true.
    pub fn run(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        store::run(Arc::clone(self), stop)
    }

    /// The current state (one load; consistent in itself).
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.load_full()
    }

    /// After a reload: the digest other instances compare with theirs.
    pub fn zones_changed(&self, zones_dir: &Path) {
        *lock(&self.zones_digest) = zones_digest(zones_dir);
        self.wake.notify_one();
    }

    pub fn zones_digest(&self) -> String {
        lock(&self.zones_digest).clone()
    }

    /// Live instances whose zone directory differs from this one's.
    pub fn zone_mismatch(&self, state: &ClusterState) -> Vec<String> {
        let mine = self.zones_digest();
        state
            .instances
            .iter()
            .filter(|(name, v)| **name != self.instance && v.zones_digest != mine)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// New local statuses of `snap`'s probes: turn flips into verdicts (edge-triggered:
    /// a verdict is rewritten only when its state changes, not for every probe) and wake the
    /// store loop when there is something to write.
    pub fn local_changed(&self, snap: &Snapshot, local: &[ProbeStatus]) {
        let now = SystemTime::now();
        let mut desired = lock(&self.desired);
        let mut next = BTreeMap::new();
        for (key, status) in snap.probes.iter().zip(local) {
            let up = match status.health {
                Health::Unknown => continue,
                Health::Up => true,
                Health::Down => false,
            };
            let id = probe_id(key);
            let verdict = match desired.get(&id) {
                Some(v) if v.up == up => v.clone(),
                _ => Verdict {
                    up,
                    reason: if up {
                        None
                    } else {
                        status.last_error.as_deref().map(str::to_string)
                    },
                    rtt_ms: status.last_rtt.map(|d| d.as_micros() as f64 / 1000.0),
                    since: rfc3339_millis(now),
                    address: key.addr,
                },
            };
            next.insert(id, verdict);
        }
        if next != *desired {
            *desired = next;
            drop(desired);
            self.wake.notify_one();
        }
    }

    /// The effective statuses: `local` with each probe's health replaced by its check's
    /// quorum over the live instances, or `local` itself while disconnected.
    pub fn effective(&self, snap: &Snapshot, local: &[ProbeStatus]) -> Vec<ProbeStatus> {
        let state = self.state.load();
        if !state.connected {
            return local.to_vec();
        }
        snap.probes
            .iter()
            .zip(local)
            .map(|(key, status)| {
                let tally = decide(
                    key.check.quorum,
                    self.verdicts_of(&state, key, status)
                        .into_iter()
                        .map(|v| v.health),
                );
                let mut status = status.clone();
                if tally.result != Health::Unknown {
                    status.health = tally.result;
                }
                status
            })
            .collect()
    }

    /// Each live instance's verdict on `key` (this one's from its local status), this
    /// instance first.
    pub fn verdicts_of(
        &self,
        state: &ClusterState,
        key: &ProbeKey,
        own: &ProbeStatus,
    ) -> Vec<InstanceVerdict> {
        let mut out = vec![InstanceVerdict {
            instance: self.instance.clone(),
            health: own.health,
            reason: own.last_error.as_deref().map(str::to_string),
            rtt_ms: own.last_rtt.map(|d| d.as_micros() as f64 / 1000.0),
            since: None,
        }];
        if let Some(by_instance) = state.verdicts.get(&probe_id(key)) {
            for (name, v) in by_instance {
                if *name == self.instance || !state.instances.contains_key(name) {
                    continue;
                }
                out.push(InstanceVerdict {
                    instance: name.clone(),
                    health: if v.up { Health::Up } else { Health::Down },
                    reason: v.reason.clone(),
                    rtt_ms: v.rtt_ms,
                    since: Some(v.since.clone()),
                });
            }
        }
        out
    }

    /// Explain's and status's view of one probe: every verdict and the quorum's result.
    pub fn explain_probe(&self, key: &ProbeKey, own: &ProbeStatus) -> ProbeQuorum {
        let state = self.state.load();
        let verdicts = self.verdicts_of(&state, key, own);
        let tally = decide(key.check.quorum, verdicts.iter().map(|v| v.health));
        ProbeQuorum {
            connected: state.connected,
            quorum: key.check.quorum,
            verdicts,
            tally,
        }
    }

    /// Seconds since etcd last answered (for logs and status).
    fn since_ok(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed)))
    }

    fn mark_ok(&self) {
        self.last_ok_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Replace the state through `f` (one writer at a time); report a change that matters.
    fn update(&self, f: impl FnOnce(&mut ClusterState) -> bool) -> bool {
        let _w = lock(&self.writer);
        let mut next = (**self.state.load()).clone();
        let changed = f(&mut next);
        self.state.store(Arc::new(next));
        changed
    }

    /// Tell the control plane (blocking work: it may write the overrides file).
    async fn notify(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(f) = me.on_change.get() {
                f();
            }
        })
        .await;
    }
}

/// One instance's verdict on one probe, as explain shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceVerdict {
    pub instance: String,
    pub health: Health,
    pub reason: Option<String>,
    pub rtt_ms: Option<f64>,
    /// When the verdict was written (other instances only).
    pub since: Option<String>,
}

/// Every verdict on one probe and what the quorum made of them.
#[derive(Debug, Clone)]
pub struct ProbeQuorum {
    pub connected: bool,
    pub quorum: crate::model::Quorum,
    pub verdicts: Vec<InstanceVerdict>,
    pub tally: Tally,
}

impl ProbeQuorum {
    /// `ns1 up 1.2ms, ns2 down (status 503), ns3 down (status 503) -> down (2/3 down,
    /// majority)`.
    pub fn text(&self) -> String {
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|v| {
                let mut s = format!("{} {}", v.instance, v.health.as_str());
                if v.health == Health::Down
                    && let Some(r) = &v.reason
                {
                    s.push_str(&format!(" ({r})"));
                } else if let Some(rtt) = v.rtt_ms {
                    s.push_str(&format!(" {rtt:.1}ms"));
                }
                s
            })
            .collect();
        if !self.connected {
            return format!(
                "{} -> local view (cluster disconnected)",
                verdicts.first().cloned().unwrap_or_default()
            );
        }
        format!(
            "{} -> {} ({}/{} down, quorum {} needs {})",
            verdicts.join(", "),
            self.tally.result.as_str(),
            self.tally.down,
            self.tally.reporting,
            self.quorum.text(),
            self.tally.needed
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "connected": self.connected,
            "quorum": self.quorum.text(),
            "down": self.tally.down,
            "reporting": self.tally.reporting,
            "needed": self.tally.needed,
            "result": if self.connected { self.tally.result.as_str() } else { "local" },
            "verdicts": self.verdicts.iter().map(|v| serde_json::json!({
                "instance": v.instance,
                "state": v.health.as_str(),
                "reason": v.reason,
                "rtt_ms": v.rtt_ms,
                "since": v.since,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A digest of every file under the zone directory (names and contents, sorted), so that
/// instances can tell whether they serve the same zones. FNV-1a over the bytes: a change
/// detector, not a security boundary.
pub fn zones_digest(dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(dir, dir, 0, &mut files);
    files.sort();
    let mut h = keys::fnv1a(b"");
    for (rel, path) in files {
        let data = std::fs::read(&path).unwrap_or_default();
        for part in [rel.as_bytes(), &[0], &data, &[0]] {
            h = part.iter().fold(h, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        }
    }
    format!("{h:016x}")
}

fn collect_files(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, std::path::PathBuf)>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if out.len() >= MAX_DIGEST_FILES {
            return;
        }
        let path = e.path();
        let name = e.file_name();
        // Editors' and tools' hidden files are not zones.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() && depth < MAX_DIGEST_DEPTH => {
                collect_files(root, &path, depth + 1, out)
            }
            Ok(t) if t.is_file() => {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, path));
            }
            _ => {}
        }
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
