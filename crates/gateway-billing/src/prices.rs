//! Where prices are kept (the [`PriceStore`] port) and the [`Prices`] service: the price book
//! held in memory for the request path, reloaded from the store after a change.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use gateway_core::PriceId;
use serde::Serialize;
use time::OffsetDateTime;

use crate::price::{ModelPrice, Price, PriceBook, Tokens};

/// A stored price, as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriceEntry {
    pub id: PriceId,
    pub model: String,
    pub input_micros_per_million: i64,
    pub output_micros_per_million: i64,
    pub cached_input_micros_per_million: Option<i64>,
    pub cache_write_input_micros_per_million: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
}

impl PriceEntry {
    pub fn new(id: PriceId, p: &ModelPrice) -> Self {
        Self {
            id,
            model: p.model.clone(),
            input_micros_per_million: p.price.input,
            output_micros_per_million: p.price.output,
            cached_input_micros_per_million: p.price.cached_input,
            cache_write_input_micros_per_million: p.price.cache_write_input,
            effective_from: p.effective_from,
        }
    }

    pub fn model_price(&self) -> ModelPrice {
        ModelPrice {
            model: self.model.clone(),
            price: Price {
                input: self.input_micros_per_million,
                output: self.output_micros_per_million,
                cached_input: self.cached_input_micros_per_million,
                cache_write_input: self.cache_write_input_micros_per_million,
            },
            effective_from: self.effective_from,
        }
    }
}

/// What a change to one stored price did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriceChange {
    Done(PriceEntry),
    NotFound,
    /// The price applies already (or would, from the new time): past costs keep their price.
    InEffect,
    /// The model has another price from that moment.
    Taken,
}

/// Errors of a price store.
#[derive(Debug, thiserror::Error)]
#[error("price store failed")]
pub struct PriceStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The `model_prices` table behind a port.
#[async_trait]
pub trait PriceStore: Send + Sync {
    /// Every price of every model.
    async fn list_prices(&self) -> Result<Vec<ModelPrice>, PriceStoreError>;

    /// Adds prices; one already stored for the same model and time is left as it is. Returns
    /// how many were added.
    async fn add_prices(&self, prices: &[ModelPrice]) -> Result<usize, PriceStoreError>;

    /// Every price with its id, by model and time.
    async fn price_entries(&self) -> Result<Vec<PriceEntry>, PriceStoreError>;

    /// Adds one price and returns it ([`PriceChange::Taken`] when the model has a price from
    /// that moment).
    async fn add_price(&self, price: &ModelPrice) -> Result<PriceChange, PriceStoreError>;

    /// Replaces price `id` with `new` when both the stored price and `new` apply only after
    /// `now` (a price that applies never changes).
    async fn update_future_price(
        &self,
        id: PriceId,
        new: &ModelPrice,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError>;

    /// Deletes price `id` when it applies only after `now`.
    async fn delete_future_price(
        &self,
        id: PriceId,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError>;
}

/// Prices in process memory.
#[derive(Debug, Default)]
pub struct InMemoryPriceStore {
    prices: Mutex<Vec<(PriceId, ModelPrice)>>,
}

impl InMemoryPriceStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PriceId, ModelPrice)>> {
        self.prices.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn taken(stored: &[(PriceId, ModelPrice)], p: &ModelPrice, except: Option<PriceId>) -> bool {
    stored.iter().any(|(id, s)| {
        Some(*id) != except && s.model == p.model && s.effective_from == p.effective_from
    })
}

#[async_trait]
impl PriceStore for InMemoryPriceStore {
    async fn list_prices(&self) -> Result<Vec<ModelPrice>, PriceStoreError> {
        Ok(self.lock().iter().map(|(_, p)| p.clone()).collect())
    }

    async fn add_prices(&self, prices: &[ModelPrice]) -> Result<usize, PriceStoreError> {
        let mut stored = self.lock();
        let mut added = 0;
        for p in prices {
            if !taken(&stored, p, None) {
                stored.push((PriceId::new(), p.clone()));
                added += 1;
            }
        }
        Ok(added)
    }

    async fn price_entries(&self) -> Result<Vec<PriceEntry>, PriceStoreError> {
        let mut all: Vec<PriceEntry> =
            self.lock().iter().map(|(id, p)| PriceEntry::new(*id, p)).collect();
        all.sort_by(|a, b| (&a.model, a.effective_from).cmp(&(&b.model, b.effective_from)));
        Ok(all)
    }

    async fn add_price(&self, price: &ModelPrice) -> Result<PriceChange, PriceStoreError> {
        let mut stored = self.lock();
        if taken(&stored, price, None) {
            return Ok(PriceChange::Taken);
        }
        let id = PriceId::new();
        stored.push((id, price.clone()));
        Ok(PriceChange::Done(PriceEntry::new(id, price)))
    }

    async fn update_future_price(
        &self,
        id: PriceId,
        new: &ModelPrice,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError> {
        let mut stored = self.lock();
        let clash = taken(&stored, new, Some(id));
        let Some((_, p)) = stored.iter_mut().find(|(i, _)| *i == id) else {
            return Ok(PriceChange::NotFound);
        };
        if p.effective_from <= now || new.effective_from <= now {
            return Ok(PriceChange::InEffect);
        }
        if clash {
            return Ok(PriceChange::Taken);
        }
        *p = new.clone();
        Ok(PriceChange::Done(PriceEntry::new(id, new)))
    }

    async fn delete_future_price(
        &self,
        id: PriceId,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError> {
        let mut stored = self.lock();
        let Some(i) = stored.iter().position(|(x, _)| *x == id) else {
            return Ok(PriceChange::NotFound);
        };
        if stored[i].1.effective_from <= now {
            return Ok(PriceChange::InEffect);
        }
        let (_, p) = stored.remove(i);
        Ok(PriceChange::Done(PriceEntry::new(id, &p)))
    }
}

/// Why a price was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// A field breaks a rule; the message is safe to show.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    #[error(transparent)]
    Store(#[from] PriceStoreError),
}

/// Checks a price an admin enters: a model name, no negative price, not applying in the past.
pub fn check(p: &ModelPrice, now: OffsetDateTime) -> Result<(), PriceError> {
    let bad = |field, reason| Err(PriceError::Invalid { field, reason });
    let chars = p.model.chars().count();
    if p.model.trim() != p.model
        || chars == 0
        || chars > 200
        || p.model.chars().any(char::is_control)
    {
        return bad("model", "must be 1 to 200 printable characters without surrounding spaces");
    }
    let prices = [
        ("input_micros_per_million", Some(p.price.input)),
        ("output_micros_per_million", Some(p.price.output)),
        ("cached_input_micros_per_million", p.price.cached_input),
        ("cache_write_input_micros_per_million", p.price.cache_write_input),
    ];
    for (field, v) in prices {
        if v.is_some_and(|v| v < 0) {
            return bad(field, "must not be negative");
        }
    }
    // A minute's grace for clocks and round trips; before that, past requests would seem
    // to have had another price than they were charged.
    if p.effective_from < now - time::Duration::minutes(1) {
        return bad("effective_from", "must not be in the past (past requests keep their price)");
    }
    Ok(())
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Models whose price is new or changed, now applying.
    pub added: usize,
    /// Models whose current price is the same: nothing written.
    pub unchanged: usize,
}

/// The prices of a running gateway: read from memory, never from the store, per request.
pub struct Prices {
    store: Arc<dyn PriceStore>,
    default: Price,
    book: ArcSwap<PriceBook>,
}

impl std::fmt::Debug for Prices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prices").field("default", &self.default).finish_non_exhaustive()
    }
}

impl Prices {
    /// Empty until [`Prices::reload`]: every model at `default`.
    pub fn new(store: Arc<dyn PriceStore>, default: Price) -> Self {
        let book = ArcSwap::from_pointee(PriceBook::new(Vec::new(), default));
        Self { store, default, book }
    }

    /// Reads every price from the store into memory; returns how many.
    pub async fn reload(&self) -> Result<usize, PriceStoreError> {
        let prices = self.store.list_prices().await?;
        let n = prices.len();
        self.book.store(Arc::new(PriceBook::new(prices, self.default)));
        Ok(n)
    }

    /// The store behind the book.
    pub fn store(&self) -> &dyn PriceStore {
        self.store.as_ref()
    }

    /// Adds a price (checked), applying from `price.effective_from` (not before `now`), then
    /// reloads.
    pub async fn add(
        &self,
        price: &ModelPrice,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceError> {
        check(price, now)?;
        let change = self.store.add_price(price).await?;
        self.reload().await?;
        Ok(change)
    }

    /// Replaces a price that does not apply yet (checked), then reloads.
    pub async fn change(
        &self,
        id: PriceId,
        price: &ModelPrice,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceError> {
        check(price, now)?;
        let change = self.store.update_future_price(id, price, now).await?;
        self.reload().await?;
        Ok(change)
    }

    /// Deletes a price that does not apply yet, then reloads.
    pub async fn remove(
        &self,
        id: PriceId,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceError> {
        let change = self.store.delete_future_price(id, now).await?;
        self.reload().await?;
        Ok(change)
    }

    /// The price book as it is now.
    pub fn book(&self) -> Arc<PriceBook> {
        self.book.load_full()
    }

    /// The cost of a request to `model` made at `at`.
    pub fn cost(&self, model: &str, at: OffsetDateTime, tokens: Tokens) -> i64 {
        self.book.load().cost(model, at, tokens)
    }

    /// Makes `prices` apply from `from` for every model whose current price differs, then
    /// reloads. Importing the same table twice writes nothing the second time.
    pub async fn import(
        &self,
        prices: &[(String, Price)],
        from: OffsetDateTime,
    ) -> Result<ImportReport, PriceStoreError> {
        self.reload().await?;
        let book = self.book();
        let mut report = ImportReport::default();
        let mut new = Vec::new();
        for (model, price) in prices {
            match book.price_at(model, from) {
                (current, true) if current == *price => report.unchanged += 1,
                _ => new.push(ModelPrice {
                    model: model.clone(),
                    price: *price,
                    effective_from: from,
                }),
            }
        }
        report.added = self.store.add_prices(&new).await?;
        report.unchanged += new.len() - report.added;
        self.reload().await?;
        Ok(report)
    }
}

/// The contract of every [`PriceStore`] adapter.
#[cfg(any(test, feature = "test-util"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance {
    use super::{ModelPrice, Price, PriceChange, PriceStore};

    pub async fn price_store_contract(store: &dyn PriceStore) {
        let from = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let later = from + time::Duration::days(30);
        let a = ModelPrice {
            model: "contract-model-a".into(),
            price: Price { cached_input: Some(0), ..Price::new(1, 2) },
            effective_from: from,
        };
        // Every part of a price round-trips, the cache-write price included.
        let b = ModelPrice {
            price: Price { cached_input: Some(1), cache_write_input: Some(5), ..Price::new(3, 4) },
            effective_from: later,
            ..a.clone()
        };
        assert_eq!(store.add_prices(&[a.clone(), b.clone()]).await.unwrap(), 2);
        let same_time = ModelPrice { price: Price::new(9, 9), ..a.clone() };
        assert_eq!(
            store.add_prices(&[same_time]).await.unwrap(),
            0,
            "one price per model and time"
        );
        let mut mine: Vec<ModelPrice> =
            store.list_prices().await.unwrap().into_iter().filter(|p| p.model == a.model).collect();
        mine.sort_by_key(|p| p.effective_from);
        assert_eq!(mine, vec![a.clone(), b.clone()]);

        // One at a time, with ids: a price that applies never changes; a future one may.
        let now = later - time::Duration::days(1);
        let entries = store.price_entries().await.unwrap();
        let id_of = |p: &ModelPrice| {
            entries
                .iter()
                .find(|e| e.model == p.model && e.effective_from == p.effective_from)
                .unwrap()
                .id
        };
        let (past, future) = (id_of(&a), id_of(&b));
        let moved = ModelPrice { effective_from: later + time::Duration::days(1), ..b.clone() };
        assert_eq!(
            store.update_future_price(past, &moved, now).await.unwrap(),
            PriceChange::InEffect
        );
        assert_eq!(store.delete_future_price(past, now).await.unwrap(), PriceChange::InEffect);
        let into_past = ModelPrice { effective_from: now, ..b.clone() };
        assert_eq!(
            store.update_future_price(future, &into_past, now).await.unwrap(),
            PriceChange::InEffect,
            "a future price cannot be moved to apply already"
        );
        let PriceChange::Done(updated) =
            store.update_future_price(future, &moved, now).await.unwrap()
        else {
            panic!("a future price may change")
        };
        assert_eq!((updated.id, updated.model_price()), (future, moved.clone()));
        assert_eq!(store.add_price(&moved).await.unwrap(), PriceChange::Taken);
        let PriceChange::Done(extra) = store.add_price(&b).await.unwrap() else {
            panic!("the old time is free again")
        };
        assert_eq!(extra.model_price(), b);
        assert!(matches!(
            store.delete_future_price(future, now).await.unwrap(),
            PriceChange::Done(_)
        ));
        assert_eq!(store.delete_future_price(future, now).await.unwrap(), PriceChange::NotFound);
        assert!(matches!(
            store.delete_future_price(extra.id, now).await.unwrap(),
            PriceChange::Done(_)
        ));
    }

    #[cfg(test)]
    #[tokio::test]
    async fn the_in_memory_store_meets_the_contract() {
        price_store_contract(&super::InMemoryPriceStore::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::{DEFAULT_PRICE, cost_micros};

    #[tokio::test]
    async fn an_import_adds_what_changed_and_twice_writes_nothing() {
        let prices = Prices::new(Arc::new(InMemoryPriceStore::default()), DEFAULT_PRICE);
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let table =
            vec![("m1".to_owned(), Price::new(10, 20)), ("m2".to_owned(), Price::new(1, 2))];
        let first = prices.import(&table, t0).await.unwrap();
        assert_eq!(first, ImportReport { added: 2, unchanged: 0 });
        let t1 = t0 + time::Duration::days(1);
        assert_eq!(
            prices.import(&table, t1).await.unwrap(),
            ImportReport { added: 0, unchanged: 2 }
        );
        let changed = vec![("m1".to_owned(), Price::new(11, 20))];
        assert_eq!(prices.import(&changed, t1).await.unwrap().added, 1);
        let t = Tokens { prompt: 1_000_000, ..Tokens::default() };
        assert_eq!(prices.cost("m1", t0, t), 10, "the past keeps its price");
        assert_eq!(prices.cost("m1", t1, t), 11);
        assert_eq!(prices.cost("unknown", t1, t), cost_micros(DEFAULT_PRICE, t));
    }
}
