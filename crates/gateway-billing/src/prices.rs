//! Where prices are kept (the [`PriceStore`] port) and the [`Prices`] service: the price book
//! held in memory for the request path, reloaded from the store after a change.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use time::OffsetDateTime;

use crate::price::{ModelPrice, Price, PriceBook, Tokens};

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
}

/// Prices in process memory.
#[derive(Debug, Default)]
pub struct InMemoryPriceStore {
    prices: Mutex<Vec<ModelPrice>>,
}

#[async_trait]
impl PriceStore for InMemoryPriceStore {
    async fn list_prices(&self) -> Result<Vec<ModelPrice>, PriceStoreError> {
        Ok(self.prices.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    async fn add_prices(&self, prices: &[ModelPrice]) -> Result<usize, PriceStoreError> {
        let mut stored = self.prices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut added = 0;
        for p in prices {
            let taken =
                stored.iter().any(|s| s.model == p.model && s.effective_from == p.effective_from);
            if !taken {
                stored.push(p.clone());
                added += 1;
            }
        }
        Ok(added)
    }
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
    use super::{ModelPrice, Price, PriceStore};

    pub async fn price_store_contract(store: &dyn PriceStore) {
        let from = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let later = from + time::Duration::days(30);
        let a = ModelPrice {
            model: "contract-model-a".into(),
            price: Price { input: 1, output: 2, cached_input: Some(0) },
            effective_from: from,
        };
        let b = ModelPrice { price: Price::new(3, 4), effective_from: later, ..a.clone() };
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
        assert_eq!(mine, vec![a, b]);
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
        let t = Tokens { prompt: 1_000_000, cached_prompt: 0, completion: 0 };
        assert_eq!(prices.cost("m1", t0, t), 10, "the past keeps its price");
        assert_eq!(prices.cost("m1", t1, t), 11);
        assert_eq!(prices.cost("unknown", t1, t), cost_micros(DEFAULT_PRICE, t));
    }
}
