//! Forwarding one request: pick a server, send, and fail over to another server on a connect
//! error, a timeout, a 5xx or a 429 before any byte reached the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_balancer::{Outcome, ServerPool};
use gateway_core::{ApiError, ErrorKind, ServerId, Usage};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::client::UpstreamClient;
use crate::relay::RelayBody;
use crate::request::Endpoint;
use crate::sse::SseTap;

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
}

/// What came back.
#[derive(Debug)]
pub enum Forwarded {
    /// A whole response (non-streaming, or an upstream error answered with a body).
    Complete {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        usage: Option<Usage>,
        server: ServerId,
        /// From sending the request to the last byte of the response.
        upstream: Duration,
    },
    /// A stream being relayed.
    Stream {
        status: StatusCode,
        body: RelayBody,
        server: ServerId,
        /// From sending the request to the response head.
        upstream: Duration,
    },
}

/// Forwards requests to the pool's servers.
#[derive(Debug)]
pub struct Forwarder {
    client: UpstreamClient,
    pool: Arc<ServerPool>,
    max_attempts: usize,
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

impl Forwarder {
    pub fn new(client: UpstreamClient, pool: Arc<ServerPool>, max_attempts: usize) -> Self {
        Self { client, pool, max_attempts: max_attempts.max(1) }
    }

    pub fn pool(&self) -> &Arc<ServerPool> {
        &self.pool
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    pub async fn forward(&self, req: ForwardRequest<'_>) -> Result<Forwarded, ApiError> {
        let mut tried: Vec<ServerId> = Vec::new();
        let config = self.client.config();
        while tried.len() < self.max_attempts {
            let Some(pick) = self.pool.select(req.model, &tried) else { break };
            let server = pick.server();
            tried.push(server.id);
            let url = server.endpoint_url(req.endpoint.path());
            let started = Instant::now();
            let sent = self
                .client
                .send(
                    Method::POST,
                    &url,
                    server.api_key.as_deref(),
                    req.request_id,
                    req.body.clone(),
                )
                .await;
            let res = match sent {
                Ok(res) => res,
                Err(e) => {
                    tracing::warn!(request_id = req.request_id, server = %server.name, error = %e, "upstream attempt failed; failing over");
                    pick.finish(Outcome::Failure);
                    continue;
                }
            };
            let status = res.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                tracing::warn!(request_id = req.request_id, server = %server.name, %status, "upstream answered with an error; failing over");
                pick.finish(Outcome::Failure);
                continue;
            }
            let server_id = server.id;
            if req.stream && status.is_success() {
                let body = RelayBody::new(
                    res.into_body(),
                    SseTap::new(req.strip_usage_chunk),
                    pick,
                    config.stream_idle_timeout,
                );
                return Ok(Forwarded::Stream {
                    status,
                    body,
                    server: server_id,
                    upstream: started.elapsed(),
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
                    pick.finish(Outcome::Failure);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(request_id = req.request_id, server = %server.name, "upstream response timed out; failing over");
                    pick.finish(Outcome::Failure);
                    continue;
                }
            };
            let upstream = started.elapsed();
            let usage = if status.is_success() {
                serde_json::from_slice::<UsageOnly>(&body).ok().and_then(|u| u.usage)
            } else {
                None
            };
            pick.finish(if status.is_success() {
                Outcome::Success { latency_ms: upstream.as_millis() as u64 }
            } else {
                Outcome::Neutral
            });
            return Ok(Forwarded::Complete {
                status,
                content_type,
                body,
                usage,
                server: server_id,
                upstream,
            });
        }
        if tried.is_empty() {
            return Err(ApiError::no_healthy_upstream());
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
