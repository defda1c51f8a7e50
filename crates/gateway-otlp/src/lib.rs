//! The OpenTelemetry adapter of BluesMinds: [`OtlpExporter`] implements the `SpanSink` port of
//! `gateway_core::trace` and sends the spans over OTLP/HTTP in protobuf
//! (`POST {endpoint}` with `content-type: application/x-protobuf`), which every OpenTelemetry
//! Collector, Jaeger, Tempo and the tracing vendors accept.
//!
//! Off the request path: `export` puts a request's spans on a bounded queue and returns; one
//! task batches them (by count or time, as OpenTelemetry's batch span processor does) and posts
//! each batch. A full queue drops spans and counts them; an export that fails for a reason
//! that may pass (no connection, timeout, 429, 502, 503, 504) is retried twice, then dropped
//! and counted; a collector that refuses part of a batch has those spans counted as failed.
//! [`OtlpExporter::shutdown`] sends what is queued before the process exits. Export headers
//! (a vendor's API key) never appear in a log, an error or `Debug` output.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use gateway_core::trace::SpanSink;
//! use gateway_otlp::{OtlpConfig, OtlpExporter};
//!
//! let exporter = Arc::new(OtlpExporter::start(OtlpConfig {
//!     endpoint: "http://127.0.0.1:4318/v1/traces".into(),
//!     ..OtlpConfig::default()
//! }).unwrap());
//! exporter.export(Vec::new());
//! exporter.shutdown(std::time::Duration::from_secs(5)).await;
//! # }
//! ```

pub mod proto;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_core::trace::{Span, SpanSink};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};

pub use proto::Origin;

/// How spans are exported.
#[derive(Clone)]
pub struct OtlpConfig {
    /// The full URL of the collector's traces endpoint (`http://collector:4318/v1/traces`).
    pub endpoint: String,
    /// Sent with every export (a vendor's API key, say); never logged.
    pub headers: Vec<(String, String)>,
    /// The resource (`service.name`, ...) and the instrumentation scope.
    pub origin: Origin,
    /// One export's whole time, connection included.
    pub timeout: Duration,
    /// Requests' traces waiting for the exporter; beyond, they are dropped and counted.
    pub queue_capacity: usize,
    /// Most spans in one export.
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    pub flush_interval: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            headers: Vec::new(),
            origin: Origin {
                resource: vec![("service.name".into(), "bluesminds".into())],
                scope_name: "bluesminds".into(),
                scope_version: env!("CARGO_PKG_VERSION").into(),
            },
            timeout: Duration::from_secs(10),
            queue_capacity: 2048,
            batch_size: 512,
            flush_interval: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, _)| (k.as_str(), "<redacted>")).collect();
        let endpoint = self.endpoint.parse().map_or_else(|_| "<invalid>".to_owned(), |u| shown(&u));
        f.debug_struct("OtlpConfig")
            .field("endpoint", &endpoint)
            .field("headers", &headers)
            .field("origin", &self.origin)
            .field("timeout", &self.timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .finish()
    }
}

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    #[error("the OTLP endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("the OTLP header {0:?} is not a valid HTTP header name or value")]
    Header(String),
}

/// What became of the spans handed over, for metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector took.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full (or the exporter had stopped).
    pub dropped: AtomicU64,
    /// Spans whose export failed, or that the collector refused.
    pub failed: AtomicU64,
}

/// Sends spans to an OTLP/HTTP collector, in batches, from a task of its own.
pub struct OtlpExporter {
    queue: mpsc::Sender<Vec<Span>>,
    stats: Arc<ExportStats>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    endpoint: String,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl SpanSink for OtlpExporter {
    fn export(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        if let Err(e) = self.queue.try_send(spans) {
            let lost = match e {
                mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
            };
            self.stats.dropped.fetch_add(lost.len() as u64, Ordering::Relaxed);
        }
    }
}

impl OtlpExporter {
    /// Checks the configuration and starts the exporting task (on the current Tokio runtime).
    pub fn start(config: OtlpConfig) -> Result<Self, OtlpError> {
        let uri: http::Uri =
            config.endpoint.parse().map_err(|_| OtlpError::Endpoint(config.endpoint.clone()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(OtlpError::Endpoint(config.endpoint.clone()));
        }
        let mut headers = Vec::with_capacity(config.headers.len());
        for (k, v) in &config.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| OtlpError::Header(k.clone()))?;
            let mut value = HeaderValue::from_str(v).map_err(|_| OtlpError::Header(k.clone()))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let (queue, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(ExportStats::default());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let sender = Sender {
            client: Client::builder(TokioExecutor::new()).build(https),
            shown: shown(&uri),
            uri,
            headers,
            timeout: config.timeout,
            stats: stats.clone(),
            warned: None,
            failures_since_warning: 0,
        };
        let endpoint = sender.shown.clone();
        let task = tokio::spawn(run(rx, stopped, sender, config));
        Ok(Self { queue, stats, stop, task: std::sync::Mutex::new(Some(task)), endpoint })
    }

    /// What became of the spans so far.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Sends every queued span (without retries), within `deadline`; spans exported afterwards
    /// are dropped and counted.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task
            && tokio::time::timeout(deadline, task).await.is_err()
        {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "traces: the last export did not finish before the shutdown deadline"
            );
        }
    }
}

/// The exporting task: batches by size or time, until told to stop; then sends what is left.
async fn run(
    mut rx: mpsc::Receiver<Vec<Span>>,
    mut stopped: watch::Receiver<bool>,
    mut sender: Sender,
    config: OtlpConfig,
) {
    let batch_size = config.batch_size.max(1);
    let mut batch: Vec<Span> = Vec::with_capacity(batch_size);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(spans) => {
                    batch.extend(spans);
                    if batch.len() >= batch_size {
                        sender.send(&config.origin, &mut batch, batch_size, true).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    sender.send(&config.origin, &mut batch, batch_size, true).await;
                }
            }
            _ = stopped.changed() => break,
        }
    }
    // Shutting down: take what is queued, send it once each, no retries.
    rx.close();
    while let Ok(spans) = rx.try_recv() {
        batch.extend(spans);
    }
    sender.send(&config.origin, &mut batch, batch_size, false).await;
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Posts batches and counts the outcome.
struct Sender {
    client: Client<Connector, Full<Bytes>>,
    uri: http::Uri,
    /// The endpoint as logs show it: no user-info, no query.
    shown: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    stats: Arc<ExportStats>,
    /// When a failure was last logged (at most one warning a minute).
    warned: Option<Instant>,
    failures_since_warning: u64,
}

/// How one POST went.
enum Posted {
    /// Taken, but for the spans the collector says it refused.
    Taken {
        refused: u64,
    },
    /// Worth another try (no connection, timeout, 429, 502, 503, 504).
    Retry(String),
    Refused(String),
}

/// Tries after the first, for a failure that may pass.
const RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

impl Sender {
    /// Sends `batch` in exports of at most `batch_size` spans, emptying it.
    async fn send(
        &mut self,
        origin: &Origin,
        batch: &mut Vec<Span>,
        batch_size: usize,
        retry: bool,
    ) {
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(batch_size));
            let spans = std::mem::replace(batch, rest);
            let body = Bytes::from(proto::export_request(origin, &spans));
            let mut outcome = self.post(body.clone()).await;
            if retry {
                for pause in RETRIES {
                    if !matches!(outcome, Posted::Retry(_)) {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    outcome = self.post(body.clone()).await;
                }
            }
            let n = spans.len() as u64;
            match outcome {
                Posted::Taken { refused } => {
                    let refused = refused.min(n);
                    self.stats.exported.fetch_add(n - refused, Ordering::Relaxed);
                    self.stats.failed.fetch_add(refused, Ordering::Relaxed);
                }
                Posted::Retry(why) | Posted::Refused(why) => {
                    self.stats.failed.fetch_add(n, Ordering::Relaxed);
                    self.warn(n, &why);
                }
            }
        }
    }

    async fn post(&mut self, body: Bytes) -> Posted {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("bluesminds/", env!("CARGO_PKG_VERSION"))),
        );
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        let call = async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            // A collector's answer is small; a larger one is not read whole.
            let body = Limited::new(res.into_body(), 64 * 1024)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Posted::Retry(format!("no answer within {} ms", self.timeout.as_millis())),
            Ok(Err(e)) => Posted::Retry(format!("cannot reach the collector: {e}")),
            Ok(Ok((status, body))) if status.is_success() => {
                let Some((refused, why)) = proto::rejected(&body) else {
                    return Posted::Taken { refused: 0 };
                };
                let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
                self.warn(refused, &format!("the collector refused part of a batch: {why}"));
                Posted::Taken { refused }
            }
            Ok(Ok((status, _))) if retryable(status) => {
                Posted::Retry(format!("the collector answered {status}"))
            }
            Ok(Ok((status, _))) => Posted::Refused(format!("the collector answered {status}")),
        }
    }

    /// Logs a lost batch, at most once a minute (with how many were lost meanwhile).
    fn warn(&mut self, spans: u64, why: &str) {
        self.failures_since_warning += spans;
        if self.warned.is_some_and(|at| at.elapsed() < Duration::from_mins(1)) {
            return;
        }
        tracing::warn!(
            endpoint = %self.shown,
            spans_lost = self.failures_since_warning,
            error = why,
            "traces: spans could not be exported"
        );
        self.warned = Some(Instant::now());
        self.failures_since_warning = 0;
    }
}

/// `scheme://host[:port]/path` of the endpoint: what logs and `Debug` show of it.
fn shown(uri: &http::Uri) -> String {
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or_default(),
        uri.path()
    )
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}
