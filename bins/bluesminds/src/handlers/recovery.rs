//! Password recovery by email: `POST /api/auth/password/forgot` and
//! `POST /api/auth/password/reset`, and the same as the dashboard's `/forgot-password` and
//! `/reset-password` pages.
//!
//! The forgot step answers at once and the same whether or not the email has an account: the
//! lookup, the token and the mail happen afterwards, off the request, so neither the answer nor
//! its time tells an account exists (`Accounts` writes and limits the mails). Without `[email]`
//! both steps say that recovery by email is not set up.

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

fn not_set_up() -> ApiError {
    ApiError::new(
        ErrorKind::ServiceUnavailable,
        "Password reset by email is not set up on this gateway (no [email] smtp_url); ask its \
         administrator to reset your password.",
    )
}

/// Mails a reset link to the account of `email`, if there is one, after the answer.
fn start_reset(app: &App, email: String) {
    let accounts = app.accounts.clone();
    tokio::spawn(async move { accounts.mail_password_reset(&email).await });
}

/// Mails a verification link to the account of `email` when it waits for one, after the
/// answer (sign-up, or asked again).
pub(super) fn start_verification(app: &App, email: String) {
    let accounts = app.accounts.clone();
    tokio::spawn(async move { accounts.mail_email_verification(&email).await });
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
    if !app.accounts.mails() {
        return Err(not_set_up());
    }
    crate::audit::target(email_target(&input.email));
    start_reset(app, input.email);
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
    if !app.accounts.mails() {
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
    let mails = app.accounts.mails();
    let content = pages::forgot_password("", mails, false, &[]);
    let status = if mails { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    html(status, &shell, &content)
}

/// `POST /forgot-password`.
pub async fn forgot_form(app: &App, req: Request<Incoming>, _ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let fields = form::parse(&read_body(app, req).await?);
    let email = form::field(&fields, "email").unwrap_or_default().trim().to_owned();
    let shell = Shell::new("Reset your password", None, Nav::None);
    if !app.accounts.mails() {
        let content = pages::forgot_password(&email, false, false, &[]);
        return Ok(html(StatusCode::SERVICE_UNAVAILABLE, &shell, &content));
    }
    crate::audit::target(email_target(&email));
    start_reset(app, email.clone());
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
    if !app.accounts.mails() {
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
    if !app.accounts.mails() {
        return Err(not_set_up());
    }
    crate::audit::target(email_target(&input.email));
    start_verification(app, input.email);
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
    if !app.accounts.mails() {
        let e = not_set_up();
        let step = pages::VerifyStep::Resend { email: &email, sent: false };
        return Ok(html(status_of(&e), &shell, &pages::verify_email(&step, &form_error(&e))));
    }
    crate::audit::target(email_target(&email));
    start_verification(app, email.clone());
    let step = pages::VerifyStep::Resend { email: &email, sent: true };
    Ok(html(StatusCode::OK, &shell, &pages::verify_email(&step, &[])))
}
