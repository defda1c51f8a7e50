//! The request pipeline of the BluesMinds gateway: the per-request use case, from an API key
//! and a request body to an answer and exactly one usage record.
//!
//! ```text
//! authenticate ─▶ inspect body ─▶ model allowed? known? ─▶ reserve (limits) ─▶ forward
//!   (key, scope)    (one pass)                                (429 / 503)       (failover)
//!        │                                                                          │
//!        ▼                                                                          ▼
//!   no record                            conclude: charge ─▶ settle ─▶ usage record
//! ```
//!
//! - [`Pipeline`]: built from its [`Ports`] (key verifier, server pool, upstream client,
//!   limiter, usage sink); knows nothing of the HTTP server. The binary's handlers read the
//!   request, call [`Pipeline::open`] (trace, key, scope) and [`Call::run`], and write the
//!   [`Reply`].
//! - [`charge()`]: the one rule that decides what a request is charged, for every way it ends
//!   (whole answer, stream, stream cut by the client or the upstream, upstream failure,
//!   refusal).
//! - [`Forwarder`]: server choice and failover (connect errors, timeouts, 429s, a 5xx judged
//!   by a second server) before any byte reached the client.
//! - [`Limiting`]: reservations before forwarding, settlements after, batched off the
//!   response's path.
//! - [`trace`]: the OpenTelemetry spans of a sampled request (auth, limits, server choice,
//!   upstream, first byte, settle), handed to a `SpanSink` when the request ends.

mod charge;
mod forward;
mod limits;
mod pipeline;
mod ports;
pub mod trace;

pub use charge::{Charge, Ending, charge};
pub use forward::{ForwardRequest, Forwarded, Forwarder};
pub use limits::{Limiting, Standing};
pub use pipeline::{Answer, Call, Head, Pipeline, PipelineConfig, Ports, Reply};
#[cfg(any(test, feature = "test-util"))]
pub use ports::MockKeyCheck;
pub use ports::{KeyCheck, from_verify};
