//! [`DestKey`]: the key of everything meshtune aggregates, decides and hints — the reporter's
//! (client's) namespace and the destination cluster.
//!
//! A reporter authenticated as namespace X only ever feeds, moves and receives the state of
//! keys whose `namespace` is X: aggregates, decisions and hints are per key, and the Istio sink
//! writes the client-side objects of a key into `namespace` with `exportTo: ["."]`, so they
//! apply only to sidecars in that namespace. At ingest `cluster` is the Envoy cluster name as
//! reported; after the decision step's naming it is the destination (the Istio host, or the
//! plain Envoy cluster name).

use serde::{Deserialize, Serialize};

use crate::DEFAULT_NAMESPACE;

/// (reporter namespace, destination cluster). Ordered by namespace, then cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct DestKey {
    /// Namespace of the reporting (client) sidecars; never empty (see [`DestKey::new`]).
    pub namespace: String,
    /// Envoy cluster name as reported, or the destination it maps to.
    pub cluster: String,
}

impl DestKey {
    /// A key; an empty `namespace` becomes [`DEFAULT_NAMESPACE`] (a plain Envoy reporter
    /// configured without one).
    pub fn new(namespace: impl Into<String>, cluster: impl Into<String>) -> Self {
        let namespace: String = namespace.into();
        Self {
            namespace: if namespace.is_empty() {
                DEFAULT_NAMESPACE.to_string()
            } else {
                namespace
            },
            cluster: cluster.into(),
        }
    }

    /// The same namespace with another cluster (a reported cluster's destination).
    pub fn with_cluster(&self, cluster: impl Into<String>) -> Self {
        Self {
            namespace: self.namespace.clone(),
            cluster: cluster.into(),
        }
    }
}

/// The namespace a key gets for a reporter claiming `namespace`: `namespace` itself, or
/// [`DEFAULT_NAMESPACE`] when it is empty (as [`DestKey::new`]).
pub fn reporter_namespace(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

impl std::fmt::Display for DestKey {
    /// `namespace/cluster` (a namespace never contains `/`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_namespace_is_the_default_and_keys_order_by_namespace_first() {
        let k = DestKey::new("", "c");
        assert_eq!(k.namespace, DEFAULT_NAMESPACE);
        assert_eq!(k.to_string(), "default/c");
        assert_eq!(reporter_namespace(""), DEFAULT_NAMESPACE);
        assert_eq!(reporter_namespace("x"), "x");
        let mut v = [DestKey::new("b", "a"), DestKey::new("a", "z")];
        v.sort();
        assert_eq!(v[0], DestKey::new("a", "z"));
        assert_eq!(
            DestKey::new("x", "c").with_cluster("d"),
            DestKey::new("x", "d")
        );
        assert_ne!(DestKey::new("x", "c"), DestKey::new("y", "c"));
    }
}
