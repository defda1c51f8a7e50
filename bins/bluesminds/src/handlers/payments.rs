//! Payment endpoints: a Creem checkout for a plan or a credit pack, the customer portal, and
//! Creem's webhook. The rules are [`gateway_billing::payments`]'s; this module reads and writes
//! JSON. Without `[billing.creem]` they answer 503 saying so.

use std::sync::Arc;

use gateway_billing::payments::{Change, Handled, Payments, Purchase};
use gateway_core::{ApiError, ErrorKind, Tier};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::json_body;
use super::session::require_user;
use crate::app::App;
use crate::errors::{from_billing, from_payments};
use crate::http::{ResBody, json};
use crate::server::{Ctx, read_body};

type Reply = Result<Response<ResBody>, ApiError>;

fn payments(app: &App) -> Result<&Arc<Payments>, ApiError> {
    app.payments.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::ServiceUnavailable,
            "Payments are not configured on this gateway: an operator sets [billing.creem] (see docs/BILLING.md).",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    tier: Option<Tier>,
    credit_pack: Option<String>,
}

/// `POST /api/billing/checkout` `{"tier": "pro"}` or `{"credit_pack": "<name>"}`: a Creem
/// checkout for the signed-in user; `{"url": ...}` to send them to.
pub async fn checkout(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let payments = payments(app)?;
    let b: CheckoutBody = json_body(app, req).await?;
    let what = match (b.tier, b.credit_pack) {
        (Some(Tier::Free), None) => {
            return Err(ApiError::invalid_param(
                "tier",
                "The Free plan needs no checkout: cancel your subscription in the customer portal (POST /api/billing/portal).",
            ));
        }
        (Some(tier), None) => Purchase::Tier(tier),
        (None, Some(pack)) => Purchase::CreditPack(pack),
        _ => {
            return Err(ApiError::invalid_request(
                "Send either 'tier' (starter, pro, enterprise) or 'credit_pack'.",
            ));
        }
    };
    let url = payments
        .checkout(user.id, &user.email, user.tier, &what)
        .await
        .map_err(|e| from_payments(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &json!({"url": url})))
}

/// `POST /api/billing/portal`: the link to the user's Creem customer portal.
pub async fn portal(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let url = payments(app)?.portal(user.id).await.map_err(|e| from_payments(ctx.request_id, e))?;
    Ok(json(StatusCode::OK, &json!({"url": url})))
}

/// `POST /api/billing/webhook`: Creem's events. The signature is checked before anything is
/// read; an event id is handled once; a changed tier reaches the key caches at once.
pub async fn webhook(app: &App, req: Request<Incoming>, ctx: Ctx) -> Reply {
    let payments = payments(app)?;
    let signature =
        req.headers().get("creem-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = read_body(app, req).await?;
    let (event, handled) = payments
        .webhook(&body, signature.as_deref(), OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_payments(ctx.request_id, e))?;
    let outcome = match &handled {
        Handled::Applied { user, changes } => {
            let moves_tier = changes.iter().any(|c| {
                matches!(
                    c,
                    Change::Subscribe { .. }
                        | Change::EndAt { .. }
                        | Change::EndNow
                        | Change::Refund { .. }
                        | Change::PayInvoice { .. }
                )
            });
            if moves_tier {
                gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), *user);
            }
            tracing::info!(event = %event.id, kind = %event.event_type, user = %user, "payment event applied");
            "applied"
        }
        Handled::Duplicate => "duplicate",
        Handled::DuplicatePayment => {
            tracing::warn!(event = %event.id, kind = %event.event_type, "payment event names a payment recorded before; nothing changed");
            "duplicate_payment"
        }
        Handled::Ignored(why) => {
            tracing::info!(event = %event.id, kind = %event.event_type, why = %why, "payment event ignored");
            "ignored"
        }
        Handled::Refused(why) => {
            // Acknowledged (a retry would be refused the same way), recorded, and loud.
            tracing::error!(event = %event.id, kind = %event.event_type, why = %why, "payment event REFUSED; nothing changed");
            "refused"
        }
    };
    if let Handled::Applied { user, .. } = &handled {
        crate::audit::target(format!("user:{user}"));
    }
    crate::audit::detail(format!("{} {}: {outcome}", event.event_type, event.id));
    Ok(json(StatusCode::OK, &json!({"received": true, "outcome": outcome})))
}

/// `POST /api/billing/invoices/{id}/pay`: pays one of the caller's open invoices with their
/// credits first; what is left, by a one-time Creem checkout (`{"url": ...}`), which turns the
/// invoice paid when its webhook arrives. `{"paid": true}` when credits were enough.
pub async fn pay_invoice(app: &App, req: Request<Incoming>, ctx: Ctx, id: &str) -> Reply {
    let user = require_user(app, &req, ctx).await?;
    let id: gateway_core::InvoiceId = id.parse().map_err(|_| ApiError::not_found("invoice"))?;
    let (invoice, credits_paid) = app
        .billing
        .pay_invoice_with_credits(user.id, id, OffsetDateTime::now_utc())
        .await
        .map_err(|e| from_billing(ctx.request_id, e))?;
    if credits_paid {
        gateway_auth::Invalidations::user_changed(app.invalidations.as_ref(), user.id);
    }
    if invoice.status != gateway_billing::invoice::InvoiceStatus::Open {
        return Ok(json(StatusCode::OK, &json!({"paid": true, "invoice": invoice})));
    }
    let url = payments(app)?
        .invoice_checkout(user.id, &user.email, invoice.id, invoice.total_micros)
        .await
        .map_err(|e| from_payments(ctx.request_id, e))?;
    Ok(json(
        StatusCode::OK,
        &json!({"paid": false, "url": url, "credits_applied_micros": invoice.credits_applied_micros, "left_micros": invoice.total_micros}),
    ))
}
