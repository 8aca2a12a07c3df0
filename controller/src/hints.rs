//! Hints for the filters: the [`HintSource`] trait, and the JSON hints file source.
//!
//! File format (unknown fields are refused; `ttl_ms` defaults to [`DEFAULT_HINT_TTL_MS`]):
//! `{"hints":[{"cluster":"x","timeout_ms":50,"max_retries":0,"concurrency_limit":10,"ttl_ms":5000}]}`.
//! [`FileHints`] reloads the file when its mtime (or length) changes; a bad file is logged with
//! its error and the previous hints are kept. The file is the operator's configuration: its
//! hints apply to the cluster in every reporter namespace. The policy loop's hints
//! ([`StaticHints`]) are per [`DestKey`] and reach only reporters of the key's namespace.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The hint served to filters: the wire type itself (`meshtune.v1.Hint`, with serde for the
/// file and the admin API), so nothing is copied field by field between file, loop and wire.
pub use meshtune_proto::v1::Hint;
/// TTL given to a hint whose file entry has none.
pub use meshtune_proto::DEFAULT_HINT_TTL_MS;

use meshtune_core::key::reporter_namespace;
use meshtune_core::DestKey;

/// Where the controller gets hints from. The file source is the first implementation; the
/// policy loop replaces it.
pub trait HintSource: Send + Sync {
    /// Hints for these clusters as reported by a reporter of `namespace` (the clusters it just
    /// reported). A source keyed by [`DestKey`] answers only with the hints of
    /// `(namespace, cluster)`: a reporter never receives another namespace's hints. Clusters
    /// without a hint are left out; order follows `clusters`.
    fn hints_for(&self, namespace: &str, clusters: &[String]) -> Vec<Hint>;
}

/// No hints at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHints;

impl HintSource for NoHints {
    fn hints_for(&self, _namespace: &str, _clusters: &[String]) -> Vec<Hint> {
        Vec::new()
    }
}

/// Hints by [`DestKey`] (reporter namespace, cluster).
pub type KeyedHints = BTreeMap<String, BTreeMap<String, Hint>>;

/// A fixed, in-memory set of hints per [`DestKey`] that can be replaced at run time (the
/// policy loop's hints).
#[derive(Debug, Default)]
pub struct StaticHints {
    /// namespace → cluster → hint (nested so a lookup allocates nothing).
    hints: RwLock<Arc<KeyedHints>>,
}

impl StaticHints {
    pub fn new(hints: Vec<(DestKey, Hint)>) -> Self {
        let s = Self::default();
        s.replace(hints);
        s
    }

    /// Replaces all hints (a later entry for the same key wins). The hint's `cluster` is set to
    /// the key's cluster.
    pub fn replace(&self, hints: Vec<(DestKey, Hint)>) {
        let mut map = KeyedHints::new();
        for (k, mut h) in hints {
            h.cluster.clone_from(&k.cluster);
            map.entry(k.namespace).or_default().insert(k.cluster, h);
        }
        *self.hints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// All current hints: namespace → cluster → hint.
    pub fn all(&self) -> Arc<KeyedHints> {
        self.hints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The hint of one key.
    pub fn get(&self, key: &DestKey) -> Option<Hint> {
        self.all()
            .get(&key.namespace)
            .and_then(|m| m.get(&key.cluster))
            .cloned()
    }
}

impl HintSource for StaticHints {
    fn hints_for(&self, namespace: &str, clusters: &[String]) -> Vec<Hint> {
        let map = self.all();
        let Some(ns) = map.get(reporter_namespace(namespace)) else {
            return Vec::new();
        };
        clusters.iter().filter_map(|c| ns.get(c).cloned()).collect()
    }
}

/// Errors reading a hints file.
#[derive(Debug, thiserror::Error)]
pub enum HintsError {
    #[error("hints file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hints file {path}: line {line} column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("hints file {path}: hints[{index}].{field}: {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HintsFile {
    hints: Vec<Hint>,
}

/// Parses and checks the hints file text; `path` is only used in errors.
pub fn parse_hints(text: &str, path: &Path) -> Result<Vec<Hint>, HintsError> {
    let file: HintsFile = serde_json::from_str(text).map_err(|e| HintsError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let mut seen = HashSet::new();
    for (index, h) in file.hints.iter().enumerate() {
        let invalid = |field, message: &str| HintsError::Invalid {
            path: path.to_path_buf(),
            index,
            field,
            message: message.to_string(),
        };
        if h.cluster.is_empty() {
            return Err(invalid("cluster", "empty"));
        }
        if !seen.insert(h.cluster.as_str()) {
            return Err(invalid("cluster", "duplicate cluster"));
        }
        if h.ttl_ms == 0 {
            return Err(invalid("ttl_ms", "must be > 0"));
        }
    }
    Ok(file.hints)
}

/// Hints read from a JSON file, reloaded by [`FileHints::reload_if_changed`].
#[derive(Debug)]
pub struct FileHints {
    path: PathBuf,
    current: RwLock<Arc<BTreeMap<String, Hint>>>,
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

/// Result of a reload check.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded(usize),
    /// The file is missing: hints kept.
    Missing,
}

impl FileHints {
    /// Loads the file. A missing file gives no hints (it is picked up once created); a file
    /// that exists but is invalid is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, HintsError> {
        let s = Self {
            path: path.into(),
            current: RwLock::default(),
            stamp: RwLock::new(None),
        };
        s.reload_if_changed()?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All hints in force, by cluster.
    pub fn all(&self) -> Arc<BTreeMap<String, Hint>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the file if its mtime or length changed. On error the previous hints stay.
    pub fn reload_if_changed(&self) -> Result<Reload, HintsError> {
        let io = |source| HintsError::Io {
            path: self.path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reload::Missing),
            Err(e) => return Err(io(e)),
        };
        let stamp = (meta.modified().map_err(io)?, meta.len());
        if *self.stamp.read().unwrap_or_else(|e| e.into_inner()) == Some(stamp) {
            return Ok(Reload::Unchanged);
        }
        // Remember the stamp even if the content is bad, so a bad file is reported once.
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = Some(stamp);
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let hints = parse_hints(&text, &self.path)?;
        let n = hints.len();
        let map = hints.into_iter().map(|h| (h.cluster.clone(), h)).collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(Reload::Loaded(n))
    }
}

impl HintSource for FileHints {
    /// The file's hints for `clusters`, whatever the namespace (operator configuration).
    fn hints_for(&self, _namespace: &str, clusters: &[String]) -> Vec<Hint> {
        let map = self.all();
        clusters
            .iter()
            .filter_map(|c| map.get(c).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"hints":[{"cluster":"x","timeout_ms":50,"max_retries":0,"concurrency_limit":10,"ttl_ms":5000},{"cluster":"y"}]}"#;

    #[test]
    fn parses_the_documented_format() {
        let h = parse_hints(GOOD, Path::new("h.json")).unwrap();
        assert_eq!(
            h[0],
            Hint {
                cluster: "x".into(),
                timeout_ms: 50,
                max_retries: Some(0),
                concurrency_limit: 10,
                ttl_ms: 5000
            }
        );
        assert_eq!(h[1].ttl_ms, DEFAULT_HINT_TTL_MS);
        assert_eq!(h[1].max_retries, None);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let p = Path::new("h.json");
        let e = parse_hints("{\"hints\":[\n{\"cluster\":1}]}", p).unwrap_err();
        assert!(matches!(e, HintsError::Parse { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("h.json"));
        let e = parse_hints(r#"{"hints":[{"cluster":"a","bogus":1}]}"#, p).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse_hints(r#"{"hints":[{"cluster":"a"},{"cluster":"a"}]}"#, p).unwrap_err();
        assert!(e.to_string().contains("hints[1].cluster"), "{e}");
        let e = parse_hints(r#"{"hints":[{"cluster":"a","ttl_ms":0}]}"#, p).unwrap_err();
        assert!(e.to_string().contains("hints[0].ttl_ms"), "{e}");
    }

    #[test]
    fn reloads_on_change_and_keeps_old_hints_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hints.json");
        let src = FileHints::open(&path).unwrap();
        assert!(src.hints_for("ns", &["x".into()]).is_empty());
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Loaded(2));
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Unchanged);
        let got = src.hints_for("ns", &["z".into(), "x".into()]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].timeout_ms, 50);
        // A broken file: error reported, old hints kept.
        std::fs::write(&path, "{not json").unwrap();
        assert!(src.reload_if_changed().is_err());
        assert_eq!(src.hints_for("ns", &["x".into()])[0].timeout_ms, 50);
        // Fixed again: new content in force.
        std::fs::write(&path, r#"{"hints":[{"cluster":"x","timeout_ms":70}]}"#).unwrap();
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Loaded(1));
        assert_eq!(src.hints_for("ns", &["x".into()])[0].timeout_ms, 70);
        assert!(src.hints_for("ns", &["y".into()]).is_empty());
    }

    #[test]
    fn keyed_hints_reach_only_reporters_of_their_namespace() {
        let h = |t| Hint {
            cluster: String::new(),
            timeout_ms: t,
            max_retries: None,
            concurrency_limit: 0,
            ttl_ms: 1000,
        };
        let s = StaticHints::new(vec![
            (DestKey::new("x", "c"), h(10)),
            (DestKey::new("", "c"), h(30)),
        ]);
        let got = s.hints_for("x", &["c".into()]);
        assert_eq!((got.len(), got[0].timeout_ms), (1, 10));
        assert_eq!(got[0].cluster, "c");
        assert!(s.hints_for("y", &["c".into()]).is_empty());
        // An empty reporter namespace is the default namespace, as in the aggregates.
        assert_eq!(s.hints_for("", &["c".into()])[0].timeout_ms, 30);
        assert_eq!(
            s.get(&DestKey::new("x", "c")).map(|h| h.timeout_ms),
            Some(10)
        );
        assert_eq!(s.get(&DestKey::new("y", "c")), None);
    }

    #[test]
    fn open_refuses_an_invalid_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hints.json");
        std::fs::write(&path, "[]").unwrap();
        assert!(FileHints::open(&path).is_err());
    }
}
