//! Password recovery by email: `POST /api/auth/password/forgot` and
//! `POST /api/auth/password/reset`, and the same as the dashboard's `/forgot-password` and
//! `/reset-password` pages.
//!
//! The forgot step answers at once and the same whether or not the email has an account: the
//! lookup, the token and the mail happen afterwards, off the request, so neither the answer nor
//! its time tells an account exists. Each email gets at most [`MAILS_PER_HOUR`] mails an hour
//! from an instance. Without `[email]` both steps say that recovery by email is not set up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_auth::{Accounts, Mailer};
use gateway_core::{ApiError, ErrorKind};
use gateway_web::{Nav, Shell, form, pages};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::json_body;
use super::session::check_origin;
use super::web::{email_target, form_error, html, status_of};
use crate::app::App;
use crate::errors::from_auth;
use crate::http::{ResBody, json};
use crate::server::{Ctx, read_body};

type Reply = Result<Response<ResBody>, ApiError>;

/// Reset mails one email may get from one instance in an hour.
pub const MAILS_PER_HOUR: usize = 3;

/// When each email was last mailed (per instance), for [`MAILS_PER_HOUR`].
#[derive(Debug, Default)]
pub struct Sent(Mutex<HashMap<String, Vec<Instant>>>);

impl Sent {
    /// Whether one more mail to `email` is allowed now (and counts it).
    fn allow(&self, email: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
}

fn not_set_up() -> ApiError {
    ApiError::new(
        ErrorKind::ServiceUnavailable,
        "Password reset by email is not set up on this gateway (no [email] smtp_url); ask its \
         administrator to reset your password.",
    )
}

/// Starts the reset of `email` off the request: the token, then the mail.
fn start_reset(app: &App, mailer: Arc<dyn Mailer>, email: String) {
    let accounts: Accounts = app.accounts.clone();
    let sent = app.reset_mails.clone();
    let base = app.config.server.public_url.trim_end_matches('/').to_owned();
    tokio::spawn(async move {
        let Ok(Some((user, token))) = accounts.start_password_reset(&email).await else {
            return;
        };
        if !sent.allow(&user.email) {
            tracing::warn!(user = %user.id, "password reset mail not sent: the hourly limit for this account is reached");
            return;
        }
        let text = format!(
            "Someone asked to reset the password of your BluesMinds account ({email}).\n\n\
             To choose a new password, open this link within 30 minutes:\n\n\
             {base}/reset-password?token={token}\n\n\
             It works once. If you did not ask for it, ignore this mail: your password stays \
             as it is.\n",
            email = user.email,
        );
        if let Err(e) = mailer.send(&user.email, "Reset your BluesMinds password", &text).await {
            tracing::error!(user = %user.id, error = %e, "password reset mail could not be sent");
        }
    });
}

const SENT_MESSAGE: &str = "If an account exists for this email, a link to reset its password is \
    on its way. It works for 30 minutes and once.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgotBody {
    email: String,
}

/// `POST /api/auth/password/forgot` `{"email"}`: 202 and the same message for any email.
pub async fn forgot(app: &App, req: Request<Incoming>, _ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: ForgotBody = json_body(app, req).await?;
    let mailer = app.mailer.clone().ok_or_else(not_set_up)?;
    crate::audit::target(email_target(&input.email));
    start_reset(app, mailer, input.email);
    Ok(json(StatusCode::ACCEPTED, &json!({"message": SENT_MESSAGE})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    token: String,
    password: String,
}

/// `POST /api/auth/password/reset` `{"token", "password"}`: the new password; every session
/// of the account ends.
pub async fn reset(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: ResetBody = json_body(app, req).await?;
    if app.mailer.is_none() {
        return Err(not_set_up());
    }
    let client = ctx.peer.ip().to_string();
    let user = app
        .accounts
        .finish_password_reset(&input.token, &input.password, &client)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    crate::audit::actor(user.id);
    crate::audit::target(format!("user:{}", user.id));
    Ok(json(
        StatusCode::OK,
        &json!({"message": "Your password is changed and every session of your account has ended; sign in with the new password."}),
    ))
}

/// `GET /forgot-password`.
pub fn forgot_page(app: &App) -> Response<ResBody> {
    let shell = Shell::new("Reset your password", None, Nav::None);
    let content = pages::forgot_password("", app.mailer.is_some(), false, &[]);
    let status =
        if app.mailer.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    html(status, &shell, &content)
}

/// `POST /forgot-password`.
pub async fn forgot_form(app: &App, req: Request<Incoming>, _ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let email = form::field(&fields, "email").unwrap_or_default().trim().to_owned();
    let shell = Shell::new("Reset your password", None, Nav::None);
    let Some(mailer) = app.mailer.clone() else {
        let content = pages::forgot_password(&email, false, false, &[]);
        return Ok(html(StatusCode::SERVICE_UNAVAILABLE, &shell, &content));
    };
    crate::audit::target(email_target(&email));
    start_reset(app, mailer, email.clone());
    Ok(html(StatusCode::OK, &shell, &pages::forgot_password(&email, true, true, &[])))
}

/// `GET /reset-password?token=...`.
pub fn reset_page(req: &Request<Incoming>) -> Response<ResBody> {
    let query = req.uri().query().unwrap_or("");
    let fields = form::parse(query.as_bytes());
    let token = form::field(&fields, "token").unwrap_or_default();
    let shell = Shell::new("Choose a new password", None, Nav::None);
    html(StatusCode::OK, &shell, &pages::reset_password(token, false, &[]))
}

/// `POST /reset-password`.
pub async fn reset_form(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let token = form::field(&fields, "token").unwrap_or_default().to_owned();
    let password = form::field(&fields, "password").unwrap_or_default();
    let shell = Shell::new("Choose a new password", None, Nav::None);
    if app.mailer.is_none() {
        let e = not_set_up();
        return Ok(html(
            status_of(&e),
            &shell,
            &pages::reset_password(&token, false, &form_error(&e)),
        ));
    }
    let client = ctx.peer.ip().to_string();
    match app.accounts.finish_password_reset(&token, password, &client).await {
        Ok(user) => {
            crate::audit::actor(user.id);
            crate::audit::target(format!("user:{}", user.id));
            Ok(html(StatusCode::OK, &shell, &pages::reset_password("", true, &[])))
        }
        Err(e) => {
            let e = from_auth(ctx.request_id, e);
            Ok(html(status_of(&e), &shell, &pages::reset_password(&token, false, &form_error(&e))))
        }
    }
}

/// The mail of a verification link.
async fn mail_verification(
    mailer: &dyn Mailer,
    base: &str,
    user: &gateway_core::User,
    token: &str,
) {
    let text = format!(
        "To confirm that {email} is yours and start using BluesMinds, open this link within 30 \
         minutes:\n\n{base}/verify-email?token={token}\n\nIf you did not sign up, ignore this \
         mail: the account cannot be used without it.\n",
        email = user.email,
    );
    if let Err(e) = mailer.send(&user.email, "Confirm your email address", &text).await {
        tracing::error!(user = %user.id, error = %e, "verification mail could not be sent");
    }
}

/// Mails `user` the link that confirms their address, off the request.
pub(super) fn send_verification(app: &App, user: &gateway_core::User, token: String) {
    let Some(mailer) = app.mailer.clone() else { return };
    let base = app.config.server.public_url.trim_end_matches('/').to_owned();
    let user = user.clone();
    tokio::spawn(async move { mail_verification(mailer.as_ref(), &base, &user, &token).await });
}

/// A new verification link for `email` when its account waits for one, off the request.
fn resend_verification(app: &App, email: String) {
    let Some(mailer) = app.mailer.clone() else { return };
    let accounts = app.accounts.clone();
    let sent = app.reset_mails.clone();
    let base = app.config.server.public_url.trim_end_matches('/').to_owned();
    tokio::spawn(async move {
        let Ok(Some((user, token))) = accounts.resend_email_verification(&email).await else {
            return;
        };
        if sent.allow(&user.email) {
            mail_verification(mailer.as_ref(), &base, &user, &token).await;
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
}

/// `POST /api/auth/email/verify` `{"token"}`.
pub async fn verify(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: VerifyBody = json_body(app, req).await?;
    let client = ctx.peer.ip().to_string();
    let user = app
        .accounts
        .verify_email(&input.token, &client)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    crate::audit::actor(user.id);
    crate::audit::target(format!("user:{}", user.id));
    Ok(json(StatusCode::OK, &json!({"message": "Your email address is confirmed; sign in."})))
}

/// `POST /api/auth/email/resend` `{"email"}`: 202 and the same message for any email.
pub async fn resend(app: &App, req: Request<Incoming>, _ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: ForgotBody = json_body(app, req).await?;
    if app.mailer.is_none() {
        return Err(not_set_up());
    }
    crate::audit::target(email_target(&input.email));
    resend_verification(app, input.email);
    Ok(json(
        StatusCode::ACCEPTED,
        &json!({"message": "If this email belongs to an account waiting for its confirmation, a new link is on its way."}),
    ))
}

/// `GET /verify-email[?token=...]`: the confirm button of a mailed link, or a form for a new one.
pub fn verify_page(req: &Request<Incoming>) -> Response<ResBody> {
    let fields = form::parse(req.uri().query().unwrap_or("").as_bytes());
    let shell = Shell::new("Confirm your email address", None, Nav::None);
    let step = match form::field(&fields, "token") {
        Some(token) => pages::VerifyStep::Confirm(token),
        None => pages::VerifyStep::Resend { email: "", sent: false },
    };
    html(StatusCode::OK, &shell, &pages::verify_email(&step, &[]))
}

/// `POST /verify-email`: a token confirms; an email asks for a new link.
pub async fn verify_form(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let shell = Shell::new("Confirm your email address", None, Nav::None);
    if let Some(token) = form::field(&fields, "token") {
        let client = ctx.peer.ip().to_string();
        return match app.accounts.verify_email(token, &client).await {
            Ok(user) => {
                crate::audit::actor(user.id);
                crate::audit::target(format!("user:{}", user.id));
                Ok(html(
                    StatusCode::OK,
                    &shell,
                    &pages::verify_email(&pages::VerifyStep::Confirmed, &[]),
                ))
            }
            Err(e) => {
                let e = from_auth(ctx.request_id, e);
                let step = pages::VerifyStep::Resend { email: "", sent: false };
                Ok(html(status_of(&e), &shell, &pages::verify_email(&step, &form_error(&e))))
            }
        };
    }
    let email = form::field(&fields, "email").unwrap_or_default().trim().to_owned();
    if app.mailer.is_none() {
        let e = not_set_up();
        let step = pages::VerifyStep::Resend { email: &email, sent: false };
        return Ok(html(status_of(&e), &shell, &pages::verify_email(&step, &form_error(&e))));
    }
    crate::audit::target(email_target(&email));
    resend_verification(app, email.clone());
    let step = pages::VerifyStep::Resend { email: &email, sent: true };
    Ok(html(StatusCode::OK, &shell, &pages::verify_email(&step, &[])))
}
