//! Undo and recovery of what the Istio sink wrote.
//!
//! meshtune's objects are found by what the sink records on them (`crate::istio`): owned
//! objects carry the label `app.kubernetes.io/managed-by: meshtune`, co-managed ones (objects
//! meshtune did not create) the annotation [`APPLIED_ANNOTATION`] without that label.
//!
//! - Undo: an owned object is deleted (DELETE with the listed `resourceVersion` as a
//!   precondition, so an object changed since it was read is left alone and reported). A
//!   co-managed object is restored: a server-side apply of the bare object under meshtune's
//!   field manager releases every field meshtune set (fields only meshtune owned disappear,
//!   fields another manager also owns keep their value), then any field recorded in
//!   [`PREVIOUS_ANNOTATION`] that is now missing is put back with a JSON merge patch (field
//!   manager [`RESTORE_FIELD_MANAGER`]). Per destination ([`remove_destination`], a rollback to
//!   "no object"), per namespace ([`remove_namespace`], a namespace opting out) or everywhere
//!   ([`remove_all`], observe mode and `meshtune uninstall`); each can be a dry run (reads only).
//! - Recovery: [`recover`] lists meshtune's objects and parses them back into the knobs in
//!   force per (object namespace, destination host) ([`crate::istio::knobs_from_objects`]).

use std::collections::BTreeMap;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use kube::Client;
use meshtune_core::Knobs;
use serde_json::{json, Value};

use crate::istio::{
    knobs_from_objects, object_name, API_VERSION, APPLIED_ANNOTATION, HOST_ANNOTATION,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREVIOUS_ANNOTATION,
};
use crate::istio_sink::{destination_rule_resource, virtual_service_resource, IstioSinkConfig};

/// Field manager of the merge patch that puts back co-managed fields the release removed.
/// Kubernetes API access of the undo paths, as (API group, resource, verbs): `list` and
/// `get_opt` to find meshtune's objects, `delete` of owned ones, `patch` (server-side apply
/// release and merge-patch restore) of co-managed ones. See [`crate::istio_sink::KUBE_ACCESS`].
pub const KUBE_ACCESS: &[(&str, &str, &[&str])] = &[
    (
        "networking.istio.io",
        "destinationrules",
        &["get", "list", "patch", "delete"],
    ),
    (
        "networking.istio.io",
        "virtualservices",
        &["get", "list", "patch", "delete"],
    ),
];

pub const RESTORE_FIELD_MANAGER: &str = "meshtune-restore";

/// Errors reading the objects to undo or recover (each names the request).
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// What undoing one object does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoAction {
    /// meshtune created it: delete it.
    Delete,
    /// meshtune co-manages it: release meshtune's fields and restore the previous ones.
    Restore,
}

/// The result of undoing one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// `DestinationRule` or `VirtualService`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub action: UndoAction,
    /// Planned only (dry run): nothing was sent.
    pub dry_run: bool,
    /// Why the action failed (the object stays as it was).
    pub failed: Option<String>,
}

impl Removal {
    /// The failure message, if the action failed.
    pub fn error(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match (self.action, self.dry_run, self.failed.is_some()) {
            (UndoAction::Delete, true, _) => "would delete",
            (UndoAction::Restore, true, _) => "would restore",
            (UndoAction::Delete, false, false) => "deleted",
            (UndoAction::Restore, false, false) => "restored",
            (UndoAction::Delete, false, true) => "failed to delete",
            (UndoAction::Restore, false, true) => "failed to restore",
        };
        write!(f, "{verb} {} {}/{}", self.kind, self.namespace, self.name)?;
        if let Some(e) = &self.failed {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// Whether meshtune created `obj` (it carries the managed-by label).
pub fn is_owned(obj: &DynamicObject) -> bool {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// Whether meshtune co-manages `obj` (not owned, but meshtune recorded what it set).
pub fn is_co_managed(obj: &DynamicObject) -> bool {
    !is_owned(obj) && annotation(obj, APPLIED_ANNOTATION).is_some()
}

fn annotation<'a>(obj: &'a DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The destination host an object of meshtune's configures: its host annotation, else its
/// `spec.host` (DestinationRule) or first `spec.hosts` entry (VirtualService).
pub fn destination_of(obj: &DynamicObject) -> Option<String> {
    annotation(obj, HOST_ANNOTATION)
        .map(str::to_string)
        .or_else(|| obj.data["spec"]["host"].as_str().map(str::to_string))
        .or_else(|| obj.data["spec"]["hosts"][0].as_str().map(str::to_string))
}

/// The two kinds the Istio sink writes.
fn kinds() -> [ApiResource; 2] {
    [destination_rule_resource(), virtual_service_resource()]
}

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> UndoError {
    move |source| UndoError::Kube { what, source }
}

/// Sets `value` at JSON pointer `path` in `root`, creating objects on the way.
fn set_at(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().expect("made an object above");
        if i + 1 == parts.len() {
            map.insert(p.to_string(), value);
            return;
        }
        cur = map.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

/// The merge patch that puts back what `previous` (a [`PREVIOUS_ANNOTATION`] value) recorded
/// and `now` (the object after meshtune released its fields) lacks; `None` when nothing is
/// missing. Fields present now are left alone (another manager owns them).
pub fn restore_patch(previous: &str, now: &Value) -> Option<Value> {
    let previous: BTreeMap<String, Value> = serde_json::from_str(previous).ok()?;
    let mut patch = json!({});
    for (path, value) in previous {
        if !value.is_null() && now.pointer(&path).is_none_or(Value::is_null) {
            set_at(&mut patch, &path, value);
        }
    }
    (patch != json!({})).then_some(patch)
}

/// Undoes one object of meshtune's (`None` if `obj` is neither owned nor co-managed).
async fn undo_object(
    client: &Client,
    config: &IstioSinkConfig,
    ar: &ApiResource,
    obj: &DynamicObject,
    dry_run: bool,
) -> Option<Removal> {
    let action = if is_owned(obj) {
        UndoAction::Delete
    } else if is_co_managed(obj) {
        UndoAction::Restore
    } else {
        return None;
    };
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut removal = Removal {
        kind: ar.kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        action,
        dry_run,
        failed: None,
    };
    if dry_run {
        return Some(removal);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, ar);
    let result = match action {
        UndoAction::Delete => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: obj.metadata.resource_version.clone(),
                    uid: obj.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                // Already gone: nothing left to undo.
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        UndoAction::Restore => restore(&api, config, ar, obj).await,
    };
    if let Err(e) = result {
        tracing::warn!(object = %removal, error = %e, "undo failed");
        removal.failed = Some(e);
    } else {
        tracing::info!(object = %removal, "undone");
    }
    Some(removal)
}

async fn restore(
    api: &Api<DynamicObject>,
    config: &IstioSinkConfig,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<(), String> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let bare = json!({"apiVersion": API_VERSION, "kind": ar.kind,
        "metadata": {"name": name, "namespace": obj.metadata.namespace}});
    let after = api
        .patch(
            name,
            &PatchParams::apply(&config.field_manager),
            &Patch::Apply(&bare),
        )
        .await
        .map_err(|e| format!("releasing meshtune's fields: {e}"))?;
    let Some(previous) = annotation(obj, PREVIOUS_ANNOTATION) else {
        return Ok(());
    };
    let now = json!({"spec": after.data["spec"]});
    if let Some(patch) = restore_patch(previous, &now) {
        let params = PatchParams {
            field_manager: Some(RESTORE_FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("restoring the previous fields: {e}"))?;
    }
    Ok(())
}

/// Undoes what meshtune wrote for destination `host` in `namespace` (its DestinationRule and
/// VirtualService, by name; objects of meshtune's for another host are left alone).
pub async fn remove_destination(
    client: &Client,
    config: &IstioSinkConfig,
    namespace: &str,
    host: &str,
    dry_run: bool,
) -> Result<Vec<Removal>, UndoError> {
    let name = object_name(host, namespace);
    let mut out = Vec::new();
    for ar in kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let obj = api
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("GET {} {namespace}/{name}", ar.kind)))?;
        let Some(obj) = obj else { continue };
        if annotation(&obj, HOST_ANNOTATION).is_some_and(|h| h != host) {
            continue;
        }
        out.extend(undo_object(client, config, &ar, &obj, dry_run).await);
    }
    Ok(out)
}

async fn list(
    client: &Client,
    ar: &ApiResource,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>, UndoError> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let where_ = namespace.map_or("all namespaces".to_string(), |n| n.to_string());
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("LIST {} in {where_}", ar.plural)))?
        .items;
    Ok(items
        .into_iter()
        .filter(|o| is_owned(o) || is_co_managed(o))
        .collect())
}

/// Undoes everything meshtune wrote in `namespace` (a namespace opting out).
pub async fn remove_namespace(
    client: &Client,
    config: &IstioSinkConfig,
    namespace: &str,
    dry_run: bool,
) -> Result<Vec<Removal>, UndoError> {
    remove_in(client, config, Some(namespace), dry_run).await
}

/// Undoes everything meshtune wrote in every namespace (observe mode, `meshtune uninstall`).
pub async fn remove_all(
    client: &Client,
    config: &IstioSinkConfig,
    dry_run: bool,
) -> Result<Vec<Removal>, UndoError> {
    remove_in(client, config, None, dry_run).await
}

async fn remove_in(
    client: &Client,
    config: &IstioSinkConfig,
    namespace: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Removal>, UndoError> {
    let mut out = Vec::new();
    for ar in kinds() {
        for obj in list(client, &ar, namespace).await? {
            out.extend(undo_object(client, config, &ar, &obj, dry_run).await);
        }
    }
    Ok(out)
}

/// Knobs in force recovered from meshtune's objects for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// Namespace of the objects.
    pub namespace: String,
    /// Destination host.
    pub destination: String,
    pub knobs: Knobs,
    /// The objects read (`DestinationRule ns/name`, ...).
    pub objects: Vec<String>,
}

/// Reads the knobs in force back from every object meshtune owns or co-manages (in
/// `namespace`, or everywhere), one entry per (object namespace, destination host), sorted.
pub async fn recover(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<Recovered>, UndoError> {
    type Pair = (Option<Value>, Option<Value>, Vec<String>);
    let mut by_dest: BTreeMap<(String, String), Pair> = BTreeMap::new();
    for (i, ar) in kinds().into_iter().enumerate() {
        for obj in list(client, &ar, namespace).await? {
            let Some(host) = destination_of(&obj) else {
                continue;
            };
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            let id = format!(
                "{} {ns}/{}",
                ar.kind,
                obj.metadata.name.as_deref().unwrap_or("?")
            );
            let entry = by_dest.entry((ns, host)).or_default();
            let spec = json!({"spec": obj.data["spec"]});
            if i == 0 {
                entry.0 = Some(spec);
            } else {
                entry.1 = Some(spec);
            }
            entry.2.push(id);
        }
    }
    Ok(by_dest
        .into_iter()
        .map(|((namespace, destination), (dr, vs, objects))| Recovered {
            knobs: knobs_from_objects(dr.as_ref(), vs.as_ref()),
            namespace,
            destination,
            objects,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_puts_back_only_what_is_missing() {
        let previous = json!({
            "/spec/trafficPolicy/connectionPool": null,
            "/spec/trafficPolicy/outlierDetection": {"consecutive5xxErrors": 7},
        })
        .to_string();
        let released = json!({"spec": {"host": "r"}});
        assert_eq!(
            restore_patch(&previous, &released),
            Some(
                json!({"spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}}}})
            )
        );
        let kept =
            json!({"spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3}}}});
        assert_eq!(
            restore_patch(&previous, &kept),
            None,
            "another manager's value stays"
        );
        assert_eq!(restore_patch("not json", &released), None);
    }

    #[test]
    fn removals_say_what_they_did() {
        let mut r = Removal {
            kind: "DestinationRule".into(),
            namespace: "ns".into(),
            name: "reviews".into(),
            action: UndoAction::Delete,
            dry_run: true,
            failed: None,
        };
        assert_eq!(r.to_string(), "would delete DestinationRule ns/reviews");
        r.dry_run = false;
        assert_eq!(r.to_string(), "deleted DestinationRule ns/reviews");
        r.failed = Some("409".into());
        assert_eq!(
            r.to_string(),
            "failed to delete DestinationRule ns/reviews: 409"
        );
    }
}
