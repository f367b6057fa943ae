//! The admin HTTP API (SPEC §7): health, Prometheus metrics, status, explain, reload and
//! overrides, on its own listener beside the DNS workers, within the limits of `limits.rs`
//! (connection cap, head and body deadlines, body size, connection lifetime).
//!
//! Everything here reads the world the DNS path serves (one `load` per request) or writes it
//! through [`Control`]; nothing here runs on the DNS hot path (a scrape takes each worker's
//! totals lock once, which the worker takes once per flush). Read endpoints are open;
//! changes go through `auth::Authorized`. Every error is a JSON `{"error": "..."}` body.
//!
//! | route | handler |
//! |---|---|
//! | `GET /healthz` | `"ok"` while every DNS worker runs; 503 when one has stopped |
//! | `GET /metrics` | [`metrics::render`] |
//! | `GET /v1/status` | `status::status` |
//! | `GET /v1/explain?name=&type=&client=` | `explain::explain` |
//! | `POST /v1/reload` | `change::reload` |
//! | `GET /v1/overrides` | `status::overrides`: the stored overrides |
//! | `PUT`/`DELETE /v1/overrides/{zone}/{pool}` | `change::set_override`, `change::clear_override` |

mod auth;
mod change;
mod explain;
pub mod limits;
pub mod metrics;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::reload::Control;

use auth::Auth;
pub use limits::AdminLimits;

/// After the stop signal, in-flight requests (a reload, a slow scrape) get this long to
/// finish before the server task returns anyway, so a stuck client cannot hold up shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    control: Arc<Control>,
    auth: Arc<Auth>,
}

/// Serve the admin API until `stop` turns true, with the default limits.
pub async fn serve(listener: TcpListener, control: Arc<Control>, stop: watch::Receiver<bool>) {
    let limits = AdminLimits::for_fd_limit(crate::connections::fd_limit());
    serve_with_limits(listener, control, stop, limits).await;
}

/// Serve the admin API until `stop` turns true, within `limits`.
pub async fn serve_with_limits(
    listener: TcpListener,
    control: Arc<Control>,
    stop: watch::Receiver<bool>,
    limits: AdminLimits,
) {
    let auth = match Auth::from_settings(&control.settings) {
        Ok(a) => a,
        Err(e) => {
            // app::start has already bound the port; without a readable token file no change
            // may be accepted, so refuse them all rather than fall back to the loopback rule.
            tracing::error!("admin: {e}; every change will be refused");
            Auth::RefuseAll
        }
    };
    let state = AppState {
        control,
        auth: Arc::new(auth),
    };
    let app = router(state)
        .layer(axum::middleware::from_fn(move |req, next| {
            limits::read_body(limits, req, next)
        }))
        .layer(DefaultBodyLimit::max(limits.max_body));
    limits::serve(listener, app, limits, stop).await;
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/status", get(status::status))
        .route("/v1/explain", get(explain::explain))
        .route("/v1/reload", post(change::reload))
        .route("/v1/overrides", get(status::overrides))
        .route(
            "/v1/overrides/{zone}/{pool}",
            put(change::set_override).delete(change::clear_override),
        )
        .route(
            "/v1/overrides/{zone}/{pool}/{address}",
            put(change::set_endpoint_override).delete(change::clear_endpoint_override),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .with_state(state)
}

/// `ok` while every DNS worker runs; 503 once one has stopped (a worker that died of a
/// panic, or shutdown under way), so that a load balancer or supervisor takes notice.
async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.control.dns_stats.workers_stopped() {
        0 => (StatusCode::OK, "ok\n".into()),
        n => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("dns workers not running: {n}\n"),
        ),
    }
}

/// An error answer: the status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
