//! The audit log's read endpoints: `GET /api/admin/audit` (every entry, filtered, in pages) for
//! admins, and `GET /api/auth/activity` (the caller's own security events: what they did and
//! what was done to their account, failed sign-ins to their email included).

use gateway_auth::audit::{AuditQuery, Outcome};
use gateway_core::{ApiError, UserId};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::session::{require_admin, require_user};
use super::usage::{bad, get, page_limit, params};
use crate::app::App;
use crate::errors::internal;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

fn limit(p: &[(&str, String)]) -> Result<u32, ApiError> {
    page_limit(p, DEFAULT_LIMIT, MAX_LIMIT)
}

fn cursor(p: &[(&str, String)]) -> Result<Option<uuid::Uuid>, ApiError> {
    get(p, "cursor")
        .map(|c| {
            uuid::Uuid::parse_str(c).map_err(|_| bad("cursor", "not a cursor this endpoint gave"))
        })
        .transpose()
}

fn time_param(
    p: &[(&str, String)],
    name: &'static str,
) -> Result<Option<OffsetDateTime>, ApiError> {
    get(p, name)
        .map(|v| OffsetDateTime::parse(v, &Rfc3339).map_err(|_| bad(name, "an RFC 3339 time")))
        .transpose()
}

/// One page of entries, and the cursor of the next when the page is full.
async fn page(app: &App, ctx: Ctx, q: AuditQuery) -> Reply {
    let entries =
        app.audit.list(&q).await.map_err(|e| internal(ctx.request_id, "audit log query", &e))?;
    let next = (entries.len() == q.limit as usize)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(json(StatusCode::OK, &json!({"data": entries, "next_cursor": next})))
}

/// `GET /api/admin/audit?actor_id=&action=&target=&outcome=&since=&until=&cursor=&limit=`:
/// `action` matches a prefix (`auth.`, `admin.price`).
pub async fn admin(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(
        &req,
        &["actor_id", "action", "target", "outcome", "since", "until", "cursor", "limit"],
    )?;
    require_admin(app, &req, ctx).await?;
    let actor_id = get(&p, "actor_id")
        .map(|v| v.parse::<UserId>().map_err(|_| bad("actor_id", "not a user id")))
        .transpose()?;
    let outcome = get(&p, "outcome")
        .map(|v| Outcome::parse(v).ok_or_else(|| bad("outcome", "one of ok, refused, failed")))
        .transpose()?;
    let q = AuditQuery {
        actor_id,
        or_targets: Vec::new(),
        action_prefix: get(&p, "action").map(str::to_owned),
        target: get(&p, "target").map(str::to_owned),
        outcome,
        since: time_param(&p, "since")?,
        until: time_param(&p, "until")?,
        before: cursor(&p)?,
        limit: limit(&p)?,
    };
    page(app, ctx, q).await
}

/// `GET /api/auth/activity?cursor=&limit=`: the caller's own security events.
pub async fn activity(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["cursor", "limit"])?;
    let user = require_user(app, &req, ctx).await?;
    let q = AuditQuery {
        actor_id: Some(user.id),
        or_targets: vec![format!("email:{}", user.email), format!("user:{}", user.id)],
        before: cursor(&p)?,
        limit: limit(&p)?,
        ..AuditQuery::default()
    };
    page(app, ctx, q).await
}
