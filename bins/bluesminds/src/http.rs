//! Response bodies and the single place where errors become HTTP responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gateway_core::{ApiError, ErrorKind, ErrorShape};
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: whole bytes (the common case, no allocation beyond the bytes), or a
/// stream (SSE) boxed once.
pub enum ResBody {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>),
}

impl std::fmt::Debug for ResBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResBody::Full(b) => f.debug_tuple("Full").field(&b.as_ref().map(Bytes::len)).finish(),
            ResBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ResBody {
    pub fn empty() -> Self {
        ResBody::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResBody::Full(Some(bytes.into()))
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Stream(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Full(bytes) => bytes.is_none(),
            ResBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResBody::Full(None) => SizeHint::with_exact(0),
            ResBody::Stream(body) => body.size_hint(),
        }
    }
}

/// A body that holds a guard (an in-flight permit) until it is fully sent or dropped.
#[derive(Debug)]
pub struct Guarded<G> {
    body: ResBody,
    /// Held, never read: released when the body is finished or dropped.
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(body: ResBody, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response from bytes already serialised.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut res = Response::new(ResBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    res
}

/// A JSON response from a serialisable value.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ResBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => {
            tracing::error!(error = %e, "response serialisation failed");
            error_response(&ApiError::internal())
        }
    }
}

/// The HTTP status of an error kind (decided by [`ErrorKind::http_status`]).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Turns an error into its HTTP response: status, OpenAI body, `Retry-After` where it applies.
pub fn error_response(err: &ApiError) -> Response<ResBody> {
    error_response_in(ErrorShape::OpenAi, err)
}

/// [`error_response`] with the body in `shape` (Anthropic's on its routes).
pub fn error_response_in(shape: ErrorShape, err: &ApiError) -> Response<ResBody> {
    let mut res = json_bytes(status_of(err.kind), err.to_json_in(shape));
    if let Some(secs) = err.retry_after_secs {
        res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_carry_status_body_and_retry_after() {
        let res = error_response(&ApiError::overloaded().with_retry_after(3));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "3");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }

    #[test]
    fn every_kind_has_the_status_an_openai_sdk_expects() {
        assert_eq!(status_of(ErrorKind::InvalidApiKey), 401);
        assert_eq!(status_of(ErrorKind::QuotaExceeded), 429);
        assert_eq!(status_of(ErrorKind::NoHealthyUpstream), 503);
        assert_eq!(status_of(ErrorKind::ModelNotFound), 404);
        assert_eq!(status_of(ErrorKind::PayloadTooLarge), 413);
    }
}
