//! The router: path segments matched against a table of resources, each with its methods.
//! No allocation: segments and path parameters are borrowed from the request path.

use gateway_core::ErrorShape;
use gateway_proxy::request::Endpoint;
use http::Method;

/// Every endpoint the gateway serves. Path parameters are borrowed from the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Signup,
    Login,
    AuthActivity,
    AdminAudit,
    PasswordForgot,
    PasswordReset,
    WebForgotPage,
    WebForgot,
    WebResetPage,
    WebReset,
    EmailVerify,
    EmailResend,
    WebVerifyPage,
    WebVerify,
    Logout,
    Me,
    UpdateMe,
    ListKeys,
    CreateKey,
    GetKey(&'a str),
    UpdateKey(&'a str),
    DeleteKey(&'a str),
    RotateKey(&'a str),
    AdminUpdateUser(&'a str),
    AdminUsers,
    AdminDeleteUser(&'a str),
    AdminKeys,
    AdminStats,
    AdminListServers,
    AdminCreateServer,
    AdminListModels,
    AdminCreateModel,
    AdminUpdateModel(&'a str),
    AdminDeleteModel(&'a str),
    AdminUpdateServer(&'a str),
    AdminDeleteServer(&'a str),
    AdminHealth,
    AdminCheckHealth,
    Models,
    UsageLogs,
    UsageStats,
    BillingPlans,
    BillingSummary,
    BillingSettings,
    BillingLedger,
    BillingInvoices,
    BillingInvoice(&'a str),
    AdminPlans,
    AdminUpdatePlan(&'a str),
    AdminPrices,
    AdminAddPrice,
    AdminUpdatePrice(&'a str),
    AdminDeletePrice(&'a str),
    AdminCredits(&'a str),
    AdminClosePeriod,
    BillingCheckout,
    WebLanding,
    WebLoginPage,
    WebLogin,
    WebSignupPage,
    WebSignup,
    WebLogout,
    WebOverview,
    /// A page of the admin section; the value is the request path.
    WebAdminPage(&'a str),
    /// A form of the admin section; the value is the request path.
    WebAdminForm(&'a str),
    WebUsage,
    WebKeys,
    WebCreateKey,
    WebRevokeKey(&'a str),
    WebRotateKey(&'a str),
    WebBilling,
    WebLogs,
    WebSettings,
    WebSaveProfile,
    WebChangePassword,
    WebSignOutEverywhere,
    WebSetCap,
    WebRedeem,
    WebCheckout,
    Asset(&'a str),
    BillingRedeem,
    BillingPayInvoice(&'a str),
    AdminCodes,
    AdminCreateCode,
    AdminRevokeCode(&'a str),
    BillingPortal,
    BillingWebhook,
    /// A gateway endpoint: the request goes through the pipeline to an upstream.
    Forward(Endpoint),
}

impl Route<'_> {
    /// Operational endpoints are never shed by the in-flight cap, so probes keep answering
    /// under overload.
    pub fn is_ops(self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz | Route::Metrics)
    }
}

/// The outcome of routing a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed<'a> {
    Found(Route<'a>),
    /// The path exists but not with this method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    NotFound,
}

const MAX_SEGMENTS: usize = 8;

/// Routes `method` and `path`. A trailing slash is ignored; the gateway endpoints answer under
/// both `/api/v1/...` and `/v1/...`.
pub fn route<'a>(method: &Method, path: &'a str) -> Routed<'a> {
    let mut segs = [""; MAX_SEGMENTS];
    let mut n = 0;
    for seg in path.trim_matches('/').split('/') {
        if n == MAX_SEGMENTS {
            return Routed::NotFound;
        }
        segs[n] = seg;
        n += 1;
    }
    let m = method;
    match &segs[..n] {
        [""] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebLanding)]),
        ["login"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebLoginPage), (Method::POST, Route::WebLogin)],
        ),
        ["signup"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebSignupPage), (Method::POST, Route::WebSignup)],
        ),
        ["logout"] => pick(m, "POST", &[(Method::POST, Route::WebLogout)]),
        ["dashboard"] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebOverview)]),
        ["dashboard", "keys"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebKeys), (Method::POST, Route::WebCreateKey)],
        ),
        ["dashboard", "keys", id, "revoke"] => {
            pick(m, "POST", &[(Method::POST, Route::WebRevokeKey(id))])
        }
        ["dashboard", "keys", id, "rotate"] => {
            pick(m, "POST", &[(Method::POST, Route::WebRotateKey(id))])
        }
        ["admin", ..] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebAdminPage(path)), (Method::POST, Route::WebAdminForm(path))],
        ),
        ["dashboard", "usage"] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebUsage)]),
        ["dashboard", "billing"] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebBilling)]),
        ["dashboard", "logs"] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebLogs)]),
        ["dashboard", "settings"] => pick(m, "GET, HEAD", &[(Method::GET, Route::WebSettings)]),
        ["dashboard", "settings", "profile"] => {
            pick(m, "POST", &[(Method::POST, Route::WebSaveProfile)])
        }
        ["dashboard", "settings", "password"] => {
            pick(m, "POST", &[(Method::POST, Route::WebChangePassword)])
        }
        ["dashboard", "settings", "sign-out-everywhere"] => {
            pick(m, "POST", &[(Method::POST, Route::WebSignOutEverywhere)])
        }
        ["dashboard", "billing", "cap"] => pick(m, "POST", &[(Method::POST, Route::WebSetCap)]),
        ["dashboard", "billing", "redeem"] => pick(m, "POST", &[(Method::POST, Route::WebRedeem)]),
        ["dashboard", "billing", "checkout"] => {
            pick(m, "POST", &[(Method::POST, Route::WebCheckout)])
        }
        ["static", name @ ("app.css" | "app.js")] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::Asset(name))])
        }
        // `/api/health...`: the original product's paths, which its Docker health checks call.
        ["healthz"] | ["api", "health"] | ["api", "health", "live"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::Healthz)])
        }
        ["readyz"] | ["api", "health", "ready"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::Readyz)])
        }
        ["metrics"] => pick(m, "GET, HEAD", &[(Method::GET, Route::Metrics)]),
        ["api", "auth", "signup"] => pick(m, "POST", &[(Method::POST, Route::Signup)]),
        ["api", "auth", "login"] => pick(m, "POST", &[(Method::POST, Route::Login)]),
        ["api", "auth", "logout"] => pick(m, "POST", &[(Method::POST, Route::Logout)]),
        ["api", "auth", "password", "forgot"] => {
            pick(m, "POST", &[(Method::POST, Route::PasswordForgot)])
        }
        ["api", "auth", "password", "reset"] => {
            pick(m, "POST", &[(Method::POST, Route::PasswordReset)])
        }
        ["forgot-password"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebForgotPage), (Method::POST, Route::WebForgot)],
        ),
        ["api", "auth", "email", "verify"] => {
            pick(m, "POST", &[(Method::POST, Route::EmailVerify)])
        }
        ["api", "auth", "email", "resend"] => {
            pick(m, "POST", &[(Method::POST, Route::EmailResend)])
        }
        ["verify-email"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebVerifyPage), (Method::POST, Route::WebVerify)],
        ),
        ["reset-password"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::WebResetPage), (Method::POST, Route::WebReset)],
        ),
        ["api", "auth", "activity"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AuthActivity)]),
        ["api", "admin", "audit"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AdminAudit)]),
        ["api", "auth", "me"] => pick(
            m,
            "GET, HEAD, PATCH",
            &[(Method::GET, Route::Me), (Method::PATCH, Route::UpdateMe)],
        ),
        ["api", "keys"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::ListKeys), (Method::POST, Route::CreateKey)],
        ),
        ["api", "keys", id] => pick(
            m,
            "GET, HEAD, PATCH, DELETE",
            &[
                (Method::GET, Route::GetKey(id)),
                (Method::PATCH, Route::UpdateKey(id)),
                (Method::DELETE, Route::DeleteKey(id)),
            ],
        ),
        ["api", "keys", id, "rotate"] => pick(m, "POST", &[(Method::POST, Route::RotateKey(id))]),
        ["api", "admin", "users"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AdminUsers)]),
        ["api", "admin", "users", id] => pick(
            m,
            "PATCH, DELETE",
            &[
                (Method::PATCH, Route::AdminUpdateUser(id)),
                (Method::DELETE, Route::AdminDeleteUser(id)),
            ],
        ),
        ["api", "admin", "keys"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AdminKeys)]),
        ["api", "admin", "stats"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AdminStats)]),
        ["api", "usage", "logs"] => pick(m, "GET, HEAD", &[(Method::GET, Route::UsageLogs)]),
        ["api", "usage", "stats"] => pick(m, "GET, HEAD", &[(Method::GET, Route::UsageStats)]),
        ["api", "billing", "plans"] => pick(m, "GET, HEAD", &[(Method::GET, Route::BillingPlans)]),
        ["api", "billing", "summary"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::BillingSummary)])
        }
        ["api", "billing", "settings"] => {
            pick(m, "PATCH", &[(Method::PATCH, Route::BillingSettings)])
        }
        ["api", "billing", "ledger"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::BillingLedger)])
        }
        ["api", "billing", "invoices"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::BillingInvoices)])
        }
        ["api", "billing", "invoices", id, "pay"] => {
            pick(m, "POST", &[(Method::POST, Route::BillingPayInvoice(id))])
        }
        ["api", "billing", "invoices", id] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::BillingInvoice(id))])
        }
        ["api", "billing", "checkout"] => {
            pick(m, "POST", &[(Method::POST, Route::BillingCheckout)])
        }
        ["api", "billing", "redeem"] => pick(m, "POST", &[(Method::POST, Route::BillingRedeem)]),
        ["api", "admin", "codes"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::AdminCodes), (Method::POST, Route::AdminCreateCode)],
        ),
        ["api", "admin", "codes", id] => {
            pick(m, "DELETE", &[(Method::DELETE, Route::AdminRevokeCode(id))])
        }
        ["api", "billing", "portal"] => pick(m, "POST", &[(Method::POST, Route::BillingPortal)]),
        ["api", "billing", "webhook"] => pick(m, "POST", &[(Method::POST, Route::BillingWebhook)]),
        ["api", "admin", "plans"] => pick(m, "GET, HEAD", &[(Method::GET, Route::AdminPlans)]),
        ["api", "admin", "plans", tier] => {
            pick(m, "PATCH", &[(Method::PATCH, Route::AdminUpdatePlan(tier))])
        }
        ["api", "admin", "model-prices"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::AdminPrices), (Method::POST, Route::AdminAddPrice)],
        ),
        ["api", "admin", "model-prices", id] => pick(
            m,
            "PATCH, DELETE",
            &[
                (Method::PATCH, Route::AdminUpdatePrice(id)),
                (Method::DELETE, Route::AdminDeletePrice(id)),
            ],
        ),
        ["api", "admin", "users", id, "credits"] => {
            pick(m, "POST", &[(Method::POST, Route::AdminCredits(id))])
        }
        ["api", "admin", "billing", "close-period"] => {
            pick(m, "POST", &[(Method::POST, Route::AdminClosePeriod)])
        }
        ["api", "admin", "servers"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::AdminListServers), (Method::POST, Route::AdminCreateServer)],
        ),
        ["api", "admin", "servers", id] => pick(
            m,
            "PATCH, DELETE",
            &[
                (Method::PATCH, Route::AdminUpdateServer(id)),
                (Method::DELETE, Route::AdminDeleteServer(id)),
            ],
        ),
        ["api", "admin", "models"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::AdminListModels), (Method::POST, Route::AdminCreateModel)],
        ),
        ["api", "admin", "models", id] => pick(
            m,
            "PATCH, DELETE",
            &[
                (Method::PATCH, Route::AdminUpdateModel(id)),
                (Method::DELETE, Route::AdminDeleteModel(id)),
            ],
        ),
        ["api", "admin", "health"] => pick(
            m,
            "GET, HEAD, POST",
            &[(Method::GET, Route::AdminHealth), (Method::POST, Route::AdminCheckHealth)],
        ),
        ["api", "v1", "models"] | ["v1", "models"] => {
            pick(m, "GET, HEAD", &[(Method::GET, Route::Models)])
        }
        ["api", "v1", "chat", "completions"] | ["v1", "chat", "completions"] => {
            pick(m, "POST", &[(Method::POST, Route::Forward(Endpoint::ChatCompletions))])
        }
        ["api", "v1", "completions"] | ["v1", "completions"] => {
            pick(m, "POST", &[(Method::POST, Route::Forward(Endpoint::Completions))])
        }
        ["api", "v1", "embeddings"] | ["v1", "embeddings"] => {
            pick(m, "POST", &[(Method::POST, Route::Forward(Endpoint::Embeddings))])
        }
        ["api", "v1", "responses"] | ["v1", "responses"] => {
            pick(m, "POST", &[(Method::POST, Route::Forward(Endpoint::Responses))])
        }
        ["api", "v1", "messages"] | ["v1", "messages"] => {
            pick(m, "POST", &[(Method::POST, Route::Forward(Endpoint::Messages))])
        }
        _ => Routed::NotFound,
    }
}

/// The error body a path answers with: Anthropic's under its Messages routes (`/v1/messages`,
/// `/api/v1/messages` and below, so that an Anthropic SDK reads every error there, a 404 or a
/// 405 included), OpenAI's everywhere else.
pub fn error_shape(path: &str) -> ErrorShape {
    let path = path.strip_prefix("/api").unwrap_or(path);
    match path.strip_prefix("/v1/messages") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => ErrorShape::Anthropic,
        _ => ErrorShape::OpenAi,
    }
}

/// The route for `method` among a resource's methods (HEAD is answered like GET).
fn pick<'a>(method: &Method, allow: &'static str, routes: &[(Method, Route<'a>)]) -> Routed<'a> {
    let wanted = if method == Method::HEAD { &Method::GET } else { method };
    routes
        .iter()
        .find(|(m, _)| m == wanted)
        .map_or(Routed::MethodNotAllowed(allow), |(_, r)| Routed::Found(*r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_and_without_trailing_slash() {
        assert_eq!(route(&Method::GET, "/healthz"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::GET, "/healthz/"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::HEAD, "/readyz"), Routed::Found(Route::Readyz));
        assert_eq!(route(&Method::GET, "/api/health"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::GET, "/api/health/live"), Routed::Found(Route::Healthz));
        assert_eq!(route(&Method::GET, "/api/health/ready"), Routed::Found(Route::Readyz));
        assert_eq!(route(&Method::POST, "/api/auth/signup"), Routed::Found(Route::Signup));
    }

    #[test]
    fn parameters_are_borrowed_from_the_path() {
        assert_eq!(route(&Method::PATCH, "/api/keys/abc"), Routed::Found(Route::UpdateKey("abc")));
        assert_eq!(
            route(&Method::DELETE, "/api/keys/abc/"),
            Routed::Found(Route::DeleteKey("abc"))
        );
        assert_eq!(
            route(&Method::POST, "/api/keys/abc/rotate"),
            Routed::Found(Route::RotateKey("abc"))
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Routed::Found(Route::Models));
        assert_eq!(route(&Method::GET, "/api/v1/models"), Routed::Found(Route::Models));
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions"),
            Routed::Found(Route::Forward(Endpoint::ChatCompletions))
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/embeddings/"),
            Routed::Found(Route::Forward(Endpoint::Embeddings))
        );
        for (path, endpoint) in [
            ("/v1/completions", Endpoint::Completions),
            ("/api/v1/completions", Endpoint::Completions),
            ("/v1/responses", Endpoint::Responses),
            ("/api/v1/responses", Endpoint::Responses),
            ("/v1/messages", Endpoint::Messages),
            ("/api/v1/messages/", Endpoint::Messages),
        ] {
            assert_eq!(route(&Method::POST, path), Routed::Found(Route::Forward(endpoint)));
        }
        assert_eq!(route(&Method::GET, "/v1/messages"), Routed::MethodNotAllowed("POST"));
        assert_eq!(
            route(&Method::GET, "/api/v1/chat/completions"),
            Routed::MethodNotAllowed("POST")
        );
    }

    #[test]
    fn the_messages_routes_answer_errors_in_anthropics_shape() {
        for path in ["/v1/messages", "/api/v1/messages", "/v1/messages/", "/v1/messages/batches"] {
            assert_eq!(error_shape(path), ErrorShape::Anthropic, "{path}");
        }
        for path in ["/v1/messagesx", "/v1/chat/completions", "/api/v1/responses", "/messages"] {
            assert_eq!(error_shape(path), ErrorShape::OpenAi, "{path}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow_and_unknown_paths_404() {
        assert_eq!(route(&Method::POST, "/healthz"), Routed::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route(&Method::GET, "/api/auth/signup"), Routed::MethodNotAllowed("POST"));
        assert_eq!(
            route(&Method::PUT, "/api/keys/x"),
            Routed::MethodNotAllowed("GET, HEAD, PATCH, DELETE")
        );
        assert_eq!(route(&Method::GET, "/nope"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/"), Routed::Found(Route::WebLanding));
        assert_eq!(route(&Method::GET, "/static/other.js"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/static/app.css"), Routed::Found(Route::Asset("app.css")));
        assert_eq!(route(&Method::GET, "/a/b/c/d/e/f/g/h/i"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/healthz/extra"), Routed::NotFound);
    }
}
