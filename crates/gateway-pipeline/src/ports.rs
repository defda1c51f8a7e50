//! The ports the pipeline calls that no other crate defines, and their errors' API form.

use std::sync::Arc;

use async_trait::async_trait;
use gateway_auth::{KeyVerifier, Principal, VerifyError};
use gateway_core::{ApiError, ErrorKind};

/// Verifies the API key of a request.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[cfg_attr(any(test, feature = "test-util"), allow(clippy::ref_option_ref))] // mockall's code
#[async_trait]
pub trait KeyCheck: Send + Sync {
    /// The key's owner and rights, from the request's `Authorization` header.
    async fn verify<'a>(
        &self,
        authorization: Option<&'a str>,
    ) -> Result<Arc<Principal>, VerifyError>;
}

#[async_trait]
impl KeyCheck for KeyVerifier {
    async fn verify<'a>(
        &self,
        authorization: Option<&'a str>,
    ) -> Result<Arc<Principal>, VerifyError> {
        self.verify_header(authorization).await
    }
}

/// The API error of a key that did not verify.
pub fn from_verify(e: VerifyError) -> ApiError {
    let invalid = |m: &'static str| ApiError::new(ErrorKind::InvalidApiKey, m);
    match e {
        VerifyError::Missing => invalid(
            "You didn't provide an API key. Provide it in an Authorization header using Bearer \
             auth (Authorization: Bearer bm_...).",
        ),
        VerifyError::Revoked => invalid("This API key has been revoked."),
        VerifyError::Inactive => invalid("This API key is disabled."),
        VerifyError::Expired => invalid("This API key has expired."),
        VerifyError::Suspended => {
            ApiError::new(ErrorKind::AccountSuspended, "The account of this API key is suspended.")
        }
        VerifyError::Busy => ApiError::new(
            ErrorKind::ServiceUnavailable,
            "Too many API keys are being verified at once; retry shortly.",
        )
        .with_retry_after(1),
        VerifyError::Unavailable => ApiError::new(
            ErrorKind::ServiceUnavailable,
            "API keys cannot be verified right now; retry shortly.",
        )
        .with_retry_after(5),
        // Malformed, unknown prefix and wrong secret: one answer.
        _ => invalid("Incorrect API key provided."),
    }
}
