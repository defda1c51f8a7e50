//! Conversions from the domain crates' errors into [`ApiError`]. Internal failures are logged
//! here with the request id and shown to the client only as a generic message.

use gateway_auth::AuthError;
use gateway_core::{ApiError, ErrorKind, RequestId};

/// Logs an internal error chain (never containing secrets: adapters do not put them in
/// errors) and returns the generic 500.
pub fn internal(
    request_id: RequestId,
    what: &str,
    e: &(dyn std::error::Error + 'static),
) -> ApiError {
    let chain = gateway_core::error_chain(e);
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
        AuthError::KeyLimit { plan, max } => ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "Your {plan} plan allows at most {max} active API key{}. Revoke a key or upgrade your plan.",
                if max == 1 { "" } else { "s" }
            ),
        ),
        AuthError::InvalidCredentials => {
            ApiError::new(ErrorKind::Unauthenticated, "Invalid email or password.")
        }
        AuthError::Unauthenticated => ApiError::new(
            ErrorKind::Unauthenticated,
            "You are not signed in, or your session has ended. Sign in again.",
        ),
        AuthError::Suspended => {
            ApiError::new(ErrorKind::AccountSuspended, "This account is suspended.")
        }
        AuthError::Throttled { retry_after_secs } => ApiError::new(
            ErrorKind::TooManyAttempts,
            "Too many failed sign-in attempts. Try again later.",
        )
        .with_retry_after(retry_after_secs),
        other => internal(request_id, "account operation", &other),
    }
}
