//! A fast, deterministic OpenAI-compatible upstream for tests, the demo and benchmarks.
//!
//! It answers `POST /v1/chat/completions` and `POST /v1/completions` (plain and SSE, honouring
//! `stream_options.include_usage`), `POST /v1/responses` (OpenAI's Responses API) and
//! `POST /v1/messages` (Anthropic's Messages API), plain and streamed in their own event
//! shapes, `POST /v1/embeddings`, `GET /v1/models`, and LiteLLM's health probes. Answers depend only on the request, so a test can predict every token:
//! prompt tokens are `ceil(bytes of message contents / 4)` (at least 1), the completion is
//! `max_tokens` words (default 16) of a fixed sentence, one token per word, one SSE chunk per
//! word.
//!
//! Per-request behaviour can be scripted with a `"mock"` object in the body, which an
//! OpenAI-compatible gateway passes through untouched:
//! `{"mock": {"fail": "status", "status": 503}}`, `{"mock": {"fail": "midstream"}}` (the
//! connection drops after two chunks), `{"mock": {"fail": "hang"}}`, `{"mock": {"omit_usage":
//! true}}` (no usage chunk even when asked), `{"mock": {"chunk_delay_ms": 20}}`.
//! `GET /mock/stats` reports what the mock saw.

mod apis;
mod body;
pub mod creem;
mod handlers;
pub mod otlp;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// How the mock behaves for every request.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Delay before the response head.
    pub latency: Duration,
    /// Delay between SSE chunks.
    pub chunk_delay: Duration,
    /// Fraction of chat and embedding requests answered with a 500, spread evenly
    /// (deterministic: request n fails when floor(n * rate) grows).
    pub fail_rate: f64,
    /// Models listed by `/v1/models`; requests for other models are still answered.
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fail_rate: 0.0,
            models: ["gpt-4", "gpt-4o-mini", "gpt-3.5-turbo", "text-embedding-3-small"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Counters of what the mock saw, shared with tests that run it in-process.
#[derive(Debug, Default)]
pub struct MockStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Chat and embedding requests received.
    pub requests: AtomicU64,
    /// Health and model-list requests received.
    pub probes: AtomicU64,
    /// SSE streams currently being written.
    pub open_streams: AtomicU64,
    /// Streams whose client went away before the end.
    pub aborted_streams: AtomicU64,
    /// Streams written to the end.
    pub completed_streams: AtomicU64,
    /// The `Authorization` header of the last chat or embeddings request, if any.
    pub last_authorization: std::sync::Mutex<Option<String>>,
    /// The `anthropic-*` headers of the last request, as `name: value`.
    pub last_anthropic_headers: std::sync::Mutex<Vec<String>>,
    /// The W3C `traceparent` headers of chat and embeddings requests that carried one.
    pub traceparents: std::sync::Mutex<Vec<String>>,
}

impl MockStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "probes": self.probes.load(Ordering::Relaxed),
            "open_streams": self.open_streams.load(Ordering::Relaxed),
            "aborted_streams": self.aborted_streams.load(Ordering::Relaxed),
            "completed_streams": self.completed_streams.load(Ordering::Relaxed),
        })
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub config: MockConfig,
    pub stats: Arc<MockStats>,
    pub models_json: bytes::Bytes,
}

/// Serves the mock on `listener` until `shutdown` resolves. Open connections are closed at
/// shutdown. Returns the stats handle through `stats`.
pub async fn run(
    listener: TcpListener,
    config: MockConfig,
    stats: Arc<MockStats>,
    shutdown: impl Future<Output = ()>,
) {
    let models_json = handlers::models_json(&config.models);
    let state = Arc::new(State { config, stats, models_json });
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handlers::handle(&state, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
}
