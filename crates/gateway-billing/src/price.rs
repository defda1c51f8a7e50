//! Model prices and the cost of one request.
//!
//! Prices are integer micro-dollars per million tokens (`$0.03` per 1K tokens is
//! `30_000_000`), each with the time from which it applies, so a new price never changes the
//! cost of requests made before it. A model without a price is charged the default price.
//!
//! **Rounding, stated once:** a request's cost is the exact sum
//! `uncached prompt × input + cached prompt × cached input + cache-written prompt × cache
//! write + completion × output` (tokens × micro-dollars per million), divided by one million
//! and rounded to the nearest micro-dollar, halves up, once per request. Cached prompt tokens
//! are charged the cached-input price when the model has one, and prompt tokens written to the
//! upstream's cache (Anthropic's cache creation) the cache-write price when it has one; the
//! input price otherwise. Reasoning tokens are completion tokens.

use std::collections::HashMap;

use time::OffsetDateTime;

/// Micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    /// Cached prompt tokens; `None`: charged as input.
    pub cached_input: Option<i64>,
    /// Prompt tokens written to the upstream's cache; `None`: charged as input.
    pub cache_write_input: Option<i64>,
}

impl Price {
    pub const fn new(input: i64, output: i64) -> Self {
        Self { input, output, cached_input: None, cache_write_input: None }
    }
}

/// The price of unknown models unless configured otherwise: $0.001 / $0.002 per 1K tokens.
pub const DEFAULT_PRICE: Price = Price::new(1_000_000, 2_000_000);

/// The original product's price table (per million tokens; per 1K in the comments).
pub const SEED_PRICES: [(&str, Price); 6] = [
    ("gpt-4", Price::new(30_000_000, 60_000_000)), // $0.03 / $0.06
    ("gpt-3.5-turbo", Price::new(500_000, 1_500_000)), // $0.0005 / $0.0015
    ("claude-3-opus", Price::new(15_000_000, 75_000_000)), // $0.015 / $0.075
    ("claude-3-sonnet", Price::new(3_000_000, 15_000_000)), // $0.003 / $0.015
    ("claude-3-haiku", Price::new(250_000, 1_250_000)), // $0.00025 / $0.00125
    ("gemini-1.5-flash", Price::new(125_000, 500_000)), // $0.000125 / $0.0005
];

/// A model's price from a moment on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub model: String,
    pub price: Price,
    pub effective_from: OffsetDateTime,
}

/// The tokens a request is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All prompt tokens, cached ones included.
    pub prompt: u64,
    /// Of `prompt`, those the upstream read from its cache.
    pub cached_prompt: u64,
    /// Of `prompt`, those the upstream wrote to its cache.
    pub cache_write_prompt: u64,
    /// Completion tokens, reasoning included.
    pub completion: u64,
}

impl From<gateway_core::Usage> for Tokens {
    /// Usage as the upstream reported it (or the gateway estimated it).
    fn from(u: gateway_core::Usage) -> Self {
        Self {
            prompt: u.prompt_tokens,
            cached_prompt: u.cached_prompt_tokens(),
            cache_write_prompt: u.cache_write_prompt_tokens(),
            completion: u.completion_tokens,
        }
    }
}

/// The cost of `tokens` at `price`, in micro-dollars (see the module docs for the rounding).
pub fn cost_micros(price: Price, tokens: Tokens) -> i64 {
    let cached = tokens.cached_prompt.min(tokens.prompt);
    let written = tokens.cache_write_prompt.min(tokens.prompt - cached);
    let uncached = tokens.prompt - cached - written;
    let part = |n: u64, per_million: i64| i128::from(n).saturating_mul(i128::from(per_million));
    let exact = part(uncached, price.input)
        .saturating_add(part(cached, price.cached_input.unwrap_or(price.input)))
        .saturating_add(part(written, price.cache_write_input.unwrap_or(price.input)))
        .saturating_add(part(tokens.completion, price.output));
    let rounded = exact.saturating_add(500_000).div_euclid(1_000_000);
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// Every model's prices over time, read from memory on the request path.
#[derive(Clone, Debug)]
pub struct PriceBook {
    /// Per model, oldest first.
    prices: HashMap<String, Vec<(OffsetDateTime, Price)>>,
    default: Price,
}

impl Default for PriceBook {
    fn default() -> Self {
        Self::new(Vec::new(), DEFAULT_PRICE)
    }
}

impl PriceBook {
    pub fn new(prices: Vec<ModelPrice>, default: Price) -> Self {
        let mut by_model: HashMap<String, Vec<(OffsetDateTime, Price)>> = HashMap::new();
        for p in prices {
            by_model.entry(p.model).or_default().push((p.effective_from, p.price));
        }
        for list in by_model.values_mut() {
            list.sort_by_key(|(from, _)| *from);
        }
        Self { prices: by_model, default }
    }

    /// The original product's table ([`SEED_PRICES`], applying since the Unix epoch) and the
    /// default price.
    pub fn seeded() -> Self {
        let prices = SEED_PRICES
            .iter()
            .map(|(model, price)| ModelPrice {
                model: (*model).to_owned(),
                price: *price,
                effective_from: OffsetDateTime::UNIX_EPOCH,
            })
            .collect();
        Self::new(prices, DEFAULT_PRICE)
    }

    /// The price of `model` at `at`, and whether the model has one of its own (otherwise it is
    /// the default).
    pub fn price_at(&self, model: &str, at: OffsetDateTime) -> (Price, bool) {
        let own = self
            .prices
            .get(model)
            .and_then(|list| list.iter().rev().find(|(from, _)| *from <= at))
            .map(|(_, p)| *p);
        match own {
            Some(p) => (p, true),
            None => (self.default, false),
        }
    }

    /// The cost of a request to `model` made at `at`.
    pub fn cost(&self, model: &str, at: OffsetDateTime, tokens: Tokens) -> i64 {
        cost_micros(self.price_at(model, at).0, tokens)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const GPT4: Price = SEED_PRICES[0].1;

    #[test]
    fn costs_are_exact_sums_rounded_once_to_the_nearest_micro_dollar() {
        // 1,000 prompt and 500 completion tokens of gpt-4: $0.03 + $0.03.
        let t = Tokens { prompt: 1000, completion: 500, ..Tokens::default() };
        assert_eq!(cost_micros(GPT4, t), 60_000);
        // One gpt-3.5-turbo prompt token costs 0.5 micro-dollars: a half rounds up...
        let one = Tokens { prompt: 1, ..Tokens::default() };
        assert_eq!(cost_micros(SEED_PRICES[1].1, one), 1);
        // ...and three cost 1.5 (2), not three roundings of 0.5 (3).
        let three = Tokens { prompt: 3, ..Tokens::default() };
        assert_eq!(cost_micros(SEED_PRICES[1].1, three), 2);
        // A gemini flash prompt token is 0.125: rounds to nothing alone.
        assert_eq!(cost_micros(SEED_PRICES[5].1, one), 0);
        assert_eq!(cost_micros(GPT4, Tokens::default()), 0);
    }

    #[test]
    fn the_worked_example_of_docs_billing_holds() {
        let gpt4 = Price { cached_input: Some(15_000_000), ..GPT4 };
        let t = Tokens { prompt: 1234, cached_prompt: 400, completion: 567, ..Tokens::default() };
        assert_eq!(cost_micros(gpt4, t), 65_040);
        let t = Tokens { prompt: 1234, cached_prompt: 400, completion: 567, ..Tokens::default() };
        assert_eq!(cost_micros(SEED_PRICES[1].1, t), 1_468, "1,467.5 rounds half up");
    }

    #[test]
    fn cached_prompt_tokens_take_the_cached_price_when_there_is_one() {
        let price = Price { cached_input: Some(7_500_000), ..GPT4 };
        let t = Tokens { prompt: 1000, cached_prompt: 400, ..Tokens::default() };
        // 600 × 30 + 400 × 7.5 = 18,000 + 3,000.
        assert_eq!(cost_micros(price, t), 21_000);
        assert_eq!(cost_micros(GPT4, t), 30_000, "no cached price: all at the input price");
        let more_cached_than_prompt = Tokens { prompt: 10, cached_prompt: 99, ..Tokens::default() };
        assert_eq!(cost_micros(price, more_cached_than_prompt), 75);
    }

    #[test]
    fn prompt_tokens_written_to_the_cache_take_the_cache_write_price() {
        // Claude Sonnet's shape: $3 input, $3.75 cache write, $0.30 cache read, $15 output.
        let price = Price {
            input: 3_000_000,
            output: 15_000_000,
            cached_input: Some(300_000),
            cache_write_input: Some(3_750_000),
        };
        let t =
            Tokens { prompt: 1000, cached_prompt: 500, cache_write_prompt: 300, completion: 10 };
        // 200 × 3 + 500 × 0.3 + 300 × 3.75 + 10 × 15 = 600 + 150 + 1,125 + 150.
        assert_eq!(cost_micros(price, t), 2_025);
        let no_write_price = Price { cache_write_input: None, ..price };
        assert_eq!(cost_micros(no_write_price, t), 600 + 150 + 900 + 150);
        // Counts that claim more than the prompt never charge more than the prompt.
        let odd = Tokens { prompt: 10, cached_prompt: 4, cache_write_prompt: 99, completion: 0 };
        assert_eq!(cost_micros(price, odd), (4 * 300_000 + 6 * 3_750_000 + 500_000) / 1_000_000);
    }

    #[test]
    fn huge_counts_saturate_instead_of_wrapping() {
        let t = Tokens { prompt: u64::MAX, completion: u64::MAX, ..Tokens::default() };
        assert_eq!(cost_micros(Price::new(i64::MAX, i64::MAX), t), i64::MAX);
    }

    #[test]
    fn a_new_price_applies_from_its_time_and_never_to_the_past() {
        let book = PriceBook::new(
            vec![
                ModelPrice {
                    model: "gpt-4".into(),
                    price: Price::new(10_000_000, 20_000_000),
                    effective_from: datetime!(2026-12-01 0:00 UTC),
                },
                ModelPrice {
                    model: "gpt-4".into(),
                    price: GPT4,
                    effective_from: datetime!(2026-01-01 0:00 UTC),
                },
            ],
            DEFAULT_PRICE,
        );
        assert_eq!(book.price_at("gpt-4", datetime!(2026-11-30 23:59 UTC)), (GPT4, true));
        assert_eq!(book.price_at("gpt-4", datetime!(2026-12-01 0:00 UTC)).0.input, 10_000_000);
        // Before the first price, and for unknown models: the default.
        assert_eq!(book.price_at("gpt-4", datetime!(2025-06-01 0:00 UTC)), (DEFAULT_PRICE, false));
        assert_eq!(
            book.price_at("llama-9", datetime!(2026-12-01 0:00 UTC)),
            (DEFAULT_PRICE, false)
        );
        let t = Tokens { prompt: 1000, completion: 1000, ..Tokens::default() };
        assert_eq!(book.cost("llama-9", datetime!(2026-12-01 0:00 UTC), t), 3_000);
    }
}
