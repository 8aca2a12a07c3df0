//! Renders `Knobs` to Istio `networking.istio.io/v1` DestinationRule and VirtualService
//! objects (as JSON values ready for server-side apply).
//!
//! Istio's "unset" defaults stay unset: a limit at or above 2^31-1 (the CRD fields are int32;
//! Istio's own default is 2^32-1 = unlimited) is omitted, `maxRequestsPerConnection` 0 is
//! omitted, a route timeout of 0 is omitted (Istio: no timeout; the CRD refuses `0s`) and so is
//! a per-try timeout of 0. `retries.attempts` 0 is written as `attempts: 0` (disables retries;
//! omitting it would mean Istio's default of 2).

use meshtune_core::{Knob, Knobs};
use serde_json::{json, Map, Value};

use crate::duration::format_ms;
use crate::envoy::DEFAULT_RETRY_ON;

/// API version meshtune writes.
pub const API_VERSION: &str = "networking.istio.io/v1";
/// Label key/value on every object meshtune creates and owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshtune";
/// Annotation naming the destination host an object was rendered for.
pub const HOST_ANNOTATION: &str = "meshtune.io/host";

/// Which object to render and how.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioTarget {
    /// Destination host (`reviews.default.svc.cluster.local`).
    pub host: String,
    pub namespace: String,
    /// Object name (both DestinationRule and VirtualService); see [`object_name`].
    pub name: String,
    /// `retryOn` of the VirtualService retries ([`DEFAULT_RETRY_ON`]).
    pub retry_on: String,
    /// Add the `app.kubernetes.io/managed-by: meshtune` label (objects meshtune owns). False
    /// for objects meshtune only co-manages (allow-listed hosts it did not create).
    pub owned: bool,
}

impl IstioTarget {
    /// An owned target named by [`object_name`], with the default `retryOn`.
    pub fn new(host: &str, namespace: &str) -> Self {
        Self {
            host: host.to_string(),
            namespace: namespace.to_string(),
            name: object_name(host, namespace),
            retry_on: DEFAULT_RETRY_ON.to_string(),
            owned: true,
        }
    }
}

/// Object name for a host: the service name for an in-namespace Kubernetes host
/// (`reviews`, `reviews.ns`, `reviews.ns.svc`, `reviews.ns.svc.cluster.local` → `reviews`),
/// otherwise the host made DNS-1123 safe (`api.example.com` → `api-example-com`, `*` → `wildcard`),
/// at most 63 characters.
pub fn object_name(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut parts = host.splitn(2, '.');
    let first = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let in_ns = rest.is_empty()
        || rest == namespace
        || rest
            .strip_prefix(namespace)
            .is_some_and(|r| r == ".svc" || r.starts_with(".svc."));
    let raw = if in_ns && first != "*" {
        first.to_string()
    } else {
        host.replace('*', "wildcard")
    };
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "meshtune".to_string()
    } else {
        name
    }
}

/// A limit as an Istio int32 field: `None` (leave unset = unlimited) at or above 2^31-1 or for
/// NaN, else the rounded value (≥ 0).
pub fn istio_limit(v: f64) -> Option<i64> {
    if !v.is_finite() || v >= i32::MAX as f64 {
        None
    } else {
        Some(v.round().max(0.0) as i64)
    }
}

fn whole(v: f64) -> i64 {
    if v.is_finite() {
        v.round().clamp(0.0, i32::MAX as f64) as i64
    } else {
        0
    }
}

fn metadata(t: &IstioTarget) -> Value {
    let mut m = json!({
        "name": t.name,
        "namespace": t.namespace,
        "annotations": {HOST_ANNOTATION: t.host},
    });
    if t.owned {
        m["labels"] = json!({MANAGED_BY_LABEL: MANAGED_BY_VALUE});
    }
    m
}

fn insert_some(map: &mut Map<String, Value>, key: &str, v: Option<i64>) {
    if let Some(v) = v {
        map.insert(key.to_string(), json!(v));
    }
}

/// Renders the DestinationRule: connection pool and outlier detection.
pub fn destination_rule(t: &IstioTarget, k: &Knobs) -> Value {
    let mut tcp = Map::new();
    insert_some(
        &mut tcp,
        "maxConnections",
        istio_limit(k.get(Knob::MaxConnections)),
    );
    let mut http = Map::new();
    insert_some(
        &mut http,
        "http1MaxPendingRequests",
        istio_limit(k.get(Knob::Http1MaxPendingRequests)),
    );
    insert_some(
        &mut http,
        "http2MaxRequests",
        istio_limit(k.get(Knob::Http2MaxRequests)),
    );
    insert_some(
        &mut http,
        "maxRequestsPerConnection",
        istio_limit(k.get(Knob::MaxRequestsPerConnection)).filter(|v| *v > 0),
    );
    insert_some(
        &mut http,
        "maxRetries",
        istio_limit(k.get(Knob::MaxRetries)),
    );
    let mut pool = Map::new();
    if !tcp.is_empty() {
        pool.insert("tcp".into(), Value::Object(tcp));
    }
    if !http.is_empty() {
        pool.insert("http".into(), Value::Object(http));
    }
    let mut policy = json!({
        "outlierDetection": {
            "consecutive5xxErrors": whole(k.get(Knob::Consecutive5xxErrors)),
            "baseEjectionTime": format_ms(k.get(Knob::BaseEjectionTimeMs).max(1.0)),
            "maxEjectionPercent": whole(k.get(Knob::MaxEjectionPercent)).min(100),
        },
    });
    if !pool.is_empty() {
        policy["connectionPool"] = Value::Object(pool);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": metadata(t),
        "spec": {"host": t.host, "trafficPolicy": policy},
    })
}

/// Renders the VirtualService: one HTTP route to the host with timeout and retries.
pub fn virtual_service(t: &IstioTarget, k: &Knobs) -> Value {
    let mut route = json!({
        "name": "meshtune",
        "route": [{"destination": {"host": t.host}}],
    });
    let timeout = whole(k.get(Knob::RouteTimeoutMs));
    if timeout > 0 {
        route["timeout"] = json!(format_ms(timeout as f64));
    }
    let attempts = whole(k.get(Knob::RetryAttempts));
    let mut retries = json!({"attempts": attempts});
    if attempts > 0 {
        retries["retryOn"] = json!(t.retry_on);
        let per_try = whole(k.get(Knob::PerTryTimeoutMs));
        if per_try > 0 {
            retries["perTryTimeout"] = json!(format_ms(per_try as f64));
        }
    }
    route["retries"] = retries;
    json!({
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": metadata(t),
        "spec": {"hosts": [t.host], "http": [route]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned() -> Knobs {
        let mut k = Knobs::istio_defaults();
        k.set(Knob::MaxConnections, 100.0);
        k.set(Knob::Http1MaxPendingRequests, 50.0);
        k.set(Knob::Http2MaxRequests, 200.0);
        k.set(Knob::MaxRequestsPerConnection, 10.0);
        k.set(Knob::MaxRetries, 3.0);
        k.set(Knob::RouteTimeoutMs, 2_000.0);
        k.set(Knob::RetryAttempts, 3.0);
        k.set(Knob::PerTryTimeoutMs, 250.0);
        k.set(Knob::Consecutive5xxErrors, 4.0);
        k.set(Knob::BaseEjectionTimeMs, 30_000.0);
        k.set(Knob::MaxEjectionPercent, 25.0);
        k
    }

    #[test]
    fn destination_rule_carries_pool_and_outlier_knobs() {
        let t = IstioTarget::new("reviews.bookinfo.svc.cluster.local", "bookinfo");
        let dr = destination_rule(&t, &tuned());
        assert_eq!(dr["apiVersion"], "networking.istio.io/v1");
        assert_eq!(dr["metadata"]["name"], "reviews");
        assert_eq!(dr["metadata"]["namespace"], "bookinfo");
        assert_eq!(
            dr["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshtune"
        );
        let p = &dr["spec"]["trafficPolicy"];
        assert_eq!(dr["spec"]["host"], "reviews.bookinfo.svc.cluster.local");
        assert_eq!(p["connectionPool"]["tcp"]["maxConnections"], 100);
        let h = &p["connectionPool"]["http"];
        assert_eq!(h["http1MaxPendingRequests"], 50);
        assert_eq!(h["http2MaxRequests"], 200);
        assert_eq!(h["maxRequestsPerConnection"], 10);
        assert_eq!(h["maxRetries"], 3);
        let o = &p["outlierDetection"];
        assert_eq!(o["consecutive5xxErrors"], 4);
        assert_eq!(o["baseEjectionTime"], "30s");
        assert_eq!(o["maxEjectionPercent"], 25);
    }

    #[test]
    fn virtual_service_carries_timeout_and_retries() {
        let t = IstioTarget::new("reviews", "bookinfo");
        let vs = virtual_service(&t, &tuned());
        let r = &vs["spec"]["http"][0];
        assert_eq!(vs["spec"]["hosts"][0], "reviews");
        assert_eq!(r["route"][0]["destination"]["host"], "reviews");
        assert_eq!(r["timeout"], "2s");
        assert_eq!(r["retries"]["attempts"], 3);
        assert_eq!(r["retries"]["perTryTimeout"], "0.250s");
        assert_eq!(r["retries"]["retryOn"], "5xx,reset,connect-failure");
    }

    #[test]
    fn istio_defaults_stay_unset() {
        let t = IstioTarget::new("reviews", "bookinfo");
        let d = Knobs::istio_defaults();
        let dr = destination_rule(&t, &d);
        assert!(dr["spec"]["trafficPolicy"].get("connectionPool").is_none());
        assert_eq!(
            dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
            5
        );
        let vs = virtual_service(&t, &d);
        let r = &vs["spec"]["http"][0];
        assert!(r.get("timeout").is_none());
        assert_eq!(r["retries"]["attempts"], 2);
        assert!(r["retries"].get("perTryTimeout").is_none());
        let mut none = d;
        none.set(Knob::RetryAttempts, 0.0);
        let r = virtual_service(&t, &none)["spec"]["http"][0]["retries"].clone();
        assert_eq!(r, json!({"attempts": 0}));
    }

    #[test]
    fn co_managed_objects_carry_no_ownership_label() {
        let mut t = IstioTarget::new("reviews", "bookinfo");
        t.owned = false;
        assert!(destination_rule(&t, &tuned())["metadata"]
            .get("labels")
            .is_none());
    }

    #[test]
    fn object_names() {
        assert_eq!(
            object_name("reviews.bookinfo.svc.cluster.local", "bookinfo"),
            "reviews"
        );
        assert_eq!(object_name("reviews.bookinfo.svc", "bookinfo"), "reviews");
        assert_eq!(object_name("reviews.bookinfo", "bookinfo"), "reviews");
        assert_eq!(object_name("Reviews", "bookinfo"), "reviews");
        assert_eq!(
            object_name("reviews.other.svc.cluster.local", "bookinfo"),
            "reviews-other-svc-cluster-local"
        );
        assert_eq!(object_name("*.example.com", "x"), "wildcard-example-com");
        assert!(object_name(&"a.".repeat(80), "x").len() <= 63);
        assert_eq!(istio_limit(4_294_967_295.0), None);
        assert_eq!(istio_limit(2_147_483_646.4), Some(2_147_483_646));
    }
}
