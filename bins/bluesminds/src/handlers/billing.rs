//! Billing endpoints: plans, a user's bill so far, their spend cap, credits ledger and
//! invoices (with a printable view); for admins, plans, model prices, credits and closing a
//! month. The rules are [`gateway_billing`]'s; this module reads and writes JSON (and the one
//! HTML page of an invoice).

use gateway_billing::invoice::{BillingPeriod, Invoice, InvoiceStatus};
use gateway_billing::money::{thousands, usd};
use gateway_billing::{ModelPrice, PlanUpdate, Price, PriceChange};
use gateway_core::openai::List;
use gateway_core::{ApiError, ErrorKind, InvoiceId, LedgerEntryId, PriceId, Tier, UserId};
use http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::session::{require_admin, require_user};
use super::usage::params;
use super::{double_option, json_body};
use crate::app::App;
use crate::errors::{from_auth, from_billing, from_codes, from_prices, internal};
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// `GET /api/billing/plans`: every plan, cheapest first. Public: a pricing page needs it.
pub fn plans(app: &App) -> Response<ResBody> {
    let plans: Vec<_> = app.billing.plans.all().iter().map(|p| (**p).clone()).collect();
    json(StatusCode::OK, &List::new(plans))
}

/// `GET /api/billing/summary`: the caller's month so far.
pub async fn summary(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let summary = app
        .billing
        .summary(&user, OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &summary))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    /// The spend cap; `null` returns to the plan's price.
    #[serde(default, deserialize_with = "double_option")]
    overage_cap_micros: Option<Option<i64>>,
}

/// `PATCH /api/billing/settings`: the caller's spend cap.
pub async fn update_settings(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let input: SettingsBody = json_body(app, req).await?;
    let Some(cap) = input.overage_cap_micros else {
        return Err(ApiError::invalid_param(
            "overage_cap_micros",
            "Nothing to change: send 'overage_cap_micros' (micro-dollars, or null for your plan's price).",
        ));
    };
    let user = app
        .accounts
        .set_overage_cap(user.id, cap)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    let summary = app
        .billing
        .summary(&user, OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &summary))
}

/// `GET /api/billing/ledger?before=<entry id>&limit=<1..=200>`: the caller's credit entries,
/// newest first.
pub async fn ledger(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let mut before = None;
    let mut limit = 50;
    for (name, value) in params(&req, &["before", "limit"])? {
        match name {
            "before" => {
                let id: LedgerEntryId = value.parse().map_err(|_| {
                    ApiError::invalid_param("before", "'before' must be an entry id.")
                })?;
                before = Some(id);
            }
            _ => {
                limit = value.parse().ok().filter(|n| (1..=200).contains(n)).ok_or_else(|| {
                    ApiError::invalid_param("limit", "'limit' must be from 1 to 200.")
                })?;
            }
        }
    }
    let entries = app
        .billing
        .ledger()
        .entries(user.id, before, limit)
        .await
        .map_err(|e| internal(ctx.request_id, "reading the ledger", &e))?;
    let next = (entries.len() as u64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(json(
        StatusCode::OK,
        &json!({
            "object": "list",
            "balance_micros": user.credits_micros,
            "data": entries,
            "next_before": next,
        }),
    ))
}

/// `GET /api/billing/invoices`: the caller's invoices, newest first.
pub async fn invoices(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let all = app
        .billing
        .invoices()
        .invoices(user.id)
        .await
        .map_err(|e| internal(ctx.request_id, "reading invoices", &e))?;
    Ok(json(StatusCode::OK, &List::new(all)))
}

/// `GET /api/billing/invoices/{id}`: one of the caller's invoices as JSON, or as a printable
/// page with `?format=html` (or `Accept: text/html`). Anyone else's is not found.
pub async fn invoice(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let mut html = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    for (_, value) in params(&req, &["format"])? {
        html = match value.as_str() {
            "html" => true,
            "json" => false,
            _ => return Err(ApiError::invalid_param("format", "'format' is 'json' or 'html'.")),
        };
    }
    let id: InvoiceId = id.parse().map_err(|_| ApiError::not_found("invoice"))?;
    let found = app
        .billing
        .invoices()
        .invoice(id)
        .await
        .map_err(|e| internal(ctx.request_id, "reading an invoice", &e))?
        .filter(|i| i.user_id == user.id)
        .ok_or_else(|| ApiError::not_found("invoice"))?;
    if !html {
        return Ok(json(StatusCode::OK, &found));
    }
    let mut res = Response::new(ResBody::full(printable(&found, &user.email).into_bytes()));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    Ok(res)
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn date(t: OffsetDateTime) -> String {
    t.date().to_string()
}

/// The invoice as a page to print or save as PDF: no script, every value escaped.
fn printable(i: &Invoice, email: &str) -> String {
    use std::fmt::Write as _;
    let mut rows = String::new();
    for l in &i.lines {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            esc(&l.description),
            thousands(l.quantity.unsigned_abs()),
            esc(&usd(l.unit_micros)),
            esc(&usd(l.amount_micros)),
        );
    }
    let status = match i.status {
        InvoiceStatus::Open => format!("Open: {} due by {}", usd(i.total_micros), date(i.due_at)),
        InvoiceStatus::Paid => {
            format!("Paid{}", i.paid_at.map(|t| format!(" on {}", date(t))).unwrap_or_default())
        }
        InvoiceStatus::Void => "Void: nothing is owed".to_owned(),
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Invoice {number}</title>\
<meta name=viewport content=\"width=device-width, initial-scale=1\">\
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#111}}\
table{{width:100%;border-collapse:collapse;margin:1.5rem 0}}th,td{{text-align:left;padding:.4rem;border-bottom:1px solid #ddd}}\
.n{{text-align:right;font-variant-numeric:tabular-nums}}tfoot td{{font-weight:600;border:0}}\
.muted{{color:#555}}@media print{{body{{margin:0}}}}</style></head><body>\
<h1>Invoice {number}</h1><p class=muted>BluesMinds · billed to {email} · period {period} ({start} to {end}) · issued {issued}</p>\
<p><strong>{status}</strong></p>\
<table><thead><tr><th>Item</th><th class=n>Quantity</th><th class=n>Unit</th><th class=n>Amount</th></tr></thead>\
<tbody>{rows}</tbody><tfoot><tr><td colspan=3>Subtotal</td><td class=n>{subtotal}</td></tr>\
<tr><td colspan=3>Credits applied</td><td class=n>{credits}</td></tr>\
<tr><td colspan=3>Amount due</td><td class=n>{total}</td></tr></tfoot></table>\
<p class=muted>{used} tokens used this period, {included} included in the plan. Their cost at model prices: {cost}. \
Amounts are in US dollars; the exact figures are integer micro-dollars in this invoice's JSON.</p></body></html>",
        number = esc(&i.number),
        email = esc(email),
        period = i.period,
        start = i.period.start(),
        end = i.period.end().previous_day().unwrap_or(i.period.end()),
        issued = date(i.created_at),
        status = esc(&status),
        subtotal = esc(&usd(i.subtotal_micros)),
        credits = esc(&usd(-i.credits_applied_micros)),
        total = esc(&usd(i.total_micros)),
        used = thousands(i.charges.used_tokens),
        included = thousands(i.charges.terms.included_tokens),
        cost = esc(&usd(i.charges.usage_cost_micros)),
    )
}

/// `GET /api/admin/plans`.
pub async fn admin_plans(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    Ok(plans(app))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    name: Option<String>,
    price_monthly_micros: Option<i64>,
    included_tokens: Option<u64>,
    #[serde(default, deserialize_with = "double_option")]
    overage_micros_per_1k: Option<Option<i64>>,
    max_api_keys: Option<u32>,
    retention_days: Option<u32>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    daily_tokens: Option<u64>,
    monthly_tokens: Option<u64>,
}

/// `PATCH /api/admin/plans/{tier}`: applies at once to every user of the tier, on every
/// instance.
pub async fn admin_update_plan(app: &App, req: Request<Incoming>, ctx: Ctx, tier: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let tier: Tier = tier.parse().map_err(|_| ApiError::not_found("plan"))?;
    let b: PlanBody = json_body(app, req).await?;
    let update = PlanUpdate {
        name: b.name,
        price_monthly_micros: b.price_monthly_micros,
        included_tokens: b.included_tokens,
        overage_micros_per_1k: b.overage_micros_per_1k,
        max_api_keys: b.max_api_keys,
        retention_days: b.retention_days,
        rate_limit_rpm: b.rpm,
        rate_limit_tpm: b.tpm,
        quota_daily: b.daily_tokens,
        quota_monthly: b.monthly_tokens,
    };
    let plan = app.billing.plans.update(tier, &update).await.map_err(|e| match e {
        gateway_billing::UpdatePlanError::Invalid(e) => {
            ApiError::invalid_param(e.field, format!("Invalid '{}': {}.", e.field, e.reason))
        }
        gateway_billing::UpdatePlanError::Store(e) => internal(ctx.request_id, "saving a plan", &e),
    })?;
    app.invalidations.billing_changed();
    Ok(json(StatusCode::OK, &plan))
}

/// `GET /api/admin/model-prices?model=<name>`: every price over time, by model.
pub async fn admin_prices(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let model = params(&req, &["model"])?.pop().map(|(_, v)| v);
    let mut all = app
        .prices
        .store()
        .price_entries()
        .await
        .map_err(|e| internal(ctx.request_id, "reading prices", &e))?;
    if let Some(model) = model {
        all.retain(|p| p.model == model);
    }
    Ok(json(StatusCode::OK, &List::new(all)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    model: String,
    input_micros_per_million: i64,
    output_micros_per_million: i64,
    cached_input_micros_per_million: Option<i64>,
    cache_write_input_micros_per_million: Option<i64>,
    /// RFC 3339; default now.
    effective_from: Option<String>,
}

impl PriceBody {
    fn model_price(self, now: OffsetDateTime) -> Result<ModelPrice, ApiError> {
        let effective_from = match self.effective_from {
            Some(t) => OffsetDateTime::parse(&t, &Rfc3339).map_err(|_| {
                ApiError::invalid_param(
                    "effective_from",
                    "'effective_from' must be an RFC 3339 time.",
                )
            })?,
            None => now,
        };
        Ok(ModelPrice {
            model: self.model,
            price: Price {
                input: self.input_micros_per_million,
                output: self.output_micros_per_million,
                cached_input: self.cached_input_micros_per_million,
                cache_write_input: self.cache_write_input_micros_per_million,
            },
            effective_from,
        })
    }
}

/// What a price change did, as an answer.
fn price_reply(change: PriceChange, created: bool) -> Reply {
    match change {
        PriceChange::Done(entry) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json(status, &entry))
        }
        PriceChange::NotFound => Err(ApiError::not_found("model price")),
        PriceChange::InEffect => Err(ApiError::new(
            ErrorKind::Conflict,
            "This price applies already (or would from the time given): requests made at it keep it. Add a new price applying from now instead.",
        )),
        PriceChange::Taken => Err(ApiError::new(
            ErrorKind::Conflict,
            "The model already has a price from that moment.",
        )
        .with_param("effective_from")),
    }
}

/// `POST /api/admin/model-prices`: a price for a model from a moment on (default now).
pub async fn admin_add_price(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let now = OffsetDateTime::now_utc();
    let price = json_body::<PriceBody>(app, req).await?.model_price(now)?;
    let change = app.prices.add(&price, now).await.map_err(|e| from_prices(ctx.request_id, e))?;
    app.invalidations.billing_changed();
    price_reply(change, true)
}

/// `PATCH /api/admin/model-prices/{id}`: changes a price that does not apply yet.
pub async fn admin_update_price(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id: PriceId = id.parse().map_err(|_| ApiError::not_found("model price"))?;
    let now = OffsetDateTime::now_utc();
    let price = json_body::<PriceBody>(app, req).await?.model_price(now)?;
    let change =
        app.prices.change(id, &price, now).await.map_err(|e| from_prices(ctx.request_id, e))?;
    app.invalidations.billing_changed();
    price_reply(change, false)
}

/// `DELETE /api/admin/model-prices/{id}`: deletes a price that does not apply yet.
pub async fn admin_delete_price(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id: PriceId = id.parse().map_err(|_| ApiError::not_found("model price"))?;
    let change = app
        .prices
        .remove(id, OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_prices(ctx.request_id, e))?;
    app.invalidations.billing_changed();
    price_reply(change, false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    /// Positive grants, negative takes back (an adjustment).
    amount_micros: i64,
    reason: String,
    /// Unique for the user: a retried grant with the same reference is applied once.
    reference: String,
}

/// `POST /api/admin/users/{id}/credits`: grants (or, negative, adjusts) a user's credits;
/// credits granted pay the user's open invoices.
pub async fn admin_credits(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let admin = require_admin(app, &req, ctx).await?;
    let user: UserId = id.parse().map_err(|_| ApiError::not_found("user"))?;
    let b: CreditsBody = json_body(app, req).await?;
    let now = OffsetDateTime::now_utc();
    let moved = app
        .billing
        .grant_by_admin(user, b.amount_micros, &b.reason, &b.reference, now)
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    if !moved.paid.is_empty() {
        gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user);
    }
    tracing::info!(
        admin = %admin.id, user = %user, amount_micros = b.amount_micros,
        repeated = matches!(moved.appended, gateway_billing::ledger::Appended::Repeated(_)),
        "credits moved by an admin"
    );
    let status = match moved.appended {
        gateway_billing::ledger::Appended::New(_) => StatusCode::CREATED,
        gateway_billing::ledger::Appended::Repeated(_) => StatusCode::OK,
    };
    Ok(json(status, &json!({"entry": moved.appended.entry(), "paid_invoices": moved.paid})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    /// `YYYY-MM`; default the previous month.
    period: Option<String>,
    /// Close a month that has not ended (its later usage is then never billed).
    #[serde(default)]
    force: bool,
}

/// `POST /api/admin/billing/close-period`: closes a month now (default the previous one);
/// twice, it changes nothing.
pub async fn admin_close_period(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let body = crate::server::read_body(app, req).await?;
    let b: CloseBody = if body.is_empty() {
        CloseBody::default()
    } else {
        gateway_core::openai::parse_json(&body)?
    };
    let now = OffsetDateTime::now_utc();
    let period = match b.period {
        Some(p) => BillingPeriod::parse(&p)
            .map_err(|e| ApiError::invalid_param("period", format!("Invalid 'period': {e}.")))?,
        None => BillingPeriod::containing(now).previous(),
    };
    let report = app
        .billing
        .close_period(period, b.force, now)
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    for user in &report.open_users {
        gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), *user);
    }
    Ok(json(StatusCode::OK, &report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
}

/// `POST /api/billing/redeem` `{"code": "..."}`: adds the code's credits to the caller's
/// ledger (once per user and code; a single-use code goes to one user), and credits pay open
/// invoices.
pub async fn redeem(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let b: RedeemBody = json_body(app, req).await?;
    let now = OffsetDateTime::now_utc();
    let (entry, paid) = app
        .billing
        .redeem(app.codes.as_ref(), &b.code, user.id, now)
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    if !paid.is_empty() {
        gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user.id);
    }
    Ok(json(
        StatusCode::OK,
        &json!({"entry": entry, "balance_micros": entry.balance_after_micros, "paid_invoices": paid}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    /// Default: a random code.
    code: Option<String>,
    credits_micros: i64,
    #[serde(default = "one")]
    max_uses: u32,
    /// RFC 3339.
    expires_at: Option<String>,
}

fn one() -> u32 {
    1
}

/// `POST /api/admin/codes`: a code worth `credits_micros`, for `max_uses` users (default 1),
/// optionally expiring.
pub async fn admin_create_code(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let b: CodeBody = json_body(app, req).await?;
    let expires_at =
        b.expires_at.map(|t| OffsetDateTime::parse(&t, &Rfc3339)).transpose().map_err(|_| {
            ApiError::invalid_param("expires_at", "'expires_at' must be an RFC 3339 time.")
        })?;
    let now = OffsetDateTime::now_utc();
    let new = gateway_billing::codes::NewCode {
        code: b.code,
        credits_micros: b.credits_micros,
        max_uses: b.max_uses,
        expires_at,
    };
    let new =
        gateway_billing::codes::prepare(&new, now).map_err(|e| from_codes(ctx.request_id, e))?;
    let code = app.codes.create(&new, now).await.map_err(|e| from_codes(ctx.request_id, e))?;
    Ok(json(StatusCode::CREATED, &code))
}

/// `GET /api/admin/codes`: every code, newest first, with its uses.
pub async fn admin_codes(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let all = app.codes.list().await.map_err(|e| from_codes(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &List::new(all)))
}

/// `DELETE /api/admin/codes/{id}`: the code redeems no more (its uses stay in the ledgers).
pub async fn admin_revoke_code(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id: gateway_core::CodeId = id.parse().map_err(|_| ApiError::not_found("code"))?;
    let found = app
        .codes
        .revoke(id, OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_codes(ctx.request_id, e))?;
    if !found {
        return Err(ApiError::not_found("code"));
    }
    Ok(json(StatusCode::OK, &json!({"id": id, "revoked": true})))
}
