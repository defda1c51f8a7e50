//! The credits ledger: every movement of a user's prepaid credits, append-only. Each entry
//! carries a reference unique for the user, so an operation retried with the same reference
//! is applied once (the retry gets the first entry back); the balance is the sum of the
//! entries, moved in the same transaction as the entry is written and never below zero.

use async_trait::async_trait;
use gateway_core::{LedgerEntryId, UserId};
use serde::Serialize;
use time::OffsetDateTime;

/// Why credits moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Bought (a credit pack).
    TopUp,
    /// Given by an admin.
    Grant,
    /// A redemption code.
    Redemption,
    /// Credits paying an invoice (negative).
    InvoicePayment,
    /// Money given back as credits, or credits taken back.
    Refund,
    /// An admin's correction.
    Adjustment,
}

impl EntryKind {
    pub const ALL: [EntryKind; 6] = [
        EntryKind::TopUp,
        EntryKind::Grant,
        EntryKind::Redemption,
        EntryKind::InvoicePayment,
        EntryKind::Refund,
        EntryKind::Adjustment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TopUp => "top_up",
            EntryKind::Grant => "grant",
            EntryKind::Redemption => "redemption",
            EntryKind::InvoicePayment => "invoice_payment",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether `amount` has the sign this kind allows.
    fn allows(self, amount: i64) -> bool {
        match self {
            EntryKind::TopUp | EntryKind::Grant | EntryKind::Redemption => amount > 0,
            EntryKind::InvoicePayment => amount < 0,
            EntryKind::Refund | EntryKind::Adjustment => amount != 0,
        }
    }
}

/// An entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    pub user: UserId,
    pub kind: EntryKind,
    /// Micro-dollars: positive adds credits, negative takes them.
    pub amount_micros: i64,
    /// Unique for the user: the same reference is the same operation.
    pub reference: String,
    /// What people read in the ledger.
    pub reason: String,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub id: LedgerEntryId,
    pub user_id: UserId,
    pub kind: EntryKind,
    pub amount_micros: i64,
    /// The user's balance right after this entry.
    pub balance_after_micros: i64,
    pub reference: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What [`LedgerStore::append`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written now.
    New(LedgerEntry),
    /// The reference was applied before with the same amount: nothing changed, here is the
    /// first entry.
    Repeated(LedgerEntry),
}

impl Appended {
    pub fn entry(&self) -> &LedgerEntry {
        match self {
            Appended::New(e) | Appended::Repeated(e) => e,
        }
    }
}

/// A user whose stored balance is not the sum of their entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub user_id: UserId,
    pub stored_micros: i64,
    pub ledger_micros: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The entry breaks a rule; the message is safe to show.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    /// Taking `amount` would bring the balance below zero.
    #[error("insufficient credits: the balance is {balance_micros} micro-dollars")]
    Insufficient { balance_micros: i64 },
    /// The reference was used for a different operation (another kind or amount).
    #[error("the reference was already used for a different operation")]
    ReferenceReused,
    #[error("no such user")]
    UnknownUser,
    #[error("ledger store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The `credit_ledger` table and the users' balances behind a port.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Appends `entry` and moves the user's balance in one transaction, unless the reference
    /// was applied before; refuses to take the balance below zero.
    async fn append(&self, entry: &NewEntry, at: OffsetDateTime) -> Result<Appended, LedgerError>;

    /// The user's entries, newest first, older than `before` (an entry id) when given.
    async fn entries(
        &self,
        user: UserId,
        before: Option<LedgerEntryId>,
        limit: u64,
    ) -> Result<Vec<LedgerEntry>, LedgerError>;

    /// Every user whose stored balance differs from the sum of their entries.
    async fn verify(&self) -> Result<Vec<Mismatch>, LedgerError>;
}

/// Checks an entry before it is stored.
pub fn check(entry: &NewEntry) -> Result<(), LedgerError> {
    let bad = |field, reason| Err(LedgerError::Invalid { field, reason });
    if !entry.kind.allows(entry.amount_micros) {
        return bad("amount_micros", "has the wrong sign for this kind of entry (or is zero)");
    }
    let reference = entry.reference.trim();
    if reference.is_empty() || reference.len() > 200 || reference.chars().any(char::is_control) {
        return bad("reference", "must be 1 to 200 printable characters");
    }
    if entry.reason.trim().is_empty() || entry.reason.chars().count() > 500 {
        return bad("reason", "must be 1 to 500 characters");
    }
    Ok(())
}

/// Ledger entries in process memory (balances included).
#[derive(Debug, Default)]
pub struct InMemoryLedgerStore {
    inner: std::sync::Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    entries: Vec<LedgerEntry>,
    balances: std::collections::HashMap<UserId, i64>,
}

#[async_trait]
impl LedgerStore for InMemoryLedgerStore {
    async fn append(&self, e: &NewEntry, at: OffsetDateTime) -> Result<Appended, LedgerError> {
        let mut m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(first) =
            m.entries.iter().find(|x| x.user_id == e.user && x.reference == e.reference)
        {
            return repeated(first, e);
        }
        let balance = m.balances.get(&e.user).copied().unwrap_or(0);
        let after = balance
            .checked_add(e.amount_micros)
            .ok_or(LedgerError::Invalid { field: "amount_micros", reason: "is too large" })?;
        if after < 0 {
            return Err(LedgerError::Insufficient { balance_micros: balance });
        }
        let entry = LedgerEntry {
            id: LedgerEntryId::new(),
            user_id: e.user,
            kind: e.kind,
            amount_micros: e.amount_micros,
            balance_after_micros: after,
            reference: e.reference.clone(),
            reason: e.reason.clone(),
            created_at: at,
        };
        m.balances.insert(e.user, after);
        m.entries.push(entry.clone());
        Ok(Appended::New(entry))
    }

    async fn entries(
        &self,
        user: UserId,
        before: Option<LedgerEntryId>,
        limit: u64,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(m.entries
            .iter()
            .rev()
            .filter(|x| x.user_id == user && before.is_none_or(|b| x.id < b))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn verify(&self) -> Result<Vec<Mismatch>, LedgerError> {
        let m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sums: std::collections::HashMap<UserId, i64> = std::collections::HashMap::new();
        for x in &m.entries {
            *sums.entry(x.user_id).or_default() += x.amount_micros;
        }
        Ok(m.balances
            .iter()
            .filter(|(u, b)| sums.get(u).copied().unwrap_or(0) != **b)
            .map(|(u, b)| Mismatch {
                user_id: *u,
                stored_micros: *b,
                ledger_micros: sums.get(u).copied().unwrap_or(0),
            })
            .collect())
    }
}

/// The answer to a reference applied before: the first entry if the operation is the same,
/// [`LedgerError::ReferenceReused`] if not. For adapters.
pub fn repeated(first: &LedgerEntry, again: &NewEntry) -> Result<Appended, LedgerError> {
    if first.kind == again.kind && first.amount_micros == again.amount_micros {
        Ok(Appended::Repeated(first.clone()))
    } else {
        Err(LedgerError::ReferenceReused)
    }
}

/// The contract of every [`LedgerStore`] adapter; `user` and `other` exist in the store with a
/// zero balance.
#[cfg(any(test, feature = "test-util"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance {
    use std::sync::Arc;

    use super::{Appended, EntryKind, LedgerError, LedgerStore, NewEntry};
    use gateway_core::UserId;
    use time::OffsetDateTime;

    fn entry(user: UserId, kind: EntryKind, amount: i64, reference: &str) -> NewEntry {
        NewEntry {
            user,
            kind,
            amount_micros: amount,
            reference: reference.to_owned(),
            reason: "contract".to_owned(),
        }
    }

    pub async fn ledger_store_contract(store: Arc<dyn LedgerStore>, user: UserId, other: UserId) {
        let now = OffsetDateTime::now_utc();
        let grant = entry(user, EntryKind::Grant, 5_000_000, "grant-1");
        let Appended::New(first) = store.append(&grant, now).await.unwrap() else {
            panic!("a new reference is applied")
        };
        assert_eq!(first.balance_after_micros, 5_000_000);
        // The same operation again: applied once.
        let again = store.append(&grant, now).await.unwrap();
        assert_eq!(again, Appended::Repeated(first.clone()));
        // The same reference for something else: refused.
        let reused = entry(user, EntryKind::Grant, 1, "grant-1");
        assert!(matches!(store.append(&reused, now).await, Err(LedgerError::ReferenceReused)));
        // Another user may use the same reference.
        store.append(&entry(other, EntryKind::Grant, 7, "grant-1"), now).await.unwrap();
        // Never below zero; a refusal changes nothing.
        let pay = entry(user, EntryKind::InvoicePayment, -6_000_000, "pay-1");
        assert!(matches!(
            store.append(&pay, now).await,
            Err(LedgerError::Insufficient { balance_micros: 5_000_000 })
        ));
        let pay = entry(user, EntryKind::InvoicePayment, -5_000_000, "pay-1");
        let paid = store.append(&pay, now).await.unwrap();
        assert_eq!(paid.entry().balance_after_micros, 0);
        let listed = store.entries(user, None, 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|e| e.reference.as_str()).collect::<Vec<_>>(),
            ["pay-1", "grant-1"],
            "newest first, one entry per operation"
        );
        let older = store.entries(user, Some(listed[0].id), 10).await.unwrap();
        assert_eq!(older.len(), 1);
        assert!(store.verify().await.unwrap().is_empty());

        // 1,000 grants and debits at once, some retried: the balance is the sum of what was
        // applied, never negative, and verify finds nothing.
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (kind, amount) = if i % 3 == 0 {
                        (EntryKind::InvoicePayment, -700)
                    } else {
                        (EntryKind::Grant, 500)
                    };
                    // Every tenth operation is sent twice (a retry).
                    let reference = format!("op-{}", if i % 10 == 9 { i - 1 } else { i });
                    let e = entry(user, kind, amount, &reference);
                    store.append(&e, OffsetDateTime::now_utc()).await
                })
            })
            .collect();
        let mut applied = 0i64;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Appended::New(e)) => {
                    assert!(e.balance_after_micros >= 0);
                    applied += e.amount_micros;
                }
                Ok(Appended::Repeated(_))
                | Err(LedgerError::Insufficient { .. } | LedgerError::ReferenceReused) => {}
                Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
            }
        }
        let all = store.entries(user, None, 10_000).await.unwrap();
        assert_eq!(all[0].balance_after_micros, applied, "the newest entry's balance is the sum");
        assert!(store.verify().await.unwrap().is_empty(), "every balance is its ledger's sum");
    }

    #[cfg(test)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_memory_store_meets_the_contract() {
        let store = Arc::new(super::InMemoryLedgerStore::default());
        ledger_store_contract(store, UserId::new(), UserId::new()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_before_they_are_stored() {
        let ok = NewEntry {
            user: UserId::new(),
            kind: EntryKind::Grant,
            amount_micros: 1,
            reference: "r".into(),
            reason: "welcome".into(),
        };
        assert!(check(&ok).is_ok());
        let negative_grant = NewEntry { amount_micros: -1, ..ok.clone() };
        assert!(matches!(
            check(&negative_grant),
            Err(LedgerError::Invalid { field: "amount_micros", .. })
        ));
        let positive_payment = NewEntry { kind: EntryKind::InvoicePayment, ..ok.clone() };
        assert!(check(&positive_payment).is_err());
        let no_reference = NewEntry { reference: " ".into(), ..ok.clone() };
        assert!(matches!(
            check(&no_reference),
            Err(LedgerError::Invalid { field: "reference", .. })
        ));
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::parse(k.as_str()), Some(k));
        }
    }
}
