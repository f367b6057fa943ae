//! The changing endpoints: `POST /v1/reload` (SPEC §8) and
//! `PUT`/`DELETE /v1/overrides/{zone}/{pool}[/{address}]` (SPEC §5). Each takes [`Authorized`] first and
//! goes through [`crate::reload::Control`], which serialises writers and swaps the world.

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Authorized;
use super::{ApiError, AppState};
use crate::health::Override;
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

/// The body of `PUT /v1/overrides/{zone}/{pool}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    state: Override,
}

/// `PUT /v1/overrides/{zone}/{pool}` with `{"state": "up" | "down" | "drain"}`.
pub(super) async fn set_override(
    _: Authorized,
    State(state): State<AppState>,
    Path((zone, pool)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(&state, &zone, &pool, None, Some(parse_body(&body)?)).await
}

/// `DELETE /v1/overrides/{zone}/{pool}`: back to what the probes say.
pub(super) async fn clear_override(
    _: Authorized,
    State(state): State<AppState>,
    Path((zone, pool)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change(&state, &zone, &pool, None, None).await
}

/// `PUT /v1/overrides/{zone}/{pool}/{address}`: one endpoint of the pool.
pub(super) async fn set_endpoint_override(
    _: Authorized,
    State(state): State<AppState>,
    Path((zone, pool, address)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let address = parse_address(&address)?;
    change(
        &state,
        &zone,
        &pool,
        Some(address),
        Some(parse_body(&body)?),
    )
    .await
}

/// `DELETE /v1/overrides/{zone}/{pool}/{address}`.
pub(super) async fn clear_endpoint_override(
    _: Authorized,
    State(state): State<AppState>,
    Path((zone, pool, address)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let address = parse_address(&address)?;
    change(&state, &zone, &pool, Some(address), None).await
}

fn parse_body(body: &[u8]) -> Result<Override, ApiError> {
    let wanted: OverrideBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a body {{\"state\": \"up\" | \"down\" | \"drain\"}}: {e}"),
        )
    })?;
    Ok(wanted.state)
}

fn parse_address(text: &str) -> Result<IpAddr, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not an IP address"),
        )
    })
}

/// Apply an override (persisted before it takes effect) and answer with the pool as it is
/// now: `{"zone", "pool", "state", "previous", "up"}`.
async fn change(
    state: &AppState,
    zone: &str,
    pool: &str,
    address: Option<IpAddr>,
    wanted: Option<Override>,
) -> Result<Response, ApiError> {
    let control = state.control.clone();
    let (z, p) = (zone.to_string(), pool.to_string());
    // Writes overrides.json: blocking file I/O.
    let previous =
        tokio::task::spawn_blocking(move || control.set_override(&z, &p, address, wanted))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("override did not finish: {e}"),
                )
            })?
            .map_err(|e| match e {
                OverrideChangeError::NoZone(_)
                | OverrideChangeError::NoPool(..)
                | OverrideChangeError::NoEndpoint(..) => {
                    ApiError::new(StatusCode::NOT_FOUND, e.to_string())
                }
                OverrideChangeError::Store(_) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            })?;
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
    let mut body = json!({
        "zone": origin,
        "pool": name,
        "state": wanted.map(Override::as_str),
        "previous": previous.map(Override::as_str),
        "up": up,
    });
    if let Some(a) = address {
        body["address"] = json!(a.to_string());
    }
    Ok(Json(body).into_response())
}
