//! SQL adapter of the server pool's store (`litellm_servers`, `model_routes`).

use std::collections::HashMap;

use async_trait::async_trait;
use gateway_balancer::{
    HealthRecord, ModelRoute, RouteUpdate, ServerStore, ServerStoreError, ServerUpdate,
};
use gateway_core::{HealthStatus, RouteId, ServerId, UpstreamServer};
use sea_orm::{ActiveModelTrait, DbErr, EntityTrait, QueryOrder, Set, SqlErr};
use time::OffsetDateTime;

use crate::entity::{litellm_servers, model_routes};
use crate::{Store, StoreError};

/// Upstream servers in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlServerStore {
    store: Store,
}

impl SqlServerStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn db_err(e: DbErr) -> ServerStoreError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ServerStoreError::Conflict,
        _ => ServerStoreError::Store(Box::new(StoreError::Db(e))),
    }
}

/// A route's name is its one unique column besides the id.
fn route_err(e: DbErr) -> ServerStoreError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ServerStoreError::RouteNameTaken,
        _ => ServerStoreError::Store(Box::new(StoreError::Db(e))),
    }
}

fn route_from_row(row: model_routes::Model) -> Result<ModelRoute, ServerStoreError> {
    let bad = |e: serde_json::Error| {
        ServerStoreError::Store(Box::new(StoreError::Corrupt {
            table: "model_routes",
            detail: e.to_string(),
        }))
    };
    Ok(ModelRoute {
        id: RouteId(row.id),
        name: row.name,
        targets: serde_json::from_value(row.targets).map_err(bad)?,
        fallbacks: serde_json::from_value(row.fallbacks).map_err(bad)?,
        is_active: row.is_active,
    })
}

fn corrupt(detail: impl std::fmt::Display) -> ServerStoreError {
    ServerStoreError::Store(Box::new(StoreError::Corrupt {
        table: "litellm_servers",
        detail: detail.to_string(),
    }))
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn from_row(row: litellm_servers::Model) -> Result<UpstreamServer, ServerStoreError> {
    Ok(UpstreamServer {
        id: ServerId(row.id),
        name: row.name,
        base_url: row.base_url,
        api_key: row.api_key,
        priority: u32::try_from(row.priority).map_err(corrupt)?,
        weight: u32::try_from(row.weight).map_err(corrupt)?,
        max_concurrent_requests: row.max_concurrent_requests.map(|v| u32::try_from(v).unwrap_or(0)),
        supported_models: serde_json::from_value(row.supported_models).map_err(corrupt)?,
        is_active: row.is_active,
        health: row.health_status.parse::<HealthStatus>().map_err(corrupt)?,
    })
}

#[async_trait]
impl ServerStore for SqlServerStore {
    async fn list_servers(&self) -> Result<Vec<UpstreamServer>, ServerStoreError> {
        litellm_servers::Entity::find()
            .order_by_asc(litellm_servers::Column::CreatedAt)
            .order_by_asc(litellm_servers::Column::Id)
            .all(self.store.connection())
            .await
            .map_err(db_err)?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn get_server(&self, id: ServerId) -> Result<Option<UpstreamServer>, ServerStoreError> {
        litellm_servers::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(db_err)?
            .map(from_row)
            .transpose()
    }

    async fn insert_server(&self, s: UpstreamServer) -> Result<(), ServerStoreError> {
        let now = OffsetDateTime::now_utc();
        let row = litellm_servers::ActiveModel {
            id: Set(s.id.as_uuid()),
            name: Set(s.name),
            base_url: Set(s.base_url),
            api_key: Set(s.api_key),
            priority: Set(to_i32(s.priority)),
            weight: Set(to_i32(s.weight)),
            max_concurrent_requests: Set(s.max_concurrent_requests.map(to_i32)),
            supported_models: Set(serde_json::json!(s.supported_models)),
            is_active: Set(s.is_active),
            health_status: Set(s.health.as_str().to_owned()),
            last_health_check_at: Set(None),
            last_latency_ms: Set(None),
            consecutive_failures: Set(0),
            total_requests: Set(0),
            total_errors: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        litellm_servers::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn update_server(
        &self,
        id: ServerId,
        update: ServerUpdate,
    ) -> Result<Option<UpstreamServer>, ServerStoreError> {
        let Some(row) = litellm_servers::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mut server = from_row(row.clone())?;
        update.apply(&mut server);
        let mut active: litellm_servers::ActiveModel = row.into();
        active.name = Set(server.name.clone());
        active.base_url = Set(server.base_url.clone());
        active.api_key = Set(server.api_key.clone());
        active.priority = Set(to_i32(server.priority));
        active.weight = Set(to_i32(server.weight));
        active.max_concurrent_requests = Set(server.max_concurrent_requests.map(to_i32));
        active.supported_models = Set(serde_json::json!(server.supported_models));
        active.is_active = Set(server.is_active);
        active.updated_at = Set(OffsetDateTime::now_utc());
        active.update(self.store.connection()).await.map_err(db_err)?;
        Ok(Some(server))
    }

    async fn delete_server(&self, id: ServerId) -> Result<bool, ServerStoreError> {
        let res = litellm_servers::Entity::delete_by_id(id.as_uuid())
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected > 0)
    }

    async fn record_health(&self, id: ServerId, h: HealthRecord) -> Result<(), ServerStoreError> {
        let Some(row) = litellm_servers::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(db_err)?
        else {
            return Ok(());
        };
        let mut active: litellm_servers::ActiveModel = row.into();
        active.health_status = Set(h.status.as_str().to_owned());
        active.last_health_check_at = Set(Some(h.checked_at));
        active.last_latency_ms = Set(h.latency_ms.map(to_i32));
        active.consecutive_failures = Set(to_i32(h.consecutive_failures));
        active.total_requests = Set(i64::try_from(h.total_requests).unwrap_or(i64::MAX));
        active.total_errors = Set(i64::try_from(h.total_errors).unwrap_or(i64::MAX));
        active.update(self.store.connection()).await.map_err(db_err)?;
        Ok(())
    }

    async fn health_records(&self) -> Result<HashMap<ServerId, HealthRecord>, ServerStoreError> {
        let rows =
            litellm_servers::Entity::find().all(self.store.connection()).await.map_err(db_err)?;
        let mut out = HashMap::new();
        for row in rows {
            let Some(checked_at) = row.last_health_check_at else { continue };
            out.insert(
                ServerId(row.id),
                HealthRecord {
                    status: row.health_status.parse::<HealthStatus>().map_err(corrupt)?,
                    checked_at,
                    latency_ms: row.last_latency_ms.map(|v| u32::try_from(v).unwrap_or(0)),
                    consecutive_failures: u32::try_from(row.consecutive_failures).unwrap_or(0),
                    total_requests: u64::try_from(row.total_requests).unwrap_or(0),
                    total_errors: u64::try_from(row.total_errors).unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    async fn list_routes(&self) -> Result<Vec<ModelRoute>, ServerStoreError> {
        model_routes::Entity::find()
            .order_by_asc(model_routes::Column::Name)
            .all(self.store.connection())
            .await
            .map_err(db_err)?
            .into_iter()
            .map(route_from_row)
            .collect()
    }

    async fn insert_route(&self, r: ModelRoute) -> Result<(), ServerStoreError> {
        let now = OffsetDateTime::now_utc();
        let row = model_routes::ActiveModel {
            id: Set(r.id.as_uuid()),
            name: Set(r.name),
            targets: Set(serde_json::json!(r.targets)),
            fallbacks: Set(serde_json::json!(r.fallbacks)),
            is_active: Set(r.is_active),
            created_at: Set(now),
            updated_at: Set(now),
        };
        model_routes::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(route_err)?;
        Ok(())
    }

    async fn update_route(
        &self,
        id: RouteId,
        update: RouteUpdate,
    ) -> Result<Option<ModelRoute>, ServerStoreError> {
        let Some(row) = model_routes::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mut route = route_from_row(row.clone())?;
        update.apply(&mut route);
        let mut active: model_routes::ActiveModel = row.into();
        active.name = Set(route.name.clone());
        active.targets = Set(serde_json::json!(route.targets));
        active.fallbacks = Set(serde_json::json!(route.fallbacks));
        active.is_active = Set(route.is_active);
        active.updated_at = Set(OffsetDateTime::now_utc());
        active.update(self.store.connection()).await.map_err(route_err)?;
        Ok(Some(route))
    }

    async fn delete_route(&self, id: RouteId) -> Result<bool, ServerStoreError> {
        let res = model_routes::Entity::delete_by_id(id.as_uuid())
            .exec(self.store.connection())
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected > 0)
    }
}
