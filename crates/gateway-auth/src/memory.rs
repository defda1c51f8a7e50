//! In-memory adapter of the auth ports, for tests and embedding.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, ApiKeyMeta, Role, User, UserId};

use crate::{AuthError, KeyRecord, KeyStore, NewUser, UserRecord, UserStore};

/// Users and keys in process memory. Lost at exit; one process only.
#[derive(Debug, Default)]
pub struct InMemoryAuthStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserRecord>,
    keys: HashMap<ApiKeyId, KeyRecord>,
}

impl InMemoryAuthStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl UserStore for InMemoryAuthStore {
    async fn insert_user(&self, new: NewUser) -> Result<User, AuthError> {
        let mut inner = self.lock();
        if inner.users.values().any(|u| u.user.email == new.email) {
            return Err(AuthError::Conflict("email"));
        }
        let user = User {
            id: UserId::new(),
            email: new.email,
            full_name: new.full_name,
            company_name: None,
            role: new.role,
            tier: new.tier,
            status: gateway_core::UserStatus::Active,
            credits_micros: 0,
            created_at: time::OffsetDateTime::now_utc(),
        };
        inner
            .users
            .insert(user.id, UserRecord { user: user.clone(), password_hash: new.password_hash });
        Ok(user)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError> {
        Ok(self.lock().users.values().find(|u| u.user.email == email).cloned())
    }

    async fn find_user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, AuthError> {
        Ok(self.lock().users.get(&id).cloned())
    }

    async fn set_role_and_password(
        &self,
        id: UserId,
        role: Role,
        password_hash: &str,
    ) -> Result<User, AuthError> {
        let mut inner = self.lock();
        let rec = inner.users.get_mut(&id).ok_or(AuthError::NotFound("user"))?;
        rec.user.role = role;
        password_hash.clone_into(&mut rec.password_hash);
        Ok(rec.user.clone())
    }
}

#[async_trait]
impl KeyStore for InMemoryAuthStore {
    async fn insert_key(&self, key: KeyRecord) -> Result<(), AuthError> {
        let mut inner = self.lock();
        if inner.keys.values().any(|k| k.meta.key_prefix == key.meta.key_prefix) {
            return Err(AuthError::Conflict("key prefix"));
        }
        inner.keys.insert(key.meta.id, key);
        Ok(())
    }

    async fn find_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, AuthError> {
        Ok(self.lock().keys.values().find(|k| k.meta.key_prefix == prefix).cloned())
    }

    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError> {
        let mut keys: Vec<ApiKeyMeta> = self
            .lock()
            .keys
            .values()
            .filter(|k| k.meta.user_id == user_id)
            .map(|k| k.meta.clone())
            .collect();
        keys.sort_by_key(|k| (k.created_at, k.id));
        Ok(keys)
    }

    async fn count_active_keys(&self, user_id: UserId) -> Result<u32, AuthError> {
        Ok(self
            .lock()
            .keys
            .values()
            .filter(|k| k.meta.user_id == user_id && k.meta.is_active)
            .count() as u32)
    }

    async fn find_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        Ok(self.lock().keys.get(&id).filter(|k| k.meta.user_id == user_id).map(|k| k.meta.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_meets_the_contract() {
        crate::conformance::user_store_contract(&InMemoryAuthStore::default()).await;
        let store = InMemoryAuthStore::default();
        crate::conformance::key_store_contract(&store, &store).await;
    }
}
