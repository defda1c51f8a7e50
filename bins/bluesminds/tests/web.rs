//! The dashboard through the binary, without a browser: pages and their headers, forms that
//! post and redirect (the core actions work without JavaScript), escaping, the key shown once,
//! revocation, and cross-site posts refused. (The browser suite comes with the rest of the
//! dashboard.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::{Gateway, Mock, PATIENCE, Reply, post_with_key, request_with};

const MODELS: &str = "gpt-4";

/// A form post from a page of the gateway itself (the browser sends the Origin).
async fn post_form(gw: &Gateway, path: &str, cookie: Option<&str>, body: &str) -> Reply {
    let origin = format!("http://{}", gw.addr);
    let mut headers =
        vec![("content-type", "application/x-www-form-urlencoded"), ("origin", origin.as_str())];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    request_with(gw.addr, "POST", path, &headers, body.as_bytes()).await
}

async fn get(gw: &Gateway, path: &str, cookie: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("cookie", c)]).unwrap_or_default();
    request_with(gw.addr, "GET", path, &headers, b"").await
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The new key shown (once) on a keys page.
fn key_on(html: &str) -> String {
    let start = html.find("value=\"bm_").unwrap() + "value=\"".len();
    html[start..].chars().take_while(|c| *c != '"').collect()
}

/// A URL as a form field.
fn enc(url: &str) -> String {
    url.replace(':', "%3A").replace('/', "%2F")
}

fn cookie_of(r: &Reply) -> String {
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn sign_up_create_a_key_use_it_see_it_and_revoke_it_without_javascript() {
    let mock = Mock::start().await;
    let url = mock.url();
    let gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;

    // The landing page and its headers; the dashboard asks for a session.
    let landing = get(&gw, "/", None).await;
    assert_eq!(landing.status, 200);
    assert!(landing.header("content-type").unwrap().starts_with("text/html"));
    let csp = landing.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'")
    );
    assert_eq!(landing.header("x-frame-options"), Some("DENY"));
    assert!(text(&landing).contains("Create an account"));
    let css = get(&gw, "/static/app.css", None).await;
    assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));
    let away = get(&gw, "/dashboard", None).await;
    assert_eq!((away.status, away.header("location")), (303, Some("/login")));

    // Sign up by form: signed in, on the dashboard's empty state.
    let bad =
        post_form(&gw, "/signup", None, "email=not-an-email&password=correct+horse+battery").await;
    assert_eq!(bad.status, 400);
    assert!(text(&bad).contains("id=\"email-error\""), "the error is next to its field");
    let r = post_form(
        &gw,
        "/signup",
        None,
        "email=web%40example.com&password=correct+horse+battery&full_name=Web+User",
    )
    .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/dashboard")), "{}", text(&r));
    let cookie = cookie_of(&r);
    let page = get(&gw, "/dashboard", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    let html = text(&page);
    assert!(
        html.contains("No requests yet") && html.contains("Create your first API key"),
        "{html}"
    );

    // A name like an attack is refused, and the form shows it back as text, not markup.
    let attack = "name=%3Cscript%3Ealert(1)%3C%2Fscript%3E&scopes=models";
    let r = post_form(&gw, "/dashboard/keys", Some(&cookie), attack).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    let html = text(&r);
    assert!(!html.contains("<script>alert(1)</script>"));
    assert!(html.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
    assert!(html.contains("id=\"name-error\""), "the error is next to the field");
    // Checkboxes left unchecked, a limit that is not a number: said next to the field.
    let r = post_form(&gw, "/dashboard/keys", Some(&cookie), "name=ci+key").await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("Choose at least one thing the key may call"));
    let r = post_form(
        &gw,
        "/dashboard/keys",
        Some(&cookie),
        "name=ci+key&scopes=models&rate_limit_rpm=ten",
    )
    .await;
    assert!(text(&r).contains("id=\"rate_limit_rpm-error\""), "{}", text(&r));
    // The key, on the page once, with its scopes, models, expiry and a lower limit.
    let form = "name=ci+key&scopes=chat.completions&scopes=models&allowed_models=gpt-4%2C+gpt-4o\
        &expires=2099-01-31&rate_limit_rpm=5&rate_limit_tpm=&quota_daily=&quota_monthly=";
    let r = post_form(&gw, "/dashboard/keys", Some(&cookie), form).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let html = text(&r);
    let key = key_on(&html);
    assert!(key.starts_with("bm_") && key.len() > 20);
    let listed = text(&get(&gw, "/dashboard/keys", Some(&cookie)).await);
    assert!(!listed.contains(&key), "shown once");
    assert!(listed.contains("chat.completions, models") && listed.contains("gpt-4, gpt-4o"));
    assert!(listed.contains("RPM 5") && listed.contains("expires 2099-01-31"), "{listed}");

    // The key works; the request shows on the overview.
    let body = serde_json::json!({"model": "gpt-4", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status, 200);
    let started = Instant::now();
    loop {
        let html = text(&get(&gw, "/dashboard", Some(&cookie)).await);
        if html.contains("<td>gpt-4</td>") {
            assert!(!html.contains("No requests yet"));
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the request never showed: {html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The usage page counts it, by model and key.
    let usage = text(&get(&gw, "/dashboard/usage?days=7", Some(&cookie)).await);
    assert!(usage.contains("<td>gpt-4</td>") && usage.contains("<td>ci key (bm_"), "{usage}");
    assert!(usage.contains("aria-label=\"Tokens a day, the last 7 days\""));

    // Rotation: a new secret once, the old one stops at once (no grace configured).
    let keys = text(&get(&gw, "/dashboard/keys", Some(&cookie)).await);
    let form_action = |page: &str, verb: &str| {
        let end = page.find(&format!("/{verb}\"")).unwrap();
        let start = page[..end].rfind('"').unwrap() + 1;
        format!("{}/{verb}", &page[start..end])
    };
    let r = post_form(&gw, &form_action(&keys, "rotate"), Some(&cookie), "").await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("The old secret no longer works"));
    let rotated = key_on(&text(&r));
    assert_ne!(rotated, key);
    assert_eq!(post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status, 401);
    assert_eq!(post_with_key(gw.addr, "/v1/chat/completions", &rotated, &body).await.status, 200);
    let key = rotated;

    // A cross-site post is refused; the page's own revoke works and the key stops.
    let action = form_action(&keys, "revoke");
    let forged = request_with(
        gw.addr,
        "POST",
        &action,
        &[
            ("cookie", &cookie),
            ("origin", "https://evil.example"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        b"",
    )
    .await;
    assert_eq!(forged.status, 403);
    let r = post_form(&gw, &action, Some(&cookie), "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/dashboard/keys")));
    assert_eq!(post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status, 401);
    assert!(text(&get(&gw, "/dashboard/keys", Some(&cookie)).await).contains("No keys yet"));

    // Signing out ends the session; a wrong password says so on the form.
    let r = post_form(&gw, "/logout", Some(&cookie), "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    assert_eq!(get(&gw, "/dashboard", Some(&cookie)).await.status, 303);
    let r =
        post_form(&gw, "/login", None, "email=web%40example.com&password=wrong+password+1").await;
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("Invalid email or password"));
    let r =
        post_form(&gw, "/login", None, "email=web%40example.com&password=correct+horse+battery")
            .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/dashboard")));
}

#[tokio::test]
async fn the_billing_page_shows_the_plan_and_usage_and_its_forms_work() {
    let gw = Gateway::start(&[], &[]).await;
    let r =
        post_form(&gw, "/signup", None, "email=payer%40example.com&password=correct+horse+battery")
            .await;
    let cookie = cookie_of(&r);
    let page = text(&get(&gw, "/dashboard/billing", Some(&cookie)).await);
    assert!(page.contains("Free plan") && page.contains("<meter"), "{page}");
    assert!(page.contains("stops requests at its included tokens"));
    assert!(!page.contains("Spend cap"), "no overage on Free, so no cap");
    assert!(page.contains("No invoices yet"));

    support::set_tier(&gw, &cookie, "starter").await;
    let page = text(&get(&gw, "/dashboard/billing", Some(&cookie)).await);
    assert!(
        page.contains("Starter plan")
            && page.contains("Spend cap")
            && page.contains("value=\"29\""),
        "{page}"
    );
    let r = post_form(&gw, "/dashboard/billing/cap", Some(&cookie), "cap=5.50").await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("Your spend cap is now $5.50."));
    let r = post_form(&gw, "/dashboard/billing/cap", Some(&cookie), "cap=9999").await;
    assert_eq!(r.status, 400, "more than ten times the price");
    assert!(text(&r).contains("ten times"));

    // A code redeemed on the page.
    let admin = support::admin_session(&gw).await;
    let body = serde_json::json!({"code": "web-welcome", "credits_micros": 3_000_000});
    assert_eq!(support::call(gw.addr, "POST", "/api/admin/codes", &admin, &body).await.status, 201);
    let r = post_form(&gw, "/dashboard/billing/redeem", Some(&cookie), "code=web-welcome").await;
    assert_eq!(r.status, 200);
    let page = text(&r);
    assert!(
        page.contains("Code redeemed: $3.00") && page.contains("<strong>$3.00</strong>"),
        "{page}"
    );
    let r = post_form(&gw, "/dashboard/billing/redeem", Some(&cookie), "code=web-welcome").await;
    assert_eq!(r.status, 409);
    assert!(text(&r).contains("This code has been used up."));
}

#[tokio::test]
async fn the_log_page_filters_and_pages_without_javascript() {
    let mock = Mock::start().await;
    let url = mock.url();
    let gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let r =
        post_form(&gw, "/signup", None, "email=logs%40example.com&password=correct+horse+battery")
            .await;
    let cookie = cookie_of(&r);
    let r = post_form(&gw, "/dashboard/keys", Some(&cookie), "name=logger&scopes=chat.completions")
        .await;
    let html = text(&r);
    let key = key_on(&html);
    let ok = serde_json::json!({"model": "gpt-4", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let unknown = serde_json::json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    for body in [&ok, &ok, &unknown] {
        post_with_key(gw.addr, "/v1/chat/completions", &key, body).await;
    }
    let rows = |html: &str| html.matches("<td class=\"mono hide-narrow\">").count();
    let started = Instant::now();
    let all = loop {
        let html = text(&get(&gw, "/dashboard/logs", Some(&cookie)).await);
        if rows(&html) == 3 {
            break html;
        }
        assert!(started.elapsed() < PATIENCE, "{html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        all.contains("<option value=\"") && all.contains(">logger</option>"),
        "the key filter lists the key"
    );
    let failed = text(&get(&gw, "/dashboard/logs?status=error", Some(&cookie)).await);
    assert_eq!(rows(&failed), 1);
    assert!(failed.contains("no-such-model") && failed.contains(">404<"));
    assert!(failed.contains("<option value=\"error\" selected>"), "the filter stays chosen");
    assert_eq!(
        rows(&text(&get(&gw, "/dashboard/logs?status=success&model=gpt-4", Some(&cookie)).await)),
        2
    );
    let bad = get(&gw, "/dashboard/logs?cursor=nonsense", Some(&cookie)).await;
    assert_eq!(bad.status, 400);
    assert!(text(&bad).contains("Invalid 'cursor'"));
    assert_eq!(get(&gw, "/dashboard/logs", None).await.status, 303, "signed in only");
}

#[tokio::test]
async fn settings_change_the_profile_and_password_and_sign_out_everywhere() {
    let gw = Gateway::start(&[], &[]).await;
    let r =
        post_form(&gw, "/signup", None, "email=set%40example.com&password=correct+horse+battery")
            .await;
    let cookie = cookie_of(&r);
    let other = cookie_of(
        &post_form(&gw, "/login", None, "email=set%40example.com&password=correct+horse+battery")
            .await,
    );
    let page = text(&get(&gw, "/dashboard/settings", Some(&cookie)).await);
    assert!(page.contains("<label for=\"full_name\">Name</label>"), "labelled fields: {page}");

    let r = post_form(
        &gw,
        "/dashboard/settings/profile",
        Some(&cookie),
        "full_name=Ada+%3Cb%3E&company_name=Acme",
    )
    .await;
    assert_eq!(r.status, 200);
    let page = text(&r);
    assert!(
        page.contains("Your profile is saved.") && page.contains("value=\"Ada &lt;b&gt;\""),
        "{page}"
    );

    let r = post_form(
        &gw,
        "/dashboard/settings/password",
        Some(&cookie),
        "current_password=wrong+one+here&new_password=another+good+one",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("id=\"current_password-error\""));
    let r = post_form(
        &gw,
        "/dashboard/settings/password",
        Some(&cookie),
        "current_password=correct+horse+battery&new_password=another+good+one",
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cookie = cookie_of(&r);
    assert_eq!(
        get(&gw, "/dashboard", Some(&other)).await.status,
        303,
        "the other browser is signed out"
    );
    assert_eq!(get(&gw, "/dashboard", Some(&cookie)).await.status, 200, "this one goes on");

    let r = post_form(&gw, "/dashboard/settings/sign-out-everywhere", Some(&cookie), "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(get(&gw, "/dashboard", Some(&cookie)).await.status, 303);
}

#[tokio::test]
async fn admins_run_the_platform_from_its_pages_and_nobody_else_sees_them() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&[], &[]).await;
    let r =
        post_form(&gw, "/signup", None, "email=plain%40example.com&password=correct+horse+battery")
            .await;
    let user = cookie_of(&r);
    // Not for users (not found, no hint of a section), not without a session.
    for path in ["/admin", "/admin/servers", "/admin/users", "/admin/plans", "/admin/codes"] {
        let r = get(&gw, path, Some(&user)).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(text(&r).contains("Page not found") && !text(&r).contains("Servers"));
        assert_eq!(get(&gw, path, None).await.status, 303, "{path}");
    }
    assert_eq!(post_form(&gw, "/admin/servers", Some(&user), "name=x").await.status, 404);
    assert!(!text(&get(&gw, "/dashboard", Some(&user)).await).contains("href=\"/admin\""));

    let admin = support::admin_session(&gw).await;
    let html = text(&get(&gw, "/admin", Some(&admin)).await);
    assert!(html.contains("No upstream servers"), "{html}");
    assert!(html.contains(">Users</div><div class=\"value\">2<"), "{html}");

    // A server: a bad number said next to its field, then added, checked, healthy.
    let form = format!(
        "name=%3Cb%3Emock%3C%2Fb%3E&base_url={}&api_key=sk-upstream-secret&priority=first",
        enc(&mock.url())
    );
    let r = post_form(&gw, "/admin/servers", Some(&admin), &form).await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("id=\"priority-error\""));
    let r = post_form(&gw, "/admin/servers", Some(&admin), &form.replace("first", "1")).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/admin/servers")));
    let r = post_form(&gw, "/admin/servers/check", Some(&admin), "").await;
    let html = text(&r);
    assert!(html.contains("Checked 1 server(s) just now: 0 failed"), "{html}");
    assert!(html.contains("&lt;b&gt;mock&lt;/b&gt;") && html.contains(">healthy<"));
    assert!(!html.contains("sk-upstream-secret") && html.contains("key set"));
    let edit_at = html.find("href=\"/admin/servers/").unwrap() + "href=\"".len();
    let edit: String = html[edit_at..].chars().take_while(|c| *c != '"').collect();
    let page = text(&get(&gw, &edit, Some(&admin)).await);
    assert!(page.contains("value=\"&lt;b&gt;mock&lt;/b&gt;\"") && !page.contains("sk-upstream"));
    let r = post_form(
        &gw,
        &edit,
        Some(&admin),
        &format!(
            "name=mock&base_url={}&priority=2&weight=3&supported_models=gpt-4",
            enc(&mock.url())
        ),
    )
    .await;
    assert_eq!(r.status, 303);
    let html = text(&get(&gw, "/admin/servers", Some(&admin)).await);
    assert!(html.contains("priority 2 · weight 3") && html.contains("gpt-4 · key set"), "{html}");
    assert!(text(&get(&gw, "/admin", Some(&admin)).await).contains("Servers: 1 of 1 healthy"));
    post_form(&gw, &format!("{edit}/disable"), Some(&admin), "").await;
    assert!(text(&get(&gw, "/admin/servers", Some(&admin)).await).contains(">disabled<"));

    // Users: found by a piece of the email, moved to another plan, given credits once.
    let html = text(&get(&gw, "/admin/users?q=PLAIN", Some(&admin)).await);
    assert!(
        html.contains(">plain@example.com<") && !html.contains(">root@example.com</a>"),
        "{html}"
    );
    let at = html.find("href=\"/admin/users/").unwrap() + "href=\"".len();
    let user_path: String = html[at..].chars().take_while(|c| *c != '"').collect();
    let html = text(&get(&gw, "/admin/users?q=root", Some(&admin)).await);
    let at = html.find("href=\"/admin/users/").unwrap() + "href=\"".len();
    let me: String = html[at..].chars().take_while(|c| *c != '"').collect();
    let r = post_form(&gw, &me, Some(&admin), "tier=free&role=admin&status=suspended").await;
    assert_eq!(r.status, 400, "an admin cannot lock themselves out");
    assert!(text(&r).contains("cannot suspend your own account"), "{}", text(&r));
    let r = post_form(&gw, &user_path, Some(&admin), "tier=pro&role=user&status=active").await;
    assert!(text(&r).contains("Saved."));
    assert!(text(&get(&gw, "/dashboard/billing", Some(&user)).await).contains("Pro plan"));
    let grant = "amount=12.50&reason=Welcome&reference=web-1";
    assert!(
        text(&post_form(&gw, &format!("{user_path}/credits"), Some(&admin), grant).await)
            .contains("$12.50 of credits moved")
    );
    let again = text(&post_form(&gw, &format!("{user_path}/credits"), Some(&admin), grant).await);
    assert!(
        again.contains("made already; nothing changed") && again.contains("credits $12.50"),
        "{again}"
    );

    // Plans and prices: the Pro plan's price changes for its users; a future price can go.
    let plans = text(&get(&gw, "/admin/plans", Some(&admin)).await);
    assert!(plans.contains("action=\"/admin/plans/pro\""));
    let pro = "name=Pro+Plus&price=123&included_tokens=1000000&overage=0.002&max_api_keys=5\
        &retention_days=30&rpm=60&tpm=100000&daily_tokens=1000000&monthly_tokens=10000000";
    let r = post_form(&gw, "/admin/plans/pro", Some(&admin), pro).await;
    assert!(text(&r).contains("The Pro Plus plan is saved"), "{}", text(&r));
    assert!(
        text(&get(&gw, "/dashboard/billing", Some(&user)).await)
            .contains("Pro Plus plan · $123.00")
    );
    let price =
        "model=%3Ci%3Enew-model&input=1.5&output=2&cached=&effective_from=2099-01-01T00%3A00";
    let r = post_form(&gw, "/admin/prices", Some(&admin), price).await;
    let html = text(&r);
    assert!(html.contains("&lt;i&gt;new-model") && html.contains("not yet"), "{html}");
    let at = html.find("action=\"/admin/prices/").unwrap() + "action=\"".len();
    let delete: String = html[at..].chars().take_while(|c| *c != '"').collect();
    assert_eq!(post_form(&gw, &delete, Some(&admin), "").await.status, 303);
    assert!(!text(&get(&gw, "/admin/plans", Some(&admin)).await).contains("new-model"));

    // Codes: created, redeemed by the user, revoked.
    let r =
        post_form(&gw, "/admin/codes", Some(&admin), "code=SPRING&credits=5&max_uses=10&expires=")
            .await;
    assert!(text(&r).contains("Code SPRING created: $5.00"), "{}", text(&r));
    post_form(&gw, "/dashboard/billing/redeem", Some(&user), "code=SPRING").await;
    let html = text(&get(&gw, "/admin/codes", Some(&admin)).await);
    assert!(html.contains("1 of 10"), "{html}");
    let at = html.find("action=\"/admin/codes/").unwrap() + "action=\"".len();
    let revoke: String = html[at..].chars().take_while(|c| *c != '"').collect();
    post_form(&gw, &revoke, Some(&admin), "").await;
    assert!(text(&get(&gw, "/admin/codes", Some(&admin)).await).contains(">revoked<"));
}
