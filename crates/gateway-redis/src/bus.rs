//! The invalidation bus between gateway instances, over Redis pub/sub: when a key is revoked,
//! rotated or changed, a user suspended, or the server pool edited, every instance hears of it
//! within a second and drops what it cached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use gateway_core::{ApiKeyId, UserId};

use crate::{RedisConn, RedisError};

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Key(ApiKeyId),
    User(UserId),
    Servers,
    /// Plans or model prices changed.
    Billing,
}

impl Invalidation {
    /// The message on the wire: `key:<id>`, `user:<id>`, `servers` or `billing`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("key:{id}"),
            Invalidation::User(id) => format!("user:{id}"),
            Invalidation::Servers => "servers".to_owned(),
            Invalidation::Billing => "billing".to_owned(),
        }
    }

    /// `None` for a message this version does not know.
    pub fn parse(message: &str) -> Option<Self> {
        match message {
            "servers" => return Some(Invalidation::Servers),
            "billing" => return Some(Invalidation::Billing),
            _ => {}
        }
        match message.split_once(':')? {
            ("key", id) => id.parse().ok().map(Invalidation::Key),
            ("user", id) => id.parse().ok().map(Invalidation::User),
            _ => None,
        }
    }
}

/// What a listener hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// (Re)subscribed: messages may have been missed while disconnected, so caches should be
    /// dropped whole.
    Subscribed,
    Changed(Invalidation),
}

/// The channel of one deployment (its key prefix), on the shared connection.
#[derive(Clone, Debug)]
pub struct Bus {
    conn: RedisConn,
    channel: String,
    /// Failed publications and lost subscriptions, for the metrics.
    errors: std::sync::Arc<AtomicU64>,
}

/// How long a publication may take before it is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Bus {
    /// The channel is versioned, so two meanings never share it during a rolling deploy.
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self { conn, channel: format!("{prefix}:v1:invalidate"), errors: std::sync::Arc::default() }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Failed Redis calls of the bus so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Tells every instance (this one included) that `what` changed.
    pub async fn publish(&self, what: Invalidation) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(what.encode());
        let sent = self.conn.query::<i64>(&cmd, PUBLISH_TIMEOUT).await.map(drop);
        if sent.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Listens for as long as the future is polled, reconnecting with backoff (up to 30 s);
    /// `on` hears [`Heard::Subscribed`] after every (re)subscription, then each message.
    pub async fn listen(&self, on: impl Fn(Heard) + Send + Sync) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.subscribe(&on).await {
                Ok(()) => tracing::warn!("invalidation channel closed; reconnecting"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "invalidation channel unavailable; key changes from other instances apply within the key-cache TTL"
                ),
            }
            self.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn subscribe(&self, on: &(impl Fn(Heard) + Send + Sync)) -> Result<(), RedisError> {
        let mut pubsub = self.conn.subscriber(SUBSCRIBE_TIMEOUT).await?;
        pubsub.subscribe(&self.channel).await?;
        tracing::debug!(channel = %self.channel, "subscribed to invalidations");
        on(Heard::Subscribed);
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            match msg.get_payload::<String>() {
                Ok(payload) => match Invalidation::parse(&payload) {
                    Some(what) => on(Heard::Changed(what)),
                    None => tracing::warn!(message = %payload, "ignoring unknown invalidation"),
                },
                Err(e) => tracing::warn!(error = %e, "unreadable invalidation"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_ones_are_ignored() {
        for what in [
            Invalidation::Key(ApiKeyId::new()),
            Invalidation::User(UserId::new()),
            Invalidation::Servers,
        ] {
            assert_eq!(Invalidation::parse(&what.encode()), Some(what));
        }
        assert_eq!(Invalidation::parse("key:not-a-uuid"), None);
        assert_eq!(Invalidation::parse("plans"), None);
    }
}
