//! `bluesminds-streams`: the streaming half of `just bench`. Load generators such as `oha`
//! time whole responses; this tool times the first chunk of a server-sent-event stream, and
//! holds many streams open at once so the gateway's memory can be read meanwhile.
//!
//! ```text
//! bluesminds-streams ttft --addr 127.0.0.1:3401 --key KEY --n 300 --body '{...}'
//! bluesminds-streams hold --addr 127.0.0.1:3401 --key KEY --n 1000 --body '{...}'
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(name = "bluesminds-streams", version)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Streams one after another on one connection; prints time-to-first-chunk and total time
    /// percentiles in microseconds, as JSON.
    Ttft {
        #[command(flatten)]
        target: Target,
        /// Streams to time (after 10% as many to warm up).
        #[arg(long, default_value_t = 300)]
        n: usize,
    },
    /// Opens `n` streams at once, each on its own connection; prints `holding N` once every
    /// one has sent its first chunk, then keeps them open until a line (or EOF) on stdin.
    Hold {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Bearer key; none for a direct run against the mock.
    #[arg(long)]
    key: Option<String>,
    /// The JSON request body.
    #[arg(long)]
    body: String,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(t: &Target) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post(&t.path)
        .header("host", t.addr.to_string())
        .header("content-type", "application/json");
    if let Some(key) = &t.key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    req.body(Full::new(Bytes::from(t.body.clone()))).unwrap_or_default()
}

/// Sends one streaming request; returns the time to its first body bytes and to its end.
async fn stream_once(
    sender: &mut Sender,
    t: &Target,
    on_first: impl FnOnce(),
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    sender.ready().await?;
    let started = Instant::now();
    let res = sender.send_request(request(t)).await?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()).into());
    }
    let mut body = res.into_body();
    let mut first = None;
    let mut on_first = Some(on_first);
    while let Some(frame) = body.frame().await {
        if frame?.data_ref().is_some_and(|d| !d.is_empty()) && first.is_none() {
            first = Some(started.elapsed());
            if let Some(f) = on_first.take() {
                f();
            }
        }
    }
    Ok((first.ok_or("a stream without data")?, started.elapsed()))
}

fn pct(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[allow(clippy::print_stdout)]
async fn ttft(t: Target, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut sender = connect(t.addr).await?;
    for _ in 0..n.div_ceil(10) {
        stream_once(&mut sender, &t, || {}).await?;
    }
    let (mut firsts, mut totals) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (first, total) = stream_once(&mut sender, &t, || {}).await?;
        firsts.push(first.as_micros());
        totals.push(total.as_micros());
    }
    firsts.sort_unstable();
    totals.sort_unstable();
    println!(
        "{{\"n\":{n},\"ttft_p50_us\":{},\"ttft_p99_us\":{},\"total_p50_us\":{},\"total_p99_us\":{}}}",
        pct(&firsts, 0.5),
        pct(&firsts, 0.99),
        pct(&totals, 0.5),
        pct(&totals, 0.99)
    );
    Ok(())
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn hold(t: Target, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let t = Arc::new(t);
    let open = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(tokio::sync::Notify::new());
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (t, open, all_open) = (t.clone(), open.clone(), all_open.clone());
        streams.spawn(async move {
            let mut sender = match connect(t.addr).await {
                Ok(s) => s,
                Err(e) => return eprintln!("bluesminds-streams: connect: {e}"),
            };
            let opened = || {
                if open.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    all_open.notify_one();
                }
            };
            if let Err(e) = stream_once(&mut sender, &t, opened).await {
                eprintln!("bluesminds-streams: stream: {e}");
            }
        });
    }
    tokio::select! {
        () = all_open.notified() => {}
        () = tokio::time::sleep(Duration::from_mins(2)) => {
            return Err(format!("only {} of {n} streams opened", open.load(Ordering::SeqCst)).into());
        }
    }
    println!("holding {n}");
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    streams.abort_all();
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Mode::Ttft { target, n } => ttft(target, n).await,
        Mode::Hold { target, n } => hold(target, n).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("bluesminds-streams: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
