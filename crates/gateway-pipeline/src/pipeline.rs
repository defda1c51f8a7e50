//! One gateway request, from its API key and body to its answer and its one usage record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_auth::Principal;
use gateway_balancer::ServerPool;
use gateway_billing::{Ceiling, CeilingKind, Prices, Tokens, UNLIMITED_TOKENS, monthly_ceiling};
use gateway_core::{ApiError, ErrorKind, Plan, PlanSource, RequestId, Role, Scope, ServerId, Tier};
use gateway_proxy::client::Upstream;
use gateway_proxy::relay::RelayBody;
use gateway_proxy::request::{
    Endpoint, RequestRules, forward_body, forward_body_as, inspect, printable,
};
use gateway_ratelimit::{Reservation, Snapshot, Subject};
use gateway_usage::{UsageRecord, UsageSink};
use http::{HeaderValue, StatusCode};

use crate::charge::{Ending, charge};
use crate::forward::{ForwardRequest, Forwarded, Forwarder, Routed};
use crate::limits::{Limiting, Standing};
use crate::ports::{KeyCheck, from_verify};
use crate::trace::{Trace, Tracer};
use gateway_core::trace::SpanKind;

/// What the pipeline is built from: every port it calls.
pub struct Ports {
    /// Verifies API keys (`gateway_auth::KeyVerifier` in production).
    pub keys: Arc<dyn KeyCheck>,
    /// The upstream servers, their health and circuits.
    pub pool: Arc<ServerPool>,
    /// Sends a request to one server (`gateway_proxy::client::UpstreamClient` in production).
    pub upstream: Arc<dyn Upstream>,
    /// Rate limits and quotas; `None` when disabled.
    pub limits: Option<Limiting>,
    /// Takes every request's usage record without waiting.
    pub usage: Arc<dyn UsageSink>,
    /// Model prices, read from memory: the cost of every request.
    pub prices: Arc<Prices>,
    /// The plans, read from memory: every key's limits and every user's monthly ceiling.
    pub plans: Arc<dyn PlanSource>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// How the pipeline treats requests.
#[derive(Clone, Debug, Default)]
pub struct PipelineConfig {
    /// What every request body is checked for before anything is forwarded.
    pub rules: RequestRules,
    /// Servers tried per request (at least one).
    pub max_attempts: usize,
}

/// The request pipeline of a running gateway, shared by every request.
pub struct Pipeline {
    keys: Arc<dyn KeyCheck>,
    pool: Arc<ServerPool>,
    forwarder: Forwarder,
    limits: Option<Limiting>,
    usage: Arc<dyn UsageSink>,
    prices: Arc<Prices>,
    plans: Arc<dyn PlanSource>,
    rules: RequestRules,
    rate_limited: AtomicU64,
    tracer: Option<Tracer>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("forwarder", &self.forwarder)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The answer to one request, for the HTTP layer to write.
#[derive(Debug)]
pub struct Reply {
    pub answer: Answer,
    /// The key's standing with the limiter (the `x-ratelimit-*` headers), once it was asked.
    pub limits: Option<Snapshot>,
    /// What the request cost, in micro-dollars, when it is known as the reply leaves (not for
    /// streams, which are charged when they end).
    pub cost_micros: Option<i64>,
}

/// What the client gets.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's whole answer (success or error status), relayed as it came.
    Whole {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        /// The gateway's own time: everything but the upstream's.
        overhead: Duration,
    },
    /// A stream being relayed; its usage record is written when it ends. Boxed: the HTTP layer
    /// boxes a streamed body anyway, and whole answers do not carry its room.
    Stream { status: StatusCode, body: Box<RelayBody>, overhead: Duration },
    /// The gateway's own error: a refusal, or no upstream could answer.
    Error(ApiError),
}

impl Pipeline {
    pub fn new(ports: Ports, config: PipelineConfig) -> Self {
        let forwarder = Forwarder::new(ports.upstream, ports.pool.clone(), config.max_attempts);
        Self {
            keys: ports.keys,
            pool: ports.pool,
            forwarder,
            limits: ports.limits,
            usage: ports.usage,
            prices: ports.prices,
            plans: ports.plans,
            rules: config.rules,
            rate_limited: AtomicU64::new(0),
            tracer: None,
        }
    }

    /// Traces the requests `tracer` samples (OpenTelemetry spans of each phase).
    #[must_use]
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The limiter, when limits are on.
    pub fn limits(&self) -> Option<&Limiting> {
        self.limits.as_ref()
    }

    /// Requests refused by rate limits or quotas (or because limits could not be checked).
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Opens a gateway request: starts its trace (when sampled), verifies its key for the
    /// endpoint's scope and starts the [`Call`]. A refused key answers `Err` and leaves no
    /// usage record (the request belongs to nobody); its trace still goes out.
    pub async fn open(self: &Arc<Self>, head: Head<'_>) -> Result<Call, ApiError> {
        let endpoint = head.endpoint;
        let mut trace = self.tracer.as_ref().and_then(|t| {
            let mut trace = t.begin(span_name(endpoint), head.traceparent, head.started)?;
            trace.set_root("http.request.method", "POST");
            trace.set_root("http.route", route(endpoint));
            trace.set_root("bluesminds.request_id", head.request_id.to_string());
            Some(trace)
        });
        let auth = trace.as_deref_mut().map(|t| t.start("auth", SpanKind::Internal, None));
        let verified = self.authenticate(head.authorization, endpoint.scope()).await;
        if let (Some(t), Some(s)) = (trace.as_deref_mut(), auth) {
            t.end(s);
            if let Err(e) = &verified {
                t.fail(s, e.message.to_string());
            }
        }
        match verified {
            Ok(principal) => {
                let mut call = self.start(principal, endpoint, head.request_id, head.started);
                call.draft.trace = trace;
                call.passthrough = head.passthrough.to_vec();
                Ok(call)
            }
            Err(e) => {
                if let Some(mut t) = trace {
                    let status = e.kind.http_status();
                    t.set_root("http.response.status_code", status);
                    t.set_root("error.type", status.to_string());
                    if status >= 500 {
                        t.fail_root(e.message.to_string());
                    }
                    t.finish();
                }
                Err(e)
            }
        }
    }

    /// Verifies the `Authorization` header's key and checks it may use `scope`. A request
    /// refused here leaves no usage record: it belongs to nobody.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        scope: Scope,
    ) -> Result<Arc<Principal>, ApiError> {
        let principal = self.keys.verify(authorization).await.map_err(from_verify)?;
        if !principal.has_scope(scope) {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                format!("This API key does not have the '{scope}' scope."),
            ));
        }
        Ok(principal)
    }

    /// The models of active servers that the key may use.
    pub fn models(&self, principal: &Principal) -> Vec<String> {
        self.pool.models().into_iter().filter(|m| principal.may_use_model(m)).collect()
    }

    /// Starts an authenticated request: from here on it leaves exactly one usage record,
    /// whichever way it ends. `started` is when the gateway received it.
    pub fn start(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        endpoint: Endpoint,
        request_id: RequestId,
        started: Instant,
    ) -> Call {
        let plan = self.plans.plan(principal.tier);
        let draft = Draft::new(request_id, started, &principal, endpoint, plan);
        Call { pipeline: self.clone(), principal, draft, passthrough: Vec::new() }
    }

    /// Settles the reservation and records the usage of a request that ended as `ending`;
    /// returns its cost. Every way a request ends comes here: the one place that decides what
    /// it is charged.
    fn conclude(
        &self,
        draft: Draft,
        reservation: Option<Reservation>,
        ending: Ending,
        end: End,
    ) -> i64 {
        let mut trace = draft.trace;
        let settle = trace.as_deref_mut().map(|t| t.start("settle", SpanKind::Internal, None));
        let charge = charge(ending, draft.prompt_estimate);
        if let (Some(limits), Some(reservation)) = (&self.limits, reservation) {
            limits.settle(reservation, charge.tokens);
        }
        let mut r = draft.record;
        r.status_code = end.status;
        r.is_error = end.error.is_some() || !(200..300).contains(&end.status);
        // Error texts may quote the client: no control character reaches the row or a log.
        r.error_message = end.error.map(|e| printable(&e, 500));
        r.client_disconnected = end.client_disconnected;
        if let Some(u) = charge.usage {
            (r.prompt_tokens, r.completion_tokens) = (u.prompt_tokens, u.completion_tokens);
            r.total_tokens = u.total();
            // At the price of the moment the request was made.
            r.cost_micros = self.prices.cost(&r.model, r.created_at, Tokens::from(u));
        }
        let cost = r.cost_micros;
        r.usage_estimated = charge.estimated;
        r.latency_ms = millis(draft.started.elapsed());
        if let Some(mut t) = trace {
            if let Some(s) = settle {
                t.set(s, "bluesminds.tokens", r.total_tokens);
                t.set(s, "bluesminds.cost_micros", r.cost_micros);
                t.end(s);
            }
            describe(&mut t, &r);
            t.finish();
        }
        self.usage.record(r);
        cost
    }
}

/// What the request's root span says of it: the OpenTelemetry HTTP and GenAI attributes and
/// the gateway's own. Never the key, the prompt or the answer.
fn describe(t: &mut Trace, r: &UsageRecord) {
    t.set_root("http.response.status_code", r.status_code);
    t.set_root("bluesminds.user_id", r.user_id.to_string());
    if let Some(key) = r.api_key_id {
        t.set_root("bluesminds.key_id", key.to_string());
    }
    if let Some(server) = r.server_id {
        t.set_root("bluesminds.server_id", server.to_string());
    }
    if !r.model.is_empty() {
        t.set_root("gen_ai.request.model", r.model.clone());
    }
    t.set_root("gen_ai.usage.input_tokens", r.prompt_tokens);
    t.set_root("gen_ai.usage.output_tokens", r.completion_tokens);
    t.set_root("bluesminds.cost_micros", r.cost_micros);
    t.set_root("bluesminds.streamed", r.streamed);
    t.set_root("bluesminds.usage_estimated", r.usage_estimated);
    if r.client_disconnected {
        t.set_root("bluesminds.client_disconnected", true);
    }
    if r.status_code >= 400 {
        t.set_root("error.type", r.status_code.to_string());
    }
    // A server span fails on a 5xx, or on a stream the upstream broke after its 200; a 4xx is
    // the client's and a client leaving is not a failure.
    let broken_stream = r.status_code < 400 && r.error_message.is_some() && !r.client_disconnected;
    if r.status_code >= 500 || broken_stream {
        t.fail_root(r.error_message.clone().unwrap_or_else(|| format!("status {}", r.status_code)));
    }
}

/// What the HTTP layer knows of a gateway request before reading its body.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub endpoint: Endpoint,
    pub request_id: RequestId,
    /// When the gateway received the request.
    pub started: Instant,
    /// The `Authorization` header, as sent.
    pub authorization: Option<&'a str>,
    /// The W3C `traceparent` header, as sent.
    pub traceparent: Option<&'a str>,
    /// Client headers to pass on to the upstream as they came (Anthropic's version and beta
    /// headers on the Messages route; empty elsewhere).
    pub passthrough: &'a [(http::HeaderName, HeaderValue)],
}

/// The endpoint's route, as OpenTelemetry's `http.route`.
fn route(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Responses => "/v1/responses",
        Endpoint::Messages => "/v1/messages",
    }
}

/// The root span's name: method and route.
fn span_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "POST /v1/chat/completions",
        Endpoint::Completions => "POST /v1/completions",
        Endpoint::Embeddings => "POST /v1/embeddings",
        Endpoint::Responses => "POST /v1/responses",
        Endpoint::Messages => "POST /v1/messages",
    }
}

/// How a request ended, besides what it is charged.
struct End {
    status: u16,
    error: Option<String>,
    client_disconnected: bool,
}

impl End {
    /// The gateway answered with `e` itself.
    fn with(e: &ApiError) -> Self {
        Self {
            status: e.kind.http_status(),
            error: Some(e.message.to_string()),
            client_disconnected: false,
        }
    }
}

/// An authenticated request under way.
#[derive(Debug)]
pub struct Call {
    pipeline: Arc<Pipeline>,
    principal: Arc<Principal>,
    draft: Draft,
    /// Client headers passed on to the upstream.
    passthrough: Vec<(http::HeaderName, HeaderValue)>,
}

impl Call {
    /// Ends a request that could not be read (too large, too slow): `error` is the answer, and
    /// the request is recorded.
    pub fn refuse(self, error: ApiError) -> Reply {
        let end = End::with(&error);
        let cost = self.pipeline.conclude(self.draft, None, Ending::NothingServed, end);
        Reply { answer: Answer::Error(error), limits: None, cost_micros: Some(cost) }
    }

    /// Runs the request: checks the body, the model and the key's limits, forwards with
    /// failover, and relays the answer. The usage record of a whole answer or an error is
    /// written before this returns; a stream's when it ends.
    pub async fn run(self, body: Bytes) -> Reply {
        let Call { pipeline, principal, mut draft, passthrough } = self;
        let mut reservation = None;
        let mut limits = None;
        let mut cost_micros = None;
        let answer = match pipeline
            .forward(&principal, &mut draft, body, &passthrough, &mut reservation, &mut limits)
            .await
        {
            Ok(Forwarded::Complete {
                status,
                content_type,
                body,
                usage,
                generated_tokens,
                upstream,
                server,
                model,
            }) => {
                draft.served_by(model);
                let ending = if status.is_success() {
                    Ending::Served { reported: usage, generated: generated_tokens }
                } else {
                    Ending::NothingServed
                };
                let overhead = draft.answered_by(server, upstream);
                let error = (!status.is_success()).then(|| format!("upstream answered {status}"));
                let end = End { status: status.as_u16(), error, client_disconnected: false };
                cost_micros = Some(pipeline.conclude(draft, reservation, ending, end));
                Answer::Whole { status, content_type, body, overhead }
            }
            Ok(Forwarded::Stream { status, body, upstream, server, model }) => {
                draft.served_by(model);
                let overhead = draft.answered_by(server, upstream);
                let pipeline = pipeline.clone();
                let body = body.on_end(move |end| {
                    let mut draft = draft;
                    if let (Some(t), Some(at)) = (draft.trace.as_deref_mut(), end.first_chunk) {
                        t.event(None, "first_chunk", at);
                    }
                    // Whatever was generated is charged, even to a client that left; a client
                    // that leaves is not an error, the flag says what happened.
                    let ending = Ending::Served {
                        reported: end.usage,
                        generated: end.counted_completion_tokens,
                    };
                    let error = if end.client_disconnected { None } else { end.error };
                    let end = End {
                        status: status.as_u16(),
                        error,
                        client_disconnected: end.client_disconnected,
                    };
                    let _ = pipeline.conclude(draft, reservation, ending, end);
                });
                Answer::Stream { status, body: Box::new(body), overhead }
            }
            Err(e) => {
                let end = End::with(&e);
                cost_micros =
                    Some(pipeline.conclude(draft, reservation, Ending::NothingServed, end));
                Answer::Error(e)
            }
        };
        Reply { answer, limits, cost_micros }
    }
}

impl Pipeline {
    /// Everything between the body and the upstream's answer; an error is the client's answer.
    async fn forward(
        &self,
        principal: &Principal,
        draft: &mut Draft,
        body: Bytes,
        passthrough: &[(http::HeaderName, HeaderValue)],
        reservation: &mut Option<Reservation>,
        snapshot: &mut Option<Snapshot>,
    ) -> Result<Forwarded, ApiError> {
        let endpoint = draft.endpoint;
        let view = inspect(&body, endpoint, &self.rules)?;
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
        // A route decides how its name is served; any other name is served as itself.
        let plan = self.pool.plan(&view.model);
        if plan.is_none() && !self.pool.knows_model(&view.model) {
            return Err(ApiError::model_not_found(&view.model));
        }
        if let Some(limits) = &self.limits {
            let estimate =
                limits.estimate(draft.prompt_estimate, view.max_tokens, endpoint.generates());
            let (who, standing) = self.standing(principal, &draft.plan, draft.record.created_at);
            let span = draft.trace.as_deref_mut().map(|t| {
                let s = t.start("limits", SpanKind::Internal, None);
                t.set(s, "bluesminds.tokens_reserved", estimate);
                s
            });
            let reserved = limits.reserve(&who, &standing, estimate).await;
            if let (Some(t), Some(s)) = (draft.trace.as_deref_mut(), span) {
                t.end(s);
                t.set(s, "bluesminds.admitted", reserved.is_ok());
                if let Err((refusal, _)) = &reserved {
                    t.set(s, "bluesminds.refusal", refusal.message.to_string());
                }
            }
            match reserved {
                Ok((r, s)) => {
                    *reservation = Some(r);
                    *snapshot = Some(s);
                }
                Err((refusal, s)) => {
                    *snapshot = s;
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Err(refusal);
                }
            }
        }
        let model = view.model.clone().into_owned();
        let stream = view.stream;
        // The tap strips it only where the gateway asked for it (OpenAI streams).
        let strip_usage_chunk = stream && !view.client_wants_usage;
        let outgoing = forward_body(body.clone(), &view)?;
        let routed = match plan {
            None => None,
            Some(plan) => {
                let mut bodies: Vec<(String, Bytes)> = Vec::new();
                for c in plan.stages.iter().flatten() {
                    if !bodies.iter().any(|(m, _)| *m == c.model) {
                        let body = if c.model == view.model {
                            outgoing.clone()
                        } else {
                            forward_body_as(body.clone(), &view, &c.model)?
                        };
                        bodies.push((c.model.clone(), body));
                    }
                }
                Some(Routed { plan, bodies })
            }
        };
        drop(view);
        let request_id = draft.record.request_id.to_string();
        self.forwarder
            .forward(ForwardRequest {
                endpoint,
                model: &model,
                body: outgoing,
                stream,
                strip_usage_chunk,
                request_id: &request_id,
                trace: draft.trace.as_deref_mut(),
                routed,
                passthrough,
            })
            .await
    }
}

impl Pipeline {
    /// What limits the principal's request at `now`: its plan (the free plan while the owner
    /// is past due), the key's limits under it and the owner's monthly ceiling. From memory:
    /// `plan` is the principal's, read when the request started.
    fn standing(
        &self,
        principal: &Principal,
        plan: &Arc<Plan>,
        now: time::OffsetDateTime,
    ) -> (Subject, Standing) {
        let past_due = principal.is_past_due(now);
        let plan = if past_due { self.plans.plan(Tier::Free) } else { plan.clone() };
        let mut ceiling = monthly_ceiling(&plan, principal.overage_cap_micros);
        if principal.role == Role::Admin {
            // Operators run the gateway; their own keys are not billed against a ceiling.
            ceiling = Ceiling { tokens: UNLIMITED_TOKENS, kind: CeilingKind::Unlimited };
        }
        let who = Subject {
            key: principal.key_id,
            user: principal.user_id,
            limits: principal.limits(&plan),
            ceiling: ceiling.tokens,
        };
        (who, Standing { plan, ceiling, past_due })
    }
}

/// The usage record of one request, filled in as the request goes.
#[derive(Debug)]
struct Draft {
    record: UsageRecord,
    endpoint: Endpoint,
    started: Instant,
    /// Prompt tokens estimated from the body, for answers without usage.
    prompt_estimate: u64,
    /// The request's trace, when it is sampled.
    trace: Option<Box<Trace>>,
    /// The principal's plan when the request started (its retention is the record's).
    plan: Arc<Plan>,
}

impl Draft {
    fn new(
        request_id: RequestId,
        started: Instant,
        principal: &Principal,
        endpoint: Endpoint,
        plan: Arc<Plan>,
    ) -> Self {
        // Microseconds, as Postgres stores them: the log's cursor is then exact on every backend.
        let now = time::OffsetDateTime::now_utc();
        let created_at = now.replace_nanosecond(now.nanosecond() / 1000 * 1000).unwrap_or(now);
        let record = UsageRecord {
            request_id,
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
            retention_days: plan.retention_days,
        };
        Self { record, endpoint, started, prompt_estimate: 0, trace: None, plan }
    }
}

impl Draft {
    /// Notes the upstream model a route sent the request to: the row says what served it, and
    /// it is priced at that model's price.
    fn served_by(&mut self, model: Option<String>) {
        if let Some(model) = model {
            self.record.model = model.chars().take(200).collect();
        }
    }

    /// Notes the server that answered and its time; returns the gateway's own time so far.
    fn answered_by(&mut self, server: ServerId, upstream: Duration) -> Duration {
        self.record.server_id = Some(server);
        self.record.upstream_latency_ms = Some(millis(upstream));
        self.started.elapsed().saturating_sub(upstream)
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
