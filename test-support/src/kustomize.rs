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
    crate::workspace_root()
        .join("manifests/overlays")
        .join(name)
}

/// Oldest kustomize (embedded in kubectl) that renders the overlays: `resources:` naming a
/// directory and `patches:` with a target need kustomize v4 (kubectl 1.21 or later).
pub const MIN_KUSTOMIZE_MAJOR: u32 = 4;

/// The major version of the kustomize embedded in `kubectl` (`kubectl version --client`
/// prints `Kustomize Version: v5.5.0`); None when kubectl is missing or does not say.
pub fn kustomize_major() -> Option<u32> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    kustomize_major_of(&String::from_utf8_lossy(&out.stdout))
}

/// The major version in `kubectl version --client` output.
pub fn kustomize_major_of(version_output: &str) -> Option<u32> {
    version_output.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Kustomize Version:")?.trim();
        v.trim_start_matches('v').split('.').next()?.parse().ok()
    })
}

/// Whether the tests that render overlays can run: true when `kubectl` with kustomize v4 or
/// later is there; otherwise skips with a note (returns false) or panics when missing
/// prerequisites are failures.
pub fn require_kubectl() -> bool {
    let msg = match kustomize_major() {
        Some(m) if m >= MIN_KUSTOMIZE_MAJOR => return true,
        Some(m) => format!(
            "kubectl embeds kustomize v{m}; rendering manifests/overlays needs v{MIN_KUSTOMIZE_MAJOR} \
             or later (kubectl 1.21+)"
        ),
        None => format!(
            "kubectl not found, or too old to report its kustomize version (need kubectl 1.21+ \
             with kustomize v{MIN_KUSTOMIZE_MAJOR}+; `cargo xtask setup` installs Debian's \
             kubernetes-client when kubectl is missing)"
        ),
    };
    crate::prereq::skip_or_fail(crate::prereq::required(&crate::prereq::env), &msg);
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

#[cfg(test)]
mod tests {
    #[test]
    fn kustomize_version_is_read_from_kubectl_output() {
        let out = "Client Version: v1.32.4\nKustomize Version: v5.5.0\n";
        assert_eq!(super::kustomize_major_of(out), Some(5));
        assert_eq!(super::kustomize_major_of("Client Version: v1.20.2\n"), None);
        assert_eq!(
            super::kustomize_major_of("Kustomize Version: v2.0.3"),
            Some(2)
        );
    }
}
