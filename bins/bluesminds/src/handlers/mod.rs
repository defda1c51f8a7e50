//! Handlers translate HTTP to domain calls and back; no business rule lives here.

mod admin;
mod admin_views;
mod audit;
mod auth;
mod billing;
mod gateway;
mod keys;
mod ops;
mod payments;
mod recovery;
mod session;
mod usage;
mod web;
mod web_admin;

use std::sync::Arc;

use gateway_core::ApiError;
use http::{Request, Response};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::http::{ResBody, error_response_in};
use crate::router::Route;
use crate::server::{Ctx, read_body};

pub async fn dispatch(
    app: &Arc<App>,
    route: Route<'_>,
    req: Request<Incoming>,
    ctx: Ctx,
) -> Response<ResBody> {
    let shape = crate::router::error_shape(req.uri().path());
    let result = match route {
        Route::Forward(endpoint) => gateway::forward(app, req, ctx, endpoint).await,
        Route::Healthz => Ok(ops::healthz()),
        Route::Metrics => Ok(ops::metrics(app)),
        // Every other route's future is boxed: the largest of them would otherwise set the
        // size of every request's state, the gateway's own included (see `server::handle`).
        route => Box::pin(elsewhere(app, route, req, ctx)).await,
    };
    let mut res = result.unwrap_or_else(|e| error_response_in(shape, &e));
    if matches!(route, Route::Forward(_) | Route::Models)
        && !res.headers().contains_key(&gateway::OVERHEAD_HEADER)
    {
        // Answered without an upstream (refused, or /models): all of it was the gateway's.
        res.headers_mut()
            .insert(gateway::OVERHEAD_HEADER, gateway::overhead_value(ctx.started.elapsed()));
    }
    res
}

/// Every route (`dispatch` answers the gateway's own and the two probes without it).
async fn elsewhere(
    app: &Arc<App>,
    route: Route<'_>,
    req: Request<Incoming>,
    ctx: Ctx,
) -> Result<Response<ResBody>, ApiError> {
    match route {
        Route::Forward(endpoint) => gateway::forward(app, req, ctx, endpoint).await,
        Route::Healthz => Ok(ops::healthz()),
        Route::Readyz => Ok(ops::readyz(app).await),
        Route::Metrics => Ok(ops::metrics(app)),
        Route::Signup => auth::signup(app, req, ctx).await,
        Route::Login => auth::login(app, req, ctx).await,
        Route::Logout => auth::logout(app, req, ctx).await,
        Route::Me => auth::me(app, req, ctx).await,
        Route::AuthActivity => audit::activity(app, req, ctx).await,
        Route::PasswordForgot => recovery::forgot(app, req, ctx).await,
        Route::PasswordReset => recovery::reset(app, req, ctx).await,
        Route::WebForgotPage => Ok(recovery::forgot_page(app)),
        Route::WebForgot => recovery::forgot_form(app, req, ctx).await,
        Route::WebResetPage => Ok(recovery::reset_page(&req)),
        Route::WebReset => recovery::reset_form(app, req, ctx).await,
        Route::EmailVerify => recovery::verify(app, req, ctx).await,
        Route::EmailResend => recovery::resend(app, req, ctx).await,
        Route::WebVerifyPage => Ok(recovery::verify_page(&req)),
        Route::WebVerify => recovery::verify_form(app, req, ctx).await,
        Route::AdminAudit => audit::admin(app, req, ctx).await,
        Route::UpdateMe => auth::update_me(app, req, ctx).await,
        Route::AdminUpdateUser(id) => auth::admin_update_user(app, req, ctx, id).await,
        Route::AdminUsers => admin_views::users(app, req, ctx).await,
        Route::AdminDeleteUser(id) => admin_views::delete_user(app, req, ctx, id).await,
        Route::AdminKeys => admin_views::keys(app, req, ctx).await,
        Route::AdminStats => admin_views::stats(app, req, ctx).await,
        Route::AdminListServers => admin::list_servers(app, req, ctx).await,
        Route::AdminListModels => admin::list_routes(app, req, ctx).await,
        Route::AdminCreateModel => admin::create_route(app, req, ctx).await,
        Route::AdminUpdateModel(id) => admin::update_route(app, req, ctx, id).await,
        Route::AdminDeleteModel(id) => admin::delete_route(app, req, ctx, id).await,
        Route::AdminCreateServer => admin::create_server(app, req, ctx).await,
        Route::AdminUpdateServer(id) => admin::update_server(app, req, ctx, id).await,
        Route::AdminDeleteServer(id) => admin::delete_server(app, req, ctx, id).await,
        Route::AdminHealth => admin::health(app, req, ctx).await,
        Route::AdminCheckHealth => admin::check_now(app, req, ctx).await,
        Route::ListKeys => keys::list(app, req, ctx).await,
        Route::CreateKey => keys::create(app, req, ctx).await,
        Route::GetKey(id) => keys::get(app, req, ctx, id).await,
        Route::UpdateKey(id) => keys::update(app, req, ctx, id).await,
        Route::DeleteKey(id) => keys::delete(app, req, ctx, id).await,
        Route::RotateKey(id) => keys::rotate(app, req, ctx, id).await,
        Route::Models => gateway::models(app, &req).await,
        Route::UsageLogs => usage::logs(app, req, ctx).await,
        Route::UsageStats => usage::stats(app, req, ctx).await,
        Route::BillingPlans => Ok(billing::plans(app)),
        Route::BillingSummary => billing::summary(app, req, ctx).await,
        Route::BillingSettings => billing::update_settings(app, req, ctx).await,
        Route::BillingLedger => billing::ledger(app, req, ctx).await,
        Route::BillingInvoices => billing::invoices(app, req, ctx).await,
        Route::BillingInvoice(id) => billing::invoice(app, req, ctx, id).await,
        Route::AdminPlans => billing::admin_plans(app, req, ctx).await,
        Route::AdminUpdatePlan(tier) => billing::admin_update_plan(app, req, ctx, tier).await,
        Route::AdminPrices => billing::admin_prices(app, req, ctx).await,
        Route::AdminAddPrice => billing::admin_add_price(app, req, ctx).await,
        Route::AdminUpdatePrice(id) => billing::admin_update_price(app, req, ctx, id).await,
        Route::AdminDeletePrice(id) => billing::admin_delete_price(app, req, ctx, id).await,
        Route::AdminCredits(id) => billing::admin_credits(app, req, ctx, id).await,
        Route::AdminClosePeriod => billing::admin_close_period(app, req, ctx).await,
        Route::BillingCheckout => payments::checkout(app, req, ctx).await,
        Route::WebLanding => web::landing(app, req).await,
        Route::WebLoginPage => web::login_page(app, req).await,
        Route::WebLogin => web::login(app, req, ctx).await,
        Route::WebSignupPage => web::signup_page(app, req).await,
        Route::WebSignup => web::signup(app, req, ctx).await,
        Route::WebLogout => web::logout(app, req, ctx).await,
        Route::WebOverview => web::overview(app, req, ctx).await,
        Route::WebKeys => web::keys(app, req, ctx).await,
        Route::WebCreateKey => web::create_key(app, req, ctx).await,
        Route::WebRevokeKey(id) => web::revoke_key(app, req, ctx, id).await,
        Route::WebAdminPage(path) => web_admin::get(app, req, ctx, path).await,
        Route::WebAdminForm(path) => web_admin::post(app, req, ctx, path).await,
        Route::WebUsage => web::usage(app, req, ctx).await,
        Route::WebRotateKey(id) => web::rotate_key(app, req, ctx, id).await,
        Route::WebBilling => web::billing(app, req, ctx).await,
        Route::WebLogs => web::logs(app, req, ctx).await,
        Route::WebSettings => web::settings(app, req).await,
        Route::WebSaveProfile => web::save_profile(app, req, ctx).await,
        Route::WebChangePassword => web::change_password(app, req, ctx).await,
        Route::WebSignOutEverywhere => web::sign_out_everywhere(app, req, ctx).await,
        Route::WebSetCap => web::set_cap(app, req, ctx).await,
        Route::WebRedeem => web::redeem(app, req, ctx).await,
        Route::WebCheckout => web::checkout(app, req, ctx).await,
        Route::Asset(name) => Ok(web::asset(name)),
        Route::BillingRedeem => billing::redeem(app, req, ctx).await,
        Route::BillingPayInvoice(id) => payments::pay_invoice(app, req, ctx, id).await,
        Route::AdminCodes => billing::admin_codes(app, req, ctx).await,
        Route::AdminCreateCode => billing::admin_create_code(app, req, ctx).await,
        Route::AdminRevokeCode(id) => billing::admin_revoke_code(app, req, ctx, id).await,
        Route::BillingPortal => payments::portal(app, req, ctx).await,
        Route::BillingWebhook => payments::webhook(app, req, ctx).await,
    }
}

/// Reads and parses a JSON body; unknown fields are refused where the type says so.
async fn json_body<T: DeserializeOwned>(app: &App, req: Request<Incoming>) -> Result<T, ApiError> {
    let body = read_body(app, req).await?;
    gateway_core::openai::parse_json(&body)
}

/// `null` and absent are different in a PATCH: absent leaves a field alone, `null` clears it.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}
