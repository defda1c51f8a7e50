//! `bluesminds`: parse the command line and configuration, then run the chosen command.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bluesminds::cli::{AdminCommand, BillingCommand, Cli, Command, PricesCommand, UsageCommand};
use bluesminds::config::Config;
use clap::Parser;

/// EX_USAGE: bad command line or configuration.
const EXIT_USAGE: u8 = 64;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { url }) = &cli.command {
        return probe(url);
    }
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bluesminds: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    bluesminds::telemetry::init(&config.log);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        rt.worker_threads(config.server.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluesminds: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve { no_migrate: false });
    let result = rt.block_on(async move {
        if config.database.is_sqlite() {
            bluesminds::secrets::ensure_embedded_secrets(&mut config)?;
        }
        match command {
            Command::Serve { no_migrate } => serve(config, no_migrate).await,
            Command::Migrate => migrate(&config).await,
            Command::Admin { command: AdminCommand::Create { email, password } } => {
                admin_create(&config, &email, password).await
            }
            Command::Prices { command: PricesCommand::Import { file } } => {
                prices_import(&config, &file).await
            }
            Command::Billing { command } => billing(&config, command).await,
            Command::Usage { command: UsageCommand::RebuildRollup } => {
                rebuild_rollup(&config).await
            }
            Command::Usage { command: UsageCommand::DropExpired } => drop_expired(&config).await,
            Command::Demo => {
                Box::pin(bluesminds::demo::run(config, bluesminds::shutdown_signal())).await
            }
            Command::Probe { .. } => Ok(()), // answered before the configuration is read
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bluesminds: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bluesminds probe URL`: one HTTP/1.0 GET on a current-thread runtime.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn probe(url: &str) -> ExitCode {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let run = async {
        let rest = url.strip_prefix("http://").context("the probe takes an http:// URL")?;
        let (host, path) =
            rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
        let mut head = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut head).await?;
        let status_line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
        anyhow::Ok(status_line)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let answer = rt.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(2), run).await })
            .map_err(|_| anyhow::anyhow!("no answer within 2 s"))?
    });
    match answer {
        Ok(status) if status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("bluesminds probe: {url}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bluesminds probe: {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn serve(mut config: Config, no_migrate: bool) -> anyhow::Result<()> {
    if no_migrate {
        config.database.migrate_on_start = false;
    }
    let bind = config.server.bind.clone();
    let app = Arc::new(bluesminds::App::build(config).await?);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("bluesminds listening on http://{addr}");
    bluesminds::run(listener, app, bluesminds::shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = bluesminds::app::open_store(config, false).await?;
    let pending = store.pending_migrations().await?;
    store.migrate().await.context("database migration failed")?;
    let partitions = store.ensure_usage_partitions(time::OffsetDateTime::now_utc()).await?;
    println!("applied {pending} pending migration(s); the database is up to date");
    if !partitions.is_empty() {
        println!("usage_logs partitions in place: {}", partitions.join(", "));
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn admin_create(
    config: &Config,
    email: &str,
    password: Option<String>,
) -> anyhow::Result<()> {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let store = bluesminds::app::open_store(config, config.database.migrate_on_start).await?;
    let auth = Arc::new(gateway_store::SqlAuthStore::new(store));
    let accounts_config = gateway_auth::AccountsConfig {
        password_cost: config.auth.bcrypt_cost,
        ..gateway_auth::AccountsConfig::default()
    };
    let accounts = gateway_auth::Accounts::new(
        gateway_auth::AuthStores::from(auth),
        config.auth.jwt_secret.as_bytes(),
        accounts_config,
    );
    match accounts.create_or_promote_admin(email, &password).await {
        Ok(user) => {
            println!("admin {} is ready (id {})", user.email, user.id);
            Ok(())
        }
        Err(gateway_auth::AuthError::Invalid { field, message }) => {
            anyhow::bail!("invalid {field}: {message}")
        }
        Err(e) => Err(e).context("cannot create the admin"),
    }
}

/// The billing services on the configured database, for the CLI.
async fn billing_services(
    config: &Config,
) -> anyhow::Result<(gateway_billing::Billing, gateway_store::Store)> {
    let store = bluesminds::app::open_store(config, config.database.migrate_on_start).await?;
    let plans = Arc::new(gateway_billing::Plans::new(Arc::new(gateway_store::SqlPlanStore::new(
        store.clone(),
    ))));
    plans.reload().await.context("cannot load the plans")?;
    let billing_store = Arc::new(gateway_store::SqlBillingStore::new(store.clone()));
    let grace = time::Duration::days(i64::from(config.billing.grace_days));
    Ok((gateway_billing::Billing::new(plans, billing_store.clone(), billing_store, grace), store))
}

#[allow(clippy::print_stdout)]
async fn billing(config: &Config, command: BillingCommand) -> anyhow::Result<()> {
    use gateway_billing::invoice::BillingPeriod;
    let (billing, store) = billing_services(config).await?;
    let now = time::OffsetDateTime::now_utc();
    match command {
        BillingCommand::Verify => {
            let mismatches = billing.ledger().verify().await.context("cannot read the ledger")?;
            if mismatches.is_empty() {
                println!("every credit balance equals the sum of its ledger entries");
                return Ok(());
            }
            for m in &mismatches {
                println!(
                    "user {}: stored balance {} micro-dollars, ledger sum {}",
                    m.user_id, m.stored_micros, m.ledger_micros
                );
            }
            anyhow::bail!("{} balance(s) differ from their ledgers", mismatches.len())
        }
        BillingCommand::ClosePeriod { period, force } => {
            let period = match period {
                Some(p) => BillingPeriod::parse(&p)?,
                None => BillingPeriod::containing(now).previous(),
            };
            let r = billing.close_period(period, force, now).await?;
            println!(
                "period {period} closed: {} invoice(s) created ({} paid by credits, {} micro-dollars left open), {} user(s) invoiced before",
                r.created, r.paid_by_credits, r.open_micros, r.already_invoiced
            );
            Ok(())
        }
        BillingCommand::Invoice { user, period } => {
            let period = BillingPeriod::parse(&period)?;
            let auth = gateway_store::SqlAuthStore::new(store);
            let email = gateway_auth::normalize_email(&user).map_err(|e| anyhow::anyhow!("{e}"))?;
            let record = gateway_auth::UserStore::find_user_by_email(&auth, &email)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read users: {e}"))?
                .ok_or_else(|| anyhow::anyhow!("no user {email}"))?;
            let Some((stored, recomputed)) = billing.recompute(record.user.id, period).await?
            else {
                anyhow::bail!("{email} has no invoice for {period}");
            };
            println!("{}", serde_json::to_string_pretty(&recomputed)?);
            if stored != recomputed {
                println!("stored:\n{}", serde_json::to_string_pretty(&stored)?);
                anyhow::bail!(
                    "invoice {} differs from its recomputation from usage_logs",
                    stored.number
                );
            }
            println!("invoice {} equals its recomputation from usage_logs", stored.number);
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout)]
async fn drop_expired(config: &Config) -> anyhow::Result<()> {
    let store = bluesminds::app::open_store(config, config.database.migrate_on_start).await?;
    let dropped = store
        .drop_expired_usage(time::OffsetDateTime::now_utc())
        .await
        .context("cannot drop expired usage records")?;
    if dropped.is_empty() {
        println!("no usage records have outlived their retention");
    } else {
        println!("dropped (past their plan's retention): {}", dropped.join(", "));
    }
    Ok(())
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // a CLI command's progress and outcome
async fn rebuild_rollup(config: &Config) -> anyhow::Result<()> {
    let store = bluesminds::app::open_store(config, config.database.migrate_on_start).await?;
    eprintln!(
        "recomputing the daily usage rollup from usage_logs (usage writers wait meanwhile)..."
    );
    let started = std::time::Instant::now();
    let rows = store.rebuild_usage_rollup().await.context("cannot rebuild the usage rollup")?;
    println!("usage rollup rebuilt: {rows} rows, in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn prices_import(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = gateway_billing::litellm::parse(&bytes)
        .with_context(|| format!("cannot import {}", file.display()))?;
    let store = bluesminds::app::open_store(config, config.database.migrate_on_start).await?;
    let prices = gateway_billing::Prices::new(
        Arc::new(gateway_store::SqlPriceStore::new(store)),
        config.billing.default_price(),
    );
    let report = prices
        .import(&parsed.prices, time::OffsetDateTime::now_utc())
        .await
        .context("cannot store the prices")?;
    println!(
        "{} model prices read from {}: {} new or changed (applying from now), {} unchanged; entries without chat prices skipped: {}",
        parsed.prices.len(),
        file.display(),
        report.added,
        report.unchanged,
        parsed.skipped
    );
    Ok(())
}
