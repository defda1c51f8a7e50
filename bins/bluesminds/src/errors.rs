//! Conversions from the domain crates' errors into [`ApiError`]. Internal failures are logged
//! here with the request id and shown to the client only as a generic message.

use gateway_auth::AuthError;
use gateway_billing::codes::CodeError;
use gateway_billing::invoice::InvoiceStoreError;
use gateway_billing::payments::PaymentError;
use gateway_billing::{BillingError, PriceError};
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
        AuthError::EmailUnverified => ApiError::new(
            ErrorKind::PermissionDenied,
            "Confirm your email address first: open the link we mailed to it. For a new link: \
             /verify-email (or POST /api/auth/email/resend).",
        ),
        AuthError::Throttled { retry_after_secs } => ApiError::new(
            ErrorKind::TooManyAttempts,
            "Too many failed sign-in attempts. Try again later.",
        )
        .with_retry_after(retry_after_secs),
        other => internal(request_id, "account operation", &other),
    }
}

pub fn from_billing(request_id: RequestId, e: BillingError) -> ApiError {
    use gateway_billing::ledger::LedgerError;
    match e {
        BillingError::Ledger(LedgerError::Invalid { field, reason }) => {
            ApiError::invalid_param(field, format!("Invalid '{field}': {reason}."))
        }
        BillingError::Ledger(LedgerError::Insufficient { balance_micros }) => ApiError::new(
            ErrorKind::Conflict,
            format!(
                "Not enough credits: the balance is {balance_micros} micro-dollars, and a balance never goes below zero."
            ),
        ),
        BillingError::Ledger(LedgerError::ReferenceReused) => ApiError::new(
            ErrorKind::Conflict,
            "This reference was already used for a different credit operation.",
        )
        .with_param("reference"),
        BillingError::Ledger(LedgerError::UnknownUser) => ApiError::not_found("user"),
        BillingError::PeriodNotEnded(period) => ApiError::invalid_param(
            "period",
            format!(
                "The period {period} has not ended. Close it once it has, or send \"force\": true (its later usage will then not be billed)."
            ),
        ),
        BillingError::Invoices(InvoiceStoreError::Busy) => ApiError::new(
            ErrorKind::ServiceUnavailable,
            "Another instance is closing a billing period. Retry shortly.",
        )
        .with_retry_after(5),
        BillingError::Code(e) => from_codes(request_id, e),
        BillingError::NoSuchInvoice => ApiError::not_found("invoice"),
        BillingError::NothingToPay => {
            ApiError::new(ErrorKind::Conflict, "This invoice has nothing left to pay.")
        }
        other => internal(request_id, "billing operation", &other),
    }
}

pub fn from_payments(request_id: RequestId, e: PaymentError) -> ApiError {
    match e {
        PaymentError::NotForSale(what) => {
            ApiError::new(ErrorKind::NotFound, format!("{what} cannot be bought on this gateway."))
        }
        PaymentError::AlreadyOnTier(tier) => ApiError::new(
            ErrorKind::Conflict,
            format!(
                "You are on the {tier} plan already; the customer portal changes or cancels it."
            ),
        ),
        PaymentError::NoCustomer => ApiError::new(
            ErrorKind::NotFound,
            "There is no payment account for you yet: it is made by your first checkout.",
        ),
        PaymentError::BadSignature => {
            tracing::warn!(request_id = %request_id, "webhook with a missing or wrong signature refused");
            ApiError::new(ErrorKind::Unauthenticated, "Invalid webhook signature.")
        }
        PaymentError::Unreadable(e) => {
            ApiError::invalid_request(format!("Unreadable webhook event: {e}."))
        }
        PaymentError::Provider(e) => {
            tracing::error!(request_id = %request_id, error = %gateway_core::error_chain(&e), "the payment provider failed");
            ApiError::new(
                ErrorKind::ServiceUnavailable,
                "The payment provider could not be reached. Try again in a moment.",
            )
            .with_retry_after(5)
        }
        PaymentError::Store(e) => internal(request_id, "payment operation", &e),
    }
}

pub fn from_codes(request_id: RequestId, e: CodeError) -> ApiError {
    match e {
        CodeError::Invalid { field, reason } => {
            ApiError::invalid_param(field, format!("Invalid '{field}': {reason}."))
        }
        CodeError::Unknown => {
            ApiError::new(ErrorKind::NotFound, "This code is not valid.").with_param("code")
        }
        CodeError::Expired => {
            ApiError::new(ErrorKind::Conflict, "This code has expired.").with_param("code")
        }
        CodeError::UsedUp => {
            ApiError::new(ErrorKind::Conflict, "This code has been used up.").with_param("code")
        }
        CodeError::AlreadyRedeemed => {
            ApiError::new(ErrorKind::Conflict, "You have redeemed this code already.")
                .with_param("code")
        }
        CodeError::Taken => {
            ApiError::new(ErrorKind::Conflict, "A code with this text exists.").with_param("code")
        }
        CodeError::Store(e) => internal(request_id, "redemption code operation", e.as_ref()),
    }
}

pub fn from_prices(request_id: RequestId, e: PriceError) -> ApiError {
    match e {
        PriceError::Invalid { field, reason } => {
            ApiError::invalid_param(field, format!("Invalid '{field}': {reason}."))
        }
        PriceError::Store(e) => internal(request_id, "price operation", &e),
    }
}
