//! The trace of one gateway request: its phases (auth, limits, server choice, upstream, first
//! byte, settle) as OpenTelemetry spans under one root, handed to a [`SpanSink`] when the
//! request ends (a stream: when its body ends).
//!
//! A [`Trace`] exists only for a request that is sampled; everything else carries `None`, so
//! tracing that is off, or a request left out by the sampler, costs one branch per phase.
//! Moments are taken with [`Instant`] and turned into wall-clock time once, at the end, from
//! one anchor: spans of one trace never disagree with each other when the system clock steps.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_core::trace::{
    AttrValue, Span, SpanEvent, SpanId, SpanKind, SpanSink, SpanStatus, TraceId, TraceParent,
};

/// Which requests are traced, in the terms of OpenTelemetry's `OTEL_TRACES_SAMPLER`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Follow the caller's decision when the request carries a valid `traceparent`.
    pub parent_based: bool,
    /// The fraction of the other requests traced, 0.0 to 1.0, decided on the trace id (so
    /// services that sample by the same rule keep or drop a trace together).
    pub ratio: f64,
}

impl Default for Sampler {
    fn default() -> Self {
        Self { parent_based: true, ratio: 1.0 }
    }
}

impl Sampler {
    fn samples(&self, trace_id: TraceId, parent: Option<&TraceParent>) -> bool {
        if let (true, Some(p)) = (self.parent_based, parent) {
            return p.sampled;
        }
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        // OpenTelemetry's TraceIdRatioBased: the id's random low half under ratio x 2^64.
        let bound = (self.ratio * 2f64.powi(64)) as u64;
        trace_id.sampling_value() < bound
    }
}

/// Starts the traces of requests and ships them to a sink.
pub struct Tracer {
    sink: Arc<dyn SpanSink>,
    sampler: Sampler,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("sampler", &self.sampler).finish_non_exhaustive()
    }
}

impl Tracer {
    pub fn new(sink: Arc<dyn SpanSink>, sampler: Sampler) -> Self {
        Self { sink, sampler }
    }

    /// The trace of a request received at `started`, named `name` (`POST /v1/chat/completions`),
    /// continuing the caller's trace when `traceparent` is valid; `None` when the sampler leaves
    /// the request out.
    pub fn begin(
        &self,
        name: &'static str,
        traceparent: Option<&str>,
        started: Instant,
    ) -> Option<Box<Trace>> {
        let parent = traceparent.and_then(TraceParent::parse);
        let trace_id = parent.map_or_else(random_trace_id, |p| p.trace_id);
        if !self.sampler.samples(trace_id, parent.as_ref()) {
            return None;
        }
        let root = random_span_id();
        let now = Instant::now();
        let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Some(Box::new(Trace {
            sink: self.sink.clone(),
            id: trace_id,
            root,
            remote_parent: parent.map(|p| p.parent_id),
            name,
            started,
            anchor: (now, unix_now),
            children: Vec::with_capacity(8),
            attributes: Vec::with_capacity(12),
            events: Vec::new(),
            status: SpanStatus::Unset,
        }))
    }
}

fn random_trace_id() -> TraceId {
    loop {
        if let Some(id) = TraceId::from_bytes(fastrand::u128(..).to_be_bytes()) {
            return id;
        }
    }
}

fn random_span_id() -> SpanId {
    loop {
        if let Some(id) = SpanId::from_bytes(fastrand::u64(..).to_be_bytes()) {
            return id;
        }
    }
}

/// A span of a [`Trace`], to end or annotate later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanRef(usize);

#[derive(Debug)]
struct Child {
    id: SpanId,
    /// `None`: the request's root span.
    parent: Option<usize>,
    name: &'static str,
    kind: SpanKind,
    start: Instant,
    end: Option<Instant>,
    attributes: Vec<(&'static str, AttrValue)>,
    events: Vec<(&'static str, Instant)>,
    status: SpanStatus,
}

/// The spans of one request being recorded.
pub struct Trace {
    sink: Arc<dyn SpanSink>,
    id: TraceId,
    root: SpanId,
    remote_parent: Option<SpanId>,
    name: &'static str,
    started: Instant,
    /// One moment on both clocks: every `Instant` becomes wall-clock time from it.
    anchor: (Instant, Duration),
    children: Vec<Child>,
    attributes: Vec<(&'static str, AttrValue)>,
    events: Vec<(&'static str, Instant)>,
    status: SpanStatus,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("spans", &(self.children.len() + 1))
            .finish_non_exhaustive()
    }
}

impl Trace {
    pub fn trace_id(&self) -> TraceId {
        self.id
    }

    /// Opens a span now, under `parent` (the root when `None`).
    pub fn start(
        &mut self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<SpanRef>,
    ) -> SpanRef {
        self.start_at(name, kind, parent, Instant::now())
    }

    /// Opens a span that began at `start`.
    pub fn start_at(
        &mut self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<SpanRef>,
        start: Instant,
    ) -> SpanRef {
        self.children.push(Child {
            id: random_span_id(),
            parent: parent.map(|p| p.0),
            name,
            kind,
            start,
            end: None,
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
        });
        SpanRef(self.children.len() - 1)
    }

    /// Ends a span now (a span ended twice keeps its first end).
    pub fn end(&mut self, span: SpanRef) {
        self.end_at(span, Instant::now());
    }

    pub fn end_at(&mut self, span: SpanRef, at: Instant) {
        if let Some(c) = self.children.get_mut(span.0) {
            c.end.get_or_insert(at);
        }
    }

    /// Sets an attribute of a span.
    pub fn set(&mut self, span: SpanRef, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(c) = self.children.get_mut(span.0) {
            c.attributes.push((key, value.into()));
        }
    }

    /// Marks a span failed; `message` is for operators (no secret, no request content).
    pub fn fail(&mut self, span: SpanRef, message: impl Into<String>) {
        if let Some(c) = self.children.get_mut(span.0) {
            c.status = SpanStatus::Error(message.into());
        }
    }

    /// Notes a moment of a span (of the root span when `None`).
    pub fn event(&mut self, span: Option<SpanRef>, name: &'static str, at: Instant) {
        match span {
            Some(s) => {
                if let Some(c) = self.children.get_mut(s.0) {
                    c.events.push((name, at));
                }
            }
            None => self.events.push((name, at)),
        }
    }

    /// Sets an attribute of the request's root span.
    pub fn set_root(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        self.attributes.push((key, value.into()));
    }

    /// Marks the request failed.
    pub fn fail_root(&mut self, message: impl Into<String>) {
        self.status = SpanStatus::Error(message.into());
    }

    /// The `traceparent` a callee gets so its spans hang under `span`.
    pub fn traceparent(&self, span: SpanRef) -> String {
        let id = self.children.get(span.0).map_or(self.root, |c| c.id);
        TraceParent { trace_id: self.id, parent_id: id, sampled: true }.header(id)
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        let (anchor, unix) = self.anchor;
        let t = if at >= anchor { unix + (at - anchor) } else { unix.saturating_sub(anchor - at) };
        t.as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Ends the request now: spans still open end with it, and every span goes to the sink.
    pub fn finish(self: Box<Self>) {
        let end = Instant::now();
        let mut spans = Vec::with_capacity(self.children.len() + 1);
        for c in &self.children {
            spans.push(Span {
                trace_id: self.id,
                span_id: c.id,
                parent_id: Some(
                    c.parent.and_then(|p| self.children.get(p)).map_or(self.root, |p| p.id),
                ),
                parent_is_remote: false,
                name: Cow::Borrowed(c.name),
                kind: c.kind,
                start_unix_nanos: self.unix_nanos(c.start),
                end_unix_nanos: self.unix_nanos(c.end.unwrap_or(end)),
                attributes: c.attributes.clone(),
                events: c
                    .events
                    .iter()
                    .map(|(name, at)| SpanEvent { name, time_unix_nanos: self.unix_nanos(*at) })
                    .collect(),
                status: c.status.clone(),
            });
        }
        let root_events = self
            .events
            .iter()
            .map(|(name, at)| SpanEvent { name, time_unix_nanos: self.unix_nanos(*at) })
            .collect();
        let this = *self;
        spans.push(Span {
            trace_id: this.id,
            span_id: this.root,
            parent_id: this.remote_parent,
            parent_is_remote: this.remote_parent.is_some(),
            name: Cow::Borrowed(this.name),
            kind: SpanKind::Server,
            start_unix_nanos: this.unix_nanos(this.started),
            end_unix_nanos: this.unix_nanos(end),
            attributes: this.attributes,
            events: root_events,
            status: this.status,
        });
        this.sink.export(spans);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use gateway_core::trace::InMemorySpanSink;

    fn tracer(sampler: Sampler) -> (Tracer, Arc<InMemorySpanSink>) {
        let sink = Arc::new(InMemorySpanSink::default());
        (Tracer::new(sink.clone(), sampler), sink)
    }

    #[test]
    fn spans_nest_under_the_root_and_the_callers_span() {
        let (tracer, sink) = tracer(Sampler::default());
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let started = Instant::now();
        let mut t = tracer.begin("POST /v1/chat/completions", Some(parent), started).unwrap();
        let up = t.start("upstream", SpanKind::Client, None);
        let first = t.start("first_byte", SpanKind::Internal, Some(up));
        t.end(first);
        let header = t.traceparent(up);
        t.set_root("http.response.status_code", 200u16);
        t.finish();
        let spans = sink.spans();
        assert_eq!(spans.len(), 3);
        let root = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        let up = spans.iter().find(|s| s.name == "upstream").unwrap();
        let first = spans.iter().find(|s| s.name == "first_byte").unwrap();
        assert!(spans.iter().all(|s| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(root.parent_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert!(root.parent_is_remote);
        assert_eq!(up.parent_id, Some(root.span_id));
        assert_eq!(first.parent_id, Some(up.span_id));
        assert_eq!(header, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", up.span_id));
        // The open upstream span ends with the request; every child lies within the root.
        assert_eq!(up.end_unix_nanos, root.end_unix_nanos);
        for s in &spans {
            assert!(
                s.start_unix_nanos >= root.start_unix_nanos
                    && s.end_unix_nanos <= root.end_unix_nanos
            );
            assert!(s.start_unix_nanos <= s.end_unix_nanos);
        }
    }

    #[test]
    fn the_sampler_follows_the_parent_then_the_ratio() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let now = Instant::now();
        let (never, _) = tracer(Sampler { parent_based: true, ratio: 0.0 });
        assert!(never.begin("x", None, now).is_none());
        assert!(never.begin("x", Some(sampled), now).is_some());
        let (always, _) = tracer(Sampler { parent_based: true, ratio: 1.0 });
        assert!(always.begin("x", Some(unsampled), now).is_none());
        let (own, _) = tracer(Sampler { parent_based: false, ratio: 1.0 });
        assert!(own.begin("x", Some(unsampled), now).is_some());
        // A quarter, within a wide margin: the decision is the id's low half against the ratio.
        let (quarter, _) = tracer(Sampler { parent_based: true, ratio: 0.25 });
        let kept = (0..4000).filter(|_| quarter.begin("x", None, now).is_some()).count();
        assert!((700..1300).contains(&kept), "{kept} of 4000 sampled at 0.25");
    }
}
