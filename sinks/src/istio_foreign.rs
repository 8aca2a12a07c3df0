//! The knobs the cluster's own Istio objects put in force: which DestinationRule and
//! VirtualService a client sidecar in namespace C uses for destination host H, as istiod picks
//! them, read back into [`Knobs`] ([`crate::istio::knobs_from_objects`]). Pure: the objects are
//! passed in ([`ForeignObject`], built from what the controller's watch lists), [`Index`]
//! answers per (client namespace, host).
//!
//! "Foreign" means not written by meshtune: objects meshtune owns (label
//! `app.kubernetes.io/managed-by: meshtune`) are left out (what meshtune pushed is the decision
//! loop's own state), and an object meshtune co-manages is read as it was before meshtune wrote
//! it (its [`PREVIOUS_ANNOTATION`] put back over the fields meshtune sets). So [`Index::resolve`]
//! is what is in force for H in C when meshtune has written nothing there: the baseline.
//!
//! The rules, from istio/istio at 86c9f01fd735 (the commit of the vendored CRDs):
//!
//! **DestinationRule** (`pilot/pkg/model/push_context.go`, `PushContext.destinationRule`,
//! `setDestinationRules`; `destination_rule.go`, `mergeDestinationRule`):
//! 1. rules in C itself whose `exportTo` is empty, `*`, `.` or C (the root namespace instead
//!    uses its rules exported only to itself);
//! 2. else the rules of the service's namespace (S of `name.S.svc.<domain>`) exported beyond
//!    S, if visible to C (`exportTo` empty, `*` or naming C);
//! 3. else the same in the root namespace (`meshConfig.rootNamespace`, default
//!    `istio-system`).
//!
//! In each step the most specific host wins (`MostSpecificHostMatch`: the exact host, else the
//! longest matching wildcard `*.suffix`, `*` last); visibility is checked after that choice, as
//! istiod does (a more specific rule hidden from C hides the less specific ones of that step).
//! Several rules for that host in one step merge: the oldest (creation time, then name) with a
//! `trafficPolicy` supplies it. A short host (`reviews`) means `reviews.<its namespace>.svc.
//! <domain>`; a host with a dot is taken as written (istiod does not expand `reviews.ns`).
//!
//! **VirtualService** (`push_context.go`, `initVirtualServices`, `VirtualServicesForGateway`;
//! `virtualservice.go`, `SelectVirtualServices`; `networking/core/httproute.go`, duplicate
//! domains dropped, the first wins): only services bound to the `mesh` gateway (`gateways`
//! empty or listing `mesh`); those of C exported to C (`exportTo` `.` or C), then those of
//! other namespaces exported to C by name, then the public ones (`exportTo` empty or `*`), each
//! group oldest first. The first whose hosts match H wins: an exact host, or a wildcard host
//! that is the most specific wildcard matching H among the visible services.
//!
//! **Route**: a VirtualService's `http` routes are tried in order per request. meshtune reads
//! the first route that matches every request this client sends ([`route_choice`]: no `match`,
//! or a match entry with no condition other than `uri: {prefix: "/"}`, `ignoreUriCase`, `name`,
//! `gateways` listing `mesh` or `sourceNamespace: C`); entries for other gateways or source
//! namespaces never apply to C. When no route matches every request, the first route that can
//! apply to C is read and [`RouteChoice::Partial`] says so.
//!
//! Left out (documented in docs/ARCHITECTURE.md): `workloadSelector` rules (they apply to some
//! workloads of their namespace only), `portLevelSettings` and subset traffic policies (meshtune
//! keys a destination by host, not port or subset), the Sidecar resource's egress `hosts`
//! imports, `meshConfig` `defaultDestinationRuleExportTo` / `defaultVirtualServiceExportTo`
//! (taken as the default `*`), ServiceEntry hosts' own namespace (step 2 needs a
//! `name.S.svc.<domain>` host), delegate VirtualServices, and DestinationRule inheritance from
//! the root namespace (off by default in Istio).

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use meshtune_core::Knobs;
use serde_json::{json, Map, Value};

use crate::istio::{
    knobs_from_objects, APPLIED_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREVIOUS_ANNOTATION,
};

/// Default root namespace of the mesh configuration (`meshConfig.rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Default DNS domain of the cluster (istiod's `--domain`): short hosts expand to
/// `name.namespace.svc.<domain>`.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The gateway name of sidecars.
pub const MESH_GATEWAY: &str = "mesh";

/// The two kinds read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    DestinationRule,
    VirtualService,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
        }
    }
}

/// What the lookup needs of one DestinationRule or VirtualService.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignObject {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (istiod's order; missing sorts first).
    pub created: Option<Timestamp>,
    /// `spec.host` (DestinationRule) or `spec.hosts` (VirtualService), as written.
    pub hosts: Vec<String>,
    pub export_to: Vec<String>,
    /// `spec.gateways` (VirtualService).
    pub gateways: Vec<String>,
    /// `spec.workloadSelector` is set (DestinationRule).
    pub workload_selector: bool,
    /// The spec (for a co-managed object, as before meshtune wrote it).
    pub spec: Value,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Sets (or with null removes) `value` at JSON pointer `path` in `root`.
fn put(root: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        cur = map
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(map) = cur.as_object_mut() {
        if value.is_null() {
            map.remove(*last);
        } else {
            map.insert(last.to_string(), value);
        }
    }
}

impl ForeignObject {
    /// Reads a listed object. `None` for an object meshtune owns (managed-by label) and for one
    /// without a name or namespace. A co-managed object (meshtune's [`APPLIED_ANNOTATION`]
    /// without the label) is read as it was before meshtune wrote it: each field its
    /// [`PREVIOUS_ANNOTATION`] recorded is put back (null = the field was absent); an object
    /// whose annotation cannot be read is taken as it is.
    pub fn from_object(kind: Kind, obj: &DynamicObject) -> Option<Self> {
        let meta = &obj.metadata;
        let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
        if label.is_some_and(|v| v == MANAGED_BY_VALUE) {
            return None;
        }
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
        let mut root = json!({"spec": obj.data.get("spec").cloned().unwrap_or(Value::Null)});
        if annotation(APPLIED_ANNOTATION).is_some() {
            let previous = annotation(PREVIOUS_ANNOTATION)
                .and_then(|p| serde_json::from_str::<Map<String, Value>>(p).ok());
            for (path, value) in previous.into_iter().flatten() {
                put(&mut root, &path, value);
            }
        }
        let spec = &root["spec"];
        let hosts = match kind {
            Kind::DestinationRule => spec["host"]
                .as_str()
                .map(str::to_string)
                .into_iter()
                .collect(),
            Kind::VirtualService => strings(&spec["hosts"]),
        };
        Some(Self {
            kind,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            hosts,
            export_to: strings(&spec["exportTo"]),
            gateways: strings(&spec["gateways"]),
            workload_selector: spec.get("workloadSelector").is_some_and(|w| !w.is_null()),
            spec: root["spec"].take(),
        })
    }

    /// `Kind namespace/name`.
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

/// How to read the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `meshConfig.rootNamespace` ([`DEFAULT_ROOT_NAMESPACE`]).
    pub root_namespace: String,
    /// The cluster's DNS domain ([`DEFAULT_CLUSTER_DOMAIN`]).
    pub domain: String,
}

impl Default for Lookup {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
        }
    }
}

impl Lookup {
    /// A host as istiod resolves it for an object of `namespace` (`ResolveShortnameToFQDN`):
    /// a name without a dot (other than `*`) gets `.<namespace>.svc.<domain>`; lower case.
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        let h = host.to_ascii_lowercase();
        if h == "*" || h.contains('.') || h.is_empty() {
            h
        } else {
            format!("{h}.{namespace}.svc.{}", self.domain)
        }
    }

    /// The namespace of a Kubernetes service host `name.NS.svc.<domain>`.
    pub fn service_namespace<'a>(&self, host: &'a str) -> Option<&'a str> {
        let rest = host.strip_suffix(&self.domain)?.strip_suffix(".svc.")?;
        let (_, ns) = rest.split_once('.')?;
        (!ns.is_empty() && !ns.contains('.')).then_some(ns)
    }
}

/// Rules of one namespace (one step of the DestinationRule lookup), by resolved host.
#[derive(Debug, Default)]
struct Pool {
    /// Exact host → indexes into [`Index::objects`], oldest first.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard host (`*.suffix` or `*`) → indexes, oldest first.
    wildcard: Vec<(String, Vec<usize>)>,
}

impl Pool {
    fn add(&mut self, host: String, i: usize) {
        if host.starts_with('*') {
            match self.wildcard.iter_mut().find(|(h, _)| *h == host) {
                Some((_, v)) => v.push(i),
                None => self.wildcard.push((host, vec![i])),
            }
        } else {
            self.exact.entry(host).or_default().push(i);
        }
    }

    /// `MostSpecificHostMatch`: the rules of the exact host, else of the longest wildcard that
    /// matches.
    fn most_specific(&self, host: &str) -> Option<&[usize]> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcard
            .iter()
            .filter(|(w, _)| wildcard_matches(w, host))
            .max_by_key(|(w, _)| w.len())
            .map(|(_, v)| v.as_slice())
    }
}

fn wildcard_matches(wildcard: &str, host: &str) -> bool {
    wildcard
        .strip_prefix('*')
        .is_some_and(|suffix| host.ends_with(suffix))
}

/// Which route of the VirtualService was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChoice {
    /// Route `index` (0-based) of `of` matches every request of the client.
    CatchAll { index: usize, of: usize },
    /// No route matches every request; route `index`, the first that can apply to the
    /// client, was read (requests it does not match get other settings or no route).
    Partial { index: usize, of: usize },
}

impl std::fmt::Display for RouteChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteChoice::CatchAll { index, of } => {
                write!(f, "route {} of {of}, the default route", index + 1)
            }
            RouteChoice::Partial { index, of } => write!(
                f,
                "route {} of {of}: no route matches every request, the first that applies is read",
                index + 1
            ),
        }
    }
}

/// Whether one `match` entry (an `HTTPMatchRequest`) can apply to requests of clients in
/// `client_ns` (`Some`), and if so whether it matches all of them (`Some(true)`).
fn match_entry(m: &Value, client_ns: &str) -> Option<bool> {
    let Some(fields) = m.as_object() else {
        return Some(true);
    };
    let mut all = true;
    for (k, v) in fields {
        match k.as_str() {
            "name" | "ignoreUriCase" => {}
            "sourceNamespace" => {
                if v.as_str() != Some(client_ns) {
                    return None;
                }
            }
            "gateways" => {
                if !strings(v).iter().any(|g| g == MESH_GATEWAY) {
                    return None;
                }
            }
            "uri" => {
                let root = v.as_object().is_some_and(|u| {
                    u.len() == 1 && u.get("prefix").and_then(Value::as_str) == Some("/")
                });
                all &= root;
            }
            _ => all = false,
        }
    }
    Some(all)
}

/// The route of `routes` (a VirtualService's `http`) that requests of clients in
/// `client_ns` get by default; see the module docs. `None` when no route can apply.
pub fn route_choice(routes: &[Value], client_ns: &str) -> Option<RouteChoice> {
    let of = routes.len();
    let mut first = None;
    for (index, r) in routes.iter().enumerate() {
        let applies: Vec<bool> = match r.get("match").and_then(Value::as_array) {
            None => vec![true],
            Some(ms) if ms.is_empty() => vec![true],
            Some(ms) => ms
                .iter()
                .filter_map(|m| match_entry(m, client_ns))
                .collect(),
        };
        if applies.iter().any(|all| *all) {
            return Some(RouteChoice::CatchAll { index, of });
        }
        if !applies.is_empty() && first.is_none() {
            first = Some(index);
        }
    }
    first.map(|index| RouteChoice::Partial { index, of })
}

/// The DestinationRule spec fields meshtune's rendering carries ([`crate::istio`]).
const RULE_FIELDS: [&str; 11] = [
    "/host",
    "/exportTo",
    "/workloadSelector",
    "/trafficPolicy/connectionPool/tcp/maxConnections",
    "/trafficPolicy/connectionPool/http/http1MaxPendingRequests",
    "/trafficPolicy/connectionPool/http/http2MaxRequests",
    "/trafficPolicy/connectionPool/http/maxRequestsPerConnection",
    "/trafficPolicy/connectionPool/http/maxRetries",
    "/trafficPolicy/outlierDetection/consecutive5xxErrors",
    "/trafficPolicy/outlierDetection/baseEjectionTime",
    "/trafficPolicy/outlierDetection/maxEjectionPercent",
];

/// JSON pointers of the set leaves of `v` (objects are walked; arrays and scalars are leaves).
fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, &format!("{at}/{k}"), out);
            }
        }
        _ => out.push(at.to_string()),
    }
}

/// The fields of `o` (a DestinationRule or VirtualService for `host`, resolved with `lookup`)
/// that the object meshtune renders for the host would not carry: what a client sidecar would
/// lose if meshtune's object replaced `o` for it. A VirtualService carries one route to the host
/// with a timeout and retries; anything else (matches, several routes, subsets, other hosts,
/// weights across destinations, fault injection, mirroring, rewrites, header changes, TCP/TLS
/// routes) is listed.
pub fn dropped_fields(o: &ForeignObject, host: &str, lookup: &Lookup) -> Vec<String> {
    let mut out = Vec::new();
    match o.kind {
        Kind::DestinationRule => {
            let mut all = Vec::new();
            leaves(&o.spec, "", &mut all);
            // `tls.mode: ISTIO_MUTUAL` alone is what auto mTLS (Istio's default since 1.5)
            // gives a destination with a sidecar anyway: the mesh-wide root rule many clusters
            // keep from before auto mTLS must not block every push.
            let auto_mtls = o.spec.pointer("/trafficPolicy/tls/mode")
                == Some(&Value::String("ISTIO_MUTUAL".into()));
            let carried =
                |p: &str| RULE_FIELDS.contains(&p) || (auto_mtls && p == "/trafficPolicy/tls/mode");
            out.extend(all.into_iter().filter(|p| !carried(p)));
        }
        Kind::VirtualService => {
            for k in ["tcp", "tls"] {
                if o.spec[k].as_array().is_some_and(|a| !a.is_empty()) {
                    out.push(format!("/{k}"));
                }
            }
            let routes = o.spec["http"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if routes.len() > 1 {
                out.push(format!("/http ({} routes)", routes.len()));
            }
            for (i, r) in routes.iter().enumerate().take(1) {
                let fields = r.as_object().into_iter().flatten();
                for (k, v) in fields {
                    match k.as_str() {
                        "name" | "timeout" => {}
                        "retries" => {
                            for (rk, _) in v.as_object().into_iter().flatten() {
                                if !matches!(rk.as_str(), "attempts" | "perTryTimeout" | "retryOn")
                                {
                                    out.push(format!("/http/{i}/retries/{rk}"));
                                }
                            }
                        }
                        "route" => {
                            let dests = v.as_array().map(Vec::as_slice).unwrap_or_default();
                            if dests.len() != 1 {
                                out.push(format!("/http/{i}/route ({} destinations)", dests.len()));
                            }
                            for (j, d) in dests.iter().enumerate() {
                                let to = &d["destination"];
                                let h = to["host"].as_str().unwrap_or_default();
                                if lookup.resolve_host(h, &o.namespace) != host {
                                    out.push(format!("/http/{i}/route/{j}/destination/host"));
                                }
                                if to.get("subset").is_some_and(|s| !s.is_null()) {
                                    out.push(format!("/http/{i}/route/{j}/destination/subset"));
                                }
                                for (dk, _) in d.as_object().into_iter().flatten() {
                                    if !matches!(dk.as_str(), "destination" | "weight") {
                                        out.push(format!("/http/{i}/route/{j}/{dk}"));
                                    }
                                }
                            }
                        }
                        other => out.push(format!("/http/{i}/{other}")),
                    }
                }
            }
        }
    }
    out
}

/// What is in force for one (client namespace, host) from the cluster's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInForce {
    /// The knobs (Istio's defaults for whatever no object sets).
    pub knobs: Knobs,
    /// The DestinationRule read (`DestinationRule ns/name`).
    pub destination_rule: Option<String>,
    /// The VirtualService read, with its route.
    pub virtual_service: Option<(String, RouteChoice)>,
}

impl ClusterInForce {
    /// Nothing configures the host: Istio's defaults.
    pub fn defaults() -> Self {
        Self {
            knobs: Knobs::istio_defaults(),
            destination_rule: None,
            virtual_service: None,
        }
    }

    /// Whether some object configures the host.
    pub fn from_objects(&self) -> bool {
        self.destination_rule.is_some() || self.virtual_service.is_some()
    }

    /// The objects read, for logs and status (`VirtualService ns/name (route 1 of 2, ...)`).
    pub fn objects(&self) -> Vec<String> {
        let mut out: Vec<String> = self.destination_rule.iter().cloned().collect();
        if let Some((vs, route)) = &self.virtual_service {
            out.push(format!("{vs} ({route})"));
        }
        out
    }
}

/// The cluster's foreign objects indexed for [`Index::resolve`].
#[derive(Debug, Default)]
pub struct Index {
    lookup: Lookup,
    /// Every object, oldest first (creation time, then name, then namespace).
    objects: Vec<ForeignObject>,
    /// DestinationRules visible in their own namespace (step 1), per namespace.
    dr_local: HashMap<String, Pool>,
    /// The root namespace's rules exported only to itself (step 1 for root clients).
    dr_root_local: Pool,
    /// DestinationRules exported beyond their namespace (steps 2 and 3), per namespace.
    dr_exported: HashMap<String, Pool>,
    /// VirtualServices bound to `mesh`, private to (or exported by name to) a namespace.
    vs_private: HashMap<String, Vec<usize>>,
    vs_exported_to: HashMap<String, Vec<usize>>,
    /// VirtualServices bound to `mesh` and public.
    vs_public: Vec<usize>,
}

impl Index {
    /// Indexes `objects` (any order) with `lookup`'s root namespace and domain.
    pub fn build(lookup: Lookup, objects: impl IntoIterator<Item = ForeignObject>) -> Self {
        let mut objects: Vec<ForeignObject> = objects.into_iter().collect();
        objects.sort_by(|a, b| {
            (a.created, &a.name, &a.namespace).cmp(&(b.created, &b.name, &b.namespace))
        });
        let mut ix = Index {
            lookup,
            ..Index::default()
        };
        for (i, o) in objects.iter().enumerate() {
            match o.kind {
                Kind::DestinationRule => ix.add_rule(i, o),
                Kind::VirtualService => ix.add_service(i, o),
            }
        }
        ix.objects = objects;
        ix
    }

    fn add_rule(&mut self, i: usize, o: &ForeignObject) {
        if o.workload_selector {
            return;
        }
        let Some(host) = o.hosts.first() else { return };
        let host = self.lookup.resolve_host(host, &o.namespace);
        let ns = o.namespace.as_str();
        let e = &o.export_to;
        let has = |x: &str| e.iter().any(|v| v == x);
        if e.is_empty() || has("*") || has(".") || has(ns) {
            self.dr_local
                .entry(ns.to_string())
                .or_default()
                .add(host.clone(), i);
        }
        let private_only = e.len() == 1 && (has(".") || has(ns));
        if !private_only {
            self.dr_exported
                .entry(ns.to_string())
                .or_default()
                .add(host, i);
        } else if ns == self.lookup.root_namespace {
            self.dr_root_local.add(host, i);
        }
    }

    fn add_service(&mut self, i: usize, o: &ForeignObject) {
        if !(o.gateways.is_empty() || o.gateways.iter().any(|g| g == MESH_GATEWAY)) {
            return;
        }
        let e = &o.export_to;
        if e.is_empty() || e.iter().any(|v| v == "*") {
            self.vs_public.push(i);
            return;
        }
        if e.iter().any(|v| v == "~") {
            return;
        }
        let mut seen: Vec<&str> = Vec::new();
        for to in e {
            let to = if to == "." { o.namespace.as_str() } else { to };
            if seen.contains(&to) {
                continue;
            }
            seen.push(to);
            let map = if to == o.namespace {
                &mut self.vs_private
            } else {
                &mut self.vs_exported_to
            };
            map.entry(to.to_string()).or_default().push(i);
        }
    }

    /// Number of objects indexed.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The DestinationRule that sidecars of `client_ns` use for `host` (see the module docs).
    fn rule_for(&self, client_ns: &str, host: &str) -> Option<&ForeignObject> {
        let visible = |i: &usize| {
            let e = &self.objects[*i].export_to;
            e.is_empty() || e.iter().any(|v| v == "*" || v == client_ns)
        };
        // The oldest rule with a traffic policy supplies it (istiod's merge).
        let merged = |ix: Vec<usize>| -> Option<&ForeignObject> {
            ix.iter()
                .map(|i| &self.objects[*i])
                .find(|o| o.spec.get("trafficPolicy").is_some_and(|t| !t.is_null()))
                .or_else(|| ix.first().map(|i| &self.objects[*i]))
        };
        let root = self.lookup.root_namespace.as_str();
        let local = if client_ns == root {
            Some(&self.dr_root_local)
        } else {
            self.dr_local.get(client_ns)
        };
        if let Some(ix) = local.and_then(|p| p.most_specific(host)) {
            return merged(ix.to_vec());
        }
        let exported = |ns: &str| -> Option<Vec<usize>> {
            let ix = self.dr_exported.get(ns)?.most_specific(host)?;
            let shown: Vec<usize> = ix.iter().copied().filter(visible).collect();
            (!shown.is_empty()).then_some(shown)
        };
        if let Some(ix) = self.lookup.service_namespace(host).and_then(&exported) {
            return merged(ix);
        }
        exported(root).and_then(merged)
    }

    /// The VirtualService that sidecars of `client_ns` use for `host` (see the module docs).
    fn service_for(&self, client_ns: &str, host: &str) -> Option<&ForeignObject> {
        let order = self
            .vs_private
            .get(client_ns)
            .into_iter()
            .flatten()
            .chain(self.vs_exported_to.get(client_ns).into_iter().flatten())
            .chain(self.vs_public.iter());
        // (object, matched exactly, matching wildcard)
        let mut candidates: Vec<(usize, Option<String>)> = Vec::new();
        for &i in order {
            let o = &self.objects[i];
            let mut wildcard: Option<String> = None;
            let mut exact = false;
            for h in &o.hosts {
                let h = self.lookup.resolve_host(h, &o.namespace);
                if h == host {
                    exact = true;
                } else if wildcard_matches(&h, host)
                    && wildcard.as_ref().is_none_or(|w| h.len() > w.len())
                {
                    wildcard = Some(h);
                }
            }
            if exact {
                candidates.push((i, None));
            } else if let Some(w) = wildcard {
                candidates.push((i, Some(w)));
            }
        }
        let most_specific = candidates
            .iter()
            .filter_map(|(_, w)| w.as_ref().map(String::len))
            .max();
        candidates
            .into_iter()
            .find(|(_, w)| w.as_ref().is_none_or(|w| Some(w.len()) == most_specific))
            .map(|(i, _)| &self.objects[i])
    }

    /// The object of `kind` in force for `host` at sidecars of `client_ns` that an object of
    /// meshtune's in `client_ns` would replace for them (it lives in another namespace: istiod
    /// takes the client namespace's own object first), when it sets fields meshtune's object
    /// does not carry ([`dropped_fields`]): `(object, fields)`. An object in `client_ns`
    /// itself is the Istio sink's own business (refused or co-managed there).
    pub fn shadowed(
        &self,
        client_ns: &str,
        kind: Kind,
        host: &str,
    ) -> Option<(String, Vec<String>)> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let o = match kind {
            Kind::DestinationRule => self.rule_for(client_ns, &host),
            Kind::VirtualService => self.service_for(client_ns, &host),
        }?;
        if o.namespace == client_ns {
            return None;
        }
        let fields = dropped_fields(o, &host, &self.lookup);
        (!fields.is_empty()).then(|| (o.id(), fields))
    }

    /// What the cluster's foreign objects put in force for `host` (fully qualified, as in the
    /// outbound cluster name) at sidecars of `client_ns`.
    pub fn resolve(&self, client_ns: &str, host: &str) -> ClusterInForce {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let dr = self.rule_for(client_ns, &host);
        let vs = self.service_for(client_ns, &host).and_then(|o| {
            let routes = o.spec["http"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            route_choice(routes, client_ns).map(|c| {
                let index = match c {
                    RouteChoice::CatchAll { index, .. } | RouteChoice::Partial { index, .. } => {
                        index
                    }
                };
                (o, c, routes[index].clone())
            })
        });
        let dr_value = dr.map(|o| json!({"spec": {"trafficPolicy": o.spec["trafficPolicy"]}}));
        let vs_value = vs
            .as_ref()
            .map(|(_, _, route)| json!({"spec": {"http": [route]}}));
        ClusterInForce {
            knobs: knobs_from_objects(dr_value.as_ref(), vs_value.as_ref()),
            destination_rule: dr.map(ForeignObject::id),
            virtual_service: vs.map(|(o, c, _)| (o.id(), c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::Knob;

    const HOST: &str = "reviews.bookinfo.svc.cluster.local";

    fn object(kind: Kind, ns: &str, name: &str, created: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": kind.name(),
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    fn dr(ns: &str, name: &str, created: &str, spec: Value) -> ForeignObject {
        ForeignObject::from_object(
            Kind::DestinationRule,
            &object(Kind::DestinationRule, ns, name, created, spec),
        )
        .unwrap()
    }

    fn vs(ns: &str, name: &str, created: &str, spec: Value) -> ForeignObject {
        ForeignObject::from_object(
            Kind::VirtualService,
            &object(Kind::VirtualService, ns, name, created, spec),
        )
        .unwrap()
    }

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-02T00:00:00Z";
    const T3: &str = "2026-01-03T00:00:00Z";

    fn pool(http2: u32) -> Value {
        json!({"connectionPool": {"http": {"http2MaxRequests": http2}}})
    }

    fn index(objects: Vec<ForeignObject>) -> Index {
        Index::build(Lookup::default(), objects)
    }

    fn http2(ix: &Index, client: &str) -> f64 {
        ix.resolve(client, HOST).knobs.get(Knob::Http2MaxRequests)
    }

    #[test]
    fn hand_tuned_rule_and_route_become_the_knobs_in_force() {
        let ix = index(vec![
            dr(
                "bookinfo",
                "reviews",
                T1,
                json!({"host": "reviews", "trafficPolicy": {
                    "connectionPool": {"tcp": {"maxConnections": 80},
                        "http": {"http2MaxRequests": 50, "http1MaxPendingRequests": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 3, "baseEjectionTime": "1m",
                        "maxEjectionPercent": 20}}}),
            ),
            vs(
                "bookinfo",
                "reviews",
                T1,
                json!({"hosts": ["reviews"], "http": [
                    {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                     "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                     "timeout": "3s", "retries": {"attempts": 1, "perTryTimeout": "1s"}}]}),
            ),
        ]);
        let got = ix.resolve("frontend", HOST);
        let mut want = Knobs::istio_defaults();
        want.set(Knob::MaxConnections, 80.0);
        want.set(Knob::Http2MaxRequests, 50.0);
        want.set(Knob::Http1MaxPendingRequests, 10.0);
        want.set(Knob::Consecutive5xxErrors, 3.0);
        want.set(Knob::BaseEjectionTimeMs, 60_000.0);
        want.set(Knob::MaxEjectionPercent, 20.0);
        want.set(Knob::RouteTimeoutMs, 3_000.0);
        want.set(Knob::RetryAttempts, 1.0);
        want.set(Knob::PerTryTimeoutMs, 1_000.0);
        assert_eq!(got.knobs, want);
        assert_eq!(
            got.destination_rule.as_deref(),
            Some("DestinationRule bookinfo/reviews")
        );
        let (id, route) = got.virtual_service.clone().unwrap();
        assert_eq!(id, "VirtualService bookinfo/reviews");
        assert_eq!(route, RouteChoice::CatchAll { index: 1, of: 2 });
        assert_eq!(
            got.objects()[1],
            "VirtualService bookinfo/reviews (route 2 of 2, the default route)"
        );
        // Another host: nothing configures it.
        assert_eq!(
            ix.resolve("frontend", "ratings.bookinfo.svc.cluster.local"),
            ClusterInForce::defaults()
        );
        assert!(!ClusterInForce::defaults().from_objects());
    }

    #[test]
    fn the_client_namespace_wins_then_the_service_namespace_then_the_root() {
        let root = dr(
            "istio-system",
            "mesh-wide",
            T1,
            json!({"host": "*.svc.cluster.local", "trafficPolicy": pool(7)}),
        );
        let service = dr(
            "bookinfo",
            "reviews",
            T2,
            json!({"host": HOST, "trafficPolicy": pool(50)}),
        );
        let client = dr(
            "frontend",
            "reviews-client",
            T3,
            json!({"host": HOST, "exportTo": ["."], "trafficPolicy": pool(20)}),
        );
        let ix = index(vec![root.clone(), service.clone(), client.clone()]);
        assert_eq!(http2(&ix, "frontend"), 20.0, "client namespace first");
        assert_eq!(http2(&ix, "shop"), 50.0, "then the service's namespace");
        let ix = index(vec![root.clone(), client.clone()]);
        assert_eq!(http2(&ix, "shop"), 7.0, "then the root namespace");
        assert_eq!(
            ix.resolve("shop", HOST).destination_rule.as_deref(),
            Some("DestinationRule istio-system/mesh-wide")
        );
        // A rule exported only to its own namespace is not seen by other clients.
        let mut private = service.clone();
        private.export_to = vec![".".into()];
        let ix = index(vec![root.clone(), private]);
        assert_eq!(http2(&ix, "shop"), 7.0);
        assert_eq!(http2(&ix, "bookinfo"), 50.0, "but by its own namespace");
        // Exported by name: seen by that namespace only.
        let mut named = service.clone();
        named.export_to = vec!["frontend".into()];
        let ix = index(vec![named]);
        assert_eq!(http2(&ix, "frontend"), 50.0);
        assert_eq!(
            http2(&ix, "shop"),
            Knobs::istio_defaults().get(Knob::Http2MaxRequests)
        );
        assert_eq!(
            http2(&ix, "bookinfo"),
            Knobs::istio_defaults().get(Knob::Http2MaxRequests),
            "exportTo without its own namespace hides it there too"
        );
        // The most specific host is chosen before visibility: a hidden exact rule in the
        // service's namespace hides a visible wildcard there (the root still answers).
        let mut hidden = service.clone();
        hidden.export_to = vec!["other".into()];
        let wildcard = dr(
            "bookinfo",
            "all",
            T1,
            json!({"host": "*.bookinfo.svc.cluster.local", "trafficPolicy": pool(30)}),
        );
        let ix = index(vec![hidden, wildcard.clone(), root]);
        assert_eq!(http2(&ix, "shop"), 7.0);
        let ix = index(vec![wildcard]);
        assert_eq!(http2(&ix, "shop"), 30.0, "a visible wildcard applies");
    }

    #[test]
    fn most_specific_host_short_names_and_merges() {
        // `*` < `*.cluster.local` < `*.bookinfo.svc.cluster.local` < exact.
        let all = dr(
            "frontend",
            "a",
            T1,
            json!({"host": "*", "trafficPolicy": pool(1)}),
        );
        let cl = dr(
            "frontend",
            "b",
            T1,
            json!({"host": "*.cluster.local", "trafficPolicy": pool(2)}),
        );
        let ns = dr(
            "frontend",
            "c",
            T1,
            json!({"host": "*.bookinfo.svc.cluster.local", "trafficPolicy": pool(3)}),
        );
        let ix = index(vec![all.clone(), cl.clone(), ns.clone()]);
        assert_eq!(http2(&ix, "frontend"), 3.0);
        let ix = index(vec![all.clone(), cl]);
        assert_eq!(http2(&ix, "frontend"), 2.0);
        // A short host resolves against the rule's own namespace.
        let short = dr(
            "bookinfo",
            "short",
            T1,
            json!({"host": "reviews", "trafficPolicy": pool(4)}),
        );
        assert_eq!(http2(&index(vec![short.clone()]), "frontend"), 4.0);
        let elsewhere = dr(
            "frontend",
            "short",
            T1,
            json!({"host": "reviews", "trafficPolicy": pool(5)}),
        );
        assert_eq!(
            http2(&index(vec![elsewhere]), "frontend"),
            Knobs::istio_defaults().get(Knob::Http2MaxRequests),
            "reviews in frontend is reviews.frontend"
        );
        // `reviews.bookinfo` is not expanded by istiod: it does not name the FQDN.
        let dotted = dr(
            "bookinfo",
            "dotted",
            T1,
            json!({"host": "reviews.bookinfo", "trafficPolicy": pool(6)}),
        );
        assert_eq!(
            http2(&index(vec![dotted]), "frontend"),
            Knobs::istio_defaults().get(Knob::Http2MaxRequests)
        );
        // Two rules for the host: the older one with a traffic policy supplies it.
        let tls_only = dr("bookinfo", "a-tls", T1, json!({"host": HOST}));
        let newer = dr(
            "bookinfo",
            "b-pool",
            T3,
            json!({"host": HOST, "trafficPolicy": pool(8)}),
        );
        let older = dr(
            "bookinfo",
            "c-pool",
            T2,
            json!({"host": HOST, "trafficPolicy": pool(9)}),
        );
        let ix = index(vec![newer, tls_only, older]);
        assert_eq!(http2(&ix, "frontend"), 9.0);
        assert_eq!(
            ix.resolve("frontend", HOST).destination_rule.as_deref(),
            Some("DestinationRule bookinfo/c-pool")
        );
        // workloadSelector rules are left out.
        let selected = dr(
            "frontend",
            "sel",
            T1,
            json!({"host": HOST, "workloadSelector": {"matchLabels": {"app": "x"}},
                "trafficPolicy": pool(11)}),
        );
        assert_eq!(
            http2(&index(vec![selected]), "frontend"),
            Knobs::istio_defaults().get(Knob::Http2MaxRequests)
        );
    }

    #[test]
    fn virtual_services_in_istio_order() {
        let timeout =
            |ix: &Index, client: &str| ix.resolve(client, HOST).knobs.get(Knob::RouteTimeoutMs);
        let public = vs(
            "bookinfo",
            "public",
            T1,
            json!({"hosts": ["reviews"], "http": [{"timeout": "5s"}]}),
        );
        let own = vs(
            "frontend",
            "own",
            T3,
            json!({"hosts": [HOST], "exportTo": ["."], "http": [{"timeout": "2s"}]}),
        );
        let to_frontend = vs(
            "shop",
            "to-frontend",
            T2,
            json!({"hosts": [HOST], "exportTo": ["frontend"], "http": [{"timeout": "3s"}]}),
        );
        let ix = index(vec![public.clone(), own.clone(), to_frontend.clone()]);
        assert_eq!(timeout(&ix, "frontend"), 2_000.0, "the client's own first");
        let ix = index(vec![public.clone(), to_frontend.clone()]);
        assert_eq!(timeout(&ix, "frontend"), 3_000.0, "then exported to it");
        assert_eq!(timeout(&ix, "other"), 5_000.0, "public for everyone else");
        // Public ones oldest first.
        let newer = vs(
            "x",
            "newer",
            T3,
            json!({"hosts": [HOST], "http": [{"timeout": "9s"}]}),
        );
        let ix = index(vec![newer.clone(), public.clone()]);
        assert_eq!(timeout(&ix, "other"), 5_000.0);
        // Bound to a gateway only, or exported nowhere: not a sidecar's.
        let gw = vs(
            "bookinfo",
            "gw",
            T1,
            json!({"hosts": [HOST], "gateways": ["ingress"], "http": [{"timeout": "1s"}]}),
        );
        let none = vs(
            "bookinfo",
            "none",
            T1,
            json!({"hosts": [HOST], "exportTo": ["~"], "http": [{"timeout": "1s"}]}),
        );
        let ix = index(vec![gw, none]);
        assert_eq!(ix.resolve("frontend", HOST), ClusterInForce::defaults());
        let mesh_too = vs(
            "bookinfo",
            "both",
            T1,
            json!({"hosts": [HOST], "gateways": ["ingress", "mesh"], "http": [{"timeout": "1s"}]}),
        );
        assert_eq!(timeout(&index(vec![mesh_too]), "frontend"), 1_000.0);
        // Among wildcards the most specific; then the first in order, exact or wildcard
        // (istiod keeps the first virtual host for a domain).
        let wide = vs(
            "bookinfo",
            "wide",
            T1,
            json!({"hosts": ["*.svc.cluster.local"], "http": [{"timeout": "7s"}]}),
        );
        let narrow = vs(
            "bookinfo",
            "narrow",
            T2,
            json!({"hosts": ["*.bookinfo.svc.cluster.local"], "http": [{"timeout": "8s"}]}),
        );
        let ix = index(vec![wide.clone(), narrow.clone()]);
        assert_eq!(timeout(&ix, "frontend"), 8_000.0);
        let ix = index(vec![wide.clone(), narrow, newer.clone()]);
        assert_eq!(
            timeout(&ix, "frontend"),
            8_000.0,
            "the older wildcard comes first"
        );
        let ix = index(vec![wide, newer]);
        assert_eq!(timeout(&ix, "frontend"), 7_000.0);
        let mut exact_old = vs(
            "bookinfo",
            "exact",
            T1,
            json!({"hosts": [HOST], "http": [{"timeout": "6s"}]}),
        );
        exact_old.created = None;
        let ix = index(vec![
            exact_old,
            vs(
                "bookinfo",
                "narrow",
                T2,
                json!({"hosts": ["*.bookinfo.svc.cluster.local"], "http": [{"timeout": "8s"}]}),
            ),
        ]);
        assert_eq!(
            timeout(&ix, "frontend"),
            6_000.0,
            "an older exact host first"
        );
    }

    #[test]
    fn the_default_route_is_read() {
        let r = |v: Value| v.as_array().unwrap().clone();
        assert_eq!(
            route_choice(&r(json!([{"route": []}])), "c"),
            Some(RouteChoice::CatchAll { index: 0, of: 1 })
        );
        let canary_first = r(json!([
            {"match": [{"headers": {"x-canary": {"exact": "1"}}}]},
            {"match": [{"uri": {"prefix": "/"}, "name": "all"}]},
        ]));
        assert_eq!(
            route_choice(&canary_first, "c"),
            Some(RouteChoice::CatchAll { index: 1, of: 2 })
        );
        // A match entry for another source namespace or a gateway never applies to c; one
        // for c's namespace is as good as none.
        let scoped = r(json!([
            {"match": [{"sourceNamespace": "other"}]},
            {"match": [{"gateways": ["ingress"]}]},
            {"match": [{"sourceNamespace": "c", "gateways": ["mesh"]}]},
        ]));
        assert_eq!(
            route_choice(&scoped, "c"),
            Some(RouteChoice::CatchAll { index: 2, of: 3 })
        );
        let partial = r(json!([
            {"match": [{"sourceNamespace": "other"}]},
            {"match": [{"uri": {"prefix": "/api"}}]},
            {"match": [{"uri": {"exact": "/"}}]},
        ]));
        let choice = route_choice(&partial, "c").unwrap();
        assert_eq!(choice, RouteChoice::Partial { index: 1, of: 3 });
        assert!(choice
            .to_string()
            .contains("no route matches every request"));
        assert_eq!(
            route_choice(&r(json!([{"match": [{"sourceNamespace": "x"}]}])), "c"),
            None
        );
        assert_eq!(route_choice(&[], "c"), None);
        // The chosen route's settings are what is read.
        let ix = index(vec![vs(
            "bookinfo",
            "r",
            T1,
            json!({"hosts": [HOST], "http": [
                {"match": [{"uri": {"prefix": "/api"}}], "timeout": "1s"},
                {"timeout": "4s", "retries": {"attempts": 0}}]}),
        )]);
        let k = ix.resolve("frontend", HOST).knobs;
        assert_eq!(k.get(Knob::RouteTimeoutMs), 4_000.0);
        assert_eq!(k.get(Knob::RetryAttempts), 0.0);
    }

    #[test]
    fn meshtune_objects_are_left_out_and_co_managed_ones_read_as_before() {
        let mut owned = object(
            Kind::DestinationRule,
            "frontend",
            "reviews",
            T1,
            json!({"host": HOST, "trafficPolicy": pool(99)}),
        );
        owned.metadata.labels = Some([(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into())].into());
        assert_eq!(
            ForeignObject::from_object(Kind::DestinationRule, &owned),
            None
        );
        // Co-managed: meshtune set the pool to 99; before, the owner had 40 and outlier
        // detection, and no connection pool... restored from the annotation.
        let mut co = object(
            Kind::DestinationRule,
            "frontend",
            "reviews",
            T1,
            json!({"host": HOST, "trafficPolicy": {
                "connectionPool": {"http": {"http2MaxRequests": 99}},
                "outlierDetection": {"consecutive5xxErrors": 9}, "tls": {"mode": "ISTIO_MUTUAL"}}}),
        );
        let previous = json!({
            "/spec/trafficPolicy/connectionPool": {"http": {"http2MaxRequests": 40}},
            "/spec/trafficPolicy/outlierDetection": null,
        });
        co.metadata.annotations = Some(
            [
                (APPLIED_ANNOTATION.into(), "{}".into()),
                (PREVIOUS_ANNOTATION.into(), previous.to_string()),
            ]
            .into(),
        );
        let o = ForeignObject::from_object(Kind::DestinationRule, &co).unwrap();
        assert_eq!(
            o.spec["trafficPolicy"],
            json!({"connectionPool": {"http": {"http2MaxRequests": 40}},
                "tls": {"mode": "ISTIO_MUTUAL"}})
        );
        let k = index(vec![o]).resolve("frontend", HOST).knobs;
        assert_eq!(k.get(Knob::Http2MaxRequests), 40.0);
        assert_eq!(
            k.get(Knob::Consecutive5xxErrors),
            Knobs::istio_defaults().get(Knob::Consecutive5xxErrors)
        );
    }

    #[test]
    fn objects_meshtune_would_hide_are_found_with_what_they_set() {
        let knobs_only = dr(
            "bookinfo",
            "reviews",
            T1,
            json!({"host": "reviews", "trafficPolicy": pool(50)}),
        );
        let ix = index(vec![knobs_only.clone()]);
        assert_eq!(ix.shadowed("frontend", Kind::DestinationRule, HOST), None);
        let with_subsets = dr(
            "bookinfo",
            "reviews",
            T1,
            json!({"host": "reviews", "trafficPolicy": {
                "connectionPool": {"http": {"http2MaxRequests": 50, "idleTimeout": "1m"}},
                "tls": {"mode": "ISTIO_MUTUAL"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        );
        let ix = index(vec![with_subsets.clone()]);
        let (id, fields) = ix
            .shadowed("frontend", Kind::DestinationRule, HOST)
            .unwrap();
        assert_eq!(id, "DestinationRule bookinfo/reviews");
        assert_eq!(
            fields,
            vec!["/subsets", "/trafficPolicy/connectionPool/http/idleTimeout"],
            "tls ISTIO_MUTUAL is what auto mTLS gives anyway"
        );
        // In the client's own namespace meshtune's object would not hide it (the sink refuses
        // a second object there, or co-manages this one).
        assert_eq!(ix.shadowed("bookinfo", Kind::DestinationRule, HOST), None);
        // A mesh-wide rule counts too.
        let mesh = dr(
            "istio-system",
            "default",
            T1,
            json!({"host": "*.local", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
        );
        let ix = index(vec![mesh]);
        assert_eq!(
            ix.shadowed("frontend", Kind::DestinationRule, HOST)
                .unwrap()
                .1,
            vec!["/trafficPolicy/loadBalancer/simple"]
        );
        // The mesh-wide mTLS rule of clusters from before auto mTLS blocks nothing; another
        // TLS mode would be dropped.
        let mtls = |mode: &str| {
            dr(
                "istio-system",
                "default",
                T1,
                json!({"host": "*.local", "trafficPolicy": {"tls": {"mode": mode}}}),
            )
        };
        assert_eq!(
            index(vec![mtls("ISTIO_MUTUAL")]).shadowed("frontend", Kind::DestinationRule, HOST),
            None
        );
        assert_eq!(
            index(vec![mtls("DISABLE")])
                .shadowed("frontend", Kind::DestinationRule, HOST)
                .unwrap()
                .1,
            vec!["/trafficPolicy/tls/mode"]
        );
        // VirtualServices: a plain timeout/retries route is carried; subsets, matches and
        // several routes are not.
        let plain = vs(
            "bookinfo",
            "reviews",
            T1,
            json!({"hosts": ["reviews"], "http": [{"timeout": "3s", "retries": {"attempts": 2},
                "route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let ix = index(vec![plain]);
        assert_eq!(ix.shadowed("frontend", Kind::VirtualService, HOST), None);
        let routed = vs(
            "bookinfo",
            "reviews",
            T1,
            json!({"hosts": ["reviews"], "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}),
        );
        let ix = index(vec![routed]);
        let (id, fields) = ix.shadowed("frontend", Kind::VirtualService, HOST).unwrap();
        assert_eq!(id, "VirtualService bookinfo/reviews");
        assert_eq!(
            fields,
            vec![
                "/http (2 routes)",
                "/http/0/match",
                "/http/0/route/0/destination/subset"
            ]
        );
        let elsewhere = vs(
            "bookinfo",
            "reviews",
            T1,
            json!({"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews-v2"}, "weight": 90},
                {"destination": {"host": "reviews"}, "weight": 10, "headers": {}}]}]}),
        );
        let fields = index(vec![elsewhere])
            .shadowed("frontend", Kind::VirtualService, HOST)
            .unwrap()
            .1;
        assert_eq!(
            fields,
            vec![
                "/http/0/route (2 destinations)",
                "/http/0/route/0/destination/host",
                "/http/0/route/1/headers"
            ]
        );
        assert_eq!(
            index(vec![]).shadowed("frontend", Kind::VirtualService, HOST),
            None
        );
    }

    #[test]
    fn partial_and_odd_objects_read_as_defaults_where_unset() {
        // No trafficPolicy, unparsable durations, non-numeric limits, no hosts, no http.
        let ix = index(vec![
            dr("frontend", "empty", T1, json!({"host": HOST})),
            dr(
                "bookinfo",
                "odd",
                T1,
                json!({"host": HOST, "trafficPolicy": {
                    "connectionPool": {"http": {"http2MaxRequests": "lots"}},
                    "outlierDetection": {"baseEjectionTime": "soon"}}}),
            ),
            vs(
                "bookinfo",
                "nohttp",
                T1,
                json!({"hosts": [HOST], "tcp": []}),
            ),
            vs(
                "bookinfo",
                "nohosts",
                T1,
                json!({"http": [{"timeout": "1s"}]}),
            ),
        ]);
        let got = ix.resolve("frontend", HOST);
        assert_eq!(got.knobs, Knobs::istio_defaults());
        assert_eq!(
            got.destination_rule.as_deref(),
            Some("DestinationRule frontend/empty"),
            "a rule without a traffic policy is still the one in force"
        );
        assert_eq!(got.virtual_service, None, "no http route applies");
        let ix = index(vec![dr(
            "bookinfo",
            "odd",
            T1,
            json!({"host": HOST, "trafficPolicy": {
                "connectionPool": {"http": {"http2MaxRequests": "lots"}},
                "outlierDetection": {"baseEjectionTime": "soon", "maxEjectionPercent": 30}}}),
        )]);
        let k = ix.resolve("frontend", HOST).knobs;
        assert_eq!(k.get(Knob::MaxEjectionPercent), 30.0);
        assert_eq!(
            k.get(Knob::BaseEjectionTimeMs),
            Knobs::istio_defaults().get(Knob::BaseEjectionTimeMs)
        );
        let l = Lookup::default();
        assert_eq!(l.service_namespace(HOST), Some("bookinfo"));
        assert_eq!(l.service_namespace("api.example.com"), None);
        assert_eq!(l.service_namespace("a.b.c.svc.cluster.local"), None);
        assert_eq!(
            l.resolve_host("Reviews", "ns"),
            "reviews.ns.svc.cluster.local"
        );
        assert_eq!(l.resolve_host("*", "ns"), "*");
    }
}
