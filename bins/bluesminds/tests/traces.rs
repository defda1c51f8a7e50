//! OpenTelemetry traces through the real binary: the gateway, configured by the standard
//! `OTEL_*` variables, exports its request spans over OTLP/HTTP to a local collector
//! (`bluesminds_mock::otlp`); the exports are decoded with the OpenTelemetry project's own
//! types. Requests come from the `async-openai` SDK (plain and streamed), from raw HTTP with a
//! caller's `traceparent`, and with a wrong key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use bluesminds_mock::otlp::Collector;
use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use support::{Gateway, Mock, chat_request, request_with, user_with_key};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const ROOT: &str = "POST /v1/chat/completions";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.clone()
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(&span.attributes, key) {
        Some(Value::IntValue(n)) => n,
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector_and_shutdown_flushes_them() {
    let collector = Collector::start().await.unwrap();
    let mock = Mock::start().await;
    let base = format!("http://{}", collector.addr);
    let mock_url = mock.url();
    let mut gw = Gateway::start(
        &[],
        &[
            ("LITELLM_SERVER_1_URL", &mock_url),
            ("LITELLM_SERVER_1_MODELS", "gpt-4"),
            // The standard variables; the path /v1/traces is added to the base endpoint.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-vendor-key=vendor-secret-4f1e"),
            ("OTEL_SERVICE_NAME", "gateway-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci"),
            // Nothing is sent before shutdown: what arrives proves the last flush.
            ("BLUESMINDS_TRACES__FLUSH_INTERVAL_MS", "3600000"),
        ],
    )
    .await;
    let key = user_with_key(&gw, "traced@example.com", json!({"name": "traced"})).await;
    let client = Client::with_config(
        OpenAIConfig::new().with_api_base(gw.url("/api/v1")).with_api_key(&key),
    );

    let answer = client.chat().create(chat_request("gpt-4", 5)).await.unwrap();
    assert_eq!(answer.usage.unwrap().completion_tokens, 5);
    let mut stream = client.chat().create_stream(chat_request("gpt-4", 3)).await.unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    let body =
        json!({"model": "gpt-4", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let auth = format!("Bearer {key}");
    let r = request_with(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth), ("traceparent", CALLER)],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let wrong = "Bearer bm_nothere_0000000000000000000000000000000000000000000";
    let r = request_with(
        gw.addr,
        "POST",
        "/api/v1/chat/completions",
        &[("authorization", wrong)],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(collector.exports().is_empty(), "the batch waits for its interval");

    let metrics = request_with(gw.addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("bluesminds_trace_spans_total{outcome=\"dropped\"} 0"), "{text}");

    gw.terminate().await;
    let (code, stderr) = gw.wait().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("trace spans flushed"), "{stderr}");
    assert!(!stderr.contains("vendor-secret-4f1e") && !stderr.contains(&key), "no secret in logs");

    let exports = collector.exports();
    assert!(!exports.is_empty(), "shutdown sent the queued spans");
    for e in &exports {
        assert_eq!(e.headers["content-type"], "application/x-protobuf");
        assert_eq!(e.headers["x-vendor-key"], "vendor-secret-4f1e");
        let raw = String::from_utf8_lossy(&e.body);
        assert!(!raw.contains(&key) && !raw.contains("bm_nothere"), "no API key in a span");
    }
    let requests: Vec<ExportTraceServiceRequest> = exports
        .iter()
        .map(|e| ExportTraceServiceRequest::decode(e.body.clone()).unwrap())
        .collect();
    let resource = requests[0].resource_spans[0].resource.clone().unwrap();
    assert_eq!(
        attr(&resource.attributes, "service.name"),
        Some(Value::StringValue("gateway-under-test".into()))
    );
    assert_eq!(
        attr(&resource.attributes, "deployment.environment"),
        Some(Value::StringValue("ci".into()))
    );
    let spans: Vec<Span> = requests
        .into_iter()
        .flat_map(|r| r.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    let mut traces: HashMap<String, Vec<&Span>> = HashMap::new();
    for s in &spans {
        traces.entry(hex(&s.trace_id)).or_default().push(s);
    }
    assert_eq!(traces.len(), 4, "one trace per request");

    // Every served request: its root and the six phases, one attempt each.
    let served: Vec<&Vec<&Span>> =
        traces.values().filter(|t| t.iter().any(|s| s.name == "upstream")).collect();
    assert_eq!(served.len(), 3);
    for trace in &served {
        let mut names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [ROOT, "auth", "choose_server", "first_byte", "limits", "settle", "upstream"],
        );
        let root = trace.iter().find(|s| s.name == ROOT).unwrap();
        assert_eq!(root.kind, SpanKind::Server as i32);
        assert_eq!(int(root, "http.response.status_code"), 200);
        let upstream = trace.iter().find(|s| s.name == "upstream").unwrap();
        assert_eq!(upstream.kind, SpanKind::Client as i32);
        assert_eq!(upstream.parent_span_id, root.span_id);
        for s in *trace {
            assert!(s.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(s.end_time_unix_nano <= root.end_time_unix_nano);
        }
    }
    let tokens: Vec<(i64, bool)> = served
        .iter()
        .map(|t| {
            let root = t.iter().find(|s| s.name == ROOT).unwrap();
            let streamed =
                attr(&root.attributes, "bluesminds.streamed") == Some(Value::BoolValue(true));
            (int(root, "gen_ai.usage.output_tokens"), streamed)
        })
        .collect();
    assert!(
        tokens.contains(&(5, false)) && tokens.contains(&(3, true)) && tokens.contains(&(2, false)),
        "{tokens:?}"
    );

    // The caller's trace goes on through the gateway to the upstream.
    let continued = &traces[CALLER_TRACE];
    let root = continued.iter().find(|s| s.name == ROOT).unwrap();
    assert_eq!(hex(&root.parent_span_id), "00f067aa0ba902b7");
    let upstream = continued.iter().find(|s| s.name == "upstream").unwrap();
    let sent = mock.stats.traceparents.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "each forwarded request carried a traceparent");
    assert!(sent.contains(&format!("00-{CALLER_TRACE}-{}-01", hex(&upstream.span_id))), "{sent:?}");

    // The wrong key: a root with 401 and a failed auth span, nothing else.
    let refused = traces.values().find(|t| t.iter().all(|s| s.name != "upstream")).unwrap();
    assert_eq!(refused.len(), 2);
    let root = refused.iter().find(|s| s.name == ROOT).unwrap();
    assert_eq!(int(root, "http.response.status_code"), 401);
}
