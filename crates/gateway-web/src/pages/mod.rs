//! The pages: what each shows, from view models the binary fills.

use maud::{Markup, html};

use crate::{thousands, usd};

pub mod admin;
mod keys;
mod usage;
pub use keys::{KeyForm, KeyRow, NewKeyShown, PlanLimits, keys};
pub use usage::{RANGES, Usage, UsageRow, bar_chart, usage};

/// A form's error, next to the field it is about (`None`: the form as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

pub(crate) fn error_for<'a>(errors: &'a [FieldError], field: &str) -> Option<&'a str> {
    errors.iter().find(|e| e.field.as_deref() == Some(field)).map(|e| e.message.as_str())
}

pub(crate) fn form_errors(errors: &[FieldError]) -> Markup {
    html! {
        @for e in errors.iter().filter(|e| e.field.is_none()) {
            p.notice.error role="alert" { (e.message) }
        }
    }
}

/// One labelled input with its error, if any.
pub(crate) fn input(
    id: &str,
    label: &str,
    kind: &str,
    value: &str,
    autocomplete: &str,
    errors: &[FieldError],
) -> Markup {
    let error = error_for(errors, id);
    let described = error.map(|_| format!("{id}-error"));
    html! {
        label for=(id) { (label) }
        input #(id) name=(id) type=(kind) value=(value) autocomplete=(autocomplete) required
            aria-invalid=[error.map(|_| "true")] aria-describedby=[described.as_deref()];
        @if let Some(message) = error {
            p.field-error id=(format!("{id}-error")) { (message) }
        }
    }
}

/// `/`: what the gateway is and how to start.
pub fn landing(base_url: &str, signed_in: bool) -> Markup {
    html! {
        h1 { "An OpenAI-compatible gateway for your team" }
        div.card {
            p { "Create an account, make an API key, and call any model the gateway serves with the OpenAI SDK you already use. Usage, limits and billing are in your dashboard." }
            div.actions {
                @if signed_in {
                    a.button href="/dashboard" { "Open your dashboard" }
                } @else {
                    a.button href="/signup" { "Create an account" }
                    a href="/login" { "Sign in" }
                }
            }
        }
        h2 { "Quick start" }
        pre { code { "from openai import OpenAI\n\nclient = OpenAI(base_url=\"" (base_url) "/api/v1\", api_key=\"bm_...\")\nprint(client.chat.completions.create(\n    model=\"gpt-4\", messages=[{\"role\": \"user\", \"content\": \"Hello!\"}]\n).choices[0].message.content)" } }
    }
}

/// `/login`.
pub fn login(email: &str, errors: &[FieldError]) -> Markup {
    html! {
        div.card.narrow {
            h1 { "Sign in" }
            (form_errors(errors))
            form method="post" action="/login" {
                (input("email", "Email", "email", email, "username", errors))
                (input("password", "Password", "password", "", "current-password", errors))
                div.actions {
                    button type="submit" { "Sign in" }
                    a href="/signup" { "Create an account" }
                    a href="/forgot-password" { "Forgot your password?" }
                }
            }
        }
    }
}

/// `/forgot-password`: the form, or what happens next once sent. Without mail set up on the
/// gateway, it says so and who can help.
pub fn forgot_password(email: &str, mail_on: bool, sent: bool, errors: &[FieldError]) -> Markup {
    html! {
        div.card.narrow {
            h1 { "Reset your password" }
            @if !mail_on {
                p.notice.error role="alert" {
                    "Password reset by email is not set up on this gateway. Ask its administrator \
                     to reset your password."
                }
            } @else if sent {
                p.notice role="status" {
                    "If an account exists for " strong { (email) } ", a link to reset its \
                     password is on its way. It works for 30 minutes and once."
                }
                p { a href="/login" { "Back to sign in" } }
            } @else {
                (form_errors(errors))
                form method="post" action="/forgot-password" {
                    (input("email", "Email", "email", email, "email", errors))
                    div.actions {
                        button type="submit" { "Send me a reset link" }
                        a href="/login" { "Back to sign in" }
                    }
                }
            }
        }
    }
}

/// What `/verify-email` shows: a link's confirm button, the result, or a form for a new link.
#[derive(Debug)]
pub enum VerifyStep<'a> {
    /// Opened from the mail: one button confirms (a link scanner's visit changes nothing).
    Confirm(&'a str),
    Confirmed,
    /// No token: a form for a new link; `sent` once asked.
    Resend {
        email: &'a str,
        sent: bool,
    },
    /// After sign-up: where the link went.
    CheckMail(&'a str),
}

/// `/verify-email`.
pub fn verify_email(step: &VerifyStep<'_>, errors: &[FieldError]) -> Markup {
    html! {
        div.card.narrow {
            h1 { "Confirm your email address" }
            (form_errors(errors))
            @match step {
                VerifyStep::Confirm(token) => {
                    form method="post" action="/verify-email" {
                        input type="hidden" name="token" value=(token);
                        div.actions { button type="submit" { "Confirm my email address" } }
                    }
                }
                VerifyStep::Confirmed => {
                    p.notice role="status" { "Your email address is confirmed." }
                    p { a href="/login" { "Sign in" } }
                }
                VerifyStep::CheckMail(email) => {
                    p.notice role="status" {
                        "Your account is created. We mailed a link to " strong { (email) }
                        ": open it within 30 minutes to confirm the address, then sign in."
                    }
                    p { a href="/verify-email" { "No mail? Send a new link" } }
                }
                VerifyStep::Resend { email, sent: true } => {
                    p.notice role="status" {
                        "If " strong { (email) } " belongs to an account waiting for its \
                         confirmation, a new link is on its way."
                    }
                    p { a href="/login" { "Back to sign in" } }
                }
                VerifyStep::Resend { email, sent: false } => {
                    p { "A new account opens once its email address is confirmed. Enter it to \
                        get a new link (it works for 30 minutes)." }
                    form method="post" action="/verify-email" {
                        (input("email", "Email", "email", email, "email", errors))
                        div.actions {
                            button type="submit" { "Send me a new link" }
                            a href="/login" { "Back to sign in" }
                        }
                    }
                }
            }
        }
    }
}

/// `/reset-password?token=...`: a new password for the account of the link; done, a way to
/// sign in.
pub fn reset_password(token: &str, done: bool, errors: &[FieldError]) -> Markup {
    html! {
        div.card.narrow {
            h1 { "Choose a new password" }
            @if done {
                p.notice role="status" {
                    "Your password is changed and every session of your account has ended."
                }
                p { a href="/login" { "Sign in with the new password" } }
            } @else {
                (form_errors(errors))
                form method="post" action="/reset-password" {
                    input type="hidden" name="token" value=(token);
                    (input("password", "New password", "password", "", "new-password", errors))
                    p.hint { "8 characters at least." }
                    div.actions {
                        button type="submit" { "Set the new password" }
                        a href="/forgot-password" { "Send a new link" }
                    }
                }
            }
        }
    }
}

/// `/signup`.
pub fn signup(email: &str, full_name: &str, errors: &[FieldError]) -> Markup {
    let name_error = error_for(errors, "full_name");
    html! {
        div.card.narrow {
            h1 { "Create an account" }
            (form_errors(errors))
            form method="post" action="/signup" {
                (input("email", "Email", "email", email, "email", errors))
                (input("password", "Password", "password", "", "new-password", errors))
                p.hint { "8 characters at least." }
                label for="full_name" { "Name " span.hint { "(optional)" } }
                input #full_name name="full_name" type="text" value=(full_name) autocomplete="name"
                    aria-invalid=[name_error.map(|_| "true")];
                @if let Some(message) = name_error {
                    p.field-error { (message) }
                }
                div.actions {
                    button type="submit" { "Create account" }
                    a href="/login" { "I have an account" }
                }
            }
        }
    }
}

/// One request of the log, as the overview lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    pub when: String,
    pub model: String,
    pub status: u16,
    pub total_tokens: u64,
    pub cost_micros: i64,
    pub latency_ms: u32,
    pub request_id: String,
}

/// Requests as a table (the overview's latest and the log's pages).
fn log_table(rows: &[LogRow]) -> Markup {
    html! {
    div.card.table-wrap {
        table {
            thead { tr {
                th scope="col" { "When (UTC)" } th scope="col" { "Model" } th scope="col" { "Status" }
                th.num scope="col" { "Tokens" } th.num scope="col" { "Cost" }
                th.num.hide-narrow scope="col" { "Latency" } th.hide-narrow scope="col" { "Request id" }
            } }
            tbody {
                @for r in rows {
                    tr {
                        td { (r.when) }
                        td { (r.model) }
                        td { span.badge.ok[r.status < 400].err[r.status >= 400] { (r.status) } }
                        td.num { (thousands(r.total_tokens)) }
                        td.num { (usd(r.cost_micros)) }
                        td.num.hide-narrow { (r.latency_ms) " ms" }
                        td.mono.hide-narrow { (r.request_id) }
                    }
                }
            }
        }
    }
    }
}

/// The overview's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overview {
    /// "the last 30 days".
    pub range: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: i64,
    pub errors: u64,
    pub plan: String,
    pub tokens_this_month: u64,
    pub included_tokens: u64,
    pub recent: Vec<LogRow>,
    /// Where the SDK points (`https://gateway.example.com`).
    pub base_url: String,
    pub has_keys: bool,
    /// Tokens each day of the range, oldest first.
    pub daily: Vec<(String, u64)>,
}

/// `/dashboard`: the period's numbers, the latest requests, and how to call the gateway.
pub fn overview(o: &Overview) -> Markup {
    let error_rate =
        if o.requests == 0 { 0.0 } else { o.errors as f64 * 100.0 / o.requests as f64 };
    html! {
        h1 { "Overview" }
        p.hint { "Your usage over " (o.range) ", on the " (o.plan) " plan; totals catch up with new requests within a few seconds." }
        div.grid {
            div.card.stat { div.label { "Requests" } div.value { (thousands(o.requests)) } }
            div.card.stat { div.label { "Tokens" } div.value { (thousands(o.tokens)) } }
            div.card.stat { div.label { "Cost at model prices" } div.value { (usd(o.cost_micros)) } }
            div.card.stat { div.label { "Error rate" } div.value { (format!("{error_rate:.1}%")) } }
            div.card.stat {
                div.label { "Tokens this month" }
                div.value { (thousands(o.tokens_this_month)) }
                div.hint { "of " (thousands(o.included_tokens)) " included" }
            }
        }
        @if o.requests > 0 {
            div.card {
                h2 { "Tokens a day" }
                @let labels: Vec<&str> = o.daily.iter().map(|(d, _)| d.as_str()).collect();
                @let values: Vec<u64> = o.daily.iter().map(|(_, v)| *v).collect();
                (bar_chart(&format!("Tokens a day over {}", o.range), &labels, &values))
                p { a href="/dashboard/usage" { "Usage by day, model and key →" } }
            }
        }
        h2 { "Latest requests" }
        @if o.recent.is_empty() {
            div.card.empty {
                p { "No requests yet." }
                @if o.has_keys {
                    p { "Call the gateway with one of your keys, as below; your requests appear here." }
                } @else {
                    p { a.button href="/dashboard/keys" { "Create your first API key" } }
                }
            }
        } @else {
            (log_table(&o.recent))
        }
        h2 { "Call the gateway" }
        p.hint { "With a key of yours in " code { "BLUESMINDS_KEY" } ":" }
        div.code-block {
            button.secondary type="button" data-copy="example" { "Copy" }
            pre #example { code { "curl " (o.base_url) "/api/v1/chat/completions \\\n  -H \"Authorization: Bearer $BLUESMINDS_KEY\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{\"model\": \"gpt-4\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'" } }
        }
    }
}

/// A page that is not there (or not for this viewer).
pub fn not_found() -> Markup {
    html! {
        div.card.narrow {
            h1 { "Page not found" }
            p { "There is no such page. " a href="/dashboard" { "Back to your dashboard" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overview_of_someone_without_usage_says_what_to_do_next() {
        let o = Overview {
            range: "the last 30 days".into(),
            requests: 0,
            tokens: 0,
            cost_micros: 0,
            errors: 0,
            plan: "Free".into(),
            tokens_this_month: 0,
            included_tokens: 10_000,
            recent: Vec::new(),
            base_url: "http://localhost:3000".into(),
            has_keys: false,
            daily: Vec::new(),
        };
        let page = overview(&o).into_string();
        assert!(page.contains("No requests yet") && page.contains("Create your first API key"));
    }

    #[test]
    fn a_field_error_is_next_to_its_field() {
        let errors = [FieldError { field: Some("email".into()), message: "is taken".into() }];
        let page = signup("a@b.example", "", &errors).into_string();
        assert!(page.contains("aria-invalid=\"true\""));
        assert!(page.contains("id=\"email-error\"") && page.contains("is taken"));
    }
}

/// A plan one can move to by checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub tier: String,
    pub name: String,
    pub price_micros: i64,
    pub included_tokens: u64,
}

/// An invoice as the billing page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRow {
    pub id: String,
    pub number: String,
    pub period: String,
    pub total_micros: i64,
    pub status: String,
}

/// The billing page's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Billing {
    pub plan: String,
    pub price_micros: i64,
    /// `2026-12`.
    pub period: String,
    pub tokens_used: u64,
    pub tokens_included: u64,
    pub overage_tokens: u64,
    pub overage_micros: i64,
    /// `None`: the plan has no overage (a hard stop at the included tokens).
    pub overage_rate_per_1k: Option<i64>,
    pub cap_micros: i64,
    pub cap_is_default: bool,
    pub max_cap_micros: i64,
    pub ceiling_tokens: u64,
    pub credits_micros: i64,
    pub estimated_total_micros: i64,
    pub past_due: bool,
    /// Plans on sale by checkout (empty without payments).
    pub offers: Vec<Offer>,
    pub invoices: Vec<InvoiceRow>,
    /// A message after an action ("Code redeemed: ...").
    pub notice: Option<String>,
}

/// A ceiling this large is none (2^53, as the limiter states it).
const UNLIMITED: u64 = 1 << 53;

/// `/dashboard/billing`: the plan and the month, the spend cap, credits, invoices.
pub fn billing(b: &Billing, errors: &[FieldError]) -> Markup {
    let dollars = gateway_billing::money::plain;
    html! {
        h1 { "Billing" }
        @if let Some(n) = &b.notice { p.notice role="status" { (n) } }
        (form_errors(errors))
        @if b.past_due {
            p.notice.error role="alert" { "An invoice is past due: your keys have the Free plan's limits until it is paid. Pay it below." }
        }
        div.card {
            h2 { (b.plan) " plan · " (usd(b.price_micros)) " a month" }
            label for="usage-meter" { "Tokens this month (" (b.period) ")" }
            meter #usage-meter min="0" max=(b.tokens_included.max(1)) value=(b.tokens_used.min(b.tokens_included.max(1))) { (thousands(b.tokens_used)) }
            p { (thousands(b.tokens_used)) " of " (thousands(b.tokens_included)) " included tokens used." }
            @match b.overage_rate_per_1k {
                Some(rate) => p {
                    "Beyond them: " (usd(rate)) " per 1,000 tokens. Overage so far: " (thousands(b.overage_tokens)) " tokens, " (usd(b.overage_micros)) ". "
                    @if b.ceiling_tokens >= UNLIMITED {
                        "Your account has no monthly ceiling."
                    } @else {
                        "Your spend cap stops requests at " (thousands(b.ceiling_tokens)) " tokens this month."
                    }
                },
                None => p { "This plan stops requests at its included tokens; they renew on the first of the month (UTC)." },
            }
            p { strong { "Estimated total: " (usd(b.estimated_total_micros)) } }
        }
        @if b.overage_rate_per_1k.is_some() {
            div.card {
                h2 { "Spend cap" }
                form method="post" action="/dashboard/billing/cap" {
                    label for="cap" { "Most overage in a month, in US dollars" }
                    input #cap name="cap" type="number" min="0" step="0.01" max=(dollars(b.max_cap_micros)) value=(dollars(b.cap_micros))
                        aria-describedby="cap-hint" aria-invalid=[error_for(errors, "overage_cap_micros").map(|_| "true")];
                    @if let Some(message) = error_for(errors, "overage_cap_micros") {
                        p.field-error { (message) }
                    }
                    p.hint #cap-hint {
                        @if b.cap_is_default { "The plan's price, by default. " }
                        "From $0 (no overage) to " (usd(b.max_cap_micros)) "."
                    }
                    div.actions { button type="submit" { "Save the cap" } }
                }
            }
        }
        div.card {
            h2 { "Credits" }
            p { "Balance: " strong { (usd(b.credits_micros)) } ". Credits pay your invoices first." }
            form method="post" action="/dashboard/billing/redeem" {
                label for="code" { "Redeem a code" }
                input #code name="code" type="text" autocomplete="off" required
                    aria-invalid=[error_for(errors, "code").map(|_| "true")];
                @if let Some(message) = error_for(errors, "code") {
                    p.field-error { (message) }
                }
                div.actions { button type="submit" { "Redeem" } }
            }
        }
        @if !b.offers.is_empty() {
            div.card {
                h2 { "Change plan" }
                div.grid {
                    @for o in &b.offers {
                        form method="post" action="/dashboard/billing/checkout" {
                            input type="hidden" name="tier" value=(o.tier);
                            p { strong { (o.name) } br; (usd(o.price_micros)) " a month, " (thousands(o.included_tokens)) " tokens included" }
                            button type="submit" { "Choose " (o.name) }
                        }
                    }
                }
            }
        }
        h2 { "Invoices" }
        @if b.invoices.is_empty() {
            div.card.empty { p { "No invoices yet: the month is invoiced on the first of the next." } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr { th scope="col" { "Number" } th scope="col" { "Period" } th.num scope="col" { "Amount due" } th scope="col" { "Status" } th scope="col" { span.skip { "View" } } } }
                    tbody {
                        @for i in &b.invoices {
                            tr {
                                td.mono { (i.number) }
                                td { (i.period) }
                                td.num { (usd(i.total_micros)) }
                                td { span.badge.ok[i.status == "paid"].err[i.status == "open"] { (i.status) } }
                                td { a href=(format!("/api/billing/invoices/{}?format=html", i.id)) { "View " span.skip { (i.number) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The logs page's filters, as chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilters {
    /// `success`, `error` or empty.
    pub status: String,
    pub model: String,
    /// A key id or empty.
    pub key: String,
}

impl LogFilters {
    /// The filters as a query string (for the next page's link), with `cursor`.
    fn query(&self, cursor: &str) -> String {
        let mut q = Vec::new();
        for (k, v) in [("status", &self.status), ("model", &self.model), ("key", &self.key)] {
            if !v.is_empty() {
                q.push(format!("{k}={}", crate::form::encode(v)));
            }
        }
        q.push(format!("cursor={}", crate::form::encode(cursor)));
        q.join("&")
    }
}

/// `/dashboard/logs`: the caller's requests, newest first, filtered, a page at a time.
pub fn logs(
    rows: &[LogRow],
    filters: &LogFilters,
    keys: &[(String, String)],
    next_cursor: Option<&str>,
    error: Option<&str>,
) -> Markup {
    html! {
        h1 { "Request log" }
        form.card method="get" action="/dashboard/logs" {
            div.grid {
                div {
                    label for="status" { "Status" }
                    select #status name="status" {
                        option value="" selected[filters.status.is_empty()] { "All" }
                        option value="success" selected[filters.status == "success"] { "Succeeded" }
                        option value="error" selected[filters.status == "error"] { "Failed" }
                    }
                }
                div {
                    label for="model" { "Model" }
                    input #model name="model" type="text" value=(filters.model) placeholder="any";
                }
                div {
                    label for="key" { "API key" }
                    select #key name="key" {
                        option value="" selected[filters.key.is_empty()] { "All keys" }
                        @for (id, name) in keys {
                            option value=(id) selected[filters.key == *id] { (name) }
                        }
                    }
                }
            }
            div.actions { button type="submit" { "Filter" } a href="/dashboard/logs" { "Clear" } }
        }
        @if let Some(e) = error { p.notice.error role="alert" { (e) } }
        @if rows.is_empty() {
            div.card.empty { p { "No requests match." } }
        } @else {
            (log_table(rows))
            @if let Some(cursor) = next_cursor {
                p { a href=(format!("/dashboard/logs?{}", filters.query(cursor))) { "Older requests →" } }
            }
        }
    }
}

/// `/dashboard/settings`: the profile, the password, signing out everywhere.
pub fn settings(
    full_name: &str,
    company_name: &str,
    notice: Option<&str>,
    errors: &[FieldError],
) -> Markup {
    let field_error =
        |field: &str| error_for(errors, field).map(|message| html! { p.field-error { (message) } });
    html! {
        h1 { "Settings" }
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        (form_errors(errors))
        div.card {
            h2 { "Profile" }
            form method="post" action="/dashboard/settings/profile" {
                label for="full_name" { "Name" }
                input #full_name name="full_name" type="text" value=(full_name) autocomplete="name"
                    aria-invalid=[error_for(errors, "full_name").map(|_| "true")];
                @if let Some(e) = field_error("full_name") { (e) }
                label for="company_name" { "Company" }
                input #company_name name="company_name" type="text" value=(company_name) autocomplete="organization"
                    aria-invalid=[error_for(errors, "company_name").map(|_| "true")];
                @if let Some(e) = field_error("company_name") { (e) }
                div.actions { button type="submit" { "Save" } }
            }
        }
        div.card {
            h2 { "Password" }
            form method="post" action="/dashboard/settings/password" {
                (input("current_password", "Current password", "password", "", "current-password", errors))
                (input("new_password", "New password", "password", "", "new-password", errors))
                p.hint { "Changing it signs out every other browser." }
                div.actions { button type="submit" { "Change password" } }
            }
        }
        div.card {
            h2 { "Sessions" }
            form method="post" action="/dashboard/settings/sign-out-everywhere"
                data-confirm="Sign out of every browser, this one included?" {
                p { "Lost a device? End every session of your account." }
                button.danger type="submit" { "Sign out everywhere" }
            }
        }
    }
}
