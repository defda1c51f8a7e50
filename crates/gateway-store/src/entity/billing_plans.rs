//! A subscription tier's plan: price, what it includes, overage, keys, retention and every
//! key's default limits (seeded by the migrations, edited by admins).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "billing_plans")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tier: String,
    pub name: String,
    pub price_monthly_micros: i64,
    pub rate_limit_rpm: i64,
    pub rate_limit_tpm: i64,
    pub quota_daily: i64,
    pub quota_monthly: i64,
    pub max_api_keys: i32,
    pub created_at: TimeDateTimeWithTimeZone,
    pub included_tokens: i64,
    pub overage_micros_per_1k: Option<i64>,
    pub retention_days: i32,
    pub updated_at: TimeDateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
