//! `meshtune status -n NS` (a namespace's MeshtunePolicy and its status, readably) and
//! `meshtune approve -n NS --host HOST [--id ID]` (records a person's approval in
//! `spec.approvals`), both through the Kubernetes API; [`render`] is the pure renderer.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use meshtune_core::knobs::Knob;
use serde_json::json;

use crate::resolve::{resolve, DEFAULT_POLICY_NAME};
use crate::types::{Approval, MeshtunePolicy, PerKnob, Recommendation};

/// Flags of `meshtune status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Namespace whose MeshtunePolicy to show.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// Policy name (default: every policy in the namespace).
    #[arg(long)]
    pub name: Option<String>,
}

/// Flags of `meshtune approve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ApproveArgs {
    /// Namespace of the MeshtunePolicy.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// Policy name.
    #[arg(long, default_value = DEFAULT_POLICY_NAME)]
    pub name: String,
    /// Destination host whose recommendation to approve (as `meshtune status` prints it).
    #[arg(long)]
    pub host: String,
    /// Recommendation id to approve (default: the host's current recommendation). Giving it
    /// makes sure you approve what you reviewed: a newer recommendation is refused.
    #[arg(long)]
    pub id: Option<String>,
}

/// Errors of `meshtune status` / `meshtune approve`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error(
        "the MeshtunePolicy CRD (meshtunepolicies.meshtune.io) is not installed: \
         kubectl apply -k manifests/overlays/observe"
    )]
    CrdMissing,
    #[error("no MeshtunePolicy {name:?} in namespace {namespace}")]
    NotFound { namespace: String, name: String },
    #[error("{namespace}/{name}: no recommendation for host {host:?} (hosts with one: {known})")]
    NoRecommendation {
        namespace: String,
        name: String,
        host: String,
        known: String,
    },
    #[error("{namespace}/{name}: host {host:?}'s current recommendation is {current}, not {given}: review it with `meshtune status -n {namespace}`")]
    StaleId {
        namespace: String,
        name: String,
        host: String,
        given: String,
        current: String,
    },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn client() -> Result<Client, CliError> {
    Client::try_default()
        .await
        .map_err(|e| CliError::Client(e.to_string()))
}

/// `meshtune status` with a client from the environment (in-cluster or kubeconfig).
pub async fn status(args: &StatusArgs, out: &mut impl Write) -> Result<(), CliError> {
    status_with(client().await?, args, out).await
}

/// `meshtune status` with `client`: reads the policies (GET one, or LIST the namespace's) and
/// prints each with [`render`]. A namespace without a policy gets the defaults, and says so.
pub async fn status_with(
    client: Client,
    args: &StatusArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let api: Api<MeshtunePolicy> = Api::namespaced(client, &args.namespace);
    let mut policies = match &args.name {
        Some(name) => match api.get(name).await {
            Ok(p) => vec![p],
            Err(e) if is_not_found(&e) => {
                return Err(CliError::NotFound {
                    namespace: args.namespace.clone(),
                    name: name.clone(),
                })
            }
            Err(source) => {
                return Err(CliError::Api {
                    what: format!("get MeshtunePolicy {}/{name}", args.namespace),
                    source,
                })
            }
        },
        None => match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            // The collection itself is missing: the CRD is not installed.
            Err(e) if is_not_found(&e) => return Err(CliError::CrdMissing),
            Err(source) => {
                return Err(CliError::Api {
                    what: format!("list MeshtunePolicies in {}", args.namespace),
                    source,
                })
            }
        },
    };
    if policies.is_empty() {
        writeln!(
            out,
            "no MeshtunePolicy in namespace {}: the defaults apply (mode observe, SLO {}).",
            args.namespace,
            crate::SloTarget::default()
        )?;
        return Ok(());
    }
    policies.sort_by_key(|p| p.name_any());
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        out.write_all(render(p).as_bytes())?;
    }
    Ok(())
}

/// `meshtune approve` with a client from the environment.
pub async fn approve(args: &ApproveArgs, out: &mut impl Write) -> Result<(), CliError> {
    approve_with(client().await?, args, out).await
}

/// `meshtune approve` with `client`: reads the policy, checks that `--host` has a
/// recommendation (and that it is `--id`, when given), then sets that host's entry of
/// `spec.approvals` with a JSON merge patch carrying the whole list and the
/// `resourceVersion` read (a concurrent change fails with 409 Conflict instead of being lost).
pub async fn approve_with(
    client: Client,
    args: &ApproveArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let api: Api<MeshtunePolicy> = Api::namespaced(client, &args.namespace);
    let policy = match api.get(&args.name).await {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::NotFound {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            })
        }
        Err(source) => {
            return Err(CliError::Api {
                what: format!("get MeshtunePolicy {}/{}", args.namespace, args.name),
                source,
            })
        }
    };
    let recs = policy
        .status
        .as_ref()
        .map(|s| s.recommendations.as_slice())
        .unwrap_or_default();
    let Some(rec) = recs.iter().find(|r| r.host == args.host) else {
        let known: Vec<&str> = recs.iter().map(|r| r.host.as_str()).collect();
        return Err(CliError::NoRecommendation {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            host: args.host.clone(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    if let Some(given) = &args.id {
        if *given != rec.id {
            return Err(CliError::StaleId {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
                host: args.host.clone(),
                given: given.clone(),
                current: rec.id.clone(),
            });
        }
    }
    let mut approvals: Vec<Approval> = policy
        .spec
        .approvals
        .iter()
        .filter(|a| a.host != args.host)
        .cloned()
        .collect();
    approvals.push(Approval {
        host: args.host.clone(),
        recommendation: rec.id.clone(),
    });
    let patch = json!({
        "metadata": {"resourceVersion": policy.resource_version()},
        "spec": {"approvals": approvals},
    });
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| CliError::Api {
            what: format!("patch MeshtunePolicy {}/{}", args.namespace, args.name),
            source,
        })?;
    writeln!(
        out,
        "approved recommendation {} for {} in {}/{}",
        rec.id, args.host, args.namespace, args.name
    )?;
    Ok(())
}

/// A knob value with its unit (ms for durations, integers without a fraction).
fn knob_value(knob: Knob, v: f64) -> String {
    let s = knob.spec();
    let n = if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    };
    if v >= meshtune_core::knobs::ISTIO_UNLIMITED {
        return "unlimited".to_string();
    }
    match (s.zero_is_unlimited && v == 0.0, s.unit) {
        (true, _) => "0 (none)".to_string(),
        (false, "ms") => format!("{n}ms"),
        (false, "percent") => format!("{n}%"),
        _ => n,
    }
}

fn knobs_line(k: &PerKnob<f64>) -> String {
    let parts: Vec<String> = k
        .iter()
        .map(|(knob, v)| format!("{}={}", knob.name(), knob_value(knob, *v)))
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    // Wrapped at ~100 columns, continuation lines aligned under the first knob.
    let mut out = String::new();
    let mut line = 0;
    for p in parts {
        if line > 0 && line + 1 + p.len() > 84 {
            out.push_str("\n               ");
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        line += p.len();
        out.push_str(&p);
    }
    out
}

fn time(t: &Time) -> String {
    t.0.to_string()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn map_line(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", number(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the recommendation was approved and applied, from the spec and the status.
fn review_state(p: &MeshtunePolicy, r: &Recommendation) -> String {
    let mut parts = Vec::new();
    match p.spec.approvals.iter().find(|a| a.host == r.host) {
        Some(a) if a.recommendation == r.id => parts.push("approved".to_string()),
        Some(a) => parts.push(format!(
            "not approved (approval names {})",
            a.recommendation
        )),
        None => parts.push("not approved".to_string()),
    }
    let applied = p
        .status
        .as_ref()
        .and_then(|s| s.applied.iter().find(|a| a.host == r.host));
    match applied {
        Some(a) if a.id == r.id => parts.push(format!("applied {}", time(&a.at))),
        Some(a) => parts.push(format!("in force: {} since {}", a.id, time(&a.at))),
        None => parts.push("not applied".to_string()),
    }
    parts.join(", ")
}

/// The policy and its status as text: mode, SLO, the other settings, each destination's
/// recommendation (knobs, expected effect, features, model version, approved/applied) and the
/// conditions.
pub fn render(p: &MeshtunePolicy) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let ns = p.namespace().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let generation = p
        .metadata
        .generation
        .map_or("-".to_string(), |g| g.to_string());
    let observed = status
        .observed_generation
        .map_or("never".to_string(), |g| g.to_string());
    let _ = writeln!(
        s,
        "MeshtunePolicy {ns}/{} (generation {generation}, status for generation {observed})",
        p.name_any()
    );
    match resolve(&p.spec) {
        Ok(e) => {
            let _ = writeln!(s, "  mode:       {}", e.mode.as_str());
            let _ = writeln!(s, "  SLO:        {}", e.slo);
            let bounds: Vec<String> = e
                .bounds
                .iter()
                .map(|(k, b)| {
                    let lo = b.min.map_or("*".to_string(), |v| knob_value(*k, v));
                    let hi = b.max.map_or("*".to_string(), |v| knob_value(*k, v));
                    format!("{} {lo}..{hi}", k.name())
                })
                .collect();
            let list = |v: Vec<&str>| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(", ")
                }
            };
            let _ = writeln!(
                s,
                "  bounds:     {}",
                list(bounds.iter().map(String::as_str).collect())
            );
            let _ = writeln!(
                s,
                "  excluded:   {}",
                list(e.exclude_hosts.iter().map(String::as_str).collect())
            );
            let _ = writeln!(
                s,
                "  co-manage:  DestinationRules {}; VirtualServices {}",
                list(
                    e.co_manage_destination_rules
                        .iter()
                        .map(String::as_str)
                        .collect()
                ),
                list(
                    e.co_manage_virtual_services
                        .iter()
                        .map(String::as_str)
                        .collect()
                )
            );
            let _ = writeln!(
                s,
                "  interval:   {}",
                e.decision_interval.map_or(
                    "the controller's (--decision-interval-secs)".to_string(),
                    |d| { format!("{} s", d.as_secs()) }
                )
            );
        }
        Err(err) => {
            let _ = writeln!(s, "  INVALID SPEC: {err}");
            let _ = writeln!(
                s,
                "  (the controller does not act on this policy until it is fixed)"
            );
        }
    }
    let _ = writeln!(s);
    if status.recommendations.is_empty() {
        let _ = writeln!(s, "recommendations: none yet");
    } else {
        let _ = writeln!(s, "recommendations ({}):", status.recommendations.len());
        let mut recs = status.recommendations.clone();
        recs.sort_by(|a, b| a.host.cmp(&b.host));
        for r in &recs {
            let _ = writeln!(s, "  {}  id {}  {}", r.host, r.id, review_state(p, r));
            let _ = writeln!(s, "    knobs:     {}", knobs_line(&r.knobs));
            let mut effect = r.expected_effect.summary.clone();
            if !r.expected_effect.values.is_empty() {
                if !effect.is_empty() {
                    effect.push_str("; ");
                }
                effect.push_str(&map_line(&r.expected_effect.values));
            }
            let _ = writeln!(
                s,
                "    expected:  {}",
                if effect.is_empty() { "-" } else { &effect }
            );
            if !r.features.is_empty() {
                let _ = writeln!(s, "    features:  {}", map_line(&r.features));
            }
            let model = if r.model_version.is_empty() {
                "-"
            } else {
                &r.model_version
            };
            let _ = writeln!(s, "    model:     {model}, made {}", time(&r.created_at));
        }
    }
    let _ = writeln!(s);
    if status.conditions.is_empty() {
        let _ = writeln!(s, "conditions: none");
    } else {
        let _ = writeln!(s, "conditions:");
        let w = status
            .conditions
            .iter()
            .map(|c| c.type_.len())
            .max()
            .unwrap_or(0);
        let r = status
            .conditions
            .iter()
            .map(|c| c.reason.len())
            .max()
            .unwrap_or(0);
        for c in &status.conditions {
            let _ = writeln!(
                s,
                "  {:<w$}  {:<7}  {:<r$}  {}  {}",
                c.type_,
                c.status,
                c.reason,
                time(&c.last_transition_time),
                c.message
            );
        }
    }
    s
}
