//! The BluesMinds dashboard: server-rendered pages (maud: every value is escaped unless a
//! template says otherwise, and none does) and their assets, embedded in the binary. No I/O:
//! the binary's handlers call the same services as the JSON API, fill the view models here and
//! send what these functions render.
//!
//! Pages work without JavaScript for their core actions (forms post and redirect); the one
//! small script (`/static/app.js`) adds a copy button and confirmations. The stylesheet and the
//! script are served from the gateway itself, so the Content-Security-Policy needs no
//! `unsafe-inline`.

pub mod form;
mod layout;
pub mod pages;

pub use gateway_billing::money::{thousands, usd};
pub use layout::{CONTENT_SECURITY_POLICY, Nav, Shell, Viewer};
pub use maud::Markup;

/// The stylesheet, `/static/app.css`.
pub const APP_CSS: &str = include_str!("../static/app.css");
/// The script, `/static/app.js`.
pub const APP_JS: &str = include_str!("../static/app.js");
