//! `GET /v1/status` (SPEC §7): version, uptime, every zone with its serial, every pool with
//! the state of each endpoint as the DNS path sees it now, and the stored overrides.
//!
//! Built from one load of the world, so pools, endpoints and probe states are consistent
//! with each other and with what DNS answers at that moment.

use crate::clock::rfc3339_millis;

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::health::View;
use crate::model::{PoolId, Snapshot};
use crate::reload::Control;

/// The handler.
pub(super) async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(status_json(&state.control))
}

fn status_json(control: &Control) -> Value {
    let world = control.world.load_full();
    let snap = &world.snapshot;
    let zones: Vec<Value> = snap
        .zones
        .iter()
        .map(|z| {
            json!({
                "origin": z.origin,
                "serial": z.serial,
                "file": z.file.display().to_string(),
                "loaded_at": snap.loaded_at.map(rfc3339_millis),
            })
        })
        .collect();
    let pools: Vec<Value> = snap
        .zones
        .iter()
        .flat_map(|z| z.pools.iter())
        .map(|id| pool_json(snap, &world.health, *id))
        .collect();
    let overrides = overrides_json(control);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "instance": control.settings.instance,
        "uptime_seconds": control.started.elapsed().as_secs_f64(),
        "started_at": rfc3339_millis(control.started_at),
        "zones": zones,
        "pools": pools,
        "overrides": overrides,
        "cluster": cluster_json(control),
    })
}

/// SPEC §10: `{"connected", "since", "instance", "instances": [{"name", "last_seen",
/// "zones_digest", "zones_match"}], "zone_mismatch": [...]}`; `null` without `--cluster`.
fn cluster_json(control: &Control) -> Value {
    let Some(cluster) = &control.cluster else {
        return Value::Null;
    };
    let state = cluster.state();
    let mine = cluster.zones_digest();
    let instances: Vec<Value> = state
        .instances
        .iter()
        .map(|(name, v)| {
            json!({
                "name": name,
                "last_seen": v.last_seen,
                "started": v.started,
                "zones_digest": v.zones_digest,
                "zones_match": v.zones_digest == mine,
                "version": v.version,
            })
        })
        .collect();
    let s = &cluster.stats;
    json!({
        "connected": state.connected,
        "since": rfc3339_millis(state.since),
        "instance": cluster.instance,
        "endpoints": cluster.settings.endpoints,
        "prefix": cluster.settings.prefix,
        "lease_ttl_seconds": cluster.settings.lease_ttl.as_secs(),
        "zones_digest": mine,
        "instances": instances,
        "zone_mismatch": cluster.zone_mismatch(&state),
        "lease_grants": s.lease_grants.load(Ordering::Relaxed),
        "relists": s.relists.load(Ordering::Relaxed),
        "watch_resumes": s.watch_resumes.load(Ordering::Relaxed),
        "compactions": s.compactions.load(Ordering::Relaxed),
    })
}

/// `GET /v1/overrides`: every stored override, also those of pools a reload removed.
pub(super) async fn overrides(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "overrides": overrides_json(&state.control) }))
}

/// Each override with who set it, why, when, until when, whether it applies now, and with a
/// cluster its etcd revision (for `If-Match`).
fn overrides_json(control: &Control) -> Vec<Value> {
    let now = std::time::SystemTime::now();
    let revisions = control.cluster.as_ref().map(|c| c.state());
    control
        .overrides()
        .into_iter()
        .map(|(target, e)| {
            let (zone, pool, address) = &target;
            let mut entry = json!({
                "zone": zone,
                "pool": pool,
                "state": e.state.as_str(),
                "by": e.by,
                "why": e.why,
                "at": e.at,
                "until": e.until,
                "active": e.active(now),
            });
            if let Some(a) = address {
                entry["address"] = json!(a.to_string());
            }
            if let Some(rev) = revisions
                .as_ref()
                .and_then(|s| s.overrides.get(&target).map(|(_, r)| *r))
            {
                entry["revision"] = json!(rev);
            }
            entry
        })
        .collect()
}

fn pool_json(snap: &Snapshot, health: &View, id: PoolId) -> Value {
    let pool = snap.pool(id);
    let endpoints: Vec<Value> = pool
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| health.endpoint_json(snap, id, i, e))
        .collect();
    json!({
        "zone": snap.zone(pool.zone).origin,
        "pool": pool.name,
        "up": health.pool_up(snap, id),
        "override": health.override_of(id).map(|o| o.as_str()),
        "check": pool.check_name,
        "min_healthy": pool.min_healthy,
        "endpoints": endpoints,
    })
}
