//! Account mail over SMTP: [`SmtpMailer`] implements `gateway_auth::Mailer` with lettre's
//! asynchronous transport.
//!
//! `email.smtp_url` names the server: `smtps://user:password@host:465` (TLS from the first
//! byte), `smtp://user:password@host:587?tls=required` (STARTTLS, refused without it), or
//! `smtp://host:25` (plain: only for a relay on the same host or network, and for tests).
//! The URL may hold a password: it is never logged or shown.

use async_trait::async_trait;
use gateway_auth::Mailer;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends mail through one SMTP server.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the credentials: never printed.
        f.debug_struct("SmtpMailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for the server at `smtp_url`, sending as `from` (`Name <address>` or an
    /// address). The error says which of the two is wrong, without repeating the URL.
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, String> {
        let from: Mailbox =
            from.parse().map_err(|e| format!("email.from is not a mail address ({e})"))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|_| {
                "email.smtp_url is not an smtp:// or smtps:// URL lettre can use".to_owned()
            })?
            .timeout(Some(std::time::Duration::from_secs(15)))
            .build();
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, to: &str, subject: &str, text: &str) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("not a mail address ({e})"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text.to_owned())
            .map_err(|e| format!("the message could not be built ({e})"))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| format!("SMTP: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named_without_the_url() {
        let e = SmtpMailer::new("smtp://127.0.0.1:2525", "not an address").unwrap_err();
        assert!(e.contains("email.from"), "{e}");
        let e = SmtpMailer::new("http://user:secret@host", "a@b.co").unwrap_err();
        assert!(e.contains("email.smtp_url") && !e.contains("secret"), "{e}");
    }
}
