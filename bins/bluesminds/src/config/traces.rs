//! `[traces]`: OpenTelemetry traces over OTLP/HTTP, off unless an endpoint is set; and the
//! standard `OTEL_*` environment variables operators already use for every other service.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Traces of gateway requests, exported over OTLP/HTTP (protobuf).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's traces URL (`http://otel-collector:4318/v1/traces`); a URL without a
    /// path gets `/v1/traces`. Empty: tracing is off. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`.
    pub endpoint: String,
    /// Headers sent with every export, e.g. a tracing vendor's API key
    /// (`OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`). Never logged.
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// More resource attributes, e.g. `deployment.environment` (`OTEL_RESOURCE_ATTRIBUTES`:
    /// `k=v,k2=v2`).
    pub resource_attributes: BTreeMap<String, String>,
    /// `parentbased_traceidratio` (follow a caller's `traceparent` decision, else the ratio),
    /// `traceidratio`, `always_on`, `always_off`, `parentbased_always_on`,
    /// `parentbased_always_off` (`OTEL_TRACES_SAMPLER`).
    pub sampler: String,
    /// The fraction of requests the ratio samplers trace, 0.0 to 1.0
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    pub sample_ratio: f64,
    /// One export's whole time (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds).
    pub timeout_ms: u64,
    /// Requests' traces waiting for export; beyond, spans are dropped and counted.
    pub queue_capacity: usize,
    /// Most spans in one export.
    pub batch_size: usize,
    /// A partial batch is exported after this long.
    pub flush_interval_ms: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            service_name: "bluesminds".into(),
            resource_attributes: BTreeMap::new(),
            sampler: "parentbased_traceidratio".into(),
            sample_ratio: 1.0,
            timeout_ms: 10_000,
            queue_capacity: 2_048,
            batch_size: 512,
            flush_interval_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for TracesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("TracesConfig")
            .field("endpoint", &crate::app::redact_url(&self.endpoint))
            .field("headers (values redacted)", &headers)
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("sampler", &self.sampler)
            .field("sample_ratio", &self.sample_ratio)
            .field("timeout_ms", &self.timeout_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_size", &self.batch_size)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .finish()
    }
}

impl TracesConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }

    /// The traces URL to post to: the endpoint, with `/v1/traces` when it names no path.
    pub fn traces_url(&self) -> String {
        let after_scheme = self.endpoint.find("://").map_or(0, |i| i + 3);
        if self.endpoint[after_scheme..].trim_end_matches('/').contains('/') {
            self.endpoint.clone()
        } else {
            format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
        }
    }

    /// Whether a caller's decision is followed, and the ratio of the rest.
    pub fn sampling(&self) -> (bool, f64) {
        match self.sampler.as_str() {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, self.sample_ratio),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            _ => (true, self.sample_ratio),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError::key(
                "traces.endpoint",
                "must be an http:// or https:// URL (OTLP/HTTP), or empty to turn tracing off",
            ));
        }
        if !SAMPLERS.contains(&self.sampler.as_str()) {
            return Err(ConfigError::key(
                "traces.sampler",
                format!("must be one of {}", SAMPLERS.join(", ")),
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::key("traces.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::key("traces.service_name", "must not be empty"));
        }
        for (key, value) in [
            ("traces.timeout_ms", self.timeout_ms),
            ("traces.queue_capacity", self.queue_capacity as u64),
            ("traces.batch_size", self.batch_size as u64),
            ("traces.flush_interval_ms", self.flush_interval_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

const SAMPLERS: [&str; 6] = [
    "parentbased_traceidratio",
    "traceidratio",
    "always_on",
    "always_off",
    "parentbased_always_on",
    "parentbased_always_off",
];

/// Applies the standard `OTEL_*` variables (OpenTelemetry's environment specification) over
/// the file and `BLUESMINDS_TRACES__*`. Only OTLP over HTTP with protobuf is spoken: any
/// other protocol or exporter named there is an error rather than silence.
pub fn apply_otel_env(
    traces: &mut TracesConfig,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        url.clone_into(&mut traces.endpoint);
    } else if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        traces.endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
    }
    for var in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Some(p) = get(var).filter(|p| *p != "http/protobuf") {
            return Err(ConfigError(format!(
                "invalid configuration: {var}={p:?}: BluesMinds exports traces over OTLP/HTTP with protobuf only (http/protobuf); point it at the collector's HTTP port (4318)"
            )));
        }
    }
    match get("OTEL_TRACES_EXPORTER") {
        None | Some("otlp") => {}
        Some("none") => traces.endpoint.clear(),
        Some(other) => {
            return Err(ConfigError(format!(
                "invalid configuration: OTEL_TRACES_EXPORTER={other:?}: only \"otlp\" or \"none\""
            )));
        }
    }
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        traces.endpoint.clear();
    }
    for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
        if let Some(list) = get(var) {
            traces.headers.extend(pairs(var, list)?);
        }
    }
    if let Some(name) = get("OTEL_SERVICE_NAME") {
        name.clone_into(&mut traces.service_name);
    }
    if let Some(list) = get("OTEL_RESOURCE_ATTRIBUTES") {
        traces.resource_attributes.extend(pairs("OTEL_RESOURCE_ATTRIBUTES", list)?);
    }
    if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
        sampler.clone_into(&mut traces.sampler);
    }
    if let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG") {
        traces.sample_ratio = arg.parse().map_err(|_| {
            ConfigError(format!(
                "invalid configuration: OTEL_TRACES_SAMPLER_ARG={arg:?} is not a number between 0.0 and 1.0"
            ))
        })?;
    }
    if let Some(ms) = get("OTEL_EXPORTER_OTLP_TIMEOUT") {
        traces.timeout_ms = ms.parse().map_err(|_| {
            ConfigError(format!(
                "invalid configuration: OTEL_EXPORTER_OTLP_TIMEOUT={ms:?} is not a number of milliseconds"
            ))
        })?;
    }
    Ok(())
}

/// `k=v,k2=v2` with percent-encoded values, as the `OTEL_*` lists are written. The error names
/// the variable and the key, never a value (header values are secrets).
fn pairs(var: &str, list: &str) -> Result<Vec<(String, String)>, ConfigError> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                ConfigError(format!(
                    "invalid configuration: {var} must be a list of key=value pairs separated by commas"
                ))
            })?;
            let k = k.trim();
            let v = percent_decode(v.trim()).ok_or_else(|| {
                ConfigError(format!("invalid configuration: {var}: the value of {k:?} is badly percent-encoded"))
            })?;
            Ok((k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_otel_variables_configure_tracing() {
        let mut t = TracesConfig::default();
        apply_otel_env(
            &mut t,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=abc%3D1, x-other = two"),
                ("OTEL_SERVICE_NAME", "gateway-eu"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.headers["x-honeycomb-team"], "abc=1");
        assert_eq!(t.headers["x-other"], "two");
        assert_eq!(t.service_name, "gateway-eu");
        assert_eq!(t.resource_attributes["deployment.environment"], "prod");
        assert_eq!(t.sampling(), (false, 0.25));
        t.validate().unwrap();
        // The traces endpoint wins over the base one and is used as it is.
        let mut t = TracesConfig::default();
        apply_otel_env(
            &mut t,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/custom/path"),
            ]),
        )
        .unwrap();
        assert_eq!(t.traces_url(), "https://b/custom/path");
        let mut off = TracesConfig { endpoint: "http://c:4318".into(), ..TracesConfig::default() };
        apply_otel_env(&mut off, &env(&[("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert!(!off.enabled());
    }

    #[test]
    fn protocols_and_exporters_we_do_not_speak_are_errors_not_silence() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_SAMPLER_ARG", "lots"),
        ] {
            let e =
                apply_otel_env(&mut TracesConfig::default(), &env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
        let e = apply_otel_env(
            &mut TracesConfig::default(),
            &env(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%2")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("authorization") && !e.to_string().contains("Bearer"),
            "{e}"
        );
    }

    #[test]
    fn the_traces_path_is_added_only_when_none_is_given() {
        let url =
            |e: &str| TracesConfig { endpoint: e.into(), ..TracesConfig::default() }.traces_url();
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(
            url("https://api.vendor.io/otlp/v1/traces"),
            "https://api.vendor.io/otlp/v1/traces"
        );
    }

    #[test]
    fn bad_values_name_their_key_and_headers_never_show() {
        let bad = |t: TracesConfig| t.validate().unwrap_err().to_string();
        assert!(
            bad(TracesConfig { endpoint: "collector:4318".into(), ..Default::default() })
                .contains("traces.endpoint")
        );
        assert!(
            bad(TracesConfig { sampler: "sometimes".into(), ..Default::default() })
                .contains("traces.sampler")
        );
        assert!(
            bad(TracesConfig { sample_ratio: 1.5, ..Default::default() })
                .contains("traces.sample_ratio")
        );
        assert!(
            bad(TracesConfig { batch_size: 0, ..Default::default() }).contains("traces.batch_size")
        );
        let mut t = TracesConfig::default();
        t.headers.insert("authorization".into(), "Bearer vendor-secret".into());
        t.endpoint = "https://user:pw-secret@collector/v1/traces".into();
        let shown = format!("{t:?}");
        assert!(!shown.contains("vendor-secret") && !shown.contains("pw-secret"), "{shown}");
    }
}
