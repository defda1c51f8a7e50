//! Users, tiers, keys, limits, usage and upstream servers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::id::{ApiKeyId, ServerId, UserId};

/// Error for a string that names no known variant of one of the enums below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// What a user may do beyond their own resources.
    Role, "role" { User => "user", Admin => "admin" }
);
string_enum!(
    /// A suspended user's sessions and keys stop working at once; a deleted user's keys are
    /// revoked and sessions ended for good, the account kept for its history (soft delete).
    UserStatus, "status" { Active => "active", Suspended => "suspended", Deleted => "deleted" }
);
string_enum!(
    /// Subscription tier: which [`Plan`](crate::Plan) applies to a user.
    Tier, "tier" { Free => "free", Starter => "starter", Pro => "pro", Enterprise => "enterprise" }
);
string_enum!(
    /// What an API key may call.
    Scope, "scope" {
        ChatCompletions => "chat.completions",
        Completions => "completions",
        Embeddings => "embeddings",
        Responses => "responses",
        Messages => "messages",
        Models => "models"
    }
);
string_enum!(
    /// Health of an upstream server as the balancer sees it.
    HealthStatus, "health status" {
        Unknown => "unknown", Healthy => "healthy", Degraded => "degraded", Unhealthy => "unhealthy"
    }
);

/// Per-key limits. Token quotas count prompt plus completion tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per sliding minute.
    pub rpm: u64,
    /// Tokens per sliding minute.
    pub tpm: u64,
    /// Tokens per calendar UTC day.
    pub daily_tokens: u64,
    /// Tokens per calendar UTC month.
    pub monthly_tokens: u64,
}

impl Limits {
    /// Applies a key's overrides on top of these (tier) limits. An override may only lower a
    /// limit unless `may_raise` (admins) is set.
    #[must_use]
    pub fn with_overrides(self, o: &LimitOverrides, may_raise: bool) -> Limits {
        let pick = |base: u64, over: Option<u64>| match over {
            Some(v) if may_raise || v <= base => v,
            _ => base,
        };
        Limits {
            rpm: pick(self.rpm, o.rate_limit_rpm),
            tpm: pick(self.tpm, o.rate_limit_tpm),
            daily_tokens: pick(self.daily_tokens, o.quota_daily),
            monthly_tokens: pick(self.monthly_tokens, o.quota_monthly),
        }
    }
}

/// The optional per-key limit overrides, named as in the HTTP API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub rate_limit_rpm: Option<u64>,
    pub rate_limit_tpm: Option<u64>,
    pub quota_daily: Option<u64>,
    pub quota_monthly: Option<u64>,
}

impl Tier {
    /// The tier table of docs/LIMITS.md.
    pub const fn limits(self) -> Limits {
        match self {
            Tier::Free => {
                Limits { rpm: 10, tpm: 10_000, daily_tokens: 1_000, monthly_tokens: 10_000 }
            }
            Tier::Starter => {
                Limits { rpm: 60, tpm: 100_000, daily_tokens: 20_000, monthly_tokens: 500_000 }
            }
            Tier::Pro => {
                Limits { rpm: 200, tpm: 500_000, daily_tokens: 100_000, monthly_tokens: 2_000_000 }
            }
            Tier::Enterprise => Limits {
                rpm: 1_000,
                tpm: 2_000_000,
                daily_tokens: 500_000,
                monthly_tokens: 10_000_000,
            },
        }
    }

    pub const fn display_name(self) -> &'static str {
        match self {
            Tier::Free => "Free",
            Tier::Starter => "Starter",
            Tier::Pro => "Pro",
            Tier::Enterprise => "Enterprise",
        }
    }
}

/// A user account as the domain sees it (the password hash never leaves the auth crate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub full_name: Option<String>,
    pub company_name: Option<String>,
    pub role: Role,
    pub tier: Tier,
    pub status: UserStatus,
    /// Prepaid credit balance in micro-dollars (the sum of the user's credit ledger).
    pub credits_micros: i64,
    /// Most overage a paid plan may run up in a month, in micro-dollars; `None`: the plan's
    /// monthly price.
    pub overage_cap_micros: Option<i64>,
    /// From this moment the account is past due (its oldest open invoice's grace period
    /// ends) and gets free-tier limits; `None` while no invoice is open.
    #[serde(with = "time::serde::rfc3339::option")]
    pub past_due_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What the API may show of a key: never the secret nor its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKeyMeta {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    /// `bm_xxxxxxxx`, for display.
    pub key_prefix: String,
    pub scopes: Vec<Scope>,
    pub allowed_models: Option<Vec<String>>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(flatten)]
    pub overrides: LimitOverrides,
    pub is_active: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Token counts of one request, as OpenAI reports them. Missing counts are zero (embeddings
/// report no `completion_tokens`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of the prompt tokens, those the upstream read from its prompt cache (billed at the
    /// model's cached-input price when it has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// OpenAI's `usage.prompt_tokens_details`; other fields in it are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTokensDetails {
    /// `null` reads as 0: some upstreams (LiteLLM's translations) send `"cached_tokens": null`,
    /// which must not cost the whole usage report.
    #[serde(deserialize_with = "null_as_zero")]
    pub cached_tokens: u64,
    /// Of the prompt tokens, those written to the upstream's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; billed at the model's cache-write price when it has one).
    /// Not an OpenAI field: OpenAI answers leave it at zero.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "null_as_zero")]
    pub cache_write_tokens: u64,
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Option::<u64>::deserialize(d).map(Option::unwrap_or_default)
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// Prompt tokens read from the upstream's cache (zero when it did not say).
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    /// Prompt tokens written to the upstream's cache (zero when it did not say).
    pub fn cache_write_prompt_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cache_write_tokens)
    }

    /// `total_tokens`, or the sum of the parts when an upstream left it out.
    pub fn total(&self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens + self.completion_tokens
        }
    }
}

/// An upstream server of the pool. The upstream API key is held apart and never serialised.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamServer {
    pub id: ServerId,
    pub name: String,
    /// The server's root, as the seed registers it (`http://localhost:4000`).
    pub base_url: String,
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Lower is preferred.
    pub priority: u32,
    pub weight: u32,
    pub max_concurrent_requests: Option<u32>,
    /// Empty means "any model".
    pub supported_models: Vec<String>,
    pub is_active: bool,
    pub health: HealthStatus,
}

impl fmt::Debug for UpstreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamServer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("priority", &self.priority)
            .field("weight", &self.weight)
            .field("supported_models", &self.supported_models)
            .field("is_active", &self.is_active)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl UpstreamServer {
    /// The URL of an OpenAI endpoint on this server: `{base_url}/v1/{endpoint}`, without
    /// doubling a `/v1` the base URL already ends with.
    pub fn endpoint_url(&self, endpoint: &str) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/{}", endpoint.trim_start_matches('/'))
    }

    pub fn supports(&self, model: &str) -> bool {
        self.supported_models.is_empty() || self.supported_models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_cached_count_reads_as_zero_and_keeps_the_usage() {
        let u: Usage = serde_json::from_str(
            r#"{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,
                "prompt_tokens_details":{"cached_tokens":null,"audio_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!((u.total(), u.cached_prompt_tokens()), (7, 0));
        let u: Usage = serde_json::from_str(
            r#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!((u.cached_prompt_tokens(), u.cache_write_prompt_tokens()), (3, 0));
    }

    #[test]
    fn embedding_usage_without_completion_tokens_parses() {
        let u: Usage = serde_json::from_str(r#"{"prompt_tokens":5,"total_tokens":5}"#).unwrap();
        assert_eq!(u, Usage::new(5, 0));
    }

    #[test]
    fn tier_table_matches_the_design() {
        let rows: Vec<(Tier, [u64; 4])> = vec![
            (Tier::Free, [10, 10_000, 1_000, 10_000]),
            (Tier::Starter, [60, 100_000, 20_000, 500_000]),
            (Tier::Pro, [200, 500_000, 100_000, 2_000_000]),
            (Tier::Enterprise, [1_000, 2_000_000, 500_000, 10_000_000]),
        ];
        for (tier, [rpm, tpm, daily, monthly]) in rows {
            let l = tier.limits();
            assert_eq!(
                [l.rpm, l.tpm, l.daily_tokens, l.monthly_tokens],
                [rpm, tpm, daily, monthly],
                "{tier}"
            );
        }
    }

    #[test]
    fn users_may_only_lower_limits_admins_may_raise() {
        let base = Tier::Free.limits();
        let o = LimitOverrides {
            rate_limit_rpm: Some(5),
            rate_limit_tpm: Some(50_000),
            ..Default::default()
        };
        let user = base.with_overrides(&o, false);
        assert_eq!(user.rpm, 5);
        assert_eq!(user.tpm, base.tpm, "raising TPM above the tier is ignored for users");
        let admin = base.with_overrides(&o, true);
        assert_eq!(admin.tpm, 50_000);
    }

    #[test]
    fn enums_parse_their_own_text_and_refuse_others() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), *s);
        }
        assert_eq!("chat.completions".parse::<Scope>().unwrap(), Scope::ChatCompletions);
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(err.to_string(), "unknown role \"root\"");
        assert_eq!(serde_json::to_string(&Scope::ChatCompletions).unwrap(), "\"chat.completions\"");
    }

    fn server(base_url: &str) -> UpstreamServer {
        UpstreamServer {
            id: ServerId::new(),
            name: "s".into(),
            base_url: base_url.into(),
            api_key: Some("sk-upstream-secret".into()),
            priority: 1,
            weight: 1,
            max_concurrent_requests: None,
            supported_models: vec![],
            is_active: true,
            health: HealthStatus::Unknown,
        }
    }

    #[test]
    fn endpoint_url_never_doubles_v1() {
        assert_eq!(
            server("http://localhost:4000").endpoint_url("chat/completions"),
            "http://localhost:4000/v1/chat/completions"
        );
        assert_eq!(
            server("http://localhost:4000/").endpoint_url("/models"),
            "http://localhost:4000/v1/models"
        );
        assert_eq!(
            server("http://h:4000/v1").endpoint_url("embeddings"),
            "http://h:4000/v1/embeddings"
        );
        assert_eq!(
            server("http://h/proxy/v1/").endpoint_url("embeddings"),
            "http://h/proxy/v1/embeddings"
        );
    }

    #[test]
    fn upstream_key_never_shows_in_debug_or_json() {
        let s = server("http://h");
        assert!(!format!("{s:?}").contains("sk-upstream-secret"));
        assert!(!serde_json::to_string(&s).unwrap().contains("sk-upstream-secret"));
    }
}
