//! Active health checks: a cheap probe of every server (never a paid completion), the status
//! it implies, a log line when a server changes state, and the record kept for the admin API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::{HealthStatus, UpstreamServer};
use time::OffsetDateTime;

use crate::ServerPool;
use crate::store::{HealthRecord, ServerStore};

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub latency: Duration,
    /// Models the server listed, when it was asked (servers that declare none).
    pub models: Option<Vec<String>>,
    pub detail: Option<String>,
}

/// Probes one server.
#[async_trait]
pub trait Prober: Send + Sync {
    async fn probe(&self, server: &UpstreamServer, list_models: bool) -> ProbeResult;
}

/// The outcome of checking one server, as the admin API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub server: UpstreamServer,
    pub record: HealthRecord,
    pub detail: Option<String>,
}

/// Health-check settings.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// A probe slower than this marks the server degraded.
    pub degraded_latency: Duration,
}

/// Checks every server of the pool once, updates their state, logs changes and persists the
/// results. Returns one report per server.
pub async fn check_all(
    pool: &ServerPool,
    prober: &dyn Prober,
    store: &dyn ServerStore,
    config: &HealthConfig,
) -> Vec<CheckReport> {
    let servers = pool.snapshot();
    // All probes at once: they are I/O bound.
    let probes = servers.iter().map(|state| async move {
        let server = state.server();
        let result = prober.probe(server, server.supported_models.is_empty()).await;
        (state.clone(), result)
    });
    let mut reports = Vec::with_capacity(servers.len());
    for (state, result) in futures_util::future::join_all(probes).await {
        let status = if !result.ok {
            HealthStatus::Unhealthy
        } else if result.latency > config.degraded_latency {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        if let Some(models) = result.models.clone() {
            state.set_discovered_models(models);
        }
        let previous = state.set_health(status);
        let server = state.server().clone();
        if previous != status {
            let level_warn = status == HealthStatus::Unhealthy;
            if level_warn {
                tracing::warn!(server = %server.name, from = %previous, to = %status, detail = result.detail.as_deref().unwrap_or(""), "upstream health changed");
            } else {
                tracing::info!(server = %server.name, from = %previous, to = %status, "upstream health changed");
            }
        }
        let (total_requests, total_errors) = state.totals();
        let record = HealthRecord {
            status,
            checked_at: OffsetDateTime::now_utc(),
            latency_ms: result
                .ok
                .then(|| result.latency.as_millis().min(u128::from(u32::MAX)) as u32),
            consecutive_failures: state.consecutive_failures(),
            total_requests,
            total_errors,
        };
        state.set_last_check(record.clone());
        if let Err(e) = store.record_health(server.id, record.clone()).await {
            tracing::warn!(error = %e, server = %server.name, "could not persist a health check");
        }
        reports.push(CheckReport { server, record, detail: result.detail });
    }
    reports
}

/// The shared handle the binary's loop and the admin API use.
pub type SharedProber = Arc<dyn Prober>;
