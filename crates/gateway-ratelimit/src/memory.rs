//! The in-memory limiter: one process (the embedded mode, and tests).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, UserId};

use crate::window::{DEFAULT_BUCKETS, buckets_for, periods};
use crate::{
    Claim, Decision, Holder, LimitError, Period, QuotaRows, QuotaStore, QuotaStoreError,
    QuotaUsage, RateLimiter, Reservation, Snapshot, Subject, Used, Window, counted_second, grant,
};

#[derive(Debug, Default)]
struct Counters {
    keys: HashMap<ApiKeyId, KeyState>,
    /// Each user's tokens in a `YYYYMM` month.
    users: HashMap<UserId, (u32, u64)>,
}

#[derive(Debug, Default)]
struct KeyState {
    requests: VecDeque<(i64, u64)>,
    tokens: VecDeque<(i64, u64)>,
    day: (u32, u64),
    month: (u32, u64),
}

fn prune(buckets: &mut VecDeque<(i64, u64)>, now: i64, span: i64) {
    while buckets.front().is_some_and(|(s, _)| *s <= now - span) {
        buckets.pop_front();
    }
}

/// Counts `n` in second `at`, keeping the buckets in order (a lease counts in a later second
/// than the requests after it).
fn add(buckets: &mut VecDeque<(i64, u64)>, at: i64, n: u64) {
    let i = buckets.iter().rposition(|(s, _)| *s <= at).map_or(0, |i| i + 1);
    match buckets.get_mut(i.wrapping_sub(1)) {
        Some((s, c)) if *s == at => *c += n,
        _ => buckets.insert(i, (at, n)),
    }
}

/// `used` in place of `counted`, never below zero.
fn replace(v: &mut u64, counted: u64, used: u64) {
    *v = (*v + used).saturating_sub(counted);
}

/// Seconds until `cost` more fits under `limit`, as the oldest buckets leave the window.
pub(crate) fn wait_secs(buckets: &[(i64, u64)], now: i64, span: i64, limit: u64, cost: u64) -> u64 {
    let mut used: u64 = buckets.iter().map(|(_, c)| c).sum();
    for (s, c) in buckets {
        if used + cost <= limit {
            break;
        }
        used -= c;
        if used + cost <= limit {
            return u64::try_from(s + span - now).unwrap_or(1).max(1);
        }
    }
    if used + cost <= limit { 1 } else { span as u64 }
}

/// Limits in process memory.
#[derive(Debug)]
pub struct InMemoryLimiter {
    keys: Mutex<Counters>,
    /// One-second buckets a per-minute window spans (61 for a minute).
    span: i64,
}

impl Default for InMemoryLimiter {
    fn default() -> Self {
        Self { keys: Mutex::default(), span: DEFAULT_BUCKETS }
    }
}

impl InMemoryLimiter {
    /// Shortens (or lengthens) the per-minute windows; for tests that cannot wait a minute.
    #[must_use]
    pub fn with_window(mut self, window: std::time::Duration) -> Self {
        self.span = buckets_for(window);
        self
    }
}

#[async_trait]
impl RateLimiter for InMemoryLimiter {
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        if let Some(ending) = claim.ending {
            self.adjust(&[ending]).await?;
        }
        let tokens = claim.need;
        let (key, limits) = (who.key, &who.limits);
        let now = now_ms.div_euclid(1000);
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let mut counters = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Counters { keys, users } = &mut *counters;
        let user = users.entry(who.user).or_default();
        if user.0 != month {
            *user = (month, 0);
        }
        let st = keys.entry(key).or_default();
        let span = self.span;
        prune(&mut st.requests, now, span);
        prune(&mut st.tokens, now, span);
        if st.day.0 != day {
            st.day = (day, 0);
        }
        if st.month.0 != month {
            st.month = (month, 0);
        }
        let req_used: u64 = st.requests.iter().map(|(_, c)| c).sum();
        let tok_used: u64 = st.tokens.iter().map(|(_, c)| c).sum();
        let reset = |b: &VecDeque<(i64, u64)>| {
            b.front().map_or(span, |(s, _)| s + span - now).max(0) as u64
        };
        let (reset_requests_secs, reset_tokens_secs) = (reset(&st.requests), reset(&st.tokens));
        let snapshot = |req_used: u64, tok_used: u64| Snapshot {
            reset_requests_secs,
            reset_tokens_secs,
            ..Snapshot::from_usage(limits, req_used, tok_used)
        };

        let refused = if req_used + 1 > limits.rpm {
            let reqs = st.requests.make_contiguous();
            Some((Window::RequestsPerMinute, wait_secs(reqs, now, span, limits.rpm, 1)))
        } else if tok_used + tokens > limits.tpm {
            let toks = st.tokens.make_contiguous();
            Some((Window::TokensPerMinute, wait_secs(toks, now, span, limits.tpm, tokens)))
        } else if st.day.1 + tokens > limits.daily_tokens {
            Some((Window::TokensPerDay, to_midnight))
        } else if st.month.1 + tokens > limits.monthly_tokens {
            Some((Window::TokensPerMonth, to_month_end))
        } else if user.1 + tokens > who.ceiling {
            Some((Window::UserMonth, to_month_end))
        } else {
            None
        };
        if let Some((window, retry_after_secs)) = refused {
            return Ok(Decision::Refused {
                window,
                retry_after_secs,
                snapshot: snapshot(req_used, tok_used),
            });
        }
        // Every check passed: each window has at least one request and `need` tokens left.
        let remaining_tokens = [
            limits.tpm.saturating_sub(tok_used),
            limits.daily_tokens.saturating_sub(st.day.1),
            limits.monthly_tokens.saturating_sub(st.month.1),
            who.ceiling.saturating_sub(user.1),
        ];
        let remaining_tokens = remaining_tokens.into_iter().min().unwrap_or(0);
        let remaining = (limits.rpm.saturating_sub(req_used), remaining_tokens);
        let (n, t) = grant(claim, remaining.0, remaining.1);
        let second = counted_second(claim, (n, t), remaining, now_ms);
        add(&mut st.requests, second, n);
        add(&mut st.tokens, second, t);
        st.day.1 += t;
        st.month.1 += t;
        user.1 += t;
        let reservation = Reservation {
            key,
            user: who.user,
            requests: n,
            tokens: t,
            second,
            day,
            month,
            fallback: false,
            lease: 0,
        };
        Ok(Decision::Allowed { reservation, snapshot: snapshot(req_used + n, tok_used + t) })
    }

    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
        let mut counters = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (r, used) in used {
            let tokens = |v: &mut u64| replace(v, r.tokens, used.tokens);
            if let Some(user) = counters.users.get_mut(&r.user).filter(|u| u.0 == r.month) {
                tokens(&mut user.1);
            }
            let Some(st) = counters.keys.get_mut(&r.key) else { continue };
            if let Some((_, c)) = st.requests.iter_mut().find(|(s, _)| *s == r.second) {
                replace(c, r.requests, used.requests);
            }
            if let Some((_, c)) = st.tokens.iter_mut().find(|(s, _)| *s == r.second) {
                tokens(c);
            }
            if st.day.0 == r.day {
                tokens(&mut st.day.1);
            }
            if st.month.0 == r.month {
                tokens(&mut st.month.1);
            }
        }
        Ok(())
    }
}

/// A [`QuotaStore`] in process memory: for tests, and services without a database.
#[derive(Debug, Default)]
pub struct InMemoryQuotaStore {
    counters: Mutex<HashMap<(Holder, Period, time::Date), Parts>>,
}

/// A counter's two parts: the mirror of the shared limiter, and what was counted alone.
#[derive(Clone, Copy, Debug, Default)]
struct Parts {
    mirror: u64,
    pending: i64,
}

impl Parts {
    fn sum(self) -> u64 {
        self.mirror.saturating_add_signed(self.pending)
    }
}

#[async_trait]
impl QuotaStore for InMemoryQuotaStore {
    async fn try_consume(
        &self,
        who: &Subject,
        day: time::Date,
        month: time::Date,
        tokens: u64,
    ) -> Result<Option<Window>, QuotaStoreError> {
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (key, user) = (Holder::Key { key: who.key, user: who.user }, Holder::User(who.user));
        let counters = [
            ((key, Period::Day, day), who.limits.daily_tokens, Window::TokensPerDay),
            ((key, Period::Month, month), who.limits.monthly_tokens, Window::TokensPerMonth),
            ((user, Period::Month, month), who.ceiling, Window::UserMonth),
        ];
        for (id, limit, window) in counters {
            if c.get(&id).copied().unwrap_or_default().sum() + tokens > limit {
                return Ok(Some(window));
            }
        }
        for (id, _, _) in counters {
            let parts = c.entry(id).or_default();
            parts.pending = parts.pending.saturating_add(i64::try_from(tokens).unwrap_or(i64::MAX));
        }
        Ok(None)
    }

    async fn adjust(
        &self,
        key: ApiKeyId,
        user: UserId,
        day: time::Date,
        month: time::Date,
        delta: i64,
    ) -> Result<(), QuotaStoreError> {
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (key, user) = (Holder::Key { key, user }, Holder::User(user));
        for id in
            [(key, Period::Day, day), (key, Period::Month, month), (user, Period::Month, month)]
        {
            let parts = c.entry(id).or_default();
            // Never below zero in sum: at least minus the mirror.
            let floor = -i64::try_from(parts.mirror).unwrap_or(i64::MAX);
            parts.pending = parts.pending.saturating_add(delta).max(floor);
        }
        Ok(())
    }

    async fn current(
        &self,
        day: time::Date,
        month: time::Date,
        which: QuotaRows,
    ) -> Result<Vec<QuotaUsage>, QuotaStoreError> {
        let c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(c.iter()
            .filter(|((_, p, start), _)| match p {
                Period::Day => *start == day,
                Period::Month => *start == month,
            })
            .filter(|(_, parts)| which == QuotaRows::All || parts.pending != 0)
            .map(|(&(holder, period, start), &parts)| QuotaUsage {
                holder,
                period,
                start,
                used: parts.sum(),
                pending: parts.pending,
            })
            .collect())
    }

    async fn save(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in rows {
            c.entry((r.holder, r.period, r.start)).or_default().mirror = r.used;
        }
        Ok(())
    }

    async fn handed_over(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in rows {
            let parts = c.entry((r.holder, r.period, r.start)).or_default();
            parts.pending = parts.pending.saturating_sub(r.pending);
            parts.mirror = parts.mirror.saturating_add_signed(r.pending);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn in_memory_limiter_meets_the_contract() {
        crate::conformance::limiter_contract(&super::InMemoryLimiter::default()).await;
        crate::conformance::claim_contract(&super::InMemoryLimiter::default()).await;
    }

    #[tokio::test]
    async fn in_memory_quota_store_meets_the_contract() {
        let store = super::InMemoryQuotaStore::default();
        let (a, b) = (gateway_core::ApiKeyId::new(), gateway_core::ApiKeyId::new());
        let user = gateway_core::UserId::new();
        crate::conformance::quota_store_contract(&store, a, b, user).await;
    }
}
