//! Durable mirror of a key's daily or monthly token usage.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rate_limit_state")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub api_key_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub window_kind: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub window_start: TimeDate,
    pub used_tokens: i64,
    pub pending_tokens: i64,
    pub updated_at: TimeDateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
