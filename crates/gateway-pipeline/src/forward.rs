//! Forwarding one request: pick a server, send, and fail over to another server on a connect
//! error, a timeout, a 5xx or a 429 before any byte reached the client.
//!
//! Server health is not hostage to request content: a 4xx is the request's, and so is a 5xx
//! that a second server repeats for the same request; either goes back to the client, counted
//! against no server. A 5xx counts as the server's failure only once another server has
//! answered that same request successfully; connect errors, timeouts, broken responses and 429s count at
//! once. A redirect (never followed) fails the attempt without blaming the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_balancer::{Candidate, Outcome, RoutePlan, Selected, ServerPool};
use gateway_core::trace::SpanKind;
use gateway_core::{ApiError, ErrorKind, ServerId, Usage};
use gateway_proxy::client::{Outgoing, Upstream, UpstreamError};
use gateway_proxy::estimate::{completion_of_answer, usage_of_answer};
use gateway_proxy::relay::RelayBody;
use gateway_proxy::request::Endpoint;
use gateway_proxy::sse::SseTap;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use smallvec::SmallVec;

use crate::trace::{SpanRef, Trace};

/// What to forward.
#[derive(Debug)]
pub struct ForwardRequest<'a> {
    pub endpoint: Endpoint,
    pub model: &'a str,
    /// The bytes to send (the client's, with `include_usage` added for streams).
    pub body: Bytes,
    pub stream: bool,
    /// Remove the usage chunk from the stream (the client did not ask for it).
    pub strip_usage_chunk: bool,
    pub request_id: &'a str,
    /// The request's trace, when it is sampled: each attempt adds its server choice, its
    /// upstream call and that call's first byte.
    pub trace: Option<&'a mut Trace>,
    /// Client headers passed on to the upstream (see `Outgoing::passthrough`).
    pub passthrough: &'a [(http::HeaderName, HeaderValue)],
    /// When a model route defines the requested name: its stages (the route's targets, then
    /// each fallback's) and the body to send for each target model. `None`: the model as
    /// requested, on any server serving it, with `body`.
    pub routed: Option<Routed>,
}

/// A routed request's plan and its bodies.
#[derive(Debug)]
pub struct Routed {
    pub plan: RoutePlan,
    /// The body for each model of the plan (the client's, the `model` value replaced).
    pub bodies: Vec<(String, Bytes)>,
}

/// Which servers and models one stage of a request may use.
#[derive(Clone, Copy)]
enum Stage<'p> {
    /// The model as requested.
    Direct,
    /// A route's targets (or a fallback's).
    Candidates(&'p [Candidate], &'p [(String, Bytes)]),
}

/// What came back.
#[derive(Debug)]
pub enum Forwarded {
    /// A whole response (non-streaming, or an upstream error answered with a body).
    Complete {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        /// The usage the upstream reported.
        usage: Option<Usage>,
        /// A successful answer without usage: its completion tokens, estimated from what it
        /// generated ([`gateway_proxy::estimate`]). Zero otherwise.
        generated_tokens: u64,
        server: ServerId,
        /// From sending the request to the last byte of the response.
        upstream: Duration,
        /// The upstream model that served it, when a route chose it.
        model: Option<String>,
    },
    /// A stream being relayed.
    Stream {
        status: StatusCode,
        body: RelayBody,
        server: ServerId,
        /// From sending the request to the response head.
        upstream: Duration,
        /// The upstream model that served it, when a route chose it.
        model: Option<String>,
    },
}

impl Forwarded {
    /// Whether a fallback may do better: a 429 or a 5xx answer.
    fn failed(&self) -> bool {
        matches!(self, Forwarded::Complete { status, .. }
            if *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
    }
}

/// Forwards requests to the pool's servers.
pub struct Forwarder {
    upstream: Arc<dyn Upstream>,
    pool: Arc<ServerPool>,
    max_attempts: usize,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(upstream: Arc<dyn Upstream>, pool: Arc<ServerPool>, max_attempts: usize) -> Self {
        Self { upstream, pool, max_attempts: max_attempts.max(1) }
    }

    /// Forwards a request: the requested model, or each stage of its route in turn until one
    /// serves it (a stage fails when every server tried failed before the first byte, or the
    /// answer is a 429 or a 5xx; the last stage's outcome is the client's).
    pub async fn forward(&self, mut req: ForwardRequest<'_>) -> Result<Forwarded, ApiError> {
        let Some(routed) = req.routed.take() else {
            return self.forward_stage(&mut req, Stage::Direct).await;
        };
        let last = routed.plan.stages.len().saturating_sub(1);
        let mut outcome = Err(ApiError::no_healthy_upstream());
        for (i, stage) in routed.plan.stages.iter().enumerate() {
            outcome = self.forward_stage(&mut req, Stage::Candidates(stage, &routed.bodies)).await;
            let failed = match &outcome {
                Ok(answer) => answer.failed(),
                Err(_) => true,
            };
            if !failed {
                return outcome;
            }
            if i < last {
                tracing::warn!(
                    request_id = req.request_id,
                    model = req.model,
                    stage = i + 1,
                    "every target of this stage failed; falling back"
                );
            }
        }
        outcome
    }

    async fn forward_stage(
        &self,
        req: &mut ForwardRequest<'_>,
        stage: Stage<'_>,
    ) -> Result<Forwarded, ApiError> {
        // On the stack: a request rarely tries more than a few servers.
        let mut tried: SmallVec<[ServerId; 4]> = SmallVec::new();
        // A server's 5xx to this request, not judged yet: the server's fault if another server
        // answers the same request, the request's own if another server fails it too.
        let mut suspect: Option<(Selected, Forwarded)> = None;
        let mut redirected = false;
        let config = self.upstream.config();
        while tried.len() < self.max_attempts {
            let choosing = req.trace.as_deref_mut().map(|t| choose_span(t, tried.len()));
            let chosen = match stage {
                Stage::Direct => self.pool.select(req.model, &tried).map(|p| (p, None)),
                Stage::Candidates(candidates, bodies) => {
                    self.pool.select_candidate(candidates, &tried).map(|(p, i)| {
                        let model = &candidates[i].model;
                        let body = bodies.iter().find(|(m, _)| m == model).map(|(_, b)| b.clone());
                        (p, Some((model.clone(), body)))
                    })
                }
            };
            let Some((pick, target)) = chosen else {
                if let (Some(t), Some(s)) = (req.trace.as_deref_mut(), choosing) {
                    t.fail(s, "no healthy server serves the model");
                    t.end(s);
                }
                break;
            };
            let (served, body) = match target {
                None => (None, req.body.clone()),
                Some((model, body)) => (Some(model), body.unwrap_or_else(|| req.body.clone())),
            };
            let server = pick.server();
            tried.push(server.id);
            let url = server.endpoint_url(req.endpoint.path());
            let call = req.trace.as_deref_mut().zip(choosing).map(|(t, s)| {
                t.set(s, "bluesminds.server.name", server.name.clone());
                t.end(s);
                UpstreamSpans::start(t, &url, &server.name, tried.len())
            });
            let traceparent =
                req.trace.as_deref().zip(call).map(|(t, c)| t.traceparent(c.upstream));
            let started = Instant::now();
            let sent = self
                .upstream
                .post(
                    Outgoing {
                        url: &url,
                        api_key: server.api_key.as_deref(),
                        request_id: req.request_id,
                        traceparent: traceparent.as_deref(),
                        passthrough: req.passthrough,
                    },
                    body,
                )
                .await;
            let head = Instant::now();
            let res = match sent {
                Ok(res) => res,
                Err(e @ UpstreamError::Redirect(_)) => {
                    // Not followed, and no proof the server is down: a failure of this request.
                    tracing::warn!(request_id = req.request_id, server = %server.name, error = %e, "upstream redirected; trying another server");
                    UpstreamSpans::failed(req.trace.as_deref_mut(), call, head, &e.to_string());
                    pick.finish(Outcome::Neutral);
                    redirected = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(request_id = req.request_id, server = %server.name, error = %e, "upstream attempt failed; failing over");
                    UpstreamSpans::failed(req.trace.as_deref_mut(), call, head, &e.to_string());
                    pick.finish(Outcome::Failure);
                    continue;
                }
            };
            let status = res.status();
            UpstreamSpans::head(req.trace.as_deref_mut(), call, head, status);
            if status == StatusCode::TOO_MANY_REQUESTS {
                tracing::warn!(request_id = req.request_id, server = %server.name, %status, "upstream is rate limiting; failing over");
                UpstreamSpans::failed(req.trace.as_deref_mut(), call, head, "rate limited (429)");
                pick.finish(Outcome::Failure);
                continue;
            }
            let server_id = server.id;
            if req.stream && status.is_success() {
                if let Some((first, _)) = suspect.take() {
                    first.finish(Outcome::Failure);
                }
                let body = RelayBody::new(
                    res.into_body(),
                    SseTap::new(req.endpoint.dialect(), req.strip_usage_chunk),
                    pick,
                    config.stream_idle_timeout,
                );
                return Ok(Forwarded::Stream {
                    status,
                    body,
                    server: server_id,
                    upstream: started.elapsed(),
                    model: served,
                });
            }
            let content_type = res.headers().get(http::header::CONTENT_TYPE).cloned();
            let remaining = config.request_timeout.saturating_sub(started.elapsed());
            let read = tokio::time::timeout(
                remaining,
                Limited::new(res.into_body(), config.max_response_bytes).collect(),
            )
            .await;
            let body = match read {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) => {
                    // Nothing reached the client yet: another server may still answer.
                    tracing::warn!(request_id = req.request_id, server = %server.name, error = %e, "upstream response broke off; failing over");
                    let end = Instant::now();
                    UpstreamSpans::failed(
                        req.trace.as_deref_mut(),
                        call,
                        end,
                        "response broke off",
                    );
                    pick.finish(Outcome::Failure);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(request_id = req.request_id, server = %server.name, "upstream response timed out; failing over");
                    let end = Instant::now();
                    UpstreamSpans::failed(
                        req.trace.as_deref_mut(),
                        call,
                        end,
                        "response timed out",
                    );
                    pick.finish(Outcome::Failure);
                    continue;
                }
            };
            let upstream = started.elapsed();
            if let (Some(t), Some(c)) = (req.trace.as_deref_mut(), call) {
                if status.is_server_error() {
                    t.fail(c.upstream, format!("upstream answered {status}"));
                }
                t.end(c.upstream);
            }
            let (usage, generated_tokens) = if status.is_success() {
                let dialect = req.endpoint.dialect();
                match usage_of_answer(dialect, &body) {
                    Some(u) => (Some(u), 0),
                    None => (None, completion_of_answer(dialect, &body)),
                }
            } else {
                (None, 0)
            };
            let answer = Forwarded::Complete {
                status,
                content_type,
                body,
                usage,
                generated_tokens,
                server: server_id,
                upstream,
                model: served,
            };
            if status.is_server_error() {
                if let Some((first, _)) = suspect.take() {
                    // Two servers failed this same request: the request is the cause. It goes
                    // back to its client, and no server's circuit counts it.
                    tracing::warn!(request_id = req.request_id, server = %server.name, %status, "a second server failed this request; answering the client without blaming either server");
                    first.finish(Outcome::Neutral);
                    pick.finish(Outcome::Neutral);
                    return Ok(answer);
                }
                tracing::warn!(request_id = req.request_id, server = %server.name, %status, "upstream answered with an error; trying another server");
                suspect = Some((pick, answer));
                continue;
            }
            if let Some((first, _)) = suspect.take() {
                // Another server answered the request the first one failed: the first's fault.
                // A 4xx from it says the request was bad, which may be why the first failed.
                first.finish(if status.is_success() { Outcome::Failure } else { Outcome::Neutral });
            }
            pick.finish(if status.is_success() {
                Outcome::Success { latency_ms: upstream.as_millis() as u64 }
            } else {
                Outcome::Neutral
            });
            return Ok(answer);
        }
        if let Some((first, answer)) = suspect {
            // No other server could tell whether the server or the request is at fault: the
            // client gets the server's answer and no circuit counts it.
            first.finish(Outcome::Neutral);
            return Ok(answer);
        }
        if tried.is_empty() {
            return Err(ApiError::no_healthy_upstream());
        }
        if redirected {
            return Err(ApiError::new(
                ErrorKind::UpstreamError,
                "The upstream answered with a redirect, which the gateway never follows.",
            ));
        }
        if tried.len() >= self.max_attempts {
            return Err(ApiError::new(
                ErrorKind::UpstreamError,
                format!("The upstream failed on {} attempts; retry later.", tried.len()),
            )
            .with_retry_after(1));
        }
        Err(ApiError::no_healthy_upstream())
    }
}

/// The span of one server choice.
fn choose_span(t: &mut Trace, attempt: usize) -> SpanRef {
    let s = t.start("choose_server", SpanKind::Internal, None);
    t.set(s, "bluesminds.attempt", (attempt + 1) as u64);
    s
}

/// The spans of one upstream call: the call itself (until its last byte; a stream's ends
/// with the stream) and its time to the response head.
#[derive(Clone, Copy, Debug)]
struct UpstreamSpans {
    upstream: SpanRef,
    first_byte: SpanRef,
}

impl UpstreamSpans {
    fn start(t: &mut Trace, url: &str, server: &str, attempt: usize) -> Self {
        let upstream = t.start("upstream", SpanKind::Client, None);
        t.set(upstream, "http.request.method", "POST");
        t.set(upstream, "bluesminds.server.name", server.to_owned());
        t.set(upstream, "bluesminds.attempt", attempt as u64);
        // Host and port only: a URL's user-info or query could hold a credential.
        if let Ok(uri) = url.parse::<http::Uri>() {
            if let Some(host) = uri.host() {
                t.set(upstream, "server.address", host.to_owned());
            }
            let default_port = if uri.scheme_str() == Some("https") { 443 } else { 80 };
            t.set(upstream, "server.port", u64::from(uri.port_u16().unwrap_or(default_port)));
            t.set(upstream, "url.path", uri.path().to_owned());
        }
        let first_byte = t.start("first_byte", SpanKind::Internal, Some(upstream));
        Self { upstream, first_byte }
    }

    /// The response head arrived at `at`.
    fn head(t: Option<&mut Trace>, spans: Option<Self>, at: Instant, status: StatusCode) {
        if let (Some(t), Some(c)) = (t, spans) {
            t.end_at(c.first_byte, at);
            t.set(c.upstream, "http.response.status_code", status.as_u16());
        }
    }

    /// The attempt failed at `at`; the request fails over.
    fn failed(t: Option<&mut Trace>, spans: Option<Self>, at: Instant, why: &str) {
        if let (Some(t), Some(c)) = (t, spans) {
            t.fail(c.upstream, why.to_owned());
            t.end_at(c.first_byte, at);
            t.end_at(c.upstream, at);
        }
    }
}
