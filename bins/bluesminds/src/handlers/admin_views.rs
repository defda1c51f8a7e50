//! The administrators' views of the platform as JSON: `GET /api/admin/users` (search by email,
//! filters by plan and status, pages), `DELETE /api/admin/users/{id}` (soft delete),
//! `GET /api/admin/keys` (every key, never a secret) and `GET /api/admin/stats` (totals by
//! day). The dashboard's admin pages show the same through their own forms.

use gateway_core::{ApiError, ApiKeyId, Tier, UserId, UserStatus};
use gateway_usage::read::Reader;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;
use time::{Date, OffsetDateTime};

use super::session::require_admin;
use super::usage::{bad, get, page_limit, params};
use crate::app::App;
use crate::errors::{from_auth, internal};
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

const DEFAULT_LIMIT: u32 = 50;
/// Most days one stats call covers.
const MAX_DAYS: i64 = 92;

fn limit(p: &[(&str, String)]) -> Result<u32, ApiError> {
    page_limit(p, DEFAULT_LIMIT, 100)
}

fn parsed<T: std::str::FromStr>(
    p: &[(&str, String)],
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ApiError> {
    get(p, name).map(|v| v.parse::<T>().map_err(|_| bad(name, expected))).transpose()
}

/// `GET /api/admin/users?q=&tier=&status=&cursor=&limit=`: accounts in email order; `q` is a
/// part of the email; `cursor` is the `next_cursor` of the page before.
pub async fn users(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["q", "tier", "status", "cursor", "limit"])?;
    require_admin(app, &req, ctx).await?;
    let tier: Option<Tier> = parsed(&p, "tier", "free, starter, pro or enterprise")?;
    let status: Option<UserStatus> = parsed(&p, "status", "active, suspended or deleted")?;
    let limit = limit(&p)?;
    let found = app
        .accounts
        .search_users(get(&p, "q").unwrap_or_default(), get(&p, "cursor"), (tier, status), limit)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    let next = (found.len() == limit as usize).then(|| found.last().map(|u| u.email.clone()));
    Ok(json(StatusCode::OK, &json!({"data": found, "next_cursor": next.flatten()})))
}

/// `DELETE /api/admin/users/{id}`: the account can no longer sign in, its keys are revoked and
/// its sessions ended at once on every instance; its usage, ledger and invoices stay.
pub async fn delete_user(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let admin = require_admin(app, &req, ctx).await?;
    let id: UserId = id.parse().map_err(|_| ApiError::not_found("user"))?;
    let user =
        app.accounts.delete_user(admin.id, id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &user))
}

/// `GET /api/admin/keys?user_id=&cursor=&limit=`: unrevoked keys of every user (or one), in id
/// order: names, prefixes, scopes, limits, last use; never a secret or its hash.
pub async fn keys(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["user_id", "cursor", "limit"])?;
    require_admin(app, &req, ctx).await?;
    let user: Option<UserId> = parsed(&p, "user_id", "a user id")?;
    let after: Option<ApiKeyId> = parsed(&p, "cursor", "a cursor this endpoint gave")?;
    let limit = limit(&p)?;
    let keys = app
        .accounts
        .all_keys(user, after, limit)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    let next = (keys.len() == limit as usize).then(|| keys.last().map(|k| k.id.to_string()));
    Ok(json(StatusCode::OK, &json!({"data": keys, "next_cursor": next.flatten()})))
}

/// One day of the platform.
#[derive(Debug, Default, Serialize)]
struct DayTotals {
    /// Empty for the total.
    #[serde(skip_serializing_if = "String::is_empty")]
    day: String,
    requests: u64,
    tokens: u64,
    errors: u64,
    /// Users with at least one request that day.
    active_users: u64,
    /// Payments received (net of refunds), in micro-dollars.
    revenue_micros: i64,
    /// What the day's requests cost at the upstreams' model prices.
    upstream_cost_micros: i64,
}

fn day_param(p: &[(&str, String)], name: &'static str) -> Result<Option<Date>, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    get(p, name)
        .map(|v| Date::parse(v, &format).map_err(|_| bad(name, "a day as YYYY-MM-DD")))
        .transpose()
}

/// `GET /api/admin/stats?from=YYYY-MM-DD&to=YYYY-MM-DD`: platform totals for each UTC day from
/// `from` to `to`, both included (default: the last 30 days, today included; at most 92).
pub async fn stats(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["from", "to"])?;
    let admin = require_admin(app, &req, ctx).await?;
    let today = OffsetDateTime::now_utc().date();
    let to = day_param(&p, "to")?.unwrap_or(today);
    let from = day_param(&p, "from")?.unwrap_or(to - time::Duration::days(29));
    if from > to {
        return Err(bad("from", "a day no later than `to`"));
    }
    if (to - from).whole_days() >= MAX_DAYS {
        return Err(bad("from", "at most 92 days before `to`"));
    }
    let reader = Reader { user_id: admin.id, role: admin.role };
    let mut days = Vec::new();
    let mut total = DayTotals::default();
    let mut day = from;
    while day <= to {
        let next = day.next_day().unwrap_or(day);
        let usage = app
            .usage_reader
            .platform(reader, day, next)
            .await
            .map_err(|e| internal(ctx.request_id, "platform usage", &e))?;
        let revenue = app
            .billing
            .invoices()
            .payments_received(day.midnight().assume_utc(), next.midnight().assume_utc())
            .await
            .map_err(|e| internal(ctx.request_id, "payments received", &e))?;
        total.requests += usage.requests;
        total.tokens += usage.tokens;
        total.errors += usage.errors;
        total.revenue_micros += revenue;
        total.upstream_cost_micros += usage.cost_micros;
        days.push(DayTotals {
            day: day.to_string(),
            requests: usage.requests,
            tokens: usage.tokens,
            errors: usage.errors,
            active_users: usage.users,
            revenue_micros: revenue,
            upstream_cost_micros: usage.cost_micros,
        });
        if next == day {
            break;
        }
        day = next;
    }
    // Users active in the whole range (not the sum of the days').
    let last = to.next_day().unwrap_or(to);
    total.active_users = app
        .usage_reader
        .platform(reader, from, last)
        .await
        .map_err(|e| internal(ctx.request_id, "platform usage", &e))?
        .users;
    Ok(json(StatusCode::OK, &json!({"data": days, "total": total})))
}
