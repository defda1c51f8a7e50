//! [`Billing`]: the use cases on top of the stores: a user's bill so far, credits that move
//! (and pay what is open), closing a month, recomputing an invoice.

use std::sync::Arc;

use gateway_core::{Plan, PlanSource, User, UserId};
use serde::Serialize;
use time::OffsetDateTime;

use crate::invoice::{
    BillingPeriod, CloseReport, Invoice, InvoiceStore, InvoiceStoreError, PeriodUsage, Terms,
    charges, recompute,
};
use crate::ledger::{self, Appended, EntryKind, LedgerError, LedgerStore, NewEntry};
use crate::plans::{Ceiling, Plans, effective_cap, monthly_ceiling};

/// A user's bill for the current month so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub tier: gateway_core::Tier,
    pub plan: Plan,
    pub period: BillingPeriod,
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    pub requests: u64,
    pub tokens_used: u64,
    pub tokens_included: u64,
    pub overage_tokens: u64,
    pub overage_micros: i64,
    /// The spend cap in effect, and whether it is the plan's default (its price).
    pub overage_cap_micros: i64,
    pub overage_cap_is_default: bool,
    /// The most tokens the month allows (included plus what the cap pays for).
    pub ceiling_tokens: u64,
    pub credits_micros: i64,
    /// What the month's requests cost at model prices (shown, not billed).
    pub usage_cost_micros: i64,
    /// What the plan subscription paid this month.
    pub prepaid_micros: i64,
    /// Plan fee plus overage so far, less what the subscription paid and the credits that
    /// would pay the rest.
    pub estimated_total_micros: i64,
    /// An invoice stayed open past its grace period: free-tier limits apply.
    pub past_due: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Invoices(#[from] InvoiceStoreError),
    #[error(transparent)]
    Code(#[from] crate::codes::CodeError),
    /// No such invoice of this user.
    #[error("no such invoice")]
    NoSuchInvoice,
    /// The invoice is paid or void.
    #[error("the invoice has nothing left to pay")]
    NothingToPay,
    /// A period that has not ended was to be closed without being forced.
    #[error("the period {0} has not ended")]
    PeriodNotEnded(BillingPeriod),
}

/// Billing's services.
#[derive(Clone)]
pub struct Billing {
    pub plans: Arc<Plans>,
    ledger: Arc<dyn LedgerStore>,
    invoices: Arc<dyn InvoiceStore>,
    /// How long an invoice may stay open before the account is past due.
    grace: time::Duration,
}

impl std::fmt::Debug for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billing").field("grace", &self.grace).finish_non_exhaustive()
    }
}

/// What moving credits did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub appended: Appended,
    /// Open invoices the new credits paid into.
    pub paid: Vec<Invoice>,
}

impl Billing {
    pub fn new(
        plans: Arc<Plans>,
        ledger: Arc<dyn LedgerStore>,
        invoices: Arc<dyn InvoiceStore>,
        grace: time::Duration,
    ) -> Self {
        Self { plans, ledger, invoices, grace }
    }

    pub fn ledger(&self) -> &dyn LedgerStore {
        self.ledger.as_ref()
    }

    pub fn invoices(&self) -> &dyn InvoiceStore {
        self.invoices.as_ref()
    }

    /// `user`'s month so far, at `now`.
    pub async fn summary(&self, user: &User, now: OffsetDateTime) -> Result<Summary, BillingError> {
        let period = BillingPeriod::containing(now);
        let plan = self.plans.plan(user.tier);
        let used: PeriodUsage = self.invoices.period_usage(user.id, period).await?;
        let c = charges(&Terms::of(&plan), used.tokens, used.cost_micros);
        let Ceiling { tokens: mut ceiling, .. } = monthly_ceiling(&plan, user.overage_cap_micros);
        if user.role == gateway_core::Role::Admin {
            // The operators' own keys have no ceiling (and they are not invoiced).
            ceiling = crate::plans::UNLIMITED_TOKENS;
        }
        let subtotal = c.subtotal_micros();
        Ok(Summary {
            tier: user.tier,
            period,
            period_start: period.starts_at(),
            period_end: period.ends_at(),
            requests: used.requests,
            tokens_used: used.tokens,
            tokens_included: plan.included_tokens,
            overage_tokens: c.overage_tokens,
            overage_micros: c.overage_micros,
            overage_cap_micros: effective_cap(&plan, user.overage_cap_micros),
            overage_cap_is_default: user.overage_cap_micros.is_none(),
            ceiling_tokens: ceiling,
            credits_micros: user.credits_micros,
            usage_cost_micros: used.cost_micros,
            prepaid_micros: used.prepaid_micros.clamp(0, plan.price_monthly_micros),
            // Admins (the operators) are not invoiced.
            estimated_total_micros: if user.role == gateway_core::Role::Admin {
                0
            } else {
                let left =
                    (subtotal - used.prepaid_micros.clamp(0, plan.price_monthly_micros)).max(0);
                left - user.credits_micros.clamp(0, left)
            },
            past_due: user.past_due_after.is_some_and(|t| t <= now),
            plan: Plan::clone(&plan),
        })
    }

    /// Appends a ledger entry (checked first); credits that arrive pay the user's open
    /// invoices, oldest first.
    pub async fn move_credits(
        &self,
        entry: &NewEntry,
        now: OffsetDateTime,
    ) -> Result<Moved, BillingError> {
        ledger::check(entry)?;
        let appended = self.ledger.append(entry, now).await?;
        let paid = if entry.amount_micros > 0 {
            self.invoices.pay_open_invoices(entry.user, now).await?
        } else {
            Vec::new()
        };
        Ok(Moved { appended, paid })
    }

    /// An administrator's grant (positive) or correction (negative) of `user`'s credits: the
    /// entry's kind follows the sign, and its reference is the admin's `reference` in the
    /// admins' namespace, so a retried grant (the same API call, the same form posted twice)
    /// is applied once.
    pub async fn grant_by_admin(
        &self,
        user: UserId,
        amount_micros: i64,
        reason: &str,
        reference: &str,
        now: OffsetDateTime,
    ) -> Result<Moved, BillingError> {
        let entry = NewEntry {
            user,
            kind: if amount_micros > 0 { EntryKind::Grant } else { EntryKind::Adjustment },
            amount_micros,
            reference: format!("admin:{}", reference.trim()),
            reason: reason.to_owned(),
        };
        self.move_credits(&entry, now).await
    }

    /// Redeems `code` for `user` from `codes`; its credits pay the user's open invoices.
    pub async fn redeem(
        &self,
        codes: &dyn crate::codes::CodeStore,
        code: &str,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<(crate::ledger::LedgerEntry, Vec<Invoice>), BillingError> {
        let entry = codes.redeem(code, user, now).await?;
        let paid = self.invoices.pay_open_invoices(user, now).await?;
        Ok((entry, paid))
    }

    /// Pays what credits can of the user's open invoices (oldest first) and returns invoice
    /// `id` as it then stands, and whether credits paid anything.
    pub async fn pay_invoice_with_credits(
        &self,
        user: UserId,
        id: gateway_core::InvoiceId,
        now: OffsetDateTime,
    ) -> Result<(Invoice, bool), BillingError> {
        let mine = |found: Option<Invoice>| {
            found.filter(|i| i.user_id == user).ok_or(BillingError::NoSuchInvoice)
        };
        let invoice = mine(self.invoices.invoice(id).await?)?;
        if invoice.status != crate::invoice::InvoiceStatus::Open {
            return Err(BillingError::NothingToPay);
        }
        let paid = self.invoices.pay_open_invoices(user, now).await?;
        Ok((mine(self.invoices.invoice(id).await?)?, !paid.is_empty()))
    }

    /// Closes `period` (see [`InvoiceStore::close_period`]). A period that has not ended is
    /// closed only when `force`d: its later usage would never be billed.
    pub async fn close_period(
        &self,
        period: BillingPeriod,
        force: bool,
        now: OffsetDateTime,
    ) -> Result<CloseReport, BillingError> {
        if period.ends_at() > now && !force {
            return Err(BillingError::PeriodNotEnded(period));
        }
        let plans = self.plans.all();
        Ok(self.invoices.close_period(period, &plans, self.grace, now).await?)
    }

    /// The stored invoice of `user` for `period`, and the same recomputed from the usage
    /// records now; `None` when there is no invoice.
    pub async fn recompute(
        &self,
        user: UserId,
        period: BillingPeriod,
    ) -> Result<Option<(Invoice, Invoice)>, BillingError> {
        let Some(stored) = self.invoices.invoice_for(user, period).await? else {
            return Ok(None);
        };
        let used = self.invoices.period_usage(user, period).await?;
        let again = recompute(&stored, used);
        Ok(Some((stored, again)))
    }
}
