//! A model's price from a moment on, per million tokens, in micro-dollars.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "model_prices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub model: String,
    pub input_micros_per_million_tokens: i64,
    pub output_micros_per_million_tokens: i64,
    pub cached_input_micros_per_million_tokens: Option<i64>,
    pub cache_write_input_micros_per_million_tokens: Option<i64>,
    pub effective_from: TimeDateTimeWithTimeZone,
    pub created_at: TimeDateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
