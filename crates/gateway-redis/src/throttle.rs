//! [`RedisFailures`]: failed logins counted in Redis, so every instance sharing it sees them
//! (the `gateway_auth::throttle::SharedFailures` port).
//!
//! One counter per key (`<prefix>:login:<e|i><keyed hash>`), created with its window as its
//! expiry by the same script call that counts the first failure, so a counter never outlives
//! its window. Each call touches one key: in a cluster it goes to that key's master.

use std::time::Duration;

use async_trait::async_trait;
use gateway_auth::throttle::{Failures, SharedFailures};

use crate::RedisConn;

/// One more failure; the first one sets the window. Returns the count.
const ADD: &str = "local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    return n";

/// The count and the milliseconds its window has left (`-2`: none).
const READ: &str =
    "return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}";

/// Failed-login counters in Redis.
#[derive(Clone, Debug)]
pub struct RedisFailures {
    conn: RedisConn,
    prefix: String,
    window_ms: i64,
    timeout: Duration,
}

impl RedisFailures {
    /// Counters under `<prefix>:login:`, each for `window` from its first failure; every call
    /// gives up after `timeout` (the caller then counts on its own instance).
    pub fn new(conn: RedisConn, prefix: &str, window: Duration, timeout: Duration) -> Self {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        Self { conn, prefix: format!("{prefix}:login:"), window_ms, timeout }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl SharedFailures for RedisFailures {
    async fn read(&self, keys: &[String], now_ms: i64) -> Result<Vec<Option<Failures>>, String> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(READ).arg(1).arg(self.key(key));
            let (count, ttl_ms): (u32, i64) =
                self.conn.query(&cmd, self.timeout).await.map_err(|e| e.to_string())?;
            out.push(
                (count > 0 && ttl_ms > 0)
                    .then(|| Failures { count, since_ms: now_ms - (self.window_ms - ttl_ms) }),
            );
        }
        Ok(out)
    }

    async fn add(&self, keys: &[String], _now_ms: i64, window_ms: i64) -> Result<(), String> {
        for key in keys {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(ADD).arg(1).arg(self.key(key)).arg(window_ms);
            let _: u32 = self.conn.query(&cmd, self.timeout).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), String> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        let _: u32 = self.conn.query(&cmd, self.timeout).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
