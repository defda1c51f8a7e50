//! Invalidations between gateway instances over Redis pub/sub: when a key is revoked, rotated
//! or changed, or a user suspended, every instance drops what it cached about it within a
//! second. Without Redis, other instances learn within the key-cache TTL.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_auth::{Invalidations, KeyVerifier};
use gateway_core::{ApiKeyId, UserId};

/// The channel under a key prefix; versioned so two meanings never share it during a rolling
/// deploy.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:v1:invalidate")
}

/// Applies invalidations locally at once and publishes them to the other instances.
#[derive(Debug)]
pub struct CacheInvalidations {
    pub verifier: Arc<KeyVerifier>,
    pub redis: Option<deadpool_redis::Pool>,
    pub channel: String,
    /// Counts failed Redis calls for `/metrics`.
    pub errors: Arc<std::sync::atomic::AtomicU64>,
}

impl CacheInvalidations {
    /// Tells the other instances that the server pool changed.
    pub fn servers_changed(&self) {
        self.publish("servers".to_owned());
    }

    fn publish(&self, message: String) {
        let Some(pool) = self.redis.clone() else { return };
        let channel = self.channel.clone();
        let errors = self.errors.clone();
        tokio::spawn(async move {
            let sent = tokio::time::timeout(Duration::from_secs(1), async {
                let mut conn = pool.get().await?;
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&message)
                    .query_async::<i64>(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, %message, "cannot publish invalidation; other instances learn within the key-cache TTL");
                }
                Err(_) => {
                    tracing::warn!(%message, "publishing an invalidation timed out; other instances learn within the key-cache TTL");
                }
            }
        });
    }
}

impl Invalidations for CacheInvalidations {
    fn key_changed(&self, id: ApiKeyId) {
        self.verifier.invalidate_key(id);
        self.publish(format!("key:{id}"));
    }

    fn user_changed(&self, id: UserId) {
        self.verifier.invalidate_user(id);
        self.publish(format!("user:{id}"));
    }
}

/// Applies one message of the channel; `servers` reloads the pool.
fn apply(verifier: &KeyVerifier, on_servers: &(dyn Fn() + Send + Sync), message: &str) {
    if message == "servers" {
        on_servers();
        return;
    }
    match message.split_once(':') {
        Some(("key", id)) => match id.parse::<ApiKeyId>() {
            Ok(id) => verifier.invalidate_key(id),
            Err(_) => tracing::warn!(%message, "ignoring malformed invalidation"),
        },
        Some(("user", id)) => match id.parse::<UserId>() {
            Ok(id) => verifier.invalidate_user(id),
            Err(_) => tracing::warn!(%message, "ignoring malformed invalidation"),
        },
        _ => tracing::warn!(%message, "ignoring unknown invalidation"),
    }
}

/// Listens to the channel for as long as the process runs, reconnecting with backoff. After
/// every (re)connection the whole key cache is dropped, since messages may have been missed.
pub async fn listen(
    redis_url: String,
    channel: String,
    verifier: Arc<KeyVerifier>,
    on_servers: Arc<dyn Fn() + Send + Sync>,
    errors: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match subscribe(&redis_url, &channel, &verifier, on_servers.as_ref()).await {
            Ok(()) => {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("invalidation channel closed; reconnecting");
            }
            Err(e) => {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "invalidation channel unavailable; key changes from other instances apply within the key-cache TTL");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn subscribe(
    redis_url: &str,
    channel: &str,
    verifier: &KeyVerifier,
    on_servers: &(dyn Fn() + Send + Sync),
) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub =
        tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await??;
    pubsub.subscribe(channel).await?;
    // Messages may have been missed while disconnected.
    verifier.clear();
    on_servers();
    tracing::debug!(channel, "subscribed to invalidations");
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        match msg.get_payload::<String>() {
            Ok(payload) => apply(verifier, on_servers, &payload),
            Err(e) => tracing::warn!(error = %e, "unreadable invalidation"),
        }
    }
    Ok(())
}
