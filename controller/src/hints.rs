//! Hints for the filters: the [`HintSource`] trait, and the JSON hints file source.
//!
//! File format (unknown fields are refused; `ttl_ms` defaults to [`DEFAULT_HINT_TTL_MS`]):
//! `{"hints":[{"cluster":"x","timeout_ms":50,"max_retries":0,"concurrency_limit":10,"ttl_ms":5000}]}`.
//! [`FileHints`] reloads the file when its mtime (or length) changes; a bad file is logged with
//! its error and the previous hints are kept.

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

/// Where the controller gets hints from. The file source is the first implementation; the
/// policy loop replaces it.
pub trait HintSource: Send + Sync {
    /// Hints for these clusters (those a reporter just reported). Clusters without a hint are
    /// left out; order follows `clusters`.
    fn hints_for(&self, clusters: &[String]) -> Vec<Hint>;
}

/// No hints at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHints;

impl HintSource for NoHints {
    fn hints_for(&self, _clusters: &[String]) -> Vec<Hint> {
        Vec::new()
    }
}

/// A fixed, in-memory set of hints that can be replaced at run time.
#[derive(Debug, Default)]
pub struct StaticHints {
    hints: RwLock<Arc<BTreeMap<String, Hint>>>,
}

impl StaticHints {
    pub fn new(hints: Vec<Hint>) -> Self {
        let s = Self::default();
        s.replace(hints);
        s
    }

    /// Replaces all hints (a later entry for the same cluster wins).
    pub fn replace(&self, hints: Vec<Hint>) {
        let map = hints.into_iter().map(|h| (h.cluster.clone(), h)).collect();
        *self.hints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// All current hints, by cluster.
    pub fn all(&self) -> Arc<BTreeMap<String, Hint>> {
        self.hints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl HintSource for StaticHints {
    fn hints_for(&self, clusters: &[String]) -> Vec<Hint> {
        let map = self.all();
        clusters
            .iter()
            .filter_map(|c| map.get(c).cloned())
            .collect()
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
    current: StaticHints,
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
            current: StaticHints::default(),
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
        self.current.all()
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
        self.current.replace(hints);
        Ok(Reload::Loaded(n))
    }
}

impl HintSource for FileHints {
    fn hints_for(&self, clusters: &[String]) -> Vec<Hint> {
        self.current.hints_for(clusters)
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
        assert!(src.hints_for(&["x".into()]).is_empty());
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Loaded(2));
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Unchanged);
        let got = src.hints_for(&["z".into(), "x".into()]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].timeout_ms, 50);
        // A broken file: error reported, old hints kept.
        std::fs::write(&path, "{not json").unwrap();
        assert!(src.reload_if_changed().is_err());
        assert_eq!(src.hints_for(&["x".into()])[0].timeout_ms, 50);
        // Fixed again: new content in force.
        std::fs::write(&path, r#"{"hints":[{"cluster":"x","timeout_ms":70}]}"#).unwrap();
        assert_eq!(src.reload_if_changed().unwrap(), Reload::Loaded(1));
        assert_eq!(src.hints_for(&["x".into()])[0].timeout_ms, 70);
        assert!(src.hints_for(&["y".into()]).is_empty());
    }

    #[test]
    fn open_refuses_an_invalid_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hints.json");
        std::fs::write(&path, "[]").unwrap();
        assert!(FileHints::open(&path).is_err());
    }
}
