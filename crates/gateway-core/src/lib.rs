//! Domain types shared by every BluesMinds crate: ids, users and tiers, API-key metadata,
//! limits, usage, upstream servers, shared pieces of OpenAI's wire format, the error model
//! with its single mapping to the OpenAI error body, and a [`Clock`] with a test double.
//!
//! This crate does no I/O and knows nothing of HTTP servers or databases, so any Rust service
//! can depend on it.
//!
//! ```
//! use gateway_core::{ApiError, Tier};
//!
//! let limits = Tier::Free.limits();
//! assert_eq!(limits.rpm, 10);
//!
//! let err = ApiError::model_not_found("gpt-9");
//! let body = serde_json::to_value(err.body()).unwrap();
//! assert_eq!(body["error"]["code"], "model_not_found");
//! ```

pub mod clock;
pub mod domain;
pub mod error;
pub mod id;
pub mod openai;
pub mod plan;
pub mod trace;

pub use clock::{Clock, SystemClock, TestClock};
pub use domain::{
    ApiKeyMeta, HealthStatus, LimitOverrides, Limits, PromptTokensDetails, Role, Scope, Tier,
    UnknownVariant, UpstreamServer, Usage, User, UserStatus,
};
pub use error::{ApiError, ErrorKind, ErrorShape, error_chain};
pub use id::{
    ApiKeyId, CodeId, InvoiceId, LedgerEntryId, PriceId, RequestId, RouteId, ServerId, UserId,
};
pub use plan::{DefaultPlans, Plan, PlanSource};
