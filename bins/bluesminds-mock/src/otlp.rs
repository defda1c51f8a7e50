//! An OTLP/HTTP collector for tests: takes `POST /v1/traces`, keeps each body and its headers
//! as they came, and answers with a status a test may script (200 with an empty
//! `ExportTraceServiceResponse` otherwise). It does not decode the protobuf: tests decode it
//! with the OpenTelemetry project's own message types, so the gateway's encoding is checked by
//! code that is not ours.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One export the collector received.
#[derive(Clone, Debug)]
pub struct Export {
    pub headers: HeaderMap,
    /// The protobuf body, as sent.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct State {
    exports: Mutex<Vec<Export>>,
    /// Answers to give before the default 200, in order (status, body).
    script: Mutex<VecDeque<(StatusCode, Bytes)>>,
    arrived: Notify,
}

/// The running collector; stops when dropped.
#[derive(Debug)]
pub struct Collector {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let served = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Collector { addr, state, task })
    }

    /// The traces endpoint: `http://127.0.0.1:PORT/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// The next exports get these answers, in order; then 200 again.
    pub fn answer_with(&self, answers: impl IntoIterator<Item = (StatusCode, Bytes)>) {
        self.state.script.lock().unwrap_or_else(PoisonError::into_inner).extend(answers);
    }

    /// Every export received so far (those answered with an error included).
    pub fn exports(&self) -> Vec<Export> {
        self.state.exports.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `done` holds for the exports received, or `patience` passes; returns them.
    pub async fn wait_for(
        &self,
        patience: std::time::Duration,
        done: impl Fn(&[Export]) -> bool,
    ) -> Vec<Export> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let arrived = self.state.arrived.notified();
            let exports = self.exports();
            if done(&exports) || tokio::time::Instant::now() >= deadline {
                return exports;
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return res;
    }
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map(http_body_util::Collected::to_bytes);
    let (status, answer) = state
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
        .unwrap_or((StatusCode::OK, Bytes::new()));
    if let Ok(body) = body {
        state.exports.lock().unwrap_or_else(PoisonError::into_inner).push(Export { headers, body });
    }
    state.arrived.notify_waiters();
    let mut res = Response::new(Full::new(answer));
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/x-protobuf"));
    res
}
