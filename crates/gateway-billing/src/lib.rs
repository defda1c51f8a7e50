//! Billing for the BluesMinds gateway: model prices and the cost of a request (this part is
//! built), then subscription plans, spend caps, the credits ledger and monthly invoices (to
//! come, on the tables that exist). Money is integer micro-dollars everywhere, never floating
//! point.
//!
//! - [`price`]: prices per million tokens with the time they apply from, the [`PriceBook`]
//!   read on the request path, and [`cost_micros`], the one rounding rule.
//! - [`prices`]: the [`PriceStore`] port (`gateway-store` implements it on `model_prices`) and
//!   [`Prices`], the book in memory for the request path, reloaded after a change.
//! - [`litellm`]: LiteLLM's `model_prices_and_context_window.json`, read as prices.
//!
//! ```
//! use gateway_billing::{PriceBook, Tokens};
//!
//! let book = PriceBook::seeded();
//! let t = Tokens { prompt: 1000, completion: 500, ..Tokens::default() };
//! // gpt-4: $0.03 per 1K prompt tokens, $0.06 per 1K completion tokens.
//! assert_eq!(book.cost("gpt-4", time::OffsetDateTime::now_utc(), t), 60_000);
//! ```

pub mod codes;
pub mod invoice;
pub mod ledger;
pub mod litellm;
pub mod money;
pub mod payments;
pub mod plans;
pub mod price;
pub mod prices;
pub mod service;

pub use plans::{
    Ceiling, CeilingKind, InMemoryPlanStore, InvalidPlan, PlanStore, PlanStoreError, PlanUpdate,
    Plans, UNLIMITED_TOKENS, UpdatePlanError, monthly_ceiling,
};
pub use price::{DEFAULT_PRICE, ModelPrice, Price, PriceBook, SEED_PRICES, Tokens, cost_micros};
pub use prices::{
    ImportReport, InMemoryPriceStore, PriceChange, PriceEntry, PriceError, PriceStore,
    PriceStoreError, Prices,
};
pub use service::{Billing, BillingError, Moved, Summary};
