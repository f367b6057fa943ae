//! The store loop: the only code that talks to etcd besides override writes. It owns the
//! lease, publishes this instance's key and verdicts under it, and keeps [`ClusterState`]
//! by list-then-watch. etcd-client does nothing on its own (notes/etcd.md §3c): this loop
//! re-grants a lost lease and re-publishes, resumes a broken watch from the last revision,
//! re-lists after a compaction, and declares itself disconnected after two lease TTLs
//! without an answer. Every call is bounded by the client's request timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::watch;

use super::keys::{InstanceValue, Parsed};
use super::{Cluster, ClusterState, Verdict};
use crate::clock::rfc3339_millis;
use crate::health::overrides::{OverrideEntry, PoolRef};

/// notes/etcd.md §3b: without it a refused connection still returns at once, but a hung etcd
/// blocks a connect for ever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// notes/etcd.md §3c gotcha 2: etcd-client has no default request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// notes/etcd.md §3c gotcha 1: HTTP/2 pings more often than etcd's
/// `--grpc-keepalive-min-time` (5 s) make it drop the connection and every watch on it.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(6);
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// notes/etcd.md §4: back off this long after an error before trying again.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// notes/etcd.md §3c gotcha 3: a watch that does not answer a progress request within
/// about a second is dead (a hung etcd keeps the stream silent without an error).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);
/// The lease keep-alive and heartbeat run this many times per TTL (notes §3c gotcha 4).
const KEEP_ALIVES_PER_TTL: u32 = 3;
/// SPEC §10: disconnected after this many lease TTLs without an answer from etcd.
const STALE_TTLS: u32 = 2;

/// Why a session ended: what the next one must redo.
#[derive(Debug)]
enum Broken {
    /// Stop requested.
    Stop,
    /// The watch failed or fell silent: resume it from the last revision.
    Watch(String),
    /// The revision to resume from was compacted away: list again.
    Compacted(i64),
    /// The lease expired or vanished: grant a new one and publish everything again.
    Lease(String),
    /// Any other failed call.
    Call(String),
}

impl From<etcd_client::Error> for Broken {
    fn from(e: etcd_client::Error) -> Self {
        let text = e.to_string();
        // A put under an expired lease: etcd says "etcdserver: requested lease not found".
        if matches!(e, etcd_client::Error::LeaseKeepAliveError(_))
            || text.contains("lease not found")
        {
            Broken::Lease(text)
        } else {
            Broken::Call(text)
        }
    }
}

/// A granted lease and its keep-alive stream.
struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// What survives from one session to the next.
#[derive(Default)]
struct Progress {
    lease: Option<Lease>,
    /// Revision of the last applied event or list; `None` until listed (and after a
    /// compaction).
    rev: Option<i64>,
    /// This instance's verdicts as written under the current lease.
    published: BTreeMap<String, Verdict>,
    /// Whether the last session had a watch to resume.
    watched: bool,
    /// Zone mismatch already logged for this set of instances.
    mismatch_logged: Vec<String>,
}

/// The loop; see the module doc.
pub(super) async fn run(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(HTTP2_KEEP_ALIVE, HTTP2_KEEP_ALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false);
    // Connecting is lazy (notes §3b): this fails only on a malformed URL.
    let client = match Client::connect(&cluster.settings.endpoints, Some(options)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cluster: cannot use {:?}: {e}", cluster.settings.endpoints);
            return;
        }
    };
    let _ = cluster.client.set(client.clone());
    let mut progress = Progress::default();
    let mut last_error = String::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let result = session(&cluster, client.clone(), &mut progress, &mut stop).await;
        let why = match result {
            Broken::Stop => break,
            Broken::Watch(e) => e,
            Broken::Compacted(at) => {
                cluster.stats.compactions.fetch_add(1, Ordering::Relaxed);
                progress.rev = None;
                format!("revision compacted (now at {at}): listing again")
            }
            Broken::Lease(e) => {
                progress.lease = None;
                e
            }
            Broken::Call(e) => e,
        };
        if why != last_error {
            tracing::debug!("cluster: {why}");
            last_error = why;
        }
        check_stale(&cluster).await;
        tokio::select! {
            _ = tokio::time::sleep(RETRY_DELAY) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(lease) = progress.lease {
        // Leave at once rather than one TTL later: the others stop counting our verdicts.
        let mut c = client;
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, c.lease_revoke(lease.id)).await;
    }
}

/// Grant (if needed), publish, list (if needed), watch, and serve until something breaks.
async fn session(
    cluster: &Arc<Cluster>,
    mut client: Client,
    p: &mut Progress,
    stop: &mut watch::Receiver<bool>,
) -> Broken {
    if let Some(lease) = p.lease.as_mut() {
        // The old keep-alive stream died with the connection; open one for the same lease,
        // which etcd may have kept (it renews leases on restart, notes §3b).
        match client.lease_keep_alive(lease.id).await {
            Ok((keeper, stream)) => {
                lease.keeper = keeper;
                lease.stream = stream;
            }
            Err(e) => match Broken::from(e) {
                Broken::Lease(why) => {
                    tracing::info!(
                        lease = lease.id,
                        "cluster: lease lost ({why}); granting a new one"
                    );
                    p.lease = None;
                }
                other => return other,
            },
        }
    }
    if p.lease.is_none() {
        match grant(cluster, &mut client).await {
            Ok(lease) => {
                p.lease = Some(lease);
                p.published.clear();
            }
            Err(e) => return e,
        }
    }
    let lease_id = p.lease.as_ref().map_or(0, |l| l.id);
    if let Err(e) = put_instance(cluster, &mut client, lease_id).await {
        return e;
    }
    if let Err(e) = publish(cluster, &mut client, lease_id, &mut p.published).await {
        return e;
    }
    let rev = match p.rev {
        Some(rev) => {
            if p.watched {
                cluster.stats.watch_resumes.fetch_add(1, Ordering::Relaxed);
            }
            rev
        }
        None => match list(cluster, &mut client).await {
            Ok(rev) => rev,
            Err(e) => return e,
        },
    };
    p.rev = Some(rev);
    let mut stream = match open_watch(cluster, &mut client, rev).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    // Any later session that starts from a known revision resumes this watch.
    p.watched = true;
    connected(cluster).await;
    serve(cluster, &mut client, p, &mut stream, stop).await
}

async fn grant(cluster: &Cluster, client: &mut Client) -> Result<Lease, Broken> {
    let ttl = cluster.settings.lease_ttl.as_secs() as i64;
    let id = client.lease_grant(ttl, None).await?.id();
    let (keeper, stream) = client.lease_keep_alive(id).await?;
    cluster.stats.lease_grants.fetch_add(1, Ordering::Relaxed);
    cluster.mark_ok();
    tracing::info!(
        lease = id,
        ttl,
        "cluster: lease granted; publishing verdicts"
    );
    Ok(Lease { id, keeper, stream })
}

async fn put_instance(cluster: &Cluster, client: &mut Client, lease: i64) -> Result<(), Broken> {
    let value = InstanceValue {
        started: rfc3339_millis(cluster.started),
        last_seen: rfc3339_millis(SystemTime::now()),
        zones_digest: cluster.zones_digest(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let json = serde_json::to_string(&value).expect("plain strings serialize");
    client
        .put(
            cluster.keys.instance(&cluster.instance),
            json,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    cluster.mark_ok();
    Ok(())
}

/// Write the verdicts that changed, delete those no longer wanted.
async fn publish(
    cluster: &Cluster,
    client: &mut Client,
    lease: i64,
    published: &mut BTreeMap<String, Verdict>,
) -> Result<(), Broken> {
    let desired = super::lock(&cluster.desired).clone();
    for (id, v) in &desired {
        if published.get(id) == Some(v) {
            continue;
        }
        let json = serde_json::to_string(v).expect("plain values serialize");
        client
            .put(
                cluster.keys.verdict(&cluster.instance, id),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        published.insert(id.clone(), v.clone());
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|id| !desired.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        client
            .delete(cluster.keys.verdict(&cluster.instance, &id), None)
            .await?;
        published.remove(&id);
    }
    cluster.mark_ok();
    Ok(())
}

/// Read the whole prefix into a fresh state; the revision to watch from.
async fn list(cluster: &Arc<Cluster>, client: &mut Client) -> Result<i64, Broken> {
    let resp = client
        .get(cluster.keys.root(), Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    cluster.stats.relists.fetch_add(1, Ordering::Relaxed);
    cluster.mark_ok();
    cluster.update(|s| {
        s.instances.clear();
        s.verdicts.clear();
        s.overrides.clear();
        s.overrides_known = true;
        for kv in resp.kvs() {
            apply_put(cluster, s, kv.key(), kv.value(), kv.mod_revision());
        }
        true
    });
    cluster.notify().await;
    Ok(rev)
}

async fn open_watch(
    cluster: &Cluster,
    client: &mut Client,
    rev: i64,
) -> Result<WatchStream, Broken> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let mut stream = client.watch(cluster.keys.root(), Some(opts)).await?;
    // The first message says whether the watch exists or was cancelled (compacted).
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(resp))) if resp.canceled() => Err(canceled(&resp)),
        Ok(Ok(Some(_))) => Ok(stream),
        Ok(Ok(None)) => Err(Broken::Watch("watch closed at creation".into())),
        Ok(Err(e)) => Err(Broken::Watch(e.to_string())),
        Err(_) => Err(Broken::Watch("watch not created in time".into())),
    }
}

fn canceled(resp: &etcd_client::WatchResponse) -> Broken {
    if resp.compact_revision() > 0 {
        Broken::Compacted(resp.compact_revision())
    } else {
        Broken::Watch(format!("watch cancelled: {}", resp.cancel_reason()))
    }
}

/// Apply watch events, keep the lease alive, check the watch, publish new verdicts.
async fn serve(
    cluster: &Arc<Cluster>,
    client: &mut Client,
    p: &mut Progress,
    stream: &mut WatchStream,
    stop: &mut watch::Receiver<bool>,
) -> Broken {
    let period = cluster.settings.lease_ttl / KEEP_ALIVES_PER_TTL;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut progress_asked: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return Broken::Stop,
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return Broken::Watch("watch stream ended".into()),
                    Err(e) => return Broken::Watch(e.to_string()),
                };
                if resp.canceled() {
                    return canceled(&resp);
                }
                progress_asked = None;
                cluster.mark_ok();
                if !resp.events().is_empty() {
                    apply_events(cluster, p, resp.events()).await;
                }
            }
            _ = tick.tick() => {
                if let Some(at) = progress_asked && at.elapsed() > PROGRESS_TIMEOUT {
                    return Broken::Watch("watch did not answer a progress request".into());
                }
                let lease = p.lease.as_mut().expect("a session has a lease");
                if let Err(e) = keep_alive(cluster, lease).await {
                    return e;
                }
                let id = lease.id;
                if let Err(e) = put_instance(cluster, client, id).await {
                    return e;
                }
                if let Err(e) = publish(cluster, client, id, &mut p.published).await {
                    return e;
                }
                if stream.request_progress().await.is_ok() {
                    progress_asked.get_or_insert_with(Instant::now);
                }
            }
            _ = cluster.wake.notified() => {
                let id = p.lease.as_ref().map_or(0, |l| l.id);
                if let Err(e) = put_instance(cluster, client, id).await {
                    return e;
                }
                if let Err(e) = publish(cluster, client, id, &mut p.published).await {
                    return e;
                }
            }
        }
    }
}

async fn keep_alive(cluster: &Cluster, lease: &mut Lease) -> Result<(), Broken> {
    lease
        .keeper
        .keep_alive()
        .await
        // The stream died with the connection; whether the lease did is for the next
        // session's re-open to find out.
        .map_err(|e| Broken::Call(e.to_string()))?;
    match tokio::time::timeout(REQUEST_TIMEOUT, lease.stream.message()).await {
        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
            cluster.mark_ok();
            Ok(())
        }
        Ok(Ok(Some(_))) => Err(Broken::Lease("lease expired".into())),
        Ok(Ok(None)) => Err(Broken::Call("keep-alive stream ended".into())),
        Ok(Err(e)) => Err(Broken::Call(e.to_string())),
        Err(_) => Err(Broken::Call("keep-alive not answered in time".into())),
    }
}

async fn apply_events(cluster: &Arc<Cluster>, p: &mut Progress, events: &[etcd_client::Event]) {
    let changed = cluster.update(|s| {
        let mut changed = false;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            p.rev = Some(p.rev.unwrap_or(0).max(kv.mod_revision()));
            changed |= match ev.event_type() {
                EventType::Put => apply_put(cluster, s, kv.key(), kv.value(), kv.mod_revision()),
                EventType::Delete => apply_delete(cluster, s, kv.key(), kv.mod_revision()),
            };
        }
        changed
    });
    log_mismatch(cluster, p);
    if changed {
        cluster.notify().await;
    }
}

/// One key written; whether it changes health or overrides (heartbeats do not).
fn apply_put(cluster: &Cluster, s: &mut ClusterState, key: &[u8], value: &[u8], rev: i64) -> bool {
    match cluster.keys.parse(key) {
        Some(Parsed::Instance(name)) => match serde_json::from_slice::<InstanceValue>(value) {
            Ok(v) => s.instances.insert(name, v).is_none(),
            Err(e) => bad_value(key, &e),
        },
        Some(Parsed::Verdict { instance, probe }) => {
            match serde_json::from_slice::<Verdict>(value) {
                Ok(v) => {
                    s.verdicts
                        .entry(probe)
                        .or_default()
                        .insert(instance, v.clone())
                        != Some(v)
                }
                Err(e) => bad_value(key, &e),
            }
        }
        Some(Parsed::Override(r)) => match serde_json::from_slice::<OverrideEntry>(value) {
            Ok(e) => {
                if s.overrides.get(&r).is_some_and(|(_, known)| *known > rev) {
                    return false;
                }
                s.overrides.insert(r, (e, rev));
                true
            }
            Err(e) => bad_value(key, &e),
        },
        None => false,
    }
}

fn apply_delete(cluster: &Cluster, s: &mut ClusterState, key: &[u8], rev: i64) -> bool {
    match cluster.keys.parse(key) {
        Some(Parsed::Instance(name)) => s.instances.remove(&name).is_some(),
        Some(Parsed::Verdict { instance, probe }) => {
            let removed = s
                .verdicts
                .get_mut(&probe)
                .and_then(|m| m.remove(&instance))
                .is_some();
            if s.verdicts.get(&probe).is_some_and(|m| m.is_empty()) {
                s.verdicts.remove(&probe);
            }
            removed
        }
        Some(Parsed::Override(r)) => {
            if s.overrides.get(&r).is_some_and(|(_, known)| *known > rev) {
                return false;
            }
            s.overrides.remove(&r).is_some()
        }
        None => false,
    }
}

fn bad_value(key: &[u8], e: &serde_json::Error) -> bool {
    tracing::warn!(
        key = %String::from_utf8_lossy(key),
        "cluster: ignoring a value that does not parse: {e}"
    );
    false
}

/// The first successful round trip after a disconnection.
async fn connected(cluster: &Arc<Cluster>) {
    let was = cluster.update(|s| {
        let was = s.connected;
        if !was {
            s.connected = true;
            s.since = SystemTime::now();
        }
        !was
    });
    if was {
        tracing::info!(instance = %cluster.instance, "cluster: connected to etcd; using the shared verdicts and overrides");
        cluster.notify().await;
    }
}

/// SPEC §10: after two lease TTLs without etcd, follow the local view (logged once).
async fn check_stale(cluster: &Arc<Cluster>) {
    let limit = cluster.settings.lease_ttl * STALE_TTLS;
    if !cluster.state.load().connected || cluster.since_ok() <= limit {
        return;
    }
    let flipped = cluster.update(|s| {
        let flip = s.connected;
        s.connected = false;
        s.since = SystemTime::now();
        flip
    });
    if flipped {
        tracing::warn!(
            "cluster: no answer from etcd for {:.1}s: following local verdicts and the last known overrides",
            cluster.since_ok().as_secs_f64()
        );
        cluster.notify().await;
    }
}

fn log_mismatch(cluster: &Cluster, p: &mut Progress) {
    let state = cluster.state.load();
    let mismatch = cluster.zone_mismatch(&state);
    if mismatch == p.mismatch_logged {
        return;
    }
    if mismatch.is_empty() {
        tracing::info!("cluster: every instance serves the same zone files again");
    } else {
        tracing::warn!(
            instances = ?mismatch,
            "cluster: these instances serve zone files that differ from ours"
        );
    }
    p.mismatch_logged = mismatch;
}

/// An override change through etcd.
#[derive(Debug, Clone)]
pub struct OverrideWrite {
    pub target: PoolRef,
    /// `None` clears the override.
    pub entry: Option<OverrideEntry>,
    /// Apply only if the key is at this revision (0: absent); `None`: at whatever revision
    /// it was read at just before.
    pub expect: Option<i64>,
}

/// Why an override write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("another writer changed this override first")]
    Conflict {
        current: Option<(OverrideEntry, i64)>,
    },
    #[error("etcd is not reachable: {0}")]
    Unavailable(String),
}

impl Cluster {
    /// Write (or clear) one override with a compare-and-swap on its revision, then apply it
    /// here at once (the watch brings it to the other instances). Returns the previous
    /// entry and the new revision.
    pub async fn write_override(
        self: &Arc<Self>,
        w: OverrideWrite,
    ) -> Result<(Option<OverrideEntry>, i64), WriteError> {
        let unavailable = |e: etcd_client::Error| WriteError::Unavailable(e.to_string());
        let mut client = self
            .client
            .get()
            .cloned()
            .ok_or_else(|| WriteError::Unavailable("not connected yet".into()))?;
        let key = self.keys.override_key(&w.target);
        let current = client.get(key.clone(), None).await.map_err(unavailable)?;
        let (seen_rev, previous) = match current.kvs().first() {
            Some(kv) => (
                kv.mod_revision(),
                serde_json::from_slice::<OverrideEntry>(kv.value()).ok(),
            ),
            None => (0, None),
        };
        let expect = w.expect.unwrap_or(seen_rev);
        let op = match &w.entry {
            Some(e) => TxnOp::put(
                key.clone(),
                serde_json::to_string(e).expect("plain values serialize"),
                None,
            ),
            None => TxnOp::delete(key.clone(), None),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expect)])
            .and_then([op])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client.txn(txn).await.map_err(unavailable)?;
        self.mark_ok();
        let rev = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| {
                    serde_json::from_slice::<OverrideEntry>(kv.value())
                        .ok()
                        .map(|e| (e, kv.mod_revision()))
                }),
                _ => None,
            });
            return Err(WriteError::Conflict { current });
        }
        self.update(|s| {
            match &w.entry {
                Some(e) => {
                    s.overrides.insert(w.target.clone(), (e.clone(), rev));
                }
                None => {
                    s.overrides.remove(&w.target);
                }
            }
            true
        });
        self.notify().await;
        Ok((previous, rev))
    }
}
