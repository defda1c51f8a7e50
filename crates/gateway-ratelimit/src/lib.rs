//! Per-key rate limits and token quotas for the BluesMinds gateway: RPM and TPM over sliding
//! one-minute windows, daily and monthly token quotas over calendar UTC periods.
//!
//! The port is a `RateLimiter` trait: one call before forwarding checks and reserves every
//! window atomically (one request, plus a token estimate), and one call after the response
//! settles the reservation to the real usage. Two adapters are held to one conformance suite:
//! Redis (one versioned Lua script, one round trip, exact across replicas) and in-memory (the
//! embedded mode, one process).
//!
//! Status: the crate exists so the workspace has its final shape; the limiter lands with the
//! rate-limit issue. The tier defaults it enforces are `gateway_core::Tier::limits`.
