//! Least privilege: the RBAC each kustomize overlay of `manifests/` renders (`kubectl
//! kustomize`) grants the controller's ServiceAccount exactly the verbs per resource that the
//! code's access lists name (`meshtune_controller::rbac::required`, collected from the lists next
//! to the calls) — nothing missing, nothing more — and every Role/ClusterRole is bound, every
//! binding's role and subjects exist, and the Deployment runs as that ServiceAccount.

use std::collections::{BTreeMap, BTreeSet};

use meshtune_controller::rbac::{required, Scope};
use meshtune_test_support::kustomize;
use serde_json::Value;

type Grants = BTreeMap<(Scope, String, String), BTreeSet<String>>;

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str, ns: Option<&str>) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind
            && d["metadata"]["name"] == name
            && ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
    })
}

/// What the rendered objects grant the controller's ServiceAccount, per scope; asserts the
/// references on the way.
fn grants(overlay: &str, docs: &[Value]) -> Grants {
    let dep = find(docs, "Deployment", "meshtune-controller", None)
        .unwrap_or_else(|| panic!("{overlay}: no Deployment meshtune-controller"));
    let ns = dep["metadata"]["namespace"].as_str().unwrap();
    let sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_else(|| panic!("{overlay}: the Deployment names no serviceAccountName"));
    assert!(
        find(docs, "ServiceAccount", sa, Some(ns)).is_some(),
        "{overlay}: ServiceAccount {ns}/{sa} is not rendered"
    );

    let mut out = Grants::new();
    let mut bound: BTreeSet<(String, String, String)> = BTreeSet::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let bname = b["metadata"]["name"].as_str().unwrap_or_default();
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            b["roleRef"]["apiGroup"], "rbac.authorization.k8s.io",
            "{overlay}: {bname}"
        );
        let binding_ns = b["metadata"]["namespace"].as_str();
        // A RoleBinding may reference a Role in its namespace (or a ClusterRole, scoped to it).
        let role_ns = if role_kind == "Role" {
            binding_ns
        } else {
            None
        };
        let role = find(docs, role_kind, role_name, role_ns).unwrap_or_else(|| {
            panic!(
                "{overlay}: {} {bname} refers to missing {role_kind} {role_name}",
                b["kind"]
            )
        });
        bound.insert((
            role_kind.to_string(),
            role_name.to_string(),
            role_ns.unwrap_or_default().to_string(),
        ));
        let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
        assert!(!subjects.is_empty(), "{overlay}: {bname} has no subjects");
        let mut for_controller = false;
        for s in &subjects {
            assert_eq!(s["kind"], "ServiceAccount", "{overlay}: {bname}: {s}");
            let (sname, sns) = (
                s["name"].as_str().unwrap_or_default(),
                s["namespace"].as_str().unwrap_or_default(),
            );
            assert!(
                find(docs, "ServiceAccount", sname, Some(sns)).is_some(),
                "{overlay}: {bname}: subject ServiceAccount {sns}/{sname} is not rendered"
            );
            for_controller |= sname == sa && sns == ns;
        }
        if !for_controller {
            continue;
        }
        let scope = match (b["kind"].as_str(), binding_ns) {
            (Some("ClusterRoleBinding"), _) => Scope::Cluster,
            (Some("RoleBinding"), Some(bns)) if bns == ns => Scope::ControllerNamespace,
            _ => panic!("{overlay}: {bname}: a RoleBinding outside {ns}"),
        };
        for rule in role["rules"].as_array().cloned().unwrap_or_default() {
            assert!(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                "{overlay}: {role_name}: unexpected rule form {rule}"
            );
            let verbs = strs(&rule["verbs"]);
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    assert!(
                        g != "*" && r != "*" && !verbs.iter().any(|v| v == "*"),
                        "{overlay}: {role_name}: wildcard in {rule}"
                    );
                    out.entry((scope, g.clone(), r.clone()))
                        .or_default()
                        .extend(verbs.iter().cloned());
                }
            }
        }
    }
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        let key = (
            role["kind"].as_str().unwrap().to_string(),
            role["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            role["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        assert!(
            bound.contains(&key),
            "{overlay}: {key:?} is bound by nothing"
        );
    }
    out
}

fn show(g: &Grants) -> String {
    g.iter()
        .map(|((scope, group, res), verbs)| {
            let group = if group.is_empty() { "core" } else { group };
            format!(
                "  {scope:?} {group}/{res}: {}",
                verbs.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rendered_rbac_grants_exactly_what_the_code_uses() {
    if !kustomize::require_kubectl() {
        return;
    }
    let want = required();
    assert!(!want.is_empty());
    for overlay in kustomize::OVERLAYS {
        let docs = kustomize::render_overlay(overlay);
        let got = grants(overlay, &docs);
        let mut problems = Vec::new();
        for (key, verbs) in &want {
            let have = got.get(key).cloned().unwrap_or_default();
            let missing: Vec<&String> = verbs.difference(&have).collect();
            if !missing.is_empty() {
                problems.push(format!("{key:?}: missing {missing:?}"));
            }
        }
        for (key, verbs) in &got {
            let needed = want.get(key).cloned().unwrap_or_default();
            let extra: Vec<&String> = verbs.difference(&needed).collect();
            if !extra.is_empty() {
                problems.push(format!("{key:?}: not used by the code {extra:?}"));
            }
        }
        assert!(
            problems.is_empty(),
            "overlay {overlay}: RBAC and the code's access lists (meshtune_controller::rbac) \
             differ:\n{}\nrendered:\n{}\nneeded:\n{}",
            problems.join("\n"),
            show(&got),
            show(&want)
        );
        println!(
            "overlay {overlay} grants meshtune-system/meshtune-controller:\n{}",
            show(&got)
        );
    }
}

#[test]
fn a_verb_too_many_or_too_few_is_caught() {
    if !kustomize::require_kubectl() {
        return;
    }
    let docs = kustomize::render_overlay("observe");
    let want = required();
    // Widen the Role: configmaps `patch` (what `meshtune model push` needs, not the controller).
    let mut widened = docs.clone();
    let role = widened
        .iter_mut()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "meshtune-controller")
        .unwrap();
    role["rules"][0]["verbs"]
        .as_array_mut()
        .unwrap()
        .push("patch".into());
    assert_ne!(grants("widened", &widened), want);
    // Drop the ClusterRoleBinding: the cluster-wide grants disappear and the role is unbound.
    let unbound: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] != "ClusterRoleBinding")
        .cloned()
        .collect();
    let r = std::panic::catch_unwind(|| grants("unbound", &unbound));
    assert!(r.is_err(), "an unbound ClusterRole was accepted");
    assert_eq!(grants("observe", &docs), want);
}
