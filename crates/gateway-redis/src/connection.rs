//! One multiplexed Redis connection shared by every call, reconnected after a failure.
//!
//! A pool would hand out a connection per call and, to check it, send a `PING` first: a
//! second round trip on the hot path. A multiplexed connection pipelines concurrent commands
//! over one socket instead, so each limiter call is exactly one round trip. Subscriptions need
//! a connection of their own (a subscribed connection takes no other command); they are made
//! from the same client by [`RedisConn::subscriber`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};

/// The gateway's Redis: cheap to clone, every clone shares the one connection.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    slot: Mutex<Option<MultiplexedConnection>>,
    /// One connection attempt at a time; the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info may hold a password: never printed.
        f.debug_struct("RedisConn").finish_non_exhaustive()
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    #[error("redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered PING with {0:?}")]
    Unexpected(String),
}

impl RedisConn {
    /// Parses `url` (`redis://[:password@]host:port[/db]`, or `rediss://`); connects on first
    /// use, so a Redis that is down at start is reached once it is up.
    pub fn open(url: &str) -> Result<Self, RedisError> {
        Ok(Self::from_client(redis::Client::open(url)?))
    }

    pub fn from_client(client: redis::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                slot: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The shared connection, connecting first if there is none.
    pub async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.inner.client.get_multiplexed_async_connection().await?;
        *self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection after an error that may have broken it; the next call reconnects.
    pub fn reset(&self) {
        *self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Drops the connection if `e` may have broken it.
    pub fn check(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.reset();
        }
    }

    /// Runs `cmd` on the shared connection within `timeout`.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, RedisError> {
        let run = async {
            let mut conn = self.get().await?;
            cmd.query_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.check(&e);
                Err(e.into())
            }
            Err(_) => {
                self.reset();
                Err(RedisError::Timeout(timeout))
            }
        }
    }

    /// `PING`, for readiness: Ok when Redis answers `PONG` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), RedisError> {
        let pong: String = self.query(&redis::cmd("PING"), timeout).await?;
        if pong == "PONG" { Ok(()) } else { Err(RedisError::Unexpected(pong)) }
    }

    /// A connection of its own for subscriptions, within `timeout`.
    pub async fn subscriber(&self, timeout: Duration) -> Result<PubSub, RedisError> {
        tokio::time::timeout(timeout, self.inner.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::Timeout(timeout))?
            .map_err(Into::into)
    }
}
