//! Discrete-event simulator of Envoy clusters in front of finite-capacity upstreams; the RL environment.
