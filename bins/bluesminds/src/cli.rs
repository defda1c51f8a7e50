//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// BluesMinds: a self-hosted, multi-tenant, OpenAI-compatible AI gateway.
#[derive(Debug, Parser)]
#[command(name = "bluesminds", version, about)]
pub struct Cli {
    /// Configuration file (default: ./bluesminds.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gateway (the default).
    Serve {
        /// Do not run pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and create the current usage partitions.
    Migrate,
    /// Administer accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage model prices.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Credits and invoices.
    Billing {
        #[command(subcommand)]
        command: BillingCommand,
    },
    /// Usage records and their daily rollup.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// Run the gateway with an in-process mock upstream, a demo user and an API key.
    Demo,
    /// GET an http:// URL and exit 0 on a 2xx answer within two seconds, 1 otherwise: the
    /// container health check (the image carries no HTTP client), e.g.
    /// `bluesminds probe http://127.0.0.1:3000/api/health/ready`. Reads no configuration.
    Probe {
        /// `http://host:port/path`
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Recompute the daily rollup (which statistics, dashboards and invoices read) from the
    /// usage records, in one transaction; usage writers wait meanwhile. For after a restore
    /// of usage_logs, or rows written by an instance too old to keep the rollup.
    RebuildRollup,
    /// Drop the raw usage records that have outlived their plan's retention: whole monthly
    /// partitions of a retention class on Postgres, rows on SQLite. The daily rollup and the
    /// invoices keep the totals. Serving gateways do it every six hours; a second run drops
    /// nothing.
    DropExpired,
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Recompute every user's credit balance from the ledger; exits non-zero on any
    /// difference.
    Verify,
    /// Close a month: invoice every user with a plan fee or overage (numbered
    /// INV-YYYYMM-NNNN), apply credits. Run twice, it changes nothing.
    ClosePeriod {
        /// `YYYY-MM`; default the previous month.
        #[arg(long)]
        period: Option<String>,
        /// Close a month that has not ended (its later usage is then never billed).
        #[arg(long)]
        force: bool,
    },
    /// Print a user's invoice for a month recomputed from the usage records, next to the
    /// stored one; exits non-zero when they differ.
    Invoice {
        #[arg(long)]
        user: String,
        /// `YYYY-MM`.
        #[arg(long)]
        period: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Load LiteLLM's model_prices_and_context_window.json (it ships in the litellm Python
    /// package); every price that is new or changed applies from now, older requests keep
    /// theirs. Running gateways pick the prices up within `health.interval_secs`.
    Import {
        /// The JSON file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin user, or promote an existing user and set their password.
    Create {
        #[arg(long)]
        email: String,
        /// The password; read from standard input when omitted.
        #[arg(long)]
        password: Option<String>,
    },
}
