//! The Creem adapter: [`CreemClient`] implements billing's `PaymentProvider` port over Creem's
//! REST API (`POST /v1/checkouts`, `POST /v1/customers/billing`), authenticated by the
//! `x-api-key` header. The API key never appears in an error, a log or a `Debug` output.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_billing::payments::{CheckoutRequest, PaymentProvider, ProviderError};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Creem's production API.
pub const CREEM_API: &str = "https://api.creem.io";

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Creem's API, over HTTPS (or HTTP, for a local mock).
#[derive(Clone)]
pub struct CreemClient {
    client: Client<Connector, Full<Bytes>>,
    api_url: String,
    api_key: String,
    timeout: Duration,
}

impl std::fmt::Debug for CreemClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreemClient")
            .field("api_url", &self.api_url)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Timeout;

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no answer in time")
    }
}

impl std::error::Error for Timeout {}

impl CreemClient {
    /// `api_url`: `https://api.creem.io`, `https://test-api.creem.io`, or a mock's address.
    pub fn new(api_url: &str, api_key: &str, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            api_url: api_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            timeout,
        }
    }

    /// POSTs `body` to `path`; the JSON answer of a 2xx.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, ProviderError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.api_url))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-api-key", &self.api_key)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ProviderError::Unreachable(Box::new(e)))?;
        let call = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| ProviderError::Unreachable(Box::new(e)))?;
            let status = res.status();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| ProviderError::Unreachable(Box::new(e)))?
                .to_bytes();
            Ok::<_, ProviderError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ProviderError::Unreachable(Box::new(Timeout)))??;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        // Creem's error bodies carry a message; keep it short and printable.
        let reason = value
            .get("message")
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
            .or_else(|| status.canonical_reason().map(str::to_owned))
            .unwrap_or_default();
        let reason: String = reason.chars().filter(|c| !c.is_control()).take(200).collect();
        Err(ProviderError::Refused { status: status.as_u16(), reason })
    }
}

fn field(v: &Value, key: &str, status: StatusCode) -> Result<String, ProviderError> {
    v.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| ProviderError::Refused {
        status: status.as_u16(),
        reason: format!("the answer has no {key}"),
    })
}

#[async_trait]
impl PaymentProvider for CreemClient {
    async fn create_checkout(&self, c: &CheckoutRequest) -> Result<String, ProviderError> {
        let metadata: serde_json::Map<String, Value> =
            c.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let mut body = json!({
            "product_id": c.product_id,
            "request_id": c.request_id,
            "success_url": c.success_url,
            "customer": {"email": c.customer_email},
            "metadata": metadata,
        });
        if let Some(units) = c.units {
            body["units"] = json!(units);
        }
        let answer = self.post("/v1/checkouts", &body).await?;
        field(&answer, "checkout_url", StatusCode::OK)
    }

    async fn portal_link(&self, customer_id: &str) -> Result<String, ProviderError> {
        let answer =
            self.post("/v1/customers/billing", &json!({"customer_id": customer_id})).await?;
        field(&answer, "customer_portal_link", StatusCode::OK)
    }
}
