//! meshtune controller: gRPC ingest of filter reports, per-destination aggregation over
//! sliding windows, the policy decision loop (ONNX → guardrails → sinks, hints, recorder),
//! admin HTTP (health, metrics, JSON) and the `meshtune top` client.
//!
//! - [`validate`]: report validation (INVALID_ARGUMENT naming the field).
//! - [`aggregate`]: pure aggregation ([`Aggregator`]): sliding windows, lifetime totals, dedup.
//! - [`hints`]: the [`HintSource`] trait and the JSON hints file.
//! - [`server`]: the shared [`Controller`] state and [`serve`].
//! - [`admin`], [`api`], [`metrics`]: admin HTTP, its JSON types, Prometheus metrics.
//! - [`top`]: the `meshtune top` table renderer and poller.
//! - [`decision`]: the pure decision step (selection, outcomes, guardrails → sink decisions).
//! - [`policy_loop`]: the closed loop's I/O edge (inference, sinks, hints, status, recorder),
//!   sink and model set-up, [`policy_loop::serve_closed_loop`].
//! - [`recorder`]: live dataset CSV rows.
//! - [`leader`]: Lease leader election (only the leader decides, writes and is Ready).
//! - [`lifecycle`]: restart recovery of the knobs in force from meshtune's objects, removal
//!   of what meshtune wrote (observe mode, `meshtune uninstall`).
//! - [`namespaces`]: the namespace switch (label `meshtune.io/enabled=true` → data-plane
//!   object applied, gate for tuning; removed when the label goes).
//! - [`cluster_knobs`]: the DestinationRule/VirtualService watch: the knobs the cluster's own
//!   Istio objects put in force for destinations meshtune has not pushed to.
//! - [`policies`]: the `MeshtunePolicy` watch: each namespace's mode, SLO, bounds,
//!   exclusions, co-manage list, interval and approvals.
//! - [`review`]: recommendations a person can review (policy status, Events, approvals).
//! - [`rbac`]: the Kubernetes API access the controller needs, collected from the lists next
//!   to the code (checked against `manifests/` by `controller/tests/rbac.rs`).
//! - [`prometheus`]: Prometheus as a feature source (windows from Istio/Envoy metrics) and
//!   `meshtune record --from prometheus`.

pub mod admin;
pub mod aggregate;
pub mod api;
pub mod cli;
pub mod cluster_knobs;
pub mod config;
pub mod decision;
pub mod gate;
pub mod hints;
pub mod identity;
pub mod ingest;
pub mod leader;
pub mod lifecycle;
pub mod lru;
pub mod metrics;
pub mod namespaces;
pub mod policies;
pub mod policy_loop;
pub mod prometheus;
pub mod rbac;
pub mod recorder;
pub mod review;
pub mod server;
pub mod top;
pub mod validate;

pub use aggregate::Aggregator;
pub use config::Config;
pub use hints::{Hint, HintSource};
pub use server::{serve, shutdown_signal, Clock, Controller, ControllerError, SystemClock};
