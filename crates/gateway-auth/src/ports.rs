//! Persistence ports of accounts, sessions and keys.

use async_trait::async_trait;
use gateway_core::{
    ApiKeyId, ApiKeyMeta, LimitOverrides, Role, Scope, Tier, User, UserId, UserStatus,
};
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
    /// Signed up under email verification: no sign-in until the mailed link is opened.
    pub email_unverified: bool,
}

/// A stored user with the password hash, which never leaves this crate's services.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: User,
    pub password_hash: String,
    /// No sign-in until the mailed verification link is opened.
    pub email_unverified: bool,
}

/// A stored key: what the API shows plus the bcrypt hashes of its current and, during a
/// rotation's grace period, previous secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub meta: ApiKeyMeta,
    pub key_hash: String,
    pub previous_key_hash: Option<String>,
    pub previous_key_expires_at: Option<OffsetDateTime>,
    /// Set when the key was deleted; a revoked key never authenticates and is not listed.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A login session. Only the keyed hash of its token is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: uuid::Uuid,
    pub user_id: UserId,
    pub token_hash: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Profile fields a user may change; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub full_name: Option<Option<String>>,
    pub company_name: Option<Option<String>>,
}

/// Fields only an admin may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminUserUpdate {
    pub role: Option<Role>,
    pub tier: Option<Tier>,
    pub status: Option<UserStatus>,
    /// The user's spend cap in micro-dollars; `Some(None)` returns to the plan's price.
    pub overage_cap_micros: Option<Option<i64>>,
}

/// Which users an administrator lists: by email, a page at a time in email order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Lower-case text the email contains (empty: everyone).
    pub email_contains: String,
    /// Only emails after this one (the previous page's last).
    pub after_email: Option<String>,
    pub tier: Option<Tier>,
    pub status: Option<UserStatus>,
    pub limit: u32,
}

/// Which keys an administrator lists: every owner's unrevoked keys (or one owner's), a page
/// at a time in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQuery {
    pub user_id: Option<UserId>,
    /// Only keys after this one (the previous page's last).
    pub after: Option<ApiKeyId>,
    pub limit: u32,
}

/// Counts across every account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Population {
    pub users: u64,
    /// Keys active, not revoked and not expired.
    pub active_keys: u64,
}

/// Changes to a key; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub rate_limit_rpm: Option<Option<u64>>,
    pub rate_limit_tpm: Option<Option<u64>>,
    pub quota_daily: Option<Option<u64>>,
    pub quota_monthly: Option<Option<u64>>,
    pub is_active: Option<bool>,
}

impl KeyUpdate {
    /// Applies the update to key metadata (used by adapters that hold metadata in memory, and
    /// to validate the result before storing it).
    pub fn apply(&self, meta: &mut ApiKeyMeta) {
        if let Some(v) = &self.name {
            v.clone_into(&mut meta.name);
        }
        if let Some(v) = &self.scopes {
            v.clone_into(&mut meta.scopes);
        }
        if let Some(v) = &self.allowed_models {
            v.clone_into(&mut meta.allowed_models);
        }
        if let Some(v) = self.expires_at {
            meta.expires_at = v;
        }
        let o: &mut LimitOverrides = &mut meta.overrides;
        for (slot, value) in [
            (&mut o.rate_limit_rpm, self.rate_limit_rpm),
            (&mut o.rate_limit_tpm, self.rate_limit_tpm),
            (&mut o.quota_daily, self.quota_daily),
            (&mut o.quota_monthly, self.quota_monthly),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        if let Some(v) = self.is_active {
            meta.is_active = v;
        }
    }
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
redacted_debug!(SessionRecord, id);

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
    async fn set_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), AuthError>;
    /// Marks the user's email as verified (a link mailed to it was opened).
    async fn set_email_verified(&self, id: UserId) -> Result<(), AuthError>;
    async fn update_profile(&self, id: UserId, update: ProfileUpdate) -> Result<User, AuthError>;
    async fn update_admin_fields(
        &self,
        id: UserId,
        update: AdminUserUpdate,
    ) -> Result<User, AuthError>;
    /// Users matching `query`, in email order, at most `query.limit`.
    async fn search_users(&self, query: &UserQuery) -> Result<Vec<User>, AuthError>;
    /// How many users and usable keys there are.
    async fn population(&self, now: OffsetDateTime) -> Result<Population, AuthError>;
}

/// API keys, by id, owner and prefix. Every method that takes an owner only sees that owner's
/// keys, so another user's key id behaves exactly like an unknown one.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key; [`AuthError::Conflict`] if the prefix is taken.
    async fn insert_key(&self, key: KeyRecord) -> Result<(), AuthError>;
    /// The key with this display prefix, revoked or not.
    async fn find_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, AuthError>;
    /// The owner's keys that are not revoked, oldest first.
    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyMeta>, AuthError>;
    /// Unrevoked keys matching `query`, in id order, at most `query.limit`.
    async fn all_keys(&self, query: &KeyQuery) -> Result<Vec<ApiKeyMeta>, AuthError>;
    /// How many active, unrevoked keys the owner holds.
    async fn count_active_keys(&self, user_id: UserId) -> Result<u32, AuthError>;
    /// One of the owner's unrevoked keys.
    async fn find_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyMeta>, AuthError>;
    /// Updates one of the owner's unrevoked keys; `None` if there is none with this id.
    async fn update_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        update: KeyUpdate,
    ) -> Result<Option<ApiKeyMeta>, AuthError>;
    /// Replaces the secret's hash; the old hash stays valid until `previous_expires_at`.
    async fn rotate_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        new_hash: &str,
        previous_expires_at: OffsetDateTime,
    ) -> Result<Option<ApiKeyMeta>, AuthError>;
    /// Revokes one of the owner's keys; `false` if there is none with this id.
    async fn revoke_key(
        &self,
        user_id: UserId,
        id: ApiKeyId,
        at: OffsetDateTime,
    ) -> Result<bool, AuthError>;
    /// Records when keys were last used (batched by the verifier).
    async fn touch_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> Result<(), AuthError>;
}

/// Login sessions, found by the keyed hash of their token.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, session: SessionRecord) -> Result<(), AuthError>;
    async fn find_session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, AuthError>;
    /// Revokes one session; `false` if there is no live one with this hash.
    async fn revoke_session(
        &self,
        token_hash: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, AuthError>;
    /// Revokes every live session of a user; returns how many.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        at: OffsetDateTime,
    ) -> Result<u64, AuthError>;
    /// Stores the hash of a password-reset token of a user, live until `expires_at`.
    async fn insert_reset(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), AuthError>;
    /// Uses a password-reset token: when it is live (unused and unexpired at `now`), marks it
    /// and every other token of its user used and returns the user; else `None`. Of two
    /// concurrent uses of one token, one gets the user.
    async fn take_reset(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<UserId>, AuthError>;
}

/// Sends account mail (password resets). An adapter (`gateway-mail`: SMTP) implements it.
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, to: &str, subject: &str, text: &str) -> Result<(), String>;
}
