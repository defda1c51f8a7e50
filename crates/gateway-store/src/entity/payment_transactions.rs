//! A payment attempt with an external provider.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_transactions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub invoice_id: Option<Uuid>,
    pub provider: String,
    #[sea_orm(unique)]
    pub provider_ref: Option<String>,
    pub amount_micros: i64,
    pub currency: String,
    pub status: String,
    pub created_at: TimeDateTimeWithTimeZone,
    pub updated_at: TimeDateTimeWithTimeZone,
    /// What it paid for (`tier:pro`, `credits:<pack>`, `invoice:<id>`).
    pub purpose: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
