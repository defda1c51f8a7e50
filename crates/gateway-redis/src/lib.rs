//! Every Redis adapter of the BluesMinds gateway, on one shared connection type
//! ([`RedisConn`]: one multiplexed connection per process, reconnected after a failure):
//!
//! - [`RedisLimiter`]: the `gateway_ratelimit` ports on Redis: one versioned Lua script per
//!   call, so a check and its reservation are one atomic round trip, exact across every
//!   instance sharing the Redis; quotas mirrored to a durable store and restored into a Redis
//!   that lost them.
//! - [`bus::Bus`]: the invalidation channel between instances (pub/sub).
//! - [`RedisFailures`]: failed logins counted across instances (`gateway_auth`'s throttle).
//! - [`RedisConn::ping`]: the readiness check.
//!
//! `REDIS_URL` may name a single Redis or a Redis Cluster (see [`RedisConn::open`]); in a
//! cluster every script call still touches one slot, so each reservation stays one atomic
//! round trip ([`slot`]).
//!
//! The domain crates define the ports; this crate is the only one that speaks Redis.

pub mod bus;
mod connection;
mod limiter;
pub mod slot;
mod throttle;

pub use connection::{Conn, RedisConn, RedisError};
pub use limiter::RedisLimiter;
pub use throttle::RedisFailures;
