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
//! - anything else → refused (nothing is written for that destination).

use std::sync::Arc;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

use crate::envoy::DEFAULT_RETRY_ON;
use crate::istio::{
    destination_rule, virtual_service, IstioTarget, HOST_ANNOTATION, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
};
use crate::schema::CrdSchemas;
use crate::sink::{ApplyFuture, ApplyReport, Decision, Outcome, Sink};

/// Default server-side-apply field manager.
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

/// Applies DestinationRule/VirtualService objects with kube-rs.
pub struct IstioSink {
    client: Client,
    config: IstioSinkConfig,
    schemas: Option<Arc<CrdSchemas>>,
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
        }
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
            let mut t = target.clone();
            t.owned = match own {
                Ownership::Owned => true,
                Ownership::CoManaged => false,
                Ownership::Refused(reason) => return Err(Outcome::Refused { reason }),
            };
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

    async fn apply_one(&self, d: &Decision) -> Outcome {
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
