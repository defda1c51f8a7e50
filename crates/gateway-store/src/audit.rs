//! SQL adapter of the audit log (`gateway_auth::audit::AuditLog`): inserts and keyset pages,
//! newest first. There is no update or delete here, and the schema's triggers refuse both.

use async_trait::async_trait;
use gateway_auth::AuthError;
use gateway_auth::audit::{AuditEntry, AuditLog, AuditQuery, Outcome};
use gateway_core::{RequestId, UserId};
use sea_orm::{
    ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::entity::audit_log;
use crate::{Store, StoreError};

/// The audit log in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlAuditLog {
    store: Store,
}

impl SqlAuditLog {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: DbErr) -> AuthError {
    AuthError::store(StoreError::Db(e))
}

fn entry_of(r: audit_log::Model) -> AuditEntry {
    AuditEntry {
        id: r.id,
        at: r.at,
        actor_id: r.actor_id.map(UserId),
        action: r.action,
        target: r.target,
        outcome: Outcome::parse(&r.outcome).unwrap_or(Outcome::Failed),
        status: u16::try_from(r.status).unwrap_or(0),
        source_ip: r.source_ip,
        request_id: RequestId(r.request_id),
        detail: r.detail,
    }
}

#[async_trait]
impl AuditLog for SqlAuditLog {
    async fn append(&self, e: &AuditEntry) -> Result<(), AuthError> {
        let row = audit_log::ActiveModel {
            id: Set(e.id),
            at: Set(e.at),
            actor_id: Set(e.actor_id.map(|a| a.as_uuid())),
            action: Set(e.action.clone()),
            target: Set(e.target.clone()),
            outcome: Set(e.outcome.as_str().to_owned()),
            status: Set(i32::from(e.status)),
            source_ip: Set(e.source_ip.clone()),
            request_id: Set(e.request_id.as_uuid()),
            detail: Set(e.detail.clone()),
        };
        audit_log::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, AuthError> {
        let mut find = audit_log::Entity::find();
        if let Some(actor) = q.actor_id {
            let mut who = Condition::any().add(audit_log::Column::ActorId.eq(actor.as_uuid()));
            if !q.or_targets.is_empty() {
                who = who.add(audit_log::Column::Target.is_in(q.or_targets.clone()));
            }
            find = find.filter(who);
        }
        if let Some(prefix) = &q.action_prefix {
            find = find.filter(audit_log::Column::Action.starts_with(prefix.as_str()));
        }
        if let Some(target) = &q.target {
            find = find.filter(audit_log::Column::Target.eq(target.as_str()));
        }
        if let Some(outcome) = q.outcome {
            find = find.filter(audit_log::Column::Outcome.eq(outcome.as_str()));
        }
        if let Some(since) = q.since {
            find = find.filter(audit_log::Column::At.gte(since));
        }
        if let Some(until) = q.until {
            find = find.filter(audit_log::Column::At.lt(until));
        }
        if let Some(before) = q.before {
            find = find.filter(audit_log::Column::Id.lt(before));
        }
        let rows = find
            .order_by_desc(audit_log::Column::Id)
            .limit(u64::from(q.limit.max(1)))
            .all(self.store.connection())
            .await
            .map_err(err)?;
        Ok(rows.into_iter().map(entry_of).collect())
    }
}
