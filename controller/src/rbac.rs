//! The Kubernetes API access the controller needs (least privilege: what its code calls, per
//! resource), collected from the lists kept next to the code that makes the calls. The rendered
//! Role/ClusterRole of `manifests/` must grant exactly this (`controller/tests/rbac.rs`).

use std::collections::{BTreeMap, BTreeSet};

/// Where a permission must be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every namespace (a ClusterRole bound by a ClusterRoleBinding).
    Cluster,
    /// Only the controller's own namespace (a Role): model ConfigMap, leader Lease.
    ControllerNamespace,
}

/// (API group, resource, verbs) as kept next to the code.
pub type Access = (&'static str, &'static str, &'static [&'static str]);

/// Every list with its scope.
pub fn sources() -> Vec<(Scope, &'static str, &'static [Access])> {
    vec![
        (
            Scope::Cluster,
            "meshtune_sinks::istio_sink",
            meshtune_sinks::istio_sink::KUBE_ACCESS,
        ),
        (
            Scope::Cluster,
            "meshtune_sinks::istio_undo",
            meshtune_sinks::istio_undo::KUBE_ACCESS,
        ),
        (
            Scope::Cluster,
            "meshtune_controller::namespaces",
            crate::namespaces::KUBE_ACCESS,
        ),
        (
            Scope::Cluster,
            "meshtune_controller::cluster_knobs",
            crate::cluster_knobs::KUBE_ACCESS,
        ),
        (
            Scope::Cluster,
            "meshtune_controller::policies",
            crate::policies::KUBE_ACCESS,
        ),
        (
            Scope::Cluster,
            "meshtune_controller::review",
            crate::review::KUBE_ACCESS,
        ),
        (
            Scope::ControllerNamespace,
            "meshtune_policy::configmap",
            meshtune_policy::configmap::CONTROLLER_KUBE_ACCESS,
        ),
        (
            Scope::ControllerNamespace,
            "meshtune_controller::leader",
            crate::leader::KUBE_ACCESS,
        ),
    ]
}

/// The verbs needed per (scope, API group, resource): the union of [`sources`].
pub fn required() -> BTreeMap<(Scope, String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(Scope, String, String), BTreeSet<String>> = BTreeMap::new();
    for (scope, _, list) in sources() {
        for (group, resource, verbs) in list {
            out.entry((scope, group.to_string(), resource.to_string()))
                .or_default()
                .extend(verbs.iter().map(|v| v.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_objects_union_read_apply_and_undo() {
        let r = required();
        let dr = &r[&(
            Scope::Cluster,
            "networking.istio.io".to_string(),
            "destinationrules".to_string(),
        )];
        let want: BTreeSet<String> = ["get", "list", "watch", "patch", "create", "delete"]
            .map(String::from)
            .into();
        assert_eq!(dr, &want);
        assert!(!r
            .keys()
            .any(|(s, _, res)| *s == Scope::Cluster && res == "configmaps"));
    }
}
