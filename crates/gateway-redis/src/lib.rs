//! Every Redis adapter of the BluesMinds gateway, on one shared connection type
//! ([`RedisConn`]: one multiplexed connection per process, reconnected after a failure):
//!
//! - [`RedisLimiter`]: the `gateway_ratelimit` ports on Redis: one versioned Lua script per
//!   call, so a check and its reservation are one atomic round trip, exact across every
//!   instance sharing the Redis; quotas mirrored to a durable store and restored into a Redis
//!   that lost them.
//! - [`bus::Bus`]: the invalidation channel between instances (pub/sub).
//! - [`RedisConn::ping`]: the readiness check.
//!
//! The domain crates define the ports; this crate is the only one that speaks Redis.

pub mod bus;
mod connection;
mod limiter;

pub use connection::{RedisConn, RedisError};
pub use limiter::RedisLimiter;
