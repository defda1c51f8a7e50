//! The admin server API: the upstream pool, its health and the model routes. Admins only. The
//! rules are [`gateway_balancer::ServerAdmin`]'s; this module reads and writes JSON.

use gateway_balancer::{
    AdminError, ModelRoute, NewRoute, NewServer, RouteTarget, RouteUpdate, ServerReport,
    ServerUpdate,
};
use gateway_core::openai::List;
use gateway_core::{ApiError, ErrorKind, HealthStatus, RequestId, RouteId, ServerId};
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
    /// After a check: why it failed, if it did.
    detail: Option<&'a str>,
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

fn body_of(r: &ServerReport) -> ServerBody<'_> {
    let (s, h) = (&r.server, &r.health);
    ServerBody {
        id: s.id,
        name: &s.name,
        base_url: &s.base_url,
        has_api_key: s.api_key.is_some(),
        priority: s.priority,
        weight: s.weight,
        max_concurrent_requests: s.max_concurrent_requests,
        supported_models: &s.supported_models,
        is_active: s.is_active,
        health: HealthBody {
            status: h.status,
            last_check_at: h.last_check_at,
            latency_ms: h.latency_ms,
            consecutive_failures: h.consecutive_failures,
            in_flight: h.in_flight,
            circuit_open: h.circuit_open,
            total_requests: h.total_requests,
            total_errors: h.total_errors,
        },
        detail: r.detail.as_deref(),
    }
}

fn list_of(reports: &[ServerReport]) -> Response<ResBody> {
    json(StatusCode::OK, &List::new(reports.iter().map(body_of).collect::<Vec<_>>()))
}

pub(super) fn admin_err(request_id: RequestId, e: AdminError) -> ApiError {
    match e {
        AdminError::Invalid(e) => {
            ApiError::invalid_param(e.field, format!("Invalid '{}': {}.", e.field, e.message))
        }
        AdminError::NotFound => ApiError::not_found("server"),
        AdminError::Conflict => {
            ApiError::new(ErrorKind::Conflict, "A server with this base_url already exists.")
                .with_param("base_url")
        }
        AdminError::InvalidRoute(e) => {
            ApiError::invalid_param(e.field, format!("Invalid '{}': {}.", e.field, e.message))
        }
        AdminError::RouteNotFound => ApiError::not_found("model route"),
        AdminError::RouteNameTaken => {
            ApiError::new(ErrorKind::Conflict, "A model route with this name already exists.")
                .with_param("name")
        }
        other => internal(request_id, "server administration", &other),
    }
}

pub async fn list_servers(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let reports = app.servers.list().await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(list_of(&reports))
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
    let new = NewServer {
        name: b.name,
        base_url: b.base_url,
        api_key: b.api_key,
        priority: b.priority,
        weight: b.weight,
        max_concurrent_requests: b.max_concurrent_requests,
        supported_models: b.supported_models,
        is_active: b.is_active,
    };
    let report = app.servers.create(new).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::CREATED, &body_of(&report)))
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
        name: b.name,
        base_url: b.base_url,
        api_key: b.api_key,
        priority: b.priority,
        weight: b.weight,
        max_concurrent_requests: b.max_concurrent_requests,
        supported_models: b.supported_models,
        is_active: b.is_active,
    };
    let report = app.servers.update(id, update).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &body_of(&report)))
}

pub async fn delete_server(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id = server_id(id)?;
    app.servers.delete(id).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &serde_json::json!({"id": id, "object": "server", "deleted": true})))
}

/// `GET /api/admin/health`: the state of every server as this instance sees it.
pub async fn health(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let reports = app.servers.health().await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(list_of(&reports))
}

/// `POST /api/admin/health`: check every server now and answer with the results.
pub async fn check_now(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let reports = app
        .servers
        .check_now(&app.prober, &app.health_config())
        .await
        .map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(list_of(&reports))
}

/// A model route as the API shows it.
#[derive(Serialize)]
struct RouteBody<'a> {
    id: RouteId,
    object: &'static str,
    name: &'a str,
    targets: &'a [RouteTarget],
    fallbacks: &'a [String],
    is_active: bool,
}

fn route_body(r: &ModelRoute) -> RouteBody<'_> {
    RouteBody {
        id: r.id,
        object: "model_route",
        name: &r.name,
        targets: &r.targets,
        fallbacks: &r.fallbacks,
        is_active: r.is_active,
    }
}

fn route_id(id: &str) -> Result<RouteId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("model route"))
}

/// `GET /api/admin/models`: every model route, active or not, in name order.
pub async fn list_routes(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let routes = app.servers.routes().await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &List::new(routes.iter().map(route_body).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRouteBody {
    name: String,
    targets: Vec<RouteTarget>,
    fallbacks: Option<Vec<String>>,
    is_active: Option<bool>,
}

/// `POST /api/admin/models`: a public model name, its targets and fallbacks.
pub async fn create_route(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    require_admin(app, &req, ctx).await?;
    let b: CreateRouteBody = json_body(app, req).await?;
    let new = NewRoute {
        name: b.name,
        targets: b.targets,
        fallbacks: b.fallbacks,
        is_active: b.is_active,
    };
    let route = app.servers.create_route(new).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::CREATED, &route_body(&route)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRouteBody {
    name: Option<String>,
    targets: Option<Vec<RouteTarget>>,
    fallbacks: Option<Vec<String>>,
    is_active: Option<bool>,
}

/// `PATCH /api/admin/models/{id}`.
pub async fn update_route(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id = route_id(id)?;
    let b: UpdateRouteBody = json_body(app, req).await?;
    let update = RouteUpdate {
        name: b.name,
        targets: b.targets,
        fallbacks: b.fallbacks,
        is_active: b.is_active,
    };
    let route =
        app.servers.update_route(id, update).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &route_body(&route)))
}

/// `DELETE /api/admin/models/{id}`.
pub async fn delete_route(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    require_admin(app, &req, ctx).await?;
    let id = route_id(id)?;
    app.servers.delete_route(id).await.map_err(|e| admin_err(ctx.request_id, e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"id": id, "object": "model_route", "deleted": true}),
    ))
}
