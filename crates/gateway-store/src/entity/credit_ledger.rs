//! One movement of a user's prepaid credits; the balance after it is kept for audit.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_ledger")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub amount_micros: i64,
    pub balance_after_micros: i64,
    pub reason: String,
    /// Unique for the user: the same reference is the same operation.
    pub reference: String,
    pub created_at: TimeDateTimeWithTimeZone,
    pub kind: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
