//! The contract every adapter of [`UserStore`] and [`KeyStore`] must meet, written once and

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: failing loudly is the job
//! run against each adapter (in memory here, SQLite and Postgres in `gateway-store`).

use gateway_core::{ApiKeyId, ApiKeyMeta, LimitOverrides, Role, Scope, Tier, UserId};
use time::OffsetDateTime;

use gateway_core::UserStatus;
use uuid::Uuid;

use crate::{
    AdminUserUpdate, AuthError, KeyRecord, KeyStore, KeyUpdate, NewUser, ProfileUpdate,
    SessionRecord, SessionStore, UserQuery, UserStore,
};

fn new_user(email: &str) -> NewUser {
    NewUser {
        email_unverified: false,
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

    store.set_password_hash(user.id, "$2b$04$third").await.unwrap();
    assert_eq!(
        store.find_user_by_id(user.id).await.unwrap().unwrap().password_hash,
        "$2b$04$third"
    );

    let update = ProfileUpdate { full_name: Some(None), company_name: Some(Some("Acme".into())) };
    let changed = store.update_profile(user.id, update).await.unwrap();
    assert_eq!((changed.full_name, changed.company_name.as_deref()), (None, Some("Acme")));
    let same = store.update_profile(user.id, ProfileUpdate::default()).await.unwrap();
    assert_eq!(same.company_name.as_deref(), Some("Acme"), "absent fields are left alone");

    let update = AdminUserUpdate {
        status: Some(UserStatus::Suspended),
        tier: Some(Tier::Pro),
        overage_cap_micros: Some(Some(5_000_000)),
        ..AdminUserUpdate::default()
    };
    let admin_changed = store.update_admin_fields(user.id, update).await.unwrap();
    assert_eq!(
        (admin_changed.status, admin_changed.tier, admin_changed.role),
        (UserStatus::Suspended, Tier::Pro, Role::Admin)
    );
    assert_eq!(admin_changed.overage_cap_micros, Some(5_000_000));
    let cleared = AdminUserUpdate { overage_cap_micros: Some(None), ..AdminUserUpdate::default() };
    let admin_changed = store.update_admin_fields(user.id, cleared).await.unwrap();
    assert_eq!(admin_changed.overage_cap_micros, None, "back to the plan's price");
    let reread = store.find_user_by_id(user.id).await.unwrap().unwrap().user;
    assert_eq!(reread, admin_changed);
    assert!(matches!(
        store.update_admin_fields(UserId::new(), AdminUserUpdate::default()).await,
        Err(AuthError::NotFound("user"))
    ));

    // Listing for administrators: by a fragment of the email, taken literally (`_` is no
    // wildcard), in email order, a page at a time.
    for email in ["bob@example.com", "b_b@example.org", "carol@example.com"] {
        store.insert_user(new_user(email)).await.unwrap();
    }
    let search = |text: &str, after: Option<&str>, limit: u32| {
        let query = UserQuery {
            email_contains: text.to_owned(),
            after_email: after.map(str::to_owned),
            limit,
            ..UserQuery::default()
        };
        async move {
            let found = store.search_users(&query).await.unwrap();
            found.into_iter().map(|u| u.email).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        search("example.com", None, 10).await,
        ["ada@example.com", "bob@example.com", "carol@example.com"]
    );
    assert_eq!(search("b_b", None, 10).await, ["b_b@example.org"]);
    assert_eq!(search("", None, 2).await, ["ada@example.com", "b_b@example.org"]);
    assert_eq!(
        search("", Some("b_b@example.org"), 2).await,
        ["bob@example.com", "carol@example.com"]
    );
    assert!(search("%", None, 10).await.is_empty(), "a literal percent sign matches nothing");
    // Filtered by plan and by status (ada is the Pro admin suspended above).
    let filtered = |tier: Option<Tier>, status: Option<UserStatus>| {
        let query = UserQuery { tier, status, limit: 10, ..UserQuery::default() };
        async move {
            let found = store.search_users(&query).await.unwrap();
            found.into_iter().map(|u| u.email).collect::<Vec<_>>()
        }
    };
    assert_eq!(filtered(Some(Tier::Pro), None).await, ["ada@example.com"]);
    assert_eq!(filtered(None, Some(UserStatus::Suspended)).await, ["ada@example.com"]);
    assert_eq!(filtered(Some(Tier::Starter), Some(UserStatus::Active)).await.len(), 3);
    assert!(filtered(Some(Tier::Pro), Some(UserStatus::Active)).await.is_empty());
    assert_eq!(store.population(OffsetDateTime::now_utc()).await.unwrap().users, 4);
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
        revoked_at: None,
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

    // Updates: only the owner's key, only the fields given.
    let update = KeyUpdate {
        name: Some("renamed".into()),
        allowed_models: Some(None),
        rate_limit_tpm: Some(Some(1000)),
        rate_limit_rpm: Some(None),
        is_active: Some(false),
        ..KeyUpdate::default()
    };
    assert_eq!(keys.update_key(other.id, k1.meta.id, update.clone()).await.unwrap(), None);
    let updated = keys.update_key(owner.id, k1.meta.id, update).await.unwrap().expect("own key");
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.allowed_models, None);
    assert_eq!(updated.overrides.rate_limit_tpm, Some(1000));
    assert_eq!(updated.overrides.rate_limit_rpm, None);
    assert_eq!(updated.scopes, k1.meta.scopes, "untouched");
    assert!(!updated.is_active);
    assert_eq!(keys.count_active_keys(owner.id).await.unwrap(), 1, "inactive keys do not count");
    assert_eq!(keys.find_key(owner.id, k1.meta.id).await.unwrap(), Some(updated.clone()));

    // Rotation keeps the id and the settings and moves the old hash aside.
    let grace_end = t0 + time::Duration::minutes(5);
    assert_eq!(keys.rotate_key(other.id, k2.meta.id, "$2b$04$new", grace_end).await.unwrap(), None);
    let rotated =
        keys.rotate_key(owner.id, k2.meta.id, "$2b$04$new", grace_end).await.unwrap().unwrap();
    assert_eq!(rotated, k2.meta);
    let rec = keys.find_key_by_prefix("bm_BBBBBBBB").await.unwrap().unwrap();
    assert_eq!(rec.key_hash, "$2b$04$new");
    assert_eq!(rec.previous_key_hash.as_deref(), Some("$2b$04$hash"));
    assert_eq!(rec.previous_key_expires_at, Some(grace_end));

    // Last use is recorded in batches.
    let used_at = t0 + time::Duration::seconds(30);
    keys.touch_keys(&[(k2.meta.id, used_at)]).await.unwrap();
    assert_eq!(
        keys.find_key(owner.id, k2.meta.id).await.unwrap().unwrap().last_used_at,
        Some(used_at)
    );

    // Revocation: not for other users; afterwards the key is gone from listings but still
    // found by prefix, marked revoked, so the verifier can refuse it.
    assert!(!keys.revoke_key(other.id, k2.meta.id, t0).await.unwrap());
    assert!(keys.revoke_key(owner.id, k2.meta.id, t0).await.unwrap());
    assert!(!keys.revoke_key(owner.id, k2.meta.id, t0).await.unwrap(), "already revoked");
    assert_eq!(keys.find_key(owner.id, k2.meta.id).await.unwrap(), None);
    assert_eq!(keys.list_keys(owner.id).await.unwrap(), vec![updated.clone()]);

    // Administrators' listing: every owner's unrevoked keys in id order, a page at a time.
    let k3 = key(other.id, "bm_CCCCCCCC", t0);
    keys.insert_key(k3.clone()).await.unwrap();
    let all = |user: Option<UserId>, after: Option<ApiKeyId>, limit: u32| {
        let query = crate::KeyQuery { user_id: user, after, limit };
        async move { keys.all_keys(&query).await.unwrap() }
    };
    let mut expected = vec![updated.clone(), k3.meta.clone()];
    expected.sort_by_key(|k| k.id.as_uuid());
    assert_eq!(all(None, None, 10).await, expected, "the revoked key is not listed");
    assert_eq!(all(None, None, 1).await, expected[..1]);
    assert_eq!(all(None, Some(expected[0].id), 10).await, expected[1..]);
    assert_eq!(all(Some(other.id), None, 10).await, vec![k3.meta.clone()]);
    let revoked = keys.find_key_by_prefix("bm_BBBBBBBB").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(t0));
    assert!(!revoked.meta.is_active);
    assert_eq!(keys.update_key(owner.id, k2.meta.id, KeyUpdate::default()).await.unwrap(), None);
}

/// Sessions: found by token hash, revoked one by one or all of a user's at once.
pub async fn session_store_contract(users: &dyn UserStore, sessions: &dyn SessionStore) {
    let user = users.insert_user(new_user("session@example.com")).await.unwrap();
    let t0 =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let session = |hash: u8| SessionRecord {
        id: Uuid::now_v7(),
        user_id: user.id,
        token_hash: vec![hash; 32],
        created_at: t0,
        expires_at: t0 + time::Duration::days(7),
        revoked_at: None,
    };
    let (a, b, c) = (session(1), session(2), session(3));
    for s in [&a, &b, &c] {
        sessions.insert_session(s.clone()).await.unwrap();
    }
    assert!(sessions.find_session(&a.token_hash).await.unwrap() == Some(a.clone()));
    assert!(sessions.find_session(&[9; 32]).await.unwrap().is_none());

    assert!(sessions.revoke_session(&a.token_hash, t0).await.unwrap());
    assert!(!sessions.revoke_session(&a.token_hash, t0).await.unwrap(), "already revoked");
    assert_eq!(sessions.find_session(&a.token_hash).await.unwrap().unwrap().revoked_at, Some(t0));

    assert_eq!(sessions.revoke_user_sessions(user.id, t0).await.unwrap(), 2);
    for s in [&b, &c] {
        assert!(sessions.find_session(&s.token_hash).await.unwrap().unwrap().revoked_at.is_some());
    }

    // Password-reset tokens: live until their expiry, single use, and taking one uses up the
    // user's others.
    let until = t0 + time::Duration::minutes(30);
    for hash in [[7u8; 32], [8; 32], [6; 32]] {
        sessions.insert_reset(&hash, user.id, t0, until).await.unwrap();
    }
    assert_eq!(sessions.take_reset(&[5; 32], t0).await.unwrap(), None, "unknown");
    assert_eq!(sessions.take_reset(&[6; 32], until).await.unwrap(), None, "expired");
    assert_eq!(sessions.take_reset(&[7; 32], t0).await.unwrap(), Some(user.id));
    assert_eq!(sessions.take_reset(&[7; 32], t0).await.unwrap(), None, "used");
    assert_eq!(sessions.take_reset(&[8; 32], t0).await.unwrap(), None, "used up by the other");
}
