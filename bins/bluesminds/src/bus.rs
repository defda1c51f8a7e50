//! Cache invalidations: applied here at once and, through the Redis bus
//! ([`gateway_redis::bus`]), on every other instance within a second. Without Redis, other
//! instances learn within the key-cache TTL.

use std::sync::Arc;

use gateway_auth::{Invalidations, KeyVerifier};
use gateway_balancer::PoolChanged;
use gateway_core::{ApiKeyId, UserId};
use gateway_redis::bus::{Bus, Heard, Invalidation};

/// Applies invalidations locally at once and publishes them to the other instances.
#[derive(Debug)]
pub struct CacheInvalidations {
    pub verifier: Arc<KeyVerifier>,
    pub bus: Option<Bus>,
}

impl PoolChanged for CacheInvalidations {
    /// Tells the other instances that the server pool changed (this one has reloaded it).
    fn servers_changed(&self) {
        self.publish(Invalidation::Servers);
    }
}

impl CacheInvalidations {
    /// Tells the other instances that plans or prices changed (this one has reloaded them).
    pub fn billing_changed(&self) {
        self.publish(Invalidation::Billing);
    }

    /// Publishes in the background: the change is applied here already, and a failure only
    /// delays other instances to the key-cache TTL.
    fn publish(&self, what: Invalidation) {
        let Some(bus) = self.bus.clone() else { return };
        tokio::spawn(async move {
            if let Err(e) = bus.publish(what).await {
                tracing::warn!(error = %e, message = %what.encode(), "cannot publish invalidation; other instances learn within the key-cache TTL");
            }
        });
    }
}

impl Invalidations for CacheInvalidations {
    fn key_changed(&self, id: ApiKeyId) {
        self.verifier.invalidate_key(id);
        self.publish(Invalidation::Key(id));
    }

    fn user_changed(&self, id: UserId) {
        self.verifier.invalidate_user(id);
        self.publish(Invalidation::User(id));
    }
}

/// What to reload when the bus says so.
pub struct Reloads {
    pub servers: Arc<dyn Fn() + Send + Sync>,
    /// Plans and prices.
    pub billing: Arc<dyn Fn() + Send + Sync>,
}

/// Applies what the bus says for as long as the process runs. After every (re)subscription
/// every cached key is looked up again at its next use (without bcrypt) and the pool, plans
/// and prices reloaded, since messages may have been missed; while subscribed, keys are
/// trusted for `auth.key_cache_bus_ttl_ms`, and from a lost subscription on for
/// `auth.key_cache_ttl_ms` again.
pub async fn listen(bus: Bus, verifier: Arc<KeyVerifier>, reloads: Reloads) {
    bus.listen(move |heard| match heard {
        Heard::Subscribed => {
            verifier.bus_subscribed();
            (reloads.servers)();
            (reloads.billing)();
        }
        Heard::Lost => verifier.bus_lost(),
        Heard::Changed(Invalidation::Servers) => (reloads.servers)(),
        Heard::Changed(Invalidation::Billing) => (reloads.billing)(),
        Heard::Changed(Invalidation::Key(id)) => verifier.invalidate_key(id),
        Heard::Changed(Invalidation::User(id)) => verifier.invalidate_user(id),
    })
    .await;
}
