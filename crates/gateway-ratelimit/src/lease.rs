//! Leased admission: exact limits across instances without a round trip to the shared limiter
//! for every request.
//!
//! Exactness across instances needs only that the sum of what the instances admit never
//! exceeds a limit. So an instance takes a **lease** on part of a key's remaining budget (some
//! requests and tokens, in every window at once: minute, day, month and the user's monthly
//! ceiling) in one call to the shared limiter, admits requests against it in memory, and gives
//! back what it did not use when the lease ends. The shared limiter counts the whole lease the
//! moment it is granted, in the per-minute second the lease ends in ([`crate::Claim`]), so at no
//! time does any window hold less than what the instances admitted under it.
//!
//! **Size.** A lease asks for twice what the key's previous lease on this instance used if
//! that one ran out before its time, as many as it used if it did not (one request at first),
//! tokens at the key's average need, and gets at most `1/share` of what remains in the key's
//! tightest window ([`crate::grant`]). A key too slow to use a lease of two within its time
//! gets plain reservations: nothing to give back. Far from its limits a busy key
//! gets large leases and almost never waits for Redis; as it nears a limit the leases shrink,
//! down to one request and exactly the tokens it needs, which is a plain reservation: then
//! every request is checked against the shared counters again, as without leases.
//!
//! **Length.** A lease ends after `duration`, or after `long` when the shared limiter finds it
//! small: at most `1/(share × LONG_LEASE_FACTOR)` of what remains in every window
//! ([`crate::counted_second`]). A key far from its limits and used now and then (a request a
//! second on this instance) then needs a claim per `long` of its traffic instead of one per
//! `duration`.
//!
//! **Fairness bound.** A lease never holds more than `1/share` of what remained when it was
//! granted, and it ends within `duration`, or within `long` if it held at most
//! `1/(share × LONG_LEASE_FACTOR)` of it. So when a request is refused, the budget other
//! instances hold unused in their leases of the same key is at most `(k - 1)/share` of the
//! limit (`k` instances), and it comes back at most `duration` later, but for at most
//! `(k - 1)/(share × LONG_LEASE_FACTOR)` of the limit, which comes back at most `long` later; a
//! key with fewer than `share` requests left gets single-request leases that hold nothing
//! unused. (Tested by `conformance::lease_property` with simulated instances.)
//!
//! **Settlements** keep their meaning: a request reserves its estimate and is settled to its
//! real tokens. While its lease lives, the difference stays in the lease (a refund makes room
//! for more requests); once the lease has ended, it goes to the shared limiter. What a lease
//! gives back is queued and sent with the next batch of settlements or by
//! [`LeasedLimiter::expire`], which the owner calls a few times a second; [`LeasedLimiter::release_all`]
//! gives everything back at shutdown. An instance that dies holding leases loses their unused
//! part until the windows move on (the per-minute ones within a minute; the daily and monthly
//! quotas keep it, at most `1/share` of what remained per key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::ApiKeyId;
use tokio::sync::Notify;

use crate::window::periods;
use crate::{Claim, Decision, LimitError, RateLimiter, Reservation, Snapshot, Subject, Used};

/// How leases are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The longest a lease is used; also the longest an instance holds budget it does not use,
    /// but for a small lease.
    pub duration: Duration,
    /// The longest a small lease is used: one that holds at most `1/(share ×`
    /// [`crate::LONG_LEASE_FACTOR`]`)` of what remains in every window (at least `duration`).
    pub long: Duration,
    /// A lease takes at most `1/share` of what remains in the key's tightest window.
    pub share: u64,
    /// Most requests in one lease.
    pub max_requests: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            long: Duration::from_secs(10),
            share: 16,
            max_requests: 100_000,
        }
    }
}

/// What the leases did, for metrics.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Calls to the shared limiter for a request (leases and plain reservations).
    pub claims: AtomicU64,
    /// Requests admitted from a lease in memory, without a call.
    pub local: AtomicU64,
    /// Leases granted small enough to last until their long end.
    pub long: AtomicU64,
    /// Leases that ended and gave their unused part back.
    pub returned: AtomicU64,
    /// Give-backs dropped because the shared limiter stayed unreachable (their budget stays
    /// counted until the windows move on).
    pub dropped: AtomicU64,
}

/// A [`RateLimiter`] that admits from leases on the shared limiter `inner` (see the module docs).
pub struct LeasedLimiter {
    inner: Arc<dyn RateLimiter>,
    config: LeaseConfig,
    slots: RwLock<HashMap<ApiKeyId, Arc<Slot>>>,
    /// Unused parts of ended leases, and settlements of requests whose lease has ended, to send.
    outgoing: Mutex<Vec<(Reservation, Used)>>,
    next_id: AtomicU64,
    stats: LeaseStats,
}

impl std::fmt::Debug for LeasedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedLimiter").field("config", &self.config).finish_non_exhaustive()
    }
}

/// One key's lease on this instance.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Told when a claim for the key ends (its waiters look again).
    claimed: Notify,
}

#[derive(Default)]
struct SlotState {
    lease: Option<Lease>,
    /// A claim for the key is under way: other requests wait for it instead of claiming too.
    claiming: bool,
    /// Requests the key's last lease admitted.
    last_used: u64,
    /// The last lease ran out before its time: the next asks for twice as many (else for as
    /// many as it used: a key too slow to use a lease gets plain reservations, no give-back).
    last_ran_out: bool,
    /// When the key last got a plain reservation: another request within a lease's time
    /// shows it busy enough for a lease of two.
    single_at_ms: Option<i64>,
    /// Average tokens a request of the key needs.
    average_need: u64,
    /// When the key was last asked for (idle slots are dropped).
    touched_ms: i64,
}

struct Lease {
    id: u64,
    /// What the shared limiter counted.
    grant: Reservation,
    /// The key's limits it was granted under: other limits (a plan change) end it.
    who: Subject,
    /// When it was granted.
    granted_ms: i64,
    until_ms: i64,
    used_requests: u64,
    /// Tokens of the requests admitted: estimates, replaced by real counts as they settle.
    used_tokens: u64,
    /// The shared limiter's view right after the grant.
    snapshot: Snapshot,
}

impl Lease {
    /// Admits one request needing `need` tokens, if the lease still covers it.
    fn take(&mut self, who: &Subject, need: u64, now_ms: i64) -> Option<(Reservation, Snapshot)> {
        if self.who != *who
            || now_ms >= self.until_ms
            || self.used_requests >= self.grant.requests
            || self.used_tokens.saturating_add(need) > self.grant.tokens
        {
            return None;
        }
        self.used_requests += 1;
        self.used_tokens += need;
        Some((self.admitted(need), self.view()))
    }

    fn admitted(&self, need: u64) -> Reservation {
        Reservation { requests: 1, tokens: need, lease: self.id, ..self.grant }
    }

    /// The headers' view: the shared limiter's after the grant, plus what the lease still
    /// holds.
    fn view(&self) -> Snapshot {
        let s = self.snapshot;
        Snapshot {
            remaining_requests: s.remaining_requests + (self.grant.requests - self.used_requests),
            remaining_tokens: s.remaining_tokens
                + self.grant.tokens.saturating_sub(self.used_tokens),
            ..s
        }
    }

    /// What goes back to the shared limiter when the lease ends.
    fn ended(self) -> (Reservation, Used) {
        (self.grant, Used { requests: self.used_requests, tokens: self.used_tokens })
    }
}

/// Ends the claim of a slot however the claiming request goes (a client that leaves drops its
/// future mid-claim): the waiters are told and may claim themselves.
struct Claiming<'a>(&'a Slot);

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner).claiming = false;
        self.0.claimed.notify_waiters();
    }
}

/// Give-backs waiting for the shared limiter, at most.
const MAX_QUEUED: usize = 100_000;

/// Give-backs sent in one call.
const FLUSH_CHUNK: usize = 1024;

/// The last millisecond of the UTC day `now_ms` is in: no lease outlives its day's quotas.
fn day_end_ms(now_ms: i64) -> i64 {
    let (_, _, to_midnight, _) = periods(now_ms);
    (now_ms.div_euclid(1000) + i64::try_from(to_midnight).unwrap_or(0)) * 1000 - 1
}

impl LeasedLimiter {
    pub fn new(inner: Arc<dyn RateLimiter>, config: LeaseConfig) -> Self {
        Self {
            inner,
            config,
            slots: RwLock::default(),
            outgoing: Mutex::default(),
            next_id: AtomicU64::new(1),
            stats: LeaseStats::default(),
        }
    }

    pub fn stats(&self) -> &LeaseStats {
        &self.stats
    }

    /// Requests and tokens this instance's live lease of `key` holds unused.
    pub fn held(&self, key: ApiKeyId) -> (u64, u64) {
        self.held_since(key).0
    }

    /// What [`LeasedLimiter::held`] says, and when the lease holding it was granted.
    pub fn held_since(&self, key: ApiKeyId) -> ((u64, u64), Option<i64>) {
        let slot = self.slots.read().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
        let Some(slot) = slot else { return ((0, 0), None) };
        let st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.lease.as_ref().map_or(((0, 0), None), |l| {
            let held =
                (l.grant.requests - l.used_requests, l.grant.tokens.saturating_sub(l.used_tokens));
            (held, Some(l.granted_ms))
        })
    }

    fn slot(&self, key: ApiKeyId) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return slot.clone();
        }
        self.slots.write().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().clone()
    }

    /// What the next lease of a key asks for.
    fn ask(&self, st: &SlotState, need: u64, now_ms: i64) -> Claim {
        let lease_ms = i64::try_from(self.config.duration.as_millis()).unwrap_or(i64::MAX);
        let busy = st.single_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < lease_ms);
        let wanted =
            if st.last_ran_out || busy { st.last_used.saturating_mul(2) } else { st.last_used };
        let requests = wanted.clamp(1, self.config.max_requests);
        let per_request = st.average_need.max(1);
        let end = |d: Duration| {
            now_ms
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .min(day_end_ms(now_ms))
        };
        let until = end(self.config.duration);
        Claim {
            ending: None,
            requests,
            tokens: requests.saturating_mul(per_request).max(need),
            need,
            until_ms: until,
            long_until_ms: end(self.config.long).max(until),
            share: self.config.share.max(1),
        }
    }

    /// Queues what goes back to the shared limiter. Beyond [`MAX_QUEUED`] (a shared limiter
    /// unreachable for long), the oldest are dropped and counted: a lost give-back only keeps
    /// budget counted that was not used (refusing early, never admitting more).
    fn queue(&self, items: impl IntoIterator<Item = (Reservation, Used)>) {
        let mut outgoing = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
        outgoing.extend(items);
        if outgoing.len() > MAX_QUEUED {
            let dropped = outgoing.len() - MAX_QUEUED;
            outgoing.drain(..dropped);
            self.stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Sends what is queued (and `more`) to the shared limiter, in calls of at most
    /// [`FLUSH_CHUNK`]; on a failure, what was not sent stays queued for the next flush.
    async fn flush(&self, more: Vec<(Reservation, Used)>) -> Result<(), LimitError> {
        self.queue(more);
        loop {
            let chunk: Vec<(Reservation, Used)> = {
                let mut outgoing = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
                let n = outgoing.len().min(FLUSH_CHUNK);
                outgoing.drain(..n).collect()
            };
            if chunk.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.inner.adjust(&chunk).await {
                let mut outgoing = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
                let rest = std::mem::take(&mut *outgoing);
                *outgoing = chunk;
                outgoing.extend(rest);
                return Err(e);
            }
        }
    }

    /// Ends the leases whose time is up and sends back their unused parts (and whatever else
    /// is queued); drops the slots of keys idle for a minute. Call it a few times a second.
    pub async fn expire(&self, now_ms: i64) -> Result<(), LimitError> {
        let mut ended = Vec::new();
        self.slots.write().unwrap_or_else(PoisonError::into_inner).retain(|_, slot| {
            let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.lease.as_ref().is_some_and(|l| now_ms >= l.until_ms) {
                let lease = st.lease.take().map(Lease::ended);
                if let Some((_, used)) = &lease {
                    st.last_used = used.requests;
                    st.last_ran_out = false;
                }
                ended.extend(lease);
            }
            let idle = st.lease.is_none() && !st.claiming && now_ms - st.touched_ms > 60_000;
            !idle || Arc::strong_count(slot) > 1
        });
        self.stats.returned.fetch_add(ended.len() as u64, Ordering::Relaxed);
        self.flush(ended).await
    }

    /// Ends every lease now and sends back what they hold unused (at shutdown).
    pub async fn release_all(&self) -> Result<(), LimitError> {
        let mut ended = Vec::new();
        for slot in self.slots.read().unwrap_or_else(PoisonError::into_inner).values() {
            let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            ended.extend(st.lease.take().map(Lease::ended));
        }
        self.stats.returned.fetch_add(ended.len() as u64, Ordering::Relaxed);
        self.flush(ended).await
    }
}

#[async_trait]
impl RateLimiter for LeasedLimiter {
    /// Admits one request needing `claim.need` tokens: from the key's lease when it covers it,
    /// otherwise through a new lease (one call; requests arriving meanwhile wait for it).
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        let need = claim.need;
        let slot = self.slot(who.key);
        let (ask, guard) = loop {
            let waiting = {
                let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.touched_ms = now_ms;
                st.average_need =
                    if st.average_need == 0 { need } else { (st.average_need * 7 + need) / 8 };
                if let Some((reservation, snapshot)) =
                    st.lease.as_mut().and_then(|l| l.take(who, need, now_ms))
                {
                    self.stats.local.fetch_add(1, Ordering::Relaxed);
                    return Ok(Decision::Allowed { reservation, snapshot });
                }
                if st.claiming {
                    let waiting = slot.claimed.notified();
                    Some(waiting)
                } else {
                    st.claiming = true;
                    let ending = st.lease.take().map(|lease| {
                        st.last_used = lease.used_requests;
                        st.last_ran_out = now_ms < lease.until_ms && lease.who == *who;
                        st.single_at_ms = None;
                        self.stats.returned.fetch_add(1, Ordering::Relaxed);
                        lease.ended()
                    });
                    let mut ask = self.ask(&st, need, now_ms);
                    match ending {
                        // Given back in the same step as the new claim.
                        Some(e) if e.0.day == periods(now_ms).0 => ask.ending = Some(e),
                        // Yesterday's quotas: a call of its own.
                        Some(e) => self.queue([e]),
                        None => {}
                    }
                    break (ask, Claiming(&slot));
                }
            };
            if let Some(waiting) = waiting {
                waiting.await;
            }
        };
        self.stats.claims.fetch_add(1, Ordering::Relaxed);
        let decision = self.inner.claim(who, &ask, now_ms).await;
        let Ok(Decision::Allowed { reservation, snapshot }) = decision else {
            drop(guard);
            return decision;
        };
        if (reservation.requests, reservation.tokens) == (1, need) {
            // A plain reservation: nothing left to lease. A key asked again within a lease's
            // time grows into leases.
            let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.last_used = 1;
            st.last_ran_out = false;
            st.single_at_ms = Some(now_ms);
            drop(st);
            drop(guard);
            return Ok(Decision::Allowed { reservation, snapshot });
        }
        // Counted in its long end's second (not also the short end's): the shared limiter found
        // it small enough to last.
        let long_second = ask.long_until_ms.div_euclid(1000);
        let until_ms =
            if reservation.second == long_second && long_second != ask.until_ms.div_euclid(1000) {
                self.stats.long.fetch_add(1, Ordering::Relaxed);
                ask.long_until_ms
            } else {
                ask.until_ms
            };
        let lease = Lease {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            grant: reservation,
            who: *who,
            granted_ms: now_ms,
            until_ms,
            used_requests: 1,
            used_tokens: need,
            snapshot,
        };
        let (reservation, snapshot) = (lease.admitted(need), lease.view());
        let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = st.lease.replace(lease) {
            // Cannot happen while this request claims; never lose one anyway.
            self.queue([old.ended()]);
        }
        drop(st);
        drop(guard);
        Ok(Decision::Allowed { reservation, snapshot })
    }

    /// A request admitted under the key's live lease settles in it: a lock, no I/O.
    fn settle_in_place(&self, r: &Reservation, actual_tokens: u64) -> bool {
        r.lease != 0
            && self.settle_in_lease(r, &Used { requests: r.requests, tokens: actual_tokens })
    }

    /// Settlements of requests whose lease lives stay in the lease; the others go to the
    /// shared limiter (the unused parts of ended leases go with [`LeasedLimiter::expire`]).
    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
        let forward: Vec<(Reservation, Used)> = used
            .iter()
            .filter(|(r, u)| r.lease == 0 || !self.settle_in_lease(r, u))
            .copied()
            .collect();
        if forward.is_empty() {
            return Ok(());
        }
        self.inner.adjust(&forward).await
    }
}

impl LeasedLimiter {
    /// Replaces a request's estimate with its real tokens inside its lease, if that lease is
    /// still the key's live one.
    fn settle_in_lease(&self, r: &Reservation, used: &Used) -> bool {
        let slot = self.slots.read().unwrap_or_else(PoisonError::into_inner).get(&r.key).cloned();
        let Some(slot) = slot else { return false };
        let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.lease.as_mut() {
            Some(lease) if lease.id == r.lease => {
                lease.used_tokens = (lease.used_tokens + used.tokens).saturating_sub(r.tokens);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::InMemoryLimiter;
    use gateway_core::{Limits, UserId};
    use std::sync::atomic::AtomicBool;

    /// The in-memory limiter, whose `adjust` can be made to fail, counting the calls it gets.
    #[derive(Default)]
    struct Flaky {
        inner: InMemoryLimiter,
        down: AtomicBool,
        calls: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl RateLimiter for Flaky {
        async fn claim(&self, who: &Subject, c: &Claim, now: i64) -> Result<Decision, LimitError> {
            self.inner.claim(who, c, now).await
        }

        async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
            self.calls.lock().unwrap().push(used.len());
            if self.down.load(Ordering::Relaxed) {
                return Err(LimitError::Unavailable("down".into()));
            }
            self.inner.adjust(used).await
        }
    }

    const T0: i64 = 1_800_000_000_000;

    fn who() -> Subject {
        let limits =
            Limits { rpm: 1 << 40, tpm: 1 << 40, daily_tokens: 1 << 40, monthly_tokens: 1 << 40 };
        Subject { key: ApiKeyId::new(), user: UserId::new(), limits, ceiling: 1 << 40 }
    }

    /// Gives `l` a live lease for a fresh key (a second request asks for two).
    async fn leased(l: &LeasedLimiter) -> Subject {
        let w = who();
        for _ in 0..2 {
            assert!(matches!(l.reserve(&w, 1, T0).await.unwrap(), Decision::Allowed { .. }));
        }
        assert!(l.held(w.key).0 > 0, "a lease with requests to spare");
        w
    }

    #[tokio::test]
    async fn give_backs_go_in_bounded_calls_and_wait_out_an_outage() {
        let shared = Arc::new(Flaky::default());
        let l = LeasedLimiter::new(shared.clone(), LeaseConfig::default());
        let mut keys = Vec::new();
        for _ in 0..2500 {
            keys.push(leased(&l).await);
        }
        shared.calls.lock().unwrap().clear();
        shared.down.store(true, Ordering::Relaxed);
        let later = T0 + 60_000;
        assert!(l.expire(later).await.is_err());
        assert_eq!(*shared.calls.lock().unwrap(), vec![FLUSH_CHUNK], "stops at the first failure");
        assert_eq!(l.outgoing.lock().unwrap().len(), 2500, "nothing lost");
        shared.down.store(false, Ordering::Relaxed);
        shared.calls.lock().unwrap().clear();
        l.expire(later + 250).await.unwrap();
        assert_eq!(*shared.calls.lock().unwrap(), vec![FLUSH_CHUNK, FLUSH_CHUNK, 452]);
        assert!(l.outgoing.lock().unwrap().is_empty());
        assert!(keys.iter().all(|w| l.held(w.key) == (0, 0)));
        // Settlements never carry the give-back queue.
        shared.calls.lock().unwrap().clear();
        let w = leased(&l).await;
        let r = match l.reserve(&w, 5, T0).await.unwrap() {
            Decision::Allowed { reservation, .. } => reservation,
            other @ Decision::Refused { .. } => panic!("{other:?}"),
        };
        l.settle(&r, 1).await.unwrap();
        assert!(shared.calls.lock().unwrap().is_empty(), "settled inside the live lease");
    }

    #[tokio::test]
    async fn only_a_live_lease_settles_in_place() {
        let shared = Arc::new(Flaky::default());
        let l = LeasedLimiter::new(shared.clone(), LeaseConfig::default());
        let w = leased(&l).await;
        let r = match l.reserve(&w, 5, T0).await.unwrap() {
            Decision::Allowed { reservation, .. } => reservation,
            other @ Decision::Refused { .. } => panic!("{other:?}"),
        };
        assert_ne!(r.lease, 0, "admitted under the lease");
        let held = l.held(w.key).1;
        shared.calls.lock().unwrap().clear();
        assert!(l.settle_in_place(&r, 1), "the live lease takes it");
        assert_eq!(l.held(w.key).1, held + 4, "the 4 tokens not used are the lease's again");
        assert!(shared.calls.lock().unwrap().is_empty(), "nothing sent");
        assert!(!l.settle_in_place(&Reservation { lease: 0, ..r }, 1), "no lease: not here");
        l.expire(T0 + 60_000).await.unwrap();
        assert!(!l.settle_in_place(&r, 1), "an ended lease: the shared limiter's");
    }

    #[tokio::test]
    async fn a_queue_the_shared_limiter_cannot_take_is_bounded() {
        let shared = Arc::new(Flaky::default());
        let l = LeasedLimiter::new(shared.clone(), LeaseConfig::default());
        let w = leased(&l).await;
        let grant = Reservation {
            key: w.key,
            user: w.user,
            requests: 2,
            tokens: 2,
            second: T0 / 1000,
            day: 20_270_115,
            month: 202_701,
            fallback: false,
            lease: 0,
        };
        l.queue(std::iter::repeat_n((grant, Used { requests: 1, tokens: 1 }), MAX_QUEUED + 10));
        assert_eq!(l.outgoing.lock().unwrap().len(), MAX_QUEUED);
        assert_eq!(l.stats().dropped.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn only_a_small_lease_outlives_its_short_end() {
        let shared = Arc::new(Flaky::default());
        let config = LeaseConfig { share: 2, ..LeaseConfig::default() };
        assert_eq!(
            (config.duration, config.long),
            (Duration::from_secs(2), Duration::from_secs(10))
        );
        let (a, b) =
            (LeasedLimiter::new(shared.clone(), config), LeasedLimiter::new(shared, config));
        let limits =
            Limits { rpm: 1000, tpm: 1 << 40, daily_tokens: 1 << 40, monthly_tokens: 1 << 40 };
        let w = Subject { key: ApiKeyId::new(), user: UserId::new(), limits, ceiling: 1 << 40 };
        // A's leases double as they run out: 2, 4, 8 and 16 are at most 1/(2 × 16) of what
        // remains, so they may last 10 s; 32 is not (32 × 32 > 969 left): 2 s.
        for _ in 0..32 {
            assert!(matches!(a.reserve(&w, 1, T0).await.unwrap(), Decision::Allowed { .. }));
        }
        assert_eq!(a.stats().long.load(Ordering::Relaxed), 4);
        assert_eq!(a.held(w.key).0, 31, "the lease of 32, one used");
        // B's lease of two is small: it lives past the short end, to the long one.
        for _ in 0..2 {
            assert!(matches!(b.reserve(&w, 1, T0).await.unwrap(), Decision::Allowed { .. }));
        }
        assert_eq!(b.held(w.key).0, 1);
        for l in [&a, &b] {
            l.expire(T0 + 2000).await.unwrap();
        }
        assert_eq!(a.held(w.key), (0, 0), "the large lease ended at its short end");
        assert_eq!(b.held(w.key).0, 1, "the small one lives on");
        // A burst on A is refused with B holding one request, well within the long leases'
        // bound (1000 / 32 = 31 for the one other instance).
        let mut admitted = 0;
        while let Decision::Allowed { .. } = a.reserve(&w, 1, T0 + 2500).await.unwrap() {
            admitted += 1;
        }
        // 1000 less A's 32 and B's 3 counted before (B's unused one among them).
        assert_eq!(admitted, 1000 - 32 - 3);
        assert_eq!(b.held_since(w.key).1, Some(T0), "granted at the start");
        b.expire(T0 + 9999).await.unwrap();
        assert_eq!(b.held(w.key).0, 1);
        b.expire(T0 + 10_000).await.unwrap();
        assert_eq!(b.held(w.key), (0, 0), "given back at its long end");
    }

    #[tokio::test]
    async fn a_key_too_slow_for_its_lease_falls_back_to_plain_reservations() {
        let shared = Arc::new(Flaky::default());
        let l = LeasedLimiter::new(shared.clone(), LeaseConfig::default());
        let w = who();
        // One request every three seconds: each lease of two expires with one unused.
        let mut t = T0;
        for _ in 0..6 {
            assert!(matches!(l.reserve(&w, 1, t).await.unwrap(), Decision::Allowed { .. }));
            t += 3000;
            l.expire(t).await.unwrap();
        }
        assert_eq!(l.held(w.key), (0, 0));
        assert_eq!(l.stats().returned.load(Ordering::Relaxed), 0, "no lease to give back");
        assert_eq!(l.stats().claims.load(Ordering::Relaxed), 6, "a plain reservation each");
        // Requests close together grow into leases.
        for _ in 0..8 {
            assert!(matches!(l.reserve(&w, 1, t).await.unwrap(), Decision::Allowed { .. }));
        }
        assert!(l.stats().local.load(Ordering::Relaxed) >= 4, "{:?}", l.stats());
    }
}
