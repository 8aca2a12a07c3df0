//! Istio sink: server-side apply (field manager `meshtune`) of one DestinationRule and one
//! VirtualService per destination through the Kubernetes API.
//!
//! Ownership rules (checked with a GET of both objects before anything is written):
//! - object absent → created, labelled `app.kubernetes.io/managed-by: meshtune`, applied with
//!   `force` (meshtune owns it);
//! - object labelled managed-by meshtune (and, if annotated, for the same host) → applied with
//!   `force`;
//! - object not labelled, but its host is in `allowed_hosts` or its namespace in
//!   `opted_in_namespaces` → co-managed: applied WITHOUT `force` and without the label, so a
//!   field another manager owns makes the API server answer 409 and the decision fails instead
//!   of silently taking the field over;
//! - anything else → refused (nothing is written for that destination);
//! - another object of the same kind in the namespace (any name, any owner) that already
//!   configures the host → refused: two DestinationRules or VirtualServices for one host make
//!   Istio's behaviour depend on merge order, so meshtune leaves that host alone;
//! - an object meshtune would own, where the sidecars of the namespace now use another
//!   namespace's object for the host that sets more than meshtune's object carries (subsets,
//!   TLS, load balancing, matches, several routes, ...; [`ShadowCheck`], from the cluster's
//!   own objects) → refused: istiod takes the client namespace's own object first and wholesale,
//!   so writing it would silently drop those settings for these sidecars.
//!
//! Every applied object records what meshtune set, when it applied it (RFC 3339,
//! [`crate::istio::APPLIED_AT_ANNOTATION`], read back by restart recovery as the last push) and,
//! when co-managed, what was there before (annotations, see [`crate::istio`]). A decision whose knobs are Istio's defaults
//! ([`Decision::is_removal`]: e.g. a rollback to "no object") is not rendered: it removes what
//! meshtune wrote for the destination ([`crate::istio_undo`]: owned objects are deleted,
//! co-managed fields restored).

use std::sync::Arc;

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;
use serde_json::Value;

use crate::envoy::DEFAULT_RETRY_ON;
use crate::istio::{
    destination_rule, object_name, previous_fields, virtual_service, IstioTarget, HOST_ANNOTATION,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREVIOUS_ANNOTATION,
};
use crate::schema::CrdSchemas;
use crate::sink::{ApplyFuture, ApplyReport, Decision, Outcome, Sink};

/// Default server-side-apply field manager.
/// Kubernetes API access of the Istio sink, as (API group, resource, verbs): it reads
/// (`get_opt` of the target, `list` of the namespace's objects for conflicts) and server-side
/// applies (`patch`, which `create`s an object that does not exist yet). Kept next to the code
/// that makes the calls; `meshtune_controller::rbac` collects it and `controller/tests/rbac.rs`
/// compares it with the rendered RBAC of `manifests/`.
pub const KUBE_ACCESS: &[(&str, &str, &[&str])] = &[
    (
        "networking.istio.io",
        "destinationrules",
        &["get", "list", "patch", "create"],
    ),
    (
        "networking.istio.io",
        "virtualservices",
        &["get", "list", "patch", "create"],
    ),
];

pub const DEFAULT_FIELD_MANAGER: &str = "meshtune";

/// Configuration of [`IstioSink`].
#[derive(Debug, Clone, PartialEq)]
pub struct IstioSinkConfig {
    /// Field manager for server-side apply ([`DEFAULT_FIELD_MANAGER`]).
    pub field_manager: String,
    /// Hosts whose existing, not meshtune-labelled objects meshtune may co-manage.
    pub allowed_hosts: Vec<String>,
    /// Namespaces whose existing, not meshtune-labelled objects meshtune may co-manage.
    pub opted_in_namespaces: Vec<String>,
    /// `retryOn` of VirtualService retries ([`DEFAULT_RETRY_ON`]).
    pub retry_on: String,
}

impl Default for IstioSinkConfig {
    fn default() -> Self {
        Self {
            field_manager: DEFAULT_FIELD_MANAGER.to_string(),
            allowed_hosts: Vec::new(),
            opted_in_namespaces: Vec::new(),
            retry_on: DEFAULT_RETRY_ON.to_string(),
        }
    }
}

/// The two kinds this sink writes.
pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"),
        "destinationrules",
    )
}

/// See [`destination_rule_resource`].
pub fn virtual_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

/// How meshtune may write an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Absent or labelled managed-by meshtune: apply with force, with the label.
    Owned,
    /// Allowed by host/namespace opt-in: apply without force and without the label.
    CoManaged,
    /// Not meshtune's: do not write.
    Refused(String),
}

/// Decides how meshtune may write `existing` (the object now in the cluster, if any) for
/// `host` in `namespace`. Pure; see the module docs for the rules.
pub fn ownership(
    config: &IstioSinkConfig,
    kind: &str,
    host: &str,
    namespace: &str,
    existing: Option<&DynamicObject>,
) -> Ownership {
    let Some(obj) = existing else {
        return Ownership::Owned;
    };
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    let labelled = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE);
    if labelled {
        let annotated = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HOST_ANNOTATION));
        return match annotated {
            Some(h) if h != host => Ownership::Refused(format!(
                "{kind} {namespace}/{name} is managed by meshtune for host {h:?}, not {host:?} (name collision)"
            )),
            _ => Ownership::Owned,
        };
    }
    if config.allowed_hosts.iter().any(|h| h == host)
        || config.opted_in_namespaces.iter().any(|n| n == namespace)
    {
        return Ownership::CoManaged;
    }
    Ownership::Refused(format!(
        "{kind} {namespace}/{name} exists and is not managed by meshtune (no label \
         {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}); add host {host:?} to allowed_hosts or namespace \
         {namespace:?} to opted_in_namespaces to let meshtune co-manage it"
    ))
}

fn same_host(a: &str, b: &str, namespace: &str) -> bool {
    a == b || object_name(a, namespace) == object_name(b, namespace)
}

/// The first object in `items` other than `own_name` that already configures `host`
/// (`spec.host` of a DestinationRule, `spec.hosts` of a VirtualService), as `kind ns/name`.
pub fn conflicting_object(
    kind: &str,
    host: &str,
    namespace: &str,
    own_name: &str,
    items: &[DynamicObject],
) -> Option<String> {
    items
        .iter()
        .filter(|o| o.metadata.name.as_deref() != Some(own_name))
        .find(|o| {
            let spec = &o.data["spec"];
            let hosts: Vec<&str> = match kind {
                "DestinationRule" => spec["host"].as_str().into_iter().collect(),
                _ => spec["hosts"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default(),
            };
            hosts.iter().any(|h| same_host(h, host, namespace))
        })
        .map(|o| {
            format!(
                "{kind} {namespace}/{}",
                o.metadata.name.as_deref().unwrap_or("?")
            )
        })
}

/// Applies DestinationRule/VirtualService objects with kube-rs.
/// Existing objects (by kind and name, per namespace) that their namespace lets meshtune
/// co-manage at run time (a `MeshtunePolicy`'s `spec.coManage`), besides `allowed_hosts` and
/// `opted_in_namespaces` of [`IstioSinkConfig`].
pub trait CoManageAllowlist: Send + Sync {
    /// Whether the existing `kind` (`DestinationRule`, `VirtualService`) `name` in `namespace`
    /// may be co-managed.
    fn allows(&self, namespace: &str, kind: &str, name: &str) -> bool;
}

/// Which object of another namespace an object of meshtune's would hide
/// ([`crate::istio_foreign::Index::shadowed`] over the cluster's objects).
pub trait ShadowCheck: Send + Sync {
    /// For an owned `kind` (`DestinationRule`, `VirtualService`) for `host` in `namespace`:
    /// the object it would replace for that namespace's sidecars and the fields meshtune's
    /// object would drop, if any.
    fn shadowed(&self, namespace: &str, kind: &str, host: &str) -> Option<(String, Vec<String>)>;
}

pub struct IstioSink {
    client: Client,
    config: IstioSinkConfig,
    schemas: Option<Arc<CrdSchemas>>,
    co_manage: Option<Arc<dyn CoManageAllowlist>>,
    shadow: Option<Arc<dyn ShadowCheck>>,
}

impl std::fmt::Debug for IstioSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioSink")
            .field("config", &self.config)
            .field("schemas", &self.schemas.is_some())
            .finish()
    }
}

type Renderer = fn(&IstioTarget, &meshtune_core::Knobs) -> Value;

struct Planned {
    api: Api<DynamicObject>,
    kind: &'static str,
    name: String,
    object: Value,
    force: bool,
}

impl IstioSink {
    pub fn new(client: Client, config: IstioSinkConfig) -> Self {
        Self {
            client,
            config,
            schemas: None,
            co_manage: None,
            shadow: None,
        }
    }

    /// Refuses owned objects that would hide another namespace's richer object
    /// ([`ShadowCheck`]).
    pub fn with_shadow_check(mut self, check: Arc<dyn ShadowCheck>) -> Self {
        self.shadow = Some(check);
        self
    }

    /// Adds a run-time co-manage allowlist (checked for objects [`ownership`] refuses).
    pub fn with_co_manage(mut self, allow: Arc<dyn CoManageAllowlist>) -> Self {
        self.co_manage = Some(allow);
        self
    }

    /// Validates every rendered object against these CRD schemas before applying it (a
    /// failing object is reported as `Failed`, nothing is sent).
    pub fn with_schemas(mut self, schemas: Arc<CrdSchemas>) -> Self {
        self.schemas = Some(schemas);
        self
    }

    async fn plan(&self, d: &Decision) -> Result<Vec<Planned>, Outcome> {
        let mut target = IstioTarget::new(&d.destination, &d.namespace);
        target.retry_on = self.config.retry_on.clone();
        // When this push happened: restart recovery reads it back as the last push (dwell).
        target.applied_at = Some(crate::istio::applied_at_value(std::time::SystemTime::now()));
        let kinds: [(ApiResource, Renderer); 2] = [
            (destination_rule_resource(), destination_rule),
            (virtual_service_resource(), virtual_service),
        ];
        let mut planned = Vec::new();
        for (ar, render) in kinds {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &d.namespace, &ar);
            let existing = api
                .get_opt(&target.name)
                .await
                .map_err(|e| Outcome::Failed {
                    error: format!("GET {} {}/{}: {e}", ar.kind, d.namespace, target.name),
                })?;
            let own = ownership(
                &self.config,
                &ar.kind,
                &d.destination,
                &d.namespace,
                existing.as_ref(),
            );
            let own = match own {
                Ownership::Refused(_)
                    if existing.is_some()
                        && self
                            .co_manage
                            .as_ref()
                            .is_some_and(|a| a.allows(&d.namespace, &ar.kind, &target.name))
                        && !existing.as_ref().is_some_and(crate::istio_undo::is_owned) =>
                {
                    Ownership::CoManaged
                }
                o => o,
            };
            let mut t = target.clone();
            t.owned = match own {
                Ownership::Owned => true,
                Ownership::CoManaged => false,
                Ownership::Refused(reason) => return Err(Outcome::Refused { reason }),
            };
            if let Some((other, fields)) = t
                .owned
                .then_some(self.shadow.as_ref())
                .flatten()
                .and_then(|s| s.shadowed(&d.namespace, &ar.kind, &d.destination))
            {
                return Err(Outcome::Refused {
                    reason: format!(
                        "a {kind} {ns}/{name} of meshtune's would replace {other} for the \
                         sidecars of {ns} (istiod takes the client namespace's own first), \
                         dropping what it sets beyond meshtune's knobs: {fields}; to tune this \
                         host, create {kind} {ns}/{name} with those settings and list {name:?} \
                         in the namespace's MeshtunePolicy spec.coManage",
                        kind = ar.kind,
                        ns = d.namespace,
                        name = target.name,
                        fields = fields.join(", "),
                    ),
                });
            }
            if !t.owned {
                // What was there before meshtune first wrote this object: recorded once, then
                // carried over (meshtune owns the annotation; leaving it out would remove it).
                t.previous = existing.as_ref().map(|o| {
                    o.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(PREVIOUS_ANNOTATION))
                        .cloned()
                        .unwrap_or_else(|| {
                            previous_fields(&ar.kind, &serde_json::json!({"spec": o.data["spec"]}))
                        })
                });
            }
            let all = api
                .list(&ListParams::default())
                .await
                .map_err(|e| Outcome::Failed {
                    error: format!("LIST {} in {}: {e}", ar.plural, d.namespace),
                })?;
            if let Some(other) = conflicting_object(
                &ar.kind,
                &d.destination,
                &d.namespace,
                &target.name,
                &all.items,
            ) {
                return Err(Outcome::Refused {
                    reason: format!(
                        "{other} already configures host {:?}; a second {} for the same host \
                         would conflict, so meshtune leaves it alone",
                        d.destination, ar.kind
                    ),
                });
            }
            let object = render(&t, &d.knobs);
            if let Some(schemas) = &self.schemas {
                schemas.validate(&object).map_err(|e| Outcome::Failed {
                    error: e.to_string(),
                })?;
            }
            planned.push(Planned {
                api,
                kind: if ar.kind == "DestinationRule" {
                    "DestinationRule"
                } else {
                    "VirtualService"
                },
                name: t.name.clone(),
                object,
                force: t.owned,
            });
        }
        Ok(planned)
    }

    /// The client this sink writes with (for [`crate::istio_undo`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This sink's configuration.
    pub fn config(&self) -> &IstioSinkConfig {
        &self.config
    }

    async fn apply_one(&self, d: &Decision) -> Outcome {
        if d.is_removal() {
            return match crate::istio_undo::remove_destination(
                &self.client,
                &self.config,
                &d.namespace,
                &d.destination,
                false,
            )
            .await
            {
                Ok(done) => {
                    if let Some(failed) = done.iter().find(|r| r.error().is_some()) {
                        return Outcome::Failed {
                            error: failed.to_string(),
                        };
                    }
                    Outcome::Applied {
                        objects: done.iter().map(|r| r.to_string()).collect(),
                    }
                }
                Err(e) => Outcome::Failed {
                    error: e.to_string(),
                },
            };
        }
        let planned = match self.plan(d).await {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let mut objects = Vec::new();
        for p in planned {
            let mut params = PatchParams::apply(&self.config.field_manager);
            if p.force {
                params = params.force();
            }
            let id = format!("{} {}/{}", p.kind, d.namespace, p.name);
            if let Err(e) = p
                .api
                .patch(&p.name, &params, &Patch::Apply(&p.object))
                .await
            {
                return Outcome::Failed {
                    error: format!("apply {id}: {e}"),
                };
            }
            tracing::info!(object = %id, force = p.force, "applied");
            objects.push(id);
        }
        Outcome::Applied { objects }
    }
}

impl Sink for IstioSink {
    fn name(&self) -> &'static str {
        "istio"
    }

    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
        Box::pin(async move {
            let mut report = ApplyReport::default();
            for d in decisions {
                let outcome = self.apply_one(d).await;
                if let Outcome::Refused { reason } | Outcome::Failed { error: reason } = &outcome {
                    tracing::warn!(destination = %d.destination, namespace = %d.namespace, "{reason}");
                }
                report.push(d, outcome);
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, name: &str, spec: Value, labels: Option<Value>) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "labels": labels.unwrap_or(json!({}))},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn ownership_rules() {
        let cfg = IstioSinkConfig::default();
        let h = "reviews.ns.svc.cluster.local";
        assert_eq!(
            ownership(&cfg, "DestinationRule", h, "ns", None),
            Ownership::Owned
        );
        let ours = obj(
            "DestinationRule",
            "reviews",
            json!({"host": h}),
            Some(json!({MANAGED_BY_LABEL: MANAGED_BY_VALUE})),
        );
        assert_eq!(
            ownership(&cfg, "DestinationRule", h, "ns", Some(&ours)),
            Ownership::Owned
        );
        let theirs = obj("DestinationRule", "reviews", json!({"host": h}), None);
        let Ownership::Refused(reason) = ownership(&cfg, "DestinationRule", h, "ns", Some(&theirs))
        else {
            panic!("foreign object must be refused")
        };
        assert!(reason.contains("DestinationRule ns/reviews"), "{reason}");
        let allow_host = IstioSinkConfig {
            allowed_hosts: vec![h.into()],
            ..IstioSinkConfig::default()
        };
        assert_eq!(
            ownership(&allow_host, "DestinationRule", h, "ns", Some(&theirs)),
            Ownership::CoManaged
        );
        let allow_ns = IstioSinkConfig {
            opted_in_namespaces: vec!["ns".into()],
            ..IstioSinkConfig::default()
        };
        assert_eq!(
            ownership(&allow_ns, "DestinationRule", h, "ns", Some(&theirs)),
            Ownership::CoManaged
        );
        let mut collided = ours.clone();
        collided
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                HOST_ANNOTATION.into(),
                "reviews.other.svc.cluster.local".into(),
            );
        assert!(matches!(
            ownership(&cfg, "DestinationRule", h, "ns", Some(&collided)),
            Ownership::Refused(_)
        ));
    }

    #[test]
    fn other_objects_for_the_same_host_conflict() {
        let h = "reviews.ns.svc.cluster.local";
        let items = vec![
            obj("VirtualService", "reviews", json!({"hosts": [h]}), None),
            obj(
                "VirtualService",
                "ratings",
                json!({"hosts": ["ratings"]}),
                None,
            ),
        ];
        assert_eq!(
            conflicting_object("VirtualService", h, "ns", "reviews", &items),
            None
        );
        let items = vec![obj(
            "VirtualService",
            "reviews-canary",
            json!({"hosts": ["reviews"]}),
            None,
        )];
        assert_eq!(
            conflicting_object("VirtualService", h, "ns", "reviews", &items).as_deref(),
            Some("VirtualService ns/reviews-canary")
        );
        let items = vec![obj(
            "DestinationRule",
            "reviews-tls",
            json!({"host": "reviews.ns"}),
            None,
        )];
        assert!(conflicting_object("DestinationRule", h, "ns", "reviews", &items).is_some());
        let items = vec![obj(
            "DestinationRule",
            "x",
            json!({"host": "reviews.other"}),
            None,
        )];
        assert!(conflicting_object("DestinationRule", h, "ns", "reviews", &items).is_none());
    }
}
