//! SeaORM entities, one module per table of the schema (`migrations/sql`). They are the store's private
//! vocabulary: the domain crates see their own types, converted at the adapter boundary.

pub mod api_keys;
pub mod audit_log;
pub mod billing_plans;
pub mod billing_webhook_events;
pub mod credit_ledger;
pub mod invoice_lines;
pub mod invoice_numbers;
pub mod invoices;
pub mod litellm_servers;
pub mod model_prices;
pub mod model_routes;
pub mod password_resets;
pub mod payment_transactions;
pub mod rate_limit_state;
pub mod redemption_codes;
pub mod redemptions;
pub mod sessions;
pub mod usage_logs;
pub mod user_quota_state;
pub mod users;
