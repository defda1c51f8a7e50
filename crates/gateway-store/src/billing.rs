//! SQL adapters of the billing's ledger and invoice stores (`credit_ledger`, `users.credits_micros`,
//! `invoices`, `invoice_lines`, `invoice_numbers`).
//!
//! A ledger entry and the balance move in one transaction: the balance by a conditional
//! `UPDATE users SET credits_micros = credits_micros + n WHERE credits_micros + n >= 0` (never
//! read, then written), the entry by an insert that a repeated reference makes a no-op (the
//! transaction is then rolled back and the first entry returned). A period is closed in one
//! transaction under a Postgres advisory lock, so one instance closes it and a second run finds
//! every invoice there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use gateway_billing::invoice::{
    BillingPeriod, CloseReport, Invoice, InvoiceLine, InvoiceStatus, InvoiceStore,
    InvoiceStoreError, LineKind, PeriodUsage, Terms, charges, lines, plan_name_of,
};
use gateway_billing::ledger::{
    Appended, EntryKind, LedgerEntry, LedgerError, LedgerStore, Mismatch, NewEntry, repeated,
};
use gateway_core::{InvoiceId, LedgerEntryId, Plan, Tier, UserId};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait, TryInsertResult,
};
use time::OffsetDateTime;

use crate::entity::{credit_ledger, invoice_lines, invoice_numbers, invoices, users};
use crate::{Store, StoreError};

/// The advisory lock every period close takes (Postgres).
const CLOSE_LOCK: i64 = 0x0062_6d63_6c6f_7365; // "bmclose"

/// The credits ledger and invoices in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlBillingStore {
    store: Store,
}

impl SqlBillingStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn ledger_err(e: DbErr) -> LedgerError {
    LedgerError::Store(Box::new(StoreError::Db(e)))
}

fn invoice_err(e: DbErr) -> InvoiceStoreError {
    InvoiceStoreError::Store(Box::new(StoreError::Db(e)))
}

fn corrupt(what: &'static str) -> DbErr {
    DbErr::Custom(format!("unreadable {what} row"))
}

fn entry_from_row(r: credit_ledger::Model) -> Result<LedgerEntry, DbErr> {
    Ok(LedgerEntry {
        id: LedgerEntryId::from(r.id),
        user_id: UserId::from(r.user_id),
        kind: EntryKind::parse(&r.kind).ok_or_else(|| corrupt("credit_ledger"))?,
        amount_micros: r.amount_micros,
        balance_after_micros: r.balance_after_micros,
        reference: r.reference,
        reason: r.reason,
        created_at: r.created_at,
    })
}

async fn find_entry(
    db: &impl ConnectionTrait,
    user: UserId,
    reference: &str,
) -> Result<Option<LedgerEntry>, DbErr> {
    credit_ledger::Entity::find()
        .filter(credit_ledger::Column::UserId.eq(user.as_uuid()))
        .filter(credit_ledger::Column::Reference.eq(reference))
        .one(db)
        .await?
        .map(entry_from_row)
        .transpose()
}

/// What appending in a transaction did (the caller commits, or rolls back on `Repeated`).
pub(crate) enum Step {
    New(LedgerEntry),
    Repeated(LedgerEntry),
}

/// Moves the balance and writes the entry inside `txn`.
pub(crate) async fn append_in(
    txn: &DatabaseTransaction,
    e: &NewEntry,
    at: OffsetDateTime,
) -> Result<Step, LedgerError> {
    // Microseconds, as the databases keep them: the entry returned is the entry stored.
    let at = at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at);
    // The write comes first: it takes the user's row lock (Postgres) or the write lock
    // (SQLite, which would refuse a read transaction's later upgrade), so appends to one
    // balance queue up rather than fail. A repeated reference is found next and the caller
    // rolls the move back.
    let moved = users::Entity::update_many()
        .col_expr(
            users::Column::CreditsMicros,
            Expr::col(users::Column::CreditsMicros).add(e.amount_micros),
        )
        .filter(users::Column::Id.eq(e.user.as_uuid()))
        .filter(Expr::col(users::Column::CreditsMicros).add(e.amount_micros).gte(0))
        .exec(txn)
        .await
        .map_err(ledger_err)?;
    if let Some(first) = find_entry(txn, e.user, &e.reference).await.map_err(ledger_err)? {
        return repeated(&first, e).map(|a| Step::Repeated(a.entry().clone()));
    }
    let balance = users::Entity::find_by_id(e.user.as_uuid())
        .one(txn)
        .await
        .map_err(ledger_err)?
        .ok_or(LedgerError::UnknownUser)?
        .credits_micros;
    if moved.rows_affected == 0 {
        return Err(LedgerError::Insufficient { balance_micros: balance });
    }
    let entry = LedgerEntry {
        id: LedgerEntryId::new(),
        user_id: e.user,
        kind: e.kind,
        amount_micros: e.amount_micros,
        balance_after_micros: balance,
        reference: e.reference.clone(),
        reason: e.reason.clone(),
        created_at: at,
    };
    let inserted = credit_ledger::Entity::insert(credit_ledger::ActiveModel {
        id: Set(entry.id.as_uuid()),
        user_id: Set(e.user.as_uuid()),
        amount_micros: Set(e.amount_micros),
        balance_after_micros: Set(balance),
        reason: Set(e.reason.clone()),
        reference: Set(e.reference.clone()),
        created_at: Set(at),
        kind: Set(e.kind.as_str().to_owned()),
    })
    .on_conflict_do_nothing_on([credit_ledger::Column::UserId, credit_ledger::Column::Reference])
    .exec_without_returning(txn)
    .await
    .map_err(ledger_err)?;
    if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
        // The same reference, written by a concurrent transaction that committed first.
        let first = find_entry(txn, e.user, &e.reference)
            .await
            .map_err(ledger_err)?
            .ok_or(LedgerError::ReferenceReused)?;
        return repeated(&first, e).map(|a| Step::Repeated(a.entry().clone()));
    }
    Ok(Step::New(entry))
}

#[async_trait]
impl LedgerStore for SqlBillingStore {
    async fn append(&self, e: &NewEntry, at: OffsetDateTime) -> Result<Appended, LedgerError> {
        let txn = self.store.connection().begin().await.map_err(ledger_err)?;
        match append_in(&txn, e, at).await {
            Ok(Step::New(entry)) => {
                txn.commit().await.map_err(ledger_err)?;
                Ok(Appended::New(entry))
            }
            Ok(Step::Repeated(entry)) => {
                txn.rollback().await.map_err(ledger_err)?;
                Ok(Appended::Repeated(entry))
            }
            Err(err) => {
                txn.rollback().await.map_err(ledger_err)?;
                Err(err)
            }
        }
    }

    async fn entries(
        &self,
        user: UserId,
        before: Option<LedgerEntryId>,
        limit: u64,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut q = credit_ledger::Entity::find()
            .filter(credit_ledger::Column::UserId.eq(user.as_uuid()))
            .order_by_desc(credit_ledger::Column::Id)
            .limit(limit);
        if let Some(before) = before {
            q = q.filter(credit_ledger::Column::Id.lt(before.as_uuid()));
        }
        let rows = q.all(self.store.connection()).await.map_err(ledger_err)?;
        rows.into_iter().map(entry_from_row).collect::<Result<_, _>>().map_err(ledger_err)
    }

    async fn verify(&self) -> Result<Vec<Mismatch>, LedgerError> {
        let db = self.store.connection();
        let sums: Vec<(uuid::Uuid, i64)> = credit_ledger::Entity::find()
            .select_only()
            .column(credit_ledger::Column::UserId)
            .column_as(Expr::cust("CAST(SUM(amount_micros) AS BIGINT)"), "total")
            .group_by(credit_ledger::Column::UserId)
            .into_tuple()
            .all(db)
            .await
            .map_err(ledger_err)?;
        let sums: HashMap<uuid::Uuid, i64> = sums.into_iter().collect();
        let balances: Vec<(uuid::Uuid, i64)> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .column(users::Column::CreditsMicros)
            .into_tuple()
            .all(db)
            .await
            .map_err(ledger_err)?;
        let known: HashSet<uuid::Uuid> = balances.iter().map(|(u, _)| *u).collect();
        let mut out: Vec<Mismatch> = balances
            .into_iter()
            .filter(|(u, b)| sums.get(u).copied().unwrap_or(0) != *b)
            .map(|(u, b)| Mismatch {
                user_id: UserId::from(u),
                stored_micros: b,
                ledger_micros: sums.get(&u).copied().unwrap_or(0),
            })
            .collect();
        // Entries of a user the users table does not hold (cannot happen with the foreign key).
        out.extend(sums.iter().filter(|(u, _)| !known.contains(u)).map(|(u, s)| Mismatch {
            user_id: UserId::from(*u),
            stored_micros: 0,
            ledger_micros: *s,
        }));
        Ok(out)
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn invoice_from_rows(
    r: invoices::Model,
    line_rows: Vec<invoice_lines::Model>,
) -> Result<Invoice, DbErr> {
    let bad = || corrupt("invoices");
    let tier: Tier = r.tier.as_deref().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let plan_name = line_rows
        .iter()
        .find(|l| l.kind == LineKind::PlanFee.as_str())
        .and_then(|l| plan_name_of(&l.description))
        .map_or_else(|| tier.default_plan().name, str::to_owned);
    let terms = Terms {
        tier,
        plan_name,
        fee_micros: r.subscription_micros,
        included_tokens: u64_of(r.included_tokens),
        overage_micros_per_1k: r.overage_micros_per_1k,
    };
    let prepaid = -line_rows
        .iter()
        .filter(|l| l.kind == LineKind::SubscriptionPayment.as_str())
        .map(|l| l.amount_micros)
        .sum::<i64>();
    let mut lines = Vec::with_capacity(line_rows.len());
    for l in line_rows {
        lines.push(InvoiceLine {
            kind: LineKind::parse(&l.kind).ok_or_else(|| corrupt("invoice_lines"))?,
            description: l.description,
            quantity: l.quantity,
            unit_micros: l.unit_micros,
            amount_micros: l.amount_micros,
        });
    }
    Ok(Invoice {
        id: InvoiceId::from(r.id),
        number: r.number.ok_or_else(bad)?,
        user_id: UserId::from(r.user_id),
        period: BillingPeriod::starting(r.period_start).map_err(|_| bad())?,
        charges: gateway_billing::invoice::Charges {
            terms,
            used_tokens: u64_of(r.used_tokens),
            overage_tokens: u64_of(r.overage_tokens),
            overage_micros: r.usage_micros,
            usage_cost_micros: r.usage_cost_micros,
        },
        subtotal_micros: r.subscription_micros.saturating_add(r.usage_micros),
        prepaid_micros: prepaid,
        credits_applied_micros: r.credits_applied_micros,
        total_micros: r.total_micros,
        status: InvoiceStatus::parse(&r.status).ok_or_else(bad)?,
        lines,
        created_at: r.created_at,
        due_at: r.due_at.unwrap_or(r.created_at),
        paid_at: r.paid_at,
    })
}

/// Reads invoices with their lines.
async fn load(
    db: &impl ConnectionTrait,
    rows: Vec<invoices::Model>,
) -> Result<Vec<Invoice>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
    let all_lines = invoice_lines::Entity::find()
        .filter(invoice_lines::Column::InvoiceId.is_in(ids))
        .order_by_asc(invoice_lines::Column::Position)
        .all(db)
        .await?;
    let mut by_invoice: HashMap<uuid::Uuid, Vec<invoice_lines::Model>> = HashMap::new();
    for l in all_lines {
        by_invoice.entry(l.invoice_id).or_default().push(l);
    }
    rows.into_iter()
        .map(|r| {
            let lines = by_invoice.remove(&r.id).unwrap_or_default();
            invoice_from_rows(r, lines)
        })
        .collect()
}

/// Usage sums per user in `period` (users with any request).
async fn usage_by_user(
    db: &impl ConnectionTrait,
    period: BillingPeriod,
    user: Option<UserId>,
) -> Result<HashMap<uuid::Uuid, PeriodUsage>, DbErr> {
    // The daily rollup, kept with the usage rows in one transaction: the period's whole days.
    let backend = db.get_database_backend();
    let (a, b, c) =
        if backend == DatabaseBackend::Postgres { ("$1", "$2", "$3") } else { ("?", "?", "?") };
    let mut values: Vec<sea_orm::Value> =
        vec![period.starts_at().date().into(), period.ends_at().date().into()];
    let only = match user {
        Some(user) => {
            values.push(user.as_uuid().into());
            format!(" AND user_id = {c}")
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT user_id, CAST(sum(requests) AS BIGINT) AS requests, \
         CAST(sum(total_tokens) AS BIGINT) AS tokens, CAST(sum(cost_micros) AS BIGINT) AS cost \
         FROM usage_daily WHERE day >= {a} AND day < {b}{only} GROUP BY user_id"
    );
    let rows =
        db.query_all_raw(sea_orm::Statement::from_sql_and_values(backend, sql, values)).await?;
    rows.iter()
        .map(|r| {
            let usage = PeriodUsage {
                requests: u64_of(r.try_get("", "requests")?),
                tokens: u64_of(r.try_get("", "tokens")?),
                cost_micros: r.try_get("", "cost")?,
                prepaid_micros: 0,
            };
            Ok((r.try_get::<uuid::Uuid>("", "user_id")?, usage))
        })
        .collect()
}

/// What the user's plan subscriptions paid at the payment provider during `period`.
async fn subscription_payments(
    db: &impl ConnectionTrait,
    user: uuid::Uuid,
    period: BillingPeriod,
) -> Result<i64, DbErr> {
    use crate::entity::payment_transactions::{Column as P, Entity};
    let paid: Vec<i64> = Entity::find()
        .select_only()
        .column(P::AmountMicros)
        .filter(P::UserId.eq(user))
        .filter(P::Status.eq("succeeded"))
        .filter(P::Purpose.starts_with("tier:"))
        .filter(P::CreatedAt.gte(period.starts_at()))
        .filter(P::CreatedAt.lt(period.ends_at()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(paid.into_iter().sum())
}

/// Sets the user's past-due moment to the earliest due date of their open invoices (none:
/// cleared).
pub(crate) async fn refresh_past_due(
    db: &impl ConnectionTrait,
    user: uuid::Uuid,
) -> Result<(), DbErr> {
    let oldest = invoices::Entity::find()
        .filter(invoices::Column::UserId.eq(user))
        .filter(invoices::Column::Status.eq(InvoiceStatus::Open.as_str()))
        .order_by_asc(invoices::Column::DueAt)
        .one(db)
        .await?;
    users::Entity::update_many()
        .col_expr(users::Column::PastDueAfter, Expr::value(oldest.and_then(|i| i.due_at)))
        .filter(users::Column::Id.eq(user))
        .exec(db)
        .await?;
    Ok(())
}

impl SqlBillingStore {
    async fn close_in(
        &self,
        txn: &DatabaseTransaction,
        period: BillingPeriod,
        plans: &[Arc<Plan>],
        grace: time::Duration,
        now: OffsetDateTime,
    ) -> Result<CloseReport, InvoiceStoreError> {
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            // One closer at a time; a second waits, then finds the invoices made.
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({CLOSE_LOCK})"))
                .await
                .map_err(invoice_err)?;
        }
        let usage = usage_by_user(txn, period, None).await.map_err(invoice_err)?;
        let invoiced: HashSet<uuid::Uuid> = invoices::Entity::find()
            .select_only()
            .column(invoices::Column::UserId)
            .filter(invoices::Column::PeriodStart.eq(period.start()))
            .into_tuple::<uuid::Uuid>()
            .all(txn)
            .await
            .map_err(invoice_err)?
            .into_iter()
            .collect();
        // Admins are the operators: never invoiced (their keys have no ceiling either).
        let mut accounts: Vec<(uuid::Uuid, String)> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .column(users::Column::Tier)
            .filter(users::Column::CreatedAt.lt(period.ends_at()))
            .filter(users::Column::Role.ne(gateway_core::Role::Admin.as_str()))
            .into_tuple()
            .all(txn)
            .await
            .map_err(invoice_err)?;
        accounts.sort();
        let mut last = invoice_numbers::Entity::find_by_id(period.start())
            .one(txn)
            .await
            .map_err(invoice_err)?
            .map_or(0, |r| r.last_number);
        let first_number = last;
        let mut report = CloseReport { period: Some(period), ..CloseReport::default() };
        for (user, tier) in accounts {
            if invoiced.contains(&user) {
                report.already_invoiced += 1;
                continue;
            }
            let Ok(tier) = tier.parse::<Tier>() else { continue };
            let plan = plans
                .iter()
                .find(|p| p.tier == tier)
                .cloned()
                .unwrap_or_else(|| Arc::new(tier.default_plan()));
            let used = usage.get(&user).copied().unwrap_or_default();
            let c = charges(&Terms::of(&plan), used.tokens, used.cost_micros);
            let subtotal = c.subtotal_micros();
            if subtotal <= 0 {
                continue;
            }
            last += 1;
            let number = period.invoice_number(u32::try_from(last).unwrap_or(u32::MAX));
            // The plan fee the user's subscription paid during the month is not billed again.
            let prepaid = subscription_payments(txn, user, period)
                .await
                .map_err(invoice_err)?
                .clamp(0, c.terms.fee_micros);
            let balance = users::Entity::find_by_id(user)
                .one(txn)
                .await
                .map_err(invoice_err)?
                .map_or(0, |u| u.credits_micros);
            let credits = balance.clamp(0, subtotal - prepaid);
            if credits > 0 {
                let pay = NewEntry {
                    user: UserId::from(user),
                    kind: EntryKind::InvoicePayment,
                    amount_micros: -credits,
                    reference: format!("invoice:{number}"),
                    reason: format!("Credits applied to invoice {number}"),
                };
                append_in(txn, &pay, now)
                    .await
                    .map_err(|e| InvoiceStoreError::Store(Box::new(e)))?;
            }
            let total = subtotal - prepaid - credits;
            let status = if total == 0 { InvoiceStatus::Paid } else { InvoiceStatus::Open };
            let id = InvoiceId::new();
            invoices::Entity::insert(invoices::ActiveModel {
                id: Set(id.as_uuid()),
                user_id: Set(user),
                period_start: Set(period.start()),
                period_end: Set(period.end()),
                subscription_micros: Set(c.terms.fee_micros),
                usage_micros: Set(c.overage_micros),
                credits_applied_micros: Set(credits),
                total_micros: Set(total),
                status: Set(status.as_str().to_owned()),
                created_at: Set(now),
                paid_at: Set((status == InvoiceStatus::Paid).then_some(now)),
                number: Set(Some(number)),
                tier: Set(Some(tier.as_str().to_owned())),
                included_tokens: Set(i64_of(c.terms.included_tokens)),
                overage_micros_per_1k: Set(c.terms.overage_micros_per_1k),
                used_tokens: Set(i64_of(c.used_tokens)),
                overage_tokens: Set(i64_of(c.overage_tokens)),
                usage_cost_micros: Set(c.usage_cost_micros),
                due_at: Set(Some(now + grace)),
            })
            .exec_without_returning(txn)
            .await
            .map_err(invoice_err)?;
            let rows = lines(&c, prepaid, credits).into_iter().enumerate().map(|(i, l)| {
                invoice_lines::ActiveModel {
                    invoice_id: Set(id.as_uuid()),
                    position: Set(i32::try_from(i).unwrap_or(i32::MAX)),
                    kind: Set(l.kind.as_str().to_owned()),
                    description: Set(l.description),
                    quantity: Set(l.quantity),
                    unit_micros: Set(l.unit_micros),
                    amount_micros: Set(l.amount_micros),
                }
            });
            invoice_lines::Entity::insert_many(rows)
                .exec_without_returning(txn)
                .await
                .map_err(invoice_err)?;
            if status == InvoiceStatus::Open {
                refresh_past_due(txn, user).await.map_err(invoice_err)?;
                report.open_micros += total;
                report.open_users.push(UserId::from(user));
            } else {
                report.paid_by_credits += 1;
            }
            report.created += 1;
        }
        if last != first_number {
            invoice_numbers::Entity::insert(invoice_numbers::ActiveModel {
                period_start: Set(period.start()),
                last_number: Set(last),
            })
            .on_conflict(
                OnConflict::column(invoice_numbers::Column::PeriodStart)
                    .update_column(invoice_numbers::Column::LastNumber)
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await
            .map_err(invoice_err)?;
        }
        Ok(report)
    }

    async fn pay_in(
        txn: &DatabaseTransaction,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<uuid::Uuid>, InvoiceStoreError> {
        let open = invoices::Entity::find()
            .filter(invoices::Column::UserId.eq(user.as_uuid()))
            .filter(invoices::Column::Status.eq(InvoiceStatus::Open.as_str()))
            .order_by_asc(invoices::Column::PeriodStart)
            .all(txn)
            .await
            .map_err(invoice_err)?;
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let mut paid_into = Vec::new();
        for inv in open {
            let balance = users::Entity::find_by_id(user.as_uuid())
                .one(txn)
                .await
                .map_err(invoice_err)?
                .map_or(0, |u| u.credits_micros);
            let pay = balance.clamp(0, inv.total_micros);
            if pay == 0 {
                break;
            }
            let number = inv.number.clone().unwrap_or_default();
            // Named by what was applied before, so a retry of the same payment is one entry.
            let entry = NewEntry {
                user,
                kind: EntryKind::InvoicePayment,
                amount_micros: -pay,
                reference: format!("invoice:{number}:after:{}", inv.credits_applied_micros),
                reason: format!("Credits applied to invoice {number}"),
            };
            append_in(txn, &entry, now).await.map_err(|e| InvoiceStoreError::Store(Box::new(e)))?;
            let total = inv.total_micros - pay;
            let status = if total == 0 { InvoiceStatus::Paid } else { InvoiceStatus::Open };
            invoices::Entity::update_many()
                .col_expr(
                    invoices::Column::CreditsAppliedMicros,
                    Expr::value(inv.credits_applied_micros + pay),
                )
                .col_expr(invoices::Column::TotalMicros, Expr::value(total))
                .col_expr(invoices::Column::Status, Expr::value(status.as_str()))
                .col_expr(
                    invoices::Column::PaidAt,
                    Expr::value((status == InvoiceStatus::Paid).then_some(now)),
                )
                .filter(invoices::Column::Id.eq(inv.id))
                .exec(txn)
                .await
                .map_err(invoice_err)?;
            // The credits line shows everything credits paid.
            let credits_line = invoice_lines::Entity::find()
                .filter(invoice_lines::Column::InvoiceId.eq(inv.id))
                .filter(invoice_lines::Column::Kind.eq(LineKind::Credits.as_str()))
                .one(txn)
                .await
                .map_err(invoice_err)?;
            let applied = inv.credits_applied_micros + pay;
            match credits_line {
                Some(line) => {
                    invoice_lines::Entity::update_many()
                        .col_expr(invoice_lines::Column::UnitMicros, Expr::value(-applied))
                        .col_expr(invoice_lines::Column::AmountMicros, Expr::value(-applied))
                        .filter(invoice_lines::Column::InvoiceId.eq(inv.id))
                        .filter(invoice_lines::Column::Position.eq(line.position))
                        .exec(txn)
                        .await
                        .map_err(invoice_err)?;
                }
                None => {
                    let position = invoice_lines::Entity::find()
                        .filter(invoice_lines::Column::InvoiceId.eq(inv.id))
                        .all(txn)
                        .await
                        .map_err(invoice_err)?
                        .len();
                    invoice_lines::Entity::insert(invoice_lines::ActiveModel {
                        invoice_id: Set(inv.id),
                        position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
                        kind: Set(LineKind::Credits.as_str().to_owned()),
                        description: Set("Credits applied".to_owned()),
                        quantity: Set(1),
                        unit_micros: Set(-applied),
                        amount_micros: Set(-applied),
                    })
                    .exec_without_returning(txn)
                    .await
                    .map_err(invoice_err)?;
                }
            }
            paid_into.push(inv.id);
        }
        refresh_past_due(txn, user.as_uuid()).await.map_err(invoice_err)?;
        Ok(paid_into)
    }
}

#[async_trait]
impl InvoiceStore for SqlBillingStore {
    async fn close_period(
        &self,
        period: BillingPeriod,
        plans: &[Arc<Plan>],
        grace: time::Duration,
        now: OffsetDateTime,
    ) -> Result<CloseReport, InvoiceStoreError> {
        // Usage sums gateways still hold as pending batches go into the rollup first.
        crate::usage::sum_all_pending(&self.store)
            .await
            .map_err(|e| InvoiceStoreError::Store(Box::new(e)))?;
        let txn = self.store.connection().begin().await.map_err(invoice_err)?;
        match self.close_in(&txn, period, plans, grace, now).await {
            Ok(report) => {
                txn.commit().await.map_err(invoice_err)?;
                Ok(report)
            }
            Err(e) => {
                txn.rollback().await.map_err(invoice_err)?;
                Err(e)
            }
        }
    }

    async fn invoices(&self, user: UserId) -> Result<Vec<Invoice>, InvoiceStoreError> {
        let db = self.store.connection();
        let rows = invoices::Entity::find()
            .filter(invoices::Column::UserId.eq(user.as_uuid()))
            .order_by_desc(invoices::Column::PeriodStart)
            .all(db)
            .await
            .map_err(invoice_err)?;
        load(db, rows).await.map_err(invoice_err)
    }

    async fn invoice(&self, id: InvoiceId) -> Result<Option<Invoice>, InvoiceStoreError> {
        let db = self.store.connection();
        let rows = invoices::Entity::find_by_id(id.as_uuid()).all(db).await.map_err(invoice_err)?;
        Ok(load(db, rows).await.map_err(invoice_err)?.pop())
    }

    async fn invoice_for(
        &self,
        user: UserId,
        period: BillingPeriod,
    ) -> Result<Option<Invoice>, InvoiceStoreError> {
        let db = self.store.connection();
        let rows = invoices::Entity::find()
            .filter(invoices::Column::UserId.eq(user.as_uuid()))
            .filter(invoices::Column::PeriodStart.eq(period.start()))
            .all(db)
            .await
            .map_err(invoice_err)?;
        Ok(load(db, rows).await.map_err(invoice_err)?.pop())
    }

    async fn period_usage(
        &self,
        user: UserId,
        period: BillingPeriod,
    ) -> Result<PeriodUsage, InvoiceStoreError> {
        let sums = usage_by_user(self.store.connection(), period, Some(user))
            .await
            .map_err(invoice_err)?;
        let mut usage = sums.get(&user.as_uuid()).copied().unwrap_or_default();
        usage.prepaid_micros =
            subscription_payments(self.store.connection(), user.as_uuid(), period)
                .await
                .map_err(invoice_err)?;
        Ok(usage)
    }

    async fn pay_open_invoices(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<Invoice>, InvoiceStoreError> {
        let db = self.store.connection();
        let txn = db.begin().await.map_err(invoice_err)?;
        let paid = match Self::pay_in(&txn, user, now).await {
            Ok(ids) => {
                txn.commit().await.map_err(invoice_err)?;
                ids
            }
            Err(e) => {
                txn.rollback().await.map_err(invoice_err)?;
                return Err(e);
            }
        };
        let rows = invoices::Entity::find()
            .filter(invoices::Column::Id.is_in(paid))
            .all(db)
            .await
            .map_err(invoice_err)?;
        load(db, rows).await.map_err(invoice_err)
    }

    async fn payments_received(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<i64, InvoiceStoreError> {
        let backend = self.store.backend();
        let (a, b) = if backend == DatabaseBackend::Postgres { ("$1", "$2") } else { ("?", "?") };
        let sql = format!(
            "SELECT CAST(coalesce(sum(amount_micros), 0) AS BIGINT) AS received \
             FROM payment_transactions WHERE status = 'succeeded' \
             AND created_at >= {a} AND created_at < {b}"
        );
        let stmt = sea_orm::Statement::from_sql_and_values(backend, sql, [from.into(), to.into()]);
        let row = self.store.connection().query_one_raw(stmt).await.map_err(invoice_err)?;
        row.map_or(Ok(0), |r| r.try_get::<i64>("", "received")).map_err(invoice_err)
    }
}
