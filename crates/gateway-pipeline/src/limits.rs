//! Rate limits and quotas on the request path: a reservation before forwarding, a settlement
//! after (in the key's lease when one holds it, else sent off the response's path in
//! batches).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gateway_billing::money::{thousands, usd};
use gateway_billing::{Ceiling, CeilingKind};
use gateway_core::{ApiError, ErrorKind, Limits, Plan};
use gateway_ratelimit::{Decision, RateLimiter, Reservation, Snapshot, Subject, Window};
use tokio::sync::{Notify, mpsc};

/// The limiter as the pipeline uses it.
pub struct Limiting {
    limiter: Arc<dyn RateLimiter>,
    /// Settlements go to one task that sends whatever has queued up in one batch (one
    /// pipelined round trip under load, instead of a task and a round trip each).
    settles: mpsc::UnboundedSender<(Reservation, u64)>,
    /// Settlements queued or being sent; [`Limiting::drain`] waits until it is zero.
    pending: Arc<Pending>,
    settle_errors: Arc<AtomicU64>,
    default_completion_tokens: u64,
}

impl std::fmt::Debug for Limiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiting")
            .field("default_completion_tokens", &self.default_completion_tokens)
            .finish_non_exhaustive()
    }
}

impl Limiting {
    /// Starts the settlement task (on the current Tokio runtime).
    /// `default_completion_tokens` is reserved for a completion that states no `max_tokens`.
    pub fn new(limiter: Arc<dyn RateLimiter>, default_completion_tokens: u64) -> Limiting {
        let (settles, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending::default());
        let settle_errors = Arc::new(AtomicU64::new(0));
        tokio::spawn(settle_queued(limiter.clone(), queue, pending.clone(), settle_errors.clone()));
        Limiting { limiter, settles, pending, settle_errors, default_completion_tokens }
    }

    /// Tokens to reserve: the prompt estimate plus the completion asked for (or the default).
    pub fn estimate(&self, prompt: u64, max_tokens: Option<u64>, completes: bool) -> u64 {
        if completes {
            prompt + max_tokens.unwrap_or(self.default_completion_tokens)
        } else {
            prompt
        }
    }

    /// Reserves one request and `tokens` for the key and its user; a refusal is the error to
    /// answer with, which `standing` explains.
    pub async fn reserve(
        &self,
        who: &Subject,
        standing: &Standing,
        tokens: u64,
    ) -> Result<(Reservation, Snapshot), (ApiError, Option<Snapshot>)> {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        match self.limiter.reserve(who, tokens, now_ms).await {
            Ok(Decision::Allowed { reservation, snapshot }) => Ok((reservation, snapshot)),
            Ok(Decision::Refused { window, retry_after_secs, snapshot }) => {
                let err = refusal(window, &who.limits, standing, tokens, retry_after_secs);
                Err((err, Some(snapshot)))
            }
            Err(e) => {
                tracing::error!(error = %e, "rate limits cannot be checked; refusing (fail closed)");
                let err = ApiError::new(
                    ErrorKind::ServiceUnavailable,
                    "Rate limits cannot be checked right now. Please retry shortly.",
                )
                .with_retry_after(1);
                Err((err, None))
            }
        }
    }

    /// Replaces the reservation's estimate with `actual` tokens: at once when the limiter can
    /// without I/O (a live lease), else in the background.
    pub fn settle(&self, reservation: Reservation, actual: u64) {
        if reservation.tokens == actual || self.limiter.settle_in_place(&reservation, actual) {
            return;
        }
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        if self.settles.send((reservation, actual)).is_err() {
            self.pending.done(1);
        }
    }

    /// Settlements the limiter failed to apply.
    pub fn settle_errors(&self) -> u64 {
        self.settle_errors.load(Ordering::Relaxed)
    }

    /// Waits (up to `deadline`) until every queued settlement is applied; false if cut.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let drained = async {
            loop {
                let idle = self.pending.idle.notified();
                if self.pending.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            let left = self.pending.count.load(Ordering::Acquire);
            tracing::warn!(left, "rate-limit settlements cut at shutdown");
            return false;
        }
        true
    }
}

#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

impl Pending {
    fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

/// Settles whatever has queued since the last batch, in one call to the limiter.
async fn settle_queued(
    limiter: Arc<dyn RateLimiter>,
    mut queue: mpsc::UnboundedReceiver<(Reservation, u64)>,
    pending: Arc<Pending>,
    errors: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(256);
    while queue.recv_many(&mut batch, 1024).await > 0 {
        if let Err(e) = limiter.settle_many(&batch).await {
            errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, settlements = batch.len(), "could not settle rate-limit reservations");
        }
        pending.done(batch.len());
        batch.clear();
    }
}

/// The user's billing standing, which explains a refusal by the monthly ceiling.
#[derive(Clone, Debug)]
pub struct Standing {
    /// The plan whose limits apply (the free plan while past due).
    pub plan: Arc<Plan>,
    pub ceiling: Ceiling,
    /// An invoice stayed open past its grace period.
    pub past_due: bool,
}

/// OpenAI's 429 for the window that refused.
fn refusal(
    window: Window,
    limits: &Limits,
    standing: &Standing,
    requested: u64,
    retry_after: u64,
) -> ApiError {
    let plan = &standing.plan;
    let mut message = match window {
        Window::RequestsPerMinute => format!(
            "Rate limit reached for requests per minute (RPM): limit {}. Please try again in {retry_after}s.",
            limits.rpm
        ),
        Window::TokensPerMinute => format!(
            "Rate limit reached for tokens per minute (TPM): limit {}, requested {requested}. Please try again in {retry_after}s.",
            limits.tpm
        ),
        Window::TokensPerDay => format!(
            "You exceeded your daily token quota ({} tokens; this request needs about {requested}). It resets at midnight UTC, in {retry_after}s.",
            limits.daily_tokens
        ),
        Window::TokensPerMonth => format!(
            "You exceeded your monthly token quota ({} tokens; this request needs about {requested}). It resets on the first of the month (UTC), in {retry_after}s.",
            limits.monthly_tokens
        ),
        Window::UserMonth => match standing.ceiling.kind {
            CeilingKind::SpendCap { cap_micros } => format!(
                "Your monthly spend cap of {} is reached: your {} plan's {} included tokens and the overage the cap allows are used up (this request needs about {requested} tokens). It resets on the first of the month (UTC), in {retry_after}s. Raise your spend cap in your billing settings to continue now.",
                usd(cap_micros),
                plan.name,
                thousands(plan.included_tokens),
            ),
            CeilingKind::Included if plan.overage_micros_per_1k.is_some() => format!(
                "You have used the {} tokens your {} plan includes this month, and your spend cap of $0.00 allows no overage (this request needs about {requested} tokens). It resets on the first of the month (UTC), in {retry_after}s. Raise your spend cap in your billing settings to continue now.",
                thousands(plan.included_tokens),
                plan.name,
            ),
            CeilingKind::Included | CeilingKind::Unlimited => format!(
                "You have used the {} tokens your {} plan includes this month (this request needs about {requested}). They renew on the first of the month (UTC), in {retry_after}s. Upgrade your plan to continue now.",
                thousands(standing.ceiling.tokens),
                plan.name,
            ),
        },
    };
    if standing.past_due {
        message = format!(
            "Your account is past due: an invoice stayed unpaid past its grace period, so the Free plan's limits apply until it is paid. {message}"
        );
    }
    let kind = if window.is_quota() { ErrorKind::QuotaExceeded } else { ErrorKind::RateLimited };
    ApiError::new(kind, message).with_retry_after(retry_after)
}
