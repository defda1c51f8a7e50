//! Prices from LiteLLM's `model_prices_and_context_window.json` (shipped in the `litellm`
//! package): an object keyed by model name whose entries state dollars per token
//! (`input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`). Entries
//! without both input and output prices (images, audio, the `sample_spec` example) are skipped
//! and counted.

use serde::Deserialize;

use crate::price::Price;

/// Why a file could not be read as LiteLLM's price table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("not LiteLLM's price file: {0}")]
    Format(#[from] serde_json::Error),
    #[error("model {model:?}: {field} is not a price ({value})")]
    BadPrice { model: String, field: &'static str, value: f64 },
    /// Not one entry has input and output prices per token: surely not the price table.
    #[error("no model with input and output prices per token ({skipped} entries without)")]
    Empty { skipped: usize },
}

/// The prices read, and the entries skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub prices: Vec<(String, Price)>,
    pub skipped: usize,
}

#[derive(Deserialize)]
struct Entry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    cache_creation_input_token_cost: Option<f64>,
}

/// Dollars per token as micro-dollars per million tokens (× 10¹²), rounded to the nearest.
fn per_million(model: &str, field: &'static str, dollars: f64) -> Result<i64, ImportError> {
    let micros = (dollars * 1e12).round();
    if !(0.0..=9e15).contains(&micros) {
        return Err(ImportError::BadPrice { model: model.to_owned(), field, value: dollars });
    }
    Ok(micros as i64)
}

/// Reads the file's bytes; models come out sorted by name.
pub fn parse(json: &[u8]) -> Result<Imported, ImportError> {
    let entries: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json)?;
    let mut out = Imported::default();
    for (model, value) in entries {
        let Ok(entry) = serde_json::from_value::<Entry>(value) else {
            out.skipped += 1;
            continue;
        };
        let (Some(input), Some(output)) = (entry.input_cost_per_token, entry.output_cost_per_token)
        else {
            out.skipped += 1;
            continue;
        };
        if model == "sample_spec" {
            out.skipped += 1;
            continue;
        }
        let price = Price {
            input: per_million(&model, "input_cost_per_token", input)?,
            output: per_million(&model, "output_cost_per_token", output)?,
            cached_input: entry
                .cache_read_input_token_cost
                .map(|c| per_million(&model, "cache_read_input_token_cost", c))
                .transpose()?,
            cache_write_input: entry
                .cache_creation_input_token_cost
                .map(|c| per_million(&model, "cache_creation_input_token_cost", c))
                .transpose()?,
        };
        out.prices.push((model, price));
    }
    if out.prices.is_empty() {
        return Err(ImportError::Empty { skipped: out.skipped });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_entries_become_prices_per_million_tokens() {
        let file = br#"{
            "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
            "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                       "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai",
                       "mode": "chat", "max_tokens": 16384},
            "gemini-1.5-flash": {"input_cost_per_token": 7.5e-08, "output_cost_per_token": 3e-07},
            "claude-sonnet-4": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                       "cache_creation_input_token_cost": 3.75e-06,
                       "cache_read_input_token_cost": 3e-07, "litellm_provider": "anthropic"},
            "dall-e-3": {"input_cost_per_pixel": 1e-08, "mode": "image_generation"},
            "odd": "not an object"
        }"#;
        let got = parse(file).unwrap();
        assert_eq!(
            got.prices,
            vec![
                (
                    "claude-sonnet-4".into(),
                    Price {
                        input: 3_000_000,
                        output: 15_000_000,
                        cached_input: Some(300_000),
                        cache_write_input: Some(3_750_000),
                    }
                ),
                ("gemini-1.5-flash".into(), Price::new(75_000, 300_000)),
                (
                    "gpt-4o".into(),
                    Price { cached_input: Some(1_250_000), ..Price::new(2_500_000, 10_000_000) }
                ),
            ]
        );
        assert_eq!(got.skipped, 3);
    }

    #[test]
    fn a_file_that_is_not_the_price_table_is_refused_with_the_reason() {
        assert!(matches!(parse(b"[1, 2]"), Err(ImportError::Format(_))));
        assert!(matches!(parse(br#"{"x": 1}"#), Err(ImportError::Empty { skipped: 1 })));
        let negative =
            br#"{"m": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06}}"#;
        let e = parse(negative).unwrap_err();
        assert!(e.to_string().contains("input_cost_per_token"), "{e}");
    }
}
