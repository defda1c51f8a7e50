//! API-key endpoints, always scoped to the signed-in caller: another user's key id answers
//! 404 whatever the method.

use gateway_auth::{KeyUpdate, NewKey};
use gateway_core::openai::List;
use gateway_core::{ApiError, ApiKeyId, ApiKeyMeta, LimitOverrides, Scope};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::session::require_user;
use super::{double_option, json_body};
use crate::app::App;
use crate::errors::from_auth;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// A key with its full secret: only create and rotate answer this.
#[derive(Serialize)]
struct IssuedKeyBody<'a> {
    #[serde(flatten)]
    meta: &'a ApiKeyMeta,
    key: &'a str,
}

fn key_id(id: &str) -> Result<ApiKeyId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("API key"))
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    let s: Option<String> = Deserialize::deserialize(d)?;
    s.map(|s| {
        OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).map_err(|_| {
            serde::de::Error::custom(
                "expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
            )
        })
    })
    .transpose()
}

fn double_rfc3339<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<OffsetDateTime>>, D::Error> {
    rfc3339(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    scopes: Option<Vec<Scope>>,
    allowed_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "rfc3339")]
    expires_at: Option<OffsetDateTime>,
    rate_limit_rpm: Option<u64>,
    rate_limit_tpm: Option<u64>,
    quota_daily: Option<u64>,
    quota_monthly: Option<u64>,
}

pub async fn list(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let keys = app.accounts.list_keys(user.id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &List::new(keys)))
}

pub async fn create(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let input: CreateKeyBody = json_body(app, req).await?;
    let new = NewKey {
        name: input.name,
        // Without scopes, a key may call every gateway endpoint.
        scopes: input.scopes.unwrap_or_else(|| Scope::ALL.to_vec()),
        allowed_models: input.allowed_models,
        expires_at: input.expires_at,
        overrides: LimitOverrides {
            rate_limit_rpm: input.rate_limit_rpm,
            rate_limit_tpm: input.rate_limit_tpm,
            quota_daily: input.quota_daily,
            quota_monthly: input.quota_monthly,
        },
    };
    let issued =
        app.accounts.create_key(user.id, new).await.map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::CREATED, &IssuedKeyBody { meta: &issued.meta, key: &issued.key }))
}

pub async fn get(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let meta = app
        .accounts
        .get_key(user.id, key_id(id)?)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &meta))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKeyBody {
    name: Option<String>,
    scopes: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "double_option")]
    allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_rfc3339")]
    expires_at: Option<Option<OffsetDateTime>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_limit_rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_limit_tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    quota_daily: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    quota_monthly: Option<Option<u64>>,
    is_active: Option<bool>,
}

pub async fn update(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let id = key_id(id)?;
    let b: UpdateKeyBody = json_body(app, req).await?;
    let update = KeyUpdate {
        name: b.name,
        scopes: b.scopes,
        allowed_models: b.allowed_models,
        expires_at: b.expires_at,
        rate_limit_rpm: b.rate_limit_rpm,
        rate_limit_tpm: b.rate_limit_tpm,
        quota_daily: b.quota_daily,
        quota_monthly: b.quota_monthly,
        is_active: b.is_active,
    };
    let meta = app
        .accounts
        .update_key(user.id, id, update)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &meta))
}

pub async fn delete(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let id = key_id(id)?;
    app.accounts.revoke_key(user.id, id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &serde_json::json!({"id": id, "object": "api_key", "deleted": true})))
}

pub async fn rotate(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let id = key_id(id)?;
    let issued =
        app.accounts.rotate_key(user.id, id).await.map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &IssuedKeyBody { meta: &issued.meta, key: &issued.key }))
}
