//! In-memory adapter of the auth ports, for tests and embedding.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, ApiKeyMeta, Role, User, UserId, UserStatus};
use time::OffsetDateTime;

use crate::{
    AdminUserUpdate, AuthError, KeyRecord, KeyStore, KeyUpdate, NewUser, ProfileUpdate,
    SessionRecord, SessionStore, UserRecord, UserStore,
};

/// Users, keys and sessions in process memory. Lost at exit; one process only.
#[derive(Debug, Default)]
pub struct InMemoryAuthStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserRecord>,
    keys: HashMap<ApiKeyId, KeyRecord>,
    sessions: Vec<SessionRecord>,
    /// Password-reset tokens: hash, user, expiry, used.
    resets: Vec<(Vec<u8>, UserId, OffsetDateTime, bool)>,
}

impl InMemoryAuthStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn user_mut(&mut self, id: UserId) -> Result<&mut UserRecord, AuthError> {
        self.users.get_mut(&id).ok_or(AuthError::NotFound("user"))
    }

    fn own_key_mut(&mut self, user_id: UserId, id: ApiKeyId) -> Option<&mut KeyRecord> {
        self.keys.get_mut(&id).filter(|k| k.meta.user_id == user_id && k.revoked_at.is_none())
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
            status: UserStatus::Active,
            credits_micros: 0,
            overage_cap_micros: None,
            past_due_after: None,
            created_at: OffsetDateTime::now_utc(),
        };
        inner.users.insert(
            user.id,
            UserRecord {
                user: user.clone(),
                password_hash: new.password_hash,
                email_unverified: new.email_unverified,
            },
        );
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
        let rec = inner.user_mut(id)?;
        rec.user.role = role;
        password_hash.clone_into(&mut rec.password_hash);
        Ok(rec.user.clone())
    }

    async fn set_email_verified(&self, id: UserId) -> Result<(), AuthError> {
        self.lock().user_mut(id)?.email_unverified = false;
        Ok(())
    }

    async fn set_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), AuthError> {
        password_hash.clone_into(&mut self.lock().user_mut(id)?.password_hash);
        Ok(())
    }

    async fn update_profile(&self, id: UserId, update: ProfileUpdate) -> Result<User, AuthError> {
        let mut inner = self.lock();
        let rec = inner.user_mut(id)?;
        if let Some(v) = update.full_name {
            rec.user.full_name = v;
        }
        if let Some(v) = update.company_name {
            rec.user.company_name = v;
        }
        Ok(rec.user.clone())
    }

    async fn update_admin_fields(
        &self,
        id: UserId,
        update: AdminUserUpdate,
    ) -> Result<User, AuthError> {
        let mut inner = self.lock();
        let rec = inner.user_mut(id)?;
        rec.user.role = update.role.unwrap_or(rec.user.role);
        rec.user.tier = update.tier.unwrap_or(rec.user.tier);
        rec.user.status = update.status.unwrap_or(rec.user.status);
        rec.user.overage_cap_micros =
            update.overage_cap_micros.unwrap_or(rec.user.overage_cap_micros);
        Ok(rec.user.clone())
    }

    async fn search_users(&self, query: &crate::UserQuery) -> Result<Vec<User>, AuthError> {
        let inner = self.lock();
        let mut found: Vec<User> = inner
            .users
            .values()
            .map(|r| r.user.clone())
            .filter(|u| u.email.contains(&query.email_contains))
            .filter(|u| query.tier.is_none_or(|t| u.tier == t))
            .filter(|u| query.status.is_none_or(|s| u.status == s))
            .filter(|u| query.after_email.as_ref().is_none_or(|after| &u.email > after))
            .collect();
        found.sort_by(|a, b| a.email.cmp(&b.email));
        found.truncate(query.limit as usize);
        Ok(found)
    }

    async fn population(&self, now: OffsetDateTime) -> Result<crate::Population, AuthError> {
        let inner = self.lock();
        let usable = |k: &&KeyRecord| {
            k.revoked_at.is_none() && k.meta.is_active && k.meta.expires_at.is_none_or(|t| t > now)
        };
        Ok(crate::Population {
            users: inner.users.len() as u64,
            active_keys: inner.keys.values().filter(usable).count() as u64,
        })
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

    async fn all_keys(&self, query: &crate::KeyQuery) -> Result<Vec<ApiKeyMeta>, AuthError> {
        let mut keys: Vec<ApiKeyMeta> = self
            .lock()
            .keys
            .values()
            .filter(|k| k.revoked_at.is_none())
            .filter(|k| query.user_id.is_none_or(|u| k.meta.user_id == u))
            .filter(|k| query.after.is_none_or(|a| k.meta.id.as_uuid() > a.as_uuid()))
            .map(|k| k.meta.clone())
            .collect();
        keys.sort_by_key(|k| k.id.as_uuid());
        keys.truncate(query.limit as usize);
        Ok(keys)
    }

    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError> {
        let mut keys: Vec<ApiKeyMeta> = self
            .lock()
            .keys
            .values()
            .filter(|k| k.meta.user_id == user_id && k.revoked_at.is_none())
            .map(|k| k.meta.clone())
            .collect();
        keys.sort_by_key(|k| (k.created_at, k.id));
        Ok(keys)
    }

    async fn count_active_keys(&self, user_id: UserId) -> Result<u32, AuthError> {
        let inner = self.lock();
        let n = inner
            .keys
            .values()
            .filter(|k| k.meta.user_id == user_id && k.meta.is_active && k.revoked_at.is_none())
            .count();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn find_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        Ok(self.lock().own_key_mut(user_id, id).map(|k| k.meta.clone()))
    }

    async fn update_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        update: KeyUpdate,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        let mut inner = self.lock();
        Ok(inner.own_key_mut(user_id, id).map(|k| {
            update.apply(&mut k.meta);
            k.meta.clone()
        }))
    }

    async fn rotate_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        new_hash: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<Option<ApiKeyMeta>, AuthError> {
        let mut inner = self.lock();
        Ok(inner.own_key_mut(user_id, id).map(|k| {
            k.previous_key_hash = Some(std::mem::replace(&mut k.key_hash, new_hash.to_owned()));
            k.previous_key_expires_at = Some(previous_expires_at);
            k.meta.clone()
        }))
    }

    async fn revoke_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        at: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        let mut inner = self.lock();
        Ok(inner
            .own_key_mut(user_id, id)
            .map(|k| {
                k.revoked_at = Some(at);
                k.meta.is_active = false;
            })
            .is_some())
    }

    async fn touch_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> Result<(), AuthError> {
        let mut inner = self.lock();
        for (id, at) in used {
            if let Some(k) = inner.keys.get_mut(id) {
                k.meta.last_used_at = Some(k.meta.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for InMemoryAuthStore {
    async fn insert_session(&self, session: SessionRecord) -> Result<(), AuthError> {
        self.lock().sessions.push(session);
        Ok(())
    }

    async fn find_session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, AuthError> {
        Ok(self.lock().sessions.iter().find(|s| s.token_hash == token_hash).cloned())
    }

    async fn revoke_session(
        &self,
        token_hash: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, AuthError> {
        let mut inner = self.lock();
        let live = inner
            .sessions
            .iter_mut()
            .find(|s| s.token_hash == token_hash && s.revoked_at.is_none());
        Ok(live.map(|s| s.revoked_at = Some(at)).is_some())
    }

    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        at: OffsetDateTime,
    ) -> Result<u64, AuthError> {
        let mut inner = self.lock();
        let mut n = 0;
        for s in
            inner.sessions.iter_mut().filter(|s| s.user_id == user_id && s.revoked_at.is_none())
        {
            s.revoked_at = Some(at);
            n += 1;
        }
        Ok(n)
    }

    async fn insert_reset(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        _created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), AuthError> {
        self.lock().resets.push((token_hash.to_vec(), user_id, expires_at, false));
        Ok(())
    }

    async fn take_reset(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<UserId>, AuthError> {
        let mut inner = self.lock();
        let Some(user) = inner
            .resets
            .iter()
            .find(|(h, _, until, used)| h == token_hash && !*used && *until > now)
            .map(|(_, u, _, _)| *u)
        else {
            return Ok(None);
        };
        for r in inner.resets.iter_mut().filter(|r| r.1 == user) {
            r.3 = true;
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_meets_the_contract() {
        let store = InMemoryAuthStore::default();
        crate::conformance::user_store_contract(&store).await;
        let store = InMemoryAuthStore::default();
        crate::conformance::key_store_contract(&store, &store).await;
        let store = InMemoryAuthStore::default();
        crate::conformance::session_store_contract(&store, &store).await;
    }
}
