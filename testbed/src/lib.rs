//! Real-process harness: workload server, open-loop load generator, Envoy and controller
//! launchers, plus the demo and the filter-overhead benchmark used by `cargo xtask`.
//!
//! - [`workload`]: a finite-capacity HTTP upstream with configurable service time and exact
//!   error injection.
//! - [`loadgen`]: an open-loop (constant arrival rate) load generator without coordinated
//!   omission: latency is measured from each request's intended send time.
//! - [`envoy`]: renders an Envoy bootstrap (no filter / no-op wasm / meshtune filter) and
//!   starts Envoy on it through `meshtune-test-support`'s launcher (free ports, readiness,
//!   stats, stop on drop).
//! - [`demo`]: the closed-loop demo (Istio defaults vs meshtune under a step load).
//! - [`controller`]: starts the `meshtune controller` process, parses its ports, restarts it.
//! - [`http`]: a minimal blocking HTTP/1.1 client for admin endpoints (re-exported from
//!   `meshtune-test-support`).
//! - [`paths`]: where the Envoy binary, the wasm files and the `meshtune` binary are.
//! - [`scenarios`]: the filter-overhead benchmark; [`istio_bench`]: its Istio-shaped variants.
//! - [`bookinfo`]: Istio's BookInfo call graph, every calling service behind its own sidecar.
//! - [`calibrate`]: the simulator against real Envoy on the same scenarios and settings.
//! - [`compare_windows`]: the live controller's features next to the simulator's, window by
//!   window, on the same load.
//! - [`realrun`]: a simulator scenario file run on real Envoy (hosts, clients, faults, load).
//! - [`tuning`]: the five-arm tuning benchmark on real Envoy.

pub mod abuse;
pub mod bookinfo;
pub mod calibrate;
pub mod compare_windows;
pub mod controller;
pub mod demo;
pub mod envoy;
pub mod istio_bench;
pub mod loadgen;
pub mod paths;
pub mod procstat;
pub mod progress;
pub mod realrun;
pub mod scenarios;
pub mod tuning;
pub mod workload;

pub use meshtune_test_support::http;
