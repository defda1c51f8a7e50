//! A Creem mock for tests and the demo: `POST /v1/checkouts` and `POST /v1/customers/billing`
//! as Creem answers them (checked against its API key), and the webhooks Creem would send,
//! signed like Creem's (`creem-signature`: hex HMAC-SHA256 of the body under the webhook
//! secret). Tests build events with [`CreemMock::checkout_completed`] and
//! [`CreemMock::subscription_event`] and deliver them with [`CreemMock::deliver`], as often and
//! in whatever order they like.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};

/// A product of the mock's catalogue.
#[derive(Clone, Debug)]
pub struct CreemProduct {
    pub id: String,
    /// In cents.
    pub price_cents: i64,
    pub currency: String,
    /// A subscription (`recurring`) or a one-time product.
    pub recurring: bool,
}

/// How the mock is set up.
#[derive(Clone, Debug)]
pub struct CreemMockConfig {
    pub api_key: String,
    pub webhook_secret: String,
    /// Where webhooks go (`http://host:port/api/billing/webhook`); settable later with
    /// [`CreemMock::set_webhook_url`].
    pub webhook_url: String,
    pub products: Vec<CreemProduct>,
}

/// A checkout the gateway created.
#[derive(Clone, Debug)]
pub struct Checkout {
    pub id: String,
    pub product_id: String,
    pub request_id: String,
    pub success_url: String,
    pub email: String,
    pub metadata: Value,
    /// Units bought (1 unless the checkout said).
    pub units: i64,
}

#[derive(Default)]
struct State {
    checkouts: Vec<Checkout>,
    /// Customer id per email.
    customers: HashMap<String, String>,
    counter: u64,
}

/// The running mock.
pub struct CreemMock {
    pub addr: SocketAddr,
    inner: Arc<CreemState>,
    task: tokio::task::JoinHandle<()>,
}

/// What the mock's server and its handle share: its catalogue, its checkouts and the methods
/// that build and deliver events ([`CreemMock`] derefs to it).
pub struct CreemState {
    addr: SocketAddr,
    config: CreemMockConfig,
    webhook_url: Mutex<String>,
    state: Mutex<State>,
}

impl std::fmt::Debug for CreemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreemState").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl std::ops::Deref for CreemMock {
    type Target = CreemState;

    fn deref(&self) -> &CreemState {
        &self.inner
    }
}

impl std::fmt::Debug for CreemMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreemMock").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for CreemMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `creem-signature` of `body` under `secret`.
pub fn signature(secret: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().iter().fold(String::with_capacity(64), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

fn next_id(state: &Mutex<State>, prefix: &str) -> String {
    let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.counter += 1;
    format!("{prefix}_mock{:06}", s.counter)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    res
}

impl CreemMock {
    /// Starts the mock on a free loopback port.
    pub async fn start(config: CreemMockConfig) -> std::io::Result<CreemMock> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(CreemState {
            addr,
            webhook_url: Mutex::new(config.webhook_url.clone()),
            config,
            state: Mutex::default(),
        });
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(serve(&shared, req).await) }
                    });
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(CreemMock { addr, inner, task })
    }
}

impl CreemState {
    /// The API base to configure (`billing.creem.api_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every checkout created so far, oldest first.
    pub fn checkouts(&self) -> Vec<Checkout> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).checkouts.clone()
    }

    fn product(&self, id: &str) -> Option<CreemProduct> {
        self.config.products.iter().find(|p| p.id == id).cloned()
    }

    fn customer_of(&self, email: &str) -> String {
        let existing = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .customers
            .get(email)
            .cloned();
        existing.unwrap_or_else(|| {
            let id = next_id(&self.state, "cust");
            self.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .customers
                .insert(email.to_owned(), id.clone());
            id
        })
    }

    /// The `checkout.completed` event of checkout `id`, paying `amount_cents` (the product's
    /// price when `None`), as Creem sends it; `None` if there is no such checkout.
    pub fn checkout_completed(&self, id: &str, amount_cents: Option<i64>) -> Option<Value> {
        let c = self.checkouts().into_iter().find(|c| c.id == id)?;
        let product = self.product(&c.product_id)?;
        let customer = self.customer_of(&c.email);
        let now = now_ms();
        let mut object = json!({
            "id": c.id, "object": "checkout", "request_id": c.request_id, "status": "completed",
            "order": {
                "id": next_id(&self.state, "ord"), "object": "order", "customer": customer,
                "product": product.id, "amount": amount_cents.unwrap_or(product.price_cents * c.units),
                "currency": product.currency, "status": "paid",
                "type": if product.recurring { "recurring" } else { "onetime" },
            },
            "product": {"id": product.id, "price": product.price_cents, "currency": product.currency},
            "customer": {"id": customer, "object": "customer", "email": c.email},
            "metadata": c.metadata,
        });
        if product.recurring {
            object["subscription"] = json!({
                "id": next_id(&self.state, "sub"), "object": "subscription", "status": "active",
                "current_period_start_date": rfc3339(now),
                "current_period_end_date": rfc3339(now + 30 * 86_400_000),
            });
        }
        Some(
            json!({"id": next_id(&self.state, "evt"), "eventType": "checkout.completed", "created_at": now, "object": object}),
        )
    }

    /// A `subscription.*` event about `subscription_id`, created at `created_at_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn subscription_event(
        &self,
        event_type: &str,
        subscription_id: &str,
        customer_id: &str,
        product_id: &str,
        metadata: &Value,
        created_at_ms: i64,
        period_end_ms: i64,
        transaction_id: &str,
    ) -> Value {
        let product = self.product(product_id);
        let (price, currency) =
            product.map_or((0, "USD".to_owned()), |p| (p.price_cents, p.currency));
        json!({
            "id": next_id(&self.state, "evt"), "eventType": event_type, "created_at": created_at_ms,
            "object": {
                "id": subscription_id, "object": "subscription",
                "status": match event_type { "subscription.canceled" => "canceled", "subscription.expired" => "expired", _ => "active" },
                "product": {"id": product_id, "price": price, "currency": currency},
                "customer": {"id": customer_id},
                "last_transaction_id": transaction_id,
                "last_transaction": {"id": transaction_id, "amount": price, "currency": currency},
                "current_period_start_date": rfc3339(period_end_ms - 30 * 86_400_000),
                "current_period_end_date": rfc3339(period_end_ms),
                "metadata": metadata,
            }
        })
    }

    /// A `refund.created` event refunding `amount_cents` of order `order_id` (a checkout's
    /// payment) to `customer_id`, without metadata, as Creem sends it.
    pub fn refund_event(&self, order_id: &str, customer_id: &str, amount_cents: i64) -> Value {
        json!({
            "id": next_id(&self.state, "evt"), "eventType": "refund.created", "created_at": now_ms(),
            "object": {
                "id": next_id(&self.state, "ref"), "object": "refund", "status": "succeeded",
                "refund_amount": amount_cents, "refund_currency": "USD", "reason": "requested_by_customer",
                "transaction": {"id": next_id(&self.state, "tran"), "object": "transaction", "order": order_id},
                "order": {"id": order_id, "object": "order"},
                "customer": {"id": customer_id, "object": "customer"},
            }
        })
    }

    /// Signs `event` and POSTs it to the webhook URL; returns the status.
    pub async fn deliver(&self, event: &Value) -> u16 {
        let body = event.to_string();
        let sig = signature(&self.config.webhook_secret, &body);
        self.deliver_raw(&body, Some(&sig)).await
    }

    /// POSTs `body` with `signature` as it is (forgeries and tampering in tests).
    pub async fn deliver_raw(&self, body: &str, signature: Option<&str>) -> u16 {
        let url =
            self.webhook_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        post(&url, body, signature).await.unwrap_or(0)
    }

    /// Signs `event` and POSTs it to `url` (another instance's webhook).
    pub async fn deliver_to(&self, url: &str, event: &Value) -> u16 {
        let body = event.to_string();
        let sig = signature(&self.config.webhook_secret, &body);
        post(url, &body, Some(&sig)).await.unwrap_or(0)
    }

    /// Where webhooks go from now on.
    pub fn set_webhook_url(&self, url: &str) {
        url.clone_into(
            &mut self.webhook_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// The webhook signing secret (for tests that forge or tamper).
    pub fn webhook_secret(&self) -> &str {
        &self.config.webhook_secret
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, whole seconds).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One POST over plain HTTP/1.1; the status.
async fn post(url: &str, body: &str, signature: Option<&str>) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let stream = TcpStream::connect(host).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(sig) = signature {
        req = req.header("creem-signature", sig);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).ok()?;
    let res = sender.send_request(req).await.ok()?;
    Some(res.status().as_u16())
}

async fn serve(inner: &CreemState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (config, state, addr) = (&inner.config, &inner.state, &inner.addr);
    let path = req.uri().path().to_owned();
    let authorized = req.headers().get("x-api-key").and_then(|v| v.to_str().ok())
        == Some(config.api_key.as_str());
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (method, path.as_str()) {
        (Method::POST, "/v1/checkouts") => {
            if !authorized {
                return json_response(
                    StatusCode::FORBIDDEN,
                    &json!({"message": "Invalid API key"}),
                );
            }
            let product_id = input["product_id"].as_str().unwrap_or_default().to_owned();
            if !config.products.iter().any(|p| p.id == product_id) {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"message": "Product not found"}),
                );
            }
            let id = next_id(state, "ch");
            let checkout = Checkout {
                id: id.clone(),
                product_id,
                request_id: input["request_id"].as_str().unwrap_or_default().to_owned(),
                success_url: input["success_url"].as_str().unwrap_or_default().to_owned(),
                email: input["customer"]["email"].as_str().unwrap_or_default().to_owned(),
                metadata: input["metadata"].clone(),
                units: input["units"].as_i64().unwrap_or(1),
            };
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .checkouts
                .push(checkout);
            json_response(
                StatusCode::OK,
                &json!({"id": id, "object": "checkout", "status": "pending", "checkout_url": format!("http://{addr}/checkout/{id}")}),
            )
        }
        (Method::POST, "/v1/customers/billing") => {
            if !authorized {
                return json_response(
                    StatusCode::FORBIDDEN,
                    &json!({"message": "Invalid API key"}),
                );
            }
            let customer = input["customer_id"].as_str().unwrap_or_default();
            json_response(
                StatusCode::OK,
                &json!({"customer_portal_link": format!("http://{addr}/portal/{customer}")}),
            )
        }
        (Method::GET, p) if p.starts_with("/checkout/") => {
            // The demo's payment page: paying completes the checkout and sends its webhook.
            let id = p.trim_start_matches("/checkout/");
            let Some(event) = inner.checkout_completed(id, None) else {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"message": "Checkout not found"}),
                );
            };
            let status = inner.deliver(&event).await;
            let back = inner
                .checkouts()
                .into_iter()
                .find(|c| c.id == id)
                .map(|c| c.success_url)
                .unwrap_or_default();
            let page = format!(
                "<!doctype html><meta charset=utf-8><title>Paid (mock Creem)</title>\
                 <p>Paid with the mock Creem: the gateway's webhook answered {status}.</p>\
                 <p><a href=\"{back}\">Back</a></p>"
            );
            let mut res = Response::new(Full::new(Bytes::from(page)));
            res.headers_mut()
                .insert("content-type", http::HeaderValue::from_static("text/html; charset=utf-8"));
            res
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"message": "Not found"})),
    }
}
