//! The changing endpoints: `POST /v1/reload` (SPEC §8) and
//! `PUT`/`DELETE /v1/overrides/{zone}/{pool}[/{address}]` (SPEC §5). Each takes [`Authorized`] first and
//! goes through [`crate::reload::Control`], which serialises writers and swaps the world.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Authorized;
use super::{ApiError, AppState};
use crate::cluster::{OverrideWrite, WriteError};
use crate::health::Override;
use crate::health::overrides::OverrideEntry;
use crate::reload::OverrideChangeError;

/// `POST /v1/reload`: 200 with the new serials, or 422 with every error (the old
/// configuration keeps serving).
pub(super) async fn reload(_: Authorized, State(state): State<AppState>) -> Response {
    let control = state.control.clone();
    // Compiling zones and reopening the GeoIP database is blocking work.
    match tokio::task::spawn_blocking(move || control.reload()).await {
        Ok(Ok(serials)) => {
            let zones: Vec<_> = serials
                .iter()
                .map(|(origin, serial)| json!({ "origin": origin, "serial": serial }))
                .collect();
            Json(json!({ "zones": zones })).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "errors": e.messages() })),
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload did not finish: {e}"),
        )
        .into_response(),
    }
}

/// The body of `PUT /v1/overrides/{zone}/{pool}[/{address}]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    state: Override,
    /// Who sets it; the peer address when absent.
    by: Option<String>,
    /// Why, for the next operator.
    why: Option<String>,
    /// RFC 3339: the override stops applying then.
    until: Option<String>,
}

/// Longest `by` or `why` kept: a sentence, not a document (the value sits in etcd and in
/// every status page).
const MAX_NOTE_LEN: usize = 512;

/// `PUT /v1/overrides/{zone}/{pool}` with `{"state": "up" | "down" | "drain"}` and optional
/// `by`, `why`, `until`.
pub(super) async fn set_override(
    who: Authorized,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((zone, pool)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entry = parse_body(&body, peer)?;
    let wanted = Change {
        address: None,
        entry: Some(entry),
        expect: if_match(&headers)?,
    };
    change(&state, &who, &zone, &pool, wanted).await
}

/// `DELETE /v1/overrides/{zone}/{pool}`: back to what the probes say.
pub(super) async fn clear_override(
    who: Authorized,
    State(state): State<AppState>,
    Path((zone, pool)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = Change {
        address: None,
        entry: None,
        expect: if_match(&headers)?,
    };
    change(&state, &who, &zone, &pool, wanted).await
}

/// `PUT /v1/overrides/{zone}/{pool}/{address}`: one endpoint of the pool.
pub(super) async fn set_endpoint_override(
    who: Authorized,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((zone, pool, address)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wanted = Change {
        address: Some(parse_address(&address)?),
        entry: Some(parse_body(&body, peer)?),
        expect: if_match(&headers)?,
    };
    change(&state, &who, &zone, &pool, wanted).await
}

/// `DELETE /v1/overrides/{zone}/{pool}/{address}`.
pub(super) async fn clear_endpoint_override(
    who: Authorized,
    State(state): State<AppState>,
    Path((zone, pool, address)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = Change {
        address: Some(parse_address(&address)?),
        entry: None,
        expect: if_match(&headers)?,
    };
    change(&state, &who, &zone, &pool, wanted).await
}

fn parse_body(body: &[u8], peer: SocketAddr) -> Result<OverrideEntry, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let wanted: OverrideBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "expected a body {{\"state\": \"up\" | \"down\" | \"drain\", \"by\"?, \"why\"?, \"until\"?}}: {e}"
        ))
    })?;
    for (name, v) in [("by", &wanted.by), ("why", &wanted.why)] {
        if v.as_ref().is_some_and(|t| t.len() > MAX_NOTE_LEN) {
            return Err(bad(format!("`{name}` is longer than {MAX_NOTE_LEN} bytes")));
        }
    }
    let now = SystemTime::now();
    if let Some(u) = &wanted.until {
        match crate::clock::parse_rfc3339(u) {
            Some(t) if t > now => {}
            Some(_) => return Err(bad(format!("`until` {u} is in the past"))),
            None => {
                return Err(bad(format!(
                    "`until` {u:?} is not an RFC 3339 time like 2026-12-01T16:00:00Z"
                )));
            }
        }
    }
    Ok(OverrideEntry {
        state: wanted.state,
        by: Some(wanted.by.unwrap_or_else(|| peer.ip().to_string())),
        why: wanted.why,
        at: Some(crate::clock::rfc3339_millis(now)),
        until: wanted.until,
    })
}

/// `If-Match: <revision>` (as `GET /v1/overrides` lists it; 0 = must not exist): write only
/// if nobody changed the override since.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|t| t.trim().trim_matches('"'))
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|r| *r >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match must be a revision from GET /v1/overrides",
            )
        })
}

fn parse_address(text: &str) -> Result<IpAddr, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not an IP address"),
        )
    })
}

/// An override change asked for: of the whole pool or of one endpoint, set or cleared, and
/// the revision it must replace (`If-Match`).
struct Change {
    address: Option<IpAddr>,
    entry: Option<OverrideEntry>,
    expect: Option<i64>,
}

/// Apply an override (persisted before it takes effect: in etcd with a cluster, else in
/// `overrides.json`), log who made it, and answer with the pool as it is now.
async fn change(
    state: &AppState,
    who: &Authorized,
    zone: &str,
    pool: &str,
    Change {
        address,
        entry: wanted,
        expect,
    }: Change,
) -> Result<Response, ApiError> {
    let target = state
        .control
        .override_target(zone, pool, address)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let (previous, revision) = match &state.control.cluster {
        Some(cluster) => {
            let write = OverrideWrite {
                target: target.clone(),
                entry: wanted.clone(),
                expect,
            };
            match cluster.write_override(write).await {
                Ok((prev, rev)) => (prev.map(|e| e.state), Some(rev)),
                Err(WriteError::Conflict { current }) => {
                    return Ok(conflict(current));
                }
                Err(e @ WriteError::Unavailable(_)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        e.to_string(),
                    ));
                }
            }
        }
        None => {
            if expect.is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "If-Match needs --cluster (revisions are etcd's)",
                ));
            }
            let control = state.control.clone();
            let (t, w) = (target.clone(), wanted.clone());
            // Writes overrides.json: blocking file I/O.
            let prev = tokio::task::spawn_blocking(move || control.set_override_entry(&t, w))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("override did not finish: {e}"),
                    )
                })?
                .map_err(|e| match e {
                    OverrideChangeError::Store(_) => {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    }
                    _ => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
                })?;
            (prev, None)
        }
    };
    let world = state.control.world.load();
    let snap = &world.snapshot;
    let found = snap
        .find_zone_by_name(zone)
        .and_then(|z| Some((z, snap.find_pool(z, pool)?)));
    let (origin, name, up) = match found {
        Some((z, id)) => (
            snap.zone(z).origin.clone(),
            snap.pool(id).name.clone(),
            Some(world.health.pool_up(snap, id)),
        ),
        // A reload removed the pool in between: the override is stored all the same.
        None => (zone.to_string(), pool.to_string(), None),
    };
    log_change(who, &origin, &name, address, wanted.as_ref(), previous);
    let mut body = json!({
        "zone": origin,
        "pool": name,
        "state": wanted.as_ref().map(|e| e.state.as_str()),
        "previous": previous.map(Override::as_str),
        "up": up,
    });
    if let Some(e) = &wanted {
        body["by"] = json!(e.by);
        body["why"] = json!(e.why);
        body["at"] = json!(e.at);
        body["until"] = json!(e.until);
    }
    if let Some(r) = revision {
        body["revision"] = json!(r);
    }
    if let Some(a) = address {
        body["address"] = json!(a.to_string());
    }
    Ok(Json(body).into_response())
}

/// Every override change goes to the log with who made it: the peer, what let it through
/// (token or loopback) and the `by` it gave.
fn log_change(
    who: &Authorized,
    zone: &str,
    pool: &str,
    address: Option<IpAddr>,
    entry: Option<&OverrideEntry>,
    previous: Option<Override>,
) {
    let peer = who.peer.map(|p| p.to_string()).unwrap_or_default();
    let target = crate::health::overrides::describe(zone, pool, address);
    let previous = previous.map_or("none", Override::as_str);
    match entry {
        Some(e) => tracing::info!(
            zone,
            pool,
            address = address.map(|a| a.to_string()),
            state = e.state.as_str(),
            previous,
            by = e.by.as_deref(),
            why = e.why.as_deref(),
            until = e.until.as_deref(),
            peer,
            auth = who.by.as_str(),
            "override set: {target} {} by {} from {peer} ({})",
            e.state.as_str(),
            e.by.as_deref().unwrap_or("?"),
            who.by.as_str()
        ),
        None => tracing::info!(
            zone,
            pool,
            address = address.map(|a| a.to_string()),
            previous,
            peer,
            auth = who.by.as_str(),
            "override cleared: {target} (was {previous}) from {peer} ({})",
            who.by.as_str()
        ),
    }
}

/// 409 with the value that won (`null` when it was cleared).
fn conflict(current: Option<(OverrideEntry, i64)>) -> Response {
    let current = current.map(|(e, rev)| {
        let mut v = serde_json::to_value(&e).expect("plain values serialize");
        v["revision"] = json!(rev);
        v
    });
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": "another writer changed this override first; read it again and retry",
            "current": current,
        })),
    )
        .into_response()
}
