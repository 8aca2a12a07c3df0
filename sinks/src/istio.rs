//! Renders `Knobs` to Istio `networking.istio.io/v1` DestinationRule and VirtualService
//! objects (as JSON values ready for server-side apply).
//!
//! The objects are client-side: written into the namespace of the reporting sidecars (the
//! key's namespace, [`meshtune_core::DestKey`]) with `exportTo: ["."]` ([`EXPORT_TO`]), so they
//! apply only to sidecars of that namespace. Istio looks a DestinationRule up in the client's
//! namespace first, then the service's, then the root namespace (see docs/ARCHITECTURE.md,
//! *Reach of a reporter*), so a client-side object takes precedence for that namespace's
//! sidecars and nobody else's. Hosts are the fully qualified names from the outbound cluster
//! (a short name would resolve against the object's namespace).
//!
//! Istio's "unset" defaults stay unset: a limit at or above 2^31-1 (the CRD fields are int32;
//! Istio's own default is 2^32-1 = unlimited) is omitted, `maxRequestsPerConnection` 0 is
//! omitted, a route timeout of 0 is omitted (Istio: no timeout; the CRD refuses `0s`) and so is
//! a per-try timeout of 0. `retries.attempts` 0 is written as `attempts: 0` (disables retries;
//! omitting it would mean Istio's default of 2).
//!
//! Every rendered object records what meshtune set ([`APPLIED_ANNOTATION`]: the knobs it
//! renders, by name) and, for co-managed objects, what was there before
//! ([`PREVIOUS_ANNOTATION`]), so that everything meshtune writes can be undone
//! (`crate::istio_undo`). [`knobs_from_objects`] is the inverse of the rendering: it reads
//! the knobs in force back from the objects (restart recovery).

use meshtune_core::{Knob, Knobs};
use serde::Serialize;
use serde_json::Value;

use crate::duration::{format_ms, parse_go_ms};
use crate::envoy::DEFAULT_RETRY_ON;

/// API version meshtune writes.
pub const API_VERSION: &str = "networking.istio.io/v1";
/// Label key/value on every object meshtune creates and owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshtune";
/// `exportTo` of every rendered object: visible only in its own namespace.
pub const EXPORT_TO: [&str; 1] = ["."];
/// Annotation naming the destination host an object was rendered for.
pub const HOST_ANNOTATION: &str = "meshtune.io/host";
/// Annotation recording what meshtune set on an object: a JSON object of the knobs it rendered
/// into it, by knob name (`{"timeout":2000.0,...}`).
pub const APPLIED_ANNOTATION: &str = "meshtune.io/applied";
/// Annotation on a co-managed object (one meshtune did not create) recording the values of
/// the fields meshtune sets as they were before meshtune first wrote it: a JSON object
/// `{"<field path>": value or null}` (null = the field was absent); see [`co_managed_fields`].
pub const PREVIOUS_ANNOTATION: &str = "meshtune.io/previous";
/// Annotation recording when meshtune last applied the object: an RFC 3339 UTC time
/// (`2026-11-30T09:20:00.5Z`, [`applied_at_value`]). Restart recovery reads it back as the
/// destination's last push ([`parse_applied_at`]), so the guardrails' dwell holds across a
/// restart and a controller restarting in a loop cannot push at every start.
pub const APPLIED_AT_ANNOTATION: &str = "meshtune.io/applied-at";

/// The [`APPLIED_AT_ANNOTATION`] value for `t`: RFC 3339 in UTC, millisecond precision.
pub fn applied_at_value(t: std::time::SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.3}"),
        // Outside jiff's range (years -9999..=9999): not a time this code runs at.
        Err(_) => k8s_openapi::jiff::Timestamp::UNIX_EPOCH.to_string(),
    }
}

/// Reads an [`APPLIED_AT_ANNOTATION`] value back; an error names what is wrong with it.
pub fn parse_applied_at(value: &str) -> Result<std::time::SystemTime, String> {
    value
        .trim()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(std::time::SystemTime::from)
        .map_err(|e| format!("{APPLIED_AT_ANNOTATION} {value:?} is not an RFC 3339 time: {e}"))
}

/// The knobs rendered into a DestinationRule (connection pool and outlier detection).
pub const DESTINATION_RULE_KNOBS: [Knob; 8] = [
    Knob::MaxConnections,
    Knob::Http1MaxPendingRequests,
    Knob::Http2MaxRequests,
    Knob::MaxRequestsPerConnection,
    Knob::MaxRetries,
    Knob::Consecutive5xxErrors,
    Knob::BaseEjectionTimeMs,
    Knob::MaxEjectionPercent,
];
/// The knobs rendered into a VirtualService (route timeout and retries).
pub const VIRTUAL_SERVICE_KNOBS: [Knob; 3] = [
    Knob::RouteTimeoutMs,
    Knob::RetryAttempts,
    Knob::PerTryTimeoutMs,
];

/// The spec fields (JSON pointers) meshtune sets on an object of `kind`: what a co-managed
/// object's [`PREVIOUS_ANNOTATION`] records and its restore puts back.
pub fn co_managed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "DestinationRule" => &[
            "/spec/trafficPolicy/connectionPool",
            "/spec/trafficPolicy/outlierDetection",
        ],
        _ => &["/spec/http"],
    }
}

/// The [`PREVIOUS_ANNOTATION`] value for `existing` (an object of `kind` meshtune is about to
/// co-manage): each of [`co_managed_fields`] with its current value or null.
pub fn previous_fields(kind: &str, existing: &Value) -> String {
    let map: serde_json::Map<String, Value> = co_managed_fields(kind)
        .iter()
        .map(|p| {
            (
                p.to_string(),
                existing.pointer(p).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    Value::Object(map).to_string()
}

/// The [`APPLIED_ANNOTATION`] value: `knobs` of `k` by name, as written (every rendered knob
/// is a whole number: counts, percentages, milliseconds).
fn applied_json(k: &Knobs, knobs: &[Knob]) -> String {
    let map: serde_json::Map<String, Value> = knobs
        .iter()
        .map(|&n| (n.name().to_string(), serde_json::json!(k.get(n).round())))
        .collect();
    Value::Object(map).to_string()
}

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
    /// [`PREVIOUS_ANNOTATION`] of a co-managed object ([`previous_fields`]); `None` for owned
    /// objects.
    pub previous: Option<String>,
    /// [`APPLIED_AT_ANNOTATION`] ([`applied_at_value`]): set by the Istio sink when it applies
    /// the object; `None` leaves the annotation out (rendering for display or validation).
    pub applied_at: Option<String>,
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
            previous: None,
            applied_at: None,
        }
    }
}

/// Object name for a host: the service name for an in-namespace Kubernetes host
/// (`reviews`, `reviews.ns`, `reviews.ns.svc`, `reviews.ns.svc.cluster.local` → `reviews`),
/// otherwise the host made DNS-1123 safe (`api.example.com` → `api-example-com`, `*` → `wildcard`),
/// at most 63 characters.
pub fn object_name(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.');
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let in_ns = rest.is_empty()
        || eq(rest, namespace)
        || (rest.len() > namespace.len()
            && rest.is_char_boundary(namespace.len())
            && eq(&rest[..namespace.len()], namespace)
            && {
                let r = &rest[namespace.len()..];
                eq(r, ".svc") || (r.len() > 5 && r.is_char_boundary(5) && eq(&r[..5], ".svc."))
            });
    let raw = if in_ns && first != "*" { first } else { host };
    // One pass, one allocation: lowercase, `*` → `wildcard`, anything else not [a-z0-9] → `-`.
    let mut name = String::with_capacity(raw.len().min(63) + 8);
    for c in raw.chars() {
        if c == '*' && !(in_ns && first != "*") {
            name.push_str("wildcard");
        } else if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else {
            name.push('-');
        }
    }
    name.truncate(63);
    let trimmed = name.trim_matches('-');
    if trimmed.is_empty() {
        "meshtune".to_string()
    } else if trimmed.len() == name.len() {
        name
    } else {
        trimmed.to_string()
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

/// `metadata` of a rendered object.
#[derive(Debug, Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
    annotations: HostAnnotation<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<ManagedByLabel>,
}

#[derive(Debug, Serialize)]
struct HostAnnotation<'a> {
    /// [`HOST_ANNOTATION`] (serde needs the literal; a test ties them together).
    #[serde(rename = "meshtune.io/host")]
    host: &'a str,
    /// [`APPLIED_ANNOTATION`].
    #[serde(rename = "meshtune.io/applied")]
    applied: String,
    /// [`PREVIOUS_ANNOTATION`] (co-managed objects only).
    #[serde(
        rename = "meshtune.io/previous",
        skip_serializing_if = "Option::is_none"
    )]
    previous: Option<&'a str>,
    /// [`APPLIED_AT_ANNOTATION`] (objects the sink applies).
    #[serde(
        rename = "meshtune.io/applied-at",
        skip_serializing_if = "Option::is_none"
    )]
    applied_at: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ManagedByLabel {
    /// [`MANAGED_BY_LABEL`]: [`MANAGED_BY_VALUE`].
    #[serde(rename = "app.kubernetes.io/managed-by")]
    managed_by: &'static str,
}

impl<'a> Metadata<'a> {
    fn of(t: &'a IstioTarget, applied: String) -> Self {
        Self {
            name: &t.name,
            namespace: &t.namespace,
            annotations: HostAnnotation {
                host: &t.host,
                applied,
                previous: t.previous.as_deref(),
                applied_at: t.applied_at.as_deref(),
            },
            labels: t.owned.then_some(ManagedByLabel {
                managed_by: MANAGED_BY_VALUE,
            }),
        }
    }
}

/// A rendered Istio object, serialised as the object server-side apply sends. Borrowing its
/// target, it is cheap to build.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioObject<'a, Spec> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: Spec,
}

/// A rendered DestinationRule (connection pool and outlier detection); see
/// [`destination_rule`] for the JSON value.
pub type DestinationRuleObject<'a> = IstioObject<'a, DestinationRuleSpec<'a>>;

/// `spec` of a DestinationRule.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec<'a> {
    host: &'a str,
    export_to: [&'static str; 1],
    traffic_policy: TrafficPolicy,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_pool: Option<ConnectionPool>,
    outlier_detection: OutlierDetection,
}

#[derive(Debug, Serialize)]
struct ConnectionPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpPool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpPool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TcpPool {
    max_connections: i64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    http1_max_pending_requests: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http2_max_requests: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_requests_per_connection: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: i64,
    base_ejection_time: String,
    max_ejection_percent: i64,
}

impl<'a> IstioObject<'a, DestinationRuleSpec<'a>> {
    /// Renders `k` for target `t`.
    pub fn new(t: &'a IstioTarget, k: &Knobs) -> Self {
        let http = HttpPool {
            http1_max_pending_requests: istio_limit(k.get(Knob::Http1MaxPendingRequests)),
            http2_max_requests: istio_limit(k.get(Knob::Http2MaxRequests)),
            max_requests_per_connection: istio_limit(k.get(Knob::MaxRequestsPerConnection))
                .filter(|v| *v > 0),
            max_retries: istio_limit(k.get(Knob::MaxRetries)),
        };
        let http_set = http.http1_max_pending_requests.is_some()
            || http.http2_max_requests.is_some()
            || http.max_requests_per_connection.is_some()
            || http.max_retries.is_some();
        let pool = ConnectionPool {
            tcp: istio_limit(k.get(Knob::MaxConnections))
                .map(|max_connections| TcpPool { max_connections }),
            http: http_set.then_some(http),
        };
        let pool_set = pool.tcp.is_some() || pool.http.is_some();
        Self {
            api_version: API_VERSION,
            kind: "DestinationRule",
            metadata: Metadata::of(t, applied_json(k, &DESTINATION_RULE_KNOBS)),
            spec: DestinationRuleSpec {
                host: &t.host,
                export_to: EXPORT_TO,
                traffic_policy: TrafficPolicy {
                    connection_pool: pool_set.then_some(pool),
                    outlier_detection: OutlierDetection {
                        consecutive_5xx_errors: whole(k.get(Knob::Consecutive5xxErrors)),
                        base_ejection_time: format_ms(k.get(Knob::BaseEjectionTimeMs).max(1.0)),
                        max_ejection_percent: whole(k.get(Knob::MaxEjectionPercent)).min(100),
                    },
                },
            },
        }
    }
}

/// A rendered VirtualService (one HTTP route to the host with timeout and retries); see
/// [`virtual_service`] for the JSON value.
pub type VirtualServiceObject<'a> = IstioObject<'a, VirtualServiceSpec<'a>>;

/// `spec` of a VirtualService.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec<'a> {
    hosts: [&'a str; 1],
    export_to: [&'static str; 1],
    http: [HttpRoute<'a>; 1],
}

#[derive(Debug, Serialize)]
struct HttpRoute<'a> {
    name: &'static str,
    route: [RouteDestination<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    retries: Retries<'a>,
}

#[derive(Debug, Serialize)]
struct RouteDestination<'a> {
    destination: DestinationHost<'a>,
}

#[derive(Debug, Serialize)]
struct DestinationHost<'a> {
    host: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Retries<'a> {
    attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_on: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_try_timeout: Option<String>,
}

impl<'a> IstioObject<'a, VirtualServiceSpec<'a>> {
    /// Renders `k` for target `t`.
    pub fn new(t: &'a IstioTarget, k: &Knobs) -> Self {
        let timeout = whole(k.get(Knob::RouteTimeoutMs));
        let attempts = whole(k.get(Knob::RetryAttempts));
        let per_try = whole(k.get(Knob::PerTryTimeoutMs));
        Self {
            api_version: API_VERSION,
            kind: "VirtualService",
            metadata: Metadata::of(t, applied_json(k, &VIRTUAL_SERVICE_KNOBS)),
            spec: VirtualServiceSpec {
                hosts: [&t.host],
                export_to: EXPORT_TO,
                http: [HttpRoute {
                    name: "meshtune",
                    route: [RouteDestination {
                        destination: DestinationHost { host: &t.host },
                    }],
                    timeout: (timeout > 0).then(|| format_ms(timeout as f64)),
                    retries: Retries {
                        attempts,
                        retry_on: (attempts > 0).then_some(t.retry_on.as_str()),
                        per_try_timeout: (attempts > 0 && per_try > 0)
                            .then(|| format_ms(per_try as f64)),
                    },
                }],
            },
        }
    }
}

/// A rendered object as a JSON value (for schema validation and tests). The typed objects
/// have only string keys and plain values, so conversion cannot fail; `Null` is unreachable.
fn to_value(obj: &impl Serialize) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Renders the DestinationRule: connection pool and outlier detection.
pub fn destination_rule(t: &IstioTarget, k: &Knobs) -> Value {
    to_value(&DestinationRuleObject::new(t, k))
}

/// Renders the VirtualService: one HTTP route to the host with timeout and retries.
pub fn virtual_service(t: &IstioTarget, k: &Knobs) -> Value {
    to_value(&VirtualServiceObject::new(t, k))
}

/// The knobs in force described by a DestinationRule and a VirtualService (either may be
/// absent): the inverse of [`destination_rule`] and [`virtual_service`]. A field the objects
/// leave unset reads as Istio's default for its knob (an unset limit is unlimited, an unset
/// route timeout is none, absent `retries` is Istio's 2 attempts); a duration Go would refuse
/// also reads as the default. For knobs the rendering can express (whole limits below 2^31-1,
/// whole milliseconds, a per-try timeout only with retries) `knobs_from_objects(render(k)) ==
/// k`.
pub fn knobs_from_objects(dr: Option<&Value>, vs: Option<&Value>) -> Knobs {
    let mut k = Knobs::istio_defaults();
    let num = |v: Option<&Value>| v.and_then(Value::as_f64);
    let ms = |v: Option<&Value>| v.and_then(Value::as_str).and_then(parse_go_ms);
    if let Some(p) = dr.and_then(|d| d.pointer("/spec/trafficPolicy")) {
        let fields = [
            (Knob::MaxConnections, "/connectionPool/tcp/maxConnections"),
            (
                Knob::Http1MaxPendingRequests,
                "/connectionPool/http/http1MaxPendingRequests",
            ),
            (
                Knob::Http2MaxRequests,
                "/connectionPool/http/http2MaxRequests",
            ),
            (
                Knob::MaxRequestsPerConnection,
                "/connectionPool/http/maxRequestsPerConnection",
            ),
            (Knob::MaxRetries, "/connectionPool/http/maxRetries"),
            (
                Knob::Consecutive5xxErrors,
                "/outlierDetection/consecutive5xxErrors",
            ),
            (
                Knob::MaxEjectionPercent,
                "/outlierDetection/maxEjectionPercent",
            ),
        ];
        for (knob, path) in fields {
            if let Some(v) = num(p.pointer(path)) {
                k.set(knob, v);
            }
        }
        if let Some(v) = ms(p.pointer("/outlierDetection/baseEjectionTime")) {
            k.set(Knob::BaseEjectionTimeMs, v);
        }
    }
    let routes = vs
        .and_then(|v| v.pointer("/spec/http"))
        .and_then(Value::as_array);
    // meshtune's route is named `meshtune`; a co-managed object may name it otherwise.
    let route = routes.and_then(|r| {
        r.iter()
            .find(|h| h["name"] == "meshtune")
            .or_else(|| r.first())
    });
    if let Some(r) = route {
        if let Some(v) = ms(r.get("timeout")) {
            k.set(Knob::RouteTimeoutMs, v);
        }
        if let Some(retries) = r.get("retries") {
            k.set(
                Knob::RetryAttempts,
                num(retries.get("attempts")).unwrap_or(0.0),
            );
            if let Some(v) = ms(retries.get("perTryTimeout")) {
                k.set(Knob::PerTryTimeoutMs, v);
            }
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(dr["spec"]["exportTo"], json!(["."]));
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
        assert_eq!(vs["spec"]["exportTo"], json!(["."]));
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
    fn serde_key_literals_match_the_constants() {
        let t = IstioTarget::new("reviews", "bookinfo");
        let dr = destination_rule(&t, &tuned());
        assert_eq!(dr["metadata"]["annotations"][HOST_ANNOTATION], "reviews");
        assert_eq!(dr["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        // The typed object serialises to the same JSON as its value.
        let bytes = serde_json::to_vec(&DestinationRuleObject::new(&t, &tuned())).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), dr);
    }

    fn round_trip(t: &IstioTarget, k: &Knobs) -> Knobs {
        knobs_from_objects(Some(&destination_rule(t, k)), Some(&virtual_service(t, k)))
    }

    #[test]
    fn objects_parse_back_into_the_knobs_they_render() {
        let t = IstioTarget::new("reviews", "bookinfo");
        assert_eq!(round_trip(&t, &tuned()), tuned());
        assert_eq!(
            round_trip(&t, &Knobs::istio_defaults()),
            Knobs::istio_defaults()
        );
        assert_eq!(knobs_from_objects(None, None), Knobs::istio_defaults());
        // Policy outputs over the whole normalised range: whole-ms durations are exact, and
        // rendering the parsed knobs gives the same objects (the mapping is idempotent).
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..500 {
            let mut u = [0f32; meshtune_core::KNOB_COUNT];
            for x in &mut u {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = (seed % 1001) as f32 / 1000.0;
            }
            let k = Knobs::from_normalised(&u);
            let back = round_trip(&t, &k);
            assert_eq!(
                destination_rule(&t, &back)["spec"],
                destination_rule(&t, &k)["spec"]
            );
            assert_eq!(
                virtual_service(&t, &back)["spec"],
                virtual_service(&t, &k)["spec"]
            );
            for knob in DESTINATION_RULE_KNOBS {
                let (a, b) = (k.get(knob), back.get(knob));
                let tolerance = if knob == Knob::BaseEjectionTimeMs {
                    0.5
                } else {
                    0.0
                };
                assert!(
                    (a - b).abs() <= tolerance || istio_limit(a).is_none(),
                    "{knob:?}: {a} -> {b}"
                );
            }
        }
    }

    #[test]
    fn unset_fields_read_as_istio_defaults_and_foreign_routes_are_read() {
        let dr = json!({"spec": {"host": "r", "trafficPolicy": {"connectionPool": {
            "http": {"http2MaxRequests": 64}}}}});
        let vs = json!({"spec": {"hosts": ["r"], "http": [
            {"name": "canary", "timeout": "1.5s", "retries": {"attempts": 4, "perTryTimeout": "300ms"}}]}});
        let k = knobs_from_objects(Some(&dr), Some(&vs));
        let mut want = Knobs::istio_defaults();
        want.set(Knob::Http2MaxRequests, 64.0);
        want.set(Knob::RouteTimeoutMs, 1_500.0);
        want.set(Knob::RetryAttempts, 4.0);
        want.set(Knob::PerTryTimeoutMs, 300.0);
        assert_eq!(k, want);
        let bad = json!({"spec": {"http": [{"timeout": "soon", "retries": {}}]}});
        let k = knobs_from_objects(None, Some(&bad));
        assert_eq!(k.get(Knob::RouteTimeoutMs), 0.0);
        assert_eq!(
            k.get(Knob::RetryAttempts),
            0.0,
            "retries without attempts disable them"
        );
    }

    #[test]
    fn objects_record_what_meshtune_set_and_what_was_there_before() {
        let mut t = IstioTarget::new("reviews", "bookinfo");
        let dr = destination_rule(&t, &tuned());
        let applied: Value = serde_json::from_str(
            dr["metadata"]["annotations"][APPLIED_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(applied["tcp.maxConnections"], 100.0);
        assert_eq!(
            applied.as_object().unwrap().len(),
            DESTINATION_RULE_KNOBS.len()
        );
        assert!(dr["metadata"]["annotations"]
            .get(PREVIOUS_ANNOTATION)
            .is_none());
        let vs = virtual_service(&t, &tuned());
        let applied: Value = serde_json::from_str(
            vs["metadata"]["annotations"][APPLIED_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(applied["timeout"], 2_000.0);
        let existing = json!({"spec": {"host": "reviews",
            "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}}}});
        let prev = previous_fields("DestinationRule", &existing);
        let parsed: Value = serde_json::from_str(&prev).unwrap();
        assert_eq!(parsed["/spec/trafficPolicy/connectionPool"], Value::Null);
        assert_eq!(
            parsed["/spec/trafficPolicy/outlierDetection"]["consecutive5xxErrors"],
            7
        );
        t.owned = false;
        t.previous = Some(prev.clone());
        let dr = destination_rule(&t, &tuned());
        assert_eq!(
            dr["metadata"]["annotations"][PREVIOUS_ANNOTATION],
            prev.as_str()
        );
    }

    #[test]
    fn the_applied_time_is_recorded_and_read_back() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_030_400_250);
        let value = applied_at_value(at);
        assert_eq!(value, "2026-11-30T09:20:00.250Z");
        assert_eq!(parse_applied_at(&value), Ok(at));
        let mut t = IstioTarget::new("reviews", "bookinfo");
        let dr = destination_rule(&t, &tuned());
        assert!(
            dr["metadata"]["annotations"]
                .get(APPLIED_AT_ANNOTATION)
                .is_none(),
            "rendering alone records no time"
        );
        t.applied_at = Some(value.clone());
        for obj in [
            destination_rule(&t, &tuned()),
            virtual_service(&t, &tuned()),
        ] {
            assert_eq!(obj["metadata"]["annotations"][APPLIED_AT_ANNOTATION], value);
        }
        // Other writers' RFC 3339 forms read back too; anything else is an error naming it.
        assert_eq!(
            parse_applied_at("2026-11-30T10:20:00+01:00"),
            Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_030_400))
        );
        for bad in ["", "yesterday", "2026-11-30", "1796030400"] {
            let e = parse_applied_at(bad).unwrap_err();
            assert!(e.contains(APPLIED_AT_ANNOTATION), "{e}");
        }
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
        assert_eq!(object_name("Reviews.BookInfo.SVC.", "bookinfo"), "reviews");
        assert_eq!(
            object_name("reviews.bookinfo.svcx", "bookinfo"),
            "reviews-bookinfo-svcx"
        );
        assert_eq!(object_name("a*b.ns", "ns"), "a-b");
        assert_eq!(object_name("-.ns", "ns"), "meshtune");
        assert_eq!(object_name("-a-.ns", "ns"), "a");
        assert!(object_name(&"a.".repeat(80), "x").len() <= 63);
        assert_eq!(istio_limit(4_294_967_295.0), None);
        assert_eq!(istio_limit(2_147_483_646.4), Some(2_147_483_646));
    }
}
