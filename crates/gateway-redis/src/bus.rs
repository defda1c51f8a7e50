//! The invalidation bus between gateway instances, over Redis pub/sub: when a key is revoked,
//! rotated or changed, a user suspended, or the server pool edited, every instance hears of it
//! within a second and drops what it cached.
//!
//! A subscription can die without its socket closing (a half-open connection, a proxy or a
//! partition that drops packets): the listener would wait for messages that never come. So
//! the listener sends a `PING` on its subscription every [`HEARTBEAT`]; a ping unanswered
//! within [`PING_TIMEOUT`] ends the subscription ([`Heard::Lost`]) and a new one is made. A
//! dead subscription is so noticed within `HEARTBEAT + PING_TIMEOUT` (7 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The subscription ended (closed, or a heartbeat unanswered): messages may be missed
    /// until the next [`Heard::Subscribed`]. A new subscription is being made.
    Lost,
}

/// The channel of one deployment (its key prefix), on the shared connection.
#[derive(Clone, Debug)]
pub struct Bus {
    conn: RedisConn,
    channel: String,
    /// Failed publications and lost subscriptions, for the metrics.
    errors: std::sync::Arc<AtomicU64>,
    /// Whether a subscription is up (answering its heartbeat), for the metrics.
    subscribed: std::sync::Arc<AtomicBool>,
    heartbeat: Duration,
}

/// How long a publication may take before it is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a listener pings its subscription.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a heartbeat ping may go unanswered before the subscription is given up.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Bus {
    /// The channel is versioned, so two meanings never share it during a rolling deploy.
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            channel: format!("{prefix}:v1:invalidate"),
            errors: std::sync::Arc::default(),
            subscribed: std::sync::Arc::default(),
            heartbeat: HEARTBEAT,
        }
    }

    /// Pings the subscription this often instead of every [`HEARTBEAT`] (tests).
    #[must_use]
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Failed Redis calls of the bus so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether a listener of this bus (or a clone of it) is subscribed.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
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
    /// `on` hears [`Heard::Subscribed`] after every (re)subscription, then each message, and
    /// [`Heard::Lost`] when a subscription ends.
    pub async fn listen(&self, on: impl Fn(Heard) + Send + Sync) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let mut subscribed = false;
            let ended = self.subscribe(&on, &mut subscribed).await;
            if subscribed {
                self.subscribed.store(false, Ordering::Relaxed);
                on(Heard::Lost);
                backoff = Duration::from_millis(250);
            }
            match ended {
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

    /// One subscription, until it ends; `subscribed` is set once it was made.
    async fn subscribe(
        &self,
        on: &(impl Fn(Heard) + Send + Sync),
        subscribed: &mut bool,
    ) -> Result<(), RedisError> {
        let mut pubsub = self.conn.subscriber(SUBSCRIBE_TIMEOUT).await?;
        pubsub.subscribe(&self.channel).await?;
        tracing::debug!(channel = %self.channel, "subscribed to invalidations");
        *subscribed = true;
        on(Heard::Subscribed);
        // After the listener has acted on it: whoever reads the gauge sees a subscription
        // the caches already know of.
        self.subscribed.store(true, Ordering::Relaxed);
        let (mut sink, mut messages) = pubsub.split();
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg.get_payload::<String>() {
                        Ok(payload) => match Invalidation::parse(&payload) {
                            Some(what) => on(Heard::Changed(what)),
                            None => tracing::warn!(message = %payload, "ignoring unknown invalidation"),
                        },
                        Err(e) => tracing::warn!(error = %e, "unreadable invalidation"),
                    }
                }
                _ = beat.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Err(RedisError::Timeout(PING_TIMEOUT)),
                    }
                }
            }
        }
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
