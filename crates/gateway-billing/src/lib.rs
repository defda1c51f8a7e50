//! Billing for the BluesMinds gateway: subscription plans (the tier table, seeded into
//! `billing_plans`), model prices per million tokens, the credits ledger and monthly invoices.
//! Money is integer micro-dollars everywhere, never floating point.
//!
//! Status: the crate exists so the workspace has its final shape; the tables it works on
//! already exist. Tier prices and limits are `gateway_core::Tier`.
