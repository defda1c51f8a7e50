//! The OpenAI-compatible endpoints, authenticated by API key.

use std::sync::Arc;
use std::time::Duration;

use gateway_auth::Principal;
use gateway_core::openai::{List, Model};
use gateway_core::{ApiError, ErrorKind, Scope, Usage};
use gateway_proxy::estimate::charged;
use gateway_proxy::request::{Endpoint, forward_body, inspect, printable};
use gateway_proxy::{ForwardRequest, Forwarded};
use gateway_usage::UsageRecord;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::errors::from_verify;
use crate::http::{ResBody, json};
use crate::server::{Ctx, read_body};

/// A constant `HeaderName`: inserting by `&str` would copy the name for every response.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-bluesminds-overhead-ms");

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

/// The usage record of one request, filled in as the request goes, finished exactly once
/// (by `forward`, or for a stream by the relay's end callback).
#[derive(Clone)]
struct UsageDraft {
    record: UsageRecord,
    started: std::time::Instant,
    /// Prompt tokens estimated from the body, for answers without usage.
    prompt_estimate: u64,
}

impl UsageDraft {
    fn new(ctx: Ctx, principal: &Principal, endpoint: Endpoint) -> Self {
        // Microseconds, as Postgres stores them: the log's cursor is then exact on every backend.
        let now = time::OffsetDateTime::now_utc();
        let created_at = now.replace_nanosecond(now.nanosecond() / 1000 * 1000).unwrap_or(now);
        let record = UsageRecord {
            request_id: ctx.request_id,
            created_at,
            user_id: principal.user_id,
            api_key_id: Some(principal.key_id),
            server_id: None,
            endpoint: endpoint.as_str().to_owned(),
            model: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cost_micros: 0,
            latency_ms: 0,
            upstream_latency_ms: None,
            status_code: 0,
            is_error: false,
            error_message: None,
            streamed: false,
            client_disconnected: false,
            usage_estimated: false,
        };
        Self { record, started: ctx.started, prompt_estimate: 0 }
    }

    fn finish(
        mut self,
        status: StatusCode,
        usage: Option<Usage>,
        error: Option<String>,
    ) -> UsageRecord {
        let r = &mut self.record;
        r.status_code = status.as_u16();
        r.is_error = error.is_some() || !status.is_success();
        // Error texts may quote the client: no control character reaches the row or a log.
        r.error_message = error.map(|e| printable(&e, 500));
        if let Some(u) = usage {
            (r.prompt_tokens, r.completion_tokens) = (u.prompt_tokens, u.completion_tokens);
            r.total_tokens = u.total();
        }
        r.latency_ms = self.started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        self.record
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// `POST /v1/chat/completions` and `POST /v1/embeddings`: authenticate, read the few fields
/// needed in one pass, check the model, reserve against the key's limits, forward the client's
/// bytes, relay the answer, settle the reservation. Every authenticated request leaves exactly
/// one usage record, whichever way it ends.
pub async fn forward(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: Ctx,
    endpoint: Endpoint,
) -> Result<Response<ResBody>, ApiError> {
    let scope = match endpoint {
        Endpoint::ChatCompletions => Scope::ChatCompletions,
        Endpoint::Embeddings => Scope::Embeddings,
    };
    let principal = authenticate(app, &req, scope).await?;
    let mut draft = UsageDraft::new(ctx, &principal, endpoint);
    let mut limit = LimitState::default();
    let outcome =
        forward_authenticated(app, req, ctx, endpoint, &principal, &mut draft, &mut limit).await;
    let mut res = match outcome {
        Ok(Step::Done(res, usage)) => {
            let ok = res.status().is_success();
            if let (Some(limits), Some(reservation)) = (&app.limits, limit.reservation.take()) {
                limits.settle_answer(reservation, ok, usage);
            }
            let error = (!ok).then(|| format!("upstream answered {}", res.status()));
            app.record_usage(draft.finish(res.status(), usage, error));
            res
        }
        Ok(Step::Streaming(res)) => res,
        Err(e) => {
            if let (Some(limits), Some(reservation)) = (&app.limits, limit.reservation.take()) {
                limits.settle_answer(reservation, false, None);
            }
            let status = crate::http::status_of(e.kind);
            app.record_usage(draft.finish(status, None, Some(e.message.to_string())));
            crate::http::error_response(&e)
        }
    };
    if let Some(snapshot) = &limit.snapshot {
        crate::limits::add_headers(res.headers_mut(), snapshot);
    }
    Ok(res)
}

/// The request's standing with the limiter.
#[derive(Default)]
struct LimitState {
    /// What the `x-ratelimit-*` headers report, once the limiter has been asked.
    snapshot: Option<gateway_ratelimit::Snapshot>,
    /// Tokens reserved, to settle when the answer is known.
    reservation: Option<gateway_ratelimit::Reservation>,
}

enum Step {
    /// A whole response, with the usage it reported.
    Done(Response<ResBody>, Option<Usage>),
    /// A stream: its usage record is written (and its reservation settled) when it ends.
    Streaming(Response<ResBody>),
}

async fn forward_authenticated(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: Ctx,
    endpoint: Endpoint,
    principal: &Principal,
    draft: &mut UsageDraft,
    limit: &mut LimitState,
) -> Result<Step, ApiError> {
    let body = read_body(app, req).await?;
    let view = inspect(&body, endpoint, &app.rules)?;
    draft.record.model = view.model.chars().take(200).collect();
    draft.record.streamed = view.stream;
    draft.prompt_estimate = view.estimated_prompt_tokens();
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
    if let Some(limits) = &app.limits {
        let completes = endpoint == Endpoint::ChatCompletions;
        let estimate = limits.estimate(draft.prompt_estimate, view.max_tokens, completes);
        match limits.reserve(principal.key_id, &principal.limits, estimate).await {
            Ok((reservation, snapshot)) => {
                limit.reservation = Some(reservation);
                limit.snapshot = Some(snapshot);
            }
            Err((refusal, snapshot)) => {
                limit.snapshot = snapshot;
                app.metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(refusal);
            }
        }
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
        Forwarded::Complete {
            status,
            content_type,
            body,
            usage,
            generated_tokens,
            upstream,
            server,
        } => {
            // A successful answer without usage is charged the estimate of what it generated.
            let usage = status.is_success().then(|| {
                let (usage, estimated) = charged(usage, draft.prompt_estimate, generated_tokens);
                draft.record.usage_estimated = estimated;
                usage
            });
            draft.record.server_id = Some(server);
            draft.record.upstream_latency_ms = Some(millis(upstream));
            let overhead = ctx.started.elapsed().saturating_sub(upstream);
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
            Ok(Step::Done(res, usage))
        }
        Forwarded::Stream { status, body, upstream, server } => {
            draft.record.server_id = Some(server);
            draft.record.upstream_latency_ms = Some(millis(upstream));
            let overhead = ctx.started.elapsed().saturating_sub(upstream);
            app.metrics.observe_overhead(endpoint.as_str(), overhead);
            let draft = draft.clone();
            let app = Arc::clone(app);
            let reservation = limit.reservation.take();
            let body = body.on_end(move |end| {
                // Without a usage chunk (the gateway always asks for one, but an upstream may not
                // send it, or the stream may end first): the prompt estimate plus everything
                // relayed (content, reasoning, refusals, tool calls), never zero.
                let (reported, estimated) =
                    charged(end.usage, draft.prompt_estimate, end.counted_completion_tokens);
                // What was generated is charged, even to a client that left.
                if let (Some(limits), Some(reservation)) = (&app.limits, reservation) {
                    limits.settle(reservation, reported.total());
                }
                // A client that leaves is not an error; the flag says what happened.
                let error = if end.client_disconnected { None } else { end.error };
                let mut record = draft.finish(StatusCode::OK, Some(reported), error);
                record.client_disconnected = end.client_disconnected;
                record.usage_estimated = estimated;
                app.record_usage(record);
            });
            let mut res = Response::new(ResBody::Stream(Box::pin(body)));
            *res.status_mut() = status;
            let headers = res.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(OVERHEAD_HEADER, overhead_value(overhead));
            Ok(Step::Streaming(res))
        }
    }
}
