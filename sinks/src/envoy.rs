//! Renders `Knobs` to Envoy v3 config (as JSON values): a `Cluster` with circuit breakers,
//! HTTP protocol options and outlier detection, and route-level timeout and retry policy, plus
//! the xDS file wrappers and bootstraps used for file-based CDS/RDS and `--mode validate`.
//!
//! Istio's "unset" defaults map to what Istio itself programs into Envoy: 2^32-1 for the
//! circuit-breaker limits (Envoy's own default would be 1024), no `max_requests_per_connection`
//! for 0, route `timeout: 0s` (disabled) for 0, no `per_try_timeout` for 0 and no retry policy
//! for 0 attempts.

use std::path::Path;

use meshtune_core::{Knob, Knobs};
use serde_json::{json, Value};

use crate::duration::format_ms;

/// Envoy's largest circuit-breaker limit; what Istio programs for "unlimited".
pub const ENVOY_UNLIMITED: u64 = u32::MAX as u64;
/// Default `retry_on` for route retry policies.
pub const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure";
/// Type URL of Envoy's `previous_hosts` retry host predicate.
pub const PREVIOUS_HOSTS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// Host selection attempts per retry in Istio's default retry policy.
pub const ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS: u32 = 5;
/// Default cluster connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Default outlier-detection analysis interval (Istio's default).
pub const DEFAULT_OUTLIER_INTERVAL_MS: u64 = 10_000;
/// `@type` of a v3 Cluster.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `@type` of a v3 RouteConfiguration.
pub const ROUTE_CONFIGURATION_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Errors rendering Envoy config.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cluster {cluster:?}: endpoint {endpoint:?} is not host:port ({reason})")]
    BadEndpoint {
        cluster: String,
        endpoint: String,
        reason: &'static str,
    },
    #[error("cluster {cluster:?}: no endpoints")]
    NoEndpoints { cluster: String },
}

/// How one destination appears as an Envoy cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyCluster {
    /// Envoy cluster name.
    pub name: String,
    /// Upstream endpoints as `host:port` (IPv6 as `[::1]:8080`). All IPs → `STATIC`, else
    /// `STRICT_DNS`.
    pub endpoints: Vec<String>,
    /// TCP connect timeout in ms ([`DEFAULT_CONNECT_TIMEOUT_MS`]).
    pub connect_timeout_ms: u64,
    /// Speak HTTP/2 to the upstream (else HTTP/1.1).
    pub http2: bool,
}

impl EnvoyCluster {
    /// An HTTP/1.1 cluster with the default connect timeout.
    pub fn new(name: impl Into<String>, endpoints: Vec<String>) -> Self {
        Self {
            name: name.into(),
            endpoints,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            http2: false,
        }
    }
}

/// A limit knob as an Envoy circuit-breaker value: Istio's 2^32-1 (or anything above, or NaN)
/// → 2^32-1, else the rounded value (≥ 0).
pub fn envoy_limit(v: f64) -> u64 {
    if !v.is_finite() || v >= ENVOY_UNLIMITED as f64 {
        ENVOY_UNLIMITED
    } else {
        v.round().max(0.0) as u64
    }
}

fn whole(v: f64) -> u64 {
    if v.is_finite() {
        v.round().clamp(0.0, ENVOY_UNLIMITED as f64) as u64
    } else {
        0
    }
}

fn split_endpoint<'a>(cluster: &str, ep: &'a str) -> Result<(&'a str, u16), RenderError> {
    let bad = |reason| RenderError::BadEndpoint {
        cluster: cluster.to_string(),
        endpoint: ep.to_string(),
        reason,
    };
    let (host, port) = ep.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("port is not 0-65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host, port))
}

/// Renders a v3 `Cluster` (with `@type`) for `cluster` carrying `knobs`' connection-pool and
/// outlier-detection settings.
pub fn cluster(cluster: &EnvoyCluster, knobs: &Knobs) -> Result<Value, RenderError> {
    if cluster.endpoints.is_empty() {
        return Err(RenderError::NoEndpoints {
            cluster: cluster.name.clone(),
        });
    }
    let mut all_ips = true;
    let mut lb_endpoints = Vec::new();
    for ep in &cluster.endpoints {
        let (host, port) = split_endpoint(&cluster.name, ep)?;
        all_ips &= host.parse::<std::net::IpAddr>().is_ok();
        lb_endpoints.push(json!({"endpoint": {"address": {"socket_address": {
            "address": host, "port_value": port}}}}));
    }
    let mut common = json!({});
    let per_conn = whole(knobs.get(Knob::MaxRequestsPerConnection));
    if per_conn > 0 {
        common["max_requests_per_connection"] = json!(per_conn);
    }
    let explicit = if cluster.http2 {
        json!({"http2_protocol_options": {}})
    } else {
        json!({"http_protocol_options": {}})
    };
    let consecutive = whole(knobs.get(Knob::Consecutive5xxErrors));
    let mut outlier = json!({
        "consecutive_5xx": consecutive,
        "interval": format_ms(DEFAULT_OUTLIER_INTERVAL_MS as f64),
        "base_ejection_time": format_ms(knobs.get(Knob::BaseEjectionTimeMs)),
        "max_ejection_percent": whole(knobs.get(Knob::MaxEjectionPercent)).min(100),
        // As Istio: only consecutive 5xx ejects.
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
    });
    if consecutive == 0 {
        // Istio: consecutive5xxErrors 0 disables 5xx ejection.
        outlier["enforcing_consecutive_5xx"] = json!(0);
    }
    Ok(json!({
        "@type": CLUSTER_TYPE_URL,
        "name": cluster.name,
        "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
        // Istio's default load balancer (Envoy's own default is ROUND_ROBIN).
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": format_ms(cluster.connect_timeout_ms as f64),
        "load_assignment": {
            "cluster_name": cluster.name,
            "endpoints": [{"lb_endpoints": lb_endpoints}],
        },
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": envoy_limit(knobs.get(Knob::MaxConnections)),
            "max_pending_requests": envoy_limit(knobs.get(Knob::Http1MaxPendingRequests)),
            "max_requests": envoy_limit(knobs.get(Knob::Http2MaxRequests)),
            "max_retries": envoy_limit(knobs.get(Knob::MaxRetries)),
        }]},
        "typed_extension_protocol_options": {HTTP_PROTOCOL_OPTIONS: {
            "@type": format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
            "common_http_protocol_options": common,
            "explicit_http_config": explicit,
        }},
        "outlier_detection": outlier,
    }))
}

/// Renders a route `action` (`RouteAction`) to `cluster` with `knobs`' route timeout and retry
/// policy.
pub fn route_action(cluster: &str, knobs: &Knobs, retry_on: &str) -> Value {
    let mut action = json!({
        "cluster": cluster,
        // 0s disables the route timeout, as Istio's unset timeout does.
        "timeout": format_ms(knobs.get(Knob::RouteTimeoutMs)),
    });
    let attempts = whole(knobs.get(Knob::RetryAttempts));
    if attempts > 0 {
        // As Istio renders retries: a retry avoids the hosts already tried (up to 5 picks).
        let mut policy = json!({
            "retry_on": retry_on,
            "num_retries": attempts,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": PREVIOUS_HOSTS_TYPE_URL},
            }],
            "host_selection_retry_max_attempts": ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        });
        let per_try = whole(knobs.get(Knob::PerTryTimeoutMs));
        if per_try > 0 {
            policy["per_try_timeout"] = json!(format_ms(per_try as f64));
        }
        action["retry_policy"] = policy;
    }
    action
}

/// Renders a `VirtualHost` routing everything under `prefix` to `cluster`.
pub fn virtual_host(
    name: &str,
    domains: &[String],
    prefix: &str,
    cluster: &str,
    knobs: &Knobs,
    retry_on: &str,
) -> Value {
    json!({
        "name": name,
        "domains": domains,
        "routes": [{
            "name": name,
            "match": {"prefix": prefix},
            "route": route_action(cluster, knobs, retry_on),
        }],
    })
}

/// Renders a v3 `RouteConfiguration` (with `@type`) of `virtual_hosts`.
pub fn route_configuration(name: &str, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "@type": ROUTE_CONFIGURATION_TYPE_URL,
        "name": name,
        "virtual_hosts": virtual_hosts,
        // Routes may name CDS-only clusters (docs/ARCHITECTURE.md).
        "validate_clusters": false,
    })
}

/// The file a `path_config_source` watches: a `DiscoveryResponse` with `resources` (each with
/// its `@type`) and a `version_info`.
pub fn xds_file(version: &str, resources: Vec<Value>) -> Value {
    json!({"version_info": version, "resources": resources})
}

fn without_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("@type");
    }
    v
}

fn admin_and_node(node_id: &str) -> Value {
    json!({"id": node_id, "cluster": "meshtune"})
}

fn hcm(route_specifier: (&str, Value)) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    });
    hcm[route_specifier.0] = route_specifier.1;
    hcm
}

fn listener(port: u16, hcm: Value) -> Value {
    json!({
        "name": "meshtune_listener",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    })
}

/// A self-contained bootstrap with a static listener on 127.0.0.1:`listener_port` using
/// `route_config` inline and `clusters` static: what `envoy --mode validate` checks.
pub fn static_bootstrap(listener_port: u16, route_config: Value, clusters: Vec<Value>) -> Value {
    json!({
        "node": admin_and_node("meshtune-validate"),
        "static_resources": {
            "listeners": [listener(listener_port, hcm(("route_config", without_type(route_config))))],
            "clusters": clusters.into_iter().map(without_type).collect::<Vec<_>>(),
        },
    })
}

/// A bootstrap whose clusters come from the CDS file `cds_path` (replaced by rename, see
/// [`crate::envoy_file`]), with admin on 127.0.0.1:`admin_port` (0 = any; use
/// `--admin-address-path` to learn it). With `rds = Some((path, name))` the listener on
/// 127.0.0.1:`listener_port` takes route config `name` from the RDS file `path`; otherwise it
/// has no listener.
pub fn file_xds_bootstrap(
    cds_path: &Path,
    rds: Option<(&Path, &str)>,
    listener_port: u16,
    admin_port: u16,
) -> Value {
    let mut b = json!({
        "node": admin_and_node("meshtune-file-xds"),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {"cds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": cds_path.to_string_lossy()},
        }},
    });
    if let Some((rds_path, name)) = rds {
        let rds = json!({
            "route_config_name": name,
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": rds_path.to_string_lossy()},
            },
        });
        b["static_resources"] = json!({"listeners": [listener(listener_port, hcm(("rds", rds)))]});
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        let mut k = Knobs::istio_defaults();
        k.set(Knob::MaxConnections, 100.0);
        k.set(Knob::Http1MaxPendingRequests, 50.0);
        k.set(Knob::Http2MaxRequests, 200.0);
        k.set(Knob::MaxRequestsPerConnection, 10.0);
        k.set(Knob::MaxRetries, 3.0);
        k.set(Knob::RouteTimeoutMs, 1_500.0);
        k.set(Knob::RetryAttempts, 2.0);
        k.set(Knob::PerTryTimeoutMs, 500.0);
        k.set(Knob::Consecutive5xxErrors, 7.0);
        k.set(Knob::BaseEjectionTimeMs, 45_000.0);
        k.set(Knob::MaxEjectionPercent, 20.0);
        k
    }

    #[test]
    fn cluster_carries_every_pool_and_outlier_knob() {
        let c = cluster(
            &EnvoyCluster::new("reviews", vec!["127.0.0.1:9080".into()]),
            &knobs(),
        )
        .unwrap();
        let t = &c["circuit_breakers"]["thresholds"][0];
        assert_eq!(t["max_connections"], 100);
        assert_eq!(t["max_pending_requests"], 50);
        assert_eq!(t["max_requests"], 200);
        assert_eq!(t["max_retries"], 3);
        let opts = &c["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS];
        assert_eq!(
            opts["common_http_protocol_options"]["max_requests_per_connection"],
            10
        );
        assert!(opts["explicit_http_config"]["http_protocol_options"].is_object());
        let od = &c["outlier_detection"];
        assert_eq!(od["consecutive_5xx"], 7);
        assert_eq!(od["base_ejection_time"], "45s");
        assert_eq!(od["max_ejection_percent"], 20);
        assert_eq!(c["type"], "STATIC");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            9080
        );
    }

    #[test]
    fn istio_defaults_render_as_unlimited_and_disabled() {
        let d = Knobs::istio_defaults();
        let mut spec = EnvoyCluster::new("svc", vec!["svc.example:80".into()]);
        spec.http2 = true;
        let c = cluster(&spec, &d).unwrap();
        let t = &c["circuit_breakers"]["thresholds"][0];
        for f in [
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
        ] {
            assert_eq!(t[f], 4_294_967_295u64, "{f}");
        }
        let opts = &c["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS];
        assert!(opts["common_http_protocol_options"]
            .get("max_requests_per_connection")
            .is_none());
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
        assert_eq!(c["type"], "STRICT_DNS");
        let r = route_action("svc", &d, DEFAULT_RETRY_ON);
        assert_eq!(r["timeout"], "0s");
        assert_eq!(r["retry_policy"]["num_retries"], 2);
        assert!(r["retry_policy"].get("per_try_timeout").is_none());
    }

    #[test]
    fn route_action_has_timeout_and_retries() {
        let r = route_action("reviews", &knobs(), DEFAULT_RETRY_ON);
        assert_eq!(r["cluster"], "reviews");
        assert_eq!(r["timeout"], "1.500s");
        assert_eq!(r["retry_policy"]["num_retries"], 2);
        assert_eq!(r["retry_policy"]["per_try_timeout"], "0.500s");
        assert_eq!(r["retry_policy"]["retry_on"], "5xx,reset,connect-failure");
        assert_eq!(
            r["retry_policy"]["retry_host_predicate"][0]["name"],
            "envoy.retry_host_predicates.previous_hosts"
        );
        assert_eq!(r["retry_policy"]["host_selection_retry_max_attempts"], 5);
        let mut none = knobs();
        none.set(Knob::RetryAttempts, 0.0);
        assert!(route_action("reviews", &none, DEFAULT_RETRY_ON)
            .get("retry_policy")
            .is_none());
    }

    #[test]
    fn bad_endpoints_are_named() {
        for ep in ["nohost", "h:notaport", ":80", "h:0", "h:70000"] {
            let err = cluster(&EnvoyCluster::new("c", vec![ep.into()]), &knobs()).unwrap_err();
            assert!(err.to_string().contains(ep), "{err}");
        }
        assert!(matches!(
            cluster(&EnvoyCluster::new("c", vec![]), &knobs()),
            Err(RenderError::NoEndpoints { .. })
        ));
        let v6 = cluster(&EnvoyCluster::new("c", vec!["[::1]:80".into()]), &knobs()).unwrap();
        assert_eq!(v6["type"], "STATIC");
    }

    #[test]
    fn limits_clamp_to_u32() {
        assert_eq!(envoy_limit(f64::NAN), ENVOY_UNLIMITED);
        assert_eq!(envoy_limit(1e12), ENVOY_UNLIMITED);
        assert_eq!(envoy_limit(-3.0), 0);
        assert_eq!(envoy_limit(99.6), 100);
    }
}
