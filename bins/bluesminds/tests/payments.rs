//! Payments through the binary against the Creem mock, on Postgres and Redis: an upgrade by
//! checkout and webhook (limits follow at once), redeliveries, forgeries, tampering, replays
//! under another event id, wrong amounts, events out of order, credit packs, the same event at
//! two instances at once, and no secret in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bluesminds_mock::creem::{CreemMock, CreemMockConfig, CreemProduct};
use serde_json::{Value, json};
use support::{Gateway, Mock, post_with_key};

const API_KEY: &str = "creem_test_key_0123456789";
const WEBHOOK_SECRET: &str = "whsec_test_secret_0123456789";

fn product(id: &str, price_cents: i64, recurring: bool) -> CreemProduct {
    CreemProduct { id: id.into(), price_cents, currency: "USD".into(), recurring }
}

async fn creem() -> CreemMock {
    CreemMock::start(CreemMockConfig {
        api_key: API_KEY.into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        webhook_url: String::new(),
        products: vec![
            product("prod_pro", 9_900, true),
            product("prod_enterprise", 49_900, true),
            product("prod_small", 1_000, false),
            product("prod_invoice", 1, false),
        ],
    })
    .await
    .unwrap()
}

fn creem_env(creem: &CreemMock, mock: &Mock) -> Vec<(String, String)> {
    [
        ("BLUESMINDS_BILLING__CREEM__API_KEY", API_KEY.to_owned()),
        ("BLUESMINDS_BILLING__CREEM__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("BLUESMINDS_BILLING__CREEM__API_URL", creem.url()),
        ("BLUESMINDS_BILLING__CREEM__PRODUCTS__PRO", "prod_pro".to_owned()),
        ("BLUESMINDS_BILLING__CREEM__PRODUCTS__ENTERPRISE", "prod_enterprise".to_owned()),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__PRODUCT_ID", "prod_small".to_owned()),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__PRICE_MICROS", "10000000".to_owned()),
        ("BLUESMINDS_BILLING__CREEM__CREDIT_PACKS__SMALL__CREDITS_MICROS", "11000000".to_owned()),
        ("BLUESMINDS_BILLING__CREEM__INVOICE_PRODUCT_ID", "prod_invoice".to_owned()),
        ("LITELLM_SERVER_1_URL", mock.url()),
        ("LITELLM_SERVER_1_MODELS", "gpt-4".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The Creem mock, the upstream mock, a database and a gateway taking payments to the Creem
/// mock, whose webhooks go to it.
async fn stack(
    extra: &[(&str, &str)],
) -> (CreemMock, Mock, gateway_store::testing::TestDb, Gateway) {
    let creem = creem().await;
    let mock = Mock::start().await;
    let (db, mut env) = support::shared_backends(extra).await;
    env.extend(creem_env(&creem, &mock));
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    creem.set_webhook_url(&gw.url("/api/billing/webhook"));
    (creem, mock, db, gw)
}

async fn me(gw: &Gateway, cookie: &str) -> Value {
    support::call(gw.addr, "GET", "/api/auth/me", cookie, &Value::Null).await.json()
}

/// Starts a checkout for `body` and returns the mock's record of it.
async fn checkout(gw: &Gateway, creem: &CreemMock, cookie: &str, body: Value) -> String {
    let r = support::call(gw.addr, "POST", "/api/billing/checkout", cookie, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let url = r.json()["url"].as_str().unwrap().to_owned();
    let id = url.rsplit('/').next().unwrap().to_owned();
    assert!(creem.checkouts().iter().any(|c| c.id == id), "the checkout was made at Creem");
    id
}

/// Closes the current month (forced) as `admin`; the user's newest invoice.
async fn close_month(gw: &Gateway, admin: &str, cookie: &str) -> Value {
    let summary =
        support::call(gw.addr, "GET", "/api/billing/summary", cookie, &Value::Null).await.json();
    let close = json!({"period": summary["period"], "force": true});
    let r = support::call(gw.addr, "POST", "/api/admin/billing/close-period", admin, &close).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let invoices =
        support::call(gw.addr, "GET", "/api/billing/invoices", cookie, &Value::Null).await.json();
    invoices["data"][0].clone()
}

async fn payments_of(db: &gateway_store::testing::TestDb) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = db.store.connection();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM payment_transactions",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

#[tokio::test]
async fn an_upgrade_by_checkout_survives_redeliveries_forgeries_and_disorder() {
    let (creem, _mock, db, gw) = stack(&[]).await;
    let cookie = support::signup(gw.addr, "buyer@example.com").await;
    let key = support::create_key(gw.addr, &cookie, &json!({"name": "k"})).await;
    let chat =
        json!({"model": "gpt-4", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let rpm = |r: &support::Reply| r.header("x-ratelimit-limit-requests").unwrap().to_owned();
    assert_eq!(rpm(&post_with_key(gw.addr, "/v1/chat/completions", &key, &chat).await), "10");

    // Checkout, then Creem's webhook three times: one tier change, one payment.
    let id = checkout(&gw, &creem, &cookie, json!({"tier": "pro"})).await;
    let recorded = &creem.checkouts()[0];
    assert_eq!(recorded.email, "buyer@example.com");
    assert_eq!(recorded.metadata["bluesminds_purpose"], "tier:pro");
    let event = creem.checkout_completed(&id, None).unwrap();
    for _ in 0..3 {
        assert_eq!(creem.deliver(&event).await, 200);
    }
    assert_eq!(me(&gw, &cookie).await["tier"], "pro");
    assert_eq!(payments_of(&db).await, 1);
    // The limits follow at once (the key cache heard of it).
    assert_eq!(rpm(&post_with_key(gw.addr, "/v1/chat/completions", &key, &chat).await), "200");

    // Forged (another secret), missing, tampered: refused, nothing changes.
    let body = event.to_string();
    let forged = bluesminds_mock::creem::signature("not the secret", &body);
    assert_eq!(creem.deliver_raw(&body, Some(&forged)).await, 401);
    assert_eq!(creem.deliver_raw(&body, None).await, 401);
    let good = bluesminds_mock::creem::signature(WEBHOOK_SECRET, &body);
    let tampered = body.replace("\"amount\":9900", "\"amount\":1");
    assert_ne!(tampered, body);
    assert_eq!(creem.deliver_raw(&tampered, Some(&good)).await, 401);
    // The same payment under another event id: acknowledged, nothing changes.
    let mut replay = event.clone();
    replay["id"] = json!("evt_replayed");
    let r = deliver(&creem, &gw, &replay).await;
    assert_eq!(r["outcome"], "duplicate_payment");
    assert_eq!(payments_of(&db).await, 1);

    // A wrong amount for enterprise: refused, still pro.
    let id = checkout(&gw, &creem, &cookie, json!({"tier": "enterprise"})).await;
    let cheap = creem.checkout_completed(&id, Some(100)).unwrap();
    assert_eq!(deliver(&creem, &gw, &cheap).await["outcome"], "refused");
    assert_eq!(me(&gw, &cookie).await["tier"], "pro");
    assert_eq!(payments_of(&db).await, 1);

    // Out of order: the subscription is canceled after its paid period (the newest event),
    // then an older renewal arrives: the renewal is recorded as a payment, the account stays
    // free.
    let sub = event["object"]["subscription"]["id"].as_str().unwrap().to_owned();
    let customer = event["object"]["customer"]["id"].as_str().unwrap().to_owned();
    let created = event["created_at"].as_i64().unwrap();
    let meta = event["object"]["metadata"].clone();
    let ended = creem.subscription_event(
        "subscription.canceled",
        &sub,
        &customer,
        "prod_pro",
        &meta,
        created + 2,
        created,
        "tran_x",
    );
    let late_renewal = creem.subscription_event(
        "subscription.paid",
        &sub,
        &customer,
        "prod_pro",
        &meta,
        created + 1,
        created + 30 * 86_400_000,
        "tran_renewal",
    );
    assert_eq!(deliver(&creem, &gw, &ended).await["outcome"], "applied");
    assert_eq!(me(&gw, &cookie).await["tier"], "free");
    assert_eq!(deliver(&creem, &gw, &late_renewal).await["outcome"], "applied");
    assert_eq!(me(&gw, &cookie).await["tier"], "free", "the newest event wins");
    assert_eq!(payments_of(&db).await, 2, "the renewal's payment is recorded");
    assert_eq!(rpm(&post_with_key(gw.addr, "/v1/chat/completions", &key, &chat).await), "10");

    // A new subscription, then canceled at the end of its period: pro until then.
    let id = checkout(&gw, &creem, &cookie, json!({"tier": "pro"})).await;
    let again = creem.checkout_completed(&id, None).unwrap();
    assert_eq!(deliver(&creem, &gw, &again).await["outcome"], "applied");
    let sub = again["object"]["subscription"]["id"].as_str().unwrap().to_owned();
    let created = again["created_at"].as_i64().unwrap();
    let canceled = creem.subscription_event(
        "subscription.canceled",
        &sub,
        &customer,
        "prod_pro",
        &meta,
        created + 1_000,
        created + 30 * 86_400_000,
        "tran_y",
    );
    assert_eq!(deliver(&creem, &gw, &canceled).await["outcome"], "applied");
    assert_eq!(me(&gw, &cookie).await["tier"], "pro", "paid until the period ends");
    // Refunded instead: free at once.
    let order = again["object"]["order"]["id"].as_str().unwrap();
    let refund = creem.refund_event(order, &customer, 9_900);
    assert_eq!(deliver(&creem, &gw, &refund).await["outcome"], "applied");
    assert_eq!(me(&gw, &cookie).await["tier"], "free", "a refunded plan ends at once");

    // The customer portal, from the customer id the first checkout stored.
    let r = support::call(gw.addr, "POST", "/api/billing/portal", &cookie, &Value::Null).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.json()["url"].as_str().unwrap().ends_with(&format!("/portal/{customer}")));
    // No secret reaches the logs.
    let mut gw = gw;
    gw.terminate().await;
    let (_, logs) = gw.wait().await;
    for secret in [API_KEY, WEBHOOK_SECRET, good.as_str(), forged.as_str()] {
        assert!(!logs.contains(secret), "a secret in the logs: {secret}");
    }
    assert!(logs.contains("payment event REFUSED"), "a refusal is loud");
}

/// Delivers `event` and returns the gateway's answer.
async fn deliver(creem: &CreemMock, gw: &Gateway, event: &Value) -> Value {
    let body = event.to_string();
    let sig = bluesminds_mock::creem::signature(creem.webhook_secret(), &body);
    let r = support::request_with(
        gw.addr,
        "POST",
        "/api/billing/webhook",
        &[("creem-signature", &sig)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn a_credit_pack_adds_its_credits_once_even_at_two_instances_at_once() {
    let creem = creem().await;
    let mock = Mock::start().await;
    let (_db, mut env) = support::shared_backends(&[]).await;
    env.extend(creem_env(&creem, &mock));
    let a = Gateway::start(&[], &support::env_refs(&env)).await;
    let b = Gateway::start(&[], &support::env_refs(&env)).await;
    creem.set_webhook_url(&a.url("/api/billing/webhook"));
    let cookie = support::signup(a.addr, "pack@example.com").await;
    let id = checkout(&a, &creem, &cookie, json!({"credit_pack": "small"})).await;
    let event = creem.checkout_completed(&id, None).unwrap();
    let (to_a, to_b) = (a.url("/api/billing/webhook"), b.url("/api/billing/webhook"));
    let statuses = tokio::join!(creem.deliver_to(&to_a, &event), creem.deliver_to(&to_b, &event));
    assert_eq!(statuses, (200, 200));
    assert_eq!(creem.deliver(&event).await, 200, "a redelivery later");
    let ledger =
        support::call(a.addr, "GET", "/api/billing/ledger", &cookie, &Value::Null).await.json();
    assert_eq!(ledger["balance_micros"], 11_000_000, "{ledger}");
    assert_eq!(ledger["data"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["data"][0]["kind"], "top_up");
    // The admin overview counts the money received this month (a refund takes it back).
    let admin = support::admin_session(&a).await;
    let received = |html: &str| {
        let at = html.find("Received in").unwrap();
        let value = html[at..].find("class=\"value\">").unwrap() + at + "class=\"value\">".len();
        html[value..].chars().take_while(|c| *c != '<').collect::<String>()
    };
    let overview = |cookie: String| {
        let addr = a.addr;
        async move {
            let r = support::request_with(addr, "GET", "/admin", &[("cookie", &cookie)], b"").await;
            String::from_utf8_lossy(&r.body).into_owned()
        }
    };
    assert_eq!(received(&overview(admin.clone()).await), "$10.00");

    // Refunded (Creem's refund names the order, no metadata): the credits go back once.
    let order = event["object"]["order"]["id"].as_str().unwrap();
    let customer = event["object"]["customer"]["id"].as_str().unwrap();
    let refund = creem.refund_event(order, customer, 1_000);
    assert_eq!(deliver(&creem, &a, &refund).await["outcome"], "applied");
    assert_eq!(deliver(&creem, &a, &refund).await["outcome"], "duplicate");
    let mut again = refund.clone();
    again["id"] = json!("evt_refund_replayed");
    assert_eq!(deliver(&creem, &a, &again).await["outcome"], "duplicate_payment");
    let ledger =
        support::call(a.addr, "GET", "/api/billing/ledger", &cookie, &Value::Null).await.json();
    assert_eq!(ledger["balance_micros"], 0, "{ledger}");
    assert_eq!(ledger["data"][0]["kind"], "refund");
    assert_eq!(received(&overview(admin).await), "$0.00", "a refunded payment is not revenue");

    // Unknown packs and tiers without a product are not for sale.
    let r = support::call(
        a.addr,
        "POST",
        "/api/billing/checkout",
        &cookie,
        &json!({"credit_pack": "huge"}),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = support::call(
        a.addr,
        "POST",
        "/api/billing/checkout",
        &cookie,
        &json!({"tier": "starter"}),
    )
    .await;
    assert_eq!(r.status, 404, "no starter product is configured");
}

#[tokio::test]
async fn without_creem_payment_endpoints_say_so_and_the_rest_works() {
    let gw = Gateway::start(&[], &[]).await;
    let cookie = support::signup(gw.addr, "nopay@example.com").await;
    let r =
        support::call(gw.addr, "POST", "/api/billing/checkout", &cookie, &json!({"tier": "pro"}))
            .await;
    assert_eq!(r.status, 503);
    assert!(r.openai_error()["message"].as_str().unwrap().contains("[billing.creem]"));
    let r = support::request(gw.addr, "POST", "/api/billing/webhook", b"{}").await;
    assert_eq!(r.status, 503);
    let r = support::call(gw.addr, "GET", "/api/billing/summary", &cookie, &Value::Null).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_single_use_code_goes_to_one_of_fifty_users_racing_for_it() {
    let (_db, env) = support::shared_backends(&[]).await;
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    let admin = support::admin_session(&gw).await;
    let r = support::call(
        gw.addr,
        "POST",
        "/api/admin/codes",
        &admin,
        &json!({"credits_micros": 5_000_000}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let code = r.json()["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("BM-"));

    let mut cookies = Vec::new();
    for i in 0..50 {
        cookies.push(support::signup(gw.addr, &format!("racer{i}@example.com")).await);
    }
    let tasks: Vec<_> = cookies
        .iter()
        .map(|cookie| {
            let (addr, cookie, body) =
                (gw.addr, cookie.clone(), json!({"code": code.to_lowercase()}));
            tokio::spawn(async move {
                support::call(addr, "POST", "/api/billing/redeem", &cookie, &body).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49);
    let mut total = 0;
    for cookie in &cookies {
        total += me(&gw, cookie).await["credits_micros"].as_i64().unwrap();
    }
    assert_eq!(total, 5_000_000, "one credit in all");

    // A multi-use code: once per user; revoked and unknown codes are refused.
    let body = json!({"code": "team-2027", "credits_micros": 1_000_000, "max_uses": 10});
    assert_eq!(support::call(gw.addr, "POST", "/api/admin/codes", &admin, &body).await.status, 201);
    assert_eq!(
        support::call(gw.addr, "POST", "/api/admin/codes", &admin, &body).await.status,
        409,
        "taken"
    );
    let redeem = |cookie: String, code: &'static str| async move {
        let r =
            support::call(gw.addr, "POST", "/api/billing/redeem", &cookie, &json!({"code": code}))
                .await;
        (r.status, r.json())
    };
    assert_eq!(redeem(cookies[0].clone(), "TEAM-2027").await.0, 200);
    let (status, again) = redeem(cookies[0].clone(), "TEAM-2027").await;
    assert_eq!(status, 409);
    assert!(again["error"]["message"].as_str().unwrap().contains("already"));
    assert_eq!(redeem(cookies[1].clone(), "NO-SUCH-CODE").await.0, 404);
    let list = support::call(gw.addr, "GET", "/api/admin/codes", &admin, &Value::Null).await.json();
    let team =
        list["data"].as_array().unwrap().iter().find(|c| c["code"] == "TEAM-2027").unwrap().clone();
    assert_eq!(team["uses"], 1);
    let id = team["id"].as_str().unwrap();
    let r =
        support::call(gw.addr, "DELETE", &format!("/api/admin/codes/{id}"), &admin, &Value::Null)
            .await;
    assert_eq!(r.status, 200);
    assert_eq!(redeem(cookies[1].clone(), "TEAM-2027").await.0, 404, "revoked");
    let past = json!({"credits_micros": 1, "expires_at": "2020-01-01T00:00:00Z"});
    let r = support::call(gw.addr, "POST", "/api/admin/codes", &admin, &past).await;
    assert_eq!((r.status, r.openai_error()["param"].as_str()), (400, Some("expires_at")));
    let r = support::call(gw.addr, "GET", "/api/admin/codes", &cookies[2], &Value::Null).await;
    assert_eq!(r.status, 403, "admins only");
}

#[tokio::test]
async fn an_open_invoice_is_paid_by_credits_then_by_card() {
    let (creem, _mock, _db, gw) = stack(&[("BLUESMINDS_BILLING__GRACE_DAYS", "0")]).await;
    let admin = support::admin_session(&gw).await;
    let cookie = support::signup(gw.addr, "owes@example.com").await;
    support::set_tier(&gw, &cookie, "starter").await;
    let id = me(&gw, &cookie).await["id"].as_str().unwrap().to_owned();
    let grant = json!({"amount_micros": 5_000_000, "reason": "welcome", "reference": "w"});
    let path = format!("/api/admin/users/{id}/credits");
    assert_eq!(support::call(gw.addr, "POST", &path, &admin, &grant).await.status, 201);
    let invoice = close_month(&gw, &admin, &cookie).await;
    assert_eq!(
        (invoice["status"].as_str(), invoice["total_micros"].as_i64()),
        (Some("open"), Some(24_000_000))
    );
    assert_eq!(
        me(&gw, &cookie).await["credits_micros"],
        0,
        "credits paid what they could at closing"
    );

    // What is left, by card: a checkout of 2,400 one-cent units.
    let invoice_id = invoice["id"].as_str().unwrap();
    let r = support::call(
        gw.addr,
        "POST",
        &format!("/api/billing/invoices/{invoice_id}/pay"),
        &cookie,
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = r.json();
    assert_eq!(
        (answer["paid"].as_bool(), answer["left_micros"].as_i64()),
        (Some(false), Some(24_000_000))
    );
    let checkout_id = answer["url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let made = creem.checkouts().into_iter().find(|c| c.id == checkout_id).unwrap();
    assert_eq!((made.product_id.as_str(), made.units), ("prod_invoice", 2_400));
    let event = creem.checkout_completed(&checkout_id, None).unwrap();
    assert_eq!(deliver(&creem, &gw, &event).await["outcome"], "applied");
    assert_eq!(deliver(&creem, &gw, &event).await["outcome"], "duplicate");
    let paid = support::call(
        gw.addr,
        "GET",
        &format!("/api/billing/invoices/{invoice_id}"),
        &cookie,
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(paid["status"], "paid");
    assert_eq!(me(&gw, &cookie).await["past_due_after"], Value::Null, "no longer past due");
    assert_eq!(me(&gw, &cookie).await["credits_micros"], 0, "nothing paid twice or lost");
    let r = support::call(
        gw.addr,
        "POST",
        &format!("/api/billing/invoices/{invoice_id}/pay"),
        &cookie,
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 409, "nothing left to pay");
}

#[tokio::test]
async fn a_plan_fee_paid_by_the_subscription_is_not_billed_again() {
    let (creem, _mock, _db, gw) = stack(&[]).await;
    let cookie = support::signup(gw.addr, "subscriber@example.com").await;
    let id = checkout(&gw, &creem, &cookie, json!({"tier": "pro"})).await;
    let event = creem.checkout_completed(&id, None).unwrap();
    assert_eq!(deliver(&creem, &gw, &event).await["outcome"], "applied");
    let summary =
        support::call(gw.addr, "GET", "/api/billing/summary", &cookie, &Value::Null).await.json();
    assert_eq!(
        (summary["prepaid_micros"].as_i64(), summary["estimated_total_micros"].as_i64()),
        (Some(99_000_000), Some(0))
    );
    let admin = support::admin_session(&gw).await;
    let invoice = close_month(&gw, &admin, &cookie).await;
    assert_eq!(
        (invoice["status"].as_str(), invoice["total_micros"].as_i64()),
        (Some("paid"), Some(0)),
        "{invoice}"
    );
    let lines: Vec<(String, i64)> = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount_micros"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [("plan_fee".to_owned(), 99_000_000), ("subscription_payment".to_owned(), -99_000_000)]
    );
}
