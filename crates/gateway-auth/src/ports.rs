//! Persistence ports of accounts and keys.

use async_trait::async_trait;
use gateway_core::{ApiKeyId, ApiKeyMeta, Role, Tier, User, UserId};
use time::OffsetDateTime;

use crate::AuthError;

/// A user to create. The password is already hashed.
#[derive(Clone)]
pub struct NewUser {
    pub email: String,
    pub password_hash: String,
    pub full_name: Option<String>,
    pub role: Role,
    pub tier: Tier,
}

/// A stored user with the password hash, which never leaves this crate's services.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: User,
    pub password_hash: String,
}

/// A stored key: what the API shows plus the bcrypt hashes of its current and, during a
/// rotation's grace period, previous secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub meta: ApiKeyMeta,
    pub key_hash: String,
    pub previous_key_hash: Option<String>,
    pub previous_key_expires_at: Option<OffsetDateTime>,
}

macro_rules! redacted_debug {
    ($t:ty, $($field:ident).+) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("id", &self.$($field).+).finish_non_exhaustive()
            }
        }
    };
}
redacted_debug!(NewUser, email);
redacted_debug!(UserRecord, user.id);
redacted_debug!(KeyRecord, meta.id);

/// Users, by id and by normalised email.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; [`AuthError::Conflict`] if the email is taken.
    async fn insert_user(&self, new: NewUser) -> Result<User, AuthError>;
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError>;
    async fn find_user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, AuthError>;
    /// Sets role and password hash at once (used to promote an account to admin).
    async fn set_role_and_password(
        &self,
        id: UserId,
        role: Role,
        password_hash: &str,
    ) -> Result<User, AuthError>;
}

/// API keys, by id, owner and prefix.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key; [`AuthError::Conflict`] if the prefix is taken.
    async fn insert_key(&self, key: KeyRecord) -> Result<(), AuthError>;
    async fn find_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, AuthError>;
    /// The owner's keys, oldest first.
    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError>;
    /// How many active keys the owner holds.
    async fn count_active_keys(&self, user_id: UserId) -> Result<u32, AuthError>;
    async fn find_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyMeta>, AuthError>;
}
