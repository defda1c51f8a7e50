//! The audit log: who did what to what, when, from where, and how it ended, for every security-
//! or money-relevant action (sign-ins, password and session changes, keys, admin changes to
//! users, servers, plans, prices, credits, codes and invoices, payment webhooks).
//!
//! Entries are appended and read, never changed: the port has no update or delete, and the
//! database refuses both (triggers). No entry holds a secret: targets are ids or an email,
//! details are short notes chosen by the code, never request content.

use async_trait::async_trait;
use gateway_core::{RequestId, UserId};
use serde::Serialize;
use time::OffsetDateTime;

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It was done.
    Ok,
    /// It was refused: not signed in, not allowed, throttled, a bad signature.
    Refused,
    /// It failed on its input or on the gateway.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Outcome::Ok),
            "refused" => Some(Outcome::Refused),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Time-ordered (UUID v7): the cursor of the pages.
    pub id: uuid::Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The signed-in user who acted (none: an anonymous sign-in attempt, a webhook).
    pub actor_id: Option<UserId>,
    /// What was done, as `area.verb` (`auth.login`, `key.revoke`, `admin.price.add`, ...).
    pub action: String,
    /// What it was done to: `user:<id>`, `email:<address>`, `key:<id>`, `server:<id>`, ...
    pub target: Option<String>,
    pub outcome: Outcome,
    /// The status of the answer (HTTP's, as the edge that recorded it saw it).
    pub status: u16,
    /// The client's address.
    pub source_ip: Option<String>,
    pub request_id: RequestId,
    /// A short note chosen by the code (never request content).
    pub detail: Option<String>,
}

/// Which entries to read, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries by this actor...
    pub actor_id: Option<UserId>,
    /// ...or, with `actor_id`, about one of these targets too (a user's own activity: what
    /// they did and what was done to their account).
    pub or_targets: Vec<String>,
    /// Actions starting with this (`auth.`, `admin.price`).
    pub action_prefix: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Entries older than this one (the previous page's last id).
    pub before: Option<uuid::Uuid>,
    pub limit: u32,
}

/// The audit log's storage: append and read, nothing else.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn append(&self, entry: &AuditEntry) -> Result<(), crate::AuthError>;
    async fn list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, crate::AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_names() {
        for o in [Outcome::Ok, Outcome::Refused, Outcome::Failed] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
