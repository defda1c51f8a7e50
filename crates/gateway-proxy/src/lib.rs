//! Forwarding for the BluesMinds gateway: the pooled upstream client (HTTP and HTTPS, no
//! redirects, connect, first-byte and idle timeouts), the refusal of request fields that would
//! steer the upstream (`api_base`, `base_url`, `api_key`, `user_config`, `litellm_*`), the SSE
//! relay that counts tokens as chunks pass, and failover before the first byte.
//!
//! Status: the crate exists so the workspace has its final shape; it lands with the
//! gateway-path issue. Request bodies are read with `gateway_core::openai::parse_chat_request`,
//! which borrows the few fields the gateway needs and leaves the client's bytes untouched.
