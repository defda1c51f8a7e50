//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.
//!
//! Labels are bounded and never carry a key, an email or client text: models are labelled
//! only when the pool serves them (anything else is `other`), servers by their admin-given
//! name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_balancer::ServerPool;
use gateway_usage::{UsageRecord, UsageWriter};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The counters of one endpoint and model.
#[derive(Debug, Default)]
struct Series {
    /// status -> requests
    requests: BTreeMap<u16, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_micros: i64,
}

#[derive(Debug, Default)]
struct Counters {
    /// endpoint -> model -> series. Looked up by `&str`: once a series exists, counting a
    /// request allocates nothing.
    series: BTreeMap<String, BTreeMap<String, Series>>,
    /// endpoint -> total latency
    latency: BTreeMap<String, Histogram>,
    /// endpoint -> time in the gateway itself
    overhead: BTreeMap<String, Histogram>,
    disconnects: u64,
}

/// The value under `key`, created the first time (the only time the key is copied). Always
/// `Some`: the `Option` only spares a panic path (a borrow of `map` cannot be returned
/// conditionally before inserting).
fn slot<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> Option<&'a mut V> {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    /// Requests refused by the in-flight cap.
    pub shed: AtomicU64,
    /// Audit entries that could not be written.
    pub audit_failures: AtomicU64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a finished request from its usage record.
    pub fn observe(&self, r: &UsageRecord, pool: &ServerPool) {
        let model = if pool.knows_model(&r.model) { r.model.as_str() } else { "other" };
        let mut c = self.lock();
        if let Some(series) = slot(&mut c.series, &r.endpoint).and_then(|m| slot(m, model)) {
            *series.requests.entry(r.status_code).or_default() += 1;
            series.prompt_tokens += r.prompt_tokens;
            series.completion_tokens += r.completion_tokens;
            series.cost_micros += r.cost_micros;
        }
        if let Some(h) = slot(&mut c.latency, &r.endpoint) {
            h.observe(f64::from(r.latency_ms) / 1000.0);
        }
        c.disconnects += u64::from(r.client_disconnected);
    }

    /// Records the gateway's own time for one request.
    pub fn observe_overhead(&self, endpoint: &str, overhead: Duration) {
        if let Some(h) = slot(&mut self.lock().overhead, endpoint) {
            h.observe(overhead.as_secs_f64());
        }
    }

    /// The text exposition format.
    /// `bus_errors`: failed Redis calls of the invalidation bus.
    pub fn render(&self, pool: &ServerPool, usage: &UsageWriter, bus_errors: u64) -> String {
        let mut out = String::with_capacity(4096);
        let c = self.lock();
        out.push_str("# HELP bluesminds_requests_total Gateway requests by endpoint, model and status.\n# TYPE bluesminds_requests_total counter\n");
        for (e, models) in &c.series {
            for (m, series) in models {
                for (status, n) in &series.requests {
                    let _ = writeln!(
                        out,
                        "bluesminds_requests_total{{endpoint=\"{e}\",model=\"{}\",status=\"{status}\"}} {n}",
                        escape(m)
                    );
                }
            }
        }
        out.push_str("# HELP bluesminds_tokens_total Tokens by endpoint, model and kind.\n# TYPE bluesminds_tokens_total counter\n");
        for (e, models) in &c.series {
            for (m, series) in models {
                for (kind, n) in
                    [("completion", series.completion_tokens), ("prompt", series.prompt_tokens)]
                {
                    let _ = writeln!(
                        out,
                        "bluesminds_tokens_total{{endpoint=\"{e}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                        escape(m)
                    );
                }
            }
        }
        out.push_str("# HELP bluesminds_cost_micro_dollars_total Cost in micro-dollars.\n# TYPE bluesminds_cost_micro_dollars_total counter\n");
        for (e, models) in &c.series {
            for (m, series) in models {
                let _ = writeln!(
                    out,
                    "bluesminds_cost_micro_dollars_total{{endpoint=\"{e}\",model=\"{}\"}} {}",
                    escape(m),
                    series.cost_micros
                );
            }
        }
        out.push_str("# HELP bluesminds_request_duration_seconds Total request time.\n# TYPE bluesminds_request_duration_seconds histogram\n");
        for (e, h) in &c.latency {
            h.render(&mut out, "bluesminds_request_duration_seconds", &format!("endpoint=\"{e}\""));
        }
        out.push_str("# HELP bluesminds_gateway_overhead_seconds Time spent in the gateway itself, upstream excluded.\n# TYPE bluesminds_gateway_overhead_seconds histogram\n");
        for (e, h) in &c.overhead {
            h.render(&mut out, "bluesminds_gateway_overhead_seconds", &format!("endpoint=\"{e}\""));
        }
        let _ = writeln!(
            out,
            "# HELP bluesminds_client_disconnects_total Streams the client left early.\n# TYPE bluesminds_client_disconnects_total counter\nbluesminds_client_disconnects_total {}",
            c.disconnects
        );
        drop(c);
        let _ = writeln!(
            out,
            "# HELP bluesminds_shed_requests_total Requests refused by the in-flight cap.\n# TYPE bluesminds_shed_requests_total counter\nbluesminds_shed_requests_total {}",
            self.shed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bluesminds_audit_write_failures_total Audit log entries that could not be written.\n# TYPE bluesminds_audit_write_failures_total counter\nbluesminds_audit_write_failures_total {}",
            self.audit_failures.load(Ordering::Relaxed)
        );

        out.push_str("# HELP bluesminds_upstream_healthy Whether an upstream server is healthy (1), degraded (0.5) or not (0).\n# TYPE bluesminds_upstream_healthy gauge\n");
        let servers = pool.snapshot();
        for s in servers.iter() {
            let v = match s.health() {
                gateway_core::HealthStatus::Healthy | gateway_core::HealthStatus::Unknown => 1.0,
                gateway_core::HealthStatus::Degraded => 0.5,
                gateway_core::HealthStatus::Unhealthy => 0.0,
            };
            let _ = writeln!(
                out,
                "bluesminds_upstream_healthy{{server=\"{}\"}} {v}",
                escape(&s.server().name)
            );
        }
        out.push_str("# HELP bluesminds_upstream_in_flight Requests in flight per upstream server.\n# TYPE bluesminds_upstream_in_flight gauge\n");
        for s in servers.iter() {
            let _ = writeln!(
                out,
                "bluesminds_upstream_in_flight{{server=\"{}\"}} {}",
                escape(&s.server().name),
                s.in_flight()
            );
        }
        out.push_str("# HELP bluesminds_upstream_circuit_open Whether an upstream's circuit is open.\n# TYPE bluesminds_upstream_circuit_open gauge\n");
        for s in servers.iter() {
            let _ = writeln!(
                out,
                "bluesminds_upstream_circuit_open{{server=\"{}\"}} {}",
                escape(&s.server().name),
                u8::from(s.circuit_open())
            );
        }
        let _ = writeln!(
            out,
            "# HELP bluesminds_redis_errors_total Failed Redis calls of the invalidation bus.\n# TYPE bluesminds_redis_errors_total counter\nbluesminds_redis_errors_total {bus_errors}"
        );
        let st = usage.stats();
        let _ = writeln!(
            out,
            "# HELP bluesminds_usage_queue_depth Usage records waiting for the writer.\n# TYPE bluesminds_usage_queue_depth gauge\nbluesminds_usage_queue_depth {}",
            usage.queue_depth()
        );
        for (name, help, v) in [
            (
                "bluesminds_usage_written_total",
                "Usage records written to the database.",
                &st.written,
            ),
            (
                "bluesminds_usage_spilled_total",
                "Usage records spilled to the local file.",
                &st.spilled,
            ),
            (
                "bluesminds_usage_replayed_total",
                "Spilled usage records replayed into the database.",
                &st.replayed,
            ),
            (
                "bluesminds_usage_quarantined_total",
                "Usage records the database refused, kept in the quarantine file.",
                &st.quarantined,
            ),
            (
                "bluesminds_usage_dropped_total",
                "Usage records lost (database and spill file both failed).",
                &st.dropped,
            ),
            (
                "bluesminds_database_errors_total",
                "Failed database writes of usage batches.",
                &st.failed_batches,
            ),
        ] {
            counter(&mut out, name, help, v.load(Ordering::Relaxed));
        }
        out
    }
}

/// One counter without labels, with its help and type lines.
fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

/// How requests were admitted under leases: by a call to Redis (a new lease or a plain
/// reservation) or from a lease in memory; and the leases given back.
pub fn render_leases(out: &mut String, stats: &gateway_ratelimit::LeaseStats) {
    for (name, help, n) in [
        (
            "bluesminds_ratelimit_claims_total",
            "Admissions that called Redis (a new lease, or a plain reservation near a limit).",
            &stats.claims,
        ),
        (
            "bluesminds_ratelimit_lease_admissions_total",
            "Requests admitted from a lease in memory, without a call to Redis.",
            &stats.local,
        ),
        (
            "bluesminds_ratelimit_long_leases_total",
            "Leases small enough beside a key's limits to last limits.lease_long_ms.",
            &stats.long,
        ),
        (
            "bluesminds_ratelimit_leases_returned_total",
            "Leases that ended and gave their unused part back.",
            &stats.returned,
        ),
        (
            "bluesminds_ratelimit_lease_givebacks_dropped_total",
            "Give-backs of unused lease budget dropped because Redis stayed unreachable (the budget stays counted until the windows move on).",
            &stats.dropped,
        ),
    ] {
        counter(out, name, help, n.load(Ordering::Relaxed));
    }
}

/// Whether the invalidation bus is subscribed (with Redis only).
pub fn render_bus(out: &mut String, subscribed: bool) {
    let _ = writeln!(
        out,
        "# HELP bluesminds_invalidation_bus_subscribed Whether this instance hears cache invalidations from the others (the Redis bus subscribed and answering its heartbeat).\n# TYPE bluesminds_invalidation_bus_subscribed gauge\nbluesminds_invalidation_bus_subscribed {}",
        u8::from(subscribed)
    );
}

/// What became of the trace spans handed to the OTLP exporter (only when tracing is on).
pub fn render_traces(out: &mut String, stats: &gateway_otlp::ExportStats) {
    out.push_str("# HELP bluesminds_trace_spans_total Trace spans by outcome: exported, dropped (queue full) or failed (export failed or refused).\n# TYPE bluesminds_trace_spans_total counter\n");
    for (outcome, n) in
        [("exported", &stats.exported), ("dropped", &stats.dropped), ("failed", &stats.failed)]
    {
        let _ = writeln!(
            out,
            "bluesminds_trace_spans_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

/// The limiter's own series: whether Redis answers, outages, fallback decisions, refusals for
/// want of any backend, and settlements that failed.
pub fn render_pipeline(
    out: &mut String,
    pipeline: &gateway_pipeline::Pipeline,
    resilient: Option<&gateway_ratelimit::ResilientLimiter>,
) {
    let _ = writeln!(
        out,
        "# HELP bluesminds_rate_limited_requests_total Requests refused by rate limits or quotas.\n# TYPE bluesminds_rate_limited_requests_total counter\nbluesminds_rate_limited_requests_total {}",
        pipeline.rate_limited()
    );
    let Some(limits) = pipeline.limits() else { return };
    if let Some(r) = resilient {
        let h = r.health();
        let _ = writeln!(
            out,
            "# HELP bluesminds_ratelimit_redis_up Whether the rate limiter reaches Redis (0: limits are on the fallback).\n# TYPE bluesminds_ratelimit_redis_up gauge\nbluesminds_ratelimit_redis_up {}",
            u8::from(h.redis_up)
        );
        let _ = writeln!(
            out,
            "# HELP bluesminds_ratelimit_redis_outages_total Times the rate limiter lost Redis.\n# TYPE bluesminds_ratelimit_redis_outages_total counter\nbluesminds_ratelimit_redis_outages_total {}",
            h.outages
        );
        let _ = writeln!(
            out,
            "# HELP bluesminds_ratelimit_fallback_total Reservations decided by the fallback (memory and database) while Redis was unreachable.\n# TYPE bluesminds_ratelimit_fallback_total counter\nbluesminds_ratelimit_fallback_total {}",
            h.fallback_reservations
        );
        let _ = writeln!(
            out,
            "# HELP bluesminds_ratelimit_unavailable_total Requests refused with 503 because no backend could check their limits.\n# TYPE bluesminds_ratelimit_unavailable_total counter\nbluesminds_ratelimit_unavailable_total {}",
            h.unavailable
        );
    }
    let _ = writeln!(
        out,
        "# HELP bluesminds_ratelimit_settle_errors_total Reservations that could not be settled to the real token count.\n# TYPE bluesminds_ratelimit_settle_errors_total counter\nbluesminds_ratelimit_settle_errors_total {}",
        limits.settle_errors()
    );
}
