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

/// The action a route performs, if it is audited.
pub fn action(route: &Route<'_>) -> Option<(&'static str, Option<String>)> {
    let id = |kind: &str, id: &str| Some(format!("{kind}:{id}"));
    Some(match *route {
        Route::Signup | Route::WebSignup => ("auth.signup", None),
        Route::Login | Route::WebLogin => ("auth.login", None),
        Route::Logout | Route::WebLogout => ("auth.logout", None),
        Route::UpdateMe | Route::WebSaveProfile => ("account.update", None),
        Route::WebChangePassword => ("auth.password.change", None),
        Route::PasswordForgot | Route::WebForgot => ("auth.password.forgot", None),
        Route::PasswordReset | Route::WebReset => ("auth.password.reset", None),
        Route::EmailVerify | Route::WebVerify => ("auth.email.verify", None),
        Route::EmailResend => ("auth.email.resend", None),
        Route::WebSignOutEverywhere => ("auth.sessions.end_all", None),
        Route::CreateKey | Route::WebCreateKey => ("key.create", None),
        Route::UpdateKey(k) => ("key.update", id("key", k)),
        Route::DeleteKey(k) | Route::WebRevokeKey(k) => ("key.revoke", id("key", k)),
        Route::RotateKey(k) | Route::WebRotateKey(k) => ("key.rotate", id("key", k)),
        Route::AdminUpdateUser(u) => ("admin.user.update", id("user", u)),
        Route::AdminCreateServer => ("admin.server.create", None),
        Route::AdminUpdateServer(s) => ("admin.server.update", id("server", s)),
        Route::AdminDeleteServer(s) => ("admin.server.delete", id("server", s)),
        Route::AdminUpdatePlan(t) => ("admin.plan.update", id("plan", t)),
        Route::AdminAddPrice => ("admin.price.add", None),
        Route::AdminUpdatePrice(p) => ("admin.price.update", id("price", p)),
        Route::AdminDeletePrice(p) => ("admin.price.delete", id("price", p)),
        Route::AdminCredits(u) => ("admin.credits.grant", id("user", u)),
        Route::AdminClosePeriod => ("admin.invoices.close_period", None),
        Route::AdminCreateCode => ("admin.code.create", None),
        Route::AdminRevokeCode(c) => ("admin.code.revoke", id("code", c)),
        Route::WebAdminForm(path) => ("admin.form", Some(format!("page:{path}"))),
        Route::BillingSettings | Route::WebSetCap => ("billing.settings.update", None),
        Route::BillingCheckout | Route::WebCheckout => ("billing.checkout", None),
        Route::BillingPortal => ("billing.portal", None),
        Route::BillingRedeem | Route::WebRedeem => ("billing.redeem", None),
        Route::BillingPayInvoice(i) => ("billing.invoice.pay", id("invoice", i)),
        Route::BillingWebhook => ("payments.webhook", None),
        _ => return None,
    })
}

/// Appends the entry of an audited request that ended with `status`. A failure to write is
/// logged and counted, and the answer goes out: the action has happened either way.
pub async fn record(
    app: &App,
    ctx: Ctx,
    (action, route_target): (&'static str, Option<String>),
    note: Note,
    status: u16,
) {
    // An action that needs a signed-in user and has none was refused, even when the answer
    // is a redirect to the sign-in page.
    let anonymous_ok = matches!(
        action,
        "auth.signup"
            | "auth.login"
            | "auth.logout"
            | "auth.password.forgot"
            | "auth.password.reset"
            | "auth.email.verify"
            | "auth.email.resend"
            | "payments.webhook"
    );
    let outcome = if note.actor.is_none() && !anonymous_ok {
        Outcome::Refused
    } else {
        Outcome::of_status(status)
    };
    let entry = AuditEntry {
        id: uuid::Uuid::now_v7(),
        at: time::OffsetDateTime::now_utc(),
        actor_id: note.actor,
        action: action.to_owned(),
        target: note.target.or(route_target),
        outcome,
        status,
        source_ip: Some(ctx.peer.ip().to_string()),
        request_id: ctx.request_id,
        // Short by construction; bounded anyway.
        detail: note.detail.map(|d| d.chars().take(200).collect()),
    };
    if let Err(e) = app.audit.append(&entry).await {
        app.metrics.audit_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(request_id = %ctx.request_id, action, error = %e, "could not write the audit log");
    }
}
