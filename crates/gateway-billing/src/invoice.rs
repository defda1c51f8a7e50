//! Monthly invoices: what a user owes for a calendar month (UTC) on their plan, the plan fee
//! plus the overage beyond the included tokens at the plan's rate, less the credits that paid
//! part of it. Computed here from numbers (usage sums, the plan's terms, the credit balance);
//! the store closes a period in one transaction with these functions.

use async_trait::async_trait;
use gateway_core::{InvoiceId, Plan, Tier, UserId};
use serde::Serialize;
use time::{Date, Month, OffsetDateTime};

use crate::money::thousands;
use crate::plans::overage_micros;

/// A calendar month in UTC: the period an invoice covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BillingPeriod {
    start: Date,
}

/// A period that is not `YYYY-MM`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a billing period is written YYYY-MM (for example 2026-11)")]
pub struct InvalidPeriod;

impl BillingPeriod {
    /// The month `t` falls in.
    pub fn containing(t: OffsetDateTime) -> Self {
        let d = t.to_offset(time::UtcOffset::UTC).date();
        Self { start: d.replace_day(1).unwrap_or(d) }
    }

    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Self, InvalidPeriod> {
        let (y, m) = s.trim().split_once('-').ok_or(InvalidPeriod)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(InvalidPeriod);
        }
        let year: i32 = y.parse().map_err(|_| InvalidPeriod)?;
        let month: u8 = m.parse().map_err(|_| InvalidPeriod)?;
        let month = Month::try_from(month).map_err(|_| InvalidPeriod)?;
        let start = Date::from_calendar_date(year, month, 1).map_err(|_| InvalidPeriod)?;
        Ok(Self { start })
    }

    /// The period starting on `start` (which must be a first of the month).
    pub fn starting(start: Date) -> Result<Self, InvalidPeriod> {
        if start.day() == 1 { Ok(Self { start }) } else { Err(InvalidPeriod) }
    }

    /// The first day.
    pub fn start(self) -> Date {
        self.start
    }

    /// The first day of the next month (excluded).
    pub fn end(self) -> Date {
        let (y, m) = (self.start.year(), self.start.month());
        let (y, m) = if m == Month::December { (y + 1, Month::January) } else { (y, m.next()) };
        Date::from_calendar_date(y, m, 1).unwrap_or(self.start)
    }

    #[must_use]
    pub fn previous(self) -> Self {
        let last = self.start.previous_day().unwrap_or(self.start);
        Self { start: last.replace_day(1).unwrap_or(last) }
    }

    pub fn starts_at(self) -> OffsetDateTime {
        self.start.midnight().assume_utc()
    }

    pub fn ends_at(self) -> OffsetDateTime {
        self.end().midnight().assume_utc()
    }

    /// `INV-YYYYMM-NNNN`: the `n`th invoice of this period.
    pub fn invoice_number(self, n: u32) -> String {
        format!("INV-{:04}{:02}-{n:04}", self.start.year(), self.start.month() as u8)
    }
}

impl std::fmt::Display for BillingPeriod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.start.year(), self.start.month() as u8)
    }
}

impl Serialize for BillingPeriod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where an invoice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Something is left to pay.
    Open,
    Paid,
    /// Cancelled; nothing is owed.
    Void,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [InvoiceStatus::Open, InvoiceStatus::Paid, InvoiceStatus::Void]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// What an invoice line is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    PlanFee,
    Overage,
    /// The plan fee as the user's subscription at the payment provider paid it during the
    /// month (a negative amount).
    SubscriptionPayment,
    /// Credits applied (a negative amount).
    Credits,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::PlanFee => "plan_fee",
            LineKind::Overage => "overage",
            LineKind::SubscriptionPayment => "subscription_payment",
            LineKind::Credits => "credits",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [LineKind::PlanFee, LineKind::Overage, LineKind::SubscriptionPayment, LineKind::Credits]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    /// Months, tokens, or 1 for credits.
    pub quantity: i64,
    /// Per month, per 1,000 tokens, or the credits applied.
    pub unit_micros: i64,
    pub amount_micros: i64,
}

/// The plan's terms an invoice was computed with (kept on the invoice: plans change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Terms {
    pub tier: Tier,
    /// The plan's name when the invoice was made.
    pub plan_name: String,
    pub fee_micros: i64,
    pub included_tokens: u64,
    pub overage_micros_per_1k: Option<i64>,
}

impl Terms {
    pub fn of(plan: &Plan) -> Self {
        Self {
            tier: plan.tier,
            plan_name: plan.name.clone(),
            fee_micros: plan.price_monthly_micros,
            included_tokens: plan.included_tokens,
            overage_micros_per_1k: plan.overage_micros_per_1k,
        }
    }
}

/// What a user owes for a period before credits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Charges {
    pub terms: Terms,
    /// Tokens of every request in the period (from the usage records).
    pub used_tokens: u64,
    /// Tokens beyond the included ones, billed at the overage rate (none without a rate).
    pub overage_tokens: u64,
    pub overage_micros: i64,
    /// What the period's requests cost at model prices (shown, not billed).
    pub usage_cost_micros: i64,
}

impl Charges {
    /// Plan fee plus overage.
    pub fn subtotal_micros(&self) -> i64 {
        self.terms.fee_micros.saturating_add(self.overage_micros)
    }
}

/// The charges of a period in which the user used `used_tokens` costing `usage_cost_micros`
/// at model prices, under `terms`.
pub fn charges(terms: &Terms, used_tokens: u64, usage_cost_micros: i64) -> Charges {
    let (overage_tokens, overage) = match terms.overage_micros_per_1k {
        Some(rate) => {
            let over = used_tokens.saturating_sub(terms.included_tokens);
            (over, overage_micros(over, rate))
        }
        None => (0, 0),
    };
    Charges {
        terms: terms.clone(),
        used_tokens,
        overage_tokens,
        overage_micros: overage,
        usage_cost_micros,
    }
}

/// How the plan-fee line reads; [`plan_name_of`] reads the name back.
pub fn plan_fee_description(plan_name: &str) -> String {
    format!("{plan_name} plan, one month")
}

/// The plan's name in a plan-fee line's description.
pub fn plan_name_of(description: &str) -> Option<&str> {
    description.strip_suffix(" plan, one month")
}

/// The invoice's lines: the plan fee, the overage when there is any, what the subscription
/// paid, the credits applied.
pub fn lines(c: &Charges, prepaid_micros: i64, credits_applied_micros: i64) -> Vec<InvoiceLine> {
    let mut lines = Vec::with_capacity(4);
    if c.terms.fee_micros > 0 {
        lines.push(InvoiceLine {
            kind: LineKind::PlanFee,
            description: plan_fee_description(&c.terms.plan_name),
            quantity: 1,
            unit_micros: c.terms.fee_micros,
            amount_micros: c.terms.fee_micros,
        });
    }
    if let (Some(rate), true) = (c.terms.overage_micros_per_1k, c.overage_tokens > 0) {
        lines.push(InvoiceLine {
            kind: LineKind::Overage,
            description: format!(
                "Overage: {} tokens beyond the {} included, per 1,000 tokens",
                thousands(c.overage_tokens),
                thousands(c.terms.included_tokens)
            ),
            quantity: i64::try_from(c.overage_tokens).unwrap_or(i64::MAX),
            unit_micros: rate,
            amount_micros: c.overage_micros,
        });
    }
    if prepaid_micros > 0 {
        lines.push(InvoiceLine {
            kind: LineKind::SubscriptionPayment,
            description: "Plan fee paid by your subscription".to_owned(),
            quantity: 1,
            unit_micros: -prepaid_micros,
            amount_micros: -prepaid_micros,
        });
    }
    if credits_applied_micros > 0 {
        lines.push(InvoiceLine {
            kind: LineKind::Credits,
            description: "Credits applied".to_owned(),
            quantity: 1,
            unit_micros: -credits_applied_micros,
            amount_micros: -credits_applied_micros,
        });
    }
    lines
}

/// A stored invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invoice {
    pub id: InvoiceId,
    /// `INV-YYYYMM-NNNN`, gapless within a month.
    pub number: String,
    pub user_id: UserId,
    pub period: BillingPeriod,
    #[serde(flatten)]
    pub charges: Charges,
    pub subtotal_micros: i64,
    /// The plan fee the subscription at the payment provider paid during the month.
    pub prepaid_micros: i64,
    pub credits_applied_micros: i64,
    /// What is left to pay.
    pub total_micros: i64,
    pub status: InvoiceStatus,
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The end of the grace period: still open then, the account is past due.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub paid_at: Option<OffsetDateTime>,
}

/// What closing a period did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CloseReport {
    pub period: Option<BillingPeriod>,
    /// Invoices created now.
    pub created: usize,
    /// Users invoiced for the period before (left as they were).
    pub already_invoiced: usize,
    /// Of those created, paid in full by credits.
    pub paid_by_credits: usize,
    /// Sum of the new invoices' totals left to pay.
    pub open_micros: i64,
    /// Users with a new open invoice (their key caches learn of it).
    #[serde(skip)]
    pub open_users: Vec<UserId>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvoiceStoreError {
    /// Another instance is closing a period right now.
    #[error("another instance is closing a billing period; try again shortly")]
    Busy,
    #[error("invoice store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Tokens and cost of a user's requests in a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeriodUsage {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: i64,
    /// What the user's plan subscription paid at the payment provider during the period.
    pub prepaid_micros: i64,
}

/// Invoices, and the usage they are computed from, behind a port.
#[async_trait]
pub trait InvoiceStore: Send + Sync {
    /// Closes `period` in one transaction, one closer at a time across instances: every user
    /// (admins, the operators, excepted) not yet invoiced for it whose plan (from `plans`) has
    /// a fee, or who used tokens beyond the included ones, gets an invoice numbered in sequence; credits pay what they can
    /// (one ledger entry per invoice); an invoice left open is due `grace` after `now`.
    /// Closing a closed period changes nothing.
    async fn close_period(
        &self,
        period: BillingPeriod,
        plans: &[std::sync::Arc<Plan>],
        grace: time::Duration,
        now: OffsetDateTime,
    ) -> Result<CloseReport, InvoiceStoreError>;

    /// The user's invoices, newest period first.
    async fn invoices(&self, user: UserId) -> Result<Vec<Invoice>, InvoiceStoreError>;

    async fn invoice(&self, id: InvoiceId) -> Result<Option<Invoice>, InvoiceStoreError>;

    async fn invoice_for(
        &self,
        user: UserId,
        period: BillingPeriod,
    ) -> Result<Option<Invoice>, InvoiceStoreError>;

    /// The user's usage in `period`, summed from the usage records.
    async fn period_usage(
        &self,
        user: UserId,
        period: BillingPeriod,
    ) -> Result<PeriodUsage, InvoiceStoreError>;

    /// Pays the user's open invoices, oldest first, from their credits (as far as they go);
    /// clears the past-due mark when none stays open. Returns the invoices it paid into.
    async fn pay_open_invoices(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<Invoice>, InvoiceStoreError>;

    /// Money the payment provider reported received in `[from, to)`: succeeded payments, in
    /// micro-dollars (refunded ones are not counted).
    async fn payments_received(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<i64, InvoiceStoreError>;
}

/// The invoice `stored` recomputed from `usage` with its own terms and credits: equal to
/// `stored` when the usage records still say what they said when it was closed.
pub fn recompute(stored: &Invoice, usage: PeriodUsage) -> Invoice {
    let c = charges(&stored.charges.terms, usage.tokens, usage.cost_micros);
    let subtotal = c.subtotal_micros();
    let prepaid = stored.prepaid_micros.min(c.terms.fee_micros).max(0);
    let credits = stored.credits_applied_micros.min((subtotal - prepaid).max(0));
    Invoice {
        lines: lines(&c, prepaid, credits),
        subtotal_micros: subtotal,
        prepaid_micros: prepaid,
        credits_applied_micros: credits,
        total_micros: subtotal - prepaid - credits,
        charges: c,
        ..stored.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_calendar_months_in_utc() {
        let p = BillingPeriod::parse("2026-12").unwrap();
        assert_eq!(p.to_string(), "2026-12");
        assert_eq!(p.end(), time::macros::date!(2027 - 01 - 01));
        assert_eq!(p.previous().to_string(), "2026-11");
        assert_eq!(BillingPeriod::parse("2027-01").unwrap().previous().to_string(), "2026-12");
        assert_eq!(p.invoice_number(7), "INV-202612-0007");
        let late = time::macros::datetime!(2026-11-30 23:30 -02:00);
        assert_eq!(BillingPeriod::containing(late).to_string(), "2026-12");
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
            assert_eq!(BillingPeriod::parse(bad), Err(InvalidPeriod), "{bad}");
        }
    }

    /// The worked example of docs/BILLING.md.
    #[test]
    fn a_starter_month_with_overage_and_credits() {
        let terms = Terms::of(&Tier::Starter.default_plan());
        let c = charges(&terms, 1_234_567, 65_040);
        assert_eq!((c.overage_tokens, c.overage_micros), (734_567, 1_469_134));
        assert_eq!(c.subtotal_micros(), 30_469_134);
        let l = lines(&c, 0, 10_000_000);
        assert_eq!(
            l.iter().map(|l| (l.kind, l.amount_micros)).collect::<Vec<_>>(),
            [
                (LineKind::PlanFee, 29_000_000),
                (LineKind::Overage, 1_469_134),
                (LineKind::Credits, -10_000_000)
            ]
        );
        assert_eq!(l.iter().map(|l| l.amount_micros).sum::<i64>(), 20_469_134);
    }

    #[test]
    fn free_plans_bill_nothing_and_within_included_tokens_only_the_fee() {
        let free = charges(&Terms::of(&Tier::Free.default_plan()), 10_000, 0);
        assert_eq!(free.subtotal_micros(), 0);
        assert!(lines(&free, 0, 0).is_empty());
        let pro = charges(&Terms::of(&Tier::Pro.default_plan()), 2_000_000, 0);
        assert_eq!((pro.overage_tokens, pro.subtotal_micros()), (0, 99_000_000));
    }
}
