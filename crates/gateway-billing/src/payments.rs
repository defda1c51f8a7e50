//! Payments through Creem, a merchant of record: the catalogue of what can be bought, the
//! webhook signature, Creem's events as the gateway reads them, and what each event means for
//! an account ([`decide`]). No I/O: the store applies a decision in one transaction, the
//! Creem adapter talks to Creem.
//!
//! The rules:
//! - nothing is read from a webhook before its signature (hex HMAC-SHA256 of the raw body under
//!   the webhook secret) is checked in constant time;
//! - an event id is handled once, and a payment (Creem's order or transaction id) is recorded
//!   once: a redelivery, or a replay under another event id, changes nothing;
//! - an amount or currency that is not the configured product's is refused and changes nothing;
//! - subscription events apply in the order Creem created them: one older than the newest
//!   applied to the account still records its payment but does not move the tier.

use std::collections::HashMap;

use gateway_core::{InvoiceId, PlanSource, Tier, UserId};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use time::OffsetDateTime;

/// One credit pack a user can buy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditPack {
    pub name: String,
    pub product_id: String,
    /// What the buyer pays.
    pub price_micros: i64,
    /// What lands in their ledger.
    pub credits_micros: i64,
}

/// What can be bought, by Creem product id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The subscription product of each paid tier.
    pub tiers: HashMap<Tier, String>,
    pub packs: Vec<CreditPack>,
    /// A one-time product priced at one cent, bought in as many units as an invoice has left
    /// to pay.
    pub invoice_product: Option<String>,
    /// The currency every product is priced in (`USD`).
    pub currency: String,
}

impl Catalog {
    pub fn product_for(&self, tier: Tier) -> Option<&str> {
        self.tiers.get(&tier).map(String::as_str)
    }

    pub fn tier_of(&self, product: &str) -> Option<Tier> {
        self.tiers.iter().find(|(_, p)| *p == product).map(|(t, _)| *t)
    }

    pub fn pack(&self, name: &str) -> Option<&CreditPack> {
        self.packs.iter().find(|p| p.name == name)
    }

    pub fn pack_of(&self, product: &str) -> Option<&CreditPack> {
        self.packs.iter().find(|p| p.product_id == product)
    }
}

/// The hex HMAC-SHA256 of `body` under `secret`: Creem's `creem-signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    mac.finalize().into_bytes().iter().fold(String::with_capacity(64), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Whether `signature` (the header, hex) is `body`'s under `secret`, compared in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(bytes) = signature.and_then(|s| unhex(s.trim())) else { return false };
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// What a checkout was for; written into its metadata, echoed back by Creem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    Tier(Tier),
    Credits(String),
    Invoice(InvoiceId),
}

impl Purpose {
    pub fn encode(&self) -> String {
        match self {
            Purpose::Tier(t) => format!("tier:{t}"),
            Purpose::Credits(name) => format!("credits:{name}"),
            Purpose::Invoice(id) => format!("invoice:{id}"),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':')? {
            ("tier", t) => t.parse().ok().map(Purpose::Tier),
            ("credits", name) if !name.is_empty() => Some(Purpose::Credits(name.to_owned())),
            ("invoice", id) => id.parse().ok().map(Purpose::Invoice),
            _ => None,
        }
    }
}

/// The metadata keys the gateway puts on a checkout.
pub const META_USER: &str = "bluesminds_user";
pub const META_PURPOSE: &str = "bluesminds_purpose";
/// What an invoice checkout is to collect, in micro-dollars.
pub const META_AMOUNT: &str = "bluesminds_amount_micros";

/// Kinds of Creem events the gateway acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    CheckoutCompleted,
    SubscriptionActive,
    SubscriptionPaid,
    SubscriptionCanceled,
    SubscriptionExpired,
    RefundCreated,
    Other(String),
}

impl EventKind {
    fn parse(s: &str) -> Self {
        match s {
            "checkout.completed" => EventKind::CheckoutCompleted,
            "subscription.active" => EventKind::SubscriptionActive,
            "subscription.paid" => EventKind::SubscriptionPaid,
            "subscription.canceled" => EventKind::SubscriptionCanceled,
            "subscription.expired" => EventKind::SubscriptionExpired,
            "refund.created" => EventKind::RefundCreated,
            other => EventKind::Other(other.to_owned()),
        }
    }
}

/// A webhook event, read (after its signature was checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub kind: EventKind,
    /// When Creem created it, in milliseconds since the epoch: the order of events.
    pub created_at_ms: i64,
    /// From the metadata the gateway wrote on the checkout.
    pub user: Option<UserId>,
    pub purpose: Option<Purpose>,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub product_id: Option<String>,
    /// In the currency's minor unit (cents), as Creem states it.
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    /// The payment's own id (an order or a transaction): recorded once.
    pub payment_ref: Option<String>,
    pub period_end: Option<OffsetDateTime>,
    /// An invoice checkout's amount to collect, from its metadata.
    pub expected_micros: Option<i64>,
    /// A refund's own id.
    pub refund_id: Option<String>,
    /// The ids a refund may name its payment by (its transaction's, its order's).
    pub refunded_refs: Vec<String>,
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable webhook event: {0}")]
pub struct EventError(String);

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "eventType")]
    event_type: String,
    #[serde(default)]
    created_at: serde_json::Value,
    object: serde_json::Value,
}

fn text(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().map(str::to_owned)
}

/// An id that is either a string or an object with an `id`.
fn id_of(v: &serde_json::Value, key: &str) -> Option<String> {
    let field = v.get(key)?;
    field.as_str().map(str::to_owned).or_else(|| text(field, &["id"]))
}

fn millis(v: &serde_json::Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let t =
        OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn time_of(v: &serde_json::Value, key: &str) -> Option<OffsetDateTime> {
    let s = v.get(key)?.as_str()?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Reads a webhook body (Creem's `{"id", "eventType", "created_at", "object"}`).
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    let raw: RawEvent = serde_json::from_slice(body).map_err(|e| EventError(e.to_string()))?;
    if raw.id.is_empty() || raw.id.len() > 200 {
        return Err(EventError("an event id of 1 to 200 characters".into()));
    }
    let o = &raw.object;
    let metadata = o.get("metadata").cloned().unwrap_or_default();
    let user = text(&metadata, &[META_USER]).and_then(|u| u.parse().ok());
    let purpose = text(&metadata, &[META_PURPOSE]).and_then(|p| Purpose::parse(&p));
    let kind = EventKind::parse(&raw.event_type);
    let order = o.get("order").cloned().unwrap_or_default();
    let subscription = o.get("subscription").cloned().unwrap_or_default();
    let is_subscription = text(o, &["object"]).as_deref() == Some("subscription");
    let (subscription_id, period_end) = if is_subscription {
        (text(o, &["id"]), time_of(o, "current_period_end_date"))
    } else {
        (
            text(&subscription, &["id"]).or_else(|| subscription.as_str().map(str::to_owned)),
            time_of(&subscription, "current_period_end_date"),
        )
    };
    let product = o.get("product").cloned().unwrap_or_default();
    let product_id = text(&order, &["product"])
        .or_else(|| product.as_str().map(str::to_owned))
        .or_else(|| text(&product, &["id"]));
    let (amount_cents, currency, payment_ref) = match kind {
        EventKind::CheckoutCompleted => (
            order.get("amount").and_then(serde_json::Value::as_i64),
            text(&order, &["currency"]),
            text(&order, &["id"]),
        ),
        EventKind::RefundCreated => (
            o.get("refund_amount").and_then(serde_json::Value::as_i64),
            text(o, &["refund_currency"]),
            id_of(o, "transaction").or_else(|| text(&order, &["id"])),
        ),
        _ => {
            let transaction = o.get("last_transaction").cloned().unwrap_or_default();
            let amount = transaction
                .get("amount")
                .and_then(serde_json::Value::as_i64)
                .or_else(|| product.get("price").and_then(serde_json::Value::as_i64));
            let currency =
                text(&transaction, &["currency"]).or_else(|| text(&product, &["currency"]));
            (
                amount,
                currency,
                id_of(o, "last_transaction").or_else(|| text(o, &["last_transaction_id"])),
            )
        }
    };
    Ok(Event {
        id: raw.id,
        event_type: raw.event_type,
        created_at_ms: millis(&raw.created_at).unwrap_or(0),
        user,
        purpose,
        customer_id: id_of(o, "customer").or_else(|| text(&order, &["customer"])),
        subscription_id,
        product_id,
        amount_cents,
        currency,
        payment_ref,
        period_end,
        expected_micros: text(&metadata, &[META_AMOUNT]).and_then(|a| a.parse().ok()),
        refund_id: (kind == EventKind::RefundCreated).then(|| text(o, &["id"])).flatten(),
        refunded_refs: if kind == EventKind::RefundCreated {
            let transaction = o.get("transaction").cloned().unwrap_or_default();
            [
                id_of(o, "transaction"),
                id_of(&transaction, "order"),
                text(&order, &["id"]),
                order.as_str().map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            .collect()
        } else {
            Vec::new()
        },
        kind,
    })
}

/// An account's payment state, as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub user: UserId,
    pub tier: Tier,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    /// `created_at` of the newest subscription event applied (ms).
    pub subscription_event_at_ms: Option<i64>,
}

/// A change an event makes, applied by the store in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Records the payment (once: its reference is unique); when it was recorded before, the
    /// store applies nothing else of the event.
    Payment { reference: String, amount_micros: i64, currency: String, purpose: String },
    /// The tier, the customer and subscription ids, and the event's time; the subscription
    /// runs again (no end).
    Subscribe { tier: Tier, customer_id: Option<String>, subscription_id: Option<String> },
    /// Back to free at `at` (the end of the paid period).
    EndAt { at: OffsetDateTime },
    /// Back to free now.
    EndNow,
    /// Credits bought.
    TopUp { credits_micros: i64, reference: String, reason: String },
    /// An invoice paid by card: marked paid; what exceeds what it had left to pay becomes
    /// credits (reference `<reference>:excess`).
    PayInvoice { invoice: InvoiceId, amount_micros: i64, reference: String },
    /// A refund of the payment known by one of `payment_refs`: recorded once (`refund_ref`),
    /// and reversed: a credit pack's credits taken back in proportion (never below zero), a
    /// plan back to free at once, an invoice open again.
    Refund { refund_ref: String, payment_refs: Vec<String>, amount_micros: i64 },
    /// Creem's customer id of the account, stored when it has none yet (refunds and the
    /// portal find the account by it).
    Customer { customer_id: String },
    /// Marks the event's time as the newest subscription event applied.
    Seen,
}

/// What to do with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Apply(Vec<Change>),
    /// Acknowledged, nothing to do (with why).
    Ignore(String),
    /// Refused: an amount, currency or product that is not the configured one, or an event
    /// about nobody. Logged loudly; nothing changes.
    Refuse(String),
}

fn micros(cents: i64) -> i64 {
    cents.saturating_mul(10_000)
}

/// `micros` rounded up to a whole cent (a card pays cents).
pub fn round_up_to_cent(micros: i64) -> i64 {
    micros.saturating_add(9_999).div_euclid(10_000).saturating_mul(10_000)
}

/// What `event` means for `account` (`None`: the event names no known account).
pub fn decide(
    event: &Event,
    catalog: &Catalog,
    plans: &dyn PlanSource,
    account: Option<&Account>,
) -> Decision {
    let Some(account) = account else {
        return match event.kind {
            EventKind::Other(_) => Decision::Ignore(format!("{} is not handled", event.event_type)),
            _ => Decision::Refuse("the event names no account of this gateway".into()),
        };
    };
    let currency_ok = |c: &Option<String>| {
        c.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(&catalog.currency))
    };
    let newer = account.subscription_event_at_ms.is_none_or(|seen| event.created_at_ms >= seen);
    match (&event.kind, &event.purpose) {
        (EventKind::CheckoutCompleted, Some(Purpose::Tier(tier))) => {
            let plan = plans.plan(*tier);
            let expected = catalog.product_for(*tier);
            if expected.is_none() || event.product_id.as_deref() != expected {
                return Decision::Refuse(format!(
                    "product {:?} is not the {tier} product",
                    event.product_id
                ));
            }
            let paid = event.amount_cents.map(micros);
            if paid != Some(plan.price_monthly_micros) || !currency_ok(&event.currency) {
                return Decision::Refuse(format!(
                    "paid {:?} {:?}, the {tier} plan costs {} micro-dollars {}",
                    event.amount_cents, event.currency, plan.price_monthly_micros, catalog.currency
                ));
            }
            let Some(reference) = event.payment_ref.clone() else {
                return Decision::Refuse("a completed checkout without an order id".into());
            };
            let mut changes = vec![Change::Payment {
                reference,
                amount_micros: plan.price_monthly_micros,
                currency: catalog.currency.clone(),
                purpose: Purpose::Tier(*tier).encode(),
            }];
            if newer {
                changes.push(Change::Subscribe {
                    tier: *tier,
                    customer_id: event.customer_id.clone(),
                    subscription_id: event.subscription_id.clone(),
                });
                changes.push(Change::Seen);
            }
            Decision::Apply(changes)
        }
        (EventKind::CheckoutCompleted, Some(Purpose::Credits(name))) => {
            let Some(pack) = catalog.pack(name) else {
                return Decision::Refuse(format!("no credit pack {name:?}"));
            };
            if event.product_id.as_deref() != Some(pack.product_id.as_str()) {
                return Decision::Refuse(format!(
                    "product {:?} is not pack {name}'s",
                    event.product_id
                ));
            }
            if event.amount_cents.map(micros) != Some(pack.price_micros)
                || !currency_ok(&event.currency)
            {
                return Decision::Refuse(format!(
                    "paid {:?} {:?} for pack {name}, which costs {} micro-dollars",
                    event.amount_cents, event.currency, pack.price_micros
                ));
            }
            let Some(reference) = event.payment_ref.clone() else {
                return Decision::Refuse("a completed checkout without an order id".into());
            };
            let mut changes = vec![
                Change::Payment {
                    reference: reference.clone(),
                    amount_micros: pack.price_micros,
                    currency: catalog.currency.clone(),
                    purpose: Purpose::Credits(name.clone()).encode(),
                },
                Change::TopUp {
                    credits_micros: pack.credits_micros,
                    reference: format!("creem:{reference}"),
                    reason: format!("Credit pack {name}"),
                },
            ];
            changes.extend(
                event.customer_id.clone().map(|customer_id| Change::Customer { customer_id }),
            );
            Decision::Apply(changes)
        }
        (EventKind::SubscriptionActive | EventKind::SubscriptionPaid, _) => {
            let Some(tier) = event.product_id.as_deref().and_then(|p| catalog.tier_of(p)) else {
                return Decision::Refuse(format!("product {:?} is no tier's", event.product_id));
            };
            let plan = plans.plan(tier);
            let mut changes = Vec::new();
            if event.kind == EventKind::SubscriptionPaid {
                if event.amount_cents.map(micros) != Some(plan.price_monthly_micros)
                    || !currency_ok(&event.currency)
                {
                    return Decision::Refuse(format!(
                        "a renewal of {:?} {:?}, the {tier} plan costs {} micro-dollars",
                        event.amount_cents, event.currency, plan.price_monthly_micros
                    ));
                }
                let reference = event.payment_ref.clone().unwrap_or_else(|| {
                    format!("{}:{}", event.subscription_id.as_deref().unwrap_or("?"), event.id)
                });
                changes.push(Change::Payment {
                    reference,
                    amount_micros: plan.price_monthly_micros,
                    currency: catalog.currency.clone(),
                    purpose: Purpose::Tier(tier).encode(),
                });
            }
            if newer {
                changes.push(Change::Subscribe {
                    tier,
                    customer_id: event.customer_id.clone(),
                    subscription_id: event.subscription_id.clone(),
                });
                changes.push(Change::Seen);
            }
            if changes.is_empty() {
                Decision::Ignore("an older subscription event than one already applied".into())
            } else {
                Decision::Apply(changes)
            }
        }
        (EventKind::SubscriptionCanceled | EventKind::SubscriptionExpired, _) => {
            if !newer {
                return Decision::Ignore(
                    "an older subscription event than one already applied".into(),
                );
            }
            if account.subscription_id.is_some() && event.subscription_id != account.subscription_id
            {
                return Decision::Ignore("not the account's current subscription".into());
            }
            let end = match (&event.kind, event.period_end) {
                (EventKind::SubscriptionCanceled, Some(at)) => Change::EndAt { at },
                _ => Change::EndNow,
            };
            Decision::Apply(vec![end, Change::Seen])
        }
        (EventKind::CheckoutCompleted, Some(Purpose::Invoice(invoice))) => {
            let (Some(product), Some(expected)) = (&catalog.invoice_product, event.expected_micros)
            else {
                return Decision::Refuse("an invoice checkout this gateway cannot place".into());
            };
            if event.product_id.as_deref() != Some(product.as_str()) {
                return Decision::Refuse(format!(
                    "product {:?} is not the invoice product",
                    event.product_id
                ));
            }
            let amount_micros = round_up_to_cent(expected);
            if event.amount_cents.map(micros) != Some(amount_micros)
                || !currency_ok(&event.currency)
            {
                return Decision::Refuse(format!(
                    "paid {:?} {:?} for an invoice with {expected} micro-dollars to pay",
                    event.amount_cents, event.currency
                ));
            }
            let Some(reference) = event.payment_ref.clone() else {
                return Decision::Refuse("a completed checkout without an order id".into());
            };
            let mut changes = vec![
                Change::Payment {
                    reference: reference.clone(),
                    amount_micros,
                    currency: catalog.currency.clone(),
                    purpose: Purpose::Invoice(*invoice).encode(),
                },
                Change::PayInvoice {
                    invoice: *invoice,
                    amount_micros,
                    reference: format!("creem:{reference}"),
                },
            ];
            changes.extend(
                event.customer_id.clone().map(|customer_id| Change::Customer { customer_id }),
            );
            Decision::Apply(changes)
        }
        (EventKind::CheckoutCompleted, _) => {
            Decision::Refuse("a checkout this gateway did not make".into())
        }
        (EventKind::RefundCreated, _) => {
            let (Some(id), Some(cents)) = (&event.refund_id, event.amount_cents) else {
                return Decision::Refuse("a refund without its id or amount".into());
            };
            if cents <= 0 || !currency_ok(&event.currency) || event.refunded_refs.is_empty() {
                return Decision::Refuse(format!(
                    "a refund of {cents} {:?} naming {:?}",
                    event.currency, event.refunded_refs
                ));
            }
            Decision::Apply(vec![Change::Refund {
                refund_ref: format!("refund:{id}"),
                payment_refs: event.refunded_refs.clone(),
                amount_micros: micros(cents),
            }])
        }
        (EventKind::Other(_), _) => {
            Decision::Ignore(format!("{} is not handled", event.event_type))
        }
    }
}

/// A checkout to create at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    pub product_id: String,
    /// Ours, echoed back in the webhook's object.
    pub request_id: String,
    pub success_url: String,
    pub customer_email: String,
    /// Written on the checkout and echoed back.
    pub metadata: Vec<(String, String)>,
    /// Units of the product (the invoice product: cents); `None`: one.
    pub units: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or did not answer in time.
    #[error("the payment provider is unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// It answered with an error (status and a short, secret-free reason).
    #[error("the payment provider refused: {status} {reason}")]
    Refused { status: u16, reason: String },
}

/// The payment provider's API (Creem's, in `gateway-creem`).
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Creates a checkout; returns the URL to send the buyer to.
    async fn create_checkout(&self, checkout: &CheckoutRequest) -> Result<String, ProviderError>;

    /// A link to the customer's self-service portal.
    async fn portal_link(&self, customer_id: &str) -> Result<String, ProviderError>;
}

/// What handling an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The changes were applied (to this user).
    Applied {
        user: UserId,
        changes: Vec<Change>,
    },
    /// This event id was handled before: nothing changed.
    Duplicate,
    /// Its payment was recorded before under another event: nothing changed.
    DuplicatePayment,
    Ignored(String),
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
#[error("payment store failed")]
pub struct PaymentStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// How the store asks for a decision once it holds the account (locked).
pub type Decide<'a> = &'a (dyn Fn(Option<&Account>) -> Decision + Send + Sync);

/// Accounts' payment state and webhook events behind a port.
#[async_trait::async_trait]
pub trait PaymentStore: Send + Sync {
    /// Handles `event` once, in one transaction: records its id (a redelivery, or the same
    /// event at once on another instance, is [`Handled::Duplicate`]), reads the account it
    /// names (by the metadata's user, else its subscription or customer id) under a lock,
    /// asks `decide` and applies the decision.
    async fn handle(
        &self,
        event: &Event,
        decide: Decide<'_>,
        now: OffsetDateTime,
    ) -> Result<Handled, PaymentStoreError>;

    /// The user's payment state.
    async fn account(&self, user: UserId) -> Result<Option<Account>, PaymentStoreError>;

    /// Moves every account whose canceled subscription ended by `now` back to free; returns
    /// them.
    async fn end_due_subscriptions(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<UserId>, PaymentStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::DefaultPlans;

    const SECRET: &[u8] = b"whsec_test";

    #[test]
    fn signatures_are_checked_before_anything_else() {
        let body = br#"{"id":"evt_1"}"#;
        let sig = sign(SECRET, body);
        assert!(signature_valid(SECRET, body, Some(&sig)));
        assert!(!signature_valid(SECRET, b"{\"id\":\"evt_2\"}", Some(&sig)), "tampered");
        assert!(!signature_valid(b"other", body, Some(&sig)), "another secret");
        assert!(!signature_valid(SECRET, body, None));
        assert!(!signature_valid(SECRET, body, Some("zz")));
        assert!(!signature_valid(SECRET, body, Some(&sig[..63])));
    }

    fn catalog() -> Catalog {
        Catalog {
            tiers: [(Tier::Pro, "prod_pro".to_owned())].into_iter().collect(),
            packs: vec![CreditPack {
                name: "small".into(),
                product_id: "prod_small".into(),
                price_micros: 10_000_000,
                credits_micros: 11_000_000,
            }],
            invoice_product: None,
            currency: "USD".into(),
        }
    }

    fn checkout(purpose: &str, product: &str, amount: i64, user: UserId) -> Event {
        let body = serde_json::json!({
            "id": "evt_1", "eventType": "checkout.completed", "created_at": 1000,
            "object": {
                "id": "ch_1", "object": "checkout", "request_id": "r",
                "order": {"id": "ord_1", "customer": "cust_1", "product": product, "amount": amount, "currency": "USD", "status": "paid"},
                "customer": {"id": "cust_1", "email": "a@example.com"},
                "subscription": {"id": "sub_1", "object": "subscription", "current_period_end_date": "2027-01-01T00:00:00Z"},
                "metadata": {META_USER: user.to_string(), META_PURPOSE: purpose}
            }
        });
        parse_event(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_tier_checkout_subscribes_and_a_wrong_amount_is_refused() {
        let user = UserId::new();
        let account = Account {
            user,
            tier: Tier::Free,
            customer_id: None,
            subscription_id: None,
            subscription_event_at_ms: None,
        };
        let plans = DefaultPlans::default();
        let e = checkout("tier:pro", "prod_pro", 9_900, user);
        assert_eq!((e.user, e.subscription_id.as_deref()), (Some(user), Some("sub_1")));
        let Decision::Apply(changes) = decide(&e, &catalog(), &plans, Some(&account)) else {
            panic!()
        };
        assert!(
            matches!(&changes[0], Change::Payment { reference, amount_micros: 99_000_000, .. } if reference == "ord_1")
        );
        assert!(changes.contains(&Change::Subscribe {
            tier: Tier::Pro,
            customer_id: Some("cust_1".into()),
            subscription_id: Some("sub_1".into())
        }));
        let cheap = checkout("tier:pro", "prod_pro", 100, user);
        assert!(matches!(decide(&cheap, &catalog(), &plans, Some(&account)), Decision::Refuse(_)));
        let other_product = checkout("tier:pro", "prod_small", 9_900, user);
        assert!(matches!(
            decide(&other_product, &catalog(), &plans, Some(&account)),
            Decision::Refuse(_)
        ));
        let pack = checkout("credits:small", "prod_small", 1_000, user);
        let Decision::Apply(changes) = decide(&pack, &catalog(), &plans, Some(&account)) else {
            panic!()
        };
        assert!(changes.contains(&Change::TopUp {
            credits_micros: 11_000_000,
            reference: "creem:ord_1".into(),
            reason: "Credit pack small".into()
        }));
    }

    #[test]
    fn an_old_renewal_after_a_cancel_records_the_payment_but_keeps_the_cancel() {
        let user = UserId::new();
        let account = Account {
            user,
            tier: Tier::Pro,
            customer_id: Some("cust_1".into()),
            subscription_id: Some("sub_1".into()),
            subscription_event_at_ms: Some(5_000),
        };
        let body = serde_json::json!({
            "id": "evt_9", "eventType": "subscription.paid", "created_at": 4_000,
            "object": {"id": "sub_1", "object": "subscription", "product": {"id": "prod_pro", "price": 9_900, "currency": "USD"},
                       "customer": {"id": "cust_1"}, "last_transaction_id": "tran_1", "metadata": {}}
        });
        let e = parse_event(body.to_string().as_bytes()).unwrap();
        let Decision::Apply(changes) =
            decide(&e, &catalog(), &DefaultPlans::default(), Some(&account))
        else {
            panic!()
        };
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(matches!(&changes[0], Change::Payment { reference, .. } if reference == "tran_1"));
    }

    #[test]
    fn purposes_round_trip() {
        for p in [
            Purpose::Tier(Tier::Pro),
            Purpose::Credits("big".into()),
            Purpose::Invoice(InvoiceId::new()),
        ] {
            assert_eq!(Purpose::parse(&p.encode()), Some(p));
        }
        assert_eq!(Purpose::parse("tier:gold"), None);
    }
}

/// What a user buys through a checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purchase {
    Tier(Tier),
    CreditPack(String),
}

/// Why a payment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// Nothing of this kind is on sale (no product configured).
    #[error("{0} cannot be bought here")]
    NotForSale(String),
    /// The user is on that tier already.
    #[error("already on the {0} plan")]
    AlreadyOnTier(Tier),
    /// No checkout has completed for this user yet, so there is no customer.
    #[error("no payment customer yet")]
    NoCustomer,
    /// The webhook's signature is missing or wrong.
    #[error("webhook signature missing or invalid")]
    BadSignature,
    #[error(transparent)]
    Unreadable(#[from] EventError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] PaymentStoreError),
}

/// Payments as the binary uses them: checkouts, the portal, webhooks, subscriptions that end.
pub struct Payments {
    provider: std::sync::Arc<dyn PaymentProvider>,
    store: std::sync::Arc<dyn PaymentStore>,
    plans: std::sync::Arc<dyn PlanSource>,
    catalog: Catalog,
    webhook_secret: Vec<u8>,
    success_url: String,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("catalog", &self.catalog)
            .field("webhook_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Payments {
    pub fn new(
        provider: std::sync::Arc<dyn PaymentProvider>,
        store: std::sync::Arc<dyn PaymentStore>,
        plans: std::sync::Arc<dyn PlanSource>,
        catalog: Catalog,
        webhook_secret: &[u8],
        success_url: &str,
    ) -> Self {
        Self {
            provider,
            store,
            plans,
            catalog,
            webhook_secret: webhook_secret.to_vec(),
            success_url: success_url.to_owned(),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// A checkout for `user` (id, email, tier) buying `what`; the URL to send them to.
    pub async fn checkout(
        &self,
        user: UserId,
        email: &str,
        tier: Tier,
        what: &Purchase,
    ) -> Result<String, PaymentError> {
        let (product, purpose) = match what {
            Purchase::Tier(t) if *t == tier => return Err(PaymentError::AlreadyOnTier(*t)),
            Purchase::Tier(t) => {
                let product = self
                    .catalog
                    .product_for(*t)
                    .ok_or_else(|| PaymentError::NotForSale(format!("the {t} plan")))?;
                (product.to_owned(), Purpose::Tier(*t))
            }
            Purchase::CreditPack(name) => {
                let pack = self
                    .catalog
                    .pack(name)
                    .ok_or_else(|| PaymentError::NotForSale(format!("credit pack {name:?}")))?;
                (pack.product_id.clone(), Purpose::Credits(name.clone()))
            }
        };
        let request = self.checkout_request(product, user, email, &purpose);
        Ok(self.provider.create_checkout(&request).await?)
    }

    /// A checkout of `product` for `user`, its metadata naming them and `purpose`.
    fn checkout_request(
        &self,
        product: String,
        user: UserId,
        email: &str,
        purpose: &Purpose,
    ) -> CheckoutRequest {
        CheckoutRequest {
            product_id: product,
            request_id: format!("bm-{}", uuid_like()),
            success_url: self.success_url.clone(),
            customer_email: email.to_owned(),
            metadata: vec![
                (META_USER.to_owned(), user.to_string()),
                (META_PURPOSE.to_owned(), purpose.encode()),
            ],
            units: None,
        }
    }

    /// A checkout for what invoice `invoice` has left to pay (`amount_micros`, paid in whole
    /// cents of the invoice product); the URL.
    pub async fn invoice_checkout(
        &self,
        user: UserId,
        email: &str,
        invoice: InvoiceId,
        amount_micros: i64,
    ) -> Result<String, PaymentError> {
        let product = self
            .catalog
            .invoice_product
            .clone()
            .ok_or_else(|| PaymentError::NotForSale("paying an invoice by card".to_owned()))?;
        let cents = u32::try_from(round_up_to_cent(amount_micros) / 10_000)
            .map_err(|_| PaymentError::NotForSale("an invoice this large by card".to_owned()))?;
        let mut request = self.checkout_request(product, user, email, &Purpose::Invoice(invoice));
        request.metadata.push((META_AMOUNT.to_owned(), amount_micros.to_string()));
        request.units = Some(cents);
        Ok(self.provider.create_checkout(&request).await?)
    }

    /// The link to the user's customer portal at the provider.
    pub async fn portal(&self, user: UserId) -> Result<String, PaymentError> {
        let customer = self
            .store
            .account(user)
            .await?
            .and_then(|a| a.customer_id)
            .ok_or(PaymentError::NoCustomer)?;
        Ok(self.provider.portal_link(&customer).await?)
    }

    /// Checks a webhook's signature, then reads and handles the event once.
    pub async fn webhook(
        &self,
        body: &[u8],
        signature: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(Event, Handled), PaymentError> {
        if !signature_valid(&self.webhook_secret, body, signature) {
            return Err(PaymentError::BadSignature);
        }
        let event = parse_event(body)?;
        let decide =
            |account: Option<&Account>| decide(&event, &self.catalog, self.plans.as_ref(), account);
        let handled = self.store.handle(&event, &decide, now).await?;
        Ok((event, handled))
    }

    /// Moves accounts whose canceled subscription ended back to free; returns them.
    pub async fn end_due_subscriptions(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<UserId>, PaymentError> {
        Ok(self.store.end_due_subscriptions(now).await?)
    }
}

/// A unique request id (time-ordered).
fn uuid_like() -> String {
    UserId::new().to_string()
}
