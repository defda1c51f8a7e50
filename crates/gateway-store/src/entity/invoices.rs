//! A monthly invoice, with the plan terms it was computed with.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invoices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub period_start: TimeDate,
    pub period_end: TimeDate,
    /// The plan fee.
    pub subscription_micros: i64,
    /// The overage.
    pub usage_micros: i64,
    pub credits_applied_micros: i64,
    /// Left to pay.
    pub total_micros: i64,
    pub status: String,
    pub created_at: TimeDateTimeWithTimeZone,
    pub paid_at: Option<TimeDateTimeWithTimeZone>,
    pub number: Option<String>,
    pub tier: Option<String>,
    pub included_tokens: i64,
    pub overage_micros_per_1k: Option<i64>,
    pub used_tokens: i64,
    pub overage_tokens: i64,
    pub usage_cost_micros: i64,
    pub due_at: Option<TimeDateTimeWithTimeZone>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
