//! The application: configuration plus every adapter, wired once at start and shared by all
//! requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gateway_auth::audit::AuditLog;
use gateway_auth::{Accounts, AccountsConfig, AuthStores, KeyVerifier, VerifierConfig};
use gateway_balancer::{
    BreakerConfig, HealthConfig, ServerAdmin, ServerPool, ServerStore, ServerStoreError,
};
use gateway_billing::payments::{Catalog, CreditPack, Payments};
use gateway_billing::{Billing, Plans, Prices};
use gateway_core::{HealthStatus, ServerId, SystemClock, UpstreamServer};
use gateway_mail::SmtpMailer;
use gateway_pipeline::trace::{Sampler, Tracer};
use gateway_pipeline::{Limiting, Pipeline, PipelineConfig, Ports};
use gateway_proxy::client::{ClientConfig, UpstreamClient};
use gateway_proxy::probe::HttpProber;
use gateway_proxy::request::{ForbiddenFields, RequestRules};
use gateway_ratelimit::ResilientLimiter;
use gateway_redis::bus::Bus;
use gateway_redis::{RedisConn, RedisFailures};
use gateway_store::{
    SqlAuditLog, SqlAuthStore, SqlBillingStore, SqlPaymentStore, SqlPlanStore, SqlPriceStore,
    SqlQuotaStore, SqlServerStore, SqlUsageStore, Store, StoreConfig,
};
use gateway_usage::{UsageQueries, UsageReader, UsageRecord, UsageSink, UsageWriter, WriterConfig};
use tokio::sync::Semaphore;

use crate::bus::CacheInvalidations;
use crate::config::Config;

/// Shared state of a running gateway.
pub struct App {
    pub config: Config,
    pub store: Store,
    /// The shared Redis connection, when Redis is configured.
    pub redis: Option<RedisConn>,
    /// The invalidation channel between instances, when Redis is configured.
    pub bus: Option<Bus>,
    pub accounts: Accounts,
    /// The append-only audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Authenticates API keys on every gateway request.
    pub verifier: Arc<KeyVerifier>,
    pub pool: Arc<ServerPool>,
    /// The admin rules of the pool (and its reload from the database).
    pub servers: ServerAdmin,
    pub prober: HttpProber,
    /// Tells caches here and on other instances what changed.
    pub invalidations: Arc<CacheInvalidations>,
    /// The gateway requests' use case: authenticate, reserve, forward, charge, record.
    pub pipeline: Arc<Pipeline>,
    /// Model prices in memory (reloaded with the pool).
    pub prices: Arc<Prices>,
    /// Plans in memory (reloaded with the pool).
    pub plans: Arc<Plans>,
    /// Credits, invoices, closing months.
    pub billing: Billing,
    /// Payments through Creem; `None` when `[billing.creem]` is not configured.
    pub payments: Option<Arc<Payments>>,
    /// Redemption codes.
    pub codes: Arc<dyn gateway_billing::codes::CodeStore>,
    /// The Redis limiter with its fallback, when limits are on and Redis is configured.
    pub resilient: Option<Arc<ResilientLimiter>>,
    /// The leases over it (admission without a Redis round trip per request), when on.
    pub leased: Option<Arc<gateway_ratelimit::LeasedLimiter>>,
    /// One usage record per gateway request, written off the hot path.
    pub usage: Arc<UsageWriter>,
    pub usage_reader: UsageReader,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One permit per request in flight (open streams included).
    pub in_flight: Arc<Semaphore>,
    /// The public URL is https: cookies are `Secure` and every response carries HSTS.
    pub behind_tls: bool,
    /// `scheme://host[:port]` of the public URL, for the CSRF `Origin` check.
    pub public_origin: String,
    /// The OTLP exporter of request traces, when `[traces]` names an endpoint.
    pub traces: Option<Arc<gateway_otlp::OtlpExporter>>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on, so load balancers stop
    /// sending requests here while the instance still serves them.
    pub draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Opens the database (and migrates it when told to).
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Store> {
    let store_config =
        StoreConfig { max_connections: config.database.max_connections, ..StoreConfig::default() };
    let store = Store::connect(&config.database.url, &store_config).await.with_context(|| {
        format!("cannot open the database ({})", redact_url(&config.database.url))
    })?;
    if migrate {
        store.migrate().await.context("database migration failed")?;
        store
            .ensure_usage_partitions(time::OffsetDateTime::now_utc())
            .await
            .context("cannot create usage_logs partitions")?;
    }
    Ok(store)
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = open_store(&config, config.database.migrate_on_start).await?;
        // One Redis connection for every Redis adapter (limiter, bus, readiness).
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            Some(RedisConn::open(&config.redis.url).with_context(|| {
                format!("invalid redis.url ({})", redact_url(&config.redis.url))
            })?)
        };
        let bus = redis.as_ref().map(|r| Bus::new(r.clone(), &config.redis.key_prefix));
        let auth_store = Arc::new(SqlAuthStore::new(store.clone()));
        let a = &config.auth;
        let verifier = KeyVerifier::new(
            auth_store.clone(),
            auth_store.clone(),
            a.api_key_secret.as_bytes(),
            Arc::new(SystemClock),
            VerifierConfig {
                ttl: Duration::from_millis(a.key_cache_ttl_ms),
                ttl_with_bus: Duration::from_millis(a.key_cache_bus_ttl_ms),
                negative_ttl: Duration::from_millis(a.key_cache_ttl_ms),
                bcrypt_cost: a.key_bcrypt_cost,
                stale_grace: Duration::from_secs(a.key_cache_grace_secs),
                ..VerifierConfig::default()
            },
        );
        let accounts_config = AccountsConfig {
            password_cost: a.bcrypt_cost,
            key_cost: a.key_bcrypt_cost,
            session_ttl: Duration::from_secs(a.session_ttl_secs),
            rotation_grace: Duration::from_secs(a.key_rotation_grace_secs),
            throttle: gateway_auth::throttle::ThrottleConfig {
                slow_after: a.login_slowdown_after,
                lock_after_per_email: a.login_lockout_after,
                lock_after_per_ip: a.login_lockout_after.saturating_mul(5),
                ..gateway_auth::throttle::ThrottleConfig::default()
            },
            verify_email: config.email.verify_signups,
            admin_emails: config.auth.admin_emails.clone(),
        };
        let invalidations =
            Arc::new(CacheInvalidations { verifier: verifier.clone(), bus: bus.clone() });
        let plans = Arc::new(Plans::new(Arc::new(SqlPlanStore::new(store.clone()))));
        let billing_store = Arc::new(SqlBillingStore::new(store.clone()));
        plans.reload().await.context("cannot load the plans")?;
        apply_free_tier(&plans, &config.billing.free_tier).await?;
        let throttle_window = accounts_config.throttle.window;
        let mut accounts =
            Accounts::new(AuthStores::from(auth_store), a.jwt_secret.as_bytes(), accounts_config)
                .with_invalidations(invalidations.clone())
                .with_plans(plans.clone());
        if !config.email.smtp_url.is_empty() {
            let mailer = SmtpMailer::new(&config.email.smtp_url, &config.email.from)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            accounts = accounts.with_mail(Arc::new(mailer), &config.server.public_url);
        }
        if let Some(redis) = &redis {
            // Failed logins counted across instances; each instance's own count while Redis
            // does not answer within the limiter's timeout.
            accounts = accounts.with_shared_failures(Arc::new(RedisFailures::new(
                redis.clone(),
                &config.redis.key_prefix,
                throttle_window,
                Duration::from_millis(config.limits.redis_timeout_ms),
            )));
        }
        promote_admins(&accounts, &config).await?;
        let pool = Arc::new(ServerPool::new(BreakerConfig {
            failure_threshold: config.health.failure_threshold,
            cooldown: Duration::from_secs(config.health.cooldown_secs),
            max_ejected_percent: config.health.max_ejected_percent,
        }));
        let server_store: Arc<dyn ServerStore> = Arc::new(SqlServerStore::new(store.clone()));
        seed_servers(server_store.as_ref(), &config).await?;
        let servers = ServerAdmin::new(server_store, pool.clone(), invalidations.clone());
        servers.reload().await.context("cannot load the upstream servers")?;
        let p = &config.proxy;
        let client = UpstreamClient::new(ClientConfig {
            connect_timeout: Duration::from_millis(p.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(p.first_byte_timeout_ms),
            request_timeout: Duration::from_millis(p.request_timeout_ms),
            stream_idle_timeout: Duration::from_millis(p.stream_idle_timeout_ms),
            pool_idle_timeout: Duration::from_millis(p.pool_idle_timeout_ms),
            ..ClientConfig::default()
        });
        let prober =
            HttpProber::new(client.clone(), Duration::from_millis(config.health.timeout_ms));
        let defaults = ForbiddenFields::default();
        let rules = RequestRules {
            forbidden: ForbiddenFields {
                names: p.forbidden_fields.clone().unwrap_or(defaults.names),
                prefixes: p.forbidden_prefixes.clone().unwrap_or(defaults.prefixes),
            },
            max_json_depth: p.max_json_depth,
            ..RequestRules::default()
        };
        let limiter = crate::limits::build(
            &config,
            redis.as_ref(),
            Arc::new(SqlQuotaStore::new(store.clone())),
        );
        let usage_store = Arc::new(
            SqlUsageStore::new(store.clone())
                .with_rollup_interval(Duration::from_millis(config.usage.rollup_interval_ms)),
        );
        let usage_queries: Arc<dyn UsageQueries> = usage_store.clone();
        let usage = Arc::new(
            UsageWriter::start(
                usage_store,
                WriterConfig {
                    capacity: config.usage.queue_capacity,
                    batch_size: config.usage.batch_size,
                    flush_every: Duration::from_millis(config.usage.flush_interval_ms),
                    journal: config.usage.journal,
                    ..WriterConfig::new(config.usage_spill_path())
                },
            )
            .context("cannot start the usage writer")?,
        );
        let prices = Arc::new(Prices::new(
            Arc::new(SqlPriceStore::new(store.clone())),
            config.billing.default_price(),
        ));
        prices.reload().await.context("cannot load the model prices")?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let resilient = limiter.as_ref().and_then(|l| l.resilient.clone());
        let leased = limiter.as_ref().and_then(|l| l.leased.clone());
        let traces = traces_exporter(&config)?;
        let pipeline = Pipeline::new(
            Ports {
                keys: verifier.clone(),
                pool: pool.clone(),
                upstream: Arc::new(client),
                limits: limiter
                    .map(|l| Limiting::new(l.limiter, config.limits.default_completion_tokens)),
                usage: Arc::new(RecordedUsage {
                    metrics: metrics.clone(),
                    pool: pool.clone(),
                    writer: config.usage.enabled.then(|| usage.clone()),
                }),
                prices: prices.clone(),
                plans: plans.clone(),
            },
            PipelineConfig { rules, max_attempts: p.max_attempts },
        );
        let pipeline = Arc::new(match &traces {
            Some(exporter) => {
                let (parent_based, ratio) = config.traces.sampling();
                pipeline.with_tracer(Tracer::new(exporter.clone(), Sampler { parent_based, ratio }))
            }
            None => pipeline,
        });
        let billing = Billing::new(
            plans.clone(),
            billing_store.clone(),
            billing_store,
            time::Duration::days(i64::from(config.billing.grace_days)),
        );
        let payments = payments_of(&config, &store, &plans);
        let codes = Arc::new(gateway_store::SqlCodeStore::new(store.clone()));
        let in_flight = Arc::new(Semaphore::new(config.server.max_in_flight));
        let public_origin = origin_of(&config.server.public_url);
        let behind_tls = public_origin.starts_with("https://");
        let audit: Arc<dyn AuditLog> = Arc::new(SqlAuditLog::new(store.clone()));
        Ok(App {
            config,
            store,
            redis,
            bus,
            accounts,
            audit,
            verifier,
            pool,
            servers,
            prober,
            invalidations,
            pipeline,
            prices,
            billing,
            payments,
            codes,
            draining: std::sync::atomic::AtomicBool::new(false),
            traces,
            plans,
            resilient,
            leased,
            usage,
            usage_reader: UsageReader::new(usage_queries),
            metrics,
            in_flight,
            behind_tls,
            public_origin,
        })
    }
}

/// Where the pipeline hands each request's usage: counted in the metrics, then written
/// (unless usage recording is off).
struct RecordedUsage {
    metrics: Arc<crate::metrics::Metrics>,
    pool: Arc<ServerPool>,
    writer: Option<Arc<UsageWriter>>,
}

impl UsageSink for RecordedUsage {
    fn record(&self, record: UsageRecord) {
        self.metrics.observe(&record, &self.pool);
        if let Some(writer) = &self.writer {
            writer.record(record);
        }
    }
}

impl App {
    /// Reloads the pool from the database (after an admin change, here or on another
    /// instance). Servers that stay keep their runtime state.
    pub async fn reload_pool(&self) -> Result<(), ServerStoreError> {
        self.servers.reload().await
    }

    /// Reloads the plans and the model prices; a failure keeps those known (and is logged).
    pub async fn reload_billing(&self) {
        if let Err(e) = self.plans.reload().await {
            tracing::warn!(error = %e, "could not reload the plans; keeping those known");
        }
        if let Err(e) = self.prices.reload().await {
            tracing::warn!(error = %e, "could not reload the model prices; keeping those known");
        }
    }

    /// The active health checks' settings.
    pub fn health_config(&self) -> HealthConfig {
        HealthConfig {
            degraded_latency: Duration::from_millis(self.config.health.degraded_latency_ms),
        }
    }
}

/// Adds the servers given as `LITELLM_SERVER_N_*` to the database unless a server with the
/// same base URL is there already (an admin may have changed it since).
/// `billing.free_tier` (`DEFAULT_RATE_LIMIT_*`, `DEFAULT_QUOTA_*`) written to the free plan.
async fn apply_free_tier(
    plans: &Plans,
    limits: &crate::config::FreeTierLimits,
) -> anyhow::Result<()> {
    if !limits.is_set() {
        return Ok(());
    }
    let update = gateway_billing::PlanUpdate {
        rate_limit_rpm: limits.rate_limit_rpm,
        rate_limit_tpm: limits.rate_limit_tpm,
        quota_daily: limits.quota_daily,
        quota_monthly: limits.quota_monthly,
        ..Default::default()
    };
    let plan = plans.update(gateway_core::Tier::Free, &update).await.map_err(|e| match e {
        gateway_billing::UpdatePlanError::Invalid(e) => {
            anyhow::anyhow!("billing.free_tier (DEFAULT_RATE_LIMIT_*, DEFAULT_QUOTA_*): {e}")
        }
        gateway_billing::UpdatePlanError::Store(e) => {
            anyhow::Error::new(e).context("cannot save the free plan's limits")
        }
    })?;
    let l = plan.limits;
    tracing::info!(
        rpm = l.rpm,
        tpm = l.tpm,
        daily_tokens = l.daily_tokens,
        monthly_tokens = l.monthly_tokens,
        "the free plan's limits are set by the configuration"
    );
    Ok(())
}

/// `auth.admin_emails` (`ADMIN_EMAILS`): existing accounts made administrators.
async fn promote_admins(accounts: &Accounts, config: &Config) -> anyhow::Result<()> {
    if config.auth.admin_emails.is_empty() {
        return Ok(());
    }
    if !config.email.verify_signups {
        tracing::warn!(
            "auth.admin_emails (ADMIN_EMAILS): whoever signs up with one of these emails becomes an administrator, and without email.verify_signups nobody has to prove the address is theirs; create admins with `bluesminds admin create` instead, or turn verification on"
        );
    }
    for email in accounts.promote_admins().await.context("cannot promote auth.admin_emails")? {
        tracing::info!(email = %email, "made an administrator by auth.admin_emails");
    }
    Ok(())
}

async fn seed_servers(store: &dyn ServerStore, config: &Config) -> anyhow::Result<()> {
    let existing: Vec<String> = store
        .list_servers()
        .await
        .context("cannot load the upstream servers")?
        .into_iter()
        .map(|s| s.base_url)
        .collect();
    for server in seeded_servers(config) {
        if existing.contains(&server.base_url) {
            continue;
        }
        match store.insert_server(server).await {
            // Another instance seeded it at the same moment.
            Ok(()) | Err(ServerStoreError::Conflict) => {}
            Err(e) => return Err(anyhow::Error::new(e).context("cannot seed the upstream servers")),
        }
    }
    Ok(())
}

/// The servers given as `LITELLM_SERVER_N_*`, in order (priority 1, weight 1).
fn seeded_servers(config: &Config) -> Vec<UpstreamServer> {
    config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, seed)| UpstreamServer {
            id: ServerId::new(),
            name: format!("env-{}", i + 1),
            base_url: seed.url.clone(),
            api_key: seed.api_key.clone(),
            priority: 1,
            weight: 1,
            max_concurrent_requests: None,
            supported_models: seed.models.clone(),
            is_active: true,
            health: HealthStatus::Unknown,
        })
        .collect()
}

/// `scheme://host[:port]` of a URL (what browsers send as `Origin`).
pub fn origin_of(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let host_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    url[..host_end].to_ascii_lowercase()
}

/// A URL with its password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') && !url.contains("+cluster://") {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The exporter of request traces, when `[traces]` names an endpoint.
fn traces_exporter(config: &Config) -> anyhow::Result<Option<Arc<gateway_otlp::OtlpExporter>>> {
    let t = &config.traces;
    if !t.enabled() {
        return Ok(None);
    }
    let mut resource = vec![
        ("service.name".to_owned(), t.service_name.clone()),
        ("service.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("service.instance.id".to_owned(), gateway_core::RequestId::new().to_string()),
        ("telemetry.sdk.name".to_owned(), "bluesminds".to_owned()),
        ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
    ];
    for (k, v) in &t.resource_attributes {
        match resource.iter_mut().find(|(key, _)| key == k) {
            Some(existing) => existing.1.clone_from(v),
            None => resource.push((k.clone(), v.clone())),
        }
    }
    let exporter = gateway_otlp::OtlpExporter::start(gateway_otlp::OtlpConfig {
        endpoint: t.traces_url(),
        headers: t.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        origin: gateway_otlp::Origin {
            resource,
            scope_name: "bluesminds".into(),
            scope_version: env!("CARGO_PKG_VERSION").into(),
        },
        timeout: Duration::from_millis(t.timeout_ms),
        queue_capacity: t.queue_capacity,
        batch_size: t.batch_size,
        flush_interval: Duration::from_millis(t.flush_interval_ms),
    })
    .context("invalid [traces] settings")?;
    let (parent_based, ratio) = t.sampling();
    tracing::info!(
        endpoint = %redact_url(&t.traces_url()),
        sampler = %t.sampler,
        ratio,
        parent_based,
        "tracing: exporting request spans over OTLP/HTTP"
    );
    Ok(Some(Arc::new(exporter)))
}

/// The payments service when `[billing.creem]` has its secrets.
fn payments_of(config: &Config, store: &Store, plans: &Arc<Plans>) -> Option<Arc<Payments>> {
    let c = &config.billing.creem;
    if !c.enabled() {
        return None;
    }
    let catalog = Catalog {
        tiers: c
            .products
            .iter()
            .filter_map(|(tier, product)| Some((tier.parse().ok()?, product.clone())))
            .collect(),
        packs: c
            .credit_packs
            .iter()
            .map(|(name, p)| CreditPack {
                name: name.clone(),
                product_id: p.product_id.clone(),
                price_micros: p.price_micros,
                credits_micros: p.credits_micros,
            })
            .collect(),
        invoice_product: (!c.invoice_product_id.is_empty()).then(|| c.invoice_product_id.clone()),
        currency: c.currency.clone(),
    };
    let success_url = if c.success_url.is_empty() {
        format!("{}/", config.server.public_url.trim_end_matches('/'))
    } else {
        c.success_url.clone()
    };
    let provider = gateway_creem::CreemClient::new(&c.api_url, &c.api_key, Duration::from_secs(10));
    Some(Arc::new(Payments::new(
        Arc::new(provider),
        Arc::new(SqlPaymentStore::new(store.clone())),
        plans.clone(),
        catalog,
        c.webhook_secret.as_bytes(),
        &success_url,
    )))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn origins_keep_scheme_host_and_port_only() {
        assert_eq!(super::origin_of("https://GW.example.com/app/"), "https://gw.example.com");
        assert_eq!(super::origin_of("http://localhost:3000"), "http://localhost:3000");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact_url("redis://:pw@a:1,redis://:pw@b:2"),
            "redis://:***@a:1,redis://:***@b:2"
        );
        assert_eq!(redact_url("redis+cluster://u:pw@a:1,b:2"), "redis+cluster://u:***@a:1,b:2");
        assert_eq!(redact_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}
