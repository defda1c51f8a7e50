//! The dashboard's pages: read the session and the form, call the same services as the JSON
//! API, render with [`gateway_web`]. Forms post and redirect, so the core actions work without
//! JavaScript; state-changing posts pass the same `Origin` check as the API's cookie requests.

use gateway_auth::NewKey;
use gateway_billing::money;
use gateway_core::{ApiError, Scope, User};
use gateway_usage::GroupBy;
use gateway_usage::read::{LogsRequest, Reader, StatsRequest};
use gateway_web::pages::{
    self, FieldError, KeyForm, KeyRow, LogRow, NewKeyShown, Overview, PlanLimits, Usage, UsageRow,
};
use gateway_web::{Markup, Nav, Shell, Viewer, form};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use time::OffsetDateTime;

use super::session::{check_origin, clear_session_cookie, session_token, set_session_cookie};
use crate::app::App;
use crate::errors::from_auth;
use crate::http::ResBody;
use crate::server::{Ctx, read_body};

type Reply = Result<Response<ResBody>, ApiError>;

/// An HTML page with the headers every page carries (the server adds those of every response:
/// nosniff, frame denial, referrer policy).
pub(super) fn html(status: StatusCode, shell: &Shell, content: &Markup) -> Response<ResBody> {
    let mut res = Response::new(ResBody::full(shell.render(content).into_string()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(gateway_web::CONTENT_SECURITY_POLICY),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(super) fn redirect(location: &'static str) -> Response<ResBody> {
    let mut res = Response::new(ResBody::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    res.headers_mut().insert(LOCATION, HeaderValue::from_static(location));
    res
}

pub(super) fn viewer(user: &User) -> Viewer {
    Viewer { email: user.email.clone(), is_admin: user.role == gateway_core::Role::Admin }
}

/// The signed-in user of the session cookie, if any (no error page for a missing session: the
/// caller redirects to the sign-in page).
pub(super) async fn session_user(app: &App, req: &Request<Incoming>) -> Option<User> {
    let token = session_token(req)?;
    let user = app.accounts.session_user(token).await.ok()?;
    crate::audit::actor(user.id);
    Some(user)
}

/// An API error as the errors of a form: next to its field when it names one.
pub(super) fn form_error(e: &ApiError) -> Vec<FieldError> {
    vec![FieldError {
        field: e.param.as_deref().map(str::to_owned),
        message: e.message.to_string(),
    }]
}

pub(super) fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The audit target of a sign-in or sign-up: the email as the accounts store it (as typed,
/// lowercased, when it is no valid address).
pub(super) fn email_target(email: &str) -> String {
    let email =
        gateway_auth::normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    format!("email:{email}")
}

/// Static assets, embedded in the binary.
pub fn asset(name: &str) -> Response<ResBody> {
    let (body, kind) = match name {
        "app.css" => (gateway_web::APP_CSS, "text/css; charset=utf-8"),
        _ => (gateway_web::APP_JS, "text/javascript; charset=utf-8"),
    };
    let mut res = Response::new(ResBody::full(body));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res
}

/// `GET /`.
pub async fn landing(app: &App, req: Request<Incoming>) -> Reply {
    let user = session_user(app, &req).await;
    let content =
        pages::landing(app.config.server.public_url.trim_end_matches('/'), user.is_some());
    let shell = Shell::new("Welcome", user.as_ref().map(viewer), Nav::None);
    Ok(html(StatusCode::OK, &shell, &content))
}

/// `GET /login`.
pub async fn login_page(app: &App, req: Request<Incoming>) -> Reply {
    if session_user(app, &req).await.is_some() {
        return Ok(redirect("/dashboard"));
    }
    Ok(html(StatusCode::OK, &Shell::new("Sign in", None, Nav::None), &pages::login("", &[])))
}

/// `POST /login`: a session cookie and the dashboard, or the form again with the error.
pub async fn login(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let email = form::field(&fields, "email").unwrap_or_default().to_owned();
    let password = form::field(&fields, "password").unwrap_or_default();
    crate::audit::target(email_target(&email));
    match app.accounts.login(&email, password, &ctx.peer.ip().to_string()).await {
        Ok((user, session)) => {
            crate::audit::actor(user.id);
            let mut res = redirect("/dashboard");
            set_session_cookie(app, &mut res, &session);
            Ok(res)
        }
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            let errors = [FieldError { field: None, message: e.message.to_string() }];
            let shell = Shell::new("Sign in", None, Nav::None);
            Ok(html(status_of(&e), &shell, &pages::login(&email, &errors)))
        }
    }
}

/// `GET /signup`.
pub async fn signup_page(app: &App, req: Request<Incoming>) -> Reply {
    if session_user(app, &req).await.is_some() {
        return Ok(redirect("/dashboard"));
    }
    let shell = Shell::new("Create an account", None, Nav::None);
    Ok(html(StatusCode::OK, &shell, &pages::signup("", "", &[])))
}

/// `POST /signup`: the account, signed in, then the dashboard.
pub async fn signup(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let email = form::field(&fields, "email").unwrap_or_default().to_owned();
    let password = form::field(&fields, "password").unwrap_or_default().to_owned();
    let full_name = form::field(&fields, "full_name").map(str::trim).filter(|n| !n.is_empty());
    let shell = Shell::new("Create an account", None, Nav::None);
    crate::audit::target(email_target(&email));
    let created = app.accounts.signup(&email, &password, full_name.map(str::to_owned)).await;
    if let Ok(user) = &created {
        crate::audit::actor(user.id);
    }
    if let Err(e) = created {
        let e = from_auth(ctx.request_id, e);
        let content = pages::signup(&email, full_name.unwrap_or_default(), &form_error(&e));
        return Ok(html(status_of(&e), &shell, &content));
    }
    if let (Ok(user), true) = (&created, app.accounts.verifies_email()) {
        super::recovery::start_verification(app, user.email.clone());
        let step = pages::VerifyStep::CheckMail(&user.email);
        let shell = Shell::new("Confirm your email address", None, Nav::None);
        return Ok(html(StatusCode::CREATED, &shell, &pages::verify_email(&step, &[])));
    }
    match app.accounts.login(&email, &password, &ctx.peer.ip().to_string()).await {
        Ok((_, session)) => {
            let mut res = redirect("/dashboard");
            set_session_cookie(app, &mut res, &session);
            Ok(res)
        }
        Err(_) => Ok(redirect("/login")),
    }
}

/// `POST /logout`.
pub async fn logout(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    if let Some(token) = session_token(&req) {
        app.accounts.logout(token).await.map_err(|e| from_auth(ctx.request_id, e))?;
    }
    let mut res = redirect("/");
    clear_session_cookie(app, &mut res);
    Ok(res)
}

/// The first instant of the range that ends today and spans `days` UTC days.
fn range_start(now: OffsetDateTime, days: u32) -> OffsetDateTime {
    let today = now.to_offset(time::UtcOffset::UTC).date().midnight().assume_utc();
    today - time::Duration::days(i64::from(days.max(1)) - 1)
}

/// Day statistics as one row per day from `from` to today, idle days at zero.
fn every_day(rows: &[gateway_usage::StatsRow], from: OffsetDateTime, days: u32) -> Vec<UsageRow> {
    (0..i64::from(days))
        .map(|i| {
            let day = (from + time::Duration::days(i)).date().to_string();
            rows.iter().find(|r| r.group == day).map_or_else(
                || UsageRow {
                    label: day.clone(),
                    requests: 0,
                    tokens: 0,
                    cost_micros: 0,
                    errors: 0,
                    p95_latency_ms: 0,
                },
                |r| usage_row(day.clone(), r),
            )
        })
        .collect()
}

fn usage_row(label: String, r: &gateway_usage::StatsRow) -> UsageRow {
    UsageRow {
        label,
        requests: r.requests,
        tokens: r.total_tokens,
        cost_micros: r.cost_micros,
        errors: r.errors,
        p95_latency_ms: r.p95_latency_ms,
    }
}

/// The signed-in user's statistics from `from` to now, grouped by `group_by`.
async fn stats_of(
    app: &App,
    user: &User,
    ctx: Ctx,
    from: OffsetDateTime,
    group_by: GroupBy,
) -> Result<Vec<gateway_usage::StatsRow>, ApiError> {
    let reader = Reader { user_id: user.id, role: user.role };
    let request = StatsRequest { user_id: None, from: Some(from), to: None, group_by };
    let page = app
        .usage_reader
        .stats(reader, request)
        .await
        .map_err(|e| crate::errors::internal(ctx.request_id, "reading statistics", &e))?;
    Ok(page.data)
}

/// `GET /dashboard`: the last 30 days' numbers and chart, the latest requests, the month
/// against the plan.
pub async fn overview(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    let now = OffsetDateTime::now_utc();
    let from = range_start(now, 30);
    let stats = stats_of(app, &user, ctx, from, GroupBy::Day).await?;
    let reader = Reader { user_id: user.id, role: user.role };
    let logs = app
        .usage_reader
        .logs(reader, LogsRequest { limit: Some(10), ..LogsRequest::default() })
        .await
        .map_err(|e| crate::errors::internal(ctx.request_id, "reading the log", &e))?;
    let summary = app
        .billing
        .summary(&user, now)
        .await
        .map_err(|e| crate::errors::from_billing(ctx.request_id, e))?;
    let has_keys = !app
        .accounts
        .list_keys(user.id)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?
        .is_empty();
    let sum = |f: &dyn Fn(&gateway_usage::StatsRow) -> u64| stats.iter().map(f).sum::<u64>();
    let o = Overview {
        range: "the last 30 days".to_owned(),
        requests: sum(&|r| r.requests),
        tokens: sum(&|r| r.total_tokens),
        cost_micros: stats.iter().map(|r| r.cost_micros).sum(),
        errors: sum(&|r| r.errors),
        plan: summary.plan.name.clone(),
        tokens_this_month: summary.tokens_used,
        included_tokens: summary.tokens_included,
        recent: log_rows(&logs.data),
        base_url: app.config.server.public_url.trim_end_matches('/').to_owned(),
        has_keys,
        daily: every_day(&stats, from, 30).into_iter().map(|r| (r.label, r.tokens)).collect(),
    };
    let shell = Shell::new("Overview", Some(viewer(&user)), Nav::Overview);
    Ok(html(StatusCode::OK, &shell, &pages::overview(&o)))
}

/// `GET /dashboard/usage?days=7|30|90`: the range by day, model and key.
pub async fn usage(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    let fields = form::parse(req.uri().query().unwrap_or_default().as_bytes());
    let days = form::field(&fields, "days")
        .and_then(|d| d.parse().ok())
        .filter(|d| pages::RANGES.contains(d))
        .unwrap_or(30);
    let from = range_start(OffsetDateTime::now_utc(), days);
    let by_day = stats_of(app, &user, ctx, from, GroupBy::Day).await?;
    let by_model = stats_of(app, &user, ctx, from, GroupBy::Model).await?;
    let by_key = stats_of(app, &user, ctx, from, GroupBy::Key).await?;
    let keys = app.accounts.list_keys(user.id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    let key_name = |group: &str| match keys.iter().find(|k| k.id.to_string() == group) {
        Some(k) => format!("{} ({}…)", k.name, k.key_prefix),
        None if group == "none" => "no key".to_owned(),
        None => "a revoked key".to_owned(),
    };
    let u = Usage {
        days,
        by_day: every_day(&by_day, from, days),
        by_model: by_model.iter().map(|r| usage_row(r.group.clone(), r)).collect(),
        by_key: by_key.iter().map(|r| usage_row(key_name(&r.group), r)).collect(),
    };
    let shell = Shell::new("Usage", Some(viewer(&user)), Nav::Usage);
    Ok(html(StatusCode::OK, &shell, &pages::usage(&u)))
}

fn key_rows(keys: &[gateway_core::ApiKeyMeta]) -> Vec<KeyRow> {
    keys.iter()
        .map(|k| {
            let o = &k.overrides;
            let limits = [
                ("RPM", o.rate_limit_rpm),
                ("TPM", o.rate_limit_tpm),
                ("a day", o.quota_daily),
                ("a month", o.quota_monthly),
            ]
            .iter()
            .filter_map(|(label, v)| v.map(|v| format!("{label} {}", gateway_web::thousands(v))))
            .collect::<Vec<_>>()
            .join(" · ");
            KeyRow {
                id: k.id.to_string(),
                name: k.name.clone(),
                prefix: k.key_prefix.clone(),
                scopes: k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                allowed_models: k.allowed_models.as_deref().unwrap_or_default().join(", "),
                limits,
                expires: k.expires_at.map(|t| t.date().to_string()),
                created: k.created_at.date().to_string(),
                last_used: k.last_used_at.map(|t| t.date().to_string()),
                active: k.is_active,
            }
        })
        .collect()
}

/// The keys page with a secret `shown` once, or the form back with its `errors`.
async fn keys_page(
    app: &App,
    user: &User,
    ctx: Ctx,
    status: StatusCode,
    shown: Option<&NewKeyShown>,
    form: &KeyForm,
    errors: &[FieldError],
) -> Reply {
    let keys = app.accounts.list_keys(user.id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    let plan = gateway_core::PlanSource::plan(app.plans.as_ref(), user.tier);
    let limits = PlanLimits {
        max_keys: plan.max_api_keys,
        rpm: plan.limits.rpm,
        tpm: plan.limits.tpm,
        daily: plan.limits.daily_tokens,
        monthly: plan.limits.monthly_tokens,
    };
    let content = pages::keys(&key_rows(&keys), shown, form, errors, limits);
    let shell = Shell::new("API keys", Some(viewer(user)), Nav::Keys);
    Ok(html(status, &shell, &content))
}

/// `GET /dashboard/keys`.
pub async fn keys(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    keys_page(app, &user, ctx, StatusCode::OK, None, &KeyForm::default(), &[]).await
}

/// The create form as typed, and the key it asks for (or the field that is wrong).
fn new_key_of(fields: &[(String, String)]) -> (KeyForm, Result<NewKey, FieldError>) {
    let text = |name: &str| form::field(fields, name).map(str::trim).unwrap_or_default().to_owned();
    let typed = KeyForm {
        name: text("name"),
        scopes: form::all(fields, "scopes").into_iter().map(str::to_owned).collect(),
        allowed_models: text("allowed_models"),
        expires: text("expires"),
        rpm: text("rate_limit_rpm"),
        tpm: text("rate_limit_tpm"),
        daily: text("quota_daily"),
        monthly: text("quota_monthly"),
    };
    let bad = |field: &str, message: &str| FieldError {
        field: Some(field.to_owned()),
        message: message.to_owned(),
    };
    let limit = |field: &str, value: &str| {
        if value.is_empty() {
            return Ok(None);
        }
        value
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad(field, "Enter a whole number, or leave it blank."))
    };
    let new = (|| {
        let scopes = typed
            .scopes
            .iter()
            .map(|s| {
                s.parse::<Scope>().map_err(|_| bad("scopes", "Choose from the scopes listed."))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(bad("scopes", "Choose at least one thing the key may call."));
        }
        let models: Vec<String> = typed
            .allowed_models
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        let expires_at = if typed.expires.is_empty() {
            None
        } else {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let day = time::Date::parse(&typed.expires, format)
                .map_err(|_| bad("expires_at", "Enter a date such as 2027-01-31."))?;
            Some(day.midnight().assume_utc())
        };
        Ok(NewKey {
            name: typed.name.clone(),
            scopes,
            allowed_models: (!models.is_empty()).then_some(models),
            expires_at,
            overrides: gateway_core::LimitOverrides {
                rate_limit_rpm: limit("rate_limit_rpm", &typed.rpm)?,
                rate_limit_tpm: limit("rate_limit_tpm", &typed.tpm)?,
                quota_daily: limit("quota_daily", &typed.daily)?,
                quota_monthly: limit("quota_monthly", &typed.monthly)?,
            },
        })
    })();
    (typed, new)
}

/// `POST /dashboard/keys`: a new key, shown once on the page that answers.
pub async fn create_key(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let (typed, new) = new_key_of(&fields);
    let new = match new {
        Ok(new) => new,
        Err(e) => {
            return keys_page(app, &user, ctx, StatusCode::BAD_REQUEST, None, &typed, &[e]).await;
        }
    };
    match app.accounts.create_key(user.id, new).await {
        Ok(issued) => {
            let shown =
                NewKeyShown { name: issued.meta.name.clone(), key: issued.key, rotated: None };
            keys_page(app, &user, ctx, StatusCode::CREATED, Some(&shown), &KeyForm::default(), &[])
                .await
        }
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            keys_page(app, &user, ctx, status_of(&e), None, &typed, &form_error(&e)).await
        }
    }
}

/// `POST /dashboard/keys/{id}/rotate`: a new secret for the key, shown once.
pub async fn rotate_key(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let Ok(id) = id.parse() else { return Ok(redirect("/dashboard/keys")) };
    match app.accounts.rotate_key(user.id, id).await {
        Ok(issued) => {
            let grace = app.config.auth.key_rotation_grace_secs;
            let old = if grace == 0 {
                "The old secret no longer works.".to_owned()
            } else {
                format!("The old secret keeps working for {grace} seconds, then stops.")
            };
            let shown =
                NewKeyShown { name: issued.meta.name.clone(), key: issued.key, rotated: Some(old) };
            keys_page(app, &user, ctx, StatusCode::OK, Some(&shown), &KeyForm::default(), &[]).await
        }
        Err(gateway_auth::AuthError::NotFound(_)) => Ok(redirect("/dashboard/keys")),
        Err(e) => Err(from_auth(ctx.request_id, e)),
    }
}

/// `POST /dashboard/keys/{id}/revoke`.
pub async fn revoke_key(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    if let Ok(id) = id.parse() {
        match app.accounts.revoke_key(user.id, id).await {
            Ok(()) | Err(gateway_auth::AuthError::NotFound(_)) => {}
            Err(e) => return Err(from_auth(ctx.request_id, e)),
        }
    }
    Ok(redirect("/dashboard/keys"))
}

/// The billing page for `user`, with `notice` after an action or the form's `errors`.
async fn billing_page(
    app: &App,
    user: &User,
    ctx: Ctx,
    status: StatusCode,
    notice: Option<String>,
    errors: &[FieldError],
) -> Reply {
    let now = OffsetDateTime::now_utc();
    let s = app
        .billing
        .summary(user, now)
        .await
        .map_err(|e| crate::errors::from_billing(ctx.request_id, e))?;
    let invoices = app
        .billing
        .invoices()
        .invoices(user.id)
        .await
        .map_err(|e| crate::errors::internal(ctx.request_id, "reading invoices", &e))?;
    let offers = app
        .payments
        .as_ref()
        .map(|p| {
            app.plans
                .all()
                .iter()
                .filter(|plan| {
                    plan.tier != user.tier && p.catalog().product_for(plan.tier).is_some()
                })
                .map(|plan| pages::Offer {
                    tier: plan.tier.to_string(),
                    name: plan.name.clone(),
                    price_micros: plan.price_monthly_micros,
                    included_tokens: plan.included_tokens,
                })
                .collect()
        })
        .unwrap_or_default();
    let b = pages::Billing {
        plan: s.plan.name.clone(),
        price_micros: s.plan.price_monthly_micros,
        period: s.period.to_string(),
        tokens_used: s.tokens_used,
        tokens_included: s.tokens_included,
        overage_tokens: s.overage_tokens,
        overage_micros: s.overage_micros,
        overage_rate_per_1k: s.plan.overage_micros_per_1k,
        cap_micros: s.overage_cap_micros,
        cap_is_default: s.overage_cap_is_default,
        max_cap_micros: s.plan.max_user_cap_micros(),
        ceiling_tokens: s.ceiling_tokens,
        credits_micros: s.credits_micros,
        estimated_total_micros: s.estimated_total_micros,
        past_due: s.past_due,
        offers,
        invoices: invoices
            .iter()
            .map(|i| pages::InvoiceRow {
                id: i.id.to_string(),
                number: i.number.clone(),
                period: i.period.to_string(),
                total_micros: i.total_micros,
                status: i.status.as_str().to_owned(),
            })
            .collect(),
        notice,
    };
    let shell = Shell::new("Billing", Some(viewer(user)), Nav::Billing);
    Ok(html(status, &shell, &pages::billing(&b, errors)))
}

/// `GET /dashboard/billing`.
pub async fn billing(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    billing_page(app, &user, ctx, StatusCode::OK, None, &[]).await
}

/// `POST /dashboard/billing/cap`.
pub async fn set_cap(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let Some(cap) = form::field(&fields, "cap").and_then(money::parse).filter(|c| *c >= 0) else {
        let errors = [FieldError {
            field: Some("overage_cap_micros".into()),
            message: "Enter an amount in dollars, such as 29.00.".into(),
        }];
        return billing_page(app, &user, ctx, StatusCode::BAD_REQUEST, None, &errors).await;
    };
    match app.accounts.set_overage_cap(user.id, Some(cap)).await {
        Ok(user) => {
            let notice = format!("Your spend cap is now {}.", gateway_web::usd(cap));
            billing_page(app, &user, ctx, StatusCode::OK, Some(notice), &[]).await
        }
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            billing_page(app, &user, ctx, status_of(&e), None, &form_error(&e)).await
        }
    }
}

/// `POST /dashboard/billing/redeem`.
pub async fn redeem(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let token = session_token(&req).map(str::to_owned);
    let fields = form::parse(&read_body(app, req).await?);
    let code = form::field(&fields, "code").unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    match app.billing.redeem(app.codes.as_ref(), code, user.id, now).await {
        Ok((entry, paid)) => {
            if !paid.is_empty() {
                gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user.id);
            }
            // The balance as it is now.
            let user = match &token {
                Some(t) => app.accounts.session_user(t).await.unwrap_or(user),
                None => user,
            };
            let notice = format!(
                "Code redeemed: {} of credits added.",
                gateway_web::usd(entry.amount_micros)
            );
            billing_page(app, &user, ctx, StatusCode::OK, Some(notice), &[]).await
        }
        Err(e) => {
            let e = crate::errors::from_billing(ctx.request_id, e);
            billing_page(app, &user, ctx, status_of(&e), None, &form_error(&e)).await
        }
    }
}

/// `POST /dashboard/billing/checkout`: off to the payment provider's checkout.
pub async fn checkout(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let tier = form::field(&fields, "tier").and_then(|t| t.parse().ok());
    let (Some(payments), Some(tier)) = (app.payments.as_ref(), tier) else {
        let errors =
            [FieldError { field: None, message: "Plans cannot be bought here right now.".into() }];
        return billing_page(app, &user, ctx, StatusCode::BAD_REQUEST, None, &errors).await;
    };
    let purchase = gateway_billing::payments::Purchase::Tier(tier);
    match payments.checkout(user.id, &user.email, user.tier, &purchase).await {
        Ok(url) => {
            let mut res = Response::new(ResBody::empty());
            *res.status_mut() = StatusCode::SEE_OTHER;
            let location = HeaderValue::from_str(&url)
                .map_err(|e| crate::errors::internal(ctx.request_id, "the checkout address", &e))?;
            res.headers_mut().insert(LOCATION, location);
            Ok(res)
        }
        Err(e) => {
            let e = crate::errors::from_payments(ctx.request_id, e);
            billing_page(app, &user, ctx, status_of(&e), None, &form_error(&e)).await
        }
    }
}

/// Requests as the pages list them.
fn log_rows(records: &[gateway_usage::UsageRecord]) -> Vec<LogRow> {
    records
        .iter()
        .map(|r| LogRow {
            when: format!(
                "{} {:02}:{:02}:{:02}",
                r.created_at.date(),
                r.created_at.hour(),
                r.created_at.minute(),
                r.created_at.second()
            ),
            model: r.model.clone(),
            status: r.status_code,
            total_tokens: r.total_tokens,
            cost_micros: r.cost_micros,
            latency_ms: r.latency_ms,
            request_id: r.request_id.to_string(),
        })
        .collect()
}

/// `GET /dashboard/logs?status=&model=&key=&cursor=`: 50 requests a page, newest first.
pub async fn logs(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    let fields = form::parse(req.uri().query().unwrap_or_default().as_bytes());
    let text =
        |name: &str| form::field(&fields, name).map(str::trim).unwrap_or_default().to_owned();
    let filters =
        pages::LogFilters { status: text("status"), model: text("model"), key: text("key") };
    let keys = app.accounts.list_keys(user.id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    let key_names: Vec<(String, String)> =
        keys.iter().map(|k| (k.id.to_string(), k.name.clone())).collect();
    let request = LogsRequest {
        cursor: Some(text("cursor")).filter(|c| !c.is_empty()),
        limit: Some(50),
        model: Some(filters.model.clone()).filter(|m| !m.is_empty()),
        key_id: filters.key.parse().ok(),
        status: match filters.status.as_str() {
            "success" => Some(gateway_usage::StatusFilter::Success),
            "error" => Some(gateway_usage::StatusFilter::Error),
            _ => None,
        },
        ..LogsRequest::default()
    };
    let reader = Reader { user_id: user.id, role: user.role };
    let shell = Shell::new("Request log", Some(viewer(&user)), Nav::Logs);
    match app.usage_reader.logs(reader, request).await {
        Ok(page) => {
            let content = pages::logs(
                &log_rows(&page.data),
                &filters,
                &key_names,
                page.next_cursor.as_deref(),
                None,
            );
            Ok(html(StatusCode::OK, &shell, &content))
        }
        Err(gateway_usage::read::ReadError::Invalid { param, message }) => {
            let error = format!("Invalid '{param}': {message}.");
            let content = pages::logs(&[], &filters, &key_names, None, Some(&error));
            Ok(html(StatusCode::BAD_REQUEST, &shell, &content))
        }
        Err(e) => Err(crate::errors::internal(ctx.request_id, "reading the log", &e)),
    }
}

/// The settings page.
fn settings_page(
    user: &User,
    status: StatusCode,
    notice: Option<&str>,
    errors: &[FieldError],
) -> Response<ResBody> {
    let content = pages::settings(
        user.full_name.as_deref().unwrap_or_default(),
        user.company_name.as_deref().unwrap_or_default(),
        notice,
        errors,
    );
    html(status, &Shell::new("Settings", Some(viewer(user)), Nav::Settings), &content)
}

/// `GET /dashboard/settings`.
pub async fn settings(app: &App, req: Request<Incoming>) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    Ok(settings_page(&user, StatusCode::OK, None, &[]))
}

/// `POST /dashboard/settings/profile`.
pub async fn save_profile(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let value = |name: &str| {
        Some(form::field(&fields, name).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned))
    };
    let update = gateway_auth::ProfileUpdate {
        full_name: value("full_name"),
        company_name: value("company_name"),
    };
    match app.accounts.update_profile(user.id, update).await {
        Ok(user) => Ok(settings_page(&user, StatusCode::OK, Some("Your profile is saved."), &[])),
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            Ok(settings_page(&user, status_of(&e), None, &form_error(&e)))
        }
    }
}

/// `POST /dashboard/settings/password`: a new password; every other session ends.
pub async fn change_password(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let current = form::field(&fields, "current_password").unwrap_or_default();
    let new = form::field(&fields, "new_password").unwrap_or_default();
    match app.accounts.change_password(user.id, current, new).await {
        Ok(session) => {
            let mut res = settings_page(
                &user,
                StatusCode::OK,
                Some("Your password is changed; every other browser is signed out."),
                &[],
            );
            set_session_cookie(app, &mut res, &session);
            Ok(res)
        }
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            let mut errors = form_error(&e);
            if let Some(err) = errors.first_mut().filter(|e| e.field.as_deref() == Some("password"))
            {
                err.field = Some("new_password".to_owned());
            }
            Ok(settings_page(&user, status_of(&e), None, &errors))
        }
    }
}

/// `POST /dashboard/settings/sign-out-everywhere`.
pub async fn sign_out_everywhere(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let Some(user) = session_user(app, &req).await else { return Ok(redirect("/login")) };
    check_origin(app, &req)?;
    app.accounts.sign_out_everywhere(user.id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    let mut res = redirect("/login");
    clear_session_cookie(app, &mut res);
    Ok(res)
}
