//! The account rules on top of any store: email normalisation, password policy, admin
//! bootstrap and key issuing.

use std::sync::Arc;

use gateway_core::{ApiKeyId, ApiKeyMeta, LimitOverrides, Role, Scope, Tier, User, UserId};
use time::OffsetDateTime;

use crate::{AuthError, KeyRecord, KeyStore, NewUser, UserStore, apikey, password};

/// Trims and lower-cases an email and checks its shape; the message is safe to show.
pub fn normalize_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
                && domain.matches('@').count() == 0
        });
    if valid { Ok(email) } else { Err(AuthError::invalid("email", "is not a valid email address")) }
}

/// What a new key should be.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub allowed_models: Option<Vec<String>>,
    pub expires_at: Option<OffsetDateTime>,
    pub overrides: LimitOverrides,
}

impl NewKey {
    pub fn named(name: impl Into<String>, scopes: Vec<Scope>) -> Self {
        Self {
            name: name.into(),
            scopes,
            allowed_models: None,
            expires_at: None,
            overrides: LimitOverrides::default(),
        }
    }
}

/// A key as issued: its metadata and the full key, shown once. `Debug` hides the key.
#[derive(Clone)]
pub struct IssuedKey {
    pub meta: ApiKeyMeta,
    pub key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey").field("meta", &self.meta).finish_non_exhaustive()
    }
}

/// Account and key services.
#[derive(Clone)]
pub struct Accounts {
    users: Arc<dyn UserStore>,
    keys: Arc<dyn KeyStore>,
    bcrypt_cost: u32,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("bcrypt_cost", &self.bcrypt_cost).finish_non_exhaustive()
    }
}

impl Accounts {
    pub fn new(users: Arc<dyn UserStore>, keys: Arc<dyn KeyStore>, bcrypt_cost: u32) -> Self {
        Self { users, keys, bcrypt_cost }
    }

    /// Creates an admin account, or promotes an existing one and sets its password.
    pub async fn create_or_promote_admin(
        &self,
        email: &str,
        pass: &str,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        let hash = password::hash(pass, self.bcrypt_cost).await?;
        if let Some(existing) = self.users.find_user_by_email(&email).await? {
            return self.users.set_role_and_password(existing.user.id, Role::Admin, &hash).await;
        }
        let new = NewUser {
            email,
            password_hash: hash,
            full_name: None,
            role: Role::Admin,
            tier: Tier::Enterprise,
        };
        self.users.insert_user(new).await
    }

    /// Creates a user account with the default role and tier.
    pub async fn signup(
        &self,
        email: &str,
        pass: &str,
        full_name: Option<String>,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        let password_hash = password::hash(pass, self.bcrypt_cost).await?;
        let new = NewUser { email, password_hash, full_name, role: Role::User, tier: Tier::Free };
        self.users.insert_user(new).await
    }

    /// Issues a new key for `user_id`, enforcing the tier's key count.
    pub async fn create_key(&self, user_id: UserId, new: NewKey) -> Result<IssuedKey, AuthError> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AuthError::invalid("name", "must be 1 to 200 characters long"));
        }
        if new.scopes.is_empty() {
            return Err(AuthError::invalid("scopes", "must name at least one scope"));
        }
        let owner =
            self.users.find_user_by_id(user_id).await?.ok_or(AuthError::NotFound("user"))?;
        let max = owner.user.tier.max_api_keys();
        if owner.user.role != Role::Admin && self.keys.count_active_keys(user_id).await? >= max {
            return Err(AuthError::KeyLimit(max));
        }
        let generated = apikey::generate()?;
        let cost = self.bcrypt_cost;
        let secret = generated.secret.clone();
        let key_hash = tokio::task::spawn_blocking(move || bcrypt::hash(secret, cost))
            .await
            .map_err(|e| AuthError::Hashing(Box::new(e)))?
            .map_err(|e| AuthError::Hashing(Box::new(e)))?;
        let now = OffsetDateTime::now_utc();
        let meta = ApiKeyMeta {
            id: ApiKeyId::new(),
            user_id,
            name: name.to_owned(),
            key_prefix: generated.display_prefix(),
            scopes: new.scopes,
            allowed_models: new.allowed_models,
            expires_at: new.expires_at,
            overrides: new.overrides,
            is_active: true,
            last_used_at: None,
            created_at: now,
        };
        self.keys
            .insert_key(KeyRecord {
                meta: meta.clone(),
                key_hash,
                previous_key_hash: None,
                previous_key_expires_at: None,
            })
            .await?;
        Ok(IssuedKey { meta, key: generated.full() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryAuthStore;

    fn accounts() -> Accounts {
        let store = Arc::new(InMemoryAuthStore::default());
        Accounts::new(store.clone(), store, 4)
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in ["", "alice", "@example.com", "a@b", "a@@b.com", "a b@c.com", "a@.com", "a@com."]
        {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn admin_create_twice_promotes_instead_of_failing() {
        let a = accounts();
        let user = a.signup("bob@example.com", "password-1", None).await.unwrap();
        assert_eq!(user.role, Role::User);
        let admin = a.create_or_promote_admin("BOB@example.com", "password-2").await.unwrap();
        assert_eq!(admin.id, user.id);
        assert_eq!(admin.role, Role::Admin);
        assert!(matches!(
            a.signup("bob@example.com", "password-3", None).await,
            Err(AuthError::Conflict("email"))
        ));
    }

    #[tokio::test]
    async fn key_count_is_capped_by_tier() {
        let a = accounts();
        let user = a.signup("free@example.com", "password-1", None).await.unwrap();
        for i in 0..Tier::Free.max_api_keys() {
            a.create_key(user.id, NewKey::named(format!("k{i}"), vec![Scope::Models]))
                .await
                .unwrap();
        }
        let err = a.create_key(user.id, NewKey::named("one more", vec![Scope::Models])).await;
        assert!(matches!(err, Err(AuthError::KeyLimit(2))));
    }
}
