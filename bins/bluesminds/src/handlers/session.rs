//! Session cookies and the CSRF check of cookie-authenticated requests.

use gateway_auth::NewSession;
use gateway_core::{ApiError, ErrorKind, Role, User};
use http::header::{COOKIE, HeaderValue, ORIGIN, SET_COOKIE};
use http::{Method, Request, Response};

use crate::app::App;
use crate::errors::from_auth;
use crate::http::ResBody;
use crate::server::Ctx;

pub const COOKIE_NAME: &str = "bm_session";

/// The session token of the `bm_session` cookie, if any.
pub fn session_token<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
}

/// Refuses a state-changing browser request from a foreign origin. A request without
/// `Origin` (SDKs, curl) is not a browser's cross-site request and passes.
pub fn check_origin<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    match req.headers().get(ORIGIN).map(|o| o.to_str().map(str::to_ascii_lowercase)) {
        None => Ok(()),
        Some(Ok(origin)) if origin == app.public_origin || same_host(&origin, req) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "Cross-site request refused: its Origin is not this gateway's public URL.",
        )),
    }
}

/// Whether `origin` names the host the request was sent to (a page of this gateway reached
/// by another name than its public URL, such as `127.0.0.1` in the demo).
fn same_host<B>(origin: &str, req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host.trim())
}

/// The signed-in user of a request (session cookie, CSRF-checked for state changes).
pub async fn require_user<B>(app: &App, req: &Request<B>, ctx: Ctx) -> Result<User, ApiError> {
    check_origin(app, req)?;
    let token = session_token(req)
        .ok_or_else(|| from_auth(ctx.request_id, gateway_auth::AuthError::Unauthenticated))?;
    let user = app.accounts.session_user(token).await.map_err(|e| from_auth(ctx.request_id, e))?;
    crate::audit::actor(user.id);
    Ok(user)
}

/// The signed-in admin of a request.
pub async fn require_admin<B>(app: &App, req: &Request<B>, ctx: Ctx) -> Result<User, ApiError> {
    let user = require_user(app, req, ctx).await?;
    if user.role != Role::Admin {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "This endpoint is for administrators.",
        ));
    }
    Ok(user)
}

fn cookie(app: &App, value: &str, max_age: i64) -> Option<HeaderValue> {
    let secure = if app.behind_tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

pub fn set_session_cookie(app: &App, res: &mut Response<ResBody>, session: &NewSession) {
    let max_age = (session.expires_at - time::OffsetDateTime::now_utc()).whole_seconds().max(0);
    if let Some(v) = cookie(app, &session.token, max_age) {
        res.headers_mut().append(SET_COOKIE, v);
    }
}

pub fn clear_session_cookie(app: &App, res: &mut Response<ResBody>) {
    if let Some(v) = cookie(app, "", 0) {
        res.headers_mut().append(SET_COOKIE, v);
    }
}
