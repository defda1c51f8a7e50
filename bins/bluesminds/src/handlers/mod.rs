//! Handlers translate HTTP to domain calls and back; no business rule lives here.

mod auth;
mod ops;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::http::ResBody;
use crate::router::Route;
use crate::server::Ctx;

pub async fn dispatch(
    app: &Arc<App>,
    route: Route,
    req: Request<Incoming>,
    ctx: Ctx,
) -> Response<ResBody> {
    match route {
        Route::Healthz => ops::healthz(),
        Route::Readyz => ops::readyz(app).await,
        Route::Signup => auth::signup(app, req, ctx).await,
    }
}
