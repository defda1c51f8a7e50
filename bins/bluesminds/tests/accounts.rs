//! End-to-end tests of accounts, sessions and API keys through the real binary: the whole
//! lifecycle, ownership, scopes, bad input, suspension, throttling, CSRF, what reaches the logs,
//! and revocation across two instances sharing Postgres and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sea_orm::EntityTrait;
use serde_json::{Value, json};
use support::{Gateway, PATIENCE, Reply, command, mailed_token, request_with};

const MODELS_ENV: [(&str, &str); 2] = [
    ("LITELLM_SERVER_1_URL", "http://127.0.0.1:9"),
    ("LITELLM_SERVER_1_MODELS", "gpt-4,gpt-3.5-turbo"),
];

/// A signed-in user: their session cookie and id.
struct Session {
    cookie: String,
    id: String,
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &Value,
) -> Reply {
    let cookie_header = cookie.map(|c| format!("bm_session={c}"));
    let mut headers = vec![];
    if let Some(c) = &cookie_header {
        headers.push(("cookie", c.as_str()));
    }
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    request_with(addr, method, path, &headers, &bytes).await
}

async fn with_key(addr: SocketAddr, path: &str, key: &str) -> Reply {
    request_with(addr, "GET", path, &[("authorization", &format!("Bearer {key}"))], b"").await
}

fn session_cookie(reply: &Reply) -> String {
    let set = reply.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {reply:?}"));
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    set.split(';').next().unwrap().strip_prefix("bm_session=").unwrap().to_owned()
}

async fn signup_and_login(addr: SocketAddr, email: &str) -> Session {
    let password = "correct horse battery";
    let r = call(
        addr,
        "POST",
        "/api/auth/signup",
        None,
        &json!({"email": email, "password": password}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r =
        call(addr, "POST", "/api/auth/login", None, &json!({"email": email, "password": password}))
            .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    Session { cookie: session_cookie(&r), id: r.json()["user"]["id"].as_str().unwrap().to_owned() }
}

async fn create_key(addr: SocketAddr, s: &Session, body: Value) -> (String, String) {
    let r = call(addr, "POST", "/api/keys", Some(&s.cookie), &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = r.json();
    (v["id"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_whole_lifecycle_of_an_account_and_its_key() {
    let mut gw = Gateway::start(&[], &MODELS_ENV).await;
    let addr = gw.addr;

    // Sign up, fail a login, log in, read me.
    let r = call(addr, "POST", "/api/auth/signup", None, &json!({"email": "Ada@Example.com", "password": "correct horse battery", "full_name": "Ada"})).await;
    assert_eq!(r.status, 201);
    let wrong = call(
        addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "ada@example.com", "password": "wrong password!"}),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.openai_error()["code"], "unauthenticated");
    let unknown = call(
        addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "eve@example.com", "password": "wrong password!"}),
    )
    .await;
    assert_eq!(unknown.body, wrong.body, "unknown email and wrong password answer alike");
    let login = call(
        addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "ada@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(login.status, 200);
    let cookie = session_cookie(&login);
    assert!(
        !login.header("set-cookie").unwrap().contains("Secure"),
        "plain http public URL: no Secure flag"
    );
    let me = call(addr, "GET", "/api/auth/me", Some(&cookie), &Value::Null).await;
    assert_eq!((me.status, me.json()["email"].as_str()), (200, Some("ada@example.com")));
    assert_eq!(call(addr, "GET", "/api/auth/me", None, &Value::Null).await.status, 401);

    // Create a key and call a protected endpoint with it.
    let created = call(addr, "POST", "/api/keys", Some(&cookie), &json!({"name": "ci", "scopes": ["chat.completions", "models"], "allowed_models": ["gpt-4"]})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let v = created.json();
    let (id, key) = (v["id"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned());
    assert!(key.starts_with(v["key_prefix"].as_str().unwrap()), "{v}");
    let models = with_key(addr, "/api/v1/models", &key).await;
    assert_eq!(models.status, 200, "{:?}", models.body);
    assert_eq!(models.json()["object"], "list");
    let ids: Vec<_> =
        models.json()["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, vec![json!("gpt-4")], "only the key's allowed models");
    assert_eq!(with_key(addr, "/v1/models", &key).await.status, 200, "also under /v1");

    // Listing and reading never show the secret or its hash.
    let list = call(addr, "GET", "/api/keys", Some(&cookie), &Value::Null).await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).into_owned();
    assert!(!text.contains(&key) && !text.contains("$2b$") && !text.contains("\"key\""), "{text}");
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 1);
    let one = call(addr, "GET", &format!("/api/keys/{id}"), Some(&cookie), &Value::Null).await;
    assert_eq!(one.status, 200);
    assert!(!String::from_utf8_lossy(&one.body).contains(&key));

    // Update; limits above the tier are refused and change nothing.
    let renamed = call(
        addr,
        "PATCH",
        &format!("/api/keys/{id}"),
        Some(&cookie),
        &json!({"name": "ci-2", "rate_limit_rpm": 5}),
    )
    .await;
    assert_eq!(
        (
            renamed.status,
            renamed.json()["name"].as_str(),
            renamed.json()["rate_limit_rpm"].as_u64()
        ),
        (200, Some("ci-2"), Some(5))
    );
    let too_high = call(
        addr,
        "PATCH",
        &format!("/api/keys/{id}"),
        Some(&cookie),
        &json!({"rate_limit_rpm": 11, "name": "x"}),
    )
    .await;
    assert_eq!(too_high.status, 400);
    assert_eq!(too_high.openai_error()["param"], "rate_limit_rpm");
    assert_eq!(
        call(addr, "GET", &format!("/api/keys/{id}"), Some(&cookie), &Value::Null).await.json()["name"],
        "ci-2"
    );

    // Rotate: same id, new secret works, old one fails (grace period 0).
    let rotated =
        call(addr, "POST", &format!("/api/keys/{id}/rotate"), Some(&cookie), &Value::Null).await;
    assert_eq!(rotated.status, 200);
    assert_eq!(rotated.json()["id"].as_str(), Some(id.as_str()));
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(with_key(addr, "/api/v1/models", &new_key).await.status, 200);
    let old = with_key(addr, "/api/v1/models", &key).await;
    assert_eq!(old.status, 401);
    assert_eq!(old.openai_error()["code"], "invalid_api_key");

    // Revoke: refused at once on this instance; the key is gone from the API.
    let deleted =
        call(addr, "DELETE", &format!("/api/keys/{id}"), Some(&cookie), &Value::Null).await;
    assert_eq!((deleted.status, deleted.json()["deleted"].as_bool()), (200, Some(true)));
    let revoked = with_key(addr, "/api/v1/models", &new_key).await;
    assert_eq!(revoked.status, 401);
    assert!(revoked.openai_error()["message"].as_str().unwrap().contains("revoked"));
    assert_eq!(
        call(addr, "GET", &format!("/api/keys/{id}"), Some(&cookie), &Value::Null).await.status,
        404
    );

    // Logout ends the session server-side: the same cookie replayed is refused.
    let out = call(addr, "POST", "/api/auth/logout", Some(&cookie), &Value::Null).await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(call(addr, "GET", "/api/auth/me", Some(&cookie), &Value::Null).await.status, 401);

    // The database holds bcrypt hashes, never the key.
    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    let db = std::fs::read(gw.db_path()).unwrap_or_default();
    let wal = std::fs::read(gw.dir.path().join("bluesminds.db-wal")).unwrap_or_default();
    let all = [db, wal].concat();
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "a key secret is stored in the clear"
    );
    let url = format!("sqlite://{}?mode=ro", gw.db_path().display());
    let store =
        gateway_store::Store::connect(&url, &gateway_store::StoreConfig::default()).await.unwrap();
    let rows =
        gateway_store::entity::api_keys::Entity::find().all(store.connection()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].last_used_at.is_some(),
        "the key's use was recorded (batched, flushed at shutdown)"
    );
    assert!(
        rows[0].key_hash.starts_with("$2b$")
            && rows[0].previous_key_hash.as_deref().unwrap().starts_with("$2b$")
    );
}

#[tokio::test]
async fn a_users_keys_are_invisible_and_untouchable_for_others() {
    let gw = Gateway::start(&[], &MODELS_ENV).await;
    let a = signup_and_login(gw.addr, "a@example.com").await;
    let b = signup_and_login(gw.addr, "b@example.com").await;
    let (id, key) = create_key(gw.addr, &a, json!({"name": "a-key"})).await;
    for (method, path, body) in [
        ("GET", format!("/api/keys/{id}"), Value::Null),
        ("PATCH", format!("/api/keys/{id}"), json!({"name": "stolen"})),
        ("POST", format!("/api/keys/{id}/rotate"), Value::Null),
        ("DELETE", format!("/api/keys/{id}"), Value::Null),
    ] {
        let r = call(gw.addr, method, &path, Some(&b.cookie), &body).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.openai_error()["code"], "not_found");
    }
    let unknown = call(
        gw.addr,
        "GET",
        &format!("/api/keys/{}", uuid::Uuid::now_v7()),
        Some(&b.cookie),
        &Value::Null,
    )
    .await;
    assert_eq!(
        unknown.body.len(),
        call(gw.addr, "GET", &format!("/api/keys/{id}"), Some(&b.cookie), &Value::Null)
            .await
            .body
            .len()
    );
    let list = call(gw.addr, "GET", "/api/keys", Some(&b.cookie), &Value::Null).await;
    assert_eq!(list.json()["data"], json!([]));
    // A's key is untouched and still works.
    assert_eq!(with_key(gw.addr, "/api/v1/models", &key).await.status, 200);
    let mine =
        call(gw.addr, "GET", &format!("/api/keys/{id}"), Some(&a.cookie), &Value::Null).await;
    assert_eq!(mine.json()["name"], "a-key");
}

#[tokio::test]
async fn scopes_and_malformed_bearers_are_refused() {
    let gw = Gateway::start(&[], &MODELS_ENV).await;
    let s = signup_and_login(gw.addr, "scopes@example.com").await;
    let (_, chat_only) =
        create_key(gw.addr, &s, json!({"name": "chat", "scopes": ["chat.completions"]})).await;
    let r = with_key(gw.addr, "/api/v1/models", &chat_only).await;
    assert_eq!(r.status, 403);
    assert!(r.openai_error()["message"].as_str().unwrap().contains("'models' scope"));
    // The bare key, without `Bearer `, is the same key (the original product took it).
    let bare =
        request_with(gw.addr, "GET", "/api/v1/models", &[("authorization", &chat_only)], b"").await;
    assert_eq!(bare.status, 403, "authenticated, and refused by scope: {:?}", bare.body);

    let sql = "x' OR (SELECT pg_sleep(5)) IS NOT NULL--";
    for header in [
        None,
        Some(format!("Basic {chat_only}")),
        Some("Bearer sk-not-ours".into()),
        Some(format!("Bearer {sql}")),
        Some(format!("Bearer bm_{sql}")),
        Some(format!("Bearer {chat_only}x")),
    ] {
        let headers: Vec<(&str, &str)> =
            header.iter().map(|h| ("authorization", h.as_str())).collect();
        let started = std::time::Instant::now();
        let r = request_with(gw.addr, "GET", "/api/v1/models", &headers, b"").await;
        assert_eq!(r.status, 401, "{header:?}");
        assert_eq!(r.openai_error()["code"], "invalid_api_key");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{header:?} must not reach a database sleep"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let gw = Gateway::start(&[], &[]).await;
    let addr = gw.addr;
    let sql = "x' OR (SELECT pg_sleep(5)) IS NOT NULL--";
    let long = "n".repeat(300);
    let signups = [
        (json!({"email": "ok@example.com"}), "password"),
        (json!({"password": "long enough pw"}), "email"),
        (json!({"email": "not-an-email", "password": "long enough pw"}), "email"),
        (json!({"email": format!("{sql}@x.com"), "password": "long enough pw"}), "email"),
        (json!({"email": format!("{long}@example.com"), "password": "long enough pw"}), "email"),
        (json!({"email": "ok@example.com", "password": "short"}), "password"),
        (json!({"email": "ok@example.com", "password": "p".repeat(73)}), "password"),
        (
            json!({"email": "ok@example.com", "password": "long enough pw", "full_name": long}),
            "full_name",
        ),
        (
            json!({"email": "ok@example.com", "password": "long enough pw", "credits_micros": 1_000_000}),
            "credits_micros",
        ),
    ];
    for (body, field) in signups {
        let r = call(addr, "POST", "/api/auth/signup", None, &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.openai_error()["message"].as_str().unwrap().contains(field),
            "{body}: {:?}",
            r.body
        );
    }
    assert_eq!(
        call(
            addr,
            "POST",
            "/api/auth/login",
            None,
            &json!({"email": "ok@example.com", "password": "long enough pw"})
        )
        .await
        .status,
        401,
        "no account was created"
    );

    let s = signup_and_login(addr, "real@example.com").await;
    let keys = [
        json!({"scopes": ["models"]}),
        json!({"name": sql}),
        json!({"name": "n".repeat(101)}),
        json!({"name": "k", "scopes": ["admin"]}),
        json!({"name": "k", "scopes": []}),
        json!({"name": "k", "user_id": s.id}),
        json!({"name": "k", "is_active": true, "id": "x"}),
        json!({"name": "k", "expires_at": "tomorrow"}),
        json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "k", "quota_daily": 0}),
        json!({"name": "k", "quota_monthly": 10_000_000}),
    ];
    for body in keys {
        let r = call(addr, "POST", "/api/keys", Some(&s.cookie), &body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", String::from_utf8_lossy(&r.body));
        r.openai_error();
    }
    let malformed = request_with(
        addr,
        "POST",
        "/api/keys",
        &[("cookie", &format!("bm_session={}", s.cookie))],
        b"{\"name\": ",
    )
    .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        call(addr, "GET", "/api/keys", Some(&s.cookie), &Value::Null).await.json()["data"],
        json!([]),
        "no key was created"
    );

    // Mass assignment through the profile: refused, and nothing changes.
    for field in ["role", "tier", "status", "credits_micros", "id", "email"] {
        let r = call(
            addr,
            "PATCH",
            "/api/auth/me",
            Some(&s.cookie),
            &json!({field: "admin", "full_name": "Mallory"}),
        )
        .await;
        assert_eq!(r.status, 400, "{field}");
    }
    let me = call(addr, "GET", "/api/auth/me", Some(&s.cookie), &Value::Null).await.json();
    assert_eq!(
        (
            me["role"].as_str(),
            me["tier"].as_str(),
            me["credits_micros"].as_i64(),
            me["full_name"].as_str()
        ),
        (Some("user"), Some("free"), Some(0), None)
    );
    let ok = call(
        addr,
        "PATCH",
        "/api/auth/me",
        Some(&s.cookie),
        &json!({"full_name": "Real Name", "company_name": "Acme"}),
    )
    .await;
    assert_eq!((ok.status, ok.json()["company_name"].as_str()), (200, Some("Acme")));
    // A non-admin cannot use the admin API either.
    let r = call(
        addr,
        "PATCH",
        &format!("/api/admin/users/{}", s.id),
        Some(&s.cookie),
        &json!({"role": "admin"}),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn password_change_needs_the_current_password_and_ends_other_sessions() {
    let gw = Gateway::start(&[], &[]).await;
    let first = signup_and_login(gw.addr, "pw@example.com").await;
    let second = call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "pw@example.com", "password": "correct horse battery"}),
    )
    .await;
    let second = session_cookie(&second);
    let wrong = call(
        gw.addr,
        "PATCH",
        "/api/auth/me",
        Some(&first.cookie),
        &json!({"password": "new password 1", "current_password": "nope nope nope"}),
    )
    .await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.openai_error()["param"], "current_password");
    let changed = call(
        gw.addr,
        "PATCH",
        "/api/auth/me",
        Some(&first.cookie),
        &json!({"password": "new password 1", "current_password": "correct horse battery"}),
    )
    .await;
    assert_eq!(changed.status, 200);
    let fresh = session_cookie(&changed);
    for old in [&first.cookie, &second] {
        assert_eq!(call(gw.addr, "GET", "/api/auth/me", Some(old), &Value::Null).await.status, 401);
    }
    assert_eq!(call(gw.addr, "GET", "/api/auth/me", Some(&fresh), &Value::Null).await.status, 200);
    let login = call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "pw@example.com", "password": "new password 1"}),
    )
    .await;
    assert_eq!(login.status, 200);
}

#[tokio::test]
async fn suspension_stops_a_users_keys_and_sessions_at_once() {
    let gw = Gateway::start(&[], &MODELS_ENV).await;
    let user = signup_and_login(gw.addr, "suspect@example.com").await;
    let (_, key) = create_key(gw.addr, &user, json!({"name": "k"})).await;
    assert_eq!(with_key(gw.addr, "/api/v1/models", &key).await.status, 200, "cached now");

    // An admin, made by the CLI next to the running gateway.
    let out = command(
        gw.dir.path(),
        &["admin", "create", "--email", "root@example.com", "--password", "root password 1"],
        &[],
    )
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let login = call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "root@example.com", "password": "root password 1"}),
    )
    .await;
    let admin = session_cookie(&login);

    let r = call(
        gw.addr,
        "PATCH",
        &format!("/api/admin/users/{}", user.id),
        Some(&admin),
        &json!({"status": "suspended"}),
    )
    .await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("suspended")));
    let refused = with_key(gw.addr, "/api/v1/models", &key).await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.openai_error()["code"], "account_suspended");
    assert_eq!(
        call(gw.addr, "GET", "/api/auth/me", Some(&user.cookie), &Value::Null).await.status,
        401,
        "sessions ended"
    );
    let relogin = call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "suspect@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(relogin.status, 403);

    let r = call(
        gw.addr,
        "PATCH",
        &format!("/api/admin/users/{}", user.id),
        Some(&admin),
        &json!({"status": "active"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(with_key(gw.addr, "/api/v1/models", &key).await.status, 200, "reinstated");
}

#[tokio::test]
async fn repeated_failed_logins_are_refused_for_a_while() {
    let gw = Gateway::start(
        &[],
        &[
            ("BLUESMINDS_AUTH__LOGIN_LOCKOUT_AFTER", "3"),
            ("BLUESMINDS_AUTH__LOGIN_SLOWDOWN_AFTER", "3"),
        ],
    )
    .await;
    signup_and_login(gw.addr, "locked@example.com").await;
    let attempt = async |password: &str| {
        let body = json!({"email": "locked@example.com", "password": password});
        call(gw.addr, "POST", "/api/auth/login", None, &body).await
    };
    for _ in 0..3 {
        assert_eq!(attempt("wrong password!").await.status, 401);
    }
    let refused = attempt("correct horse battery").await;
    assert_eq!(refused.status, 429, "locked even with the right password");
    assert_eq!(refused.openai_error()["code"], "too_many_attempts");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
}

/// Failed logins are counted in Redis: ten failures spread over two instances lock the email
/// on both (the right password included), and Redis holds no email in its keys.
#[tokio::test]
async fn failed_logins_on_two_instances_lock_the_email_on_both() {
    let (_db, env) =
        support::shared_backends(&[("BLUESMINDS_AUTH__LOGIN_SLOWDOWN_AFTER", "20")]).await;
    let a = Gateway::start(&[], &support::env_refs(&env)).await;
    let b = Gateway::start(&[], &support::env_refs(&env)).await;
    signup_and_login(a.addr, "shared-lock@example.com").await;
    let attempt = async |gw: &Gateway, password: &str| {
        let body = json!({"email": "shared-lock@example.com", "password": password});
        call(gw.addr, "POST", "/api/auth/login", None, &body).await
    };
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(attempt(gw, "wrong password!").await.status, 401, "attempt {i}");
    }
    for gw in [&a, &b] {
        let refused = attempt(gw, "correct horse battery").await;
        assert_eq!(refused.status, 429, "five failures here and five there lock it everywhere");
        assert_eq!(refused.openai_error()["code"], "too_many_attempts");
    }
    // Another email is not locked (the address allows five times as many failures).
    signup_and_login(b.addr, "other-user@example.com").await;

    let prefix = &env.iter().find(|(k, _)| k == "BLUESMINDS_REDIS__KEY_PREFIX").unwrap().1;
    let client = redis::Client::open(gateway_store::testing::require_redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:login:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains('@') && !k.contains("127.0.0.1")), "{keys:?}");
}

#[tokio::test]
async fn cookie_requests_from_a_foreign_origin_are_refused() {
    let gw = Gateway::start(&[], &[("BLUESMINDS_PUBLIC_URL", "https://gw.example.com")]).await;
    let s = signup_and_login(gw.addr, "csrf@example.com").await;
    let body = json!({"name": "k"}).to_string();
    let cookie = format!("bm_session={}", s.cookie);
    // Room for the two keys this test creates.
    support::set_tier(&gw, &cookie, "starter").await;
    let foreign = request_with(
        gw.addr,
        "POST",
        "/api/keys",
        &[("cookie", &cookie), ("origin", "https://evil.example")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert!(foreign.openai_error()["message"].as_str().unwrap().contains("Cross-site"));
    let own = request_with(
        gw.addr,
        "POST",
        "/api/keys",
        &[("cookie", &cookie), ("origin", "https://gw.example.com")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(own.status, 201);
    let none =
        request_with(gw.addr, "POST", "/api/keys", &[("cookie", &cookie)], body.as_bytes()).await;
    assert_eq!(none.status, 201, "no Origin: not a browser's cross-site request");
    assert_eq!(
        call(gw.addr, "GET", "/api/keys", Some(&s.cookie), &Value::Null).await.json()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let login = call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "csrf@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert!(
        login.header("set-cookie").unwrap().contains("Secure"),
        "https public URL: Secure cookie"
    );
}

#[tokio::test]
async fn no_key_password_or_session_reaches_the_logs() {
    let mut gw = Gateway::start(&[], &[("RUST_LOG", "trace"), MODELS_ENV[0], MODELS_ENV[1]]).await;
    let s = signup_and_login(gw.addr, "quiet@example.com").await;
    let (id, key) = create_key(gw.addr, &s, json!({"name": "k"})).await;
    with_key(gw.addr, "/api/v1/models", &key).await;
    with_key(gw.addr, "/api/v1/models", &format!("{key}x")).await;
    let rotated =
        call(gw.addr, "POST", &format!("/api/keys/{id}/rotate"), Some(&s.cookie), &Value::Null)
            .await;
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    with_key(gw.addr, "/api/v1/models", &new_key).await;
    call(
        gw.addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "quiet@example.com", "password": "not the password"}),
    )
    .await;
    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    assert_eq!(code, Some(0));
    assert!(
        logs.contains("listening") && logs.contains("drained"),
        "the logs were captured: {logs}"
    );
    for secret in [
        key.as_str(),
        new_key.as_str(),
        &key[12..],
        &new_key[12..],
        s.cookie.as_str(),
        "correct horse battery",
        "not the password",
    ] {
        assert!(!logs.contains(secret), "{secret:?} reached the logs");
    }
}

/// Two gateways on one Postgres database and one Redis: a key revoked or rotated on the first
/// is refused by the second. Its key cache would trust the key for an hour, so only the
/// pub/sub invalidation can make this pass.
#[tokio::test]
async fn revocation_reaches_a_second_instance_through_redis() {
    let extra = [("BLUESMINDS_AUTH__KEY_CACHE_TTL_MS", "3600000"), MODELS_ENV[0], MODELS_ENV[1]];
    let (_db, env) = support::shared_backends(&extra).await;
    let env = support::env_refs(&env);
    let a = Gateway::start(&[], &env).await;
    let b = Gateway::start(&[], &env).await;
    let s = signup_and_login(a.addr, "multi@example.com").await;
    let (id, key) = create_key(a.addr, &s, json!({"name": "k"})).await;
    // The Free plan allows one key: a second is refused, naming the plan and its limit.
    let second = call(a.addr, "POST", "/api/keys", Some(&s.cookie), &json!({"name": "k2"})).await;
    assert_eq!(second.status, 403, "{:?}", second.body);
    let message = second.openai_error()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("Free plan allows at most 1 active API key"), "{message}");
    support::set_tier(&a, &format!("bm_session={}", s.cookie), "starter").await;
    let (id2, key2) = create_key(a.addr, &s, json!({"name": "k2"})).await;
    assert_eq!(with_key(b.addr, "/api/v1/models", &key).await.status, 200, "b caches the key");
    assert_eq!(with_key(b.addr, "/api/v1/models", &key2).await.status, 200);

    let until_refused = |key: String| async move {
        let started = std::time::Instant::now();
        loop {
            let r = with_key(b.addr, "/api/v1/models", &key).await;
            if r.status == 401 {
                return;
            }
            assert!(started.elapsed() < PATIENCE, "the second instance still accepts the key");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(
        call(a.addr, "DELETE", &format!("/api/keys/{id}"), Some(&s.cookie), &Value::Null)
            .await
            .status,
        200
    );
    // The second instance caches keys for an hour: refusing the key at all, within PATIENCE,
    // is the bus's doing. (How fast it arrives is not asserted: a loaded test machine is no
    // measure of it.)
    until_refused(key).await;

    let rotated =
        call(a.addr, "POST", &format!("/api/keys/{id2}/rotate"), Some(&s.cookie), &Value::Null)
            .await;
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    until_refused(key2).await;
    assert_eq!(with_key(b.addr, "/api/v1/models", &new_key).await.status, 200);
}

/// While the Redis bus is subscribed, a verified key is trusted for
/// `auth.key_cache_bus_ttl_ms` (every change made through the gateway reaches every instance at
/// once); from the moment the subscription is lost, for `auth.key_cache_ttl_ms` again. A key
/// revoked in the database behind the gateway's back stays accepted past the short TTL while the
/// bus is up, and is refused once Redis is gone.
#[tokio::test]
async fn a_lost_bus_brings_the_key_cache_back_to_its_short_ttl() {
    let extra = [
        ("BLUESMINDS_AUTH__KEY_CACHE_TTL_MS", "1000"),
        ("BLUESMINDS_AUTH__KEY_CACHE_BUS_TTL_MS", "3600000"),
        MODELS_ENV[0],
        MODELS_ENV[1],
    ];
    let (db, mut env) = support::shared_backends(&extra).await;
    let mut redis = support::PrivateRedis::start().await;
    env.retain(|(k, _)| k != "REDIS_URL");
    env.push(("REDIS_URL".into(), redis.url()));
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    let bus_subscribed = |want: &'static str| async move {
        let started = std::time::Instant::now();
        loop {
            let metrics = support::request(gw.addr, "GET", "/metrics", b"").await;
            let text = String::from_utf8(metrics.body.to_vec()).unwrap();
            if text.lines().any(|l| l == format!("bluesminds_invalidation_bus_subscribed {want}")) {
                return;
            }
            assert!(started.elapsed() < PATIENCE, "the bus is never {want}: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    bus_subscribed("1").await;
    let s = signup_and_login(gw.addr, "bus@example.com").await;
    let (id, key) = create_key(gw.addr, &s, json!({"name": "k"})).await;
    assert_eq!(with_key(gw.addr, "/api/v1/models", &key).await.status, 200, "cached");
    let revoke = format!("UPDATE api_keys SET revoked_at = now() WHERE id = '{id}'");
    sea_orm::ConnectionTrait::execute_unprepared(db.store.connection(), &revoke).await.unwrap();
    // Twice the short TTL later, still trusted: no instance was told, and the bus is up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..3 {
        assert_eq!(with_key(gw.addr, "/api/v1/models", &key).await.status, 200);
    }
    redis.stop().await;
    bus_subscribed("0").await;
    // The entry is past its short TTL: its next use reads the record again (in the
    // background, the request served from the entry meanwhile), and then it is refused.
    let started = std::time::Instant::now();
    loop {
        let r = with_key(gw.addr, "/api/v1/models", &key).await;
        if r.status == 401 {
            assert!(r.openai_error()["message"].as_str().unwrap().contains("revoked"));
            break;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(started.elapsed() < PATIENCE, "the revoked key is still accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The audit log through the binary: sign-ins that fail and succeed, a key made and revoked, an
/// admin's change to the user and an anonymous attempt are recorded with actor, target,
/// outcome, address and request id; admins read and filter them in pages; the user sees their
/// own events (the failed sign-in to their email and the admin's change included) and not the
/// admin's; no entry holds a password, a key or a session.
#[tokio::test]
async fn security_actions_are_audited_and_each_user_sees_their_own() {
    let gw = Gateway::start(&[], &MODELS_ENV).await;
    let addr = gw.addr;
    let wrong = call(
        addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": "audit@example.com", "password": "not the password"}),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let alice = signup_and_login(addr, "audit@example.com").await;
    let (key_id, key) = create_key(addr, &alice, json!({"name": "audited"})).await;
    let revoked =
        call(addr, "DELETE", &format!("/api/keys/{key_id}"), Some(&alice.cookie), &Value::Null)
            .await;
    assert!(revoked.status < 300, "{revoked:?}");
    let anonymous = call(addr, "POST", "/api/keys", None, &json!({"name": "x"})).await;
    assert_eq!(anonymous.status, 401);
    let admin = support::admin_session(&gw).await;
    let admin_cookie = admin.strip_prefix("bm_session=").unwrap();
    let path = format!("/api/admin/users/{}", alice.id);
    let r = call(addr, "PATCH", &path, Some(admin_cookie), &json!({"tier": "starter"})).await;
    assert_eq!(r.status, 200);

    let audit =
        call(addr, "GET", "/api/admin/audit?limit=200", Some(admin_cookie), &Value::Null).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    let text = String::from_utf8_lossy(&audit.body).into_owned();
    for secret in [
        key.as_str(),
        alice.cookie.as_str(),
        admin_cookie,
        "correct horse battery",
        "not the password",
    ] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }
    let entries = audit.json()["data"].as_array().unwrap().clone();
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {entries:#?}"))
            .clone()
    };
    let failed = find("auth.login", "refused");
    assert_eq!(failed["target"], "email:audit@example.com");
    assert!(failed["actor_id"].is_null());
    assert_eq!(failed["status"], 401);
    assert_eq!(failed["source_ip"], "127.0.0.1");
    assert_eq!(failed["request_id"].as_str(), wrong.header("x-request-id"));
    let signed_in = entries
        .iter()
        .find(|e| {
            e["action"] == "auth.login"
                && e["target"] == "email:audit@example.com"
                && e["outcome"] == "ok"
        })
        .unwrap();
    assert_eq!(signed_in["actor_id"], alice.id.as_str());
    assert_eq!(find("key.create", "ok")["actor_id"], alice.id.as_str());
    assert_eq!(find("key.revoke", "ok")["target"], format!("key:{key_id}"));
    assert!(find("key.create", "refused")["actor_id"].is_null(), "the anonymous attempt");
    let changed = find("admin.user.update", "ok");
    assert_eq!(changed["target"], format!("user:{}", alice.id));
    assert_ne!(changed["actor_id"], alice.id.as_str());

    // Filters and pages.
    let refused =
        call(addr, "GET", "/api/admin/audit?outcome=refused", Some(admin_cookie), &Value::Null)
            .await;
    let refused = refused.json()["data"].as_array().unwrap().clone();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let auth_only =
        call(addr, "GET", "/api/admin/audit?action=auth.", Some(admin_cookie), &Value::Null).await;
    assert!(
        auth_only.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("auth."))
    );
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/admin/audit?limit=2{cursor}");
        let page = call(addr, "GET", &path, Some(admin_cookie), &Value::Null).await.json();
        seen.extend(
            page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let all: Vec<String> = entries.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(seen, all, "pages of two, newest first, cover every entry once");
    let bad =
        call(addr, "GET", "/api/admin/audit?outcome=maybe", Some(admin_cookie), &Value::Null).await;
    assert_eq!(bad.status, 400);

    // The user's own activity, and no admin view for them.
    let mine = call(addr, "GET", "/api/auth/activity", Some(&alice.cookie), &Value::Null).await;
    assert_eq!(mine.status, 200);
    let mine = mine.json()["data"].as_array().unwrap().clone();
    let actions: Vec<&str> = mine.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in ["auth.login", "auth.signup", "key.create", "key.revoke", "admin.user.update"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(mine.iter().any(|e| e["outcome"] == "refused" && e["action"] == "auth.login"));
    assert!(
        mine.iter().all(|e| e["actor_id"] == alice.id.as_str()
            || e["target"] == "email:audit@example.com"
            || e["target"] == format!("user:{}", alice.id)),
        "only her own events"
    );
    let denied = call(addr, "GET", "/api/admin/audit", Some(&alice.cookie), &Value::Null).await;
    assert_eq!(denied.status, 403);
}

/// Password recovery by email through the binary and a local SMTP server: the forgot step
/// answers the same for any email and mails only real accounts; the link's token works once,
/// not with a weak password (which leaves it usable), ends every session, and wrong tokens
/// are refused, then throttled; the dashboard's page takes the link. Without SMTP both steps
/// say recovery by email is not set up.
#[tokio::test]
async fn password_reset_by_email_works_once_and_ends_every_session() {
    let sink = support::SmtpSink::start().await;
    let smtp = format!("smtp://{}", sink.addr);
    let gw = Gateway::start(
        &[],
        &[
            ("SMTP_URL", smtp.as_str()),
            ("EMAIL_FROM", "BluesMinds <noreply@example.com>"),
            ("BLUESMINDS_AUTH__LOGIN_LOCKOUT_AFTER", "2"),
            ("BLUESMINDS_AUTH__LOGIN_SLOWDOWN_AFTER", "100"),
        ],
    )
    .await;
    let addr = gw.addr;
    let alice = signup_and_login(addr, "reset@example.com").await;
    let forgot = async |email: &str| {
        call(addr, "POST", "/api/auth/password/forgot", None, &json!({"email": email})).await
    };
    let unknown = forgot("nobody@example.com").await;
    let known = forgot("Reset@Example.com").await;
    assert_eq!((unknown.status, known.status), (202, 202));
    assert_eq!(unknown.body, known.body, "the same answer whether or not the account exists");
    let mails = sink.wait_for(1).await;
    assert!(mails.iter().all(|m| m.contains("To: reset@example.com")), "{mails:?}");
    let token = mailed_token(&mails[0], "/reset-password");
    assert_eq!(token.len(), 64, "{}", mails[0]);

    // The dashboard's page takes the link.
    let page = request_with(addr, "GET", &format!("/reset-password?token={token}"), &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains(&token));

    let reset = async |token: &str, password: &str| {
        call(
            addr,
            "POST",
            "/api/auth/password/reset",
            None,
            &json!({"token": token, "password": password}),
        )
        .await
    };
    assert_eq!(reset(&token, "short").await.status, 400, "a weak password is refused first");
    let done = reset(&token, "a brand new password").await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        call(addr, "GET", "/api/auth/me", Some(&alice.cookie), &Value::Null).await.status,
        401
    );
    let login = async |password: &str| {
        call(
            addr,
            "POST",
            "/api/auth/login",
            None,
            &json!({"email": "reset@example.com", "password": password}),
        )
        .await
        .status
    };
    assert_eq!(login("a brand new password").await, 200);
    let reused = reset(&token, "another new password").await;
    assert_eq!(reused.status, 400, "single use");
    assert_eq!(reused.openai_error()["param"], "token");

    // Guessing: refused, then throttled for the address.
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(reset(&format!("{i:064x}"), "a guessed password!").await.status);
    }
    assert!(statuses[..5].iter().all(|s| *s == 400), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Without SMTP: said plainly.
    let bare = Gateway::start(&[], &[]).await;
    let r = call(bare.addr, "POST", "/api/auth/password/forgot", None, &json!({"email": "a@b.co"}))
        .await;
    assert_eq!(r.status, 503);
    assert!(r.openai_error()["message"].as_str().unwrap().contains("not set up"));
    let page = request_with(bare.addr, "GET", "/forgot-password", &[], b"").await;
    assert!(String::from_utf8_lossy(&page.body).contains("not set up on this gateway"));
}

/// With `email.verify_signups`, a new account cannot sign in until it opens the mailed link;
/// a new link can be asked for (the same answer for any email); a link works once, and
/// opening one uses up the account's others.
#[tokio::test]
async fn a_new_account_signs_in_once_its_email_is_confirmed() {
    let sink = support::SmtpSink::start().await;
    let smtp = format!("smtp://{}", sink.addr);
    let gw = Gateway::start(
        &[],
        &[
            ("SMTP_URL", smtp.as_str()),
            ("EMAIL_FROM", "noreply@example.com"),
            ("BLUESMINDS_EMAIL__VERIFY_SIGNUPS", "true"),
        ],
    )
    .await;
    let addr = gw.addr;
    let creds = json!({"email": "verify@example.com", "password": "correct horse battery"});
    assert_eq!(call(addr, "POST", "/api/auth/signup", None, &creds).await.status, 201);
    let first = sink.wait_for(1).await;
    assert!(
        first[0].contains("To: verify@example.com") && first[0].contains("/verify-email?token=")
    );
    let refused = call(addr, "POST", "/api/auth/login", None, &creds).await;
    assert_eq!(refused.status, 403);
    assert!(refused.openai_error()["message"].as_str().unwrap().contains("Confirm your email"));

    let resend = async |email: &str| {
        call(addr, "POST", "/api/auth/email/resend", None, &json!({"email": email})).await
    };
    let (unknown, known) = (resend("nobody@example.com").await, resend("verify@example.com").await);
    assert_eq!((unknown.status, known.status), (202, 202));
    assert_eq!(unknown.body, known.body);
    let mails = sink.wait_for(2).await;
    assert!(mails.iter().all(|m| m.contains("To: verify@example.com")), "{mails:?}");
    let (one, two) =
        (mailed_token(&mails[0], "/verify-email"), mailed_token(&mails[1], "/verify-email"));
    assert_ne!(one, two);

    let page = request_with(addr, "GET", &format!("/verify-email?token={one}"), &[], b"").await;
    assert!(String::from_utf8_lossy(&page.body).contains("Confirm my email address"));
    let verify = async |t: &str| {
        call(addr, "POST", "/api/auth/email/verify", None, &json!({"token": t})).await.status
    };
    assert_eq!(verify(&one).await, 200);
    assert_eq!(verify(&two).await, 400, "opening one link uses up the others");
    assert_eq!(call(addr, "POST", "/api/auth/login", None, &creds).await.status, 200);
}

/// The original product's environment: `ADMIN_EMAILS` makes admins (at sign-up, and at start
/// for accounts that exist), `DEFAULT_RATE_LIMIT_*` and `DEFAULT_QUOTA_*` set the free plan,
/// `LITELLM_SERVER_N_KEY` is the upstream's key, and a key works without `Bearer `.
#[tokio::test]
async fn the_original_products_environment_still_works() {
    let mock = support::Mock::start().await;
    let url = mock.url();
    let env = [
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", "gpt-4"),
        ("LITELLM_SERVER_1_KEY", "sk-upstream-by-its-old-name"),
        ("ADMIN_EMAILS", "boss@example.com, early@example.com"),
        ("DEFAULT_RATE_LIMIT_RPM", "2"),
        ("DEFAULT_QUOTA_DAILY", "5000"),
    ];
    let gw = Gateway::start(&[], &env).await;
    let role = async |gw: &Gateway, s: &Session| {
        call(gw.addr, "GET", "/api/auth/me", Some(&s.cookie), &Value::Null).await.json()["role"]
            .clone()
    };
    let boss = signup_and_login(gw.addr, "Boss@Example.com").await;
    assert_eq!(role(&gw, &boss).await, "admin");
    let staff = signup_and_login(gw.addr, "staff@example.com").await;
    assert_eq!(role(&gw, &staff).await, "user");
    signup_and_login(gw.addr, "early@example.com").await;
    let free = call(gw.addr, "GET", "/api/billing/plans", None, &Value::Null).await.json();
    let free =
        free["data"].as_array().unwrap().iter().find(|p| p["tier"] == "free").unwrap().clone();
    assert_eq!(
        (free["rpm"].as_u64(), free["daily_tokens"].as_u64()),
        (Some(2), Some(5000)),
        "{free}"
    );

    let (_, key) = create_key(gw.addr, &staff, json!({"name": "old client"})).await;
    let chat =
        json!({"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let send = async || {
        request_with(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &key)],
            chat.to_string().as_bytes(),
        )
        .await
    };
    let first = send().await;
    assert_eq!(first.status, 200, "a bare key works: {:?}", first.body);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(
        mock.stats.last_authorization.lock().unwrap().as_deref(),
        Some("Bearer sk-upstream-by-its-old-name")
    );
    assert_eq!(send().await.status, 200);
    assert_eq!(send().await.status, 429, "two a minute, as DEFAULT_RATE_LIMIT_RPM says");

    // An account that existed before its email was listed is promoted at the next start.
    let mut gw = gw;
    gw.terminate().await;
    let (_, _) = gw.wait().await;
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let mut env = env.to_vec();
    env.retain(|(k, _)| *k != "ADMIN_EMAILS");
    env.push(("ADMIN_EMAILS", "staff@example.com"));
    let again = Gateway::start_in(dir, &[], &env).await;
    let staff = signup_and_login_existing(again.addr, "staff@example.com").await;
    assert_eq!(role(&again, &staff).await, "admin");
    let early = signup_and_login_existing(again.addr, "early@example.com").await;
    assert_eq!(role(&again, &early).await, "admin", "listed before: stays an admin");
}

async fn signup_and_login_existing(addr: SocketAddr, email: &str) -> Session {
    let r = call(
        addr,
        "POST",
        "/api/auth/login",
        None,
        &json!({"email": email, "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    Session { cookie: session_cookie(&r), id: r.json()["user"]["id"].as_str().unwrap().to_owned() }
}

/// The administrators' JSON views on Postgres: users searched, filtered and paged; every key
/// listed without a secret; the platform by day; and a soft delete that ends the account's
/// keys and sessions at once and keeps its history.
#[tokio::test]
async fn admins_list_users_and_keys_see_the_platform_by_day_and_delete_softly() {
    let mock = support::Mock::start().await;
    let (_db, mut env) = support::shared_backends(&[]).await;
    env.push(("LITELLM_SERVER_1_URL".into(), mock.url()));
    env.push(("LITELLM_SERVER_1_MODELS".into(), "gpt-4".into()));
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    let addr = gw.addr;
    let admin_cookie = support::admin_session(&gw).await;
    let admin = admin_cookie.strip_prefix("bm_session=").unwrap();
    let get =
        async |path: &str, cookie: &str| call(addr, "GET", path, Some(cookie), &Value::Null).await;
    let emails = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect()
    };

    let alice = signup_and_login(addr, "alice@views.example").await;
    let bob = signup_and_login(addr, "bob@views.example").await;
    let carol = signup_and_login(addr, "carol@views.example").await;
    let patch = async |id: &str, body: Value| {
        let r = call(addr, "PATCH", &format!("/api/admin/users/{id}"), Some(admin), &body).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    };
    patch(&bob.id, json!({"tier": "pro"})).await;
    patch(&carol.id, json!({"status": "suspended"})).await;

    let all = get("/api/admin/users?q=views.example", admin).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(
        emails(&all.json()),
        ["alice@views.example", "bob@views.example", "carol@views.example"]
    );
    assert!(!String::from_utf8_lossy(&all.body).contains("password"), "no hash in the list");
    assert_eq!(
        emails(&get("/api/admin/users?tier=pro", admin).await.json()),
        ["bob@views.example"]
    );
    assert_eq!(
        emails(&get("/api/admin/users?status=suspended", admin).await.json()),
        ["carol@views.example"]
    );
    let first = get("/api/admin/users?q=views&limit=2", admin).await.json();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second =
        get(&format!("/api/admin/users?q=views&limit=2&cursor={cursor}"), admin).await.json();
    assert_eq!(emails(&second), ["carol@views.example"]);
    assert_eq!(second["next_cursor"], Value::Null);
    let refused = get("/api/admin/users?tier=gold", admin).await;
    assert_eq!((refused.status, refused.openai_error()["param"].as_str()), (400, Some("tier")));
    for path in ["/api/admin/users", "/api/admin/keys", "/api/admin/stats"] {
        assert_eq!(get(path, &alice.cookie).await.status, 403, "{path} is for admins");
    }

    // Keys: every owner's, never a secret.
    let (_, alice_key) = create_key(addr, &alice, json!({"name": "a1"})).await;
    let (bob_key_id, _) = create_key(addr, &bob, json!({"name": "b1"})).await;
    let keys = get("/api/admin/keys", admin).await;
    let text = String::from_utf8_lossy(&keys.body).into_owned();
    assert!(!text.contains(&alice_key) && !text.contains("$2"), "no secret, no hash: {text}");
    let listed = keys.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    let bobs = get(&format!("/api/admin/keys?user_id={}", bob.id), admin).await.json();
    assert_eq!(bobs["data"][0]["id"], bob_key_id.as_str());
    let paged = get("/api/admin/keys?limit=1", admin).await.json();
    let next = paged["next_cursor"].as_str().unwrap();
    let rest = get(&format!("/api/admin/keys?limit=1&cursor={next}"), admin).await.json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_ne!(rest["data"][0]["id"], paged["data"][0]["id"]);

    // The platform by day: alice's request, its tokens and its cost.
    let chat =
        json!({"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let r = support::post_with_key(addr, "/v1/chat/completions", &alice_key, &chat).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    support::summary_when(addr, &format!("bm_session={}", alice.cookie), |s| {
        s["requests"].as_u64() == Some(1)
    })
    .await;
    let stats = get("/api/admin/stats", admin).await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    let stats = stats.json();
    let days = stats["data"].as_array().unwrap();
    assert_eq!(days.len(), 30, "the last 30 days by default");
    let today = days.last().unwrap();
    assert_eq!((today["requests"].as_u64(), today["active_users"].as_u64()), (Some(1), Some(1)));
    assert!(
        today["tokens"].as_u64().unwrap() > 0
            && today["upstream_cost_micros"].as_i64().unwrap() > 0
    );
    assert_eq!(stats["total"]["requests"], 1);
    assert_eq!(stats["total"]["revenue_micros"], 0);
    let bad = get("/api/admin/stats?from=2026-01-01&to=2026-12-31", admin).await;
    assert_eq!(bad.status, 400, "more than 92 days");

    // A soft delete: the key and the session stop at once, sign-in fails, the history stays.
    let deleted =
        call(addr, "DELETE", &format!("/api/admin/users/{}", alice.id), Some(admin), &Value::Null)
            .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.json()["status"], "deleted");
    assert_eq!(
        support::post_with_key(addr, "/v1/chat/completions", &alice_key, &chat).await.status,
        401
    );
    assert_eq!(get("/api/auth/me", &alice.cookie).await.status, 401);
    let login = json!({"email": "alice@views.example", "password": "correct horse battery"});
    assert_eq!(call(addr, "POST", "/api/auth/login", None, &login).await.status, 401);
    assert_eq!(
        emails(&get("/api/admin/users?status=deleted", admin).await.json()),
        ["alice@views.example"]
    );
    assert_eq!(get("/api/admin/stats", admin).await.json()["total"]["requests"], 1, "history kept");
    assert_eq!(get("/api/admin/keys", admin).await.json()["data"].as_array().unwrap().len(), 1);
    let me = get("/api/auth/me", admin).await.json();
    let own = call(
        addr,
        "DELETE",
        &format!("/api/admin/users/{}", me["id"].as_str().unwrap()),
        Some(admin),
        &Value::Null,
    )
    .await;
    assert_eq!(own.status, 400, "not your own account");
    let audit = get("/api/admin/audit?action=admin.user.delete&outcome=ok", admin).await.json();
    assert_eq!(audit["data"][0]["target"], format!("user:{}", alice.id));
}
