//! The exporter against a local OTLP/HTTP collector (`bluesminds_mock::otlp`), its exports
//! decoded with the OpenTelemetry project's own message types (`opentelemetry-proto`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bluesminds_mock::otlp::{Collector, Export};
use bytes::Bytes;
use gateway_core::trace::{
    AttrValue, Span, SpanEvent, SpanId, SpanKind, SpanSink, SpanStatus, TraceId,
};
use gateway_otlp::{OtlpConfig, OtlpExporter};
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as ProtoStatus;
use prost::Message;

const PATIENCE: Duration = Duration::from_secs(20);

fn config(collector: &Collector) -> OtlpConfig {
    OtlpConfig {
        endpoint: collector.endpoint(),
        headers: vec![("x-vendor-key".into(), "vendor-secret-123".into())],
        flush_interval: Duration::from_millis(20),
        ..OtlpConfig::default()
    }
}

fn trace(n: u8) -> Vec<Span> {
    let trace_id = TraceId([n; 16]);
    let root = SpanId([n; 8]);
    let child = SpanId([n.wrapping_add(100); 8]);
    vec![
        Span {
            trace_id,
            span_id: child,
            parent_id: Some(root),
            parent_is_remote: false,
            name: Cow::Borrowed("upstream"),
            kind: SpanKind::Client,
            start_unix_nanos: 1_700_000_000_000_000_100,
            end_unix_nanos: 1_700_000_000_000_000_900,
            attributes: vec![
                ("server.port", AttrValue::Int(4000)),
                ("bluesminds.offset", AttrValue::Int(-5)),
                ("bluesminds.streamed", AttrValue::Bool(false)),
            ],
            events: vec![SpanEvent {
                name: "first_chunk",
                time_unix_nanos: 1_700_000_000_000_000_500,
            }],
            status: SpanStatus::Error("upstream answered 503 Service Unavailable".into()),
        },
        Span {
            trace_id,
            span_id: root,
            parent_id: Some(SpanId([7; 8])),
            parent_is_remote: true,
            name: Cow::Borrowed("POST /v1/chat/completions"),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_001_000,
            attributes: vec![("gen_ai.request.model", AttrValue::from("gpt-4"))],
            events: Vec::new(),
            status: SpanStatus::Unset,
        },
    ]
}

fn decode(export: &Export) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(export.body.clone()).expect("a valid OTLP protobuf body")
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> &'a Value {
    let kv = attributes.iter().find(|kv| kv.key == key).unwrap_or_else(|| panic!("no {key}"));
    kv.value.as_ref().and_then(|v| v.value.as_ref()).unwrap()
}

/// Waits until `done` holds (polling), or fails the test after `PATIENCE`.
async fn eventually(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not reached within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Spans the exporter has settled: taken or lost.
fn settled(exporter: &OtlpExporter) -> u64 {
    let s = exporter.stats();
    s.exported.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed)
}

fn spans_in(exports: &[Export]) -> usize {
    exports
        .iter()
        .map(decode)
        .flat_map(|r| r.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[tokio::test]
async fn spans_arrive_as_the_opentelemetry_project_decodes_them() {
    let collector = Collector::start().await.unwrap();
    let exporter = OtlpExporter::start(config(&collector)).unwrap();
    exporter.export(trace(1));
    let exports = collector.wait_for(PATIENCE, |e| spans_in(e) >= 2).await;
    assert_eq!(exports.len(), 1, "one batch");
    let export = &exports[0];
    assert_eq!(export.headers["content-type"], "application/x-protobuf");
    assert_eq!(export.headers["x-vendor-key"], "vendor-secret-123");
    assert!(export.headers["user-agent"].to_str().unwrap().starts_with("bluesminds/"));

    let request = decode(export);
    let rs = &request.resource_spans[0];
    let resource = rs.resource.as_ref().unwrap();
    assert_eq!(
        attr(&resource.attributes, "service.name"),
        &Value::StringValue("bluesminds".into())
    );
    let scope = rs.scope_spans[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "bluesminds");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);

    let up = &spans[0];
    assert_eq!(up.trace_id, vec![1; 16]);
    assert_eq!(up.span_id, vec![101; 8]);
    assert_eq!(up.parent_span_id, vec![1; 8]);
    assert_eq!(up.name, "upstream");
    assert_eq!(up.kind, ProtoKind::Client as i32);
    assert_eq!(up.start_time_unix_nano, 1_700_000_000_000_000_100);
    assert_eq!(up.end_time_unix_nano, 1_700_000_000_000_000_900);
    assert_eq!(attr(&up.attributes, "server.port"), &Value::IntValue(4000));
    assert_eq!(attr(&up.attributes, "bluesminds.offset"), &Value::IntValue(-5));
    assert_eq!(attr(&up.attributes, "bluesminds.streamed"), &Value::BoolValue(false));
    assert_eq!(up.events.len(), 1);
    assert_eq!(up.events[0].name, "first_chunk");
    assert_eq!(up.events[0].time_unix_nano, 1_700_000_000_000_000_500);
    let status = up.status.as_ref().unwrap();
    assert_eq!(status.code, ProtoStatus::Error as i32);
    assert_eq!(status.message, "upstream answered 503 Service Unavailable");
    // Sampled, parent known to be local.
    assert_eq!(up.flags, 0x101);

    let root = &spans[1];
    assert_eq!(root.kind, ProtoKind::Server as i32);
    assert_eq!(root.parent_span_id, vec![7; 8]);
    assert_eq!(root.flags, 0x301, "sampled, parent known to be remote");
    assert!(root.status.is_none(), "an unset status is left out");
    assert_eq!(attr(&root.attributes, "gen_ai.request.model"), &Value::StringValue("gpt-4".into()));
    eventually(|| settled(&exporter) >= 2).await;
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 2);
    exporter.shutdown(PATIENCE).await;
}

#[tokio::test]
async fn a_busy_collector_gets_retries_and_a_refusing_one_loses_the_batch() {
    let collector = Collector::start().await.unwrap();
    collector.answer_with([(StatusCode::SERVICE_UNAVAILABLE, Bytes::new())]);
    let exporter = OtlpExporter::start(config(&collector)).unwrap();
    exporter.export(trace(1));
    // The 503, then the retry a second later, taken.
    let exports = collector.wait_for(PATIENCE, |e| e.len() >= 2).await;
    assert_eq!(exports.len(), 2);
    assert_eq!(exports[0].body, exports[1].body, "the same batch, sent again");
    let stats = exporter.stats();
    eventually(|| settled(&exporter) >= 2).await;
    assert_eq!(stats.exported.load(Ordering::Relaxed), 2);

    // A 400 is final: no retry, the spans are counted as failed.
    collector.answer_with([(StatusCode::BAD_REQUEST, Bytes::new())]);
    exporter.export(trace(2));
    eventually(|| settled(&exporter) >= 4).await;
    assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
    assert_eq!(collector.exports().len(), 3);
    exporter.shutdown(PATIENCE).await;
}

#[tokio::test]
async fn spans_a_collector_refuses_in_a_partial_success_are_counted_as_failed() {
    let collector = Collector::start().await.unwrap();
    let partial = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "span too old".into(),
        }),
    };
    collector.answer_with([(StatusCode::OK, Bytes::from(partial.encode_to_vec()))]);
    let exporter = OtlpExporter::start(config(&collector)).unwrap();
    exporter.export(trace(1));
    let stats = exporter.stats();
    eventually(|| settled(&exporter) >= 2).await;
    assert_eq!(stats.exported.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    exporter.shutdown(PATIENCE).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_shutdown_sends_what_was_queued() {
    let collector = Collector::start().await.unwrap();
    let exporter = OtlpExporter::start(OtlpConfig {
        queue_capacity: 1,
        // Only shutdown sends.
        flush_interval: Duration::from_hours(1),
        ..config(&collector)
    })
    .unwrap();
    // On this single-threaded test runtime the exporter's task cannot run before the next
    // await: the first trace fills the queue, the other two are dropped.
    exporter.export(trace(1));
    exporter.export(trace(2));
    exporter.export(trace(3));
    assert_eq!(exporter.stats().dropped.load(Ordering::Relaxed), 4);
    exporter.shutdown(PATIENCE).await;
    let exports = collector.exports();
    assert_eq!(spans_in(&exports), 2);
    assert_eq!(decode(&exports[0]).resource_spans[0].scope_spans[0].spans[0].trace_id, vec![1; 16]);
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 2);
    // After shutdown nothing is sent, and what comes is counted.
    exporter.export(trace(4));
    assert_eq!(exporter.stats().dropped.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn a_large_batch_is_split_into_exports_of_the_batch_size() {
    let collector = Collector::start().await.unwrap();
    let exporter = OtlpExporter::start(OtlpConfig {
        batch_size: 3,
        flush_interval: Duration::from_hours(1),
        ..config(&collector)
    })
    .unwrap();
    for n in 1..=4 {
        exporter.export(trace(n));
    }
    exporter.shutdown(PATIENCE).await;
    let exports = collector.exports();
    assert_eq!(spans_in(&exports), 8);
    assert!(exports.iter().all(|e| spans_in(std::slice::from_ref(e)) <= 3));
}

#[tokio::test]
async fn bad_endpoints_and_headers_are_refused_at_start_without_showing_secrets() {
    for endpoint in ["", "collector:4318", "ftp://h/v1/traces", "http:///v1/traces"] {
        let e =
            OtlpExporter::start(OtlpConfig { endpoint: endpoint.into(), ..OtlpConfig::default() })
                .unwrap_err();
        assert!(e.to_string().contains("not an http://"), "{e}");
    }
    let bad_header = OtlpConfig {
        endpoint: "http://127.0.0.1:4318/v1/traces".into(),
        headers: vec![("x-key".into(), "line\nbreak-secret".into())],
        ..OtlpConfig::default()
    };
    assert!(!format!("{bad_header:?}").contains("secret"));
    let e = OtlpExporter::start(bad_header).unwrap_err();
    assert!(e.to_string().contains("x-key") && !e.to_string().contains("secret"), "{e}");
}
