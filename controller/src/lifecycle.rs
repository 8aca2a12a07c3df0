//! What happens to meshtune's Istio objects when the controller starts leading or is
//! uninstalled: enforce mode rebuilds the knobs in force from them (restart recovery: no
//! default push, hints from the recovered state), observe mode removes them (owned objects
//! deleted, co-managed fields restored), and `meshtune uninstall` removes them from the
//! command line (`--dry-run` prints the plan). The per-namespace removal for a namespace that
//! opts out is [`meshtune_sinks::istio_undo::remove_namespace`].

use std::io::Write;

use clap::Args;
use meshtune_sinks::istio_sink::DEFAULT_FIELD_MANAGER;
use meshtune_sinks::istio_undo::{self, Recovered, Removal, UndoError};
use meshtune_sinks::IstioSinkConfig;

/// The Kubernetes side of the decision loop's lifecycle (set when `--sink istio` is used).
#[derive(Clone)]
pub struct Lifecycle {
    pub client: kube::Client,
    pub sink: IstioSinkConfig,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// The knobs in force per (object namespace, destination) from every object meshtune
    /// owns or co-manages.
    pub async fn recover(&self) -> Result<Vec<Recovered>, UndoError> {
        istio_undo::recover(&self.client, None).await
    }

    /// Removes what meshtune wrote everywhere.
    pub async fn remove_all(&self, dry_run: bool) -> Result<Vec<Removal>, UndoError> {
        istio_undo::remove_all(&self.client, &self.sink, dry_run).await
    }

    /// Removes what meshtune wrote in `namespace` (a namespace opting out).
    pub async fn remove_namespace(
        &self,
        namespace: &str,
        dry_run: bool,
    ) -> Result<Vec<Removal>, UndoError> {
        istio_undo::remove_namespace(&self.client, &self.sink, namespace, dry_run).await
    }
}

/// Flags of `meshtune uninstall`.
#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// Only these namespaces (repeatable); default: every namespace.
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Print what would be deleted or restored; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The controller's server-side-apply field manager (releasing co-managed fields).
    #[arg(long, default_value = DEFAULT_FIELD_MANAGER)]
    pub field_manager: String,
}

/// Errors of `meshtune uninstall`.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("kubernetes client: {0}")]
    Client(String),
    #[error(transparent)]
    Undo(#[from] UndoError),
    #[error("{failed} of {total} objects could not be undone (see above)")]
    Incomplete { failed: usize, total: usize },
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
}

/// `meshtune uninstall` with a kube client from the environment (in-cluster or kubeconfig).
pub async fn uninstall(args: &UninstallArgs, out: &mut impl Write) -> Result<(), UninstallError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| UninstallError::Client(e.to_string()))?;
    uninstall_with(client, args, out).await
}

/// `meshtune uninstall` with `client`: removes (or with `--dry-run` lists) what meshtune wrote,
/// one line per object, then a summary line. Err when an object could not be undone.
pub async fn uninstall_with(
    client: kube::Client,
    args: &UninstallArgs,
    out: &mut impl Write,
) -> Result<(), UninstallError> {
    let lifecycle = Lifecycle {
        client,
        sink: IstioSinkConfig {
            field_manager: args.field_manager.clone(),
            ..IstioSinkConfig::default()
        },
    };
    let mut done = Vec::new();
    if args.namespaces.is_empty() {
        done = lifecycle.remove_all(args.dry_run).await?;
    } else {
        for ns in &args.namespaces {
            done.extend(lifecycle.remove_namespace(ns, args.dry_run).await?);
        }
    }
    for r in &done {
        writeln!(out, "{r}")?;
    }
    let failed = done.iter().filter(|r| r.error().is_some()).count();
    let what = if args.dry_run {
        "would be undone"
    } else {
        "undone"
    };
    writeln!(
        out,
        "{} objects {what}{}",
        done.len() - failed,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    )?;
    if failed > 0 {
        return Err(UninstallError::Incomplete {
            failed,
            total: done.len(),
        });
    }
    Ok(())
}
