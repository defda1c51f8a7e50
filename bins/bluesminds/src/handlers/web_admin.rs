//! The dashboard's admin pages (`/admin/...`): the same services as the admin JSON API,
//! rendered with [`gateway_web::pages::admin`]. Anyone but a signed-in administrator gets the
//! sign-in page (no session) or "not found" (a user), so the section does not announce itself.

use gateway_auth::AdminUserUpdate;
use gateway_balancer::{NewServer, ServerReport, ServerUpdate};
use gateway_billing::money;
use gateway_billing::{ModelPrice, PlanUpdate, Price, PriceChange};
use gateway_core::{ApiError, User, UserId};
use gateway_usage::read::Reader;
use gateway_web::pages::admin::{
    self, AdminOverview, CodeRow, PlanRow, PriceRow, ServerForm, ServerRow, UserRow,
};
use gateway_web::pages::{self, FieldError};
use gateway_web::{Nav, Shell, form};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use time::OffsetDateTime;

use super::admin::admin_err;
use super::session::check_origin;
use super::web::{form_error, html, redirect, session_user, status_of, viewer};
use crate::app::App;
use crate::errors::{from_auth, from_billing, from_codes, from_prices, internal};
use crate::http::ResBody;
use crate::server::{Ctx, read_body};

type Reply = Result<Response<ResBody>, ApiError>;

/// The administrator behind the request, or the page to answer instead.
async fn admin_or_page(app: &App, req: &Request<Incoming>) -> Result<User, Response<ResBody>> {
    match session_user(app, req).await {
        None => Err(redirect("/login")),
        Some(user) if user.role == gateway_core::Role::Admin => Ok(user),
        Some(user) => {
            let shell = Shell::new("Page not found", Some(viewer(&user)), Nav::None);
            Err(html(StatusCode::NOT_FOUND, &shell, &pages::not_found()))
        }
    }
}

fn page(
    admin: &User,
    title: &str,
    status: StatusCode,
    content: &gateway_web::Markup,
) -> Response<ResBody> {
    html(status, &Shell::new(title, Some(viewer(admin)), Nav::Admin), content)
}

/// A non-negative dollar amount typed in a form, in micro-dollars.
fn dollars(text: &str) -> Option<i64> {
    money::parse(text).filter(|m| *m >= 0)
}

fn bad(field: &str, message: &str) -> FieldError {
    FieldError { field: Some(field.to_owned()), message: message.to_owned() }
}

/// `GET /admin/...` and `HEAD`: `path` is the request path.
pub async fn get(app: &App, req: Request<Incoming>, ctx: Ctx, path: &str) -> Reply {
    let admin = match admin_or_page(app, &req).await {
        Ok(admin) => admin,
        Err(page) => return Ok(page),
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').skip(1).collect();
    let query = form::parse(req.uri().query().unwrap_or_default().as_bytes());
    match segs.as_slice() {
        [] => overview(app, &admin, ctx).await,
        ["servers"] => servers_page(app, &admin, ctx, None, &ServerForm::default(), &[]).await,
        ["servers", id] => server_edit_page(app, &admin, ctx, id, None, &[]).await,
        ["users"] => users_page(app, &admin, ctx, &query).await,
        ["users", id] => user_page(app, &admin, ctx, id, StatusCode::OK, None, &[]).await,
        ["plans"] => plans_page(app, &admin, ctx, StatusCode::OK, None, &[]).await,
        ["codes"] => codes_page(app, &admin, ctx, StatusCode::OK, None, &[]).await,
        _ => Ok(not_found(&admin)),
    }
}

/// `POST /admin/...`: every form of the section.
pub async fn post(app: &App, req: Request<Incoming>, ctx: Ctx, path: &str) -> Reply {
    let admin = match admin_or_page(app, &req).await {
        Ok(admin) => admin,
        Err(page) => return Ok(page),
    };
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let segs: Vec<&str> = path.trim_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["servers"] => create_server(app, &admin, ctx, &fields).await,
        ["servers", "check"] => check_servers(app, &admin, ctx).await,
        ["servers", id] => update_server(app, &admin, ctx, id, &fields).await,
        ["servers", id, action @ ("enable" | "disable" | "delete")] => {
            server_action(app, ctx, id, action).await
        }
        ["users", id] => update_user(app, &admin, ctx, id, &fields).await,
        ["users", id, "credits"] => grant_credits(app, &admin, ctx, id, &fields).await,
        ["plans", tier] => update_plan(app, &admin, ctx, tier, &fields).await,
        ["prices"] => add_price(app, &admin, ctx, &fields).await,
        ["prices", id, "delete"] => delete_price(app, &admin, ctx, id).await,
        ["codes"] => create_code(app, &admin, ctx, &fields).await,
        ["codes", id, "revoke"] => revoke_code(app, ctx, id).await,
        _ => Ok(not_found(&admin)),
    }
}

fn not_found(admin: &User) -> Response<ResBody> {
    page(admin, "Page not found", StatusCode::NOT_FOUND, &pages::not_found())
}

fn day_and_time(t: OffsetDateTime) -> String {
    format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute())
}

fn server_rows(reports: &[ServerReport]) -> Vec<ServerRow> {
    reports
        .iter()
        .map(|r| {
            let (s, h) = (&r.server, &r.health);
            ServerRow {
                id: s.id.to_string(),
                name: s.name.clone(),
                base_url: s.base_url.clone(),
                has_api_key: s.api_key.is_some(),
                priority: s.priority,
                weight: s.weight,
                max_concurrent: s.max_concurrent_requests,
                models: s.supported_models.join(", "),
                active: s.is_active,
                status: h.status.as_str().to_owned(),
                latency_ms: h.latency_ms,
                failures: h.consecutive_failures,
                circuit_open: h.circuit_open,
                in_flight: h.in_flight,
                last_check: h.last_check_at.map(day_and_time),
                requests: h.total_requests,
                errors: h.total_errors,
                detail: r.detail.clone(),
            }
        })
        .collect()
}

/// `GET /admin`: users, keys, today's traffic, the month's money, the servers.
async fn overview(app: &App, admin: &User, ctx: Ctx) -> Reply {
    let now = OffsetDateTime::now_utc();
    let today = now.date();
    let tomorrow = today.next_day().unwrap_or(today);
    let month = today.replace_day(1).unwrap_or(today);
    let reader = Reader { user_id: admin.id, role: admin.role };
    let read_err =
        |e: gateway_usage::read::ReadError| internal(ctx.request_id, "platform usage", &e);
    let day = app.usage_reader.platform(reader, today, tomorrow).await.map_err(read_err)?;
    let month_usage = app.usage_reader.platform(reader, month, tomorrow).await.map_err(read_err)?;
    let revenue = app
        .billing
        .invoices()
        .payments_received(month.midnight().assume_utc(), now)
        .await
        .map_err(|e| internal(ctx.request_id, "payments received", &e))?;
    let population = app.accounts.population().await.map_err(|e| from_auth(ctx.request_id, e))?;
    let servers = app.servers.health().await.map_err(|e| admin_err(ctx.request_id, e))?;
    let o = AdminOverview {
        users: population.users,
        active_keys: population.active_keys,
        requests_today: day.requests,
        tokens_today: day.tokens,
        errors_today: day.errors,
        active_users_today: day.users,
        month: format!("{}-{:02}", month.year(), u8::from(month.month())),
        revenue_micros: revenue,
        upstream_cost_micros: month_usage.cost_micros,
        servers: server_rows(&servers),
    };
    Ok(page(admin, "Administration", StatusCode::OK, &admin::overview(&o)))
}

async fn servers_page(
    app: &App,
    admin: &User,
    ctx: Ctx,
    checked: Option<Vec<ServerReport>>,
    form: &ServerForm,
    errors: &[FieldError],
) -> Reply {
    let note = checked.as_ref().map(|r| {
        let failed = r.iter().filter(|r| r.detail.is_some()).count();
        format!("Checked {} server(s) just now: {failed} failed.", r.len())
    });
    let reports = match checked {
        Some(r) => r,
        None => app.servers.health().await.map_err(|e| admin_err(ctx.request_id, e))?,
    };
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let content = admin::servers(&server_rows(&reports), form, note.as_deref(), errors);
    Ok(page(admin, "Servers", status, &content))
}

fn form_of(server: &gateway_core::UpstreamServer) -> ServerForm {
    ServerForm {
        name: server.name.clone(),
        base_url: server.base_url.clone(),
        priority: server.priority.to_string(),
        weight: server.weight.to_string(),
        max_concurrent: server.max_concurrent_requests.map(|m| m.to_string()).unwrap_or_default(),
        models: server.supported_models.join(", "),
    }
}

async fn server_edit_page(
    app: &App,
    admin: &User,
    ctx: Ctx,
    id: &str,
    typed: Option<&ServerForm>,
    errors: &[FieldError],
) -> Reply {
    let reports = app.servers.list().await.map_err(|e| admin_err(ctx.request_id, e))?;
    let Some(report) = reports.iter().find(|r| r.server.id.to_string() == *id) else {
        return Ok(not_found(admin));
    };
    let form = typed.cloned().unwrap_or_else(|| form_of(&report.server));
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    Ok(page(admin, "Edit server", status, &admin::server_edit(id, &form, errors)))
}

/// The server form as typed.
fn server_form(fields: &[(String, String)]) -> ServerForm {
    let text = |name: &str| form::field(fields, name).map(str::trim).unwrap_or_default().to_owned();
    ServerForm {
        name: text("name"),
        base_url: text("base_url"),
        priority: text("priority"),
        weight: text("weight"),
        max_concurrent: text("max_concurrent_requests"),
        models: text("supported_models"),
    }
}

/// A whole number typed in `field`, if any.
fn whole(field: &str, value: &str) -> Result<Option<u32>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| bad(field, "Enter a whole number, or leave it blank."))
}

/// A server's priority, weight and most requests at once, each optional.
type ServerNumbers = (Option<u32>, Option<u32>, Option<u32>);

/// The form's [`ServerNumbers`].
fn server_numbers(f: &ServerForm) -> Result<ServerNumbers, FieldError> {
    Ok((
        whole("priority", &f.priority)?,
        whole("weight", &f.weight)?,
        whole("max_concurrent_requests", &f.max_concurrent)?,
    ))
}

fn models_of(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect()
}

fn server_error(ctx: Ctx, e: gateway_balancer::AdminError) -> Result<Vec<FieldError>, ApiError> {
    let e = admin_err(ctx.request_id, e);
    if e.kind == gateway_core::ErrorKind::Internal {
        return Err(e);
    }
    Ok(form_error(&e))
}

async fn create_server(app: &App, admin: &User, ctx: Ctx, fields: &[(String, String)]) -> Reply {
    let typed = server_form(fields);
    let (priority, weight, max_concurrent_requests) = match server_numbers(&typed) {
        Ok(n) => n,
        Err(e) => return servers_page(app, admin, ctx, None, &typed, &[e]).await,
    };
    let api_key = form::field(fields, "api_key").map(str::trim).filter(|k| !k.is_empty());
    let models = models_of(&typed.models);
    let new = NewServer {
        name: typed.name.clone(),
        base_url: typed.base_url.clone(),
        api_key: api_key.map(str::to_owned),
        priority,
        weight,
        max_concurrent_requests,
        supported_models: (!models.is_empty()).then_some(models),
        is_active: Some(true),
    };
    match app.servers.create(new).await {
        Ok(_) => Ok(redirect("/admin/servers")),
        Err(e) => {
            let errors = server_error(ctx, e)?;
            servers_page(app, admin, ctx, None, &typed, &errors).await
        }
    }
}

async fn update_server(
    app: &App,
    admin: &User,
    ctx: Ctx,
    id: &str,
    fields: &[(String, String)],
) -> Reply {
    let Ok(server_id) = id.parse() else { return Ok(not_found(admin)) };
    let typed = server_form(fields);
    let (priority, weight, max_concurrent) = match server_numbers(&typed) {
        Ok(n) => n,
        Err(e) => return server_edit_page(app, admin, ctx, id, Some(&typed), &[e]).await,
    };
    let api_key = match (form::field(fields, "clear_api_key"), form::field(fields, "api_key")) {
        (Some(_), _) => Some(None),
        (None, Some(k)) if !k.trim().is_empty() => Some(Some(k.trim().to_owned())),
        _ => None,
    };
    let update = ServerUpdate {
        name: Some(typed.name.clone()),
        base_url: Some(typed.base_url.clone()),
        api_key,
        priority,
        weight,
        max_concurrent_requests: Some(max_concurrent),
        supported_models: Some(models_of(&typed.models)),
        is_active: None,
    };
    match app.servers.update(server_id, update).await {
        Ok(_) => Ok(redirect("/admin/servers")),
        Err(gateway_balancer::AdminError::NotFound) => Ok(not_found(admin)),
        Err(e) => {
            let errors = server_error(ctx, e)?;
            server_edit_page(app, admin, ctx, id, Some(&typed), &errors).await
        }
    }
}

async fn server_action(app: &App, ctx: Ctx, id: &str, action: &str) -> Reply {
    let Ok(id) = id.parse() else { return Ok(redirect("/admin/servers")) };
    let done = match action {
        "delete" => app.servers.delete(id).await,
        _ => {
            let update =
                ServerUpdate { is_active: Some(action == "enable"), ..ServerUpdate::default() };
            app.servers.update(id, update).await.map(|_| ())
        }
    };
    match done {
        Ok(()) | Err(gateway_balancer::AdminError::NotFound) => Ok(redirect("/admin/servers")),
        Err(e) => Err(admin_err(ctx.request_id, e)),
    }
}

async fn check_servers(app: &App, admin: &User, ctx: Ctx) -> Reply {
    let reports = app
        .servers
        .check_now(&app.prober, &app.health_config())
        .await
        .map_err(|e| admin_err(ctx.request_id, e))?;
    servers_page(app, admin, ctx, Some(reports), &ServerForm::default(), &[]).await
}

fn user_row(u: &User) -> UserRow {
    UserRow {
        id: u.id.to_string(),
        email: u.email.clone(),
        name: u.full_name.clone().unwrap_or_default(),
        tier: u.tier.as_str().to_owned(),
        role: u.role.as_str().to_owned(),
        status: u.status.as_str().to_owned(),
        credits_micros: u.credits_micros,
        created: u.created_at.date().to_string(),
    }
}

/// Users a page.
const USERS_PAGE: u32 = 50;

async fn users_page(app: &App, admin: &User, ctx: Ctx, query: &[(String, String)]) -> Reply {
    let q = form::field(query, "q").map(str::trim).unwrap_or_default();
    let after = form::field(query, "after").filter(|a| !a.is_empty());
    let (rows, next, error) =
        match app.accounts.search_users(q, after, (None, None), USERS_PAGE).await {
            Ok(found) => {
                let next = (found.len() == USERS_PAGE as usize)
                    .then(|| found.last().map(|u| u.email.clone()))
                    .flatten();
                (found.iter().map(user_row).collect(), next, None)
            }
            Err(gateway_auth::AuthError::Invalid { message, .. }) => {
                (Vec::new(), None, Some(format!("The search {message}.")))
            }
            Err(e) => return Err(from_auth(ctx.request_id, e)),
        };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let content = admin::users(&rows, q, next.as_deref(), error.as_deref());
    Ok(page(admin, "Users", status, &content))
}

async fn user_page(
    app: &App,
    admin: &User,
    ctx: Ctx,
    id: &str,
    status: StatusCode,
    note: Option<&str>,
    errors: &[FieldError],
) -> Reply {
    let Ok(id) = id.parse::<UserId>() else { return Ok(not_found(admin)) };
    let user = match app.accounts.user(id).await {
        Ok(user) => user,
        Err(gateway_auth::AuthError::NotFound(_)) => return Ok(not_found(admin)),
        Err(e) => return Err(from_auth(ctx.request_id, e)),
    };
    let tiers: Vec<(String, String)> =
        app.plans.all().iter().map(|p| (p.tier.as_str().to_owned(), p.name.clone())).collect();
    Ok(page(
        admin,
        &user.email,
        status,
        &admin::user(
            &user_row(&user),
            &tiers,
            &gateway_core::RequestId::new().to_string(),
            note,
            errors,
        ),
    ))
}

async fn update_user(
    app: &App,
    admin: &User,
    ctx: Ctx,
    id: &str,
    fields: &[(String, String)],
) -> Reply {
    let Ok(user_id) = id.parse::<UserId>() else { return Ok(not_found(admin)) };
    let pick = |name: &str| form::field(fields, name).unwrap_or_default();
    let parsed = (|| {
        Ok::<_, FieldError>(AdminUserUpdate {
            tier: Some(pick("tier").parse().map_err(|_| bad("tier", "Choose a plan."))?),
            role: Some(pick("role").parse().map_err(|_| bad("role", "Choose a role."))?),
            status: Some(pick("status").parse().map_err(|_| bad("status", "Choose a status."))?),
            overage_cap_micros: None,
        })
    })();
    let update = match parsed {
        Ok(u) => u,
        Err(e) => return user_page(app, admin, ctx, id, StatusCode::BAD_REQUEST, None, &[e]).await,
    };
    match app.accounts.admin_update_user(admin.id, user_id, update).await {
        Ok(_) => user_page(app, admin, ctx, id, StatusCode::OK, Some("Saved."), &[]).await,
        Err(gateway_auth::AuthError::NotFound(_)) => Ok(not_found(admin)),
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            user_page(app, admin, ctx, id, status_of(&e), None, &form_error(&e)).await
        }
    }
}

async fn grant_credits(
    app: &App,
    admin: &User,
    ctx: Ctx,
    id: &str,
    fields: &[(String, String)],
) -> Reply {
    let Ok(user_id) = id.parse::<UserId>() else { return Ok(not_found(admin)) };
    let amount = form::field(fields, "amount").and_then(money::parse).filter(|a| *a != 0);
    let reason = form::field(fields, "reason").map(str::trim).unwrap_or_default();
    let reference = form::field(fields, "reference").map(str::trim).unwrap_or_default();
    let error = match (amount, reason.is_empty(), reference.is_empty()) {
        (None, ..) => Some(bad("amount", "Enter an amount in dollars, such as 10 or -2.50.")),
        (_, true, _) => Some(bad("reason", "Say why: the user sees it in their ledger.")),
        (_, _, true) => Some(bad("amount", "Reload the page and try again.")),
        _ => None,
    };
    let (Some(amount), None) = (amount, error.clone()) else {
        let errors: Vec<FieldError> = error.into_iter().collect();
        return user_page(app, admin, ctx, id, StatusCode::BAD_REQUEST, None, &errors).await;
    };
    let now = OffsetDateTime::now_utc();
    match app.billing.grant_by_admin(user_id, amount, reason, reference, now).await {
        Ok(moved) => {
            if !moved.paid.is_empty() {
                gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user_id);
            }
            tracing::info!(admin = %admin.id, user = %user_id, amount_micros = amount, "credits moved by an admin");
            let note = match moved.appended {
                gateway_billing::ledger::Appended::New(_) => {
                    format!("{} of credits moved.", gateway_web::usd(amount))
                }
                gateway_billing::ledger::Appended::Repeated(_) => {
                    "This grant was made already; nothing changed.".to_owned()
                }
            };
            user_page(app, admin, ctx, id, StatusCode::OK, Some(&note), &[]).await
        }
        Err(e) => {
            let e = from_billing(ctx.request_id, e);
            let errors =
                [FieldError { field: Some("amount".into()), message: e.message.to_string() }];
            user_page(app, admin, ctx, id, status_of(&e), None, &errors).await
        }
    }
}

async fn plans_page(
    app: &App,
    admin: &User,
    ctx: Ctx,
    status: StatusCode,
    note: Option<&str>,
    errors: &[FieldError],
) -> Reply {
    let plans: Vec<PlanRow> = app
        .plans
        .all()
        .iter()
        .map(|p| PlanRow {
            tier: p.tier.as_str().to_owned(),
            name: p.name.clone(),
            price_micros: p.price_monthly_micros,
            included_tokens: p.included_tokens,
            overage_per_1k_micros: p.overage_micros_per_1k,
            max_keys: p.max_api_keys,
            retention_days: p.retention_days,
            rpm: p.limits.rpm,
            tpm: p.limits.tpm,
            daily: p.limits.daily_tokens,
            monthly: p.limits.monthly_tokens,
        })
        .collect();
    let now = OffsetDateTime::now_utc();
    let mut entries = app
        .prices
        .store()
        .price_entries()
        .await
        .map_err(|e| internal(ctx.request_id, "reading prices", &e))?;
    entries.sort_by(|a, b| a.model.cmp(&b.model).then(b.effective_from.cmp(&a.effective_from)));
    let prices: Vec<PriceRow> = entries
        .iter()
        .map(|p| PriceRow {
            id: p.id.to_string(),
            model: p.model.clone(),
            input_micros: p.input_micros_per_million,
            output_micros: p.output_micros_per_million,
            cached_micros: p.cached_input_micros_per_million,
            cache_write_micros: p.cache_write_input_micros_per_million,
            effective_from: day_and_time(p.effective_from),
            future: p.effective_from > now,
        })
        .collect();
    Ok(page(admin, "Plans and prices", status, &admin::plans(&plans, &prices, note, errors)))
}

async fn update_plan(
    app: &App,
    admin: &User,
    ctx: Ctx,
    tier: &str,
    fields: &[(String, String)],
) -> Reply {
    let Ok(tier) = tier.parse::<gateway_core::Tier>() else { return Ok(not_found(admin)) };
    let text = |name: &str| form::field(fields, name).map(str::trim).unwrap_or_default();
    let number = |name: &str| {
        text(name)
            .parse::<u64>()
            .map_err(|_| bad(name, &format!("'{name}' must be a whole number.")))
    };
    let parsed = (|| {
        let overage = match text("overage") {
            "" => None,
            t => Some(dollars(t).ok_or_else(|| {
                bad("overage", "Enter dollars per 1K tokens, or leave it blank for a hard stop.")
            })?),
        };
        Ok::<_, FieldError>(PlanUpdate {
            name: Some(text("name").to_owned()),
            price_monthly_micros: Some(
                dollars(text("price"))
                    .ok_or_else(|| bad("price", "Enter the price in dollars, such as 29."))?,
            ),
            included_tokens: Some(number("included_tokens")?),
            overage_micros_per_1k: Some(overage),
            max_api_keys: Some(u32::try_from(number("max_api_keys")?).unwrap_or(u32::MAX)),
            retention_days: Some(u32::try_from(number("retention_days")?).unwrap_or(u32::MAX)),
            rate_limit_rpm: Some(number("rpm")?),
            rate_limit_tpm: Some(number("tpm")?),
            quota_daily: Some(number("daily_tokens")?),
            quota_monthly: Some(number("monthly_tokens")?),
        })
    })();
    let update = match parsed {
        Ok(u) => u,
        Err(e) => return plans_page(app, admin, ctx, StatusCode::BAD_REQUEST, None, &[e]).await,
    };
    match app.billing.plans.update(tier, &update).await {
        Ok(plan) => {
            app.invalidations.billing_changed();
            let note = format!("The {} plan is saved; it applies now.", plan.name);
            plans_page(app, admin, ctx, StatusCode::OK, Some(&note), &[]).await
        }
        Err(gateway_billing::UpdatePlanError::Invalid(e)) => {
            let error = FieldError {
                field: None,
                message: format!("Invalid '{}': {}.", e.field, e.reason),
            };
            plans_page(app, admin, ctx, StatusCode::BAD_REQUEST, None, &[error]).await
        }
        Err(gateway_billing::UpdatePlanError::Store(e)) => {
            Err(internal(ctx.request_id, "saving a plan", &e))
        }
    }
}

async fn add_price(app: &App, admin: &User, ctx: Ctx, fields: &[(String, String)]) -> Reply {
    let text = |name: &str| form::field(fields, name).map(str::trim).unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    let money = |name: &str| {
        dollars(text(name))
            .ok_or_else(|| bad(name, "Enter dollars per million tokens, such as 2.50."))
    };
    let parsed = (|| {
        let optional = |name: &str| {
            if text(name).is_empty() { Ok(None) } else { money(name).map(Some) }
        };
        let (cached, cache_write) = (optional("cached")?, optional("cache_write")?);
        let effective_from = match text("effective_from") {
            "" => now,
            t => {
                let format =
                    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
                time::PrimitiveDateTime::parse(t, format)
                    .map_err(|_| {
                        bad("effective_from", "Enter a date and time, or leave it blank for now.")
                    })?
                    .assume_utc()
            }
        };
        Ok::<_, FieldError>(ModelPrice {
            model: text("model").to_owned(),
            price: Price {
                input: money("input")?,
                output: money("output")?,
                cached_input: cached,
                cache_write_input: cache_write,
            },
            effective_from,
        })
    })();
    let price = match parsed {
        Ok(p) => p,
        Err(e) => return plans_page(app, admin, ctx, StatusCode::BAD_REQUEST, None, &[e]).await,
    };
    let change = app.prices.add(&price, now).await;
    let error = match change {
        Ok(PriceChange::Done(_)) => {
            app.invalidations.billing_changed();
            let note = format!("A price for {} is added.", price.model);
            return plans_page(app, admin, ctx, StatusCode::OK, Some(&note), &[]).await;
        }
        Ok(PriceChange::Taken) => {
            bad("effective_from", "The model already has a price from that moment.")
        }
        Ok(PriceChange::InEffect | PriceChange::NotFound) => {
            FieldError { field: None, message: "That price cannot be added.".into() }
        }
        Err(e) => {
            let e = from_prices(ctx.request_id, e);
            if e.kind == gateway_core::ErrorKind::Internal {
                return Err(e);
            }
            form_error(&e).remove(0)
        }
    };
    plans_page(app, admin, ctx, StatusCode::BAD_REQUEST, None, &[error]).await
}

async fn delete_price(app: &App, admin: &User, ctx: Ctx, id: &str) -> Reply {
    let Ok(id) = id.parse() else { return Ok(redirect("/admin/plans")) };
    match app.prices.remove(id, OffsetDateTime::now_utc()).await {
        Ok(PriceChange::Done(_)) => {
            app.invalidations.billing_changed();
            Ok(redirect("/admin/plans"))
        }
        Ok(PriceChange::InEffect) => {
            let e = FieldError {
                field: None,
                message: "That price is in effect now: it stays.".into(),
            };
            plans_page(app, admin, ctx, StatusCode::CONFLICT, None, &[e]).await
        }
        Ok(_) => Ok(redirect("/admin/plans")),
        Err(e) => Err(from_prices(ctx.request_id, e)),
    }
}

async fn codes_page(
    app: &App,
    admin: &User,
    ctx: Ctx,
    status: StatusCode,
    note: Option<&str>,
    errors: &[FieldError],
) -> Reply {
    let all = app.codes.list().await.map_err(|e| from_codes(ctx.request_id, e))?;
    let rows: Vec<CodeRow> = all
        .iter()
        .map(|c| CodeRow {
            id: c.id.to_string(),
            code: c.code.clone(),
            credits_micros: c.credits_micros,
            uses: c.uses,
            max_uses: c.max_uses,
            expires: c.expires_at.map(|t| t.date().to_string()),
            revoked: c.revoked,
            created: c.created_at.date().to_string(),
        })
        .collect();
    Ok(page(admin, "Redemption codes", status, &admin::codes(&rows, note, errors)))
}

async fn create_code(app: &App, admin: &User, ctx: Ctx, fields: &[(String, String)]) -> Reply {
    let text = |name: &str| form::field(fields, name).map(str::trim).unwrap_or_default();
    let parsed = (|| {
        let credits = dollars(text("credits"))
            .ok_or_else(|| bad("credits", "Enter the credits in dollars, such as 10."))?;
        let max_uses =
            text("max_uses").parse().map_err(|_| bad("max_uses", "Enter a whole number."))?;
        let expires_at = match text("expires") {
            "" => None,
            t => {
                let format = time::macros::format_description!("[year]-[month]-[day]");
                let day = time::Date::parse(t, format)
                    .map_err(|_| bad("expires", "Enter a date such as 2027-01-31."))?;
                Some(day.midnight().assume_utc())
            }
        };
        Ok::<_, FieldError>(gateway_billing::codes::NewCode {
            code: Some(text("code").to_owned()).filter(|c| !c.is_empty()),
            credits_micros: credits,
            max_uses,
            expires_at,
        })
    })();
    let now = OffsetDateTime::now_utc();
    let created = match parsed {
        Ok(new) => match gateway_billing::codes::prepare(&new, now) {
            Ok(new) => app.codes.create(&new, now).await,
            Err(e) => Err(e),
        },
        Err(e) => return codes_page(app, admin, ctx, StatusCode::BAD_REQUEST, None, &[e]).await,
    };
    match created {
        Ok(code) => {
            let note = format!(
                "Code {} created: {} of credits.",
                code.code,
                gateway_web::usd(code.credits_micros)
            );
            codes_page(app, admin, ctx, StatusCode::CREATED, Some(&note), &[]).await
        }
        Err(e) => {
            let e = from_codes(ctx.request_id, e);
            if e.kind == gateway_core::ErrorKind::Internal {
                return Err(e);
            }
            codes_page(app, admin, ctx, status_of(&e), None, &form_error(&e)).await
        }
    }
}

async fn revoke_code(app: &App, ctx: Ctx, id: &str) -> Reply {
    if let Ok(id) = id.parse() {
        app.codes
            .revoke(id, OffsetDateTime::now_utc())
            .await
            .map_err(|e| from_codes(ctx.request_id, e))?;
    }
    Ok(redirect("/admin/codes"))
}
