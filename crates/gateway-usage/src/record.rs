//! One request's usage.

use gateway_core::{ApiKeyId, RequestId, ServerId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What one gateway request used and how it ended. `request_id` and `created_at` are fixed
/// when the record is made, so every retry of it is the same row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // independent facts, one column of usage_logs each
pub struct UsageRecord {
    pub request_id: RequestId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub user_id: UserId,
    pub api_key_id: Option<ApiKeyId>,
    pub server_id: Option<ServerId>,
    /// `chat.completions`, `completions`, `embeddings`, `responses` or `messages`.
    pub endpoint: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: i64,
    pub latency_ms: u32,
    pub upstream_latency_ms: Option<u32>,
    pub status_code: u16,
    pub is_error: bool,
    pub error_message: Option<String>,
    pub streamed: bool,
    pub client_disconnected: bool,
    /// The upstream reported no usage: the tokens are the gateway's estimate of what was sent
    /// and generated (never zero for an answer that generated something).
    #[serde(default)]
    pub usage_estimated: bool,
    /// Days the raw row is kept: the retention of the user's plan when the request was made
    /// (the store keeps it at least that long, by whole partitions; the rollup keeps the
    /// totals for good).
    #[serde(default = "default_retention")]
    pub retention_days: u32,
}

/// The retention of a record spilled before rows carried one: the longest seeded plan's.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;

fn default_retention() -> u32 {
    DEFAULT_RETENTION_DAYS
}

impl UsageRecord {
    /// A complete record with made-up values, for examples and tests.
    pub fn example() -> Self {
        Self {
            request_id: RequestId::new(),
            created_at: OffsetDateTime::now_utc(),
            user_id: UserId::new(),
            api_key_id: Some(ApiKeyId::new()),
            server_id: None,
            endpoint: "chat.completions".into(),
            model: "gpt-4".into(),
            prompt_tokens: 3,
            completion_tokens: 5,
            total_tokens: 8,
            cost_micros: 0,
            latency_ms: 12,
            upstream_latency_ms: Some(10),
            status_code: 200,
            is_error: false,
            error_message: None,
            streamed: false,
            client_disconnected: false,
            usage_estimated: false,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}
