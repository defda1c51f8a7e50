//! The error model every layer reports in, and its single mapping to OpenAI's error body (and
//! Anthropic's, on the Messages routes).
//!
//! Domain crates keep their own `thiserror` enums; they are converted into an [`ApiError`],
//! whose [`ErrorKind`] decides the OpenAI `type`, `code`, the Anthropic `type` and the HTTP
//! status here, and nowhere else.

use std::borrow::Cow;

use serde::Serialize;

/// What went wrong, in the terms an OpenAI client understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Malformed or invalid input (400).
    InvalidRequest,
    /// Missing, malformed, unknown, revoked or expired credentials (401).
    InvalidApiKey,
    /// No valid session, or a wrong email or password (401).
    Unauthenticated,
    /// Authenticated but not allowed: scope, model, role (403).
    PermissionDenied,
    /// The account is suspended (403).
    AccountSuspended,
    /// No such resource, or not the caller's (404).
    NotFound,
    /// The requested model is served by no server (404).
    ModelNotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// Unique constraint, such as an email already registered (409).
    Conflict,
    /// Body over the configured limit (413).
    PayloadTooLarge,
    /// Unsupported `Content-Type` (415).
    UnsupportedMediaType,
    /// RPM or TPM exceeded (429, `rate_limit_exceeded`).
    RateLimited,
    /// Daily or monthly token quota exhausted (429, `insufficient_quota`).
    QuotaExceeded,
    /// Too many failed logins (429).
    TooManyAttempts,
    /// A bug or an unexpected failure inside the gateway (500).
    Internal,
    /// The upstream answered with garbage or failed (502).
    UpstreamError,
    /// Load shedding: the global in-flight cap is reached (503).
    Overloaded,
    /// No upstream server can take the request (503).
    NoHealthyUpstream,
    /// A dependency (database, Redis) is down and the policy is to fail closed (503).
    ServiceUnavailable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The client took too long to send its request (408).
    RequestTimeout,
}

impl ErrorKind {
    /// OpenAI's `error.type`.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::InvalidApiKey
            | ErrorKind::NotFound
            | ErrorKind::ModelNotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Conflict
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied | ErrorKind::AccountSuspended => "permission_error",
            ErrorKind::RateLimited | ErrorKind::TooManyAttempts => "rate_limit_error",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::Internal
            | ErrorKind::UpstreamError
            | ErrorKind::Overloaded
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::ServiceUnavailable
            | ErrorKind::UpstreamTimeout => "server_error",
        }
    }

    /// The HTTP status an OpenAI SDK expects for this kind. The only place that knows it.
    /// The `error.type` of Anthropic's error body. Anthropic's SDKs choose the exception by the
    /// HTTP status, which is the same in both shapes.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Conflict
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::InvalidApiKey | ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied | ErrorKind::AccountSuspended => "permission_error",
            ErrorKind::NotFound | ErrorKind::ModelNotFound => "not_found_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::RateLimited | ErrorKind::QuotaExceeded | ErrorKind::TooManyAttempts => {
                "rate_limit_error"
            }
            ErrorKind::Internal | ErrorKind::UpstreamError | ErrorKind::UpstreamTimeout => {
                "api_error"
            }
            ErrorKind::Overloaded
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::ServiceUnavailable => "overloaded_error",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::InvalidApiKey | ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied | ErrorKind::AccountSuspended => 403,
            ErrorKind::NotFound | ErrorKind::ModelNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RateLimited | ErrorKind::QuotaExceeded | ErrorKind::TooManyAttempts => 429,
            ErrorKind::Internal => 500,
            ErrorKind::UpstreamError => 502,
            ErrorKind::Overloaded
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::ServiceUnavailable => 503,
            ErrorKind::UpstreamTimeout => 504,
        }
    }

    /// OpenAI's `error.code`, where there is a stable one.
    pub fn openai_code(self) -> Option<&'static str> {
        Some(match self {
            ErrorKind::InvalidRequest => return None,
            ErrorKind::InvalidApiKey => "invalid_api_key",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AccountSuspended => "account_suspended",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::TooManyAttempts => "too_many_attempts",
            ErrorKind::Internal => "internal_error",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::RequestTimeout => "request_timeout",
        })
    }
}

/// An error as the API reports it. The message is shown to the client, so it never holds a
/// secret, a SQL fragment or an internal detail; those go to the log under the request id.
/// Which API's error body a route answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ErrorShape {
    /// `{"error": {"message", "type", "param", "code"}}`: every route but Anthropic's.
    #[default]
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`: the Messages routes.
    Anthropic,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// The request field at fault, if one is.
    pub param: Option<Cow<'static, str>>,
    /// Seconds until a retry may succeed (429 and 503).
    pub retry_after_secs: Option<u64>,
}

/// `{"error": {...}}`, OpenAI's error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'a str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), param: None, retry_after_secs: None }
    }

    #[must_use]
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// The OpenAI error body of this error: the one mapping from our model to the wire.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind.openai_type(),
                param: self.param.as_deref(),
                code: self.kind.openai_code(),
            },
        }
    }

    /// The body, serialised.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings into a Vec cannot fail.
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    /// The error body in `shape`.
    pub fn to_json_in(&self, shape: ErrorShape) -> Vec<u8> {
        match shape {
            ErrorShape::OpenAi => self.to_json(),
            ErrorShape::Anthropic => serde_json::to_vec(&serde_json::json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message},
            }))
            .unwrap_or_default(),
        }
    }

    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn invalid_param(param: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message).with_param(param)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    pub fn internal() -> Self {
        Self::new(ErrorKind::Internal, "The server had an error while processing your request.")
    }

    pub fn no_healthy_upstream() -> Self {
        Self::new(ErrorKind::NoHealthyUpstream, "No healthy servers available").with_retry_after(1)
    }

    pub fn overloaded() -> Self {
        Self::new(ErrorKind::Overloaded, "The gateway is overloaded; retry shortly.")
            .with_retry_after(1)
    }
}

/// An error and its sources in one line (`outer: inner: ...`), for a log. Adapters never put
/// secrets in errors, so the chain carries none.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        chain.push_str(": ");
        chain.push_str(&inner.to_string());
        source = inner.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_bodies_have_anthropics_shape_and_types() {
        let err = ApiError::model_not_found("claude-x");
        let v: serde_json::Value =
            serde_json::from_slice(&err.to_json_in(ErrorShape::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("claude-x"));
        for (kind, ty) in [
            (ErrorKind::InvalidApiKey, "authentication_error"),
            (ErrorKind::QuotaExceeded, "rate_limit_error"),
            (ErrorKind::PayloadTooLarge, "request_too_large"),
            (ErrorKind::NoHealthyUpstream, "overloaded_error"),
            (ErrorKind::UpstreamError, "api_error"),
            (ErrorKind::PermissionDenied, "permission_error"),
        ] {
            assert_eq!(kind.anthropic_type(), ty);
        }
        assert_eq!(err.to_json_in(ErrorShape::OpenAi), err.to_json());
    }

    #[test]
    fn body_has_openai_shape() {
        let err = ApiError::invalid_param("stream", "`stream` must be a boolean");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "`stream` must be a boolean",
                "type": "invalid_request_error",
                "param": "stream",
                "code": null
            }})
        );
    }

    #[test]
    fn quota_and_rate_limits_use_openais_codes() {
        let q = serde_json::to_value(ApiError::new(ErrorKind::QuotaExceeded, "q").body()).unwrap();
        assert_eq!(q["error"]["code"], "insufficient_quota");
        assert_eq!(q["error"]["type"], "insufficient_quota");
        let r = serde_json::to_value(ApiError::new(ErrorKind::RateLimited, "r").body()).unwrap();
        assert_eq!(r["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(ApiError::overloaded().with_retry_after(0).retry_after_secs, Some(1));
    }
}
