//! The upstream server pool of the BluesMinds gateway: an in-memory snapshot of the active
//! servers (swapped atomically on change, never queried per request), selection (servers that
//! support the model and are healthy, lowest priority number first, then a weighted power of
//! two choices on in-flight count and latency), active health checks, and circuit breaking.
//!
//! Status: the crate exists so the workspace has its final shape; the pool lands with the
//! gateway-path issue. Servers are `gateway_core::UpstreamServer`, whose `endpoint_url` already
//! builds `{base_url}/v1/...` without doubling a `/v1`.
