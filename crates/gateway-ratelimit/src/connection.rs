//! One multiplexed Redis connection shared by every call, reconnected after a failure.
//!
//! A pool would hand out a connection per call and, to check it, send a `PING` first: a
//! second round trip on the hot path. A multiplexed connection pipelines concurrent commands
//! over one socket instead, so each limiter call is exactly one round trip.

use std::sync::Mutex;

use redis::aio::MultiplexedConnection;

pub(crate) struct SharedConnection {
    client: redis::Client,
    slot: Mutex<Option<MultiplexedConnection>>,
    /// One connection attempt at a time; the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
}

impl SharedConnection {
    pub(crate) fn new(client: redis::Client) -> Self {
        Self { client, slot: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The shared connection, connecting first if there is none.
    pub(crate) async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        *self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection after an error that may have broken it; the next call reconnects.
    pub(crate) fn reset(&self) {
        *self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}
