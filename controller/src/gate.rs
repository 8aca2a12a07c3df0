//! Which namespaces meshtune may tune: the [`NamespaceGate`] trait and its static
//! implementation from configuration (`--tune-namespaces`).
//!
//! The gate is asked once per decision cycle for every selected key's reporter namespace (the
//! namespace whose sidecars the decision would affect and where the Istio sink would write).
//! A key whose namespace is not enabled is dropped before inference: nothing is pushed,
//! recommended or hinted for it, and `meshtune_tuning_refused_total{reason="namespace_not_enabled"}`
//! counts it. A later implementation (issue 11) replaces the static list with a watch of a
//! namespace label.

use std::collections::BTreeSet;

/// Decides whether the sidecars of a namespace may be tuned.
pub trait NamespaceGate: Send + Sync + std::fmt::Debug {
    /// True when keys of reporter namespace `namespace` may be decided for.
    fn allows(&self, namespace: &str) -> bool;

    /// False while the gate does not know yet (a watch before its first list): the decision
    /// loop then decides nothing, rather than forgetting the knobs in force of namespaces it
    /// has not seen yet.
    fn synced(&self) -> bool {
        true
    }
}

/// The namespaces given in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StaticGate {
    /// Every namespace (`--tune-namespaces '*'`; the default without the Istio sink).
    #[default]
    All,
    /// Only these (an empty set: none, the default with the Istio sink).
    Only(BTreeSet<String>),
}

/// Errors parsing `--tune-namespaces`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    #[error("--tune-namespaces: {0:?} is not a namespace name (DNS-1123 label) or `*`")]
    BadName(String),
}

impl StaticGate {
    /// Parses the values of `--tune-namespaces` (each a comma-separated list): `*` alone
    /// enables every namespace; otherwise each entry must be a DNS-1123 label.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, GateError> {
        let mut set = BTreeSet::new();
        let mut all = false;
        for v in values {
            for name in v
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if name == "*" {
                    all = true;
                } else if is_dns1123_label(name) {
                    set.insert(name.to_string());
                } else {
                    return Err(GateError::BadName(name.to_string()));
                }
            }
        }
        Ok(if all {
            StaticGate::All
        } else {
            StaticGate::Only(set)
        })
    }

    /// For logs: `*` or the comma-joined names (`<none>` when empty).
    pub fn describe(&self) -> String {
        match self {
            StaticGate::All => "*".into(),
            StaticGate::Only(s) if s.is_empty() => "<none>".into(),
            StaticGate::Only(s) => s.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

impl NamespaceGate for StaticGate {
    fn allows(&self, namespace: &str) -> bool {
        match self {
            StaticGate::All => true,
            StaticGate::Only(s) => s.contains(namespace),
        }
    }
}

/// A Kubernetes namespace name: 1–63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_star_and_refuses_bad_names() {
        let g = StaticGate::parse(&["a,b", " c "]).unwrap();
        assert!(g.allows("a") && g.allows("b") && g.allows("c"));
        assert!(!g.allows("d"));
        assert_eq!(g.describe(), "a,b,c");
        let none = StaticGate::parse::<&str>(&[]).unwrap();
        assert!(!none.allows("default"));
        assert_eq!(none.describe(), "<none>");
        assert_eq!(StaticGate::parse(&["a,*"]).unwrap(), StaticGate::All);
        assert!(StaticGate::All.allows("anything"));
        assert_eq!(
            StaticGate::parse(&["ok,Bad_Name"]).unwrap_err(),
            GateError::BadName("Bad_Name".into())
        );
        assert!(StaticGate::parse(&["-x"]).is_err());
    }
}
