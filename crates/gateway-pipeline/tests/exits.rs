//! Every way a gateway request ends, through the pipeline with in-memory adapters and a
//! scripted upstream: no socket, no database. Each test pins the answer, the usage record and
//! the limiter's settlement, which together are what the request is charged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_auth::{
    Accounts, AccountsConfig, AuthStores, InMemoryAuthStore, KeyVerifier, NewKey, VerifierConfig,
    VerifyError,
};
use gateway_balancer::{BreakerConfig, ServerPool};
use gateway_billing::{DEFAULT_PRICE, InMemoryPriceStore, Price, Prices, SEED_PRICES};
use gateway_core::trace::{AttrValue, InMemorySpanSink, Span, SpanKind, SpanStatus};
use gateway_core::{
    DefaultPlans, ErrorKind, HealthStatus, LimitOverrides, RequestId, Scope, ServerId, SystemClock,
    UpstreamServer,
};
use gateway_pipeline::trace::{Sampler, Tracer};
use gateway_pipeline::{
    Answer, Head, Limiting, MockKeyCheck, Pipeline, PipelineConfig, Ports, Reply,
};
use gateway_proxy::client::{ClientConfig, Outgoing, Upstream, UpstreamBody, UpstreamError};
use gateway_proxy::request::Endpoint;
use gateway_ratelimit::{
    Claim, Decision, InMemoryLimiter, LimitError, RateLimiter, Reservation, Subject, Used,
};
use gateway_usage::{UsageRecord, UsageSink};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

/// What a scripted server does with one request.
enum Script {
    /// Refuses the connection.
    Down,
    /// A whole answer.
    Answer(u16, &'static str),
    /// SSE events, then the stream's end.
    Stream(Vec<&'static str>, Tail),
}

#[derive(Clone, Copy)]
enum Tail {
    /// Ends cleanly (after `[DONE]` if the events hold it).
    End,
    /// Breaks with a transport error.
    Break,
    /// Sends nothing more, ever.
    Hang,
}

/// An upstream whose servers answer from scripts, in order; it records what it was sent.
#[derive(Default)]
struct ScriptedUpstream {
    scripts: Mutex<Vec<(String, VecDeque<Script>)>>,
    sent: Mutex<Vec<(String, Bytes)>>,
    /// The `traceparent` each request carried.
    traceparents: Mutex<Vec<Option<String>>>,
    config: ClientConfig,
}

impl ScriptedUpstream {
    fn script(&self, server: &str, script: Script) {
        let mut scripts = self.scripts.lock().unwrap();
        match scripts.iter_mut().find(|(s, _)| s == server) {
            Some((_, queue)) => queue.push_back(script),
            None => scripts.push((server.to_owned(), VecDeque::from([script]))),
        }
    }

    fn sent(&self) -> Vec<(String, Bytes)> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Upstream for ScriptedUpstream {
    async fn post(
        &self,
        to: Outgoing<'_>,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let url = to.url;
        self.traceparents.lock().unwrap().push(to.traceparent.map(str::to_owned));
        let server = url.split("/v1/").next().unwrap_or(url).to_owned();
        self.sent.lock().unwrap().push((server.clone(), body));
        let script = self
            .scripts
            .lock()
            .unwrap()
            .iter_mut()
            .find(|(s, _)| *s == server)
            .and_then(|(_, q)| q.pop_front())
            .unwrap_or_else(|| panic!("no script left for {server}"));
        let (status, body) = match script {
            Script::Down => return Err(UpstreamError::Connect("connection refused".into())),
            Script::Answer(status, body) => {
                (status, UpstreamBody::boxed(http_body_util::Full::new(Bytes::from(body))))
            }
            Script::Stream(events, tail) => {
                type Item = Result<Frame<Bytes>, std::io::Error>;
                let frames: Vec<Item> =
                    events.into_iter().map(|e| Ok(Frame::data(Bytes::from(e)))).collect();
                let head = futures_util::stream::iter(frames);
                let body = match tail {
                    Tail::End => UpstreamBody::boxed(StreamBody::new(head)),
                    Tail::Break => {
                        let broken: Item = Err(std::io::Error::other("connection reset"));
                        let s = futures_util::StreamExt::chain(
                            head,
                            futures_util::stream::iter([broken]),
                        );
                        UpstreamBody::boxed(StreamBody::new(s))
                    }
                    Tail::Hang => {
                        let s = futures_util::StreamExt::chain(
                            head,
                            futures_util::stream::pending::<Item>(),
                        );
                        UpstreamBody::boxed(StreamBody::new(s))
                    }
                };
                (200, body)
            }
        };
        let mut res = Response::new(body);
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(res)
    }

    fn config(&self) -> &ClientConfig {
        &self.config
    }
}

/// Usage records, as the writer would receive them.
#[derive(Default)]
struct Records(Mutex<Vec<UsageRecord>>);

impl UsageSink for Records {
    fn record(&self, record: UsageRecord) {
        self.0.lock().unwrap().push(record);
    }
}

impl Records {
    fn all(&self) -> Vec<UsageRecord> {
        self.0.lock().unwrap().clone()
    }

    fn only(&self) -> UsageRecord {
        let all = self.all();
        assert_eq!(all.len(), 1, "exactly one usage record: {all:?}");
        all.into_iter().next().unwrap()
    }
}

/// The in-memory limiter, with every settlement written down: (reserved, settled to).
#[derive(Default)]
struct SettleLog {
    inner: InMemoryLimiter,
    settled: Mutex<Vec<(u64, u64)>>,
}

#[async_trait]
impl RateLimiter for SettleLog {
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        self.inner.claim(who, claim, now_ms).await
    }

    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
        self.settled.lock().unwrap().extend(used.iter().map(|(r, u)| (r.tokens, u.tokens)));
        self.inner.adjust(used).await
    }
}

const A: &str = "http://a.test";
const B: &str = "http://b.test";
/// Tokens reserved for a completion that states no `max_tokens`.
const DEFAULT_COMPLETION: u64 = 100;

struct World {
    pipeline: Arc<Pipeline>,
    upstream: Arc<ScriptedUpstream>,
    records: Arc<Records>,
    limiter: Arc<SettleLog>,
    prices: Arc<Prices>,
    pool: Arc<ServerPool>,
    key: String,
    /// Every span of the requests traced (the pipeline samples all of them).
    spans: Arc<InMemorySpanSink>,
}

fn server(url: &str, priority: u32) -> UpstreamServer {
    UpstreamServer {
        id: ServerId::new(),
        name: url.trim_start_matches("http://").to_owned(),
        base_url: url.to_owned(),
        api_key: None,
        priority,
        weight: 1,
        max_concurrent_requests: None,
        supported_models: vec!["gpt-4".into()],
        is_active: true,
        health: HealthStatus::Healthy,
    }
}

/// Servers `A` and then `B` (by priority; model gpt-4), limits on, and a key of a free
/// account.
async fn world(overrides: LimitOverrides) -> World {
    let store = Arc::new(InMemoryAuthStore::default());
    let stores = AuthStores::from(store.clone());
    let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
    let accounts = Accounts::new(stores, b"session secret of the tests", config);
    let user = accounts.signup("ada@example.com", "correct horse battery", None).await.unwrap();
    let new = NewKey {
        overrides,
        ..NewKey::named("tests", vec![Scope::ChatCompletions, Scope::Embeddings, Scope::Models])
    };
    let key = accounts.create_key(user.id, new).await.unwrap().key;
    let verifier = KeyVerifier::new(
        store.clone(),
        store,
        b"key secret of the tests",
        Arc::new(SystemClock),
        VerifierConfig { bcrypt_cost: 4, ..VerifierConfig::default() },
    );
    let pool = Arc::new(ServerPool::new(BreakerConfig::default()));
    pool.replace(vec![server(A, 1), server(B, 2)]);
    let spans = Arc::new(InMemorySpanSink::default());
    let upstream = Arc::new(ScriptedUpstream::default());
    let records = Arc::new(Records::default());
    let limiter = Arc::new(SettleLog::default());
    let prices = Arc::new(Prices::new(Arc::new(InMemoryPriceStore::default()), DEFAULT_PRICE));
    let since = time::OffsetDateTime::UNIX_EPOCH;
    let seed: Vec<(String, Price)> =
        SEED_PRICES.iter().map(|(m, p)| ((*m).to_owned(), *p)).collect();
    prices.import(&seed, since).await.unwrap();
    let pipeline = Arc::new(
        Pipeline::new(
            Ports {
                keys: verifier,
                pool: pool.clone(),
                upstream: upstream.clone(),
                limits: Some(Limiting::new(limiter.clone(), DEFAULT_COMPLETION)),
                usage: records.clone(),
                prices: prices.clone(),
                plans: Arc::new(DefaultPlans::default()),
            },
            PipelineConfig { max_attempts: 2, ..PipelineConfig::default() },
        )
        .with_tracer(Tracer::new(spans.clone(), Sampler::default())),
    );
    World { pipeline, upstream, records, limiter, prices, pool, key, spans }
}

impl World {
    async fn call(&self, endpoint: Endpoint, body: &str) -> Reply {
        let scope = endpoint.scope();
        let header = format!("Bearer {}", self.key);
        let principal = self.pipeline.authenticate(Some(&header), scope).await.unwrap();
        let call = self.pipeline.start(principal, endpoint, RequestId::new(), Instant::now());
        call.run(Bytes::from(body.to_owned())).await
    }

    /// A chat request through [`Pipeline::open`], as the HTTP layer sends it: with its
    /// `Authorization` and `traceparent` headers.
    async fn open_chat(
        &self,
        key: &str,
        traceparent: Option<&str>,
        body: &str,
    ) -> Result<Reply, gateway_core::ApiError> {
        let header = format!("Bearer {key}");
        let head = Head {
            endpoint: Endpoint::ChatCompletions,
            request_id: RequestId::new(),
            started: Instant::now(),
            authorization: Some(&header),
            traceparent,
            passthrough: &[],
        };
        Ok(self.pipeline.open(head).await?.run(Bytes::from(body.to_owned())).await)
    }

    async fn chat(&self, body: &str) -> Reply {
        self.call(Endpoint::ChatCompletions, body).await
    }

    /// Every settlement, once the queue has drained.
    async fn settled(&self) -> Vec<(u64, u64)> {
        assert!(self.pipeline.limits().unwrap().drain(Duration::from_secs(5)).await);
        self.limiter.settled.lock().unwrap().clone()
    }

    /// Which servers were sent the request, in order.
    fn servers_tried(&self) -> Vec<String> {
        self.upstream.sent().into_iter().map(|(s, _)| s).collect()
    }
}

const CHAT: &str =
    r#"{"model":"gpt-4","max_tokens":50,"messages":[{"role":"user","content":"Say hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Say hi"}]}"#;
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
const ANSWER_NO_USAGE: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello, friend"},"finish_reason":"stop"}]}"#;
const DELTA: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello, friend\"}}]}\n\n";
const USAGE_CHUNK: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// The tokens the pipeline reserves for `CHAT`: its prompt estimate plus `max_tokens`.
fn reserved_for_chat() -> u64 {
    let view = gateway_proxy::request::inspect(
        CHAT.as_bytes(),
        Endpoint::ChatCompletions,
        &gateway_proxy::request::RequestRules::default(),
    )
    .unwrap();
    view.estimated_prompt_tokens() + 50
}

async fn body_of(answer: Answer) -> Bytes {
    match answer {
        Answer::Whole { body, .. } => body,
        Answer::Stream { body, .. } => body.collect().await.unwrap().to_bytes(),
        Answer::Error(e) => panic!("an error, not a body: {e:?}"),
    }
}

#[tokio::test]
async fn a_whole_answer_is_relayed_and_charged_its_reported_usage() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Answer(200, ANSWER));
    w.upstream.script(B, Script::Answer(200, ANSWER));
    let reply = w.chat(CHAT).await;
    assert!(reply.limits.is_some(), "the x-ratelimit headers have a snapshot");
    let Answer::Whole { status, ref body, .. } = reply.answer else { panic!("{reply:?}") };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, ANSWER.as_bytes(), "the upstream's bytes, untouched");
    let r = w.records.only();
    assert_eq!((r.prompt_tokens, r.completion_tokens, r.total_tokens), (9, 3, 12));
    assert_eq!((r.status_code, r.is_error, r.usage_estimated), (200, false, false));
    // gpt-4 at $0.03 / $0.06 per 1K tokens: 9 × 30 + 3 × 60 micro-dollars.
    assert_eq!((r.cost_micros, reply.cost_micros), (450, Some(450)));
    assert_eq!(r.model, "gpt-4");
    assert!(r.server_id.is_some() && r.upstream_latency_ms.is_some());
    assert_eq!(r.retention_days, 7, "kept as long as the free plan keeps history");
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), 12)]);
}

#[tokio::test]
async fn a_whole_answer_without_usage_is_charged_the_estimate() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Answer(200, ANSWER_NO_USAGE));
    w.upstream.script(B, Script::Answer(200, ANSWER_NO_USAGE));
    let reply = w.chat(CHAT).await;
    assert_eq!(body_of(reply.answer).await, ANSWER_NO_USAGE.as_bytes());
    let r = w.records.only();
    assert!(r.usage_estimated);
    // "Hello, friend": 13 ASCII bytes, one token per 4 (rounded up).
    assert_eq!(r.completion_tokens, 4);
    assert!(r.prompt_tokens > 0);
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), r.total_tokens)]);
}

#[tokio::test]
async fn a_stream_is_relayed_and_charged_its_usage_chunk_when_it_ends() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Stream(vec![DELTA, USAGE_CHUNK, DONE], Tail::End));
    w.upstream.script(B, Script::Stream(vec![DELTA, USAGE_CHUNK, DONE], Tail::End));
    let reply = w.chat(CHAT_STREAM).await;
    let Answer::Stream { status, .. } = &reply.answer else { panic!("{reply:?}") };
    assert_eq!(*status, StatusCode::OK);
    assert!(w.records.all().is_empty(), "a stream is recorded when it ends, not before");
    let text = body_of(reply.answer).await;
    let text = std::str::from_utf8(&text).unwrap();
    assert!(text.contains("Hello, friend") && text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("\"usage\""), "the client did not ask for the usage chunk");
    let (_, sent) = &w.upstream.sent()[0];
    assert!(
        std::str::from_utf8(sent).unwrap().contains("\"include_usage\":true"),
        "the gateway asks the upstream for usage"
    );
    let r = w.records.only();
    assert_eq!((r.prompt_tokens, r.completion_tokens, r.total_tokens), (9, 4, 13));
    assert!(r.streamed && !r.is_error && !r.client_disconnected && !r.usage_estimated);
    assert_eq!(r.cost_micros, 9 * 30 + 4 * 60, "a stream is priced when it ends");
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), 13)]);
}

#[tokio::test]
async fn a_stream_is_recorded_before_the_client_reads_its_done_event() {
    // A client (an SDK) takes `[DONE]` as the end: by then the request must be recorded, even
    // if the upstream has not closed yet, so a gateway killed at that moment loses no usage.
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Stream(vec![DELTA, USAGE_CHUNK, DONE], Tail::Hang));
    w.upstream.script(B, Script::Stream(vec![DELTA, USAGE_CHUNK, DONE], Tail::Hang));
    let reply = w.chat(CHAT_STREAM).await;
    let Answer::Stream { mut body, .. } = reply.answer else { panic!("a stream") };
    loop {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        if std::str::from_utf8(&frame).unwrap().contains("[DONE]") {
            break;
        }
    }
    let r = w.records.only();
    assert_eq!((r.prompt_tokens, r.completion_tokens, r.total_tokens), (9, 4, 13));
    assert!(!r.is_error && !r.client_disconnected);
    drop(body); // the client leaves after `[DONE]`, the upstream still open: nothing changes
    assert_eq!(w.records.only(), r);
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), 13)]);
}

#[tokio::test]
async fn a_stream_the_client_leaves_is_charged_what_was_generated_and_is_no_error() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Stream(vec![DELTA], Tail::Hang));
    w.upstream.script(B, Script::Stream(vec![DELTA], Tail::Hang));
    let reply = w.chat(CHAT_STREAM).await;
    let Answer::Stream { mut body, .. } = reply.answer else { panic!("a stream") };
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("Hello, friend"));
    drop(body); // the client goes away
    let r = w.records.only();
    assert!(r.client_disconnected && !r.is_error && r.error_message.is_none());
    assert!(r.usage_estimated);
    assert_eq!(r.completion_tokens, 4, "what was relayed is charged");
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), r.total_tokens)]);
}

#[tokio::test]
async fn a_stream_the_upstream_breaks_ends_with_an_error_event_and_is_charged() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Stream(vec![DELTA], Tail::Break));
    w.upstream.script(B, Script::Stream(vec![DELTA], Tail::Break));
    let reply = w.chat(CHAT_STREAM).await;
    let text = body_of(reply.answer).await;
    let text = std::str::from_utf8(&text).unwrap();
    assert!(text.contains("Hello, friend") && text.contains("upstream_error"), "{text}");
    let r = w.records.only();
    assert!(r.is_error && !r.client_disconnected);
    assert!(r.error_message.as_deref().unwrap().contains("mid-stream"));
    assert_eq!(r.completion_tokens, 4);
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), r.total_tokens)]);
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_failed_over() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Down);
    w.upstream.script(B, Script::Answer(200, ANSWER));
    let reply = w.chat(CHAT).await;
    assert_eq!(body_of(reply.answer).await, ANSWER.as_bytes());
    assert_eq!(w.servers_tried(), vec![A, B], "one failed attempt, then the other server");
    assert_eq!(w.records.only().total_tokens, 12);
}

#[tokio::test]
async fn no_upstream_answering_is_a_502_refunded_in_full() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Down);
    w.upstream.script(B, Script::Down);
    let reply = w.chat(CHAT).await;
    assert_eq!(reply.cost_micros, Some(0));
    let Answer::Error(e) = reply.answer else { panic!("an error") };
    assert_eq!(e.kind, ErrorKind::UpstreamError);
    let r = w.records.only();
    assert_eq!((r.status_code, r.is_error, r.total_tokens, r.cost_micros), (502, true, 0, 0));
    assert_eq!(
        w.settled().await,
        vec![(reserved_for_chat(), 0)],
        "nothing served, nothing charged"
    );
}

#[tokio::test]
async fn an_upstream_error_status_goes_back_to_the_client_and_costs_nothing() {
    let w = world(LimitOverrides::default()).await;
    let bad = r#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#;
    w.upstream.script(A, Script::Answer(400, bad));
    w.upstream.script(B, Script::Answer(400, bad));
    let reply = w.chat(CHAT).await;
    let Answer::Whole { status, body, .. } = reply.answer else { panic!("a whole answer") };
    assert_eq!((status, &body[..]), (StatusCode::BAD_REQUEST, bad.as_bytes()));
    assert_eq!(w.servers_tried().len(), 1, "a 4xx is the request's, not the server's");
    let r = w.records.only();
    assert_eq!((r.status_code, r.is_error, r.total_tokens), (400, true, 0));
    assert_eq!(w.settled().await, vec![(reserved_for_chat(), 0)]);
}

#[tokio::test]
async fn a_request_over_its_limit_is_refused_recorded_and_never_forwarded() {
    let overrides = LimitOverrides { rate_limit_rpm: Some(1), ..LimitOverrides::default() };
    let w = world(overrides).await;
    w.upstream.script(A, Script::Answer(200, ANSWER));
    w.upstream.script(B, Script::Answer(200, ANSWER));
    let first = w.chat(CHAT).await;
    assert_eq!(first.limits.unwrap().remaining_requests, 0);
    let second = w.chat(CHAT).await;
    let Answer::Error(e) = second.answer else { panic!("a refusal") };
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.retry_after_secs.is_some());
    assert!(second.limits.is_some(), "a refusal still reports the limits");
    assert_eq!(w.servers_tried().len(), 1, "the refused request reached no server");
    assert_eq!(w.pipeline.rate_limited(), 1);
    let records = w.records.all();
    assert_eq!(records.len(), 2);
    assert_eq!((records[1].status_code, records[1].total_tokens), (429, 0));
}

#[tokio::test]
async fn refusals_before_forwarding_are_recorded_with_their_status() {
    let w = world(LimitOverrides::default()).await;
    let cases = [
        (r#"{"model":"gpt-4","messages":[],"api_base":"http://x"}"#, 400),
        (r#"{"model":"llama-9","messages":[]}"#, 404),
        ("not json", 400),
    ];
    for (body, status) in cases {
        let reply = w.chat(body).await;
        let Answer::Error(e) = reply.answer else { panic!("{body}: a refusal") };
        assert_eq!(e.kind.http_status(), status, "{body}");
    }
    let records = w.records.all();
    assert_eq!(records.iter().map(|r| r.status_code).collect::<Vec<_>>(), vec![400, 404, 400]);
    assert!(records.iter().all(|r| r.is_error && r.total_tokens == 0));
    assert!(w.upstream.sent().is_empty(), "nothing was forwarded");
    assert!(w.settled().await.is_empty(), "nothing was reserved");
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_recorded_against_its_key() {
    let w = world(LimitOverrides::default()).await;
    let header = format!("Bearer {}", w.key);
    let principal = w.pipeline.authenticate(Some(&header), Scope::ChatCompletions).await.unwrap();
    let key_id = principal.key_id;
    let call =
        w.pipeline.start(principal, Endpoint::ChatCompletions, RequestId::new(), Instant::now());
    let too_large = gateway_core::ApiError::new(ErrorKind::PayloadTooLarge, "too large");
    let reply = call.refuse(too_large);
    assert!(matches!(reply.answer, Answer::Error(ref e) if e.kind == ErrorKind::PayloadTooLarge));
    let r = w.records.only();
    assert_eq!((r.status_code, r.api_key_id), (413, Some(key_id)));
}

#[tokio::test]
async fn embeddings_are_charged_their_prompt() {
    let w = world(LimitOverrides::default()).await;
    let answer = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"gpt-4","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
    w.upstream.script(A, Script::Answer(200, answer));
    w.upstream.script(B, Script::Answer(200, answer));
    let reply = w.call(Endpoint::Embeddings, r#"{"model":"gpt-4","input":"hello"}"#).await;
    assert_eq!(body_of(reply.answer).await, answer.as_bytes());
    let r = w.records.only();
    assert_eq!((r.endpoint.as_str(), r.prompt_tokens, r.total_tokens), ("embeddings", 5, 5));
}

#[tokio::test]
async fn keys_are_refused_before_anything_is_recorded() {
    let w = world(LimitOverrides::default()).await;
    let e = w.pipeline.authenticate(None, Scope::ChatCompletions).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidApiKey);
    let e = w.pipeline.authenticate(Some("Bearer bm_nope"), Scope::ChatCompletions).await;
    assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidApiKey);
    assert!(w.records.all().is_empty(), "a request without a valid key belongs to nobody");
}

#[tokio::test]
async fn a_verifier_that_cannot_reach_its_store_answers_503_with_retry_after() {
    let mut keys = MockKeyCheck::new();
    keys.expect_verify().times(1).returning(|_| Err(VerifyError::Unavailable));
    let records = Arc::new(Records::default());
    let pipeline = Pipeline::new(
        Ports {
            keys: Arc::new(keys),
            pool: Arc::new(ServerPool::new(BreakerConfig::default())),
            upstream: Arc::new(ScriptedUpstream::default()),
            limits: None,
            usage: records.clone(),
            prices: Arc::new(Prices::new(Arc::new(InMemoryPriceStore::default()), DEFAULT_PRICE)),
            plans: Arc::new(DefaultPlans::default()),
        },
        PipelineConfig::default(),
    );
    let e = pipeline.authenticate(Some("Bearer bm_x"), Scope::ChatCompletions).await.unwrap_err();
    assert_eq!((e.kind, e.retry_after_secs), (ErrorKind::ServiceUnavailable, Some(5)));
    assert!(records.all().is_empty());
}

#[tokio::test]
async fn cached_prompt_tokens_are_billed_at_the_cached_price_from_when_it_applies() {
    let w = world(LimitOverrides::default()).await;
    let cached = Price { cached_input: Some(15_000_000), ..SEED_PRICES[0].1 };
    let now = time::OffsetDateTime::now_utc();
    w.prices.import(&[("gpt-4".to_owned(), cached)], now).await.unwrap();
    let answer = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}}"#;
    w.upstream.script(A, Script::Answer(200, answer));
    let reply = w.chat(CHAT).await;
    // 5 uncached × 30 + 4 cached × 15 + 3 × 60.
    assert_eq!(reply.cost_micros, Some(150 + 60 + 180));
    assert_eq!(w.records.only().cost_micros, 390);
}

#[tokio::test]
async fn models_without_a_price_are_charged_the_default() {
    let w = world(LimitOverrides::default()).await;
    w.pool
        .replace(vec![UpstreamServer { supported_models: vec!["llama-9".into()], ..server(A, 1) }]);
    w.upstream.script(A, Script::Answer(200, ANSWER));
    let reply = w.chat(r#"{"model":"llama-9","messages":[{"role":"user","content":"hi"}]}"#).await;
    // $0.001 / $0.002 per 1K: 9 × 1 + 3 × 2.
    assert_eq!(reply.cost_micros, Some(15));
}

// === tracing ===

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> &'a AttrValue {
    &span
        .attributes
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} in {span:?}"))
        .1
}

#[tokio::test]
async fn a_traced_request_has_each_phase_as_a_span_under_the_callers_trace() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Down);
    w.upstream.script(B, Script::Answer(200, ANSWER));
    let reply = w.open_chat(&w.key, Some(CALLER), CHAT).await.unwrap();
    assert_eq!(body_of(reply.answer).await, ANSWER.as_bytes());
    let spans = w.spans.spans();
    let root = named(&spans, "POST /v1/chat/completions")[0];
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(root.parent_id.unwrap().to_string(), "00f067aa0ba902b7", "the caller's span");
    assert!(spans.iter().all(|s| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736"));
    for name in ["auth", "limits", "settle"] {
        let s = named(&spans, name);
        assert_eq!(s.len(), 1, "{name}");
        assert_eq!(s[0].parent_id, Some(root.span_id), "{name} hangs under the root");
    }
    // Two attempts: A refused the connection, B answered.
    let (choices, calls, firsts) =
        (named(&spans, "choose_server"), named(&spans, "upstream"), named(&spans, "first_byte"));
    assert_eq!((choices.len(), calls.len(), firsts.len()), (2, 2, 2));
    assert_eq!(
        attribute(calls[0], "bluesminds.server.name"),
        &AttrValue::from("a.test".to_owned())
    );
    assert!(
        matches!(&calls[0].status, SpanStatus::Error(m) if m.contains("connect")),
        "{:?}",
        calls[0].status
    );
    assert_eq!(calls[1].status, SpanStatus::Unset);
    assert_eq!(attribute(calls[1], "http.response.status_code"), &AttrValue::Int(200));
    assert_eq!(calls[1].kind, SpanKind::Client);
    assert_eq!(firsts[1].parent_id, Some(calls[1].span_id));
    // Each upstream was told which of our spans called it.
    let sent = w.upstream.traceparents.lock().unwrap().clone();
    assert_eq!(
        sent,
        calls
            .iter()
            .map(|c| Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", c.span_id)))
            .collect::<Vec<_>>()
    );
    // The phases follow each other within the request.
    let (auth, limits, settle) =
        (named(&spans, "auth")[0], named(&spans, "limits")[0], named(&spans, "settle")[0]);
    assert!(auth.end_unix_nanos <= limits.start_unix_nanos);
    assert!(limits.end_unix_nanos <= choices[0].start_unix_nanos);
    assert!(calls[1].end_unix_nanos <= settle.start_unix_nanos);
    for s in &spans {
        assert!(
            s.start_unix_nanos >= root.start_unix_nanos && s.end_unix_nanos <= root.end_unix_nanos,
            "{s:?}"
        );
    }
    // What the request was, as the usage record says; never the key.
    assert_eq!(attribute(root, "http.response.status_code"), &AttrValue::Int(200));
    assert_eq!(attribute(root, "gen_ai.request.model"), &AttrValue::from("gpt-4".to_owned()));
    assert_eq!(attribute(root, "gen_ai.usage.input_tokens"), &AttrValue::Int(9));
    assert_eq!(attribute(root, "gen_ai.usage.output_tokens"), &AttrValue::Int(3));
    assert_eq!(attribute(root, "bluesminds.cost_micros"), &AttrValue::Int(450));
    assert!(!format!("{spans:?}").contains(&w.key));
}

#[tokio::test]
async fn a_streams_trace_goes_out_when_the_stream_ends() {
    let w = world(LimitOverrides::default()).await;
    w.upstream.script(A, Script::Stream(vec![DELTA, USAGE_CHUNK, DONE], Tail::End));
    let reply = w.open_chat(&w.key, None, CHAT_STREAM).await.unwrap();
    assert!(w.spans.spans().is_empty(), "nothing before the stream ends");
    body_of(reply.answer).await;
    let spans = w.spans.spans();
    let root = named(&spans, "POST /v1/chat/completions")[0];
    assert_eq!(root.parent_id, None, "a trace of its own");
    let first_chunk = root.events.iter().find(|e| e.name == "first_chunk").unwrap();
    let call = named(&spans, "upstream")[0];
    assert!(call.start_unix_nanos <= first_chunk.time_unix_nanos);
    assert!(
        call.end_unix_nanos >= first_chunk.time_unix_nanos,
        "the upstream span lasts the stream"
    );
    assert_eq!(attribute(root, "bluesminds.streamed"), &AttrValue::Bool(true));
    assert_eq!(attribute(root, "gen_ai.usage.output_tokens"), &AttrValue::Int(4));
}

#[tokio::test]
async fn refused_requests_are_traced_with_their_status() {
    let w = world(LimitOverrides { rate_limit_rpm: Some(1), ..LimitOverrides::default() }).await;
    // A wrong key: the auth span fails, no usage record.
    let e = w
        .open_chat("bm_wrongkey_0000000000000000000000000000000000000000000", None, CHAT)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidApiKey);
    assert!(w.records.all().is_empty());
    let spans = w.spans.spans();
    assert_eq!(spans.len(), 2);
    assert!(matches!(named(&spans, "auth")[0].status, SpanStatus::Error(_)));
    let root = named(&spans, "POST /v1/chat/completions")[0];
    assert_eq!(attribute(root, "http.response.status_code"), &AttrValue::Int(401));
    assert_eq!(root.status, SpanStatus::Unset, "a 4xx is the client's, not a server failure");
    // Over the key's RPM: the limits span says why, nothing is forwarded.
    w.upstream.script(A, Script::Answer(200, ANSWER));
    w.open_chat(&w.key, None, CHAT).await.unwrap();
    let reply = w.open_chat(&w.key, None, CHAT).await.unwrap();
    assert!(matches!(reply.answer, Answer::Error(_)));
    let spans = w.spans.spans();
    let limits = named(&spans, "limits");
    assert_eq!(limits.len(), 2);
    assert_eq!(attribute(limits[1], "bluesminds.admitted"), &AttrValue::Bool(false));
    assert_eq!(named(&spans, "upstream").len(), 1, "the refused request was never forwarded");
    let roots = named(&spans, "POST /v1/chat/completions");
    assert_eq!(attribute(roots[2], "http.response.status_code"), &AttrValue::Int(429));
}

/// A route `smart` pinned to server A, falling back to `backup`, pinned to server B; both
/// serve the upstream model gpt-4.
fn route_smart_then_backup(w: &World) {
    use gateway_balancer::{ModelRoute, RouteTarget};
    let ids: Vec<(String, ServerId)> =
        w.pool.snapshot().iter().map(|s| (s.server().base_url.clone(), s.server().id)).collect();
    let id = |url: &str| ids.iter().find(|(u, _)| u == url).unwrap().1;
    let route = |name: &str, server, fallbacks: Vec<String>| ModelRoute {
        id: gateway_core::RouteId::new(),
        name: name.into(),
        targets: vec![RouteTarget { server_id: Some(server), model: "gpt-4".into(), weight: 1 }],
        fallbacks,
        is_active: true,
    };
    w.pool.replace_routes(vec![
        route("smart", id(A), vec!["backup".into()]),
        route("backup", id(B), vec![]),
    ]);
}

const SMART: &str =
    r#"{"model":"smart","max_tokens":50,"messages":[{"role":"user","content":"Say hi"}]}"#;

#[tokio::test]
async fn a_route_whose_target_answers_429_falls_back_and_names_what_served_it() {
    let w = world(LimitOverrides::default()).await;
    route_smart_then_backup(&w);
    w.upstream.script(A, Script::Answer(429, r#"{"error":{"message":"slow down"}}"#));
    w.upstream.script(B, Script::Answer(200, ANSWER));
    let reply = w.chat(SMART).await;
    assert_eq!(body_of(reply.answer).await, ANSWER.as_bytes());
    assert_eq!(w.servers_tried(), vec![A, B], "the target, then the fallback's");
    for (_, sent) in w.upstream.sent() {
        let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["model"], "gpt-4", "the upstream is sent the target's model");
        assert_eq!(sent["max_tokens"], 50);
    }
    let r = w.records.only();
    assert_eq!((r.model.as_str(), r.status_code, r.total_tokens), ("gpt-4", 200, 12));
    assert!(r.cost_micros > 0, "priced as the model that served it");
}

#[tokio::test]
async fn when_every_stage_fails_the_last_ones_outcome_is_the_answer() {
    let w = world(LimitOverrides::default()).await;
    route_smart_then_backup(&w);
    w.upstream.script(A, Script::Down);
    w.upstream.script(B, Script::Answer(503, r#"{"error":{"message":"overloaded"}}"#));
    let reply = w.chat(SMART).await;
    let Answer::Whole { status, .. } = &reply.answer else { panic!("{reply:?}") };
    assert_eq!(status.as_u16(), 503, "the fallback's own answer");
    assert_eq!(w.servers_tried(), vec![A, B]);
    let r = w.records.only();
    assert_eq!((r.status_code, r.total_tokens, r.cost_micros), (503, 0, 0));
    // A request the route does not know keeps the 404 of any unknown model.
    let reply = w.chat(&SMART.replace("smart", "nobody")).await;
    let Answer::Error(e) = reply.answer else { panic!("an error") };
    assert_eq!(e.kind, ErrorKind::ModelNotFound);
}
