//! The HTTP server: accept loop, per-connection protocol (HTTP/1.1 and h2c), timeouts against
//! slow clients, the global in-flight cap, request ids, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_core::{ApiError, ErrorKind, RequestId};
use http::header::{ALLOW, CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::app::App;
use crate::audit;
use crate::handlers;
use crate::http::{Guarded, ResBody, error_response_in};
use crate::router::{self, Routed};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a handler knows about its request besides the request itself.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub request_id: RequestId,
    pub started: Instant,
    /// The client's address (the direct peer; no proxy header is trusted).
    pub peer: std::net::SocketAddr,
}

type Resp = Response<Guarded<Option<OwnedSemaphorePermit>>>;

/// Serves `app` on `listener` until `shutdown` resolves, then drains: stops accepting, lets
/// in-flight requests and streams finish for `server.shutdown_grace_ms`, and cuts the rest.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let s = &app.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(s.header_timeout_ms))
        // The read buffer bounds the request head: beyond it hyper answers 431. (hyper's
        // floor is 8192 bytes.)
        .max_buf_size(s.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(s.h2_keepalive_ms))
        .keep_alive_timeout(Duration::from_millis(s.h2_keepalive_ms))
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    let grace = Duration::from_millis(s.shutdown_grace_ms);

    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin; existing connections go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            // Boxed: hyper keeps a slot the size of the service's future for as long as the
            // connection lives, also while a streamed answer is relayed after the handler
            // returned. Boxed, each connection keeps a pointer and the request's state (about
            // 5.6 KB: `dispatch` boxes every route but the gateway's) goes with the handler.
            let handled = Box::pin(handle(app.clone(), req, peer));
            async move { Ok::<_, std::convert::Infallible>(handled.await) }
        });
        let conn =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        connections.spawn(graceful.watch(conn));
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(
        open_connections = open,
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(cut = connections.len(), "shutdown grace period over: cutting open connections");
        }
    }
    connections.shutdown().await;
}

/// One request: route, admit under the in-flight cap, dispatch, stamp the request id.
async fn handle(app: Arc<App>, req: Request<Incoming>, peer: std::net::SocketAddr) -> Resp {
    let ctx = Ctx { request_id: RequestId::new(), started: Instant::now(), peer };
    let tls = app.behind_tls;
    // The route borrows the path while the handler consumes the request; cloning a `Uri` only
    // bumps reference counts.
    let uri = req.uri().clone();
    let shape = router::error_shape(uri.path());
    let (res, permit) = match router::route(req.method(), uri.path()) {
        Routed::Found(route) => {
            let permit = if route.is_ops() {
                None
            } else {
                match app.in_flight.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::warn!(request_id = %ctx.request_id, "in-flight cap reached: shedding");
                        app.metrics.shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return finish(
                            error_response_in(shape, &ApiError::overloaded()),
                            None,
                            ctx,
                            tls,
                        );
                    }
                }
            };
            let res = match audit::action(&route) {
                None => handlers::dispatch(&app, route, req, ctx).await,
                // Boxed, as `dispatch` boxes every route but the gateway's: an audited action
                // is never on the gateway's path, and its state would size every request's.
                Some(action) => {
                    Box::pin(async {
                        let (res, note) =
                            audit::scope(handlers::dispatch(&app, route, req, ctx)).await;
                        audit::record(&app, ctx, action, note, res.status().as_u16()).await;
                        res
                    })
                    .await
                }
            };
            (res, permit)
        }
        Routed::MethodNotAllowed(allow) => {
            let err = ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("Method {} is not allowed here; use {allow}.", req.method()),
            );
            let mut res = error_response_in(shape, &err);
            res.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            (res, None)
        }
        Routed::NotFound => {
            let err = ApiError::new(
                ErrorKind::NotFound,
                format!("Unknown request URL: {} {}.", req.method(), req.uri().path()),
            );
            (error_response_in(shape, &err), None)
        }
    };
    finish(res, permit, ctx, tls)
}

fn finish(
    res: Response<ResBody>,
    permit: Option<OwnedSemaphorePermit>,
    ctx: Ctx,
    tls: bool,
) -> Resp {
    let (mut parts, body) = res.into_parts();
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = ctx.request_id.as_uuid().hyphenated().encode_lower(&mut id);
    if let Ok(v) = HeaderValue::from_str(id) {
        parts.headers.insert(X_REQUEST_ID, v);
    }
    secure(&mut parts.headers, tls);
    Response::from_parts(parts, Guarded::new(body, permit))
}

/// The security headers of every response (a page's own, stricter ones stay): no MIME
/// sniffing, no framing, no referrer beyond this origin, and behind TLS (an `https://`
/// `server.public_url`) HSTS for a year.
fn secure(h: &mut http::HeaderMap, tls: bool) {
    use http::header::{
        REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    h.entry(X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    h.entry(X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    h.entry(REFERRER_POLICY).or_insert(HeaderValue::from_static("same-origin"));
    if tls {
        h.entry(STRICT_TRANSPORT_SECURITY).or_insert(HeaderValue::from_static("max-age=31536000"));
    }
}

/// Reads a whole request body under the size limit and the body timeout.
pub async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = app.config.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(app.config.server.body_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::invalid_request("The request body could not be read.")),
        Err(_) => Err(ApiError::new(
            ErrorKind::RequestTimeout,
            "The request body was not received in time.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper keeps each request's state (boxed, see `serve`) while the handler runs, and
    /// every request allocates and copies it. The largest route's state used to size it for
    /// all, the gateway's requests included (30 KB in a release build, 15.7 KB in this one),
    /// until `dispatch` boxed every route but the gateway's (5.6 KB since).
    #[test]
    fn a_request_state_stays_small() {
        let size = future_size(handle);
        assert!(size <= 8 * 1024, "a request's state takes {size} bytes");
    }
}
