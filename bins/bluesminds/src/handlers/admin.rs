//! The admin server API: the upstream pool and its health. Admins only.

use gateway_balancer::{
    HealthRecord, ServerState, ServerStoreError, ServerUpdate, validate_server,
};
use gateway_core::openai::List;
use gateway_core::{ApiError, ErrorKind, HealthStatus, RequestId, ServerId, UpstreamServer};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::session::require_admin;
use super::{double_option, json_body};
use crate::app::App;
use crate::errors::internal;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// A server as the API shows it: the upstream key is write-only.
#[derive(Serialize)]
struct ServerBody<'a> {
    id: ServerId,
    name: &'a str,
    base_url: &'a str,
    has_api_key: bool,
    priority: u32,
    weight: u32,
    max_concurrent_requests: Option<u32>,
    supported_models: &'a [String],
    is_active: bool,
    health: HealthBody,
}

#[derive(Serialize)]
struct HealthBody {
    status: HealthStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    last_check_at: Option<time::OffsetDateTime>,
    latency_ms: Option<u32>,
    consecutive_failures: u32,
    in_flight: u32,
    circuit_open: bool,
    total_requests: u64,
    total_errors: u64,
}

fn health_of(
    state: Option<&ServerState>,
    record: Option<&HealthRecord>,
    server: &UpstreamServer,
) -> HealthBody {
    let last = state.and_then(ServerState::last_check).or_else(|| record.cloned());
    let (total_requests, total_errors) = state.map(ServerState::totals).unwrap_or_default();
    HealthBody {
        status: state.map_or(server.health, ServerState::health),
        last_check_at: last.as_ref().map(|r| r.checked_at),
        latency_ms: last.as_ref().and_then(|r| r.latency_ms),
        consecutive_failures: state.map_or(0, ServerState::consecutive_failures),
        in_flight: state.map_or(0, ServerState::in_flight),
        circuit_open: state.is_some_and(ServerState::circuit_open),
        total_requests,
        total_errors,
    }
}

fn body_of<'a>(
    app: &App,
    server: &'a UpstreamServer,
    record: Option<&HealthRecord>,
) -> ServerBody<'a> {
    let snapshot = app.pool.snapshot();
    let state = snapshot.iter().find(|s| s.server().id == server.id).map(AsRef::as_ref);
    ServerBody {
        id: server.id,
        name: &server.name,
        base_url: &server.base_url,
        has_api_key: server.api_key.is_some(),
        priority: server.priority,
        weight: server.weight,
        max_concurrent_requests: server.max_concurrent_requests,
        supported_models: &server.supported_models,
        is_active: server.is_active,
        health: health_of(state, record, server),
    }
}

fn store_err(request_id: RequestId, e: ServerStoreError) -> ApiError {
    match e {
        ServerStoreError::Conflict => {
            ApiError::new(ErrorKind::Conflict, "A server with this base_url already exists.")
                .with_param("base_url")
        }
        other => internal(request_id, "server store", &other),
    }
}

fn invalid(e: &gateway_balancer::InvalidServer) -> ApiError {
    ApiError::invalid_param(e.field, format!("Invalid '{}': {}.", e.field, e.message))
}

/// Applies a change everywhere: this instance's pool now, other instances through the bus.
async fn changed(app: &App, ctx: Ctx) -> Result<(), ApiError> {
    app.reload_pool().await.map_err(|e| store_err(ctx.request_id, e))?;
    app.invalidations.servers_changed();
    Ok(())
}

pub async fn list_servers(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let servers = app.servers.list_servers().await.map_err(|e| store_err(ctx.request_id, e))?;
    let records = app.servers.health_records().await.map_err(|e| store_err(ctx.request_id, e))?;
    let data: Vec<ServerBody<'_>> =
        servers.iter().map(|s| body_of(app, s, records.get(&s.id))).collect();
    Ok(json(StatusCode::OK, &List::new(data)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateServerBody {
    name: String,
    base_url: String,
    api_key: Option<String>,
    priority: Option<u32>,
    weight: Option<u32>,
    max_concurrent_requests: Option<u32>,
    supported_models: Option<Vec<String>>,
    is_active: Option<bool>,
}

pub async fn create_server(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let b: CreateServerBody = json_body(app, req).await?;
    let server = UpstreamServer {
        id: ServerId::new(),
        name: b.name.trim().to_owned(),
        base_url: b.base_url.trim().to_owned(),
        api_key: b.api_key.filter(|k| !k.is_empty()),
        priority: b.priority.unwrap_or(1),
        weight: b.weight.unwrap_or(1),
        max_concurrent_requests: b.max_concurrent_requests,
        supported_models: b.supported_models.unwrap_or_default(),
        is_active: b.is_active.unwrap_or(true),
        health: HealthStatus::Unknown,
    };
    validate_server(&server).map_err(|e| invalid(&e))?;
    app.servers.insert_server(server.clone()).await.map_err(|e| store_err(ctx.request_id, e))?;
    changed(app, ctx).await?;
    tracing::info!(server = %server.name, base_url = %server.base_url, "upstream server added");
    Ok(json(StatusCode::CREATED, &body_of(app, &server, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateServerBody {
    name: Option<String>,
    base_url: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    api_key: Option<Option<String>>,
    priority: Option<u32>,
    weight: Option<u32>,
    #[serde(default, deserialize_with = "double_option")]
    max_concurrent_requests: Option<Option<u32>>,
    supported_models: Option<Vec<String>>,
    is_active: Option<bool>,
}

fn server_id(id: &str) -> Result<ServerId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("server"))
}

pub async fn update_server(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id = server_id(id)?;
    let b: UpdateServerBody = json_body(app, req).await?;
    let update = ServerUpdate {
        name: b.name.map(|n| n.trim().to_owned()),
        base_url: b.base_url.map(|u| u.trim().to_owned()),
        api_key: b.api_key.map(|k| k.filter(|k| !k.is_empty())),
        priority: b.priority,
        weight: b.weight,
        max_concurrent_requests: b.max_concurrent_requests,
        supported_models: b.supported_models,
        is_active: b.is_active,
    };
    // Check the result before writing anything.
    let current = app.servers.list_servers().await.map_err(|e| store_err(ctx.request_id, e))?;
    let mut preview =
        current.into_iter().find(|s| s.id == id).ok_or_else(|| ApiError::not_found("server"))?;
    update.apply(&mut preview);
    validate_server(&preview).map_err(|e| invalid(&e))?;
    let server = app
        .servers
        .update_server(id, update)
        .await
        .map_err(|e| store_err(ctx.request_id, e))?
        .ok_or_else(|| ApiError::not_found("server"))?;
    changed(app, ctx).await?;
    Ok(json(StatusCode::OK, &body_of(app, &server, None)))
}

pub async fn delete_server(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id = server_id(id)?;
    if !app.servers.delete_server(id).await.map_err(|e| store_err(ctx.request_id, e))? {
        return Err(ApiError::not_found("server"));
    }
    changed(app, ctx).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({"id": id, "object": "server", "deleted": true})))
}

/// `GET /api/admin/health`: the state of every server as this instance sees it.
pub async fn health(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let records = app.servers.health_records().await.map_err(|e| store_err(ctx.request_id, e))?;
    let snapshot = app.pool.snapshot();
    let data: Vec<ServerBody<'_>> =
        snapshot.iter().map(|s| body_of(app, s.server(), records.get(&s.server().id))).collect();
    Ok(json(StatusCode::OK, &List::new(data)))
}

/// One server after a check, with why it failed if it did.
#[derive(Serialize)]
struct Checked<'a> {
    #[serde(flatten)]
    server: ServerBody<'a>,
    detail: Option<&'a str>,
}

/// `POST /api/admin/health`: check every server now and answer with the results.
pub async fn check_now(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    app.reload_pool().await.map_err(|e| store_err(ctx.request_id, e))?;
    let reports = crate::check_servers(app).await;
    let data: Vec<Checked<'_>> = reports
        .iter()
        .map(|r| Checked {
            server: body_of(app, &r.server, Some(&r.record)),
            detail: r.detail.as_deref(),
        })
        .collect();
    Ok(json(StatusCode::OK, &List::new(data)))
}
