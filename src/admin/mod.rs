//! The admin HTTP API (SPEC §7). Placeholder: `/healthz` only.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::reload::Control;

/// Serve the admin API until `stop` turns true.
pub async fn serve(listener: TcpListener, control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let _ = control;
    let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
}
