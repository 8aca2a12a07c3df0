//! meshtune controller: gRPC ingest, aggregation, policy, guardrails, sinks, admin.
