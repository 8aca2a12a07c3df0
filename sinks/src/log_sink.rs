//! Observe/recommend mode: a human-readable diff of knobs per destination, nothing applied.

use std::io::Write;
use std::sync::Mutex;

use meshtune_core::knobs::ISTIO_UNLIMITED;
use meshtune_core::{Knob, Knobs};

use crate::sink::{ApplyFuture, ApplyReport, Decision, Outcome, Sink};

/// One knob that differs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnobChange {
    pub knob: Knob,
    /// `None` when the previous value is unknown.
    pub old: Option<f64>,
    pub new: f64,
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

/// Knobs whose value changes from `previous` to `next`, in knob order. Without `previous`,
/// every knob is listed with `old: None`.
pub fn diff(previous: Option<&Knobs>, next: &Knobs) -> Vec<KnobChange> {
    Knob::ALL
        .iter()
        .filter_map(|&knob| {
            let new = next.get(knob);
            match previous.map(|p| p.get(knob)) {
                Some(old) if same(old, new) => None,
                old => Some(KnobChange { knob, old, new }),
            }
        })
        .collect()
}

/// A knob value as a person reads it: `unlimited` for Istio's 2^32-1 limits, `none` for a
/// disabled timeout (0), durations as `1.5s`/`250ms`, otherwise the number.
pub fn format_value(knob: Knob, v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    let is_limit = matches!(
        knob,
        Knob::MaxConnections
            | Knob::Http1MaxPendingRequests
            | Knob::Http2MaxRequests
            | Knob::MaxRetries
    );
    let is_ms = knob.spec().unit == "ms";
    if (is_limit && v >= ISTIO_UNLIMITED) || (knob == Knob::MaxRequestsPerConnection && v == 0.0) {
        "unlimited".into()
    } else if is_ms && v == 0.0 {
        "none".into()
    } else if is_ms && v >= 1000.0 {
        format!("{}s", (v / 1000.0 * 1000.0).round() / 1000.0)
    } else if is_ms {
        format!("{}ms", v.round())
    } else if knob == Knob::MaxEjectionPercent {
        format!("{}%", v.round())
    } else {
        format!("{}", v.round())
    }
}

/// The diff as text: a header line and one `  knob: old → new` line per change.
pub fn render_diff(destination: &str, namespace: &str, changes: &[KnobChange]) -> String {
    let mut s = format!("{destination} ({namespace}): ");
    if changes.is_empty() {
        s.push_str("no change\n");
        return s;
    }
    s.push_str(&format!("{} change(s)\n", changes.len()));
    for c in changes {
        let old = c
            .old
            .map(|o| format_value(c.knob, o))
            .unwrap_or_else(|| "?".into());
        s.push_str(&format!(
            "  {}: {} → {}\n",
            c.knob.name(),
            old,
            format_value(c.knob, c.new)
        ));
    }
    s
}

/// Writes a diff per decision to a writer (stdout by default) and to `tracing`.
pub struct LogSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl LogSink {
    /// Logs to stdout.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    /// Logs to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
        Box::pin(async move {
            let mut report = ApplyReport::default();
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            for d in decisions {
                let changes = diff(d.previous.as_ref(), &d.knobs);
                let text = render_diff(&d.destination, &d.namespace, &changes);
                tracing::info!(destination = %d.destination, namespace = %d.namespace,
                    changes = changes.len(), "recommendation\n{text}");
                let outcome = match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                    Ok(()) => Outcome::Logged {
                        changes: changes.len(),
                    },
                    Err(e) => Outcome::Failed {
                        error: format!("writing log: {e}"),
                    },
                };
                report.push(d, outcome);
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn diff_lists_only_changed_knobs() {
        let old = Knobs::istio_defaults();
        let mut new = old;
        new.set(Knob::MaxConnections, 128.0);
        new.set(Knob::RouteTimeoutMs, 1_500.0);
        let d = diff(Some(&old), &new);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].knob, Knob::MaxConnections);
        assert_eq!(d[0].old, Some(ISTIO_UNLIMITED));
        assert_eq!(d[1].new, 1_500.0);
        assert!(diff(Some(&new), &new).is_empty());
        assert_eq!(diff(None, &new).len(), meshtune_core::KNOB_COUNT);
    }

    #[test]
    fn rendered_diff_reads_like_a_person_wrote_it() {
        let old = Knobs::istio_defaults();
        let mut new = old;
        new.set(Knob::MaxConnections, 128.0);
        new.set(Knob::RouteTimeoutMs, 1_500.0);
        new.set(Knob::PerTryTimeoutMs, 250.0);
        new.set(Knob::MaxEjectionPercent, 30.0);
        let text = render_diff("reviews", "bookinfo", &diff(Some(&old), &new));
        assert_eq!(
            text,
            "reviews (bookinfo): 4 change(s)\n  tcp.maxConnections: unlimited → 128\n  \
             timeout: none → 1.5s\n  retries.perTryTimeout: none → 250ms\n  \
             outlierDetection.maxEjectionPercent: 10% → 30%\n"
        );
        assert_eq!(render_diff("a", "b", &[]), "a (b): no change\n");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn log_sink_writes_one_diff_per_decision() {
        let buf = Buf::default();
        let sink = LogSink::new(Box::new(buf.clone()));
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RetryAttempts, 1.0);
        let ds = vec![
            Decision {
                destination: "a".into(),
                namespace: "n".into(),
                knobs: k,
                previous: Some(Knobs::istio_defaults()),
            },
            Decision {
                destination: "b".into(),
                namespace: "n".into(),
                knobs: k,
                previous: Some(k),
            },
        ];
        let r = sink.apply(&ds).await.unwrap();
        assert_eq!(r.items[0].outcome, Outcome::Logged { changes: 1 });
        assert_eq!(r.items[1].outcome, Outcome::Logged { changes: 0 });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("a (n): 1 change(s)\n  retries.attempts: 2 → 1\n"),
            "{text}"
        );
        assert!(text.contains("b (n): no change"), "{text}");
    }
}
