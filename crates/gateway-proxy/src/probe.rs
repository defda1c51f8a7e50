//! The active health probe: LiteLLM's `/health/liveliness` (cheap, no model call), else
//! `GET /v1/models`, which also tells which models a server serves when it declares none.
//! Never a completion: probes must not cost money.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_balancer::{ProbeResult, Prober};
use gateway_core::UpstreamServer;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::client::{Outgoing, UpstreamClient};

/// Probes servers over HTTP with the upstream client.
#[derive(Debug, Clone)]
pub struct HttpProber {
    client: UpstreamClient,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl HttpProber {
    pub fn new(client: UpstreamClient, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn get(&self, server: &UpstreamServer, url: &str) -> Result<(StatusCode, Bytes), String> {
        let fut = async {
            let res = self
                .client
                .send(
                    Method::GET,
                    Outgoing {
                        url,
                        api_key: server.api_key.as_deref(),
                        request_id: "health-check",
                        traceparent: None,
                        passthrough: &[],
                    },
                    Bytes::new(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let body = Limited::new(res.into_body(), 4 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

fn root(server: &UpstreamServer) -> &str {
    let base = server.base_url.trim_end_matches('/');
    base.strip_suffix("/v1").unwrap_or(base)
}

#[async_trait]
impl Prober for HttpProber {
    async fn probe(&self, server: &UpstreamServer, list_models: bool) -> ProbeResult {
        let started = Instant::now();
        let liveliness = self.get(server, &format!("{}/health/liveliness", root(server))).await;
        let (mut ok, mut detail) = match &liveliness {
            Ok((status, _)) if status.is_success() => (true, None),
            Ok((status, _)) => (false, Some(format!("/health/liveliness answered {status}"))),
            Err(e) => (false, Some(e.clone())),
        };
        let latency = started.elapsed();
        let answered_404 = matches!(&liveliness, Ok((StatusCode::NOT_FOUND, _)));
        let mut models = None;
        if list_models || answered_404 {
            match self.get(server, &server.endpoint_url("models")).await {
                Ok((status, body)) if status.is_success() => {
                    ok = ok || answered_404;
                    if ok {
                        detail = None;
                    }
                    models = serde_json::from_slice::<ModelList>(&body)
                        .ok()
                        .map(|l| l.data.into_iter().map(|m| m.id).collect());
                }
                Ok((status, _)) if answered_404 => {
                    detail = Some(format!("/v1/models answered {status}"));
                }
                Err(e) if answered_404 => detail = Some(e),
                _ => {}
            }
        }
        ProbeResult { ok, latency, models: if list_models { models } else { None }, detail }
    }
}
