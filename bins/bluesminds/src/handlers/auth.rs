//! Account endpoints.

use gateway_core::openai::parse_json;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::app::App;
use crate::errors::from_auth;
use crate::http::{ResBody, error_response, json};
use crate::server::{Ctx, read_body};

/// Only these fields may be set at signup; anything else (role, tier, credits, ...) is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    email: String,
    password: String,
    full_name: Option<String>,
}

const MAX_NAME_CHARS: usize = 200;

pub async fn signup(app: &App, req: Request<Incoming>, ctx: Ctx) -> Response<ResBody> {
    let body = match read_body(app, req).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let input: SignupBody = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let full_name = input.full_name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if full_name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
        let err = gateway_core::ApiError::invalid_param(
            "full_name",
            format!("Invalid 'full_name': must be at most {MAX_NAME_CHARS} characters."),
        );
        return error_response(&err);
    }
    match app.accounts.signup(&input.email, &input.password, full_name).await {
        Ok(user) => json(StatusCode::CREATED, &user),
        Err(e) => error_response(&from_auth(ctx.request_id, e)),
    }
}
