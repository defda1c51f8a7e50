//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use std::time::Duration;

use gateway_core::{ApiError, ErrorKind};
use http::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::http::{ResBody, json, json_bytes};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn healthz() -> Response<ResBody> {
    json_bytes(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
}

/// 200 when the database (and Redis, when configured) answer within two seconds; 503 with an
/// OpenAI error body and the per-dependency result otherwise, and from the moment shutdown
/// begins (`"shutdown": "draining"`).
pub async fn readyz(app: &App) -> Response<ResBody> {
    if app.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return not_ready(
            "The gateway instance is shutting down.",
            json!({"shutdown": "draining"}),
        );
    }
    let database = match tokio::time::timeout(CHECK_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database ping failed");
            "unreachable"
        }
        Err(_) => "timeout",
    };
    let redis = match &app.redis {
        None => "not configured",
        Some(conn) => match conn.ping(CHECK_TIMEOUT).await {
            Ok(()) => "ok",
            Err(gateway_redis::RedisError::Timeout(_)) => "timeout",
            Err(e) => {
                tracing::warn!(error = %e, "readiness: redis ping failed");
                "unreachable"
            }
        },
    };
    let ready = database == "ok" && matches!(redis, "ok" | "not configured");
    let checks = json!({"database": database, "redis": redis});
    if ready {
        json(StatusCode::OK, &json!({"status": "ready", "checks": checks}))
    } else {
        not_ready("A dependency of the gateway is unavailable.", checks)
    }
}

/// 503 with an OpenAI error body, `Retry-After: 5` and what was found.
fn not_ready(message: &'static str, checks: serde_json::Value) -> Response<ResBody> {
    let err = ApiError::new(ErrorKind::ServiceUnavailable, message).with_retry_after(5);
    let mut body = serde_json::to_value(err.body()).unwrap_or_default();
    body["checks"] = checks;
    let mut res = json(StatusCode::SERVICE_UNAVAILABLE, &body);
    res.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
    res
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(app: &App) -> Response<ResBody> {
    let bus_errors = app.bus.as_ref().map_or(0, gateway_redis::bus::Bus::errors);
    let mut text = app.metrics.render(&app.pool, &app.usage, bus_errors);
    crate::metrics::render_pipeline(&mut text, &app.pipeline, app.resilient.as_deref());
    if let Some(bus) = &app.bus {
        crate::metrics::render_bus(&mut text, bus.subscribed());
    }
    if let Some(leased) = &app.leased {
        crate::metrics::render_leases(&mut text, leased.stats());
    }
    if let Some(traces) = &app.traces {
        crate::metrics::render_traces(&mut text, traces.stats());
    }
    let mut res = Response::new(ResBody::full(text));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
