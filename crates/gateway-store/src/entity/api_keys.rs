//! An API key: its display prefix and the bcrypt hash of its secret, never the secret.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    #[sea_orm(unique)]
    pub key_prefix: String,
    pub key_hash: String,
    pub previous_key_hash: Option<String>,
    pub previous_key_expires_at: Option<TimeDateTimeWithTimeZone>,
    pub scopes: Json,
    pub allowed_models: Option<Json>,
    pub expires_at: Option<TimeDateTimeWithTimeZone>,
    pub rate_limit_rpm: Option<i64>,
    pub rate_limit_tpm: Option<i64>,
    pub quota_daily: Option<i64>,
    pub quota_monthly: Option<i64>,
    pub is_active: bool,
    pub last_used_at: Option<TimeDateTimeWithTimeZone>,
    pub created_at: TimeDateTimeWithTimeZone,
    pub updated_at: TimeDateTimeWithTimeZone,
    pub revoked_at: Option<TimeDateTimeWithTimeZone>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
