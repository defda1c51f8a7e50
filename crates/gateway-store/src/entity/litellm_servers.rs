//! An upstream server of the pool, with its persisted health.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "litellm_servers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    #[sea_orm(unique)]
    pub base_url: String,
    pub api_key: Option<String>,
    pub priority: i32,
    pub weight: i32,
    pub max_concurrent_requests: Option<i32>,
    pub supported_models: Json,
    pub is_active: bool,
    pub health_status: String,
    pub last_health_check_at: Option<TimeDateTimeWithTimeZone>,
    pub last_latency_ms: Option<i32>,
    pub consecutive_failures: i32,
    pub total_requests: i64,
    pub total_errors: i64,
    pub created_at: TimeDateTimeWithTimeZone,
    pub updated_at: TimeDateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
