//! SQL adapter of the usage store: multi-row inserts that skip records already stored.

use async_trait::async_trait;
use gateway_usage::{UsageError, UsageRecord, UsageStore};
use sea_orm::{EntityTrait, Set, TryInsertResult};

use crate::entity::usage_logs;
use crate::{Store, StoreError};

/// Usage records in Postgres (monthly partitions) or SQLite.
#[derive(Clone, Debug)]
pub struct SqlUsageStore {
    store: Store,
}

impl SqlUsageStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row(r: &UsageRecord) -> usage_logs::ActiveModel {
    usage_logs::ActiveModel {
        request_id: Set(r.request_id.as_uuid()),
        created_at: Set(r.created_at),
        user_id: Set(r.user_id.as_uuid()),
        api_key_id: Set(r.api_key_id.map(|k| k.as_uuid())),
        server_id: Set(r.server_id.map(|s| s.as_uuid())),
        endpoint: Set(r.endpoint.clone()),
        model: Set(r.model.clone()),
        prompt_tokens: Set(i64_of(r.prompt_tokens)),
        completion_tokens: Set(i64_of(r.completion_tokens)),
        total_tokens: Set(i64_of(r.total_tokens)),
        cost_micros: Set(r.cost_micros),
        latency_ms: Set(i32::try_from(r.latency_ms).unwrap_or(i32::MAX)),
        upstream_latency_ms: Set(r
            .upstream_latency_ms
            .map(|v| i32::try_from(v).unwrap_or(i32::MAX))),
        status_code: Set(i16::try_from(r.status_code).unwrap_or(i16::MAX)),
        is_error: Set(r.is_error),
        error_message: Set(r.error_message.clone()),
        streamed: Set(r.streamed),
        client_disconnected: Set(r.client_disconnected),
    }
}

#[async_trait]
impl UsageStore for SqlUsageStore {
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        // The primary key (request_id, created_at) refuses a second copy of a record.
        let result = usage_logs::Entity::insert_many(records.iter().map(row))
            .on_conflict_do_nothing_on([
                usage_logs::Column::RequestId,
                usage_logs::Column::CreatedAt,
            ])
            .exec_without_returning(self.store.connection())
            .await;
        match result {
            Ok(
                TryInsertResult::Inserted(_) | TryInsertResult::Conflicted | TryInsertResult::Empty,
            ) => Ok(()),
            Err(e) => Err(UsageError::Store(Box::new(StoreError::Db(e)))),
        }
    }
}
