//! The OpenAI-compatible endpoints, authenticated by API key.

use std::sync::Arc;
use std::time::Duration;

use gateway_auth::Principal;
use gateway_core::openai::{List, Model};
use gateway_core::{ApiError, ErrorKind, Scope};
use gateway_proxy::request::{Endpoint, forward_body, inspect};
use gateway_proxy::{ForwardRequest, Forwarded};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::errors::from_verify;
use crate::http::{ResBody, json};
use crate::server::{Ctx, read_body};

pub const OVERHEAD_HEADER: &str = "x-bluesminds-overhead-ms";

/// Authenticates the bearer key and checks it may use `scope`.
pub async fn authenticate<B>(
    app: &App,
    req: &Request<B>,
    scope: Scope,
) -> Result<Arc<Principal>, ApiError> {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let principal = app.verifier.verify_header(header).await.map_err(from_verify)?;
    if !principal.has_scope(scope) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This API key does not have the '{scope}' scope."),
        ));
    }
    Ok(principal)
}

/// `GET /v1/models`: the models of active servers that the key may use.
pub async fn models<B>(app: &App, req: &Request<B>) -> Result<Response<ResBody>, ApiError> {
    let principal = authenticate(app, req, Scope::Models).await?;
    let data: Vec<Model> = app
        .pool
        .models()
        .into_iter()
        .filter(|m| principal.may_use_model(m))
        .map(|id| Model { id, object: "model".into(), created: 0, owned_by: "bluesminds".into() })
        .collect();
    Ok(json(StatusCode::OK, &List::new(data)))
}

pub fn overhead_value(overhead: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// `POST /v1/chat/completions` and `POST /v1/embeddings`: authenticate, read the few fields
/// needed in one pass, check the model, forward the client's bytes, relay the answer.
pub async fn forward(
    app: &App,
    req: Request<Incoming>,
    ctx: Ctx,
    endpoint: Endpoint,
) -> Result<Response<ResBody>, ApiError> {
    let scope = match endpoint {
        Endpoint::ChatCompletions => Scope::ChatCompletions,
        Endpoint::Embeddings => Scope::Embeddings,
    };
    let principal = authenticate(app, &req, scope).await?;
    let body = read_body(app, req).await?;
    let view = inspect(&body, endpoint, &app.forbidden)?;
    if !principal.may_use_model(&view.model) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This API key may not use the model `{}`.", view.model),
        )
        .with_param("model"));
    }
    if !app.pool.knows_model(&view.model) {
        return Err(ApiError::model_not_found(&view.model));
    }
    let model = view.model.clone().into_owned();
    let stream = view.stream;
    let strip_usage_chunk = stream && !view.client_wants_usage;
    let outgoing = forward_body(body.clone(), &view)?;
    drop(view);
    let request_id = ctx.request_id.to_string();
    let forwarded = app
        .forwarder
        .forward(ForwardRequest {
            endpoint,
            model: &model,
            body: outgoing,
            stream,
            strip_usage_chunk,
            request_id: &request_id,
        })
        .await?;
    match forwarded {
        Forwarded::Complete { status, content_type, body, upstream, .. } => {
            let overhead = ctx.started.elapsed().saturating_sub(upstream);
            let mut res = Response::new(ResBody::full(body));
            *res.status_mut() = status;
            let headers = res.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            headers.insert(OVERHEAD_HEADER, overhead_value(overhead));
            Ok(res)
        }
        Forwarded::Stream { status, body, upstream, .. } => {
            let overhead = ctx.started.elapsed().saturating_sub(upstream);
            let request_id = ctx.request_id;
            let body = body.on_end(move |end| {
                if let Some(error) = &end.error {
                    tracing::info!(%request_id, error, client_disconnected = end.client_disconnected, "stream ended early");
                }
            });
            let mut res = Response::new(ResBody::Stream(Box::pin(body)));
            *res.status_mut() = status;
            let headers = res.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(OVERHEAD_HEADER, overhead_value(overhead));
            Ok(res)
        }
    }
}
