//! Real-process harness: workload server, open-loop load generator, Envoy launcher.
