//! The contract every adapter of [`UserStore`] and [`KeyStore`] must meet, written once and

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: failing loudly is the job
//! run against each adapter (in memory here, SQLite and Postgres in `gateway-store`).

use gateway_core::{ApiKeyId, ApiKeyMeta, LimitOverrides, Role, Scope, Tier, UserId};
use time::OffsetDateTime;

use crate::{AuthError, KeyRecord, KeyStore, NewUser, UserStore};

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: email.to_owned(),
        password_hash: "$2b$04$notarealhashbutshapedlikeone".to_owned(),
        full_name: Some("Ada".to_owned()),
        role: Role::User,
        tier: Tier::Starter,
    }
}

/// Users: insert, unique email, lookups, promotion.
pub async fn user_store_contract(store: &dyn UserStore) {
    let user = store.insert_user(new_user("ada@example.com")).await.expect("insert");
    assert_eq!(user.email, "ada@example.com");
    assert_eq!((user.role, user.tier), (Role::User, Tier::Starter));
    assert!(matches!(
        store.insert_user(new_user("ada@example.com")).await,
        Err(AuthError::Conflict("email"))
    ));
    let found = store.find_user_by_email("ada@example.com").await.unwrap().expect("by email");
    assert_eq!(found.user, user);
    assert_eq!(found.password_hash, "$2b$04$notarealhashbutshapedlikeone");
    assert_eq!(store.find_user_by_id(user.id).await.unwrap().map(|r| r.user), Some(user.clone()));
    assert!(store.find_user_by_email("nobody@example.com").await.unwrap().is_none());
    assert!(store.find_user_by_id(UserId::new()).await.unwrap().is_none());

    let promoted = store.set_role_and_password(user.id, Role::Admin, "$2b$04$other").await.unwrap();
    assert_eq!(promoted.role, Role::Admin);
    let again = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(again.password_hash, "$2b$04$other");
    assert!(matches!(
        store.set_role_and_password(UserId::new(), Role::Admin, "x").await,
        Err(AuthError::NotFound("user"))
    ));
}

fn key(user_id: UserId, prefix: &str, created_at: OffsetDateTime) -> KeyRecord {
    KeyRecord {
        meta: ApiKeyMeta {
            id: ApiKeyId::new(),
            user_id,
            name: format!("key {prefix}"),
            key_prefix: prefix.to_owned(),
            scopes: vec![Scope::ChatCompletions, Scope::Embeddings],
            allowed_models: Some(vec!["gpt-4".to_owned()]),
            expires_at: Some(created_at + time::Duration::days(30)),
            overrides: LimitOverrides { rate_limit_rpm: Some(5), ..LimitOverrides::default() },
            is_active: true,
            last_used_at: None,
            created_at,
        },
        key_hash: "$2b$04$hash".to_owned(),
        previous_key_hash: None,
        previous_key_expires_at: None,
    }
}

/// Keys: insert, unique prefix, lookups scoped to the owner, counting.
pub async fn key_store_contract(users: &dyn UserStore, keys: &dyn KeyStore) {
    let owner = users.insert_user(new_user("owner@example.com")).await.unwrap();
    let other = users.insert_user(new_user("other@example.com")).await.unwrap();
    // Whole seconds: every adapter must round-trip them exactly.
    let t0 =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let k1 = key(owner.id, "bm_AAAAAAAA", t0);
    let k2 = key(owner.id, "bm_BBBBBBBB", t0 + time::Duration::seconds(1));
    keys.insert_key(k1.clone()).await.unwrap();
    keys.insert_key(k2.clone()).await.unwrap();
    let dup = key(other.id, "bm_AAAAAAAA", t0);
    assert!(matches!(keys.insert_key(dup).await, Err(AuthError::Conflict("key prefix"))));

    let found = keys.find_key_by_prefix("bm_AAAAAAAA").await.unwrap().expect("by prefix");
    assert!(found == k1, "stored key differs from the inserted one: {:?}", found.meta);
    assert!(keys.find_key_by_prefix("bm_ZZZZZZZZ").await.unwrap().is_none());

    let listed = keys.list_keys(owner.id).await.unwrap();
    assert_eq!(listed, vec![k1.meta.clone(), k2.meta.clone()]);
    assert!(keys.list_keys(other.id).await.unwrap().is_empty());
    assert_eq!(keys.count_active_keys(owner.id).await.unwrap(), 2);
    assert_eq!(keys.find_key(owner.id, k1.meta.id).await.unwrap(), Some(k1.meta.clone()));
    assert_eq!(keys.find_key(other.id, k1.meta.id).await.unwrap(), None, "scoped to the owner");
}
