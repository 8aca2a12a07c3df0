//! Renders the project's kustomize overlays (`manifests/overlays/*`) with `kubectl kustomize`
//! (Debian package; `cargo xtask setup` installs it when missing), offline, into JSON objects.
//! A missing `kubectl` is a prerequisite: skip with a note, or fail under `CI` /
//! `MESHTUNE_E2E_REQUIRED` ([`crate::prereq`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The overlays an install can use, in the order the README lists them (observe is the default).
pub const OVERLAYS: [&str; 2] = ["observe", "enforce"];

/// `manifests/overlays/NAME` of the workspace.
pub fn overlay_dir(name: &str) -> PathBuf {
    crate::workspace_root().join("manifests/overlays").join(name)
}

/// `kubectl version --client` works.
pub fn kubectl_available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the tests that render overlays can run: true when `kubectl` is there; otherwise
/// skips with a note (returns false) or panics when missing prerequisites are failures.
pub fn require_kubectl() -> bool {
    if kubectl_available() {
        return true;
    }
    crate::prereq::skip_or_fail(
        crate::prereq::required(&crate::prereq::env),
        "kubectl not found (Debian package kubectl / kubernetes-client; `cargo xtask setup` installs it)",
    );
    false
}

/// `kubectl kustomize DIR`, parsed: every rendered object, in kustomize's order. Panics with
/// kubectl's error output naming the directory when rendering fails.
pub fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kubectl prints UTF-8");
    crate::istio::parse_documents(&text, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// [`render`] of `manifests/overlays/NAME`.
pub fn render_overlay(name: &str) -> Vec<Value> {
    render(&overlay_dir(name))
}
