//! `GET /v1/status` (SPEC §7): version, uptime, every zone with its serial, every pool with
//! the state of each endpoint as the DNS path sees it now, and the stored overrides.
//!
//! Built from one load of the world, so pools, endpoints and probe states are consistent
//! with each other and with what DNS answers at that moment.

use crate::clock::rfc3339_millis;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::health::{ProbeStatus, View};
use crate::model::{Endpoint, PoolId, Snapshot};
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
        "uptime_seconds": control.started.elapsed().as_secs_f64(),
        "started_at": rfc3339_millis(control.started_at),
        "zones": zones,
        "pools": pools,
        "overrides": overrides,
    })
}

/// `GET /v1/overrides`: every stored override, also those of pools a reload removed.
pub(super) async fn overrides(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "overrides": overrides_json(&state.control) }))
}

fn overrides_json(control: &Control) -> Vec<Value> {
    control
        .overrides()
        .into_iter()
        .map(|((zone, pool, address), state)| {
            let mut entry = json!({ "zone": zone, "pool": pool, "state": state.as_str() });
            if let Some(a) = address {
                entry["address"] = json!(a.to_string());
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
        .map(|(i, e)| endpoint_json(snap, health, id, i, e))
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

/// An endpoint and the probe behind it. Without a check it is always up and has no results.
fn endpoint_json(
    snap: &Snapshot,
    health: &View,
    pool: PoolId,
    index: usize,
    endpoint: &Endpoint,
) -> Value {
    let probe = endpoint.probe.map(|id| {
        let status = health
            .probes
            .get(id.0 as usize)
            .cloned()
            .unwrap_or_default();
        (snap.probe(id).addr, status)
    });
    let status = probe.as_ref().map(|(_, s)| s);
    json!({
        "address": endpoint.addr.to_string(),
        "probe_address": probe.as_ref().map(|(addr, _)| addr.to_string()),
        "state": health.endpoint_health(endpoint).as_str(),
        "override": health.endpoint_override(pool, index).map(|o| o.as_str()),
        "answered": health.endpoint_up(pool, index, endpoint),
        "last_result": status.and_then(last_result),
        "last_error": status.and_then(|s| s.last_error.as_deref()),
        "last_rtt_ms": status.and_then(|s| s.last_rtt).map(|d| d.as_micros() as f64 / 1000.0),
        "last_at": status.and_then(|s| s.last_at).map(rfc3339_millis),
        "failures": status.map_or(0, |s| s.failures),
        "passes": status.map_or(0, |s| s.passes),
    })
}

/// `"ok"` or `"fail"` for the latest probe, `None` before the first one. Streaks reset on
/// the opposite result, so a probe that has finished has exactly one of them non-zero.
fn last_result(s: &ProbeStatus) -> Option<&'static str> {
    s.last_at?;
    Some(if s.passes > 0 { "ok" } else { "fail" })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn last_result_follows_the_streaks() {
        let mut s = ProbeStatus::default();
        assert_eq!(last_result(&s), None);
        s.last_at = Some(SystemTime::now());
        s.passes = 1;
        assert_eq!(last_result(&s), Some("ok"));
        s.passes = 0;
        s.failures = 2;
        assert_eq!(last_result(&s), Some("fail"));
    }
}
