//! The BluesMinds gateway server: a thin raw-hyper binary that wires the domain crates.
//!
//! [`run`] takes its listener and shutdown future as arguments, so tests start the server on
//! `127.0.0.1:0` in-process or through the binary, and stop it when they choose.

pub mod app;
mod audit;
mod bus;
pub mod cli;
pub mod config;
pub mod demo;
mod errors;
mod handlers;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod router;
pub mod secrets;
pub mod server;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use app::App;
pub use config::Config;

/// How often the monthly partitions of `usage_logs` are checked (creation is idempotent).
const PARTITION_CHECK_EVERY: Duration = Duration::from_hours(6);

/// Serves the gateway on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut background = tokio::task::JoinSet::new();
    background.spawn(partition_maintenance(app.store.clone()));
    background.spawn(flush_key_use(app.verifier.clone()));
    background.spawn(health_checks(app.clone()));
    if app.config.billing.close_periods {
        background.spawn(close_periods(app.clone()));
    }
    if app.payments.is_some() {
        background.spawn(end_subscriptions(app.clone()));
    }
    if let Some(resilient) = app.resilient.clone() {
        let every = Duration::from_millis(app.config.limits.mirror_interval_ms);
        background.spawn(mirror_quotas(resilient, every));
    }
    if let Some(leased) = app.leased.clone() {
        background.spawn(limits::expire_leases(leased));
    }
    if let Some(bus) = app.bus.clone() {
        let for_reload = Arc::downgrade(&app);
        let servers: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(app) = for_reload.upgrade() {
                tokio::spawn(async move {
                    if let Err(e) = app.reload_pool().await {
                        tracing::warn!(error = %e, "could not reload the server pool");
                    }
                });
            }
        });
        let for_reload = Arc::downgrade(&app);
        let billing: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(app) = for_reload.upgrade() {
                tokio::spawn(async move { app.reload_billing().await });
            }
        });
        background.spawn(bus::listen(bus, app.verifier.clone(), bus::Reloads { servers, billing }));
    }
    let draining = app.clone();
    let shutdown = async move {
        shutdown.await;
        draining.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        let delay = Duration::from_millis(draining.config.server.shutdown_delay_ms);
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutting down: reporting not ready, still serving"
            );
            tokio::time::sleep(delay).await;
        }
    };
    server::serve(listener, app.clone(), shutdown).await;
    if let Some(limits) = app.pipeline.limits() {
        limits.drain(SETTLE_DEADLINE).await;
    }
    if let Some(leased) = &app.leased {
        // Every request has settled: what the leases hold unused goes back to the others.
        if let Err(e) = leased.release_all().await {
            tracing::warn!(error = %e, "could not give back the rate-limit leases at shutdown");
        }
    }
    if let Some(resilient) = &app.resilient {
        limits::flush_mirror(resilient).await;
    }
    // Every connection is finished or cut by now, so every request has left its record.
    app.usage.shutdown().await;
    let s = app.usage.stats();
    tracing::info!(
        written = s.written.load(std::sync::atomic::Ordering::Relaxed),
        spilled = s.spilled.load(std::sync::atomic::Ordering::Relaxed),
        quarantined = s.quarantined.load(std::sync::atomic::Ordering::Relaxed),
        dropped = s.dropped.load(std::sync::atomic::Ordering::Relaxed),
        "usage flushed"
    );
    if let Some(traces) = &app.traces {
        // Every request has ended, so every trace has been handed over.
        traces.shutdown(TRACES_DEADLINE).await;
        let s = traces.stats();
        tracing::info!(
            exported = s.exported.load(std::sync::atomic::Ordering::Relaxed),
            dropped = s.dropped.load(std::sync::atomic::Ordering::Relaxed),
            failed = s.failed.load(std::sync::atomic::Ordering::Relaxed),
            "trace spans flushed"
        );
    }
    background.shutdown().await;
    if let Err(e) = app.verifier.flush_last_used().await {
        tracing::warn!(error = %e, "could not record the last use of API keys at shutdown");
    }
}

/// Checks every upstream server now and then (and reloads the pool, the plans and the prices,
/// so changes made on another instance arrive even without Redis).
async fn health_checks(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(app.config.health.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.reload_pool().await {
            tracing::warn!(error = %e, "could not reload the server pool; checking the servers known");
        }
        app.reload_billing().await;
        app.servers.check(&app.prober, &app.health_config()).await;
    }
}

/// Closes the previous month once it has ended: at start (a month missed while no instance
/// ran) and on the first of each month (UTC). Every instance tries; the database lock lets
/// one close it, and the others find it closed.
async fn close_periods(app: Arc<App>) {
    use gateway_billing::invoice::BillingPeriod;
    let mut closed = None;
    loop {
        let now = time::OffsetDateTime::now_utc();
        let previous = BillingPeriod::containing(now).previous();
        let mut wait = Duration::from_hours(1);
        if closed != Some(previous) {
            match app.billing.close_period(previous, false, now).await {
                Ok(report) => {
                    if report.created > 0 {
                        tracing::info!(
                            period = %previous, invoices = report.created,
                            paid_by_credits = report.paid_by_credits, open_micros = report.open_micros,
                            "billing period closed"
                        );
                    }
                    for user in &report.open_users {
                        gateway_auth::Invalidations::user_changed(
                            app.invalidations.as_ref(),
                            *user,
                        );
                    }
                    closed = Some(previous);
                }
                Err(e) => {
                    tracing::error!(period = %previous, error = %gateway_core::error_chain(&e), "could not close the billing period; retrying in five minutes");
                    wait = Duration::from_mins(5);
                }
            }
        }
        // Wake a minute after the month turns, or sooner.
        let next = BillingPeriod::containing(now).ends_at() + time::Duration::minutes(1);
        let until_next = Duration::try_from(next - now).unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait.min(until_next)).await;
    }
}

/// Moves accounts whose canceled subscription reached the end of its paid period back to
/// free, once a minute, and tells the key caches.
async fn end_subscriptions(app: Arc<App>) {
    let Some(payments) = app.payments.clone() else { return };
    let mut tick = tokio::time::interval(Duration::from_mins(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match payments.end_due_subscriptions(time::OffsetDateTime::now_utc()).await {
            Ok(ended) => {
                for user in ended {
                    tracing::info!(user = %user, "subscription ended: back to the free plan");
                    gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user);
                }
            }
            Err(e) => {
                tracing::warn!(error = %gateway_core::error_chain(&e), "could not end the subscriptions due");
            }
        }
    }
}

/// How long shutdown waits for the last export of trace spans.
const TRACES_DEADLINE: Duration = Duration::from_secs(5);

/// How long shutdown waits for rate-limit settlements still running.
const SETTLE_DEADLINE: Duration = Duration::from_secs(5);

/// Saves the quota counters changed in Redis to the database now and then, so a Redis that
/// restarts empty gets them back.
async fn mirror_quotas(resilient: Arc<gateway_ratelimit::ResilientLimiter>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        limits::flush_mirror(&resilient).await;
    }
}

/// How often the last-use times of API keys are written, in one batch.
const KEY_USE_FLUSH_EVERY: Duration = Duration::from_secs(10);

async fn flush_key_use(verifier: Arc<gateway_auth::KeyVerifier>) {
    let mut tick = tokio::time::interval(KEY_USE_FLUSH_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = verifier.flush_last_used().await {
            tracing::warn!(error = %e, "could not record the last use of API keys; retrying later");
        }
    }
}

/// Keeps the partitions of this and next month in place, so inserts never fail when a month
/// turns, even on a gateway that runs for months.
async fn partition_maintenance(store: gateway_store::Store) {
    let mut tick = tokio::time::interval(PARTITION_CHECK_EVERY);
    loop {
        tick.tick().await;
        match store.ensure_usage_partitions(time::OffsetDateTime::now_utc()).await {
            Ok(names) if !names.is_empty() => {
                tracing::debug!(?names, "usage_logs partitions ensured");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot create usage_logs partitions; inserts will fail when the month turns");
            }
        }
        // Raw usage past its plan's retention goes by whole partitions (every instance tries;
        // a second run finds nothing to drop).
        match store.drop_expired_usage(time::OffsetDateTime::now_utc()).await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(?dropped, "usage records past their retention dropped");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot drop expired usage records; retrying later");
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {},
            () = term => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
