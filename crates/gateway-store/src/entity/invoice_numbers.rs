//! The last invoice number given in a month (numbers are gapless per month).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invoice_numbers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub period_start: TimeDate,
    pub last_number: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
