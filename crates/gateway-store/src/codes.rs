//! SQL adapter of the billing's code store (`redemption_codes`, `redemptions`).
//!
//! A redemption is one transaction: the use is taken by a conditional update
//! (`uses = uses + 1 WHERE uses < max_uses AND` not revoked or expired), the user's use is
//! inserted (one per user and code), and the credits go through the ledger; any refusal rolls
//! all of it back.

use async_trait::async_trait;
use gateway_billing::codes::{Code, CodeError, CodeStore, NewCode, normalize};
use gateway_billing::ledger::{EntryKind, LedgerEntry, NewEntry};
use gateway_core::{CodeId, UserId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, QueryOrder, Set, SqlErr,
    TransactionTrait, TryInsertResult,
};
use time::OffsetDateTime;

use crate::billing::{Step, append_in};
use crate::entity::{redemption_codes, redemptions};
use crate::{Store, StoreError};

/// Redemption codes in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlCodeStore {
    store: Store,
}

impl SqlCodeStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: DbErr) -> CodeError {
    CodeError::Store(Box::new(StoreError::Db(e)))
}

fn code_of(r: redemption_codes::Model) -> Code {
    Code {
        id: CodeId::from(r.id),
        code: r.code,
        credits_micros: r.credits_micros,
        max_uses: u32::try_from(r.max_uses).unwrap_or(0),
        uses: u32::try_from(r.uses).unwrap_or(0),
        expires_at: r.expires_at,
        created_at: r.created_at,
        revoked: r.revoked_at.is_some(),
    }
}

#[async_trait]
impl CodeStore for SqlCodeStore {
    async fn create(&self, new: &NewCode, now: OffsetDateTime) -> Result<Code, CodeError> {
        let id = uuid::Uuid::now_v7();
        let row = redemption_codes::ActiveModel {
            id: Set(id),
            code: Set(new.code.clone().unwrap_or_default()),
            credits_micros: Set(new.credits_micros),
            max_uses: Set(i32::try_from(new.max_uses).unwrap_or(i32::MAX)),
            uses: Set(0),
            expires_at: Set(new.expires_at),
            created_at: Set(now),
            revoked_at: Set(None),
        };
        match redemption_codes::Entity::insert(row)
            .exec_without_returning(self.store.connection())
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(CodeError::Taken);
            }
            Err(e) => return Err(err(e)),
        }
        let stored = redemption_codes::Entity::find_by_id(id)
            .one(self.store.connection())
            .await
            .map_err(err)?
            .ok_or(CodeError::Unknown)?;
        Ok(code_of(stored))
    }

    async fn list(&self) -> Result<Vec<Code>, CodeError> {
        let rows = redemption_codes::Entity::find()
            .order_by_desc(redemption_codes::Column::CreatedAt)
            .all(self.store.connection())
            .await
            .map_err(err)?;
        Ok(rows.into_iter().map(code_of).collect())
    }

    async fn revoke(&self, id: CodeId, now: OffsetDateTime) -> Result<bool, CodeError> {
        let id = id.as_uuid();
        let done = redemption_codes::Entity::update_many()
            .col_expr(redemption_codes::Column::RevokedAt, Expr::value(now))
            .filter(redemption_codes::Column::Id.eq(id))
            .filter(redemption_codes::Column::RevokedAt.is_null())
            .exec(self.store.connection())
            .await
            .map_err(err)?;
        if done.rows_affected == 1 {
            return Ok(true);
        }
        let exists = redemption_codes::Entity::find_by_id(id)
            .one(self.store.connection())
            .await
            .map_err(err)?
            .is_some();
        Ok(exists)
    }

    async fn redeem(
        &self,
        code: &str,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<LedgerEntry, CodeError> {
        use redemption_codes::Column as C;
        let code = normalize(code);
        let txn = self.store.connection().begin().await.map_err(err)?;
        let usable = Condition::all()
            .add(C::Code.eq(code.as_str()))
            .add(C::RevokedAt.is_null())
            .add(Condition::any().add(C::ExpiresAt.is_null()).add(C::ExpiresAt.gt(now)))
            .add(Expr::col(C::Uses).lt(Expr::col(C::MaxUses)));
        let taken = redemption_codes::Entity::update_many()
            .col_expr(C::Uses, Expr::col(C::Uses).add(1))
            .filter(usable)
            .exec(&txn)
            .await
            .map_err(err)?;
        let row = redemption_codes::Entity::find()
            .filter(C::Code.eq(code.as_str()))
            .one(&txn)
            .await
            .map_err(err)?;
        let refusal = match &row {
            None => Some(CodeError::Unknown),
            Some(_) if taken.rows_affected == 1 => None,
            Some(r) if r.revoked_at.is_some() => Some(CodeError::Unknown),
            Some(r) if r.expires_at.is_some_and(|t| t <= now) => Some(CodeError::Expired),
            Some(_) => Some(CodeError::UsedUp),
        };
        let (Some(row), None) = (row, refusal.as_ref()) else {
            txn.rollback().await.map_err(err)?;
            return Err(refusal.unwrap_or(CodeError::Unknown));
        };
        let used = redemptions::Entity::insert(redemptions::ActiveModel {
            code_id: Set(row.id),
            user_id: Set(user.as_uuid()),
            redeemed_at: Set(now),
        })
        .on_conflict_do_nothing_on([redemptions::Column::CodeId, redemptions::Column::UserId])
        .exec_without_returning(&txn)
        .await
        .map_err(err)?;
        if !matches!(used, TryInsertResult::Inserted(n) if n > 0) {
            txn.rollback().await.map_err(err)?;
            return Err(CodeError::AlreadyRedeemed);
        }
        let entry = NewEntry {
            user,
            kind: EntryKind::Redemption,
            amount_micros: row.credits_micros,
            reference: format!("code:{}", row.id),
            reason: "Redemption code".to_owned(),
        };
        match append_in(&txn, &entry, now).await {
            Ok(Step::New(entry)) => {
                txn.commit().await.map_err(err)?;
                Ok(entry)
            }
            Ok(Step::Repeated(_)) => {
                txn.rollback().await.map_err(err)?;
                Err(CodeError::AlreadyRedeemed)
            }
            Err(e) => {
                txn.rollback().await.map_err(err)?;
                Err(CodeError::Store(Box::new(e)))
            }
        }
    }
}
