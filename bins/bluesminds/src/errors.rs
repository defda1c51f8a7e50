//! Conversions from the domain crates' errors into [`ApiError`]. Internal failures are logged
//! here with the request id and shown to the client only as a generic message.

use gateway_auth::AuthError;
use gateway_core::{ApiError, ErrorKind, RequestId};

/// Logs an internal error chain (never containing secrets: adapters do not put them in
/// errors) and returns the generic 500 or 503.
pub fn internal(
    request_id: RequestId,
    what: &str,
    e: &(dyn std::error::Error + 'static),
) -> ApiError {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(request_id = %request_id, error = %chain, "{what} failed");
    ApiError::internal()
}

pub fn from_auth(request_id: RequestId, e: AuthError) -> ApiError {
    match e {
        AuthError::Invalid { field, message } => {
            ApiError::invalid_param(field, format!("Invalid '{field}': {message}."))
        }
        AuthError::Conflict(what) => {
            ApiError::new(ErrorKind::Conflict, format!("This {what} is already registered."))
        }
        AuthError::NotFound(what) => ApiError::not_found(what),
        AuthError::KeyLimit(n) => ApiError::new(
            ErrorKind::PermissionDenied,
            format!("Your plan allows at most {n} active API keys."),
        ),
        other => internal(request_id, "account operation", &other),
    }
}
