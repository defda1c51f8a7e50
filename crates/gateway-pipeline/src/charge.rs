//! The one rule that decides what a request is charged, whichever way it ends.

use gateway_core::Usage;

/// How a forwarded request ended, as far as charging goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Nothing was served: the gateway refused the request, no upstream answered, or the
    /// upstream answered with an error status.
    NothingServed,
    /// The upstream served an answer or a stream, whole or cut short (by the upstream or by a
    /// client that left): `reported` is the usage the upstream sent, if it did; `generated` the
    /// completion tokens counted from what was relayed, for when it did not.
    Served { reported: Option<Usage>, generated: u64 },
}

/// What a request is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The usage recorded (and billed); `None` when nothing was served.
    pub usage: Option<Usage>,
    /// The tokens the limiter's reservation settles to.
    pub tokens: u64,
    /// The usage is the gateway's estimate, not the upstream's report.
    pub estimated: bool,
}

/// The charge of a request that ended as `ending`, its prompt estimated at `prompt_estimate`
/// tokens: nothing when nothing was served; otherwise the usage the upstream reported, or, when
/// it reported none, the prompt estimate plus everything generated (content, reasoning,
/// refusals, tool calls: see `gateway_proxy::estimate`), so a missing report is never free.
pub fn charge(ending: Ending, prompt_estimate: u64) -> Charge {
    match ending {
        Ending::NothingServed => Charge { usage: None, tokens: 0, estimated: false },
        Ending::Served { reported: Some(usage), .. } => {
            Charge { usage: Some(usage), tokens: usage.total(), estimated: false }
        }
        Ending::Served { reported: None, generated } => {
            let usage = Usage::new(prompt_estimate, generated);
            Charge { usage: Some(usage), tokens: usage.total(), estimated: true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_served_costs_nothing() {
        assert_eq!(
            charge(Ending::NothingServed, 500),
            Charge { usage: None, tokens: 0, estimated: false }
        );
    }

    #[test]
    fn reported_usage_is_charged_as_reported() {
        let reported = Usage { total_tokens: 0, ..Usage::new(12, 30) };
        let c = charge(Ending::Served { reported: Some(reported), generated: 999 }, 500);
        assert_eq!(c.usage, Some(reported));
        assert_eq!(c.tokens, 42);
        assert!(!c.estimated);
    }

    #[test]
    fn missing_usage_is_charged_the_estimate() {
        let c = charge(Ending::Served { reported: None, generated: 7 }, 20);
        assert_eq!(c.usage, Some(Usage::new(20, 7)));
        assert_eq!(c.tokens, 27);
        assert!(c.estimated);
    }
}
