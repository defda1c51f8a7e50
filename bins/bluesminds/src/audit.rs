//! Recording the audit log (`gateway_auth::audit`) at the one place every request passes: the
//! server runs each audited route's handler inside a [`scope`], where the handler notes who
//! acted ([`actor`], set by the session checks) and what it acted on ([`target`], [`detail`]);
//! once the answer is known, [`record`] appends the entry with its outcome, the client's
//! address and the request id. Which routes are audited, and under which action name, is
//! [`action`]: every change to accounts, keys, money and the platform, never a read and never
//! the gateway's own API calls (they have usage rows).

use std::cell::RefCell;
use std::future::Future;

use gateway_auth::audit::{AuditEntry, Outcome};
use gateway_core::UserId;

use crate::app::App;
use crate::router::Route;
use crate::server::Ctx;

/// What a handler noted about its action.
#[derive(Debug, Default)]
pub struct Note {
    actor: Option<UserId>,
    target: Option<String>,
    detail: Option<String>,
}

tokio::task_local! {
    static NOTE: RefCell<Note>;
}

/// The signed-in user acting (outside an audited request, nothing happens).
pub fn actor(id: UserId) {
    let _ = NOTE.try_with(|n| n.borrow_mut().actor = Some(id));
}

/// What the action is about: `user:<id>`, `email:<address>`, `key:<id>`, ...
pub fn target(t: impl Into<String>) {
    let _ = NOTE.try_with(|n| n.borrow_mut().target = Some(t.into()));
}

/// A short note chosen by the code (never request content, never a secret).
pub fn detail(d: impl Into<String>) {
    let _ = NOTE.try_with(|n| n.borrow_mut().detail = Some(d.into()));
}

/// Runs `f` with a fresh note; returns its output and the note.
pub async fn scope<F: Future>(f: F) -> (F::Output, Note) {
    NOTE.scope(RefCell::new(Note::default()), async {
        let out = f.await;
        (out, NOTE.with(RefCell::take))
    })
    .await
}

/// An audited route's action.
#[derive(Debug)]
pub struct Action {
    /// `area.verb`.
    name: &'static str,
    /// The target the route names (a path id), unless the handler notes one.
    target: Option<String>,
    /// Anyone may do it (sign-in, sign-up, recovery, payment webhooks); the others need a
    /// signed-in actor, and without one they were refused.
    anonymous: bool,
}

/// The action a route performs, if it is audited.
pub fn action(route: &Route<'_>) -> Option<Action> {
    let of = |name, target: Option<(&str, &str)>| Action {
        name,
        target: target.map(|(kind, id)| format!("{kind}:{id}")),
        anonymous: false,
    };
    let anyone = |name| Action { name, target: None, anonymous: true };
    Some(match *route {
        Route::Signup | Route::WebSignup => anyone("auth.signup"),
        Route::Login | Route::WebLogin => anyone("auth.login"),
        Route::Logout | Route::WebLogout => anyone("auth.logout"),
        Route::PasswordForgot | Route::WebForgot => anyone("auth.password.forgot"),
        Route::PasswordReset | Route::WebReset => anyone("auth.password.reset"),
        Route::EmailVerify | Route::WebVerify => anyone("auth.email.verify"),
        Route::EmailResend => anyone("auth.email.resend"),
        Route::BillingWebhook => anyone("payments.webhook"),
        Route::UpdateMe | Route::WebSaveProfile => of("account.update", None),
        Route::WebChangePassword => of("auth.password.change", None),
        Route::WebSignOutEverywhere => of("auth.sessions.end_all", None),
        Route::CreateKey | Route::WebCreateKey => of("key.create", None),
        Route::UpdateKey(k) => of("key.update", Some(("key", k))),
        Route::DeleteKey(k) | Route::WebRevokeKey(k) => of("key.revoke", Some(("key", k))),
        Route::RotateKey(k) | Route::WebRotateKey(k) => of("key.rotate", Some(("key", k))),
        Route::AdminUpdateUser(u) => of("admin.user.update", Some(("user", u))),
        Route::AdminDeleteUser(u) => of("admin.user.delete", Some(("user", u))),
        Route::AdminCreateServer => of("admin.server.create", None),
        Route::AdminCreateModel => of("admin.model.create", None),
        Route::AdminUpdateModel(m) => of("admin.model.update", Some(("model_route", m))),
        Route::AdminDeleteModel(m) => of("admin.model.delete", Some(("model_route", m))),
        Route::AdminUpdateServer(s) => of("admin.server.update", Some(("server", s))),
        Route::AdminDeleteServer(s) => of("admin.server.delete", Some(("server", s))),
        Route::AdminUpdatePlan(t) => of("admin.plan.update", Some(("plan", t))),
        Route::AdminAddPrice => of("admin.price.add", None),
        Route::AdminUpdatePrice(p) => of("admin.price.update", Some(("price", p))),
        Route::AdminDeletePrice(p) => of("admin.price.delete", Some(("price", p))),
        Route::AdminCredits(u) => of("admin.credits.grant", Some(("user", u))),
        Route::AdminClosePeriod => of("admin.invoices.close_period", None),
        Route::AdminCreateCode => of("admin.code.create", None),
        Route::AdminRevokeCode(c) => of("admin.code.revoke", Some(("code", c))),
        Route::WebAdminForm(path) => of("admin.form", Some(("page", path))),
        Route::BillingSettings | Route::WebSetCap => of("billing.settings.update", None),
        Route::BillingCheckout | Route::WebCheckout => of("billing.checkout", None),
        Route::BillingPortal => of("billing.portal", None),
        Route::BillingRedeem | Route::WebRedeem => of("billing.redeem", None),
        Route::BillingPayInvoice(i) => of("billing.invoice.pay", Some(("invoice", i))),
        _ => return None,
    })
}

/// How an action ended, from its answer's HTTP status.
fn outcome_of(status: u16) -> Outcome {
    match status {
        100..=399 => Outcome::Ok,
        401 | 403 | 429 => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

/// Appends the entry of an audited request that ended with `status`. A failure to write is
/// logged and counted, and the answer goes out: the action has happened either way.
pub async fn record(app: &App, ctx: Ctx, action: Action, note: Note, status: u16) {
    // An action that needs a signed-in user and has none was refused, even when the answer
    // is a redirect to the sign-in page.
    let outcome = if note.actor.is_none() && !action.anonymous {
        Outcome::Refused
    } else {
        outcome_of(status)
    };
    let entry = AuditEntry {
        id: uuid::Uuid::now_v7(),
        at: time::OffsetDateTime::now_utc(),
        actor_id: note.actor,
        action: action.name.to_owned(),
        target: note.target.or(action.target),
        outcome,
        status,
        source_ip: Some(ctx.peer.ip().to_string()),
        request_id: ctx.request_id,
        // Short by construction; bounded anyway.
        detail: note.detail.map(|d| d.chars().take(200).collect()),
    };
    if let Err(e) = app.audit.append(&entry).await {
        app.metrics.audit_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(request_id = %ctx.request_id, action = entry.action, error = %e, "could not write the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_s_status_says_how_the_action_ended() {
        assert_eq!(outcome_of(201), Outcome::Ok);
        assert_eq!(outcome_of(303), Outcome::Ok);
        for s in [401, 403, 429] {
            assert_eq!(outcome_of(s), Outcome::Refused);
        }
        for s in [400, 404, 409, 422, 500, 503] {
            assert_eq!(outcome_of(s), Outcome::Failed);
        }
    }
}
