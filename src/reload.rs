//! The control plane: every write to the world goes through [`Control`]. A reload compiles
//! the zones (and reopens the GeoIP database) beside the serving world and swaps all of it
//! or none; health results and overrides publish new views of the same snapshot. Writers
//! are serialised by one lock that the DNS path never takes.
//!
//! A reload stays off the DNS path: it compiles on a thread of its own at a lower priority
//! (on two cores the DNS workers win), requests that arrive meanwhile share the next run
//! instead of queueing one each, and the replaced snapshot is freed on that thread once the
//! workers have let go of it, never on a DNS worker.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::{self, Diagnostics, LoadOptions};
use crate::dns::stats::DnsStats;
use crate::geo::PolicyTrees;
use crate::health::overrides::{OverrideEntry, OverrideError, OverrideStore, PoolRef};
use crate::health::prober::Prober;
use crate::health::{Override, ProbeStatus, View};
use crate::model::Snapshot;
use crate::settings::Settings;
use crate::world::{SharedWorld, World};

/// Niceness of the reload thread, in thread-priority's 0..=99 scale: 22 is nice 10. The
/// DNS workers (nice 0) then get about ten times its share of a contended core, and an
/// idle core still compiles at full speed.
const RELOAD_PRIORITY: u8 = 22;

/// How long the reload thread waits for the DNS workers to drop the replaced snapshot
/// before freeing it: each worker looks at the world at least every `UDP_POLL` (200 ms).
const RETIRE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Zones(Diagnostics),
    #[error("{0}")]
    Geo(String),
    #[error("the reload thread failed: {0}")]
    Thread(String),
}

impl ReloadError {
    /// Every problem, one per entry.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Zones(d) => d.0.iter().map(|d| d.to_string()).collect(),
            ReloadError::Geo(e) => vec![e.clone()],
            ReloadError::Thread(e) => vec![format!("the reload thread failed: {e}")],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OverrideChangeError {
    #[error("no zone {0}")]
    NoZone(String),
    #[error("zone {0} has no pool {1}")]
    NoPool(String, String),
    #[error("pool {0} has no endpoint {1}")]
    NoEndpoint(String, IpAddr),
    #[error(transparent)]
    Store(#[from] OverrideError),
}

/// Shared by the signal handler, the admin API and the probers.
pub struct Control {
    pub settings: Settings,
    pub world: SharedWorld,
    pub dns_stats: Arc<DnsStats>,
    pub started: Instant,
    pub started_at: SystemTime,
    pub prober: OnceLock<Prober>,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    overrides: Mutex<OverrideStore>,
    /// Serialises writers of `world`.
    publish: Mutex<()>,
    /// `--cluster`: shared verdicts and overrides.
    pub cluster: Option<Arc<Cluster>>,
    /// This instance's own probe statuses of the current snapshot (the view holds the
    /// effective ones, quorum applied).
    local: Mutex<Vec<ProbeStatus>>,
    /// The NSID every world answers with.
    nsid: Arc<str>,
    /// Reload requests and the run serving them (coalescing).
    reloading: Mutex<Reloads>,
    reload_done: Condvar,
}

/// Reload requests are numbered; a run serves every request made before it started.
#[derive(Default)]
struct Reloads {
    requested: u64,
    /// Requests up to this one have their answer in `last`.
    finished: u64,
    running: bool,
    last: Option<ReloadResult>,
    finished_runs: u64,
}

type ReloadResult = Result<Vec<(String, u32)>, ReloadError>;

impl Control {
    pub fn new(settings: Settings, world: SharedWorld, overrides: OverrideStore) -> Control {
        Control {
            local: Mutex::new(world.load().health.probes().to_vec()),
            world,
            dns_stats: Arc::new(DnsStats::default()),
            started: Instant::now(),
            started_at: SystemTime::now(),
            prober: OnceLock::new(),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            overrides: Mutex::new(overrides),
            publish: Mutex::new(()),
            cluster: None,
            nsid: Arc::from(settings_instance(&settings)),
            reloading: Mutex::new(Reloads::default()),
            reload_done: Condvar::new(),
            settings,
        }
    }

    /// The same control plane sharing health and overrides through `cluster`.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Control {
        self.cluster = cluster;
        self
    }

    /// A world of `snapshot` with `view` and `geo` and its trees, answering NSID with this
    /// instance's name.
    fn world_of(
        &self,
        snapshot: Arc<Snapshot>,
        view: View,
        geo: Option<Arc<crate::geo::GeoDb>>,
        trees: Arc<PolicyTrees>,
    ) -> Arc<World> {
        let world = World::with_trees(snapshot, Arc::new(view), geo, trees)
            .with_nsid(Some(self.nsid.clone()));
        Arc::new(world)
    }

    /// The view of `snap` from local statuses: the quorum applied when clustered, and the
    /// stored overrides active now.
    fn build_view(&self, snap: &Snapshot, local: &[ProbeStatus], store: &OverrideStore) -> View {
        let probes = match &self.cluster {
            Some(c) => c.effective(snap, local),
            None => local.to_vec(),
        };
        View::new(
            snap,
            probes,
            store.resolve(snap),
            store.resolve_endpoints(snap),
        )
    }

    /// This instance's own probe statuses (before any quorum), by `ProbeId`.
    pub fn local_statuses(&self) -> Vec<ProbeStatus> {
        self.local
            .lock()
            .expect("local lock is never poisoned")
            .clone()
    }

    /// The cluster's state changed (verdicts, instances, overrides, connection): mirror the
    /// shared overrides to `overrides.json` and publish a new view if answers change.
    pub fn cluster_changed(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let state = cluster.state();
        let _writer = self.publish.lock().expect("publish lock is never poisoned");
        let mut store = self
            .overrides
            .lock()
            .expect("overrides lock is never poisoned");
        let mut changed = false;
        if state.overrides_known {
            let entries = state
                .overrides
                .iter()
                .map(|(k, (e, _))| (k.clone(), e.clone()))
                .collect();
            let before = store.full_entries().clone();
            changed = store.replace_in_memory(entries);
            if changed {
                log_cluster_overrides(&before, store.full_entries());
            }
        }
        // Answers first, the local copy (an fsync) after.
        self.refresh_view(&store);
        if changed && let Err(e) = store.persist() {
            tracing::error!("cluster: cannot keep the local copy of the overrides: {e}");
        }
    }

    /// Re-resolve overrides (an `until` passed) and publish when answers change.
    pub fn refresh_overrides(&self) {
        let _writer = self.publish.lock().expect("publish lock is never poisoned");
        let store = self
            .overrides
            .lock()
            .expect("overrides lock is never poisoned");
        self.refresh_view(&store);
    }

    /// Callers hold `publish`.
    fn refresh_view(&self, store: &OverrideStore) {
        let current = self.world.load_full();
        let local = self
            .local
            .lock()
            .expect("local lock is never poisoned")
            .clone();
        if local.len() != current.snapshot.probes.len() {
            return;
        }
        let view = self.build_view(&current.snapshot, &local, store);
        let same = view.overrides() == current.health.overrides()
            && view.endpoint_overrides() == current.health.endpoint_overrides()
            && view.probes().iter().map(|p| p.health).eq(current
                .health
                .probes()
                .iter()
                .map(|p| p.health));
        if !same {
            self.store_view(&current, view);
        }
    }

    /// Reload every zone and the GeoIP database: all or nothing (SPEC §8). On success the
    /// new zones' (origin, serial).
    /// Blocks until a run that started after this call ends; calls made while a run is
    /// going share the next one.
    pub fn reload(&self) -> ReloadResult {
        let mut state = self.reload_state();
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.finished >= ticket {
                return state.last.clone().expect("set with `finished`");
            }
            if state.running {
                state = self
                    .reload_done
                    .wait(state)
                    .expect("reload state lock is never poisoned");
                continue;
            }
            state.running = true;
            let serves = state.requested;
            drop(state);
            let result = self.reload_on_own_thread();
            state = self.reload_state();
            state.running = false;
            state.finished = serves;
            state.finished_runs += 1;
            state.last = Some(result);
            self.reload_done.notify_all();
        }
    }

    /// Reload runs completed (successful or not), for tests of the coalescing.
    pub fn reload_runs(&self) -> u64 {
        self.reload_state().finished_runs
    }

    fn reload_state(&self) -> MutexGuard<'_, Reloads> {
        self.reloading
            .lock()
            .expect("reload state lock is never poisoned")
    }

    /// One run, on a thread of its own at a lower priority.
    fn reload_on_own_thread(&self) -> ReloadResult {
        std::thread::scope(|s| {
            let run = std::thread::Builder::new()
                .name("meridian-reload".into())
                .spawn_scoped(s, || {
                    let prio = thread_priority::ThreadPriorityValue::try_from(RELOAD_PRIORITY)
                        .map(thread_priority::ThreadPriority::Crossplatform);
                    if let Err(e) = prio.map(thread_priority::set_current_thread_priority) {
                        tracing::debug!("reload thread keeps its priority: {e:?}");
                    }
                    self.reload_now()
                });
            match run {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(ReloadError::Thread("it panicked".into()))),
                Err(e) => Err(ReloadError::Thread(e.to_string())),
            }
        })
    }

    /// Compile beside the serving world, then swap; the replaced snapshot is freed here.
    fn reload_now(&self) -> ReloadResult {
        let current = self.world.load_full();
        let result = self.compile(&current.snapshot);
        let (snapshot, geo) = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                for m in e.messages() {
                    tracing::error!("reload failed: {m}");
                }
                tracing::error!("reload failed: the previous configuration keeps serving");
                return Err(e);
            }
        };
        let old = current.snapshot.clone();
        drop(current);
        // Built before the swap takes the publish lock: health changes are not held up.
        let trees = Arc::new(PolicyTrees::build(&snapshot, geo.as_deref()));
        let serials = self.swap(snapshot, geo, trees.clone());
        retire(old);
        crate::memory::return_freed_memory_later();
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?serials, geo = %trees.summary(), "reloaded");
        Ok(serials)
    }

    /// Publish a compiled snapshot with the health carried over; its zones' serials.
    fn swap(
        &self,
        snapshot: Snapshot,
        geo: Option<Arc<crate::geo::GeoDb>>,
        trees: Arc<PolicyTrees>,
    ) -> Vec<(String, u32)> {
        let _writer = self.publish.lock().expect("publish lock is never poisoned");
        let snapshot = Arc::new(snapshot);
        let probes = match self.prober.get() {
            Some(p) => p.reconfigure(snapshot.clone()),
            None => vec![ProbeStatus::default(); snapshot.probes.len()],
        };
        if let Some(c) = &self.cluster {
            c.zones_changed(&self.settings.zones);
            c.local_changed(&snapshot, &probes);
        }
        *self.local.lock().expect("local lock is never poisoned") = probes.clone();
        let view = {
            let store = self
                .overrides
                .lock()
                .expect("overrides lock is never poisoned");
            self.build_view(&snapshot, &probes, &store)
        };
        let serials = snapshot
            .zones
            .iter()
            .map(|z| (z.origin.clone(), z.serial))
            .collect();
        self.world.store(self.world_of(snapshot, view, geo, trees));
        serials
    }

    #[allow(clippy::type_complexity)]
    fn compile(
        &self,
        previous: &Snapshot,
    ) -> Result<(Snapshot, Option<Arc<crate::geo::GeoDb>>), ReloadError> {
        let mut snap = config::load_dir(&LoadOptions {
            zones_dir: &self.settings.zones,
            previous: Some(previous),
        })
        .map_err(ReloadError::Zones)?;
        attach_keys(&mut snap, &self.settings.state);
        // An unchanged GeoIP file is not read and compiled again (seconds for a full City
        // database): the serving one is kept.
        let serving = self.world.load().geo.clone();
        let kept = match (serving, &self.settings.geoip) {
            (Some(db), Some(path)) if db.unchanged(path, self.settings.asn.as_deref()) => Some(db),
            _ => None,
        };
        let geo = match kept {
            Some(db) => Some(db),
            None => self
                .settings
                .open_geo()
                .map_err(|e| ReloadError::Geo(e.to_string()))?
                .map(Arc::new),
        };
        Ok((snap, geo))
    }

    /// New probe results for the current snapshot (ignored when a reload overtook them).
    pub fn publish_health(&self, probes: Vec<ProbeStatus>) {
        let _writer = self.publish.lock().expect("publish lock is never poisoned");
        let current = self.world.load_full();
        if probes.len() != current.snapshot.probes.len() {
            return;
        }
        if let Some(c) = &self.cluster {
            c.local_changed(&current.snapshot, &probes);
        }
        let probes_effective = match &self.cluster {
            Some(c) => c.effective(&current.snapshot, &probes),
            None => probes.clone(),
        };
        *self.local.lock().expect("local lock is never poisoned") = probes;
        let view = View::new(
            &current.snapshot,
            probes_effective,
            current.health.overrides().to_vec(),
            current.health.endpoint_overrides().clone(),
        );
        self.store_view(&current, view);
    }

    /// A new health view of the serving snapshot and database (callers hold `publish`).
    fn store_view(&self, current: &World, view: View) {
        self.world
            .store(Arc::new(current.with_health(Arc::new(view))));
    }

    /// Every stored override: ((zone, pool, endpoint address), entry).
    pub fn overrides(&self) -> Vec<(PoolRef, OverrideEntry)> {
        let store = self
            .overrides
            .lock()
            .expect("overrides lock is never poisoned");
        store
            .full_entries()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Check a zone, pool and endpoint address against the serving snapshot; the target's
    /// normalized (zone origin, pool name, address).
    pub fn override_target(
        &self,
        zone: &str,
        pool: &str,
        address: Option<IpAddr>,
    ) -> Result<PoolRef, OverrideChangeError> {
        let current = self.world.load_full();
        let snap = &current.snapshot;
        let z = snap
            .find_zone_by_name(zone)
            .ok_or_else(|| OverrideChangeError::NoZone(zone.to_string()))?;
        let id = snap
            .find_pool(z, pool)
            .ok_or_else(|| OverrideChangeError::NoPool(zone.to_string(), pool.to_string()))?;
        if let Some(addr) = address
            && !snap
                .pool(id)
                .endpoints
                .iter()
                .any(|e| e.addr == addr.to_canonical())
        {
            return Err(OverrideChangeError::NoEndpoint(pool.to_string(), addr));
        }
        Ok(crate::health::overrides::normalize(
            &snap.zone(z).origin,
            pool,
            address,
        ))
    }

    /// Set or clear an override locally with who, why, when and until (no cluster).
    pub fn set_override_entry(
        &self,
        target: &PoolRef,
        entry: Option<OverrideEntry>,
    ) -> Result<Option<Override>, OverrideChangeError> {
        let _writer = self.publish.lock().expect("publish lock is never poisoned");
        let mut store = self
            .overrides
            .lock()
            .expect("overrides lock is never poisoned");
        let (zone, pool, address) = target;
        let previous = match entry {
            Some(e) => {
                let prev = store.get(zone, pool, *address);
                store.set_entry(zone, pool, *address, e)?;
                prev
            }
            None => store.clear(zone, pool, *address)?,
        };
        let current = self.world.load_full();
        let local = self
            .local
            .lock()
            .expect("local lock is never poisoned")
            .clone();
        let local = if local.len() == current.snapshot.probes.len() {
            local
        } else {
            current.health.probes().to_vec()
        };
        let view = self.build_view(&current.snapshot, &local, &store);
        self.store_view(&current, view);
        Ok(previous)
    }
}

/// Overrides that arrived through the cluster, set, changed or cleared, with who set them
/// there (the writing instance recorded its peer or `by`).
fn log_cluster_overrides(
    before: &BTreeMap<PoolRef, OverrideEntry>,
    after: &BTreeMap<PoolRef, OverrideEntry>,
) {
    let target =
        |(zone, pool, address): &PoolRef| crate::health::overrides::describe(zone, pool, *address);
    for (key, e) in after {
        if before.get(key) == Some(e) {
            continue;
        }
        let previous = before.get(key).map_or("none", |p| p.state.as_str());
        let by = e.by.as_deref().unwrap_or("?");
        tracing::info!(
            zone = %key.0,
            pool = %key.1,
            address = key.2.map(|a| a.to_string()),
            state = e.state.as_str(),
            previous,
            by,
            why = e.why.as_deref(),
            at = e.at.as_deref(),
            until = e.until.as_deref(),
            via = "cluster",
            "override set: {} {} by {by} (through the cluster)",
            target(key),
            e.state.as_str()
        );
    }
    for (key, e) in before.iter().filter(|(k, _)| !after.contains_key(*k)) {
        tracing::info!(
            zone = %key.0,
            pool = %key.1,
            address = key.2.map(|a| a.to_string()),
            previous = e.state.as_str(),
            via = "cluster",
            "override cleared: {} (was {}) through the cluster",
            target(key),
            e.state.as_str()
        );
    }
}

fn settings_instance(settings: &Settings) -> &str {
    &settings.instance
}

/// Attach the DNSSEC keys of the signed zones; a zone whose key is missing is logged with
/// the command that creates it, and answered REFUSED (never unsigned, never with a key
/// made up on the spot: SPEC §11).
pub fn attach_keys(snap: &mut Snapshot, state: &std::path::Path) {
    for (id, e) in crate::dnssec::attach_keys(snap, state) {
        tracing::error!(zone = %snap.zone(id).origin, "{e}; the zone is answered REFUSED until then");
    }
    for z in snap.zones.iter().filter(|z| z.key.is_some()) {
        if let Some(k) = &z.key {
            tracing::info!(zone = %z.origin, key_tag = k.key_tag, file = %k.path.display(), "dnssec: signing online");
        }
    }
}

/// Free a replaced snapshot on this thread: wait (bounded) until the DNS workers and the
/// prober hold it no more, so that the last reference, and the time it takes to free a
/// million names, never falls on a DNS worker.
fn retire(old: Arc<Snapshot>) {
    let deadline = Instant::now() + RETIRE_WAIT;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(old);
}

/// How often `--watch-zones` looks at the zone directory.
pub const ZONE_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Names, modification times and sizes of the zone directory's files.
type Fingerprint = Vec<(std::ffi::OsString, Option<SystemTime>, u64)>;

/// `--watch-zones`: reload when the zone directory changes and has then held still for one
/// interval (so a file being written is not loaded half-way). The directory is read now, so
/// a change made right after the call is seen.
pub fn watch_zones(
    control: Arc<Control>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let seen = fingerprint(&control.settings.zones);
    watch_loop(control, seen, stop)
}

async fn watch_loop(control: Arc<Control>, mut seen: Fingerprint, mut stop: watch::Receiver<bool>) {
    let dir = control.settings.zones.clone();
    let mut pending: Option<Fingerprint> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ZONE_WATCH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let now = fingerprint(&dir);
        if now == seen {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        seen = now;
        pending = None;
        tracing::info!(dir = %dir.display(), "zone directory changed: reloading");
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || c.reload()).await;
    }
}

fn fingerprint(dir: &std::path::Path) -> Fingerprint {
    let mut out: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name(), meta.modified().ok(), meta.len()))
        })
        .collect();
    out.sort();
    out
}
