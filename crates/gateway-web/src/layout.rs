//! The frame every page shares: the document head, the skip link, the top bar with the
//! navigation, and the footer.

use maud::{DOCTYPE, Markup, html};

/// The Content-Security-Policy of every page: nothing inline, nothing from elsewhere, no
/// frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

/// Who is looking at the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub email: String,
    pub is_admin: bool,
}

/// Which navigation entry is the current page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    None,
    Overview,
    Usage,
    Keys,
    Logs,
    Billing,
    Settings,
    Admin,
}

/// What the frame needs besides the page's own content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell {
    /// The page's own title ("API keys"); the document title adds the product's name.
    pub title: String,
    pub viewer: Option<Viewer>,
    pub nav: Nav,
}

impl Shell {
    pub fn new(title: impl Into<String>, viewer: Option<Viewer>, nav: Nav) -> Self {
        Self { title: title.into(), viewer, nav }
    }

    /// The whole document around `content`.
    pub fn render(&self, content: &Markup) -> Markup {
        let current = |nav: Nav| (self.nav == nav).then_some("page");
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · BluesMinds" }
                    link rel="stylesheet" href="/static/app.css";
                    script src="/static/app.js" defer {}
                }
                body {
                    a.skip href="#content" { "Skip to content" }
                    header.top {
                        div.bar {
                            a.brand href="/" { "BluesMinds" }
                            @if let Some(viewer) = &self.viewer {
                                nav.main aria-label="Main" {
                                    a href="/dashboard" aria-current=[current(Nav::Overview)] { "Overview" }
                                    a href="/dashboard/usage" aria-current=[current(Nav::Usage)] { "Usage" }
                                    a href="/dashboard/keys" aria-current=[current(Nav::Keys)] { "API keys" }
                                    a href="/dashboard/logs" aria-current=[current(Nav::Logs)] { "Logs" }
                                    a href="/dashboard/billing" aria-current=[current(Nav::Billing)] { "Billing" }
                                    a href="/dashboard/settings" aria-current=[current(Nav::Settings)] { "Settings" }
                                    @if viewer.is_admin {
                                        a href="/admin" aria-current=[current(Nav::Admin)] { "Admin" }
                                    }
                                }
                                span.hint { (viewer.email) }
                                form.inline method="post" action="/logout" {
                                    button.secondary type="submit" { "Sign out" }
                                }
                            } @else {
                                nav.main aria-label="Main" {
                                    a href="/login" { "Sign in" }
                                    a href="/signup" { "Create an account" }
                                }
                            }
                        }
                    }
                    main #content { (content) }
                    footer { "BluesMinds · an OpenAI-compatible AI gateway" }
                }
            }
        }
    }
}
