//! Errors of the auth crate.

/// What can go wrong in accounts, sessions and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Input that breaks a rule; the message is safe to show to the user.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// A unique value (email, key prefix) is taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Wrong email or password (deliberately one answer).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// No valid session.
    #[error("not signed in")]
    Unauthenticated,
    /// The account is suspended.
    #[error("account suspended")]
    Suspended,
    /// The account signed up under email verification and has not opened its link yet.
    #[error("email not verified")]
    EmailUnverified,
    /// Too many failed logins; retry after this many seconds.
    #[error("too many failed logins")]
    Throttled { retry_after_secs: u64 },
    /// The plan's key limit is reached.
    #[error("the {plan} plan's limit of {max} API keys is reached")]
    KeyLimit { plan: String, max: u32 },
    /// The persistence adapter failed.
    #[error("auth store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Hashing failed or its blocking task died.
    #[error("password hashing failed")]
    Hashing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AuthError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }

    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Store(Box::new(e))
    }
}
