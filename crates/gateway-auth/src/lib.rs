//! Accounts, sessions and API keys of the BluesMinds gateway.
//!
//! Ports: [`UserStore`], [`KeyStore`] and [`SessionStore`] persist accounts, keys and
//! sessions; [`InMemoryAuthStore`] implements all three for tests and embedded use,
//! `gateway-store` implements them on Postgres and SQLite. [`Accounts`] holds the rules (email
//! normalisation, password policy, login throttling, sessions, key issuing, rotation and
//! revocation) on top of any store. [`KeyVerifier`] authenticates a bearer on every gateway
//! request: a cached hit costs one HMAC and a map lookup (see [`verify`]). [`audit`] defines
//! the append-only audit log of security- and money-relevant actions and its port.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use gateway_auth::{Accounts, AccountsConfig, AuthStores, InMemoryAuthStore, NewKey};
//! use gateway_core::{Role, Scope};
//! use std::sync::Arc;
//!
//! let store = Arc::new(InMemoryAuthStore::default());
//! let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
//! let accounts = Accounts::new(AuthStores::from(store), b"session secret", config);
//! let admin = accounts.create_or_promote_admin("Ops@Example.com", "correct horse battery").await?;
//! assert_eq!(admin.role, Role::Admin);
//! assert_eq!(admin.email, "ops@example.com");
//!
//! let issued = accounts.create_key(admin.id, NewKey::named("ci", vec![Scope::ChatCompletions])).await?;
//! assert!(issued.key.starts_with("bm_"));
//! # Ok::<_, gateway_auth::AuthError>(()) }).unwrap();
//! ```

mod accounts;
pub mod apikey;
pub mod audit;
mod error;
mod mail;
mod memory;
pub mod password;
mod ports;
pub mod throttle;
pub mod token;
pub mod verify;

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;

pub use accounts::{
    Accounts, AccountsConfig, AuthStores, Invalidations, IssuedKey, NewKey, NewSession,
    NoInvalidations, normalize_email, validate_key_name,
};
pub use error::AuthError;
pub use mail::MAILS_PER_HOUR;
pub use memory::InMemoryAuthStore;
pub use ports::{
    AdminUserUpdate, KeyQuery, KeyRecord, KeyStore, KeyUpdate, Mailer, NewUser, Population,
    ProfileUpdate, SessionRecord, SessionStore, UserQuery, UserRecord, UserStore,
};
pub use verify::{KeyVerifier, Principal, VerifierConfig, VerifyError};
