//! The dataset row format: (window features, knobs in force, outcomes), one CSV row per
//! destination-window. Written by `meshtune sim sweep`, by the controller's recorder from
//! live traffic and by `meshtune record --from prometheus`; read by the supervised trainer.
//! Columns, in order: `source,scenario,destination,window,` then every feature name, then
//! `knob.<name>` per knob,
//! then `outcome.<name>` per [`OUTCOME_NAMES`].

use crate::features::{Features, FEATURE_COUNT, FEATURE_NAMES};
use crate::knobs::{Knobs, KNOB_COUNT, KNOB_NAMES};
pub use crate::outcomes::Outcomes;

pub const OUTCOME_COUNT: usize = 8;
/// Outcome columns (after the `outcome.` prefix).
pub const OUTCOME_NAMES: [&str; OUTCOME_COUNT] = [
    "offered_rps",
    "slo_goodput_rps",
    "p50_ms",
    "p99_ms",
    "error_rate",
    "shed_rate",
    "timeout_rate",
    "reward",
];

impl Outcomes {
    pub fn to_array(&self) -> [f64; OUTCOME_COUNT] {
        [
            self.offered_rps,
            self.slo_goodput_rps,
            self.p50_ms,
            self.p99_ms,
            self.error_rate,
            self.shed_rate,
            self.timeout_rate,
            self.reward,
        ]
    }

    pub fn from_array(a: [f64; OUTCOME_COUNT]) -> Self {
        Outcomes {
            offered_rps: a[0],
            slo_goodput_rps: a[1],
            p50_ms: a[2],
            p99_ms: a[3],
            error_rate: a[4],
            shed_rate: a[5],
            timeout_rate: a[6],
            reward: a[7],
        }
    }
}

/// One dataset row.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    /// `sim`, `live` (controller `--record`) or `prometheus` (`meshtune record`).
    pub source: String,
    pub scenario: String,
    pub destination: String,
    pub window: u64,
    pub features: Features,
    pub knobs: Knobs,
    pub outcomes: Outcomes,
}

const LEADING: [&str; 4] = ["source", "scenario", "destination", "window"];

/// The CSV header.
pub fn header() -> Vec<String> {
    let mut h: Vec<String> = LEADING.iter().map(|s| s.to_string()).collect();
    h.extend(FEATURE_NAMES.iter().map(|s| s.to_string()));
    h.extend(KNOB_NAMES.iter().map(|s| format!("knob.{s}")));
    h.extend(OUTCOME_NAMES.iter().map(|s| format!("outcome.{s}")));
    h
}

/// A row that does not parse, naming the column.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DatasetError {
    #[error("header has {found} columns, expected {expected}")]
    HeaderLength { expected: usize, found: usize },
    #[error("header column {index} is `{found}`, expected `{expected}`")]
    HeaderColumn {
        index: usize,
        expected: String,
        found: String,
    },
    #[error("row has {found} fields, expected {expected}")]
    RowLength { expected: usize, found: usize },
    #[error("field `{column}`: `{value}` is not a finite number")]
    NotANumber { column: String, value: String },
}

/// Checks a CSV header against [`header`].
pub fn check_header<S: AsRef<str>>(found: &[S]) -> Result<(), DatasetError> {
    let expected = header();
    if found.len() != expected.len() {
        return Err(DatasetError::HeaderLength {
            expected: expected.len(),
            found: found.len(),
        });
    }
    for (i, (f, e)) in found.iter().zip(&expected).enumerate() {
        if f.as_ref().trim() != e {
            return Err(DatasetError::HeaderColumn {
                index: i,
                expected: e.clone(),
                found: f.as_ref().to_string(),
            });
        }
    }
    Ok(())
}

impl DatasetRow {
    pub fn to_record(&self) -> Vec<String> {
        let mut r = vec![
            self.source.clone(),
            self.scenario.clone(),
            self.destination.clone(),
            self.window.to_string(),
        ];
        r.extend(self.features.0.iter().map(|x| fmt_num(*x)));
        r.extend(self.knobs.0.iter().map(|x| fmt_num(*x)));
        r.extend(self.outcomes.to_array().iter().map(|x| fmt_num(*x)));
        r
    }

    pub fn from_record<S: AsRef<str>>(rec: &[S]) -> Result<Self, DatasetError> {
        let names = header();
        if rec.len() != names.len() {
            return Err(DatasetError::RowLength {
                expected: names.len(),
                found: rec.len(),
            });
        }
        let num = |i: usize| -> Result<f64, DatasetError> {
            let s = rec[i].as_ref().trim();
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| DatasetError::NotANumber {
                    column: names[i].clone(),
                    value: s.to_string(),
                })
        };
        let window = num(3)? as u64;
        let mut features = [0.0; FEATURE_COUNT];
        for (j, f) in features.iter_mut().enumerate() {
            *f = num(4 + j)?;
        }
        let mut knobs = [0.0; KNOB_COUNT];
        for (j, k) in knobs.iter_mut().enumerate() {
            *k = num(4 + FEATURE_COUNT + j)?;
        }
        let mut outcomes = [0.0; OUTCOME_COUNT];
        for (j, o) in outcomes.iter_mut().enumerate() {
            *o = num(4 + FEATURE_COUNT + KNOB_COUNT + j)?;
        }
        Ok(DatasetRow {
            source: rec[0].as_ref().to_string(),
            scenario: rec[1].as_ref().to_string(),
            destination: rec[2].as_ref().to_string(),
            window,
            features: Features(features),
            knobs: Knobs(knobs),
            outcomes: Outcomes::from_array(outcomes),
        })
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> DatasetRow {
        DatasetRow {
            source: "sim".into(),
            scenario: "overload".into(),
            destination: "svc.ns".into(),
            window: 4,
            features: Features([1.5; FEATURE_COUNT]),
            knobs: Knobs::istio_defaults(),
            outcomes: Outcomes {
                offered_rps: 100.0,
                reward: -0.25,
                ..Default::default()
            },
        }
    }

    #[test]
    fn round_trips() {
        let r = row();
        assert_eq!(DatasetRow::from_record(&r.to_record()).unwrap(), r);
        check_header(&header()).unwrap();
    }

    #[test]
    fn bad_field_is_named() {
        let mut rec = row().to_record();
        rec[4] = "abc".into();
        assert_eq!(
            DatasetRow::from_record(&rec),
            Err(DatasetError::NotANumber {
                column: "rps".into(),
                value: "abc".into()
            })
        );
        let mut h = header();
        h[5] = "p50".into();
        assert!(matches!(
            check_header(&h),
            Err(DatasetError::HeaderColumn { index: 5, .. })
        ));
    }
}
