//! A proxy-wasm HTTP filter that does nothing (benchmark baseline): every callback continues.
//!
//! With a plugin configuration it becomes a *probe*: a comma-separated list of the host calls
//! to make on every request (see [`Probe`]), so `testbed filter-overhead --probe ...` can price
//! single host calls side by side with the no-op and the meshtune filter. The list may also
//! come as a JSON object `{"probe": "LIST"}` (how an Istio WasmPlugin's `pluginConfig`
//! reaches the filter). An empty configuration (the baseline) makes no host call at all.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(NoopRoot { probe: Probe::default() })
    });
}}

/// Host calls made per request (all off = the no-op filter).
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// `clock`: `get_current_time` at request headers and in `on_log`.
    clock: bool,
    /// `cluster`: property `xds.cluster_name` at request headers.
    cluster: bool,
    /// `status`: property `response.code` in `on_log`.
    status: bool,
    /// `status-header`: response header `:status` at response headers.
    status_header: bool,
    /// `attempts`: property `upstream.request_attempt_count` in `on_log`.
    attempts: bool,
}

impl Probe {
    fn parse(spec: &str) -> Result<Self, String> {
        let spec = unwrap_json(spec)?;
        let mut p = Probe::default();
        for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "clock" => p.clock = true,
                "cluster" => p.cluster = true,
                "status" => p.status = true,
                "status-header" => p.status_header = true,
                "attempts" => p.attempts = true,
                // No call: a second no-op filter (its spread against the first is the floor
                // of any paired difference).
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown probe {other:?} (known: clock, cluster, status, status-header, attempts, none)"
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// `{"probe": "LIST"}` → `LIST` (no JSON library: the only accepted object shape); any other
/// text is the list itself.
fn unwrap_json(spec: &str) -> Result<&str, String> {
    let t = spec.trim();
    if !t.starts_with('{') {
        return Ok(t);
    }
    let inner = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .map(str::trim)
        .unwrap_or_default();
    if inner.is_empty() {
        return Ok("");
    }
    inner
        .strip_prefix("\"probe\"")
        .map(str::trim_start)
        .and_then(|x| x.strip_prefix(':'))
        .map(str::trim)
        .and_then(|x| x.strip_prefix('"'))
        .and_then(|x| x.strip_suffix('"'))
        .ok_or_else(|| format!("configuration {t:?}: expected {{\"probe\": \"LIST\"}} or LIST"))
}

struct NoopRoot {
    probe: Probe,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        if size == 0 {
            return true;
        }
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(Probe::parse)
        {
            Ok(p) => {
                self.probe = p;
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("noop-filter: {e}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            probe: self.probe,
            sink: 0,
        }))
    }
}

struct Noop {
    probe: Probe,
    /// Folds what the probes read, so no read can be optimised away.
    sink: u64,
}

impl Noop {
    fn clock(&mut self) {
        if let Ok(t) = hostcalls::get_current_time() {
            let ns = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            self.sink ^= u64::from(ns);
        }
    }

    fn property(&mut self, path: Vec<&str>) {
        if let Ok(Some(v)) = hostcalls::get_property(path) {
            self.sink = self.sink.wrapping_add(v.len() as u64);
        }
    }
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.probe.clock {
            self.clock();
        }
        if self.probe.cluster {
            self.property(vec!["xds", "cluster_name"]);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.probe.status_header {
            if let Ok(Some(v)) = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status") {
                self.sink = self.sink.wrapping_add(v.len() as u64);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.probe.clock {
            self.clock();
        }
        if self.probe.status {
            self.property(vec!["response", "code"]);
        }
        if self.probe.attempts {
            self.property(vec!["upstream", "request_attempt_count"]);
        }
        if self.sink == 1 {
            // Never true in practice; keeps `sink` observable.
            let _ = hostcalls::log(LogLevel::Trace, "noop-filter: sink");
        }
    }
}
