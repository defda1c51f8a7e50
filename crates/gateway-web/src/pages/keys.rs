//! `/dashboard/keys`: create a key (name, scopes, allowed models, expiry, limits), see it
//! once, list, rotate and revoke.

use maud::{Markup, html};

use super::{FieldError, error_for, form_errors, input};
use crate::thousands;

/// A key as the keys page lists it (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: String,
    /// Empty: every model.
    pub allowed_models: String,
    /// `RPM 60 · TPM 10,000 · …`, or empty when the key has the plan's limits.
    pub limits: String,
    pub expires: Option<String>,
    pub created: String,
    pub last_used: Option<String>,
    pub active: bool,
}

/// A key just made or rotated: its secret, shown once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKeyShown {
    pub name: String,
    pub key: String,
    /// A rotation: what happens to the old secret.
    pub rotated: Option<String>,
}

/// The create form's values, as typed (kept when the form comes back with an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyForm {
    pub name: String,
    /// Scope names checked (`chat.completions`, ...).
    pub scopes: Vec<String>,
    pub allowed_models: String,
    /// `YYYY-MM-DD` or empty.
    pub expires: String,
    pub rpm: String,
    pub tpm: String,
    pub daily: String,
    pub monthly: String,
}

impl Default for KeyForm {
    fn default() -> Self {
        Self {
            name: String::new(),
            scopes: SCOPES.iter().map(|(s, _)| (*s).to_owned()).collect(),
            allowed_models: String::new(),
            expires: String::new(),
            rpm: String::new(),
            tpm: String::new(),
            daily: String::new(),
            monthly: String::new(),
        }
    }
}

/// The scopes a key may have, with what each allows.
const SCOPES: [(&str, &str); 6] = [
    ("chat.completions", "Chat completions"),
    ("completions", "Legacy text completions"),
    ("embeddings", "Embeddings"),
    ("responses", "OpenAI's Responses API"),
    ("messages", "Anthropic's Messages API"),
    ("models", "The model list"),
];

/// The plan's limits, shown as what a blank limit means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_keys: u32,
    pub rpm: u64,
    pub tpm: u64,
    pub daily: u64,
    pub monthly: u64,
}

/// An optional number with its label, the plan's value as placeholder, and its error.
fn limit_input(id: &str, label: &str, value: &str, plan: u64, errors: &[FieldError]) -> Markup {
    let error = error_for(errors, id);
    html! {
        div {
            label for=(id) { (label) }
            input #(id) name=(id) type="number" min="1" step="1" value=(value) inputmode="numeric"
                placeholder=(format!("plan: {}", thousands(plan)))
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| format!("{id}-error"))];
            @if let Some(message) = error { p.field-error id=(format!("{id}-error")) { (message) } }
        }
    }
}

/// The page: the new key once, the form, the list.
pub fn keys(
    rows: &[KeyRow],
    shown: Option<&NewKeyShown>,
    form: &KeyForm,
    errors: &[FieldError],
    plan: PlanLimits,
) -> Markup {
    let checked = |scope: &str| form.scopes.iter().any(|s| s == scope);
    html! {
        h1 { "API keys" }
        @if let Some(new) = shown {
            div.card.notice.warn role="status" {
                h2 {
                    @if new.rotated.is_some() { "New secret for “" (new.name) "”" }
                    @else { "Your new key “" (new.name) "”" }
                }
                p { strong { "Copy it now: it is shown only this once." } " The gateway keeps only a hash of it." }
                @if let Some(old) = &new.rotated { p { (old) } }
                div.secret {
                    input #new-key type="text" readonly value=(new.key) aria-label="The new API key";
                    button.secondary type="button" data-copy="new-key" { "Copy" }
                }
            }
        }
        div.card {
            h2 { "Create a key" }
            (form_errors(errors))
            form method="post" action="/dashboard/keys" {
                (input("name", "Name", "text", &form.name, "off", errors))
                fieldset {
                    legend { "May call" }
                    @for (scope, label) in SCOPES {
                        label.check {
                            input type="checkbox" name="scopes" value=(scope) checked[checked(scope)];
                            " " (label)
                        }
                    }
                    @if let Some(message) = error_for(errors, "scopes") { p.field-error { (message) } }
                }
                label for="allowed_models" { "Allowed models " span.hint { "(optional)" } }
                input #allowed_models name="allowed_models" type="text" value=(form.allowed_models)
                    placeholder="every model" aria-describedby="allowed_models-hint"
                    aria-invalid=[error_for(errors, "allowed_models").map(|_| "true")];
                p.hint #allowed_models-hint { "Comma-separated, such as gpt-4o, gpt-4o-mini." }
                @if let Some(message) = error_for(errors, "allowed_models") { p.field-error { (message) } }
                label for="expires" { "Expires on " span.hint { "(optional, at 00:00 UTC)" } }
                input #expires name="expires" type="date" value=(form.expires)
                    aria-invalid=[error_for(errors, "expires_at").map(|_| "true")];
                @if let Some(message) = error_for(errors, "expires_at") { p.field-error { (message) } }
                p.hint { "Limits below may only be lower than your plan's; leave them blank to use the plan's." }
                div.grid {
                    (limit_input("rate_limit_rpm", "Requests a minute", &form.rpm, plan.rpm, errors))
                    (limit_input("rate_limit_tpm", "Tokens a minute", &form.tpm, plan.tpm, errors))
                    (limit_input("quota_daily", "Tokens a day", &form.daily, plan.daily, errors))
                    (limit_input("quota_monthly", "Tokens a month", &form.monthly, plan.monthly, errors))
                }
                p.hint { "Your plan allows " (plan.max_keys) " active key" @if plan.max_keys != 1 { "s" } "." }
                div.actions { button type="submit" { "Create key" } }
            }
        }
        h2 { "Your keys" }
        @if rows.is_empty() {
            div.card.empty { p { "No keys yet: create one above to call the gateway." } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Key" } th.hide-narrow scope="col" { "Scopes and models" }
                        th.hide-narrow scope="col" { "Limits" } th.hide-narrow scope="col" { "Created" }
                        th scope="col" { "Last used" } th scope="col" { span.skip { "Actions" } }
                    } }
                    tbody {
                        @for k in rows {
                            tr {
                                td {
                                    (k.name)
                                    @if !k.active { " " span.badge.off { "disabled" } }
                                    @if let Some(e) = &k.expires { br; span.hint { "expires " (e) } }
                                }
                                td.mono { (k.prefix) "…" }
                                td.hide-narrow {
                                    (k.scopes)
                                    br; span.hint { @if k.allowed_models.is_empty() { "every model" } @else { (k.allowed_models) } }
                                }
                                td.hide-narrow { @if k.limits.is_empty() { span.hint { "the plan's" } } @else { (k.limits) } }
                                td.hide-narrow { (k.created) }
                                td { (k.last_used.as_deref().unwrap_or("never")) }
                                td.row-actions {
                                    form.inline method="post" action=(format!("/dashboard/keys/{}/rotate", k.id))
                                        data-confirm=(format!("Rotate the key “{}”? You get a new secret; the old one stops working.", k.name)) {
                                        button.secondary type="submit" aria-label=(format!("Rotate {}", k.name)) { "Rotate" }
                                    }
                                    " "
                                    form.inline method="post" action=(format!("/dashboard/keys/{}/revoke", k.id))
                                        data-confirm=(format!("Revoke the key “{}”? Anything using it stops working at once.", k.name)) {
                                        button.danger type="submit" aria-label=(format!("Revoke {}", k.name)) { "Revoke" }
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

    const PLAN: PlanLimits = PlanLimits { max_keys: 1, rpm: 10, tpm: 10, daily: 10, monthly: 10 };

    #[test]
    fn every_value_a_user_controls_is_escaped() {
        let row = KeyRow {
            id: "k1".into(),
            name: "<script>alert(1)</script>".into(),
            prefix: "bm_abc".into(),
            scopes: "models".into(),
            allowed_models: "<b>m</b>".into(),
            limits: String::new(),
            expires: None,
            created: "2026-12-01".into(),
            last_used: None,
            active: true,
        };
        let form = KeyForm { name: "\"><img src=x>".into(), ..KeyForm::default() };
        let page = keys(&[row], None, &form, &[], PLAN).into_string();
        assert!(!page.contains("<script>alert(1)</script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("\"><img src=x>") && !page.contains("<b>m</b>"));
    }

    #[test]
    fn a_limit_error_is_next_to_its_field_and_keeps_what_was_typed() {
        let errors =
            [FieldError { field: Some("rate_limit_rpm".into()), message: "above the plan".into() }];
        let form = KeyForm { rpm: "999".into(), ..KeyForm::default() };
        let page = keys(&[], None, &form, &errors, PLAN).into_string();
        assert!(page.contains("id=\"rate_limit_rpm-error\""), "{page}");
        assert!(page.contains("value=\"999\""), "the typed value comes back");
    }
}
