//! The OpenAI-compatible endpoints: HTTP in, [`gateway_pipeline`] call, HTTP out.

use std::sync::Arc;
use std::time::Duration;

use gateway_core::openai::{List, Model};
use gateway_core::{ApiError, ErrorShape, Scope};
use gateway_pipeline::{Answer, Head, Reply};
use gateway_proxy::request::{Dialect, Endpoint};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::http::{ResBody, error_response_in, json};
use crate::server::{Ctx, read_body};

/// A constant `HeaderName`: inserting by `&str` would copy the name for every response.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-bluesminds-overhead-ms");
/// W3C Trace Context: the caller's trace, continued by the gateway's spans.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// What a non-streamed request cost, in micro-dollars.
pub const COST_HEADER: HeaderName = HeaderName::from_static("x-bluesminds-cost-micros");

fn authorization<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""))
}

/// Anthropic's SDKs send the key as `x-api-key`.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The key of a request to `endpoint`: on the Messages routes `x-api-key` (as Anthropic's SDKs
/// send it) when present, else `Authorization`.
fn key_of<B>(req: &Request<B>, endpoint: Endpoint) -> Option<&str> {
    match req.headers().get(X_API_KEY) {
        Some(key) if endpoint == Endpoint::Messages => Some(key.to_str().unwrap_or("")),
        _ => authorization(req),
    }
}

/// Anthropic's request headers an upstream serving Messages reads: the API version and the
/// beta features asked for. Passed on as they came; nothing else of the client's is.
const ANTHROPIC_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("anthropic-version"), HeaderName::from_static("anthropic-beta")];

/// The client headers a request to `endpoint` passes on to the upstream (none but on the
/// Messages route).
fn passthrough_of<B>(req: &Request<B>, endpoint: Endpoint) -> Vec<(HeaderName, HeaderValue)> {
    if endpoint != Endpoint::Messages {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in &ANTHROPIC_HEADERS {
        for value in req.headers().get_all(name) {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}

/// The error body of an endpoint's route.
fn shape_of(endpoint: Endpoint) -> ErrorShape {
    match endpoint.dialect() {
        Dialect::Anthropic => ErrorShape::Anthropic,
        Dialect::OpenAi | Dialect::Responses => ErrorShape::OpenAi,
    }
}

/// `GET /v1/models`: the models of active servers and the model routes that the key may use.
/// An Anthropic SDK (it sends `anthropic-version` on every request) gets Anthropic's list,
/// may send its key as `x-api-key`, and reads its errors in Anthropic's shape.
pub async fn models<B>(app: &App, req: &Request<B>) -> Result<Response<ResBody>, ApiError> {
    if !req.headers().contains_key(&ANTHROPIC_HEADERS[0]) {
        let principal = app.pipeline.authenticate(authorization(req), Scope::Models).await?;
        let data: Vec<Model> = app
            .pipeline
            .models(&principal)
            .into_iter()
            .map(|id| Model {
                id,
                object: "model".into(),
                created: 0,
                owned_by: "bluesminds".into(),
            })
            .collect();
        return Ok(json(StatusCode::OK, &List::new(data)));
    }
    let key = match req.headers().get(X_API_KEY) {
        Some(key) => Some(key.to_str().unwrap_or("")),
        None => authorization(req),
    };
    let principal = match app.pipeline.authenticate(key, Scope::Models).await {
        Ok(p) => p,
        Err(e) => return Ok(error_response_in(ErrorShape::Anthropic, &e)),
    };
    let data: Vec<serde_json::Value> = app
        .pipeline
        .models(&principal)
        .into_iter()
        .map(|id| {
            serde_json::json!({"type": "model", "id": id, "display_name": id,
                "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    let (first, last) =
        (data.first().map(|m| m["id"].clone()), data.last().map(|m| m["id"].clone()));
    let body =
        serde_json::json!({"data": data, "has_more": false, "first_id": first, "last_id": last});
    Ok(json(StatusCode::OK, &body))
}

/// Milliseconds with three decimals, written without a `String` in between (every gateway
/// answer carries it).
pub fn overhead_value(overhead: Duration) -> HeaderValue {
    use std::io::Write;
    let micros = (overhead.as_nanos() + 500) / 1000;
    let mut buf = std::io::Cursor::new([0u8; 48]);
    let _ = write!(buf, "{}.{:03}", micros / 1000, micros % 1000);
    let n = buf.position() as usize;
    HeaderValue::from_bytes(&buf.get_ref()[..n]).unwrap_or(HeaderValue::from_static("0"))
}

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses` and
/// `/v1/messages`: authenticate, read the body, run the pipeline, write its reply.
pub async fn forward(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: Ctx,
    endpoint: Endpoint,
) -> Result<Response<ResBody>, ApiError> {
    let passthrough = passthrough_of(&req, endpoint);
    let head = Head {
        endpoint,
        request_id: ctx.request_id,
        started: ctx.started,
        authorization: key_of(&req, endpoint),
        traceparent: req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()),
        passthrough: &passthrough,
    };
    let call = app.pipeline.open(head).await?;
    let reply = match read_body(app, req).await {
        Ok(body) => call.run(body).await,
        Err(e) => call.refuse(e),
    };
    Ok(respond(app, endpoint, reply))
}

/// The HTTP response of a pipeline reply.
fn respond(app: &App, endpoint: Endpoint, reply: Reply) -> Response<ResBody> {
    let mut res = match reply.answer {
        Answer::Whole { status, content_type, body, overhead } => {
            app.metrics.observe_overhead(endpoint.as_str(), overhead);
            let mut res = Response::new(ResBody::full(body));
            *res.status_mut() = status;
            // Room for every header the gateway adds, so the map never grows.
            *res.headers_mut() = HeaderMap::with_capacity(16);
            let headers = res.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            headers.insert(OVERHEAD_HEADER, overhead_value(overhead));
            res
        }
        Answer::Stream { status, body, overhead } => {
            app.metrics.observe_overhead(endpoint.as_str(), overhead);
            let mut res = Response::new(ResBody::Stream(Box::into_pin(body)));
            *res.status_mut() = status;
            let headers = res.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(OVERHEAD_HEADER, overhead_value(overhead));
            res
        }
        Answer::Error(e) => error_response_in(shape_of(endpoint), &e),
    };
    if let Some(snapshot) = &reply.limits {
        crate::limits::add_headers(res.headers_mut(), snapshot);
    }
    if let Some(cost) = reply.cost_micros {
        res.headers_mut().insert(COST_HEADER, HeaderValue::from(cost));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overhead_header_is_milliseconds_with_three_decimals() {
        let v = |d: Duration| overhead_value(d).to_str().unwrap().to_owned();
        assert_eq!(v(Duration::ZERO), "0.000");
        assert_eq!(v(Duration::from_micros(25)), "0.025");
        assert_eq!(v(Duration::from_nanos(1_234_499)), "1.234");
        assert_eq!(v(Duration::from_nanos(1_234_500)), "1.235");
        assert_eq!(v(Duration::from_secs(90)), "90000.000");
    }
}
