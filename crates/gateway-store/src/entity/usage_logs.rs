//! One gateway request's usage record (monthly partitions on Postgres).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_logs")]
#[allow(clippy::struct_excessive_bools)] // the table's boolean columns
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub created_at: TimeDateTimeWithTimeZone,
    pub user_id: Uuid,
    pub api_key_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    pub endpoint: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i32,
    pub upstream_latency_ms: Option<i32>,
    pub status_code: i16,
    pub is_error: bool,
    pub error_message: Option<String>,
    pub streamed: bool,
    pub client_disconnected: bool,
    pub usage_estimated: bool,
    /// The retention class of the row's plan, in days (the partition it lives in on Postgres).
    pub retention_days: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
