//! Typed identifiers. Each wraps a UUID so a key id can never be passed where a user id is
//! expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// An API key (stable across rotations).
    ApiKeyId
);
uuid_id!(
    /// An upstream (LiteLLM or OpenAI-compatible) server.
    ServerId
);
uuid_id!(
    /// One model price from a moment on.
    PriceId
);
uuid_id!(
    /// A model route: a public model name and the upstream models that serve it.
    RouteId
);
uuid_id!(
    /// A redemption code.
    CodeId
);
uuid_id!(
    /// A monthly invoice.
    InvoiceId
);
uuid_id!(
    /// One entry of a user's credits ledger.
    LedgerEntryId
);
uuid_id!(
    /// One gateway request. Time-ordered, so it doubles as a sort key for usage logs, and it is
    /// the idempotency key of the usage record.
    RequestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = UserId::new();
        let parsed: UserId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }

    #[test]
    fn request_ids_are_time_ordered() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert!(a < b, "v7 ids must sort by creation time");
    }
}
