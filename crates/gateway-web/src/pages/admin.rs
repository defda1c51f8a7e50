//! `/admin/...`: the platform at a glance, upstream servers, users, plans and model prices,
//! redemption codes. Only administrators see these pages; everyone else gets "not found".

use maud::{Markup, html};

use super::{FieldError, error_for, form_errors};
use crate::{thousands, usd};
use gateway_billing::money::plain;

/// The admin section's own navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Overview,
    Servers,
    Users,
    Plans,
    Codes,
}

fn tabs(current: Section) -> Markup {
    let here = |s: Section| (s == current).then_some("page");
    html! {
        nav.tabs aria-label="Administration" {
            a href="/admin" aria-current=[here(Section::Overview)] { "Platform" }
            a href="/admin/servers" aria-current=[here(Section::Servers)] { "Servers" }
            a href="/admin/users" aria-current=[here(Section::Users)] { "Users" }
            a href="/admin/plans" aria-current=[here(Section::Plans)] { "Plans and prices" }
            a href="/admin/codes" aria-current=[here(Section::Codes)] { "Codes" }
        }
    }
}

fn notice(text: Option<&str>) -> Markup {
    html! { @if let Some(n) = text { p.notice role="status" { (n) } } }
}

/// A labelled input (optional unless `required`) with its error.
fn field(
    id: &str,
    label: &str,
    kind: &str,
    value: &str,
    required: bool,
    errors: &[FieldError],
) -> Markup {
    let error = error_for(errors, id);
    html! {
        div {
            label for=(id) { (label) @if !required { " " span.hint { "(optional)" } } }
            input #(id) name=(id) type=(kind) value=(value) required[required] step=[(kind == "number").then_some("any")]
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| format!("{id}-error"))];
            @if let Some(message) = error { p.field-error id=(format!("{id}-error")) { (message) } }
        }
    }
}

/// An upstream server with its health as this instance sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub has_api_key: bool,
    pub priority: u32,
    pub weight: u32,
    pub max_concurrent: Option<u32>,
    /// Comma-separated; empty: any model.
    pub models: String,
    pub active: bool,
    /// `healthy`, `degraded`, `unhealthy`, `unknown`.
    pub status: String,
    pub latency_ms: Option<u32>,
    pub failures: u32,
    pub circuit_open: bool,
    pub in_flight: u32,
    pub last_check: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// What the check just run said, when it failed.
    pub detail: Option<String>,
}

fn health_badge(s: &ServerRow) -> Markup {
    html! {
        @if !s.active { span.badge.off { "disabled" } }
        @else if s.circuit_open { span.badge.err { "circuit open" } }
        @else { span.badge.ok[s.status == "healthy"].err[s.status == "unhealthy"] { (s.status) } }
    }
}

fn health_table(servers: &[ServerRow], actions: bool) -> Markup {
    html! {
        div.card.table-wrap #health data-refresh="10" {
            table {
                thead { tr {
                    th scope="col" { "Server" } th scope="col" { "Health" } th.num scope="col" { "Latency" }
                    th.num.hide-narrow scope="col" { "In flight" } th.num.hide-narrow scope="col" { "Failures in a row" }
                    th.num.hide-narrow scope="col" { "Requests / errors" } th.hide-narrow scope="col" { "Last check (UTC)" }
                    @if actions { th scope="col" { span.skip { "Actions" } } }
                } }
                tbody {
                    @for s in servers {
                        tr {
                            td {
                                strong { (s.name) } br;
                                span.hint.mono { (s.base_url) }
                                @if actions {
                                    br; span.hint { "priority " (s.priority) " · weight " (s.weight)
                                        @if let Some(m) = s.max_concurrent { " · at most " (m) " at once" }
                                        " · " @if s.models.is_empty() { "any model" } @else { (s.models) }
                                        @if s.has_api_key { " · key set" } }
                                }
                                @if let Some(d) = &s.detail { br; span.field-error { (d) } }
                            }
                            td { (health_badge(s)) }
                            td.num { @if let Some(ms) = s.latency_ms { (ms) " ms" } @else { "—" } }
                            td.num.hide-narrow { (s.in_flight) }
                            td.num.hide-narrow { (s.failures) }
                            td.num.hide-narrow { (thousands(s.requests)) " / " (thousands(s.errors)) }
                            td.hide-narrow { (s.last_check.as_deref().unwrap_or("never")) }
                            @if actions {
                                td.row-actions {
                                    a.button.secondary href=(format!("/admin/servers/{}", s.id)) aria-label=(format!("Edit {}", s.name)) { "Edit" }
                                    " "
                                    form.inline method="post" action=(format!("/admin/servers/{}/{}", s.id, if s.active { "disable" } else { "enable" })) {
                                        button.secondary type="submit" aria-label=(format!("{} {}", if s.active { "Disable" } else { "Enable" }, s.name)) {
                                            @if s.active { "Disable" } @else { "Enable" }
                                        }
                                    }
                                    " "
                                    form.inline method="post" action=(format!("/admin/servers/{}/delete", s.id))
                                        data-confirm=(format!("Delete the server “{}”? Requests stop going to it at once.", s.name)) {
                                        button.danger type="submit" aria-label=(format!("Delete {}", s.name)) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The platform's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminOverview {
    pub users: u64,
    pub active_keys: u64,
    pub requests_today: u64,
    pub tokens_today: u64,
    pub errors_today: u64,
    pub active_users_today: u64,
    /// `2026-12`.
    pub month: String,
    pub revenue_micros: i64,
    pub upstream_cost_micros: i64,
    pub servers: Vec<ServerRow>,
}

/// `/admin`.
pub fn overview(o: &AdminOverview) -> Markup {
    let healthy =
        o.servers.iter().filter(|s| s.active && s.status == "healthy" && !s.circuit_open).count();
    html! {
        h1 { "Administration" }
        (tabs(Section::Overview))
        div.grid {
            div.card.stat { div.label { "Users" } div.value { (thousands(o.users)) } }
            div.card.stat { div.label { "Active keys" } div.value { (thousands(o.active_keys)) } }
            div.card.stat { div.label { "Requests today" } div.value { (thousands(o.requests_today)) }
                div.hint { (thousands(o.errors_today)) " failed · " (thousands(o.active_users_today)) " user" @if o.active_users_today != 1 { "s" } } }
            div.card.stat { div.label { "Tokens today" } div.value { (thousands(o.tokens_today)) } }
        }
        div.grid {
            div.card.stat { div.label { "Received in " (o.month) } div.value { (usd(o.revenue_micros)) }
                div.hint { "payments that succeeded" } }
            div.card.stat { div.label { "Upstream cost in " (o.month) } div.value { (usd(o.upstream_cost_micros)) }
                div.hint { "usage at model prices" } }
            div.card.stat { div.label { "Margin" } div.value { (usd(o.revenue_micros - o.upstream_cost_micros)) } }
        }
        h2 { "Servers: " (healthy) " of " (o.servers.len()) " healthy" }
        @if o.servers.is_empty() {
            div.card.empty { p { "No upstream servers: requests cannot be served." } p { a.button href="/admin/servers" { "Add a server" } } }
        } @else {
            (health_table(&o.servers, false))
        }
    }
}

/// The server form's values (the upstream key is never shown back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerForm {
    pub name: String,
    pub base_url: String,
    pub priority: String,
    pub weight: String,
    pub max_concurrent: String,
    pub models: String,
}

fn server_fields(f: &ServerForm, editing: bool, errors: &[FieldError]) -> Markup {
    html! {
        div.grid {
            (field("name", "Name", "text", &f.name, true, errors))
            (field("base_url", "Base URL", "url", &f.base_url, true, errors))
        }
        div.grid {
            div {
                label for="api_key" { "Upstream API key " span.hint { @if editing { "(blank: unchanged)" } @else { "(optional)" } } }
                input #api_key name="api_key" type="password" autocomplete="off"
                    aria-invalid=[error_for(errors, "api_key").map(|_| "true")];
                @if editing {
                    label.check { input type="checkbox" name="clear_api_key" value="1"; " Remove the key" }
                }
            }
            (field("supported_models", "Models it serves", "text", &f.models, false, errors))
        }
        p.hint { "Models comma-separated; blank: any model. Lower priority numbers are tried first; weights share traffic within a priority." }
        div.grid {
            (field("priority", "Priority", "number", &f.priority, false, errors))
            (field("weight", "Weight", "number", &f.weight, false, errors))
            (field("max_concurrent_requests", "Most requests at once", "number", &f.max_concurrent, false, errors))
        }
    }
}

/// `/admin/servers`.
pub fn servers(
    rows: &[ServerRow],
    form: &ServerForm,
    note: Option<&str>,
    errors: &[FieldError],
) -> Markup {
    html! {
        h1 { "Upstream servers" }
        (tabs(Section::Servers))
        (notice(note))
        div.actions {
            form.inline method="post" action="/admin/servers/check" {
                button.secondary type="submit" { "Check every server now" }
            }
            span.hint { "Health is checked in the background too and this table follows it every 10 seconds; it shows this instance's view." }
        }
        @if rows.is_empty() {
            div.card.empty { p { "No servers yet: add the first one below." } }
        } @else {
            (health_table(rows, true))
        }
        div.card {
            h2 { "Add a server" }
            (form_errors(errors))
            form method="post" action="/admin/servers" {
                (server_fields(form, false, errors))
                div.actions { button type="submit" { "Add server" } }
            }
        }
    }
}

/// `/admin/servers/{id}`: one server's settings.
pub fn server_edit(id: &str, form: &ServerForm, errors: &[FieldError]) -> Markup {
    html! {
        h1 { "Edit " (form.name) }
        (tabs(Section::Servers))
        div.card {
            (form_errors(errors))
            form method="post" action=(format!("/admin/servers/{id}")) {
                (server_fields(form, true, errors))
                div.actions { button type="submit" { "Save" } a href="/admin/servers" { "Cancel" } }
            }
        }
    }
}

/// A user as the admin list shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub name: String,
    pub tier: String,
    pub role: String,
    pub status: String,
    pub credits_micros: i64,
    pub created: String,
}

/// `/admin/users?q=`: search by email, a page at a time.
pub fn users(rows: &[UserRow], q: &str, next: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        h1 { "Users" }
        (tabs(Section::Users))
        form.card.search method="get" action="/admin/users" role="search" {
            label for="q" { "Email contains" }
            div.secret {
                input #q name="q" type="search" value=(q) autocomplete="off";
                button type="submit" { "Search" }
            }
        }
        @if let Some(e) = error { p.notice.error role="alert" { (e) } }
        @if rows.is_empty() {
            div.card.empty { p { "No user matches." } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Email" } th scope="col" { "Plan" } th.hide-narrow scope="col" { "Role" }
                        th scope="col" { "Status" } th.num.hide-narrow scope="col" { "Credits" } th.hide-narrow scope="col" { "Since" }
                    } }
                    tbody {
                        @for u in rows {
                            tr {
                                td { a href=(format!("/admin/users/{}", u.id)) { (u.email) } @if !u.name.is_empty() { br; span.hint { (u.name) } } }
                                td { (u.tier) }
                                td.hide-narrow { (u.role) }
                                td { span.badge.ok[u.status == "active"].err[u.status != "active"] { (u.status) } }
                                td.num.hide-narrow { (usd(u.credits_micros)) }
                                td.hide-narrow { (u.created) }
                            }
                        }
                    }
                }
            }
            @if let Some(after) = next {
                p { a href=(format!("/admin/users?q={}&after={}", crate::form::encode(q), crate::form::encode(after))) { "More users →" } }
            }
        }
    }
}

/// `/admin/users/{id}`: change plan, role and status; grant credits. `grant_reference` is a
/// fresh reference for the grant form, so the same form posted twice grants once.
pub fn user(
    u: &UserRow,
    tiers: &[(String, String)],
    grant_reference: &str,
    note: Option<&str>,
    errors: &[FieldError],
) -> Markup {
    let select = |id: &str, label: &str, options: &[(String, String)], current: &str| {
        html! {
            div {
                label for=(id) { (label) }
                select #(id) name=(id) aria-invalid=[error_for(errors, id).map(|_| "true")] {
                    @for (value, text) in options { option value=(value) selected[value == current] { (text) } }
                }
                @if let Some(message) = error_for(errors, id) { p.field-error { (message) } }
            }
        }
    };
    let pairs =
        |v: &[&str]| v.iter().map(|s| ((*s).to_owned(), (*s).to_owned())).collect::<Vec<_>>();
    html! {
        h1 { (u.email) }
        (tabs(Section::Users))
        (notice(note))
        (form_errors(errors))
        div.card {
            h2 { "Account" }
            p.hint { @if !u.name.is_empty() { (u.name) " · " } "since " (u.created) " · credits " (usd(u.credits_micros)) }
            form method="post" action=(format!("/admin/users/{}", u.id)) {
                div.grid {
                    (select("tier", "Plan", tiers, &u.tier))
                    (select("role", "Role", &pairs(&["user", "admin"]), &u.role))
                    (select("status", "Status", &pairs(&["active", "suspended"]), &u.status))
                }
                p.hint { "A plan changed here applies at once, without a payment; suspended users' keys stop working." }
                div.actions { button type="submit" { "Save" } }
            }
        }
        div.card {
            h2 { "Grant credits" }
            form method="post" action=(format!("/admin/users/{}/credits", u.id)) {
                div.grid {
                    (field("amount", "Amount in US dollars", "text", "", true, errors))
                    (field("reason", "Reason (the user sees it)", "text", "", true, errors))
                }
                input type="hidden" name="reference" value=(grant_reference);
                p.hint { "A negative amount takes credits back. Credits pay the user's open invoices first." }
                div.actions { button type="submit" { "Grant" } }
            }
        }
    }
}

/// A plan as the plans page edits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    pub tier: String,
    pub name: String,
    pub price_micros: i64,
    pub included_tokens: u64,
    pub overage_per_1k_micros: Option<i64>,
    pub max_keys: u32,
    pub retention_days: u32,
    pub rpm: u64,
    pub tpm: u64,
    pub daily: u64,
    pub monthly: u64,
}

/// A model's price from a moment on, per million tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceRow {
    pub id: String,
    pub model: String,
    pub input_micros: i64,
    pub output_micros: i64,
    pub cached_micros: Option<i64>,
    pub cache_write_micros: Option<i64>,
    pub effective_from: String,
    /// Not in effect yet: may still be deleted.
    pub future: bool,
}

/// `/admin/plans`: every plan's terms and the model prices.
pub fn plans(
    plans: &[PlanRow],
    prices: &[PriceRow],
    note: Option<&str>,
    errors: &[FieldError],
) -> Markup {
    html! {
        h1 { "Plans and prices" }
        (tabs(Section::Plans))
        (notice(note))
        (form_errors(errors))
        p.hint { "A change to a plan applies at once to every user on it, on every instance." }
        @for p in plans {
            details.card {
                summary { strong { (p.name) } " · " (usd(p.price_micros)) " a month · " (thousands(p.included_tokens)) " tokens included" }
                form method="post" action=(format!("/admin/plans/{}", p.tier)) {
                    @let id = |f: &str| format!("{}-{f}", p.tier);
                    div.grid {
                        div { label for=(id("name")) { "Name" } input #(id("name")) name="name" type="text" value=(p.name) required; }
                        div { label for=(id("price")) { "Price a month ($)" } input #(id("price")) name="price" type="text" inputmode="decimal" value=(plain(p.price_micros)) required; }
                        div { label for=(id("included")) { "Included tokens" } input #(id("included")) name="included_tokens" type="number" min="0" value=(p.included_tokens) required; }
                        div { label for=(id("overage")) { "Overage per 1K tokens ($)" } input #(id("overage")) name="overage" type="text" inputmode="decimal" placeholder="none: a hard stop" value=(p.overage_per_1k_micros.map(plain).unwrap_or_default()); }
                    }
                    div.grid {
                        div { label for=(id("keys")) { "Most keys" } input #(id("keys")) name="max_api_keys" type="number" min="1" value=(p.max_keys) required; }
                        div { label for=(id("retention")) { "History kept (days)" } input #(id("retention")) name="retention_days" type="number" min="1" value=(p.retention_days) required; }
                        div { label for=(id("rpm")) { "Requests a minute" } input #(id("rpm")) name="rpm" type="number" min="1" value=(p.rpm) required; }
                        div { label for=(id("tpm")) { "Tokens a minute" } input #(id("tpm")) name="tpm" type="number" min="1" value=(p.tpm) required; }
                        div { label for=(id("daily")) { "Tokens a day" } input #(id("daily")) name="daily_tokens" type="number" min="1" value=(p.daily) required; }
                        div { label for=(id("monthly")) { "Tokens a month" } input #(id("monthly")) name="monthly_tokens" type="number" min="1" value=(p.monthly) required; }
                    }
                    div.actions { button type="submit" { "Save " (p.name) } }
                }
            }
        }
        h2 { "Model prices" }
        p.hint { "Per million tokens. A price in effect never changes (requests made at it keep it): add a new one from now or later." }
        div.card {
            form method="post" action="/admin/prices" {
                div.grid {
                    (field("model", "Model", "text", "", true, errors))
                    (field("input", "Input ($ per 1M)", "text", "", true, errors))
                    (field("output", "Output ($ per 1M)", "text", "", true, errors))
                    (field("cached", "Cached input ($ per 1M)", "text", "", false, errors))
                    (field("cache_write", "Cache write ($ per 1M)", "text", "", false, errors))
                    (field("effective_from", "From (UTC, blank: now)", "datetime-local", "", false, errors))
                }
                div.actions { button type="submit" { "Add price" } }
            }
        }
        @if prices.is_empty() {
            div.card.empty { p { "No model prices: requests cost nothing at model prices." } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Model" } th.num scope="col" { "Input" } th.num scope="col" { "Output" }
                        th.num.hide-narrow scope="col" { "Cached input" } th.num.hide-narrow scope="col" { "Cache write" }
                        th scope="col" { "From (UTC)" } th scope="col" { span.skip { "Actions" } }
                    } }
                    tbody {
                        @for p in prices {
                            tr {
                                td { (p.model) }
                                td.num { (usd(p.input_micros)) }
                                td.num { (usd(p.output_micros)) }
                                td.num.hide-narrow { @if let Some(c) = p.cached_micros { (usd(c)) } @else { "—" } }
                                td.num.hide-narrow { @if let Some(c) = p.cache_write_micros { (usd(c)) } @else { "—" } }
                                td { (p.effective_from) @if p.future { " " span.badge { "not yet" } } }
                                td {
                                    @if p.future {
                                        form.inline method="post" action=(format!("/admin/prices/{}/delete", p.id))
                                            data-confirm=(format!("Delete the future price of {}?", p.model)) {
                                            button.danger type="submit" aria-label=(format!("Delete the future price of {}", p.model)) { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A redemption code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRow {
    pub id: String,
    pub code: String,
    pub credits_micros: i64,
    pub uses: u32,
    pub max_uses: u32,
    pub expires: Option<String>,
    pub revoked: bool,
    pub created: String,
}

/// `/admin/codes`.
pub fn codes(rows: &[CodeRow], note: Option<&str>, errors: &[FieldError]) -> Markup {
    html! {
        h1 { "Redemption codes" }
        (tabs(Section::Codes))
        (notice(note))
        (form_errors(errors))
        div.card {
            h2 { "Create a code" }
            form method="post" action="/admin/codes" {
                div.grid {
                    (field("code", "Code (blank: a random one)", "text", "", false, errors))
                    (field("credits", "Credits in US dollars", "text", "", true, errors))
                    (field("max_uses", "Users who may redeem it", "number", "1", true, errors))
                    (field("expires", "Expires on (00:00 UTC)", "date", "", false, errors))
                }
                div.actions { button type="submit" { "Create code" } }
            }
        }
        @if rows.is_empty() {
            div.card.empty { p { "No codes yet." } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Code" } th.num scope="col" { "Credits" } th.num scope="col" { "Used" }
                        th.hide-narrow scope="col" { "Expires" } th.hide-narrow scope="col" { "Created" } th scope="col" { span.skip { "Actions" } }
                    } }
                    tbody {
                        @for c in rows {
                            tr {
                                td.mono { (c.code) @if c.revoked { " " span.badge.off { "revoked" } } }
                                td.num { (usd(c.credits_micros)) }
                                td.num { (c.uses) " of " (c.max_uses) }
                                td.hide-narrow { (c.expires.as_deref().unwrap_or("never")) }
                                td.hide-narrow { (c.created) }
                                td {
                                    @if !c.revoked {
                                        form.inline method="post" action=(format!("/admin/codes/{}/revoke", c.id))
                                            data-confirm=(format!("Revoke the code {}? It redeems no more.", c.code)) {
                                            button.danger type="submit" aria-label=(format!("Revoke {}", c.code)) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_escaped_and_health_is_said_in_words() {
        let row = ServerRow {
            id: "s1".into(),
            name: "<img src=x onerror=alert(1)>".into(),
            base_url: "http://127.0.0.1:4000".into(),
            has_api_key: true,
            priority: 1,
            weight: 1,
            max_concurrent: None,
            models: String::new(),
            active: true,
            status: "healthy".into(),
            latency_ms: Some(3),
            failures: 0,
            circuit_open: false,
            in_flight: 0,
            last_check: None,
            requests: 0,
            errors: 0,
            detail: None,
        };
        let page = servers(&[row], &ServerForm::default(), None, &[]).into_string();
        assert!(!page.contains("<img src=x") && page.contains("&lt;img src=x"));
        assert!(page.contains(">healthy<") && page.contains("3 ms"));
    }
}
