//! The in-memory limiter: one process (the embedded mode, and tests).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Limits};

use crate::window::{WINDOW_SECS, periods};
use crate::{Decision, LimitError, RateLimiter, Reservation, Snapshot, Window};

#[derive(Debug, Default)]
struct KeyState {
    requests: VecDeque<(i64, u64)>,
    tokens: VecDeque<(i64, u64)>,
    day: (u32, u64),
    month: (u32, u64),
}

fn prune(buckets: &mut VecDeque<(i64, u64)>, now: i64) {
    while buckets.front().is_some_and(|(s, _)| *s <= now - WINDOW_SECS) {
        buckets.pop_front();
    }
}

fn add(buckets: &mut VecDeque<(i64, u64)>, now: i64, n: u64) {
    match buckets.back_mut() {
        Some((s, c)) if *s == now => *c += n,
        _ => buckets.push_back((now, n)),
    }
}

/// Seconds until `cost` more fits under `limit`, as the oldest buckets leave the window.
pub(crate) fn wait_secs(buckets: &[(i64, u64)], now: i64, limit: u64, cost: u64) -> u64 {
    let mut used: u64 = buckets.iter().map(|(_, c)| c).sum();
    for (s, c) in buckets {
        if used + cost <= limit {
            break;
        }
        used -= c;
        if used + cost <= limit {
            return u64::try_from(s + WINDOW_SECS - now).unwrap_or(1).max(1);
        }
    }
    if used + cost <= limit { 1 } else { WINDOW_SECS as u64 }
}

/// Limits in process memory.
#[derive(Debug, Default)]
pub struct InMemoryLimiter {
    keys: Mutex<HashMap<ApiKeyId, KeyState>>,
}

#[async_trait]
impl RateLimiter for InMemoryLimiter {
    async fn reserve(
        &self,
        key: ApiKeyId,
        limits: &Limits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        let now = now_ms.div_euclid(1000);
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = keys.entry(key).or_default();
        prune(&mut st.requests, now);
        prune(&mut st.tokens, now);
        if st.day.0 != day {
            st.day = (day, 0);
        }
        if st.month.0 != month {
            st.month = (month, 0);
        }
        let req_used: u64 = st.requests.iter().map(|(_, c)| c).sum();
        let tok_used: u64 = st.tokens.iter().map(|(_, c)| c).sum();
        let reqs: Vec<_> = st.requests.iter().copied().collect();
        let toks: Vec<_> = st.tokens.iter().copied().collect();
        let reset = |b: &[(i64, u64)]| {
            b.first().map_or(0, |(s, _)| u64::try_from(s + WINDOW_SECS - now).unwrap_or(0))
        };
        let snapshot = |req_used: u64, tok_used: u64| Snapshot {
            reset_requests_secs: reset(&reqs),
            reset_tokens_secs: reset(&toks),
            ..Snapshot::from_usage(limits, req_used, tok_used)
        };

        let refused = if req_used + 1 > limits.rpm {
            Some((Window::RequestsPerMinute, wait_secs(&reqs, now, limits.rpm, 1)))
        } else if tok_used + tokens > limits.tpm {
            Some((Window::TokensPerMinute, wait_secs(&toks, now, limits.tpm, tokens)))
        } else if st.day.1 + tokens > limits.daily_tokens {
            Some((Window::TokensPerDay, to_midnight))
        } else if st.month.1 + tokens > limits.monthly_tokens {
            Some((Window::TokensPerMonth, to_month_end))
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
        add(&mut st.requests, now, 1);
        add(&mut st.tokens, now, tokens);
        st.day.1 += tokens;
        st.month.1 += tokens;
        let reservation = Reservation { key, tokens, second: now, day, month };
        Ok(Decision::Allowed { reservation, snapshot: snapshot(req_used + 1, tok_used + tokens) })
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), LimitError> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(st) = keys.get_mut(&r.key) else { return Ok(()) };
        let adjust = |v: &mut u64| *v = (*v + actual_tokens).saturating_sub(r.tokens);
        if let Some((_, c)) = st.tokens.iter_mut().find(|(s, _)| *s == r.second) {
            adjust(c);
        }
        if st.day.0 == r.day {
            adjust(&mut st.day.1);
        }
        if st.month.0 == r.month {
            adjust(&mut st.month.1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn in_memory_limiter_meets_the_contract() {
        crate::conformance::limiter_contract(&super::InMemoryLimiter::default()).await;
    }
}
