//! Admin HTTP (axum): `/healthz`, `/readyz`, `/metrics`, `/api/destinations` (`?name=` for
//! one), `/api/model`,
//! and the filter module the controller ships with: `/filter.wasm` and `/api/filter`.

use crate::server::Controller;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Content type of the OpenMetrics text that prometheus-client writes (served when the
/// `Accept` header asks for it; otherwise `/metrics` is Prometheus text 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of `/filter.wasm` (the WebAssembly media type).
pub const WASM_CONTENT_TYPE: &str = "application/wasm";

/// Where the controller image puts the filter module, and so the default of `--filter-wasm`
/// (`cargo xtask image` copies the build's `meshtune_filter.wasm` there).
pub const DEFAULT_FILTER_WASM: &str = "/usr/local/share/meshtune/filter.wasm";

/// Admin path of the module (the WasmPlugin's `url` ends with it).
pub const FILTER_WASM_PATH: &str = "/filter.wasm";

/// The filter module the controller serves to sidecars: the bytes read once at start and
/// their SHA-256, which Istio checks against the WasmPlugin's `sha256`.
#[derive(Clone)]
pub struct FilterModule {
    bytes: Bytes,
    sha256: String,
    path: PathBuf,
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule")
            .field("path", &self.path)
            .field("size", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Why a filter module cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FilterModuleError {
    #[error("filter module {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("filter module {path}: not a WebAssembly module ({detail})")]
    NotWasm { path: PathBuf, detail: String },
}

/// WebAssembly binary magic and version 1.
const WASM_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

impl FilterModule {
    /// Reads and checks a module file (WebAssembly magic and version 1).
    pub fn load(path: &Path) -> Result<Self, FilterModuleError> {
        let bytes = std::fs::read(path).map_err(|source| FilterModuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// The module from its bytes; `path` names it in errors and `/api/filter`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, FilterModuleError> {
        if bytes.len() < WASM_HEADER.len() || bytes[..WASM_HEADER.len()] != WASM_HEADER {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(FilterModuleError::NotWasm {
                path: path.to_path_buf(),
                detail: format!(
                    "{} bytes starting {}; expected 00 61 73 6d 01 00 00 00",
                    bytes.len(),
                    head.join(" ")
                ),
            });
        }
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        Ok(Self {
            bytes: Bytes::from(bytes),
            sha256,
            path: path.to_path_buf(),
        })
    }

    /// Lower-case hex SHA-256 of the module bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The module bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Strong entity tag of the bytes.
    pub fn etag(&self) -> String {
        format!("\"sha256-{}\"", self.sha256)
    }

    /// Body of `/api/filter`.
    pub fn json(&self) -> FilterJson {
        FilterJson {
            sha256: self.sha256.clone(),
            size: self.bytes.len() as u64,
            filter_version: env!("CARGO_PKG_VERSION").to_string(),
            path: self.path.display().to_string(),
            url_path: FILTER_WASM_PATH.to_string(),
        }
    }
}

/// `GET /api/filter`: the module served at `/filter.wasm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterJson {
    /// Lower-case hex SHA-256 of the bytes (the WasmPlugin's `sha256`).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// meshtune release the module ships with: the image builds the controller and the filter
    /// from one workspace at one version.
    pub filter_version: String,
    /// File it was read from at start.
    pub path: String,
    /// Admin path that serves it.
    pub url_path: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin routes over a controller.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/destinations", get(destinations))
        .route("/api/model", get(model))
        .route("/api/filter", get(filter_json))
        .route(FILTER_WASM_PATH, get(filter_wasm))
        .with_state(controller)
}

async fn readyz(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    if let Some(age) = c.loop_stalled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the decision loop completed no cycle for {:.1}s (more than {} intervals)\n",
                age.as_secs_f64(),
                crate::server::STALE_LOOP_INTERVALS
            ),
        );
    }
    if c.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else Prometheus text 0.0.4.
async fn metrics(
    State(c): State<Arc<Controller>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Exposition::for_accept(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        c.metrics_text_as(format),
    )
}

async fn model(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    Json(c.model_json())
}

/// `?name=CLUSTER[&namespace=NS]`: only that destination of the reporters of `NS` (default
/// `default`), cheap with a large table.
#[derive(Debug, serde::Deserialize)]
struct DestinationQuery {
    name: Option<String>,
    namespace: Option<String>,
}

async fn destinations(
    State(c): State<Arc<Controller>>,
    axum::extract::Query(q): axum::extract::Query<DestinationQuery>,
) -> impl IntoResponse {
    Json(match q.name {
        Some(name) => c.destination_json(&meshtune_core::DestKey::new(
            q.namespace
                .as_deref()
                .unwrap_or(meshtune_core::DEFAULT_NAMESPACE),
            name,
        )),
        None => c.destinations_json(),
    })
}

/// 404 body when the controller runs without a module.
fn no_module() -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no filter module: {DEFAULT_FILTER_WASM} does not exist and --filter-wasm was not \
             given; start the controller with --filter-wasm PATH to serve one\n"
        ),
    )
}

async fn filter_json(State(c): State<Arc<Controller>>) -> Response {
    match &c.config().filter_module {
        Some(m) => Json(m.json()).into_response(),
        None => no_module().into_response(),
    }
}

async fn filter_wasm(State(c): State<Arc<Controller>>, req: HeaderMap) -> Response {
    let Some(m) = &c.config().filter_module else {
        return no_module().into_response();
    };
    let etag = m.etag();
    let cached = req
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let headers = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(header::CONTENT_TYPE, WASM_CONTENT_TYPE)],
        m.bytes().clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        // The empty module (header only); sha256 from `printf '\0asm\1\0\0\0' | sha256sum`.
        let m = FilterModule::from_bytes(Path::new("x.wasm"), WASM_HEADER.to_vec()).unwrap();
        assert_eq!(
            m.sha256(),
            "93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476"
        );
        assert_eq!(m.json().size, 8);
        assert_eq!(m.etag(), format!("\"sha256-{}\"", m.sha256()));
    }

    #[test]
    fn non_wasm_bytes_are_refused_with_the_path() {
        let e = FilterModule::from_bytes(Path::new("/tmp/x.wasm"), b"hello world".to_vec())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/tmp/x.wasm") && e.contains("not a WebAssembly module"),
            "{e}"
        );
        let e = FilterModule::load(Path::new("/nonexistent/filter.wasm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/filter.wasm"), "{e}");
    }
}
