//! Distributed tracing, as data: W3C trace context (`traceparent`), finished spans and the
//! [`SpanSink`] port that ships them (the OTLP exporter in production).
//!
//! Spans here are plain values: the request pipeline records the moments of a request's
//! phases and hands the finished spans of one request to a sink at once. No span is open
//! across an `await` in a shared structure, and nothing here runs when tracing is off.
//!
//! ```
//! use gateway_core::trace::TraceParent;
//!
//! let p = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! assert!(p.sampled);
//! assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(p.header(p.parent_id), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! ```

use std::borrow::Cow;
use std::fmt;

/// A trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The id from 16 random bytes; `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// The last eight bytes as a big-endian number: what ratio sampling compares (W3C's
    /// random trace ids keep their randomness there).
    pub fn sampling_value(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    /// The id from 8 random bytes; `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The `traceparent` header of W3C Trace Context: the caller's trace, its span, and whether
/// the caller records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags`. Anything malformed (wrong lengths, upper-case
    /// or non-hex digits, all-zero ids, version `ff`, extra fields on version `00`) is `None`:
    /// the request then starts a trace of its own, as the W3C recommendation says.
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim().as_bytes();
        if h.len() < 55 || h[2] != b'-' || h[35] != b'-' || h[52] != b'-' {
            return None;
        }
        let version = hex_byte(&h[0..2])?;
        // Version 00 is exactly 55 bytes; a later version may append fields after a '-'.
        if version == 0xff || (version == 0 && h.len() != 55) || (h.len() > 55 && h[55] != b'-') {
            return None;
        }
        let mut trace = [0u8; 16];
        for (i, b) in trace.iter_mut().enumerate() {
            *b = hex_byte(&h[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span = [0u8; 8];
        for (i, b) in span.iter_mut().enumerate() {
            *b = hex_byte(&h[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&h[53..55])?;
        Some(Self {
            trace_id: TraceId::from_bytes(trace)?,
            parent_id: SpanId::from_bytes(span)?,
            sampled: flags & 1 == 1,
        })
    }

    /// The header a callee gets, naming `span` (ours) as its parent.
    pub fn header(&self, span: SpanId) -> String {
        format!("00-{}-{span}-{}", self.trace_id, if self.sampled { "01" } else { "00" })
    }
}

/// Two lower-case hex digits (W3C forbids upper case).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// What a span stands for, in OpenTelemetry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A step inside the gateway.
    Internal,
    /// The request the gateway received.
    Server,
    /// A request the gateway sent (to an upstream).
    Client,
}

/// How a span ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpanStatus {
    /// Nothing to report (OpenTelemetry's default).
    #[default]
    Unset,
    /// Failed, with a message fit for an operator (never a secret or request content).
    Error(String),
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttrValue {
    fn from(s: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(s))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Cow::Owned(s))
    }
}

impl From<i64> for AttrValue {
    fn from(n: i64) -> Self {
        AttrValue::Int(n)
    }
}

impl From<u64> for AttrValue {
    fn from(n: u64) -> Self {
        AttrValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u16> for AttrValue {
    fn from(n: u16) -> Self {
        AttrValue::Int(i64::from(n))
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// A moment within a span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub name: &'static str,
    /// Nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
}

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span this one is part of; `None` for a trace's root.
    pub parent_id: Option<SpanId>,
    /// Whether the parent lives in another process (the caller of a `traceparent`).
    pub parent_is_remote: bool,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub events: Vec<SpanEvent>,
    pub status: SpanStatus,
}

/// Where finished spans go. `export` is called on the request path: it must not wait (a full
/// queue drops the spans and counts them).
pub trait SpanSink: Send + Sync {
    /// Takes every span of one request.
    fn export(&self, spans: Vec<Span>);
}

/// A sink that keeps every span, for tests.
#[derive(Debug, Default)]
pub struct InMemorySpanSink {
    spans: std::sync::Mutex<Vec<Span>>,
}

impl InMemorySpanSink {
    /// Every span exported so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl SpanSink for InMemorySpanSink {
    fn export(&self, spans: Vec<Span>) {
        self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(spans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = TraceParent::parse(VALID).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert_eq!(p.header(p.parent_id), VALID);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        assert!(unsampled.header(p.parent_id).ends_with("-00"));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_as_far_as_known() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(TraceParent::parse(future).is_some());
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceParent::parse(glued), None);
    }

    #[test]
    fn sampling_reads_the_random_low_half() {
        let mut bytes = [0u8; 16];
        bytes[15] = 1;
        assert_eq!(TraceId::from_bytes(bytes).unwrap().sampling_value(), 1);
        assert_eq!(TraceId::from_bytes([0; 16]), None);
    }
}
