//! The admin API's own HTTP/1 accept loop, so that no client can hold its resources: a
//! connection cap where the longest-idle connection (one waiting for a request head,
//! half-sent ones included) gives way to a new one, a deadline on the request head and one
//! on the body, a body size limit, and a lifetime per connection. `axum::serve` has none of
//! these (it sets no timer, so hyper's header timeout never runs).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service as _;

use super::ApiError;
use crate::connections::{Caps, Lease, Table};

/// Time for a request head to arrive, counted from the connection's start or the end of its
/// previous request (so it is also the keep-alive idle time). hyper's default is 30 s and
/// nginx's `client_header_timeout` 60 s, both for clients across the Internet; the admin
/// API's clients are local tools and scrapers.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a request body to arrive once the head is in (Apache `mod_reqtimeout`:
/// `body=20`; our bodies are a few hundred bytes).
pub const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body: the biggest one, an override, is under 1 KiB (axum's default limit
/// is 2 MiB, nginx's `client_max_body_size` 1 MiB).
pub const ADMIN_MAX_BODY: usize = 64 * 1024;
/// Largest request head (hyper's minimum buffer; nginx reads heads in 8 KiB buffers).
pub const ADMIN_MAX_HEAD: usize = 16 * 1024;
/// Concurrent connections (nginx's `worker_connections` default), at most a quarter of the
/// open files limit.
pub const ADMIN_MAX_CONNECTIONS: usize = 512;
/// A connection is asked to close after this long, and dropped `SHUTDOWN_GRACE` later: it
/// bounds a response that a client never reads. A reload of a large zone takes seconds.
pub const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// The limits of the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body: usize,
    pub max_connections: usize,
    pub lifetime: Duration,
    /// Time for requests in flight to finish after stop or at the end of the lifetime.
    pub grace: Duration,
}

impl AdminLimits {
    /// The defaults, with the connection cap within a quarter of `fd_limit`.
    pub fn for_fd_limit(fd_limit: u64) -> AdminLimits {
        AdminLimits {
            header_timeout: ADMIN_HEADER_TIMEOUT,
            body_timeout: ADMIN_BODY_TIMEOUT,
            max_body: ADMIN_MAX_BODY,
            max_connections: usize::try_from(fd_limit / 4)
                .map_or(ADMIN_MAX_CONNECTIONS, |n| n.clamp(1, ADMIN_MAX_CONNECTIONS)),
            lifetime: ADMIN_CONNECTION_LIFETIME,
            grace: super::SHUTDOWN_GRACE,
        }
    }
}

/// Serve `app` on `listener` until `stop`; then give requests in flight `limits.grace`.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Table::new(Caps {
        total: limits.max_connections,
        per_network: limits.max_connections,
    });
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(lease) = table.admit(peer.ip()) else {
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            lease,
            limits,
            stop.clone(),
        ));
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, drain).await.is_err() {
        tracing::warn!(
            "admin: requests still running {:?} after stop; dropped",
            limits.grace
        );
    }
}

/// One HTTP/1 connection, within its head timeout and lifetime.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    lease: Lease,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slot = lease.slot.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // Busy from a complete head on; idle again once the response is handed to hyper.
            slot.set_busy();
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            let slot = slot.clone();
            async move {
                let response = app.call(req.map(Body::new)).await;
                slot.set_idle();
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(ADMIN_MAX_HEAD);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = lease.slot.evicted() => return,
        () = tokio::time::sleep(limits.lifetime) => {}
        () = stopped(&mut stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.grace, conn).await;
}

/// Resolves once `stop` is true (the guard `wait_for` returns is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Middleware: the whole body within [`AdminLimits::body_timeout`] and
/// [`AdminLimits::max_body`], or 408 / 413 before any handler runs.
pub(super) async fn read_body(limits: AdminLimits, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return too_large(limits);
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body);
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => too_large(limits),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:?}",
                limits.body_timeout
            ),
        )
        .into_response(),
    }
}

fn too_large(limits: AdminLimits) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request bodies are limited to {} bytes", limits.max_body),
    )
    .into_response()
}
