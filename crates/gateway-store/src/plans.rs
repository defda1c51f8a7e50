//! SQL adapter of the billing's plan store (`billing_plans`).

use async_trait::async_trait;
use gateway_billing::{PlanStore, PlanStoreError};
use gateway_core::{Limits, Plan, Tier};
use sea_orm::sea_query::OnConflict;
use sea_orm::{DbErr, EntityTrait, Set};
use time::OffsetDateTime;

use crate::entity::billing_plans::{self, Column};
use crate::{Store, StoreError};

/// Plans in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlPlanStore {
    store: Store,
}

impl SqlPlanStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: DbErr) -> PlanStoreError {
    PlanStoreError::Store(Box::new(StoreError::Db(e)))
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn plan_from_row(r: billing_plans::Model) -> Result<Plan, PlanStoreError> {
    let tier: Tier = r.tier.parse().map_err(|e| PlanStoreError::Store(Box::new(e)))?;
    Ok(Plan {
        tier,
        name: r.name,
        price_monthly_micros: r.price_monthly_micros,
        included_tokens: u64_of(r.included_tokens),
        overage_micros_per_1k: r.overage_micros_per_1k,
        max_api_keys: u32::try_from(r.max_api_keys).unwrap_or(0),
        retention_days: u32::try_from(r.retention_days).unwrap_or(1),
        limits: Limits {
            rpm: u64_of(r.rate_limit_rpm),
            tpm: u64_of(r.rate_limit_tpm),
            daily_tokens: u64_of(r.quota_daily),
            monthly_tokens: u64_of(r.quota_monthly),
        },
    })
}

#[async_trait]
impl PlanStore for SqlPlanStore {
    async fn list_plans(&self) -> Result<Vec<Plan>, PlanStoreError> {
        let rows = billing_plans::Entity::find().all(self.store.connection()).await.map_err(err)?;
        rows.into_iter().map(plan_from_row).collect()
    }

    async fn save_plan(&self, p: &Plan) -> Result<(), PlanStoreError> {
        let now = OffsetDateTime::now_utc();
        let row = billing_plans::ActiveModel {
            tier: Set(p.tier.as_str().to_owned()),
            name: Set(p.name.clone()),
            price_monthly_micros: Set(p.price_monthly_micros),
            rate_limit_rpm: Set(i64_of(p.limits.rpm)),
            rate_limit_tpm: Set(i64_of(p.limits.tpm)),
            quota_daily: Set(i64_of(p.limits.daily_tokens)),
            quota_monthly: Set(i64_of(p.limits.monthly_tokens)),
            max_api_keys: Set(i32::try_from(p.max_api_keys).unwrap_or(i32::MAX)),
            created_at: Set(now),
            included_tokens: Set(i64_of(p.included_tokens)),
            overage_micros_per_1k: Set(p.overage_micros_per_1k),
            retention_days: Set(i32::try_from(p.retention_days).unwrap_or(i32::MAX)),
            updated_at: Set(now),
        };
        let every_column_but_created = OnConflict::column(Column::Tier)
            .update_columns([
                Column::Name,
                Column::PriceMonthlyMicros,
                Column::RateLimitRpm,
                Column::RateLimitTpm,
                Column::QuotaDaily,
                Column::QuotaMonthly,
                Column::MaxApiKeys,
                Column::IncludedTokens,
                Column::OverageMicrosPer1k,
                Column::RetentionDays,
                Column::UpdatedAt,
            ])
            .to_owned();
        billing_plans::Entity::insert(row)
            .on_conflict(every_column_but_created)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(err)?;
        Ok(())
    }
}
