//! `GET /v1/explain?name=&type=&client=` (SPEC §6): the decision trace for one question,
//! asked of the live world (current snapshot, health and overrides) through the same code
//! as `meridian explain`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;

use super::{ApiError, AppState};
use crate::explain::{parse_client, parse_qtype};

/// SPEC §1: `meridian explain NAME [TYPE]` asks for A when no type is given.
const DEFAULT_QTYPE: &str = "A";

/// The Explanation JSON, or 400 on a missing or bad parameter. Without `client` the question
/// is asked as the peer itself (like `dig` from the same machine).
pub(super) async fn explain(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let name = params
        .get("name")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("missing parameter: name".into()))?;
    let qtype = parse_qtype(params.get("type").map_or(DEFAULT_QTYPE, String::as_str))
        .map_err(|e| bad(format!("type: {e}")))?;
    let (client, source_prefix) = match params.get("client").map(|c| c.trim()) {
        Some(c) => parse_client(c)
            .map_err(|_| bad(format!("client: expected ADDR or ADDR/LEN, got {c:?}")))?,
        None => (peer.ip().to_canonical(), None),
    };
    if crate::model::wire::from_text(name).is_none() {
        return Err(bad(format!("name: {name:?} is not a valid domain name")));
    }
    let world = state.control.world.load_full();
    let mut e = crate::explain::explain(
        &world,
        name,
        qtype,
        client,
        source_prefix,
        SystemTime::now(),
    );
    if let Some(cluster) = &state.control.cluster {
        e.add_cluster(&world, cluster, &state.control.local_statuses());
    }
    Ok(Json(e.to_json()))
}
