//! Configuration: defaults, then `bluesminds.toml` (or `--config PATH`), then the environment,
//! then [`Config::validate`]. Every error names the key at fault, and the binary exits 64.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod traces;
pub use traces::TracesConfig;

/// The whole configuration, one section per concern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub proxy: ProxyConfig,
    pub health: HealthConfig,
    pub usage: UsageConfig,
    pub limits: LimitsConfig,
    pub billing: BillingConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
    pub email: EmailConfig,
    /// Upstream servers seeded at start (`LITELLM_SERVER_N_URL`, `_API_KEY`, `_MODELS`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSeed>,
}

/// `[email]`: account mail (password resets). Off while `smtp_url` is empty: the reset
/// endpoints then say so, and everything else works.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// Secret (it may hold the SMTP password; `SMTP_URL`): `smtps://user:pass@host:465`,
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), or `smtp://host:25` (plain: a
    /// local relay).
    pub smtp_url: String,
    /// The sender, `Name <address>` or an address (`EMAIL_FROM`).
    pub from: String,
    /// New accounts must open a mailed link before they can sign in (needs `smtp_url`).
    pub verify_signups: bool,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &if self.smtp_url.is_empty() { "" } else { "<redacted>" })
            .field("from", &self.from)
            .field("verify_signups", &self.verify_signups)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address (`BLUESMINDS_BIND`).
    pub bind: String,
    /// Public URL, for cookies and the CSRF `Origin` check (`BLUESMINDS_PUBLIC_URL`).
    pub public_url: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes; larger ones get
    /// 431 (HTTP/1; at least 8192). On HTTP/2, the largest header list.
    pub max_header_bytes: usize,
    /// A client must send its request headers within this time; an idle keep-alive connection
    /// is closed after it too (HTTP/1).
    pub header_timeout_ms: u64,
    /// A client must send its whole request body within this time (408 otherwise).
    pub body_timeout_ms: u64,
    /// HTTP/2 connections are pinged at this interval and closed when a ping goes unanswered
    /// for as long.
    pub h2_keepalive_ms: u64,
    /// On SIGINT/SIGTERM, the instance first reports not ready (`/readyz` 503) and keeps
    /// serving for this long, so a load balancer's health checks take it out of rotation
    /// before it stops accepting; 0 drains at once. Set it above the balancer's time to notice
    /// (HAProxy: `inter` x `fall`); Kubernetes' preStop pause does the same job.
    pub shutdown_delay_ms: u64,
    /// Then in-flight requests and open streams get this long to finish; the rest are cut.
    pub shutdown_grace_ms: u64,
    /// Requests handled at once (open streams included); more are shed with 503.
    pub max_in_flight: usize,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:3000".into(),
            public_url: "http://localhost:3000".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            h2_keepalive_ms: 30_000,
            shutdown_delay_ms: 0,
            shutdown_grace_ms: 10_000,
            max_in_flight: 4_096,
            workers: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://FILE?mode=rwc` (`DATABASE_URL`).
    pub url: String,
    pub max_connections: u32,
    /// Run pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://bluesminds.db?mode=rwc".into(),
            max_connections: 16,
            migrate_on_start: true,
        }
    }
}

impl DatabaseConfig {
    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }

    /// The SQLite file, if this is an embedded database.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest =
            self.url.strip_prefix("sqlite://").or_else(|| self.url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://...` (`REDIS_URL`), or a Redis Cluster as `redis+cluster://host:port,host:port`
    /// or a comma-separated list of `redis://` URLs; empty keeps limits in memory.
    pub url: String,
    /// Prefix of every Redis key and channel, so deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: String::new(), key_prefix: "bluesminds".into() }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Key of session-token hashing (`JWT_SECRET`).
    pub jwt_secret: String,
    /// Key of the verified-key cache's HMAC (`API_KEY_SECRET`).
    pub api_key_secret: String,
    /// bcrypt cost of passwords.
    pub bcrypt_cost: u32,
    /// bcrypt cost of API-key secrets (about 256 random bits each: a high cost adds no
    /// security, only CPU on every cache miss).
    pub key_bcrypt_cost: u32,
    /// Lifetime of a login session.
    pub session_ttl_secs: u64,
    /// How long a rotated key's old secret keeps working.
    pub key_rotation_grace_secs: u64,
    /// How long a verified key is trusted without looking again (revocations reach other
    /// instances within a second through Redis, within this time without it).
    pub key_cache_ttl_ms: u64,
    /// How long instead while the Redis invalidation bus is subscribed: every change made
    /// through the gateway reaches every instance at once then, so this bounds only changes
    /// made to the database directly. A value below `key_cache_ttl_ms` counts as it.
    pub key_cache_bus_ttl_ms: u64,
    /// How long past `key_cache_ttl_ms` a verified key keeps working while it is looked up
    /// again in the background, and while the database cannot be reached.
    pub key_cache_grace_secs: u64,
    /// Failed logins (per email) after which each attempt is slowed down.
    pub login_slowdown_after: u32,
    /// Failed logins per email within 15 minutes after which the email is refused (429) for
    /// the rest of the window; five times as many per client address.
    pub login_lockout_after: u32,
    /// Accounts with these emails are administrators, made so at sign-up and at every start
    /// (`ADMIN_EMAILS`, comma separated, as the original product had it).
    pub admin_emails: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            api_key_secret: String::new(),
            bcrypt_cost: 12,
            key_bcrypt_cost: 10,
            session_ttl_secs: 7 * 24 * 3600,
            key_rotation_grace_secs: 0,
            key_cache_ttl_ms: 30_000,
            key_cache_bus_ttl_ms: 300_000,
            key_cache_grace_secs: 600,
            login_slowdown_after: 3,
            login_lockout_after: 10,
            admin_emails: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |s: &str| if s.is_empty() { "<unset>" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &shown(&self.jwt_secret))
            .field("api_key_secret", &shown(&self.api_key_secret))
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("key_bcrypt_cost", &self.key_bcrypt_cost)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("key_rotation_grace_secs", &self.key_rotation_grace_secs)
            .field("key_cache_ttl_ms", &self.key_cache_ttl_ms)
            .field("key_cache_bus_ttl_ms", &self.key_cache_bus_ttl_ms)
            .field("key_cache_grace_secs", &self.key_cache_grace_secs)
            .field("admin_emails", &self.admin_emails)
            .field("login_slowdown_after", &self.login_slowdown_after)
            .field("login_lockout_after", &self.login_lockout_after)
            .finish()
    }
}

/// Forwarding to upstream servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub connect_timeout_ms: u64,
    /// Until an upstream's response head arrives.
    pub first_byte_timeout_ms: u64,
    /// A whole non-streaming response.
    pub request_timeout_ms: u64,
    /// Longest silence between two chunks of a stream (streams have no total limit).
    pub stream_idle_timeout_ms: u64,
    /// An upstream connection idle this long is not reused. Keep it below the upstream's own
    /// keep-alive timeout (LiteLLM under uvicorn closes idle connections after 5 s): a
    /// connection the server is closing as a request goes out fails that request.
    pub pool_idle_timeout_ms: u64,
    /// Servers tried for one request before giving up.
    pub max_attempts: usize,
    /// Request fields refused because they would steer the upstream (replaces the default
    /// list when set).
    pub forbidden_fields: Option<Vec<String>>,
    /// Prefixes of refused request fields.
    pub forbidden_prefixes: Option<Vec<String>>,
    /// Deepest nesting of arrays and objects accepted in a request body (400 beyond).
    pub max_json_depth: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 120_000,
            request_timeout_ms: 600_000,
            stream_idle_timeout_ms: 120_000,
            pool_idle_timeout_ms: 4_000,
            max_attempts: 3,
            forbidden_fields: None,
            forbidden_prefixes: None,
            max_json_depth: 64,
        }
    }
}

/// The usage writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Record one usage row per gateway request. Off means no usage logs and nothing to
    /// bill: only for measuring what recording costs (`just bench`), never in production.
    pub enabled: bool,
    /// Records waiting for the writer before they spill to the file.
    pub queue_capacity: usize,
    /// Most records in one insert.
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_interval_ms: u64,
    /// The append-only file of records the database could not take yet; empty: beside the
    /// SQLite file, or `bluesminds-usage-spill.jsonl` in the working directory.
    pub spill_path: String,
    /// Append each record to a journal beside the spill file before the client has its
    /// answer, so a process killed outright (SIGKILL, the OOM killer) loses no record.
    pub journal: bool,
    /// On Postgres, how long the daily rollup's sums are added up in memory before they are
    /// written (one upsert per user, key, model and day in that time, instead of one per
    /// batch); statistics trail the request log by up to this. 0: in each batch's
    /// transaction. At most 60000.
    pub rollup_interval_ms: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_capacity: 10_000,
            batch_size: 500,
            flush_interval_ms: 100,
            spill_path: String::new(),
            journal: true,
            rollup_interval_ms: 5_000,
        }
    }
}

impl Config {
    /// Where the usage writer spills.
    pub fn usage_spill_path(&self) -> PathBuf {
        if !self.usage.spill_path.is_empty() {
            return PathBuf::from(&self.usage.spill_path);
        }
        match self.database.sqlite_path() {
            Some(db) => beside_database(&db, "usage-spill.jsonl"),
            None => PathBuf::from("bluesminds-usage-spill.jsonl"),
        }
    }
}

/// A file kept next to an embedded database: `data/gw.db` and `secrets` give
/// `data/gw.secrets`.
pub fn beside_database(db_path: &Path, extension: &str) -> PathBuf {
    let dir = db_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = db_path.file_stem().and_then(|s| s.to_str()).unwrap_or("bluesminds");
    dir.join(format!("{stem}.{extension}"))
}

/// Per-key rate limits and token quotas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Enforce limits and quotas (off: no `x-ratelimit-*` headers, nothing refused).
    pub enabled: bool,
    /// Completion tokens reserved for a request that names no `max_tokens`; settled to the
    /// real count after the response.
    pub default_completion_tokens: u64,
    /// Length of the requests- and tokens-per-minute windows, in seconds. 60 in production;
    /// tests shorten it.
    pub window_secs: u64,
    /// A limiter call to Redis that takes longer fails, and the outage policy applies.
    pub redis_timeout_ms: u64,
    /// Gateway instances sharing one Redis: while Redis is down, each enforces its share of
    /// the per-minute limits.
    pub instances: u32,
    /// While Redis is down, per-minute limits are `local` (each instance its share), `allow`
    /// (not enforced) or `refuse` (503).
    pub on_redis_down_capacity: CapacityPolicy,
    /// While Redis is down, quotas are counted in the `database` (exact; 503 when it is down
    /// too), `allow`ed or `refuse`d (503).
    pub on_redis_down_quota: QuotaPolicy,
    /// How often quota counters changed in Redis are saved to the database.
    pub mirror_interval_ms: u64,
    /// With Redis: an instance admits from leases on part of a key's budget for up to this
    /// long, without a Redis round trip per request (0: every request goes to Redis).
    pub lease_ms: u64,
    /// A small lease (at most 1/(16 × lease_share) of what remains of a key's limits) lasts up
    /// to this long instead (`lease_ms` or less: no such leases).
    pub lease_long_ms: u64,
    /// A lease takes at most 1/lease_share of what remains of a key's limits.
    pub lease_share: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_completion_tokens: 256,
            window_secs: 60,
            redis_timeout_ms: 100,
            instances: 1,
            on_redis_down_capacity: CapacityPolicy::Local,
            on_redis_down_quota: QuotaPolicy::Database,
            mirror_interval_ms: 1_000,
            lease_ms: 2_000,
            lease_long_ms: 10_000,
            lease_share: 16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapacityPolicy {
    Local,
    Allow,
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPolicy {
    Database,
    Allow,
    Refuse,
}

/// Active health checks and passive failure detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between active checks of every server.
    pub interval_secs: u64,
    /// A probe slower than this fails.
    pub timeout_ms: u64,
    /// A probe slower than this marks the server degraded.
    pub degraded_latency_ms: u64,
    /// Consecutive failed requests that open a server's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses requests before one trial.
    pub cooldown_secs: u64,
    /// Most servers whose circuits may be open at once, in percent of the active servers (at
    /// least one).
    pub max_ejected_percent: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            timeout_ms: 5_000,
            degraded_latency_ms: 2_000,
            failure_threshold: 3,
            cooldown_secs: 30,
            max_ejected_percent: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// The input price of models without one of their own, in micro-dollars per million
    /// tokens ($0.001 per 1K tokens by default).
    pub default_input_micros_per_million: i64,
    /// Their output price ($0.002 per 1K tokens by default).
    pub default_output_micros_per_million: i64,
    /// Days an invoice may stay open before the account falls back to free-tier limits.
    pub grace_days: u32,
    /// Close the previous month on the first of each month (UTC): one instance does it (a
    /// database lock), the others find it done. Off: close by hand with
    /// `bluesminds billing close-period`.
    pub close_periods: bool,
    /// Payments through Creem; off while `api_key` or `webhook_secret` is empty.
    pub creem: CreemConfig,
    /// The free plan's limits, written to it at every start when set (the original product's
    /// `DEFAULT_RATE_LIMIT_RPM`, `DEFAULT_RATE_LIMIT_TPM`, `DEFAULT_QUOTA_DAILY`,
    /// `DEFAULT_QUOTA_MONTHLY`); unset, the plan keeps what admins gave it.
    pub free_tier: FreeTierLimits,
}

/// `[billing.free_tier]`: the free plan's limits from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreeTierLimits {
    pub rate_limit_rpm: Option<u64>,
    pub rate_limit_tpm: Option<u64>,
    pub quota_daily: Option<u64>,
    pub quota_monthly: Option<u64>,
}

impl FreeTierLimits {
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }
}

/// `[billing.creem]`: the Creem account payments go to.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreemConfig {
    /// Secret: Creem's API key (test keys work against `https://test-api.creem.io`).
    pub api_key: String,
    /// Secret: the signing secret of the webhook registered at Creem.
    pub webhook_secret: String,
    /// Creem's API base.
    pub api_url: String,
    /// Where Creem sends the buyer after paying; default `<server.public_url>/`.
    pub success_url: String,
    /// The Creem product id of each paid tier (`starter`, `pro`, `enterprise`).
    pub products: std::collections::BTreeMap<String, String>,
    /// Credit packs on sale, by name.
    pub credit_packs: std::collections::BTreeMap<String, CreditPackConfig>,
    /// A one-time product priced at $0.01: an open invoice is paid by buying as many units as
    /// it has cents left to pay. Empty: invoices are paid with credits only.
    pub invoice_product_id: String,
    /// The currency the products are priced in.
    pub currency: String,
}

impl Default for CreemConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            webhook_secret: String::new(),
            api_url: "https://api.creem.io".to_owned(),
            success_url: String::new(),
            products: std::collections::BTreeMap::new(),
            credit_packs: std::collections::BTreeMap::new(),
            invoice_product_id: String::new(),
            currency: "USD".to_owned(),
        }
    }
}

impl std::fmt::Debug for CreemConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreemConfig")
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<redacted>" })
            .field(
                "webhook_secret",
                &if self.webhook_secret.is_empty() { "" } else { "<redacted>" },
            )
            .field("api_url", &self.api_url)
            .field("success_url", &self.success_url)
            .field("products", &self.products)
            .field("credit_packs", &self.credit_packs)
            .field("invoice_product_id", &self.invoice_product_id)
            .field("currency", &self.currency)
            .finish()
    }
}

impl CreemConfig {
    /// Payments are on when both secrets are set.
    pub fn enabled(&self) -> bool {
        !self.api_key.is_empty() && !self.webhook_secret.is_empty()
    }
}

/// One credit pack: what it costs and what it adds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPackConfig {
    pub product_id: String,
    pub price_micros: i64,
    pub credits_micros: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        let p = gateway_billing::DEFAULT_PRICE;
        Self {
            default_input_micros_per_million: p.input,
            default_output_micros_per_million: p.output,
            grace_days: 14,
            close_periods: true,
            creem: CreemConfig::default(),
            free_tier: FreeTierLimits::default(),
        }
    }
}

impl BillingConfig {
    /// The price of models without one of their own.
    pub fn default_price(&self) -> gateway_billing::Price {
        gateway_billing::Price::new(
            self.default_input_micros_per_million,
            self.default_output_micros_per_million,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `bluesminds=debug,info`; `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// An upstream server given in the environment.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSeed {
    pub url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

impl std::fmt::Debug for UpstreamSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSeed")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .finish()
    }
}

/// A configuration error that names the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        Self(format!("`{key}` {problem}"))
    }
}

/// Environment names taken as they are (the original product's among them), and the key each
/// sets; everything else is `BLUESMINDS_<SECTION>__<KEY>`.
const WELL_KNOWN_ENV: [(&str, &str); 12] = [
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("API_KEY_SECRET", "auth.api_key_secret"),
    ("BLUESMINDS_BIND", "server.bind"),
    ("BLUESMINDS_PUBLIC_URL", "server.public_url"),
    ("SMTP_URL", "email.smtp_url"),
    ("EMAIL_FROM", "email.from"),
    ("DEFAULT_RATE_LIMIT_RPM", "billing.free_tier.rate_limit_rpm"),
    ("DEFAULT_RATE_LIMIT_TPM", "billing.free_tier.rate_limit_tpm"),
    ("DEFAULT_QUOTA_DAILY", "billing.free_tier.quota_daily"),
    ("DEFAULT_QUOTA_MONTHLY", "billing.free_tier.quota_monthly"),
];

impl Config {
    /// Layers defaults, the TOML file and the environment. `path` is `--config`: when given,
    /// the file must exist; otherwise `bluesminds.toml` in the working directory is read if
    /// present.
    pub fn figment(path: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) if !p.is_file() => {
                return Err(ConfigError(format!("config file {} does not exist", p.display())));
            }
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new("bluesminds.toml").is_file() => {
                figment = figment.merge(Toml::file_exact("bluesminds.toml"));
            }
            None => {}
        }
        for (var, key) in WELL_KNOWN_ENV {
            figment = figment.merge(Env::raw().only(&[var]).map(move |_| key.into()));
        }
        Ok(figment
            .merge(Env::prefixed("BLUESMINDS_").filter(|k| k.as_str().contains("__")).split("__")))
    }

    /// Loads, adds the `LITELLM_SERVER_N_*` seeds and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(&Self::figment(path)?, std::env::vars())
    }

    /// Extracts from a figment plus an environment (injected for tests).
    pub fn from_figment(
        figment: &Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| ConfigError(figment_message(&e)))?;
        let env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
        traces::apply_otel_env(&mut config.traces, &env)?;
        if let Some(emails) = env.get("ADMIN_EMAILS") {
            config.auth.admin_emails.extend(
                emails.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from),
            );
        }
        for email in &mut config.auth.admin_emails {
            *email = email.trim().to_lowercase();
        }
        config.upstreams.extend(upstream_seeds(env)?);
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        s.bind.parse::<SocketAddr>().map_err(|_| {
            ConfigError::key(
                "server.bind",
                format!("{:?} is not an address like 127.0.0.1:3000", s.bind),
            )
        })?;
        let e = &self.email;
        if e.verify_signups && e.smtp_url.is_empty() {
            return Err(ConfigError::key(
                "email.verify_signups",
                "needs email.smtp_url: the links go out by mail",
            ));
        }
        if !e.smtp_url.is_empty() && e.from.is_empty() {
            return Err(ConfigError::key("email.from", "is needed when email.smtp_url is set"));
        }
        if !(e.smtp_url.is_empty()
            || e.smtp_url.starts_with("smtp://")
            || e.smtp_url.starts_with("smtps://"))
        {
            return Err(ConfigError::key("email.smtp_url", "must start with smtp:// or smtps://"));
        }
        if !(s.public_url.starts_with("http://") || s.public_url.starts_with("https://")) {
            return Err(ConfigError::key(
                "server.public_url",
                "must start with http:// or https://",
            ));
        }
        for (key, value) in [
            ("server.max_body_bytes", s.max_body_bytes as u64),
            ("server.header_timeout_ms", s.header_timeout_ms),
            ("server.body_timeout_ms", s.body_timeout_ms),
            ("server.h2_keepalive_ms", s.h2_keepalive_ms),
            ("server.max_in_flight", s.max_in_flight as u64),
            ("database.max_connections", u64::from(self.database.max_connections)),
            ("proxy.connect_timeout_ms", self.proxy.connect_timeout_ms),
            ("proxy.first_byte_timeout_ms", self.proxy.first_byte_timeout_ms),
            ("proxy.request_timeout_ms", self.proxy.request_timeout_ms),
            ("proxy.stream_idle_timeout_ms", self.proxy.stream_idle_timeout_ms),
            ("proxy.pool_idle_timeout_ms", self.proxy.pool_idle_timeout_ms),
            ("proxy.max_attempts", self.proxy.max_attempts as u64),
            ("health.interval_secs", self.health.interval_secs),
            ("health.timeout_ms", self.health.timeout_ms),
            ("health.failure_threshold", u64::from(self.health.failure_threshold)),
            ("usage.queue_capacity", self.usage.queue_capacity as u64),
            ("usage.batch_size", self.usage.batch_size as u64),
            ("usage.flush_interval_ms", self.usage.flush_interval_ms),
            ("limits.window_secs", self.limits.window_secs),
            ("limits.redis_timeout_ms", self.limits.redis_timeout_ms),
            ("limits.instances", u64::from(self.limits.instances)),
            ("limits.mirror_interval_ms", self.limits.mirror_interval_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        let db = &self.database.url;
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            return Err(ConfigError::key("database.url", "must be a postgres:// or sqlite: URL"));
        }
        let redis = &self.redis.url;
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::key(
                "redis.key_prefix",
                "must be a non-empty word without spaces",
            ));
        }
        for (key, price) in [
            (
                "billing.default_input_micros_per_million",
                self.billing.default_input_micros_per_million,
            ),
            (
                "billing.default_output_micros_per_million",
                self.billing.default_output_micros_per_million,
            ),
        ] {
            if price < 0 {
                return Err(ConfigError::key(
                    key,
                    "must be 0 or more (micro-dollars per million tokens)",
                ));
            }
        }
        let creem = &self.billing.creem;
        for tier in creem.products.keys() {
            if !matches!(tier.as_str(), "starter" | "pro" | "enterprise") {
                return Err(ConfigError::key(
                    "billing.creem.products",
                    "names paid tiers only: starter, pro, enterprise",
                ));
            }
        }
        for pack in creem.credit_packs.values() {
            if pack.product_id.is_empty() || pack.price_micros <= 0 || pack.credits_micros <= 0 {
                return Err(ConfigError::key(
                    "billing.creem.credit_packs",
                    "each pack needs a product_id and positive price_micros and credits_micros",
                ));
            }
        }
        if !(creem.api_url.starts_with("https://") || creem.api_url.starts_with("http://")) {
            return Err(ConfigError::key("billing.creem.api_url", "must be an http(s) URL"));
        }
        if self.limits.lease_ms > 30_000 {
            return Err(ConfigError::key("limits.lease_ms", "must be at most 30000 (30 s)"));
        }
        if self.limits.lease_long_ms > 30_000 {
            return Err(ConfigError::key("limits.lease_long_ms", "must be at most 30000 (30 s)"));
        }
        if self.usage.rollup_interval_ms > 60_000 {
            return Err(ConfigError::key(
                "usage.rollup_interval_ms",
                "must be at most 60000 (60 s)",
            ));
        }
        if self.limits.lease_share == 0 {
            return Err(ConfigError::key("limits.lease_share", "must be greater than 0"));
        }
        if self.auth.login_lockout_after == 0 {
            return Err(ConfigError::key("auth.login_lockout_after", "must be greater than 0"));
        }
        let schemes = ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"];
        if !(redis.is_empty()
            || redis.split(',').all(|u| schemes.iter().any(|s| u.trim().starts_with(s)))
            || schemes[2..].iter().any(|s| redis.starts_with(s)))
        {
            return Err(ConfigError::key(
                "redis.url",
                "must be a redis:// or rediss:// URL, a redis+cluster://host:port,host:port URL, or a comma-separated list of redis:// URLs",
            ));
        }
        for (key, cost) in [
            ("auth.bcrypt_cost", self.auth.bcrypt_cost),
            ("auth.key_bcrypt_cost", self.auth.key_bcrypt_cost),
        ] {
            if !(4..=31).contains(&cost) {
                return Err(ConfigError::key(key, "must be between 4 and 31"));
            }
        }
        for (key, value) in [
            ("auth.session_ttl_secs", self.auth.session_ttl_secs),
            ("auth.key_cache_ttl_ms", self.auth.key_cache_ttl_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        for (key, value, env) in [
            ("auth.jwt_secret", &self.auth.jwt_secret, "JWT_SECRET"),
            ("auth.api_key_secret", &self.auth.api_key_secret, "API_KEY_SECRET"),
        ] {
            if value.is_empty() && !self.database.is_sqlite() {
                return Err(ConfigError::key(
                    key,
                    format!(
                        "is required with Postgres: set {env} (e.g. `openssl rand -base64 32`)"
                    ),
                ));
            }
            if !value.is_empty() && value.len() < 32 {
                return Err(ConfigError::key(key, "must be at least 32 characters long"));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::key("log.format", "must be \"text\" or \"json\""));
        }
        self.traces.validate()
    }
}

/// Turns figment's error into one line that names the key.
fn figment_message(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let source =
                err.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", err.kind)
            } else {
                format!("`{key}`: {}{source}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `LITELLM_SERVER_1_URL`, `LITELLM_SERVER_1_API_KEY`, `LITELLM_SERVER_1_MODELS` (comma
/// separated), for N = 1, 2, ... in order.
pub fn upstream_seeds(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<UpstreamSeed>, ConfigError> {
    let vars: std::collections::HashMap<String, String> =
        env.into_iter().filter(|(k, _)| k.starts_with("LITELLM_SERVER_")).collect();
    let mut numbers: Vec<u32> = vars
        .keys()
        .filter_map(|k| k.strip_prefix("LITELLM_SERVER_")?.strip_suffix("_URL")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut seeds = Vec::new();
    for n in numbers {
        let url = vars[&format!("LITELLM_SERVER_{n}_URL")].trim().to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err(ConfigError::key(
                &format!("LITELLM_SERVER_{n}_URL"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        // `_KEY` is the original product's name for it.
        let api_key = [format!("LITELLM_SERVER_{n}_API_KEY"), format!("LITELLM_SERVER_{n}_KEY")]
            .iter()
            .find_map(|name| vars.get(name).filter(|k| !k.is_empty()))
            .cloned();
        let models = vars
            .get(&format!("LITELLM_SERVER_{n}_MODELS"))
            .map(|m| {
                m.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default();
        seeds.push(UpstreamSeed { url, api_key, models });
    }
    Ok(seeds)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its own large error
mod tests {
    use super::*;
    use figment::Jail;

    fn load(jail: &Jail) -> Result<Config, ConfigError> {
        let _ = jail;
        Config::from_figment(&Config::figment(None)?, std::env::vars())
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        Jail::expect_with(|jail| {
            let c = load(jail).map_err(|e| e.to_string())?;
            assert_eq!(c.server.bind, "127.0.0.1:3000");
            assert_eq!(c.database.sqlite_path(), Some(PathBuf::from("bluesminds.db")));
            assert!(c.redis.url.is_empty());
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_win_in_that_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "bluesminds.toml",
                "[server]\nbind = \"0.0.0.0:8080\"\nmax_in_flight = 10\n[log]\nformat = \"json\"\n",
            )?;
            jail.set_env("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "20");
            jail.set_env("BLUESMINDS_PUBLIC_URL", "https://gw.example.com");
            jail.set_env("LITELLM_SERVER_2_URL", "http://b:4000");
            jail.set_env("LITELLM_SERVER_1_URL", "http://a:4000");
            jail.set_env("LITELLM_SERVER_1_MODELS", "gpt-4, claude-3");
            jail.set_env("LITELLM_SERVER_1_API_KEY", "sk-up");
            let c = load(jail).map_err(|e| e.to_string())?;
            assert_eq!(c.server.bind, "0.0.0.0:8080");
            assert_eq!(c.server.max_in_flight, 20);
            assert_eq!(c.server.public_url, "https://gw.example.com");
            assert_eq!(c.log.format, "json");
            assert_eq!(c.upstreams.len(), 2);
            assert_eq!(c.upstreams[0].url, "http://a:4000");
            assert_eq!(c.upstreams[0].models, vec!["gpt-4", "claude-3"]);
            assert_eq!(c.upstreams[0].api_key.as_deref(), Some("sk-up"));
            assert_eq!(c.upstreams[1].url, "http://b:4000");
            assert!(!format!("{:?}", c.upstreams).contains("sk-up"));
            Ok(())
        });
    }

    #[test]
    fn the_original_products_environment_names_work() {
        Jail::expect_with(|jail| {
            jail.set_env("LITELLM_SERVER_1_URL", "http://a:4000");
            jail.set_env("LITELLM_SERVER_1_KEY", "sk-old-name");
            jail.set_env("ADMIN_EMAILS", " Boss@Example.com, ops@example.com ,");
            jail.set_env("DEFAULT_RATE_LIMIT_RPM", "5");
            jail.set_env("DEFAULT_RATE_LIMIT_TPM", "5000");
            jail.set_env("DEFAULT_QUOTA_DAILY", "700");
            jail.set_env("DEFAULT_QUOTA_MONTHLY", "9000");
            let c = load(jail).map_err(|e| e.to_string())?;
            assert_eq!(c.upstreams[0].api_key.as_deref(), Some("sk-old-name"));
            assert_eq!(c.auth.admin_emails, vec!["boss@example.com", "ops@example.com"]);
            let f = &c.billing.free_tier;
            assert_eq!(
                (f.rate_limit_rpm, f.rate_limit_tpm, f.quota_daily, f.quota_monthly),
                (Some(5), Some(5000), Some(700), Some(9000))
            );
            jail.set_env("DEFAULT_QUOTA_DAILY", "lots");
            let e = load(jail).expect_err("not a number").to_string();
            assert!(e.contains("quota_daily"), "{e}");
            Ok(())
        });
    }

    fn error_of(jail: &mut Jail, vars: &[(&str, &str)]) -> String {
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        load(jail).expect_err("must fail").to_string()
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "lots")], "server.max_in_flight"),
            (&[("BLUESMINDS_BIND", "nowhere")], "server.bind"),
            (&[("BLUESMINDS_SERVER__NO_SUCH_KEY", "1")], "no_such_key"),
            (&[("DATABASE_URL", "mysql://x")], "database.url"),
            (&[("DATABASE_URL", "postgres://h/db")], "auth.jwt_secret"),
            (&[("JWT_SECRET", "short")], "auth.jwt_secret"),
            (&[("BLUESMINDS_EMAIL__VERIFY_SIGNUPS", "true")], "email.verify_signups"),
            (&[("SMTP_URL", "smtp://h:25")], "email.from"),
            (&[("SMTP_URL", "http://h"), ("EMAIL_FROM", "a@b.co")], "email.smtp_url"),
            (&[("LITELLM_SERVER_1_URL", "ftp://x")], "LITELLM_SERVER_1_URL"),
            (&[("BLUESMINDS_SERVER__MAX_BODY_BYTES", "0")], "server.max_body_bytes"),
            (&[("REDIS_URL", "memcached://h:1")], "redis.url"),
            (&[("REDIS_URL", "redis://a:1,memcached://b:2")], "redis.url"),
        ];
        for (vars, key) in cases {
            Jail::expect_with(|jail| {
                let msg = error_of(jail, vars);
                assert!(msg.contains(key), "{vars:?}: {msg:?} should name {key}");
                Ok(())
            });
        }
    }

    #[test]
    fn redis_may_be_one_server_or_a_cluster() {
        for url in [
            "redis://:pw@h:6379/1",
            "rediss://h:6380",
            "redis+cluster://:pw@a:7000,b:7001",
            "redis://a:7000,redis://b:7001",
        ] {
            Jail::expect_with(|jail| {
                jail.set_env("REDIS_URL", url);
                assert_eq!(load(jail).map_err(|e| e.to_string())?.redis.url, url);
                Ok(())
            });
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let auth = AuthConfig {
            jwt_secret: "j".repeat(40),
            api_key_secret: "k".repeat(40),
            ..AuthConfig::default()
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("jjjj") && !shown.contains("kkkk"), "{shown}");
    }
}
