//! `bluesminds`: parse the command line and configuration, then run the chosen command.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bluesminds::cli::{AdminCommand, Cli, Command, PricesCommand};
use bluesminds::config::Config;
use clap::Parser;

/// EX_USAGE: bad command line or configuration.
const EXIT_USAGE: u8 = 64;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Demo => {
                Box::pin(bluesminds::demo::run(config, bluesminds::shutdown_signal())).await
            }
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
