//! Accounts, sessions and API keys of the BluesMinds gateway.
//!
//! Ports: [`UserStore`] and [`KeyStore`] persist accounts and keys; [`InMemoryAuthStore`]
//! implements both for tests and embedded use, `gateway-store` implements them on Postgres and
//! SQLite. [`Accounts`] holds the rules (email normalisation, password policy, key issuing) on
//! top of any store.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use gateway_auth::{Accounts, InMemoryAuthStore, NewKey};
//! use gateway_core::{Role, Scope};
//! use std::sync::Arc;
//!
//! let store = Arc::new(InMemoryAuthStore::default());
//! let accounts = Accounts::new(store.clone(), store, 4); // bcrypt cost 4 for the example
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
mod error;
mod memory;
pub mod password;
mod ports;

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;

pub use accounts::{Accounts, IssuedKey, NewKey, normalize_email};
pub use error::AuthError;
pub use memory::InMemoryAuthStore;
pub use ports::{KeyRecord, KeyStore, NewUser, UserRecord, UserStore};
