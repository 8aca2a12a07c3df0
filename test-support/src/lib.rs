//! Dev-only test support shared by the workspace's tests and the testbed: one home for running
//! a real Envoy, mocking the Kubernetes API server and deciding whether a missing prerequisite
//! skips or fails a test.
//!
//! - [`certs`]: a test CA, server and SPIFFE client certificates (rcgen), as PEM files.
//! - [`envoy`]: finds the Envoy binary (`ENVOY_BIN`, else the project-local `.envoy/`), checks
//!   a bootstrap with `--mode validate`, starts Envoy on a bootstrap written to a fresh run
//!   directory (unique `--base-id`, output captured in a log), waits for `/ready`, reads
//!   listeners, `/stats` and `/clusters`, polls admin paths, and kills and reaps it on drop.
//! - [`istio`]: an Istio-shaped sidecar configuration built from the project's `manifests/base/`
//!   (EnvoyFilter patch or WasmPlugin translated as istiod does, `outbound|PORT||HOST`
//!   clusters, node metadata, no bootstrap extensions).
//! - [`kustomize`]: `kubectl kustomize` of `manifests/overlays/*` (skip-or-fail when kubectl
//!   is missing).
//! - [`kube_mock`]: a mocked Kubernetes API server at the HTTP level (kube-rs tower-test
//!   pattern): canned JSON, Status and List responses, request assertions, query parsing.
//! - [`prereq`]: `CI` / `MESHTUNE_E2E_REQUIRED` flags; skip-with-a-note or fail.
//! - [`process`]: run directories, log tails, CPU-pinned commands.
//! - [`http`]: a minimal blocking HTTP/1.1 client for admin endpoints.
//! - [`prometheus`]: a real Prometheus (generated config, static scrape targets) and
//!   `promtool`, with the same skip-or-fail rules.
//! - [`reports`]: filter reports (`meshtune.v1.ReportRequest`) for controller tests.
//!
//! Never a normal dependency of the shipped crates (controller, policy, sinks, core, proto,
//! filter): they take it as a dev-dependency only.

pub mod certs;
pub mod envoy;
pub mod http;
pub mod istio;
#[cfg(feature = "kube")]
pub mod kube_mock;
pub mod kustomize;
pub mod prereq;
pub mod process;
pub mod prometheus;
pub mod reports;

use std::path::{Path, PathBuf};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support has a parent")
        .to_path_buf()
}
