//! Admin HTTP (axum): `/healthz`, `/readyz`, `/metrics`, `/api/destinations`, `/api/model`.

use crate::server::Controller;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// Content type of the OpenMetrics text that prometheus-client writes (served when the
/// `Accept` header asks for it; otherwise `/metrics` is Prometheus text 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin routes over a controller.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/destinations", get(destinations))
        .route("/api/model", get(model))
        .with_state(controller)
}

async fn readyz(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    if c.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
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

async fn destinations(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    Json(c.destinations_json())
}
