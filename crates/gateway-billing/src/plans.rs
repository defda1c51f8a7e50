//! Where plans are kept (the [`PlanStore`] port) and [`Plans`], the plans in memory for the
//! request path, reloaded after a change; and what a plan lets a user spend in a month
//! ([`monthly_ceiling`]).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use gateway_core::{Plan, PlanSource, Tier};

/// Tokens that stand for "no ceiling" (2^53: exact in every counter, Lua's included).
pub const UNLIMITED_TOKENS: u64 = 1 << 53;

/// Errors of a plan store.
#[derive(Debug, thiserror::Error)]
pub enum PlanStoreError {
    #[error("plan store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Changes an admin makes to a plan; `None` leaves a field as it is. The overage rate is
/// `Some(None)` to stop requests at the included tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanUpdate {
    pub name: Option<String>,
    pub price_monthly_micros: Option<i64>,
    pub included_tokens: Option<u64>,
    pub overage_micros_per_1k: Option<Option<i64>>,
    pub max_api_keys: Option<u32>,
    pub retention_days: Option<u32>,
    pub rate_limit_rpm: Option<u64>,
    pub rate_limit_tpm: Option<u64>,
    pub quota_daily: Option<u64>,
    pub quota_monthly: Option<u64>,
}

/// Why a plan update was refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPlan {
    pub field: &'static str,
    pub reason: &'static str,
}

impl PlanUpdate {
    /// The plan with this update applied, or the first field that makes it invalid.
    pub fn apply(&self, plan: &Plan) -> Result<Plan, InvalidPlan> {
        let bad = |field, reason| Err(InvalidPlan { field, reason });
        let mut p = plan.clone();
        if let Some(name) = &self.name {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                return bad("name", "must be 1 to 100 characters");
            }
            name.clone_into(&mut p.name);
        }
        if let Some(v) = self.price_monthly_micros {
            if v < 0 {
                return bad("price_monthly_micros", "must not be negative");
            }
            p.price_monthly_micros = v;
        }
        if let Some(v) = self.included_tokens {
            if v >= UNLIMITED_TOKENS {
                return bad("included_tokens", "is too large");
            }
            p.included_tokens = v;
        }
        if let Some(v) = self.overage_micros_per_1k {
            if v.is_some_and(|r| r < 0) {
                return bad("overage_micros_per_1k", "must not be negative");
            }
            p.overage_micros_per_1k = v;
        }
        if let Some(v) = self.max_api_keys {
            if v == 0 || v > 100_000 {
                return bad("max_api_keys", "must be 1 to 100000");
            }
            p.max_api_keys = v;
        }
        if let Some(v) = self.retention_days {
            if v == 0 || v > 3650 {
                return bad("retention_days", "must be 1 to 3650");
            }
            p.retention_days = v;
        }
        let limits = [
            ("rate_limit_rpm", self.rate_limit_rpm, &mut p.limits.rpm),
            ("rate_limit_tpm", self.rate_limit_tpm, &mut p.limits.tpm),
            ("quota_daily", self.quota_daily, &mut p.limits.daily_tokens),
            ("quota_monthly", self.quota_monthly, &mut p.limits.monthly_tokens),
        ];
        for (field, value, slot) in limits {
            if let Some(v) = value {
                if v == 0 || v >= UNLIMITED_TOKENS {
                    return bad(field, "must be at least 1 and below 2^53");
                }
                *slot = v;
            }
        }
        Ok(p)
    }
}

/// The `billing_plans` table behind a port.
#[async_trait]
pub trait PlanStore: Send + Sync {
    /// Every stored plan (a tier with no row gets its default plan).
    async fn list_plans(&self) -> Result<Vec<Plan>, PlanStoreError>;

    /// Stores `plan` as its tier's plan.
    async fn save_plan(&self, plan: &Plan) -> Result<(), PlanStoreError>;
}

/// Plans in process memory, starting from the defaults.
#[derive(Debug)]
pub struct InMemoryPlanStore {
    plans: Mutex<Vec<Plan>>,
}

impl Default for InMemoryPlanStore {
    fn default() -> Self {
        Self { plans: Mutex::new(Tier::ALL.iter().map(|t| t.default_plan()).collect()) }
    }
}

#[async_trait]
impl PlanStore for InMemoryPlanStore {
    async fn list_plans(&self) -> Result<Vec<Plan>, PlanStoreError> {
        Ok(self.plans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    async fn save_plan(&self, plan: &Plan) -> Result<(), PlanStoreError> {
        let mut plans = self.plans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        plans.retain(|p| p.tier != plan.tier);
        plans.push(plan.clone());
        Ok(())
    }
}

/// The plans of a running gateway, read from memory on every request.
pub struct Plans {
    store: Arc<dyn PlanStore>,
    /// Indexed by [`tier_index`].
    current: ArcSwap<[Arc<Plan>; 4]>,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plans").field("current", &self.current.load()).finish_non_exhaustive()
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Free => 0,
        Tier::Starter => 1,
        Tier::Pro => 2,
        Tier::Enterprise => 3,
    }
}

fn defaults() -> [Arc<Plan>; 4] {
    [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise].map(|t| Arc::new(t.default_plan()))
}

impl Plans {
    /// The default plans until [`Plans::reload`].
    pub fn new(store: Arc<dyn PlanStore>) -> Self {
        Self { store, current: ArcSwap::from_pointee(defaults()) }
    }

    /// Reads every plan from the store into memory.
    pub async fn reload(&self) -> Result<(), PlanStoreError> {
        let mut plans = defaults();
        for plan in self.store.list_plans().await? {
            let i = tier_index(plan.tier);
            plans[i] = Arc::new(plan);
        }
        self.current.store(Arc::new(plans));
        Ok(())
    }

    /// Every plan, cheapest tier first.
    pub fn all(&self) -> Vec<Arc<Plan>> {
        self.current.load().to_vec()
    }

    /// Applies an admin's update to a tier's plan, stores it and reloads; returns the plan.
    pub async fn update(&self, tier: Tier, update: &PlanUpdate) -> Result<Plan, UpdatePlanError> {
        self.reload().await?;
        let plan = update.apply(&self.plan(tier))?;
        self.store.save_plan(&plan).await?;
        self.reload().await?;
        Ok(plan)
    }
}

/// Why [`Plans::update`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdatePlanError {
    #[error(transparent)]
    Invalid(#[from] InvalidPlan),
    #[error(transparent)]
    Store(#[from] PlanStoreError),
}

impl PlanSource for Plans {
    fn plan(&self, tier: Tier) -> Arc<Plan> {
        self.current.load()[tier_index(tier)].clone()
    }
}

/// What stops a user's tokens in a month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeilingKind {
    /// The plan's included tokens: a plan without overage, or a spend cap of zero.
    Included,
    /// The included tokens plus the overage the user's spend cap pays for.
    SpendCap { cap_micros: i64 },
    /// No ceiling (overage at no charge).
    Unlimited,
}

/// The most tokens a user may use in a calendar month, across all keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceiling {
    pub tokens: u64,
    pub kind: CeilingKind,
}

/// The spend cap that applies: the user's own, or the plan's monthly price.
pub fn effective_cap(plan: &Plan, cap: Option<i64>) -> i64 {
    cap.unwrap_or(plan.price_monthly_micros).max(0)
}

/// The user's ceiling under `plan` with spend cap `cap` (`None`: the plan's price): the
/// included tokens, plus as many overage tokens as the cap pays for at the plan's rate
/// (rounded down, so the overage billed never exceeds the cap).
pub fn monthly_ceiling(plan: &Plan, cap: Option<i64>) -> Ceiling {
    let included = plan.included_tokens.min(UNLIMITED_TOKENS);
    let Some(rate) = plan.overage_micros_per_1k else {
        return Ceiling { tokens: included, kind: CeilingKind::Included };
    };
    let cap_micros = effective_cap(plan, cap);
    if cap_micros == 0 {
        return Ceiling { tokens: included, kind: CeilingKind::Included };
    }
    if rate <= 0 {
        return Ceiling { tokens: UNLIMITED_TOKENS, kind: CeilingKind::Unlimited };
    }
    let overage = i128::from(cap_micros) * 1000 / i128::from(rate);
    let tokens = (i128::from(included) + overage).min(i128::from(UNLIMITED_TOKENS));
    Ceiling {
        tokens: u64::try_from(tokens).unwrap_or(UNLIMITED_TOKENS),
        kind: CeilingKind::SpendCap { cap_micros },
    }
}

/// What `tokens` beyond the included ones cost at `rate` micro-dollars per 1,000: exact,
/// rounded half up once (the rule of `cost_micros`).
pub fn overage_micros(tokens: u64, rate_per_1k: i64) -> i64 {
    let exact = i128::from(tokens) * i128::from(rate_per_1k);
    i64::try_from((exact + 500) / 1000).unwrap_or(i64::MAX)
}

/// The contract of every [`PlanStore`] adapter.
#[cfg(any(test, feature = "test-util"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance {
    use super::{PlanStore, Tier};

    pub async fn plan_store_contract(store: &dyn PlanStore) {
        let plans = store.list_plans().await.unwrap();
        for tier in Tier::ALL {
            let stored = plans.iter().find(|p| p.tier == *tier).expect("every tier has a plan");
            assert_eq!(*stored, tier.default_plan(), "{tier} starts as the seeded plan");
        }
        let mut pro = Tier::Pro.default_plan();
        pro.price_monthly_micros = 149_000_000;
        pro.overage_micros_per_1k = None;
        pro.limits.rpm = 321;
        store.save_plan(&pro).await.unwrap();
        let again = store.list_plans().await.unwrap();
        assert_eq!(again.iter().find(|p| p.tier == Tier::Pro), Some(&pro));
        assert_eq!(again.iter().filter(|p| p.tier == Tier::Pro).count(), 1);
        store.save_plan(&Tier::Pro.default_plan()).await.unwrap();
    }

    #[cfg(test)]
    #[tokio::test]
    async fn the_in_memory_store_meets_the_contract() {
        plan_store_contract(&super::InMemoryPlanStore::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_follow_the_plan_and_the_cap() {
        let free = Tier::Free.default_plan();
        assert_eq!(
            monthly_ceiling(&free, None),
            Ceiling { tokens: 10_000, kind: CeilingKind::Included }
        );
        assert_eq!(monthly_ceiling(&free, Some(50_000_000)).tokens, 10_000, "no overage on free");
        let starter = Tier::Starter.default_plan();
        // $29 at $0.002 per 1K tokens pays for 14.5M tokens beyond the 500K included.
        assert_eq!(
            monthly_ceiling(&starter, None),
            Ceiling { tokens: 15_000_000, kind: CeilingKind::SpendCap { cap_micros: 29_000_000 } }
        );
        assert_eq!(monthly_ceiling(&starter, Some(0)).tokens, 500_000);
        // Rounded down: 3 micro-dollars at 2 per token pay for one token, not one and a half.
        assert_eq!(monthly_ceiling(&starter, Some(3)).tokens, 500_001);
        let mut free_overage = starter.clone();
        free_overage.overage_micros_per_1k = Some(0);
        assert_eq!(monthly_ceiling(&free_overage, None).kind, CeilingKind::Unlimited);
    }

    #[test]
    fn overage_billed_at_the_ceiling_never_exceeds_the_cap() {
        for (rate, cap) in
            [(2_000, 29_000_000), (1_500, 99_000_000), (1_500, 7), (3, 1), (999, 1_000_001)]
        {
            let mut plan = Tier::Starter.default_plan();
            plan.overage_micros_per_1k = Some(rate);
            let c = monthly_ceiling(&plan, Some(cap));
            let over = c.tokens - plan.included_tokens;
            assert!(overage_micros(over, rate) <= cap, "rate {rate} cap {cap}");
            let one_more = i128::from(over + 1) * i128::from(rate);
            assert!(one_more > i128::from(cap) * 1000, "one more token would pass the cap");
        }
        assert_eq!(overage_micros(1_500, 1_500), 2_250);
        assert_eq!(overage_micros(1, 1_500), 2, "1.5 rounds half up");
        assert_eq!(overage_micros(1, 1_400), 1);
    }

    #[test]
    fn updates_are_checked_field_by_field() {
        let plan = Tier::Starter.default_plan();
        let up = PlanUpdate { price_monthly_micros: Some(-1), ..Default::default() };
        assert_eq!(up.apply(&plan).unwrap_err().field, "price_monthly_micros");
        let up = PlanUpdate { max_api_keys: Some(0), ..Default::default() };
        assert_eq!(up.apply(&plan).unwrap_err().field, "max_api_keys");
        let up = PlanUpdate {
            overage_micros_per_1k: Some(None),
            included_tokens: Some(42),
            ..Default::default()
        };
        let p = up.apply(&plan).unwrap();
        assert_eq!((p.overage_micros_per_1k, p.included_tokens), (None, 42));
    }

    #[tokio::test]
    async fn an_update_applies_to_the_tier_at_once() {
        let plans = Plans::new(Arc::new(InMemoryPlanStore::default()));
        plans.reload().await.unwrap();
        assert_eq!(plans.plan(Tier::Starter).price_monthly_micros, 29_000_000);
        let up = PlanUpdate { price_monthly_micros: Some(39_000_000), ..Default::default() };
        plans.update(Tier::Starter, &up).await.unwrap();
        assert_eq!(plans.plan(Tier::Starter).price_monthly_micros, 39_000_000);
        assert_eq!(plans.plan(Tier::Pro).price_monthly_micros, 99_000_000);
    }
}
