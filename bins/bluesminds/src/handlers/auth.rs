//! Account endpoints: sign-up, login, logout, the caller's profile, and admin changes to users.

use gateway_auth::{AdminUserUpdate, ProfileUpdate};
use gateway_core::{ApiError, Role, Tier, UserId, UserStatus};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::session::{
    check_origin, clear_session_cookie, require_admin, require_user, session_token,
    set_session_cookie,
};
use super::{double_option, json_body};
use crate::app::App;
use crate::errors::from_auth;
use crate::http::{ResBody, json};
use crate::server::Ctx;

type Reply = Result<Response<ResBody>, ApiError>;

/// Only these fields may be set at signup; anything else (role, tier, credits, ...) is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    email: String,
    password: String,
    full_name: Option<String>,
}

pub async fn signup(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: SignupBody = json_body(app, req).await?;
    crate::audit::target(super::web::email_target(&input.email));
    let user = app
        .accounts
        .signup(&input.email, &input.password, input.full_name)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    crate::audit::actor(user.id);
    if app.accounts.verifies_email() {
        super::recovery::start_verification(app, user.email.clone());
        crate::audit::detail("verification mailed");
    }
    Ok(json(StatusCode::CREATED, &user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

pub async fn login(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    let input: LoginBody = json_body(app, req).await?;
    let client = ctx.peer.ip().to_string();
    crate::audit::target(super::web::email_target(&input.email));
    let (user, session) = app
        .accounts
        .login(&input.email, &input.password, &client)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    crate::audit::actor(user.id);
    let expires_at = session
        .expires_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut res = json(StatusCode::OK, &json!({"user": user, "session_expires_at": expires_at}));
    set_session_cookie(app, &mut res, &session);
    Ok(res)
}

pub async fn logout(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    check_origin(app, &req)?;
    if let Some(token) = session_token(&req) {
        app.accounts.logout(token).await.map_err(|e| from_auth(ctx.request_id, e))?;
    }
    let mut res = Response::new(ResBody::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    clear_session_cookie(app, &mut res);
    Ok(res)
}

pub async fn me(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    Ok(json(StatusCode::OK, &user))
}

/// What a user may change about themselves. Role, tier, status, credits and ids are not here,
/// and unknown fields are refused, so no body can set them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeBody {
    #[serde(default, deserialize_with = "double_option")]
    full_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    company_name: Option<Option<String>>,
    password: Option<String>,
    current_password: Option<String>,
}

pub async fn update_me(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let input: MeBody = json_body(app, req).await?;
    let err = |e| from_auth(ctx.request_id, e);
    let new_session = match (input.password.as_deref(), input.current_password.as_deref()) {
        (Some(new), Some(current)) => {
            crate::audit::detail("password change");
            gateway_auth::password::validate(new).map_err(err)?;
            Some(app.accounts.change_password(user.id, current, new).await.map_err(err)?)
        }
        (Some(_), None) => {
            return Err(ApiError::invalid_param(
                "current_password",
                "Changing the password needs 'current_password'.",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_param(
                "password",
                "'current_password' was given without 'password'.",
            ));
        }
        (None, None) => None,
    };
    let update = ProfileUpdate { full_name: input.full_name, company_name: input.company_name };
    let user = app.accounts.update_profile(user.id, update).await.map_err(err)?;
    let mut res = json(StatusCode::OK, &user);
    if let Some(session) = new_session {
        set_session_cookie(app, &mut res, &session);
    }
    Ok(res)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminUserBody {
    role: Option<Role>,
    tier: Option<Tier>,
    status: Option<UserStatus>,
    /// Any cap an admin chooses; `null` returns to the plan's price.
    #[serde(default, deserialize_with = "double_option")]
    overage_cap_micros: Option<Option<i64>>,
}

pub async fn admin_update_user(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let admin = require_admin(app, &req, ctx).await?;
    let id: UserId = id.parse().map_err(|_| ApiError::not_found("user"))?;
    let input: AdminUserBody = json_body(app, req).await?;
    let update = AdminUserUpdate {
        role: input.role,
        tier: input.tier,
        status: input.status,
        overage_cap_micros: input.overage_cap_micros,
    };
    let user = app
        .accounts
        .admin_update_user(admin.id, id, update)
        .await
        .map_err(|e| from_auth(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &user))
}
