//! The upstream side of the BluesMinds gateway: what a request body says, how it is sent, and
//! how an answer or stream is read and relayed. Failover across servers is the pipeline's
//! (`gateway-pipeline`).
//!
//! - [`request`]: one pass over a request body that extracts the few fields the gateway needs
//!   and refuses fields that would steer the upstream; [`request::forward_body`] makes a
//!   streaming request ask for the final usage chunk without re-serialising the body.
//! - [`client`]: the [`client::Upstream`] port and its adapter, the pooled upstream client
//!   (HTTP and HTTPS, no redirects, timeouts).
//! - [`sse`]: the tap that reads usage and everything generated from a stream as it is
//!   relayed and removes the usage chunk the client did not ask for.
//! - [`estimate`]: the stated estimator that charges answers arriving without usage.
//! - [`relay`]: the streaming body, bounded by idle time, ended with an error event on failure.
//!
//! ```
//! use gateway_proxy::request::{inspect, Endpoint, RequestRules};
//!
//! let body = br#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
//! let view = inspect(body, Endpoint::ChatCompletions, &RequestRules::default()).unwrap();
//! assert_eq!(view.model, "gpt-4");
//! assert!(view.stream);
//!
//! let evil = br#"{"model":"gpt-4","messages":[],"api_base":"http://attacker"}"#;
//! assert!(inspect(evil, Endpoint::ChatCompletions, &RequestRules::default()).is_err());
//! ```

pub mod client;
pub mod estimate;
pub mod probe;
pub mod relay;
pub mod request;
pub mod sse;
