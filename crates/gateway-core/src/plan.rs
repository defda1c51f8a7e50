//! Subscription plans: what each tier costs, includes and allows. Plans are data (admins edit
//! them and a change applies to every user of the tier); [`Tier::default_plan`] is the table
//! a new installation starts from, the original product's numbers.

use std::sync::Arc;

use serde::Serialize;

use crate::domain::{Limits, Tier};

/// One tier's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub tier: Tier,
    pub name: String,
    /// The monthly fee, in micro-dollars.
    pub price_monthly_micros: i64,
    /// Tokens a user may use each calendar month (UTC), across all their keys, for the fee.
    pub included_tokens: u64,
    /// What 1,000 tokens beyond the included ones cost, in micro-dollars; `None`: there is
    /// no overage, requests stop at the included tokens.
    pub overage_micros_per_1k: Option<i64>,
    /// How many API keys a user may hold.
    pub max_api_keys: u32,
    /// Days of usage history kept for the user's analytics.
    pub retention_days: u32,
    /// Every key's default limits (a key may lower them; an admin may raise them).
    #[serde(flatten)]
    pub limits: Limits,
}

impl Plan {
    /// The most a user may set as their own spend cap: ten times the monthly price (an admin
    /// may set any).
    pub fn max_user_cap_micros(&self) -> i64 {
        self.price_monthly_micros.saturating_mul(10)
    }
}

impl Tier {
    /// The plan a new installation is seeded with.
    pub fn default_plan(self) -> Plan {
        let (price, included, overage, max_keys, retention) = match self {
            Tier::Free => (0, 10_000, None, 1, 7),
            Tier::Starter => (29_000_000, 500_000, Some(2_000), 5, 30),
            Tier::Pro => (99_000_000, 2_000_000, Some(1_500), 20, 90),
            Tier::Enterprise => (499_000_000, 10_000_000, Some(1_000), 100, 365),
        };
        Plan {
            tier: self,
            name: self.display_name().to_owned(),
            price_monthly_micros: price,
            included_tokens: included,
            overage_micros_per_1k: overage,
            max_api_keys: max_keys,
            retention_days: retention,
            limits: self.limits(),
        }
    }
}

/// Where the current plans are read from (in memory: this is called on every request).
pub trait PlanSource: Send + Sync + std::fmt::Debug {
    fn plan(&self, tier: Tier) -> Arc<Plan>;
}

/// The seeded plans, for embedders and tests that keep no plans of their own.
#[derive(Debug)]
pub struct DefaultPlans(Vec<Arc<Plan>>);

impl Default for DefaultPlans {
    fn default() -> Self {
        Self(Tier::ALL.iter().map(|t| Arc::new(t.default_plan())).collect())
    }
}

impl PlanSource for DefaultPlans {
    fn plan(&self, tier: Tier) -> Arc<Plan> {
        match self.0.iter().find(|p| p.tier == tier) {
            Some(p) => p.clone(),
            None => Arc::new(tier.default_plan()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeded_plans_are_the_original_products() {
        let rows: Vec<(Tier, i64, u64, Option<i64>, u32, u32)> = vec![
            (Tier::Free, 0, 10_000, None, 1, 7),
            (Tier::Starter, 29_000_000, 500_000, Some(2_000), 5, 30),
            (Tier::Pro, 99_000_000, 2_000_000, Some(1_500), 20, 90),
            (Tier::Enterprise, 499_000_000, 10_000_000, Some(1_000), 100, 365),
        ];
        for (tier, price, included, overage, keys, retention) in rows {
            let p = DefaultPlans::default().plan(tier);
            assert_eq!(
                (
                    p.price_monthly_micros,
                    p.included_tokens,
                    p.overage_micros_per_1k,
                    p.max_api_keys,
                    p.retention_days
                ),
                (price, included, overage, keys, retention),
                "{tier}"
            );
            assert_eq!(p.limits, tier.limits());
        }
    }
}
