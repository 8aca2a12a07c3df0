//! The live recorder: appends one `meshtune_core::dataset` CSV row per decided destination and
//! window (source `live`): the window's features, the knobs in force while it was measured and
//! its outcomes. The header is written once; an existing file must carry the same header
//! (append across restarts).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use meshtune_core::dataset::{check_header, header, DatasetRow};

/// `source` column of live rows.
pub const LIVE_SOURCE: &str = "live";

/// Recorder errors (they name the file).
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("record file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record file {path}: line 1: not a meshtune dataset header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("record file {path}: {reason}")]
    Csv { path: PathBuf, reason: String },
}

/// Appends dataset rows to a CSV file.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    writer: csv::Writer<File>,
}

impl Recorder {
    /// Opens `path` for appending: writes the header to a new or empty file, checks it in an
    /// existing one.
    pub fn open(path: &Path) -> Result<Self, RecorderError> {
        let io = |source| RecorderError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(e)),
        };
        if existing {
            let mut first = String::new();
            BufReader::new(File::open(path).map_err(io)?)
                .read_line(&mut first)
                .map_err(io)?;
            let found: Vec<&str> = first.trim_end_matches(['\r', '\n']).split(',').collect();
            check_header(&found).map_err(|e| RecorderError::Header {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if !existing {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record(header()).map_err(|e| RecorderError::Csv {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let bytes = w.into_inner().map_err(|e| RecorderError::Csv {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            file.write_all(&bytes).map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            writer: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends rows and flushes.
    pub fn append(&mut self, rows: &[DatasetRow]) -> Result<(), RecorderError> {
        let csv = |e: csv::Error| RecorderError::Csv {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        for r in rows {
            self.writer.write_record(r.to_record()).map_err(csv)?;
        }
        self.writer.flush().map_err(|source| RecorderError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::dataset::Outcomes;
    use meshtune_core::{Knobs, WindowStats};

    fn row(w: u64) -> DatasetRow {
        DatasetRow {
            source: LIVE_SOURCE.into(),
            scenario: String::new(),
            destination: "a".into(),
            window: w,
            features: WindowStats::default().features(&meshtune_core::Context::initial(250.0)),
            knobs: Knobs::istio_defaults(),
            outcomes: Outcomes {
                offered_rps: 3.5,
                ..Outcomes::default()
            },
        }
    }

    fn read(path: &Path) -> Vec<DatasetRow> {
        let mut r = csv::Reader::from_path(path).unwrap();
        let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        check_header(&h).unwrap();
        r.records()
            .map(|rec| DatasetRow::from_record(&rec.unwrap().iter().collect::<Vec<_>>()).unwrap())
            .collect()
    }

    #[test]
    fn header_once_and_rows_appended_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("live.csv");
        Recorder::open(&p).unwrap().append(&[row(1)]).unwrap();
        Recorder::open(&p)
            .unwrap()
            .append(&[row(2), row(3)])
            .unwrap();
        let rows = read(&p);
        assert_eq!(
            rows.iter().map(|r| r.window).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(rows[0].outcomes.offered_rps, 3.5);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches("source,").count(), 1);
    }

    #[test]
    fn a_foreign_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("other.csv");
        std::fs::write(&p, "a,b,c\n1,2,3\n").unwrap();
        let e = Recorder::open(&p).unwrap_err().to_string();
        assert!(e.contains("other.csv") && e.contains("header"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a,b,c\n1,2,3\n");
    }
}
