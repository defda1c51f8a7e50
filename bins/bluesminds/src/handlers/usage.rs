//! Usage endpoints: the caller's request log and statistics (an admin may pass `user_id`).

use gateway_core::{ApiError, ApiKeyId, ErrorKind, RequestId, Role, UserId};
use gateway_usage::{GroupBy, LogQuery, StatsQuery, StatusFilter};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::session::require_user;
use crate::app::App;
use crate::errors::internal;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// Decodes `%XX` and `+` in a query component.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query parameters, refusing unknown or repeated ones.
fn params<'a>(
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

fn get<'p>(params: &'p [(&str, String)], name: &str) -> Option<&'p str> {
    params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

fn bad(param: &'static str, message: &str) -> ApiError {
    ApiError::invalid_param(param, format!("Invalid '{param}': {message}."))
}

/// The user whose usage to read: the caller, or for an admin the `user_id` given.
async fn subject(
    app: &App,
    req: &Request<Incoming>,
    ctx: Ctx,
    params: &[(&str, String)],
) -> Result<UserId, ApiError> {
    let user = require_user(app, req, ctx).await?;
    match get(params, "user_id") {
        None => Ok(user.id),
        Some(_) if user.role != Role::Admin => Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "Only administrators may read another user's usage.",
        )
        .with_param("user_id")),
        Some(id) => id.parse().map_err(|_| bad("user_id", "must be a user id")),
    }
}

fn encode_cursor(t: OffsetDateTime, id: RequestId) -> String {
    format!("{}.{id}", t.unix_timestamp_nanos() / 1000)
}

fn decode_cursor(s: &str) -> Option<(OffsetDateTime, RequestId)> {
    let (micros, id) = s.split_once('.')?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros.parse::<i128>().ok()? * 1000).ok()?;
    Some((t, id.parse().ok()?))
}

pub async fn logs(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let p = params(&req, &["cursor", "limit", "model", "key_id", "status", "user_id"])?;
    let user_id = subject(app, &req, ctx, &p).await?;
    let limit = match get(&p, "limit") {
        None => 20,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| bad("limit", "must be 1 to 100"))?,
    };
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
    let before = get(&p, "cursor")
        .map(|v| decode_cursor(v).ok_or_else(|| bad("cursor", "is not a cursor of this API")))
        .transpose()?;
    let query = LogQuery {
        user_id,
        before,
        limit,
        model: get(&p, "model").map(str::to_owned),
        key_id,
        status,
    };
    let data = app
        .usage_queries
        .logs(&query)
        .await
        .map_err(|e| internal(ctx.request_id, "usage log query", &e))?;
    let next_cursor = (data.len() == limit as usize)
        .then(|| data.last().map(|r| encode_cursor(r.created_at, r.request_id)))
        .flatten();
    Ok(json(StatusCode::OK, &json!({"object": "list", "data": data, "next_cursor": next_cursor})))
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
    let user_id = subject(app, &req, ctx, &p).await?;
    let to = get(&p, "to")
        .map(|v| parse_time("to", v))
        .transpose()?
        .unwrap_or_else(OffsetDateTime::now_utc);
    let from = get(&p, "from")
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(bad("from", "must be before 'to'"));
    }
    if to - from > Duration::days(366) {
        return Err(bad("from", "the range may span at most 366 days"));
    }
    let group_by = match get(&p, "group_by").unwrap_or("day") {
        "day" => GroupBy::Day,
        "model" => GroupBy::Model,
        "key" => GroupBy::Key,
        _ => return Err(bad("group_by", "must be day, model or key")),
    };
    let data = app
        .usage_queries
        .stats(&StatsQuery { user_id, from, to, group_by })
        .await
        .map_err(|e| internal(ctx.request_id, "usage stats query", &e))?;
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &json!({
            "object": "list",
            "group_by": get(&p, "group_by").unwrap_or("day"),
            "from": fmt(from),
            "to": fmt(to),
            "data": data,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000).unwrap();
        let id = RequestId::new();
        assert_eq!(decode_cursor(&encode_cursor(t, id)), Some((t, id)));
        assert_eq!(decode_cursor("x' OR 1=1--"), None);
    }

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decode("gpt%2D4+turbo").as_deref(), Some("gpt-4 turbo"));
        assert_eq!(decode("%zz"), None);
    }
}
