//! OTLP's trace messages in protobuf's binary encoding, written by hand: the gateway sends one
//! fixed message shape (`ExportTraceServiceRequest` of opentelemetry-proto, `trace/v1` and
//! `collector/trace/v1`), so a few dozen lines replace a code generator and its runtime. The
//! tests decode the output with the OpenTelemetry project's own generated types.
//!
//! Field numbers, from `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`:
//! - ExportTraceServiceRequest: 1 resource_spans
//! - ResourceSpans: 1 resource, 2 scope_spans; Resource: 1 attributes
//! - ScopeSpans: 1 scope, 2 spans; InstrumentationScope: 1 name, 2 version
//! - Span: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start_time_unix_nano
//!   (fixed64), 8 end_time_unix_nano (fixed64), 9 attributes, 11 events, 15 status, 16 flags
//!   (fixed32)
//! - Span.Event: 1 time_unix_nano (fixed64), 2 name; Status: 2 message, 3 code
//! - KeyValue: 1 key, 2 value; AnyValue: 1 string_value, 2 bool_value, 3 int_value

use gateway_core::trace::{AttrValue, Span, SpanKind, SpanStatus};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `SpanFlags`: the W3C sampled flag, and whether the parent's remoteness is known and true.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Who sent the spans: the resource's attributes and the instrumentation scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `service.name` and the rest, in order.
    pub resource: Vec<(String, String)>,
    pub scope_name: String,
    pub scope_version: String,
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(buf, field, LEN);
    varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// A string field; proto3 leaves an empty one out.
fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        bytes(buf, field, value.as_bytes());
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// An embedded message: written in place, then its length is put in front of it.
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let start = buf.len();
    body(buf);
    let mut len = Vec::with_capacity(4);
    varint(&mut len, (buf.len() - start) as u64);
    buf.splice(start..start, len);
}

fn key_value(buf: &mut Vec<u8>, field: u32, k: &str, v: &AttrValue) {
    message(buf, field, |kv| {
        string(kv, 1, k);
        message(kv, 2, |any| match v {
            // A oneof member is written even when it holds its type's default.
            AttrValue::Str(s) => bytes(any, 1, s.as_bytes()),
            AttrValue::Bool(b) => {
                key(any, 2, VARINT);
                varint(any, u64::from(*b));
            }
            AttrValue::Int(n) => {
                key(any, 3, VARINT);
                // int64: two's complement, ten bytes when negative.
                varint(any, *n as u64);
            }
        });
    });
}

fn kind(k: SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

fn span(buf: &mut Vec<u8>, s: &Span) {
    message(buf, 2, |m| {
        bytes(m, 1, &s.trace_id.0);
        bytes(m, 2, &s.span_id.0);
        if let Some(parent) = s.parent_id {
            bytes(m, 4, &parent.0);
        }
        string(m, 5, &s.name);
        key(m, 6, VARINT);
        varint(m, kind(s.kind));
        fixed64(m, 7, s.start_unix_nanos);
        fixed64(m, 8, s.end_unix_nanos);
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        for e in &s.events {
            message(m, 11, |ev| {
                fixed64(ev, 1, e.time_unix_nanos);
                string(ev, 2, e.name);
            });
        }
        if let SpanStatus::Error(why) = &s.status {
            message(m, 15, |st| {
                string(st, 2, why);
                key(st, 3, VARINT);
                varint(st, 2); // STATUS_CODE_ERROR
            });
        }
        let remote = if s.parent_is_remote { FLAG_IS_REMOTE } else { 0 };
        fixed32(m, 16, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote);
    });
}

/// One `ExportTraceServiceRequest` holding `spans`, all from `origin`.
pub fn export_request(origin: &Origin, spans: &[Span]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + spans.len() * 320);
    message(&mut buf, 1, |rs| {
        message(rs, 1, |resource| {
            for (k, v) in &origin.resource {
                key_value(resource, 1, k, &AttrValue::from(v.clone()));
            }
        });
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                string(scope, 1, &origin.scope_name);
                string(scope, 2, &origin.scope_version);
            });
            for s in spans {
                span(ss, s);
            }
        });
    });
    buf
}

/// The spans a collector refused, from its `ExportTraceServiceResponse`
/// (`partial_success` = 1 { `rejected_spans` = 1, `error_message` = 2 }); `None` when all were
/// taken or the answer cannot be read.
pub fn rejected(response: &[u8]) -> Option<(u64, String)> {
    let partial = field(response, 1, LEN)?;
    let count = field(partial, 1, VARINT).and_then(read_varint).map_or(0, |(n, _)| n);
    let message = field(partial, 2, LEN).map(|m| String::from_utf8_lossy(m).into_owned());
    (count > 0).then(|| (count, message.unwrap_or_default()))
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The first field `number` of wire type `wire` in `buf`: a length-delimited field's bytes,
/// or the rest of the buffer from a varint on.
fn field(buf: &[u8], number: u32, wire: u8) -> Option<&[u8]> {
    let mut at = 0;
    while at < buf.len() {
        let (tag, n) = read_varint(&buf[at..])?;
        at += n;
        let (num, w) = ((tag >> 3) as u32, (tag & 7) as u8);
        let found = num == number && w == wire;
        match w {
            VARINT => {
                if found {
                    return Some(&buf[at..]);
                }
                at += read_varint(&buf[at..])?.1;
            }
            FIXED64 => at += 8,
            FIXED32 => at += 4,
            LEN => {
                let (len, n) = read_varint(&buf[at..])?;
                let start = at + n;
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                let value = buf.get(start..end)?;
                if found {
                    return Some(value);
                }
                at = end;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        assert_eq!(read_varint(&b), Some((300, 2)));
        let mut neg = Vec::new();
        varint(&mut neg, -1i64 as u64);
        assert_eq!(neg.len(), 10);
    }

    #[test]
    fn a_partial_success_is_read_back() {
        // partial_success { rejected_spans: 3, error_message: "full" }
        let mut inner = Vec::new();
        key(&mut inner, 1, VARINT);
        varint(&mut inner, 3);
        string(&mut inner, 2, "full");
        let mut outer = Vec::new();
        bytes(&mut outer, 1, &inner);
        assert_eq!(rejected(&outer), Some((3, "full".to_owned())));
        assert_eq!(rejected(&[]), None);
        assert_eq!(rejected(&[0x0a, 0x00]), None);
        assert_eq!(rejected(&[0x0a, 0x05, 0x08]), None);
    }
}
