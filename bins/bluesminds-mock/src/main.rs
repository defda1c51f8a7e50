//! `bluesminds-mock`: the mock upstream as a process.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// A fast, deterministic OpenAI-compatible mock upstream.
#[derive(Debug, Parser)]
#[command(name = "bluesminds-mock", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// Delay before each response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between SSE chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Fraction (0..=1) of chat and embedding requests answered with a 500, evenly spread.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluesminds-mock: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&args.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bluesminds-mock: cannot listen on {}: {e}", args.addr);
                return std::process::ExitCode::from(69);
            }
        };
        if let Ok(addr) = listener.local_addr() {
            println!("bluesminds-mock listening on http://{addr}");
        }
        let config = bluesminds_mock::MockConfig {
            latency: Duration::from_millis(args.latency_ms),
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            fail_rate: args.fail_rate,
            ..Default::default()
        };
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                () = shutdown => {},
                _ = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {},
            }
        };
        bluesminds_mock::run(listener, config, Arc::default(), shutdown).await;
        std::process::ExitCode::SUCCESS
    })
}
