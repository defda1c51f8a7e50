//! Usage endpoints: the caller's request log and statistics (an admin may pass `user_id`). The
//! rules are [`gateway_usage::read`]'s; this module reads the query string and writes JSON.

use gateway_core::{ApiError, ApiKeyId, ErrorKind, RequestId};
use gateway_usage::read::{LogsRequest, ReadError, Reader, StatsRequest};
use gateway_usage::{GroupBy, StatusFilter};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::session::require_user;
use crate::app::App;
use crate::errors::internal;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// Decodes `%XX` and `+` in a query component (the form encoding, decoded in one place).
fn decode(s: &str) -> Option<String> {
    gateway_web::form::decode(s.as_bytes())
}

/// The query parameters, refusing unknown or repeated ones.
pub(super) fn params<'a>(
    req: &Request<Incoming>,
    allowed: &[&'a str],
) -> Result<Vec<(&'a str, String)>, ApiError> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k =
            decode(k).ok_or_else(|| ApiError::invalid_request("The query string is not valid."))?;
        let Some(name) = allowed.iter().find(|a| **a == k) else {
            return Err(
                ApiError::invalid_request(format!("Unknown query parameter '{k}'.")).with_param(k)
            );
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid_request(format!("'{k}' is given twice.")).with_param(k));
        }
        let v = decode(v).ok_or_else(|| {
            ApiError::invalid_request(format!("'{k}' is not valid.")).with_param(k.clone())
        })?;
        out.push((*name, v));
    }
    Ok(out)
}

pub(super) fn get<'p>(params: &'p [(&str, String)], name: &str) -> Option<&'p str> {
    params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

/// The `limit` parameter of a paged list: `default` when absent, else 1 to `max`.
pub(super) fn page_limit(p: &[(&str, String)], default: u32, max: u32) -> Result<u32, ApiError> {
    match get(p, "limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad("limit", &format!("a whole number from 1 to {max}"))),
    }
}

pub(super) fn bad(param: &'static str, message: &str) -> ApiError {
    ApiError::invalid_param(param, format!("Invalid '{param}': {message}."))
}

fn read_err(request_id: RequestId, e: ReadError) -> ApiError {
    match e {
        ReadError::Invalid { param, message } => bad(param, message),
        ReadError::NotYours => ApiError::new(
            ErrorKind::PermissionDenied,
            "Only administrators may read another user's usage.",
        )
        .with_param("user_id"),
        other => internal(request_id, "usage query", &other),
    }
}

async fn reader(app: &App, req: &Request<Incoming>, ctx: Ctx) -> Result<Reader, ApiError> {
    let user = require_user(app, req, ctx).await?;
    Ok(Reader { user_id: user.id, role: user.role })
}

pub async fn logs(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["cursor", "limit", "model", "key_id", "status", "user_id"])?;
    let reader = reader(app, &req, ctx).await?;
    let limit = get(&p, "limit")
        .map(|v| v.parse::<u32>().map_err(|_| bad("limit", "must be 1 to 100")))
        .transpose()?;
    let status = match get(&p, "status") {
        None => None,
        Some("success") => Some(StatusFilter::Success),
        Some("error") => Some(StatusFilter::Error),
        Some(v) => Some(StatusFilter::Code(
            v.parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| bad("status", "must be success, error or an HTTP status code"))?,
        )),
    };
    let key_id = get(&p, "key_id")
        .map(|v| v.parse::<ApiKeyId>().map_err(|_| bad("key_id", "must be a key id")))
        .transpose()?;
    let asked = LogsRequest {
        user_id: get(&p, "user_id").map(str::to_owned),
        cursor: get(&p, "cursor").map(str::to_owned),
        limit,
        model: get(&p, "model").map(str::to_owned),
        key_id,
        status,
    };
    let page =
        app.usage_reader.logs(reader, asked).await.map_err(|e| read_err(ctx.request_id, e))?;
    Ok(json(
        StatusCode::OK,
        &json!({"object": "list", "data": page.data, "next_cursor": page.next_cursor}),
    ))
}

fn parse_time(param: &'static str, v: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(v, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| bad(param, "must be a date (2026-11-01) or an RFC 3339 time"))
}

pub async fn stats(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["from", "to", "group_by", "user_id"])?;
    let reader = reader(app, &req, ctx).await?;
    let group_by_name = get(&p, "group_by").unwrap_or("day");
    let group_by = match group_by_name {
        "day" => GroupBy::Day,
        "model" => GroupBy::Model,
        "key" => GroupBy::Key,
        _ => return Err(bad("group_by", "must be day, model or key")),
    };
    let asked = StatsRequest {
        user_id: get(&p, "user_id").map(str::to_owned),
        from: get(&p, "from").map(|v| parse_time("from", v)).transpose()?,
        to: get(&p, "to").map(|v| parse_time("to", v)).transpose()?,
        group_by,
    };
    let page =
        app.usage_reader.stats(reader, asked).await.map_err(|e| read_err(ctx.request_id, e))?;
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &json!({
            "object": "list",
            "group_by": group_by_name,
            "from": fmt(page.from),
            "to": fmt(page.to),
            "data": page.data,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decode("gpt%2D4+turbo").as_deref(), Some("gpt-4 turbo"));
        assert_eq!(decode("%zz"), None);
    }
}
