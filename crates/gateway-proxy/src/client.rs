//! The upstream HTTP client: pooled connections, HTTP and HTTPS (rustls with the bundled
//! webpki roots), the server's own API key, connect and first-byte timeouts. Redirects are
//! never followed: a 3xx from an upstream is an error.
//!
//! [`Upstream`] is the port the request pipeline forwards through; [`UpstreamClient`] is its
//! production adapter, and tests answer with any [`http_body::Body`] through
//! [`UpstreamBody::boxed`], without a socket.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use bytes::Bytes;
use futures_util::TryFutureExt;
use futures_util::future::MapOk;
use gateway_core::error_chain;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Upstream client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// Until the response head arrives.
    pub first_byte_timeout: Duration,
    /// Whole response of a non-streaming request.
    pub request_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Largest non-streaming upstream response read.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_mins(2),
            request_timeout: Duration::from_mins(10),
            stream_idle_timeout: Duration::from_mins(2),
            // Below uvicorn's 5 s keep-alive (LiteLLM's server): never reuse a connection the
            // upstream may be closing.
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_host: 512,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a request to an upstream failed before its response head.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("invalid upstream URL {0}")]
    Url(String),
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream answered with a redirect ({0}); redirects are never followed")]
    Redirect(u16),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of an upstream response: hyper's own (production, not boxed), or any body.
pub enum UpstreamBody {
    Hyper(Incoming),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl UpstreamBody {
    /// Any body, for adapters other than hyper's client and for tests.
    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        UpstreamBody::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::Hyper(_) => "UpstreamBody::Hyper",
            UpstreamBody::Boxed(_) => "UpstreamBody::Boxed",
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// Where one request goes and what travels with it besides its body.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    /// The endpoint's full URL on the chosen server.
    pub url: &'a str,
    /// The server's own key, sent as `Authorization: Bearer` (never the client's).
    pub api_key: Option<&'a str>,
    /// The gateway's request id, sent as `x-request-id`.
    pub request_id: &'a str,
    /// W3C `traceparent` naming the gateway's span, when the request is traced.
    pub traceparent: Option<&'a str>,
    /// Client headers passed on as they came (Anthropic's `anthropic-version` and
    /// `anthropic-beta` on the Messages route); never one that carries a credential.
    pub passthrough: &'a [(HeaderName, HeaderValue)],
}

impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("url", &self.url)
            .field("api_key", &self.api_key.map(|_| "<redacted>"))
            .field("request_id", &self.request_id)
            .field("traceparent", &self.traceparent)
            .field("passthrough", &self.passthrough)
            .finish()
    }
}

/// Where requests are sent: one POST to one server, answered with the response head.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Sends `body` as `to` says; waits for the response head only.
    async fn post(
        &self,
        to: Outgoing<'_>,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError>;

    /// The timeouts and size bounds the caller applies to the rest of the response.
    fn config(&self) -> &ClientConfig;
}

#[async_trait]
impl Upstream for UpstreamClient {
    async fn post(
        &self,
        to: Outgoing<'_>,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let res = self.send(Method::POST, to, body).await?;
        Ok(res.map(UpstreamBody::Hyper))
    }

    fn config(&self) -> &ClientConfig {
        &self.config
    }
}

type Connector = Unlabelled<hyper_rustls::HttpsConnector<HttpConnector>>;

/// A connector whose connections attach nothing to the responses they carry. hyper-util's
/// `HttpConnector` labels every connection with its addresses (`HttpInfo`), which the pooled
/// client then copies into each response's extensions: a map and two boxed values per
/// response (3.4 allocations, the most of any one site on the gateway's path), for an
/// address nothing here reads.
#[derive(Clone, Debug)]
struct Unlabelled<C>(C);

impl<C> tower_service::Service<http::Uri> for Unlabelled<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Unpin,
{
    type Response = Plain<C::Response>;
    type Error = C::Error;
    type Future = MapOk<C::Future, fn(C::Response) -> Plain<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        self.0.call(uri).map_ok(Plain as fn(_) -> _)
    }
}

/// A connection that tells the pool only what it acts on: proxied or not, and HTTP/2.
struct Plain<T>(T);

impl<T: Connection> Connection for Plain<T> {
    fn connected(&self) -> Connected {
        let labelled = self.0.connected();
        let plain = Connected::new().proxy(labelled.is_proxied());
        if labelled.is_negotiated_h2() { plain.negotiated_h2() } else { plain }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Plain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Plain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// A pooled client for every upstream server.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<Connector, Full<Bytes>>,
    config: ClientConfig,
}

impl UpstreamClient {
    pub fn new(config: ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let https = Unlabelled(https);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Self { client, config }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends one request and waits for the response head (bounded by the first-byte timeout).
    pub async fn send(
        &self,
        method: Method,
        to: Outgoing<'_>,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let url = to.url;
        let mut req = Request::builder().method(method).uri(url);
        let headers = req.headers_mut().ok_or_else(|| UpstreamError::Url(url.to_owned()))?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        if let Ok(v) = HeaderValue::from_str(to.request_id) {
            headers.insert("x-request-id", v);
        }
        if let Some(v) = to.traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert("traceparent", v);
        }
        for (name, value) in to.passthrough {
            headers.append(name, value.clone());
        }
        if let Some(key) = to.api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| UpstreamError::Url(url.to_owned()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let req = req.body(Full::new(body)).map_err(|_| UpstreamError::Url(url.to_owned()))?;
        let res = tokio::time::timeout(self.config.first_byte_timeout, self.client.request(req))
            .await
            .map_err(|_| UpstreamError::Timeout(self.config.first_byte_timeout))?
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        if res.status().is_redirection() {
            return Err(UpstreamError::Redirect(res.status().as_u16()));
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An upstream that serves one connection (keep-alive), answering every request `{}`.
    async fn upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let answer = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"{}",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), answer)
                .await;
        });
        format!("http://{addr}/v1/chat/completions")
    }

    #[tokio::test]
    async fn a_pooled_connection_answers_without_labelling_the_response() {
        let url = upstream().await;
        let client = UpstreamClient::new(ClientConfig::default());
        for _ in 0..2 {
            let to = Outgoing {
                url: &url,
                api_key: Some("sk-upstream"),
                request_id: "req-1",
                traceparent: None,
                passthrough: &[],
            };
            let res = client.send(Method::POST, to, Bytes::from_static(b"{}")).await.unwrap();
            assert_eq!(res.status(), 200);
            // No connection info copied into every response (hyper-util's `HttpInfo`).
            assert!(res.extensions().is_empty());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"{}");
        }
    }
}
