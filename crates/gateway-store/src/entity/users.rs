//! A user account.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub email: String,
    pub password_hash: String,
    pub full_name: Option<String>,
    pub company_name: Option<String>,
    pub role: String,
    pub tier: String,
    pub status: String,
    pub credits_micros: i64,
    pub overage_cap_micros: Option<i64>,
    pub past_due_after: Option<TimeDateTimeWithTimeZone>,
    pub creem_customer_id: Option<String>,
    pub creem_subscription_id: Option<String>,
    pub subscription_ends_at: Option<TimeDateTimeWithTimeZone>,
    pub subscription_event_at: Option<i64>,
    /// Signed up under `email.verify_signups` and has not opened the mailed link yet.
    pub email_unverified: bool,
    /// When an administrator deleted the account (its `status` stays `suspended`).
    pub deleted_at: Option<TimeDateTimeWithTimeZone>,
    pub created_at: TimeDateTimeWithTimeZone,
    pub updated_at: TimeDateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
