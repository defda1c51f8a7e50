//! SQL adapter of the billing's payment store: accounts' Creem state on `users`, webhook
//! events once (`billing_webhook_events`), payments once (`payment_transactions.provider_ref`).
//!
//! An event is handled in one transaction: the event id is inserted first (a concurrent
//! delivery of the same event waits on the unique key, then finds it and does nothing), the
//! account row is locked (`SELECT ... FOR UPDATE` on Postgres; SQLite has one writer), the
//! decision is made on what the row holds, and its changes are applied, all or nothing.

use async_trait::async_trait;
use gateway_billing::invoice::InvoiceStatus;
use gateway_billing::ledger::{EntryKind, NewEntry};
use gateway_billing::payments::{
    Account, Change, Decide, Decision, Event, Handled, PaymentStore, PaymentStoreError, Purpose,
};
use gateway_core::{Tier, UserId};
use sea_orm::sea_query::{Expr, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QuerySelect, Set, TransactionTrait, TryInsertResult,
};
use time::OffsetDateTime;

use crate::billing::{Step, append_in, refresh_past_due};
use crate::entity::{billing_webhook_events, credit_ledger, invoices, payment_transactions, users};
use crate::{Store, StoreError};

/// Payment state and webhook events in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlPaymentStore {
    store: Store,
}

impl SqlPaymentStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: DbErr) -> PaymentStoreError {
    PaymentStoreError(Box::new(StoreError::Db(e)))
}

fn account_of(row: &users::Model) -> Account {
    Account {
        user: UserId::from(row.id),
        tier: row.tier.parse().unwrap_or(Tier::Free),
        customer_id: row.creem_customer_id.clone(),
        subscription_id: row.creem_subscription_id.clone(),
        subscription_event_at_ms: row.subscription_event_at,
    }
}

/// The account an event names, locked for the transaction.
async fn locked_account(
    txn: &DatabaseTransaction,
    event: &Event,
) -> Result<Option<users::Model>, DbErr> {
    let mut q = users::Entity::find();
    q = match (&event.user, &event.subscription_id, &event.customer_id) {
        (Some(user), _, _) => q.filter(users::Column::Id.eq(user.as_uuid())),
        (None, Some(sub), _) => q.filter(users::Column::CreemSubscriptionId.eq(sub.as_str())),
        (None, None, Some(customer)) => {
            q.filter(users::Column::CreemCustomerId.eq(customer.as_str()))
        }
        (None, None, None) => return Ok(None),
    };
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock(LockType::Update);
    }
    q.one(txn).await
}

/// Applies one change; `false` when the change is a payment recorded before (the caller then
/// applies nothing of the event).
async fn apply(
    txn: &DatabaseTransaction,
    user: &users::Model,
    event: &Event,
    change: &Change,
    now: OffsetDateTime,
) -> Result<bool, PaymentStoreError> {
    let set = |col: users::Column, value: Expr| (col, value);
    let mut cols: Vec<(users::Column, Expr)> = Vec::new();
    match change {
        Change::Payment { reference, amount_micros, currency, purpose } => {
            let inserted =
                payment_transactions::Entity::insert(payment_transactions::ActiveModel {
                    id: Set(uuid::Uuid::now_v7()),
                    user_id: Set(user.id),
                    invoice_id: Set(None),
                    provider: Set("creem".to_owned()),
                    provider_ref: Set(Some(reference.clone())),
                    amount_micros: Set(*amount_micros),
                    currency: Set(currency.clone()),
                    status: Set("succeeded".to_owned()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    purpose: Set(Some(purpose.clone())),
                })
                .on_conflict_do_nothing_on([payment_transactions::Column::ProviderRef])
                .exec_without_returning(txn)
                .await
                .map_err(err)?;
            return Ok(matches!(inserted, TryInsertResult::Inserted(n) if n > 0));
        }
        Change::Subscribe { tier, customer_id, subscription_id } => {
            cols.push(set(users::Column::Tier, Expr::value(tier.as_str())));
            if let Some(c) = customer_id {
                cols.push(set(users::Column::CreemCustomerId, Expr::value(c.clone())));
            }
            if let Some(s) = subscription_id {
                cols.push(set(users::Column::CreemSubscriptionId, Expr::value(s.clone())));
            }
            cols.push(set(users::Column::SubscriptionEndsAt, Expr::value(None::<OffsetDateTime>)));
        }
        Change::EndAt { at } if *at > now => {
            cols.push(set(users::Column::SubscriptionEndsAt, Expr::value(*at)));
        }
        Change::EndAt { .. } | Change::EndNow => {
            cols.push(set(users::Column::Tier, Expr::value(Tier::Free.as_str())));
            cols.push(set(users::Column::CreemSubscriptionId, Expr::value(None::<String>)));
            cols.push(set(users::Column::SubscriptionEndsAt, Expr::value(None::<OffsetDateTime>)));
        }
        Change::TopUp { credits_micros, reference, reason } => {
            let entry = NewEntry {
                user: UserId::from(user.id),
                kind: EntryKind::TopUp,
                amount_micros: *credits_micros,
                reference: reference.clone(),
                reason: reason.clone(),
            };
            // A top-up applied before (its balance move is undone with the savepoint).
            let step =
                append_in(txn, &entry, now).await.map_err(|e| PaymentStoreError(Box::new(e)))?;
            if matches!(step, Step::Repeated(_)) {
                return Ok(false);
            }
        }
        Change::PayInvoice { invoice, amount_micros, reference } => {
            let row = invoices::Entity::find_by_id(invoice.as_uuid())
                .filter(invoices::Column::UserId.eq(user.id))
                .one(txn)
                .await
                .map_err(err)?;
            // What the invoice had left to pay is paid; anything beyond (it was paid by credits
            // meanwhile, or a card pays whole cents) becomes credits, never lost.
            let open = row.filter(|r| r.status == InvoiceStatus::Open.as_str());
            let settled = open.as_ref().map_or(0, |r| r.total_micros.min(*amount_micros));
            if let Some(r) = &open {
                invoices::Entity::update_many()
                    .col_expr(invoices::Column::Status, Expr::value(InvoiceStatus::Paid.as_str()))
                    .col_expr(invoices::Column::PaidAt, Expr::value(now))
                    .filter(invoices::Column::Id.eq(r.id))
                    .exec(txn)
                    .await
                    .map_err(err)?;
                refresh_past_due(txn, user.id).await.map_err(err)?;
            }
            let excess = amount_micros - settled;
            if excess > 0 {
                let entry = NewEntry {
                    user: UserId::from(user.id),
                    kind: EntryKind::TopUp,
                    amount_micros: excess,
                    reference: format!("{reference}:excess"),
                    reason: "Card payment beyond what the invoice had left to pay".to_owned(),
                };
                let step = append_in(txn, &entry, now)
                    .await
                    .map_err(|e| PaymentStoreError(Box::new(e)))?;
                if matches!(step, Step::Repeated(_)) {
                    return Ok(false);
                }
            }
        }
        Change::Refund { refund_ref, payment_refs, amount_micros } => {
            return refund(txn, user, refund_ref, payment_refs, *amount_micros, now).await;
        }
        Change::Customer { customer_id } => {
            if user.creem_customer_id.is_none() {
                cols.push(set(users::Column::CreemCustomerId, Expr::value(customer_id.clone())));
            }
        }
        Change::Seen => {
            cols.push(set(users::Column::SubscriptionEventAt, Expr::value(event.created_at_ms)));
        }
    }
    if !cols.is_empty() {
        let mut q = users::Entity::update_many()
            .col_expr(users::Column::UpdatedAt, Expr::value(now))
            .filter(users::Column::Id.eq(user.id));
        for (col, value) in cols {
            q = q.col_expr(col, value);
        }
        q.exec(txn).await.map_err(err)?;
    }
    Ok(true)
}

/// Records a refund once and reverses what its payment bought; `false` when it was recorded
/// before.
async fn refund(
    txn: &DatabaseTransaction,
    user: &users::Model,
    refund_ref: &str,
    payment_refs: &[String],
    amount_micros: i64,
    now: OffsetDateTime,
) -> Result<bool, PaymentStoreError> {
    use payment_transactions::Column as P;
    let original = payment_transactions::Entity::find()
        .filter(P::UserId.eq(user.id))
        .filter(P::ProviderRef.is_in(payment_refs.iter().map(String::as_str)))
        .filter(P::Status.eq("succeeded"))
        .one(txn)
        .await
        .map_err(err)?;
    let recorded = payment_transactions::Entity::insert(payment_transactions::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        user_id: Set(user.id),
        invoice_id: Set(None),
        provider: Set("creem".to_owned()),
        provider_ref: Set(Some(refund_ref.to_owned())),
        amount_micros: Set(-amount_micros),
        currency: Set(original.as_ref().map_or_else(|| "USD".to_owned(), |o| o.currency.clone())),
        status: Set("refunded".to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        purpose: Set(original
            .as_ref()
            .and_then(|o| o.provider_ref.clone())
            .map(|r| format!("refund:{r}"))),
    })
    .on_conflict_do_nothing_on([P::ProviderRef])
    .exec_without_returning(txn)
    .await
    .map_err(err)?;
    if !matches!(recorded, TryInsertResult::Inserted(n) if n > 0) {
        return Ok(false);
    }
    let Some(original) = original else {
        tracing::error!(refund = %refund_ref, "a refund of a payment this gateway did not record; nothing reversed");
        return Ok(true);
    };
    payment_transactions::Entity::update_many()
        .col_expr(P::Status, Expr::value("refunded"))
        .col_expr(P::UpdatedAt, Expr::value(now))
        .filter(P::Id.eq(original.id))
        .exec(txn)
        .await
        .map_err(err)?;
    let paid_ref = original.provider_ref.clone().unwrap_or_default();
    match original.purpose.as_deref().and_then(Purpose::parse) {
        Some(Purpose::Credits(_)) => {
            // The credits bought, in proportion to what is refunded, as far as the balance goes.
            let bought = credit_ledger::Entity::find()
                .filter(credit_ledger::Column::UserId.eq(user.id))
                .filter(credit_ledger::Column::Reference.eq(format!("creem:{paid_ref}")))
                .one(txn)
                .await
                .map_err(err)?
                .map_or(0, |e| e.amount_micros);
            let share = i128::from(bought) * i128::from(amount_micros.min(original.amount_micros))
                / i128::from(original.amount_micros.max(1));
            let balance = users::Entity::find_by_id(user.id)
                .one(txn)
                .await
                .map_err(err)?
                .map_or(0, |u| u.credits_micros);
            let take = i64::try_from(share).unwrap_or(i64::MAX).min(balance);
            if take < i64::try_from(share).unwrap_or(i64::MAX) {
                tracing::warn!(refund = %refund_ref, "refunded credits were partly spent; the balance goes to zero");
            }
            if take > 0 {
                let entry = NewEntry {
                    user: UserId::from(user.id),
                    kind: EntryKind::Refund,
                    amount_micros: -take,
                    reference: refund_ref.to_owned(),
                    reason: "Credit pack refunded".to_owned(),
                };
                append_in(txn, &entry, now).await.map_err(|e| PaymentStoreError(Box::new(e)))?;
            }
        }
        Some(Purpose::Tier(_)) => {
            users::Entity::update_many()
                .col_expr(users::Column::Tier, Expr::value(Tier::Free.as_str()))
                .col_expr(users::Column::CreemSubscriptionId, Expr::value(None::<String>))
                .col_expr(users::Column::SubscriptionEndsAt, Expr::value(None::<OffsetDateTime>))
                .col_expr(users::Column::UpdatedAt, Expr::value(now))
                .filter(users::Column::Id.eq(user.id))
                .exec(txn)
                .await
                .map_err(err)?;
        }
        Some(Purpose::Invoice(invoice)) => {
            invoices::Entity::update_many()
                .col_expr(invoices::Column::Status, Expr::value(InvoiceStatus::Open.as_str()))
                .col_expr(invoices::Column::PaidAt, Expr::value(None::<OffsetDateTime>))
                .filter(invoices::Column::Id.eq(invoice.as_uuid()))
                .filter(invoices::Column::UserId.eq(user.id))
                .exec(txn)
                .await
                .map_err(err)?;
            refresh_past_due(txn, user.id).await.map_err(err)?;
        }
        None => {}
    }
    Ok(true)
}

impl SqlPaymentStore {
    async fn handle_in(
        txn: &DatabaseTransaction,
        event: &Event,
        decide: Decide<'_>,
        now: OffsetDateTime,
    ) -> Result<(Handled, Option<uuid::Uuid>), PaymentStoreError> {
        let row = locked_account(txn, event).await.map_err(err)?;
        let account = row.as_ref().map(account_of);
        let handled = match decide(account.as_ref()) {
            Decision::Ignore(why) => Handled::Ignored(why),
            Decision::Refuse(why) => Handled::Refused(why),
            Decision::Apply(changes) => {
                let Some(row) = &row else {
                    return Ok((Handled::Refused("no account".into()), None));
                };
                let mut handled =
                    Handled::Applied { user: UserId::from(row.id), changes: changes.clone() };
                for change in &changes {
                    if !apply(txn, row, event, change, now).await? {
                        handled = Handled::DuplicatePayment;
                        break;
                    }
                }
                handled
            }
        };
        Ok((handled, row.map(|r| r.id)))
    }
}

#[async_trait]
impl PaymentStore for SqlPaymentStore {
    async fn handle(
        &self,
        event: &Event,
        decide: Decide<'_>,
        now: OffsetDateTime,
    ) -> Result<Handled, PaymentStoreError> {
        let txn = self.store.connection().begin().await.map_err(err)?;
        let created =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.created_at_ms) * 1_000_000)
                .unwrap_or(now);
        let claimed = billing_webhook_events::Entity::insert(billing_webhook_events::ActiveModel {
            id: Set(event.id.clone()),
            event_type: Set(event.event_type.chars().take(100).collect()),
            created_at: Set(created),
            received_at: Set(now),
            user_id: Set(None),
            outcome: Set("ignored".to_owned()),
            detail: Set(None),
        })
        .on_conflict_do_nothing_on([billing_webhook_events::Column::Id])
        .exec_without_returning(&txn)
        .await
        .map_err(err)?;
        if !matches!(claimed, TryInsertResult::Inserted(n) if n > 0) {
            txn.rollback().await.map_err(err)?;
            return Ok(Handled::Duplicate);
        }
        // A refused or duplicate payment changes nothing but the event's record: the changes
        // run under a savepoint that is rolled back.
        let inner = txn.begin().await.map_err(err)?;
        let (handled, user) = match Self::handle_in(&inner, event, decide, now).await {
            Ok(result) => result,
            Err(e) => {
                inner.rollback().await.map_err(err)?;
                txn.rollback().await.map_err(err)?;
                return Err(e);
            }
        };
        let (outcome, detail) = match &handled {
            Handled::Applied { .. } => ("applied", None),
            Handled::DuplicatePayment => ("duplicate_payment", None),
            Handled::Ignored(why) => ("ignored", Some(why.clone())),
            Handled::Refused(why) => ("refused", Some(why.clone())),
            Handled::Duplicate => ("ignored", None),
        };
        if matches!(handled, Handled::Applied { .. }) {
            inner.commit().await.map_err(err)?;
        } else {
            inner.rollback().await.map_err(err)?;
        }
        billing_webhook_events::Entity::update_many()
            .col_expr(billing_webhook_events::Column::Outcome, Expr::value(outcome))
            .col_expr(
                billing_webhook_events::Column::Detail,
                Expr::value(detail.map(|d| d.chars().take(500).collect::<String>())),
            )
            .col_expr(billing_webhook_events::Column::UserId, Expr::value(user))
            .filter(billing_webhook_events::Column::Id.eq(event.id.as_str()))
            .exec(&txn)
            .await
            .map_err(err)?;
        txn.commit().await.map_err(err)?;
        Ok(handled)
    }

    async fn account(&self, user: UserId) -> Result<Option<Account>, PaymentStoreError> {
        let row = users::Entity::find_by_id(user.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(account_of))
    }

    async fn end_due_subscriptions(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<UserId>, PaymentStoreError> {
        let db = self.store.connection();
        let due: Vec<uuid::Uuid> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(users::Column::SubscriptionEndsAt.lte(now))
            .into_tuple()
            .all(db)
            .await
            .map_err(err)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        users::Entity::update_many()
            .col_expr(users::Column::Tier, Expr::value(Tier::Free.as_str()))
            .col_expr(users::Column::CreemSubscriptionId, Expr::value(None::<String>))
            .col_expr(users::Column::SubscriptionEndsAt, Expr::value(None::<OffsetDateTime>))
            .col_expr(users::Column::UpdatedAt, Expr::value(now))
            .filter(users::Column::Id.is_in(due.clone()))
            .filter(users::Column::SubscriptionEndsAt.lte(now))
            .exec(db)
            .await
            .map_err(err)?;
        Ok(due.into_iter().map(UserId::from).collect())
    }
}
