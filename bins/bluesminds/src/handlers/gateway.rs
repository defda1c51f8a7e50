//! The OpenAI-compatible endpoints, authenticated by API key.

use std::sync::Arc;

use gateway_auth::Principal;
use gateway_core::openai::{List, Model};
use gateway_core::{ApiError, ErrorKind, Scope};
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};

use crate::app::App;
use crate::errors::from_verify;
use crate::http::{ResBody, json};

/// Authenticates the bearer key and checks it may use `scope`.
pub async fn authenticate<B>(
    app: &App,
    req: &Request<B>,
    scope: Scope,
) -> Result<Arc<Principal>, ApiError> {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let principal = app.verifier.verify_header(header).await.map_err(from_verify)?;
    if !principal.has_scope(scope) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This API key does not have the '{scope}' scope."),
        ));
    }
    Ok(principal)
}

/// `GET /v1/models`: the models of active servers that the key may use.
pub async fn models<B>(app: &App, req: &Request<B>) -> Result<Response<ResBody>, ApiError> {
    let principal = authenticate(app, req, Scope::Models).await?;
    let data: Vec<Model> = app
        .pool
        .models()
        .into_iter()
        .filter(|m| principal.may_use_model(m))
        .map(|id| Model { id, object: "model".into(), created: 0, owned_by: "bluesminds".into() })
        .collect();
    Ok(json(StatusCode::OK, &List::new(data)))
}
