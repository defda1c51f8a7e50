//! Redemption codes: credits an admin hands out as a code (single- or multi-use, optionally
//! expiring) that users redeem into their ledger. A use is taken by one conditional update, so
//! two users racing for the last use of a code cannot both get it; a user redeems a code once.

use async_trait::async_trait;
use gateway_core::{CodeId, UserId};
use serde::Serialize;
use time::OffsetDateTime;

use crate::ledger::LedgerEntry;

/// A code as admins see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Code {
    pub id: CodeId,
    pub code: String,
    pub credits_micros: i64,
    pub max_uses: u32,
    pub uses: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Deleted by an admin: it redeems no more.
    pub revoked: bool,
}

/// A code to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCode {
    /// `None`: a random one (`BM-` and 16 characters).
    pub code: Option<String>,
    pub credits_micros: i64,
    pub max_uses: u32,
    pub expires_at: Option<OffsetDateTime>,
}

/// Why a code was not redeemed (or created).
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    #[error("no such code")]
    Unknown,
    #[error("the code has expired")]
    Expired,
    #[error("the code has been used up")]
    UsedUp,
    #[error("you have redeemed this code already")]
    AlreadyRedeemed,
    #[error("a code with this text exists")]
    Taken,
    #[error("code store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Codes are compared in upper case without surrounding spaces.
pub fn normalize(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// Checks a code to create, filling in a random text when none is given.
pub fn prepare(new: &NewCode, now: OffsetDateTime) -> Result<NewCode, CodeError> {
    let bad = |field, reason| Err(CodeError::Invalid { field, reason });
    if new.credits_micros <= 0 {
        return bad("credits_micros", "must be positive");
    }
    if new.max_uses == 0 || new.max_uses > 1_000_000 {
        return bad("max_uses", "must be 1 to 1000000");
    }
    if new.expires_at.is_some_and(|t| t <= now) {
        return bad("expires_at", "must be in the future");
    }
    let code = match &new.code {
        Some(c) => {
            let c = normalize(c);
            let ok = (6..=64).contains(&c.len())
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !ok {
                return bad("code", "must be 6 to 64 letters, digits, '-' or '_'");
            }
            c
        }
        None => {
            let random = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase();
            format!("BM-{}", &random[..16])
        }
    };
    Ok(NewCode { code: Some(code), ..new.clone() })
}

/// The `redemption_codes` table behind a port.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Stores a prepared code.
    async fn create(&self, new: &NewCode, now: OffsetDateTime) -> Result<Code, CodeError>;

    /// Every code, newest first.
    async fn list(&self) -> Result<Vec<Code>, CodeError>;

    /// Stops a code from redeeming; `false` when there is no such code.
    async fn revoke(&self, id: CodeId, now: OffsetDateTime) -> Result<bool, CodeError>;

    /// Takes one use of `code` for `user` and adds its credits to the user's ledger, in one
    /// transaction.
    async fn redeem(
        &self,
        code: &str,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<LedgerEntry, CodeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked_and_random_ones_well_formed() {
        let now = OffsetDateTime::now_utc();
        let new = NewCode { code: None, credits_micros: 5, max_uses: 1, expires_at: None };
        let made = prepare(&new, now).unwrap().code.unwrap();
        assert!(made.starts_with("BM-") && made.len() == 19, "{made}");
        assert_ne!(prepare(&new, now).unwrap().code.unwrap(), made, "random");
        let given = NewCode { code: Some(" welcome-2027 ".into()), ..new.clone() };
        assert_eq!(prepare(&given, now).unwrap().code.as_deref(), Some("WELCOME-2027"));
        for bad in [
            NewCode { credits_micros: 0, ..new.clone() },
            NewCode { max_uses: 0, ..new.clone() },
            NewCode { code: Some("a b c d".into()), ..new.clone() },
            NewCode { expires_at: Some(now), ..new.clone() },
        ] {
            assert!(matches!(prepare(&bad, now), Err(CodeError::Invalid { .. })), "{bad:?}");
        }
    }
}
