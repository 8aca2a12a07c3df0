//! The namespace switch: the label `meshtune.io/enabled=true` on a Namespace turns meshtune on
//! there. The controller watches Namespaces (kube-runtime watcher) and keeps, by server-side
//! apply under field manager `meshtune`, that namespace's data-plane object in place — the
//! EnvoyFilter or the WasmPlugin of `manifests/` (`--data-plane`), with its namespace set and
//! labelled managed-by meshtune. When the label goes (or the namespace is deleted) it deletes
//! that object and removes what meshtune wrote there
//! ([`meshtune_sinks::istio_undo::remove_namespace`]). The labelled namespaces are the
//! [`LabelGate`]: only they are tuned.
//!
//! Only the leader writes; every replica keeps the gate current so a new leader starts with
//! it. On becoming leader, after every (re)list of the watch and every
//! [`DEFAULT_RESYNC`], the leader reconciles: it applies the object in every enabled
//! namespace and deletes meshtune's data-plane objects found in namespaces that are not
//! enabled (labels removed while no controller was running). What to do is decided by the
//! pure [`plan`]; [`NamespaceController`] does the I/O.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::watcher;
use meshtune_sinks::istio::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use meshtune_sinks::IstioSinkConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::gate::NamespaceGate;
use crate::leader::Leadership;

/// The namespace label that turns meshtune on (value `true`).
/// Kubernetes access of this module (`crate::rbac`): Namespaces listed and watched; the
/// per-namespace data-plane object listed (stray sweep), server-side applied (`patch`, and
/// `create` for an object that does not exist yet) and deleted.
pub const KUBE_ACCESS: &[crate::rbac::Access] = &[
    ("", "namespaces", &["list", "watch"]),
    (
        "networking.istio.io",
        "envoyfilters",
        &["list", "patch", "create", "delete"],
    ),
    (
        "extensions.istio.io",
        "wasmplugins",
        &["list", "patch", "create", "delete"],
    ),
];

pub const ENABLED_LABEL: &str = "meshtune.io/enabled";
/// Name of the data-plane object in each enabled namespace (as in `manifests/`).
pub const DATA_PLANE_NAME: &str = "meshtune";
/// Default time between two full reconciliations by the leader (failed writes are retried
/// then).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// Default field manager of the data-plane objects.
pub const DEFAULT_FIELD_MANAGER: &str = meshtune_sinks::istio_sink::DEFAULT_FIELD_MANAGER;

/// `manifests/base/envoyfilter.yaml`: the EnvoyFilter template (namespace replaced).
pub const ENVOYFILTER_MANIFEST: &str = include_str!("../../manifests/base/envoyfilter.yaml");
/// `manifests/base/wasmplugin.yaml`: the WasmPlugin template (namespace replaced).
pub const WASMPLUGIN_MANIFEST: &str = include_str!("../../manifests/base/wasmplugin.yaml");

/// Which data-plane object the controller keeps in enabled namespaces (`--data-plane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataPlane {
    /// `extensions.istio.io/v1alpha1` WasmPlugin (istio-agent fetches the module by URL).
    #[default]
    Wasmplugin,
    /// `networking.istio.io/v1alpha3` EnvoyFilter (the module must be in the sidecar).
    Envoyfilter,
    /// No data-plane object: the label only gates tuning (install the filter yourself).
    None,
}

impl DataPlane {
    /// The kind's API resource (`None` for [`DataPlane::None`]).
    pub fn resource(self) -> Option<ApiResource> {
        let (group, version, kind, plural) = match self {
            DataPlane::Wasmplugin => (
                "extensions.istio.io",
                "v1alpha1",
                "WasmPlugin",
                "wasmplugins",
            ),
            DataPlane::Envoyfilter => (
                "networking.istio.io",
                "v1alpha3",
                "EnvoyFilter",
                "envoyfilters",
            ),
            DataPlane::None => return None,
        };
        Some(ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        ))
    }

    /// The other kind, whose objects a switch of `--data-plane` leaves behind.
    fn other(self) -> Option<DataPlane> {
        match self {
            DataPlane::Wasmplugin => Some(DataPlane::Envoyfilter),
            DataPlane::Envoyfilter => Some(DataPlane::Wasmplugin),
            DataPlane::None => None,
        }
    }

    fn manifest(self) -> Option<&'static str> {
        match self {
            DataPlane::Wasmplugin => Some(WASMPLUGIN_MANIFEST),
            DataPlane::Envoyfilter => Some(ENVOYFILTER_MANIFEST),
            DataPlane::None => None,
        }
    }
}

/// Errors of the namespace switch (each names the object or request).
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("data-plane template {what}: {reason}")]
    Template { what: &'static str, reason: String },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{what}: {reason}")]
    Undo { what: String, reason: String },
}

/// Whether `ns` opted in: label `meshtune.io/enabled=true` and not being deleted.
pub fn is_enabled(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ENABLED_LABEL))
            .is_some_and(|v| v == "true")
}

/// The data-plane object for `namespace`: the manifest of `kind` with `metadata.namespace`
/// set and the managed-by label ensured. For the WasmPlugin, `sha256` (the module the
/// controller serves, if it has one) replaces the manifest's pin so Istio accepts the module
/// this controller ships. Pure.
pub fn render(
    kind: DataPlane,
    namespace: &str,
    sha256: Option<&str>,
) -> Result<Option<Value>, NamespaceError> {
    let Some(text) = kind.manifest() else {
        return Ok(None);
    };
    let what = match kind {
        DataPlane::Envoyfilter => "manifests/base/envoyfilter.yaml",
        _ => "manifests/base/wasmplugin.yaml",
    };
    let mut obj: Value = serde_yaml::from_str(text).map_err(|e| NamespaceError::Template {
        what,
        reason: e.to_string(),
    })?;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or(NamespaceError::Template {
            what,
            reason: "no metadata".into(),
        })?;
    meta.insert("namespace".into(), Value::from(namespace));
    meta.insert("name".into(), Value::from(DATA_PLANE_NAME));
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(l) = labels.as_object_mut() {
        l.insert(MANAGED_BY_LABEL.into(), Value::from(MANAGED_BY_VALUE));
    }
    if let (DataPlane::Wasmplugin, Some(sha)) = (kind, sha256) {
        obj["spec"]["sha256"] = Value::from(sha);
    }
    Ok(Some(obj))
}

/// One write the leader makes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NsAction {
    /// Server-side apply the data-plane object in this (enabled) namespace.
    Apply(String),
    /// Delete the data-plane object and undo what meshtune wrote in this namespace.
    Remove(String),
}

/// What to write: apply in every `enabled` namespace not yet `applied` (all of them when
/// `full`), remove in every namespace that holds meshtune's objects (`present`: applied
/// earlier, or found by a list) and is not enabled. Sorted, each namespace once. Pure.
pub fn plan(
    enabled: &BTreeSet<String>,
    applied: &BTreeSet<String>,
    present: &BTreeSet<String>,
    full: bool,
) -> Vec<NsAction> {
    let mut out: Vec<NsAction> = enabled
        .iter()
        .filter(|n| full || !applied.contains(*n))
        .map(|n| NsAction::Apply(n.clone()))
        .collect();
    out.extend(
        applied
            .union(present)
            .filter(|n| !enabled.contains(*n))
            .map(|n| NsAction::Remove(n.clone())),
    );
    out
}

/// The gate from the label watch: the namespaces labelled `meshtune.io/enabled=true`.
#[derive(Debug, Default)]
pub struct LabelGate {
    enabled: RwLock<BTreeSet<String>>,
    /// Whether the first list completed (until then nothing is enabled).
    synced: std::sync::atomic::AtomicBool,
}

impl LabelGate {
    /// The enabled namespaces now.
    pub fn enabled(&self) -> BTreeSet<String> {
        self.enabled
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the first list of namespaces completed.
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, ns: &str, on: bool) -> bool {
        let mut e = self.enabled.write().unwrap_or_else(|e| e.into_inner());
        if on {
            e.insert(ns.to_string())
        } else {
            e.remove(ns)
        }
    }

    fn replace(&self, all: BTreeSet<String>) {
        *self.enabled.write().unwrap_or_else(|e| e.into_inner()) = all;
        self.synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl NamespaceGate for LabelGate {
    fn allows(&self, namespace: &str) -> bool {
        self.enabled
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(namespace)
    }

    fn synced(&self) -> bool {
        LabelGate::synced(self)
    }
}

/// `action` (apply, delete) and `result` (ok, failed) of a data-plane write.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DataPlaneLabels {
    pub action: String,
    pub result: String,
}

/// `meshtune_enabled_namespaces`, `meshtune_data_plane_writes_total{action,result}`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceMetrics {
    pub enabled: Gauge,
    pub writes: Family<DataPlaneLabels, Counter>,
}

impl NamespaceMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "meshtune_enabled_namespaces",
            "Namespaces labelled meshtune.io/enabled=true (the label watch's gate)",
            m.enabled.clone(),
        );
        registry.register(
            "meshtune_data_plane_writes",
            "Data-plane object (EnvoyFilter/WasmPlugin) writes in opted-in namespaces by action (apply, delete) and result",
            m.writes.clone(),
        );
        m
    }

    fn count(&self, action: &str, ok: bool) {
        self.writes
            .get_or_create(&DataPlaneLabels {
                action: action.into(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }
}

/// Settings of the namespace switch.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    pub data_plane: DataPlane,
    /// Server-side-apply field manager ([`DEFAULT_FIELD_MANAGER`]).
    pub field_manager: String,
    /// sha256 of the module the controller serves (pinned in the WasmPlugin).
    pub module_sha256: Option<String>,
    /// Istio sink settings used to undo what meshtune wrote in a namespace that opts out.
    pub sink: IstioSinkConfig,
    /// Time between two full reconciliations ([`DEFAULT_RESYNC`]).
    pub resync: Duration,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            data_plane: DataPlane::default(),
            field_manager: DEFAULT_FIELD_MANAGER.into(),
            module_sha256: None,
            sink: IstioSinkConfig::default(),
            resync: DEFAULT_RESYNC,
        }
    }
}

/// The namespace watch's state and writes.
pub struct NamespaceController {
    client: kube::Client,
    config: NamespaceConfig,
    gate: Arc<LabelGate>,
    leadership: Option<Leadership>,
    metrics: NamespaceMetrics,
    /// Namespaces whose data-plane object this replica applied since it leads.
    applied: tokio::sync::Mutex<BTreeSet<String>>,
    /// Namespaces buffered during a (re)list.
    listing: std::sync::Mutex<Option<BTreeSet<String>>>,
}

impl std::fmt::Debug for NamespaceController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceController")
            .field("config", &self.config)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl NamespaceController {
    pub fn new(
        client: kube::Client,
        config: NamespaceConfig,
        leadership: Option<Leadership>,
        metrics: NamespaceMetrics,
    ) -> Self {
        Self {
            client,
            config,
            gate: Arc::new(LabelGate::default()),
            leadership,
            metrics,
            applied: Default::default(),
            listing: Default::default(),
        }
    }

    /// The gate this watch keeps current (give it to the decision loop).
    pub fn gate(&self) -> Arc<LabelGate> {
        self.gate.clone()
    }

    fn leads(&self) -> bool {
        self.leadership.as_ref().is_none_or(Leadership::is_leader)
    }

    /// Handles one watch event: updates the gate, and when leading writes what changed
    /// (a namespace enabled → apply; disabled or deleted → remove; a completed (re)list →
    /// full reconciliation). Errors are logged and counted; the next resync retries.
    pub async fn handle(&self, event: watcher::Event<Namespace>) {
        match event {
            watcher::Event::Init => {
                *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(BTreeSet::new());
            }
            watcher::Event::InitApply(ns) => {
                if is_enabled(&ns) {
                    if let Some(l) = self
                        .listing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                    {
                        l.insert(ns.metadata.name.clone().unwrap_or_default());
                    }
                }
            }
            watcher::Event::InitDone => {
                let all = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                tracing::info!(enabled = ?all, "namespaces labelled {ENABLED_LABEL}=true");
                self.gate.replace(all);
                self.metrics.enabled.set(self.gate.enabled().len() as i64);
                self.reconcile(true).await;
            }
            watcher::Event::Apply(ns) | watcher::Event::Delete(ns)
                if ns.metadata.name.is_none() => {}
            watcher::Event::Apply(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let on = is_enabled(&ns);
                if self.gate.set(&name, on) {
                    tracing::info!(namespace = %name, enabled = on, "namespace switch changed");
                }
                self.metrics.enabled.set(self.gate.enabled().len() as i64);
                self.reconcile(false).await;
            }
            watcher::Event::Delete(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                if self.gate.set(&name, false) {
                    tracing::info!(namespace = %name, "enabled namespace deleted");
                }
                self.metrics.enabled.set(self.gate.enabled().len() as i64);
                self.reconcile(false).await;
            }
        }
    }

    /// Writes what [`plan`] says (leader only). `full`: re-apply every enabled namespace and
    /// list meshtune's data-plane objects everywhere to remove strays.
    pub async fn reconcile(&self, full: bool) {
        if !self.leads() || !self.gate.synced() {
            return;
        }
        let mut applied = self.applied.lock().await;
        let mut present = BTreeSet::new();
        if full {
            match self.list_data_plane().await {
                Ok(p) => present = p,
                Err(e) => {
                    tracing::warn!(error = %e, "listing meshtune's data-plane objects failed; strays are removed at the next resync")
                }
            }
        }
        for action in plan(&self.gate.enabled(), &applied, &present, full) {
            match action {
                NsAction::Apply(ns) => match self.apply(&ns).await {
                    Ok(()) => {
                        applied.insert(ns);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "applying the data-plane object failed; retried at the next resync")
                    }
                },
                NsAction::Remove(ns) => match self.remove(&ns).await {
                    Ok(()) => {
                        applied.remove(&ns);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "removing meshtune from a namespace failed; retried at the next resync")
                    }
                },
            }
        }
        if full {
            self.sweep_other_kind().await;
        }
    }

    /// Server-side applies the data-plane object in `namespace`.
    pub async fn apply(&self, namespace: &str) -> Result<(), NamespaceError> {
        let (Some(ar), Some(obj)) = (
            self.config.data_plane.resource(),
            render(
                self.config.data_plane,
                namespace,
                self.config.module_sha256.as_deref(),
            )?,
        ) else {
            return Ok(());
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let params = PatchParams::apply(&self.config.field_manager).force();
        let r = api
            .patch(DATA_PLANE_NAME, &params, &Patch::Apply(&obj))
            .await;
        self.metrics.count("apply", r.is_ok());
        r.map_err(|e| NamespaceError::Kube {
            what: format!("apply {} {namespace}/{DATA_PLANE_NAME}", ar.kind),
            source: Box::new(e),
        })?;
        tracing::info!(namespace, kind = %ar.kind, "data-plane object applied");
        Ok(())
    }

    /// Deletes the data-plane object in `namespace` (absent is fine) and undoes what meshtune
    /// wrote there (DestinationRules/VirtualServices).
    pub async fn remove(&self, namespace: &str) -> Result<(), NamespaceError> {
        if let Some(ar) = self.config.data_plane.resource() {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
            match api.delete(DATA_PLANE_NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    self.metrics.count("delete", true);
                    tracing::info!(namespace, kind = %ar.kind, "data-plane object deleted");
                }
                // Absent (never applied, or the namespace is gone): nothing to delete.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.metrics.count("delete", false);
                    return Err(NamespaceError::Kube {
                        what: format!("delete {} {namespace}/{DATA_PLANE_NAME}", ar.kind),
                        source: Box::new(e),
                    });
                }
            }
        }
        let done = meshtune_sinks::istio_undo::remove_namespace(
            &self.client,
            &self.config.sink,
            namespace,
            false,
        )
        .await
        .map_err(|e| NamespaceError::Undo {
            what: format!("undoing meshtune's objects in {namespace}"),
            reason: e.to_string(),
        })?;
        for r in &done {
            tracing::info!(object = %r, "namespace opted out: undone");
        }
        if let Some(f) = done.iter().find(|r| r.error().is_some()) {
            return Err(NamespaceError::Undo {
                what: format!("undoing meshtune's objects in {namespace}"),
                reason: f.to_string(),
            });
        }
        Ok(())
    }

    /// Deletes meshtune's data-plane objects of the kind not configured (left behind when
    /// `--data-plane` switched between WasmPlugin and EnvoyFilter, which would otherwise load
    /// the filter twice). `--data-plane none` leaves both kinds alone.
    async fn sweep_other_kind(&self) {
        let Some(ar) = self.config.data_plane.other().and_then(DataPlane::resource) else {
            return;
        };
        let present = match self.list_kind(&ar).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing the other data-plane kind failed; retried at the next resync");
                return;
            }
        };
        for namespace in present {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &namespace, &ar);
            match api.delete(DATA_PLANE_NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    self.metrics.count("delete", true);
                    tracing::info!(namespace, kind = %ar.kind, "data-plane object of the other kind deleted (--data-plane switched)");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.metrics.count("delete", false);
                    tracing::warn!(namespace, kind = %ar.kind, error = %e, "deleting the other data-plane kind failed; retried at the next resync");
                }
            }
        }
    }

    /// Namespaces holding a data-plane object of the configured kind labelled managed-by
    /// meshtune.
    async fn list_data_plane(&self) -> Result<BTreeSet<String>, NamespaceError> {
        match self.config.data_plane.resource() {
            Some(ar) => self.list_kind(&ar).await,
            None => Ok(BTreeSet::new()),
        }
    }

    /// Namespaces holding an object `meshtune` of kind `ar` labelled managed-by meshtune.
    async fn list_kind(&self, ar: &ApiResource) -> Result<BTreeSet<String>, NamespaceError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
        let list = api.list(&lp).await.map_err(|e| NamespaceError::Kube {
            what: format!("list {}", ar.plural),
            source: Box::new(e),
        })?;
        Ok(list
            .items
            .into_iter()
            .filter(|o| o.metadata.name.as_deref() == Some(DATA_PLANE_NAME))
            .filter_map(|o| o.metadata.namespace)
            .collect())
    }

    /// Watches Namespaces until `shutdown`: every event through [`Self::handle`], a full
    /// reconciliation when this replica starts leading and every `resync`. Watch errors are
    /// retried with kube-runtime's default backoff.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        use kube::runtime::WatchStreamExt;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        let mut leadership = self.leadership.clone();
        let mut was_leading = self.leads();
        let mut resync = tokio::time::interval(self.config.resync.max(Duration::from_secs(1)));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let became_leader = async {
                match &mut leadership {
                    Some(l) if !was_leading => l.until_leader().await,
                    Some(l) => {
                        l.until_follower().await;
                        std::future::pending::<()>().await
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => self.handle(ev).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
                    None => return,
                },
                _ = resync.tick() => self.reconcile(true).await,
                _ = became_leader => {
                    was_leading = true;
                    // Whatever a previous leader did, start from a full reconciliation.
                    self.applied.lock().await.clear();
                    self.reconcile(true).await;
                }
            }
            if was_leading && !self.leads() {
                was_leading = false;
                self.applied.lock().await.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_applies_new_and_removes_disabled_or_stray() {
        let a = NsAction::Apply;
        let r = NsAction::Remove;
        assert_eq!(
            plan(&set(&["a", "b"]), &set(&["a", "c"]), &set(&[]), false),
            vec![a("b".into()), r("c".into())]
        );
        assert_eq!(
            plan(&set(&["a"]), &set(&["a"]), &set(&["a", "z"]), true),
            vec![a("a".into()), r("z".into())]
        );
        assert!(plan(&set(&[]), &set(&[]), &set(&[]), true).is_empty());
    }

    #[test]
    fn enabled_only_with_label_true_and_not_terminating() {
        let ns = |labels: serde_json::Value, deleting: bool| -> Namespace {
            let mut v = serde_json::json!({"metadata": {"name": "x", "labels": labels}});
            if deleting {
                v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            serde_json::from_value(v).unwrap()
        };
        assert!(is_enabled(&ns(
            serde_json::json!({ENABLED_LABEL: "true"}),
            false
        )));
        assert!(!is_enabled(&ns(
            serde_json::json!({ENABLED_LABEL: "false"}),
            false
        )));
        assert!(!is_enabled(&ns(serde_json::json!({}), false)));
        assert!(!is_enabled(&ns(
            serde_json::json!({ENABLED_LABEL: "true"}),
            true
        )));
    }

    #[test]
    fn renders_both_kinds_for_a_namespace() {
        let wp = render(DataPlane::Wasmplugin, "shop", Some("ab12"))
            .unwrap()
            .unwrap();
        assert_eq!(wp["kind"], "WasmPlugin");
        assert_eq!(wp["metadata"]["namespace"], "shop");
        assert_eq!(wp["metadata"]["name"], DATA_PLANE_NAME);
        assert_eq!(wp["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(wp["spec"]["sha256"], "ab12");
        let pinned = render(DataPlane::Wasmplugin, "shop", None)
            .unwrap()
            .unwrap();
        assert_ne!(
            pinned["spec"]["sha256"], "ab12",
            "the manifest's pin without a module"
        );
        let ef = render(DataPlane::Envoyfilter, "shop", Some("ab12"))
            .unwrap()
            .unwrap();
        assert_eq!(ef["kind"], "EnvoyFilter");
        assert_eq!(ef["metadata"]["namespace"], "shop");
        assert!(ef["spec"].get("sha256").is_none());
        assert!(render(DataPlane::None, "shop", None).unwrap().is_none());
    }

    #[test]
    fn label_gate_allows_only_enabled() {
        let g = LabelGate::default();
        assert!(!g.allows("a"));
        g.replace(set(&["a"]));
        assert!(g.allows("a") && !g.allows("b"));
        assert!(g.set("b", true));
        assert!(g.set("a", false));
        assert!(!g.allows("a") && g.allows("b"));
    }
}
