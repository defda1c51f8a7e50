//! Account mail: the password-reset and email-verification links, written here and sent
//! through the [`Mailer`] port, at most [`MAILS_PER_HOUR`] to one account from one instance.
//! The callers run these off the request (a mail server may take seconds, and an answer that
//! waited for the lookup would tell whether an account exists).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_core::User;

use crate::ports::Mailer;

/// Link mails one account may get from one instance in an hour.
pub const MAILS_PER_HOUR: usize = 3;

/// The mailer, the base of the links, and what was sent in the last hour.
#[derive(Clone)]
pub(crate) struct AccountMail {
    mailer: Arc<dyn Mailer>,
    /// `server.public_url` without its trailing slash.
    link_base: String,
    sent: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl AccountMail {
    pub(crate) fn new(mailer: Arc<dyn Mailer>, public_url: &str) -> Self {
        Self {
            mailer,
            link_base: public_url.trim_end_matches('/').to_owned(),
            sent: Arc::default(),
        }
    }

    /// Whether one more mail to `email` is allowed now (and counts it).
    fn allow(&self, email: &str) -> bool {
        let mut map = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hour = Duration::from_hours(1);
        map.retain(|_, times| {
            times.retain(|t| t.elapsed() < hour);
            !times.is_empty()
        });
        let times = map.entry(email.to_owned()).or_default();
        if times.len() >= MAILS_PER_HOUR {
            return false;
        }
        times.push(Instant::now());
        true
    }

    /// Mails `user` the `link` with `token`, within the hourly allowance.
    pub(crate) async fn send_link(&self, user: &User, link: Link, token: &str) {
        if !self.allow(&user.email) {
            tracing::warn!(user = %user.id, kind = link.kind(), "link mail not sent: the hourly limit for this account is reached");
            return;
        }
        let url = format!("{}/{}?token={token}", self.link_base, link.page());
        let (subject, text) = match link {
            Link::Reset => (
                "Reset your BluesMinds password",
                format!(
                    "Someone asked to reset the password of your BluesMinds account ({email}).\n\n\
                     To choose a new password, open this link within 30 minutes:\n\n{url}\n\n\
                     It works once. If you did not ask for it, ignore this mail: your password \
                     stays as it is.\n",
                    email = user.email,
                ),
            ),
            Link::Verify => (
                "Confirm your email address",
                format!(
                    "To confirm that {email} is yours and start using BluesMinds, open this link \
                     within 30 minutes:\n\n{url}\n\nIf you did not sign up, ignore this mail: \
                     the account cannot be used without it.\n",
                    email = user.email,
                ),
            ),
        };
        if let Err(e) = self.mailer.send(&user.email, subject, &text).await {
            tracing::error!(user = %user.id, kind = link.kind(), error = %e, "link mail could not be sent");
        }
    }
}

/// What a mailed link is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    Reset,
    Verify,
}

impl Link {
    /// The label its token's hash is stored under (a verification link is no reset link).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Link::Reset => "reset",
            Link::Verify => "verify",
        }
    }

    fn page(self) -> &'static str {
        match self {
            Link::Reset => "reset-password",
            Link::Verify => "verify-email",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Link::Reset => "password reset",
            Link::Verify => "email verification",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Outbox(Mutex<Vec<(String, String)>>);

    #[async_trait::async_trait]
    impl Mailer for Outbox {
        async fn send(&self, to: &str, _subject: &str, text: &str) -> Result<(), String> {
            self.0.lock().unwrap().push((to.to_owned(), text.to_owned()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_account_gets_at_most_three_link_mails_an_hour_with_the_link_in_them() {
        let outbox = Arc::new(Outbox::default());
        let mail = AccountMail::new(outbox.clone(), "https://gw.example.com/");
        let user = |email: &str| User {
            id: gateway_core::UserId::new(),
            email: email.to_owned(),
            full_name: None,
            company_name: None,
            role: gateway_core::Role::User,
            tier: gateway_core::Tier::Free,
            status: gateway_core::UserStatus::Active,
            credits_micros: 0,
            overage_cap_micros: None,
            past_due_after: None,
            created_at: time::OffsetDateTime::now_utc(),
        };
        let (ada, bob) = (user("ada@example.com"), user("bob@example.com"));
        for _ in 0..MAILS_PER_HOUR + 2 {
            mail.send_link(&ada, Link::Reset, "t0k3n").await;
        }
        mail.send_link(&bob, Link::Verify, "v3r1fy").await;
        let sent = outbox.0.lock().unwrap().clone();
        let to_ada: Vec<_> = sent.iter().filter(|(to, _)| to == "ada@example.com").collect();
        assert_eq!(to_ada.len(), MAILS_PER_HOUR, "the limit is per account");
        assert!(to_ada[0].1.contains("https://gw.example.com/reset-password?token=t0k3n"));
        assert!(sent.iter().any(|(to, text)| to == "bob@example.com"
            && text.contains("https://gw.example.com/verify-email?token=v3r1fy")));
    }
}
