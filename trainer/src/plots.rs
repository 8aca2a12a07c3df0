//! Plots: PPO reward curves, latency CDFs per policy, knob trajectories (line charts from
//! `meshtune-plots`).

use meshtune_core::histogram::bucket_value;
use meshtune_core::LatencyHistogram;
pub use meshtune_plots::{write_chart, Chart, PlotError, Series};

/// Latency CDF points (ms, cumulative fraction) from a histogram.
pub fn latency_cdf(h: &LatencyHistogram) -> Vec<(f64, f64)> {
    let total = h.count().max(1) as f64;
    let mut acc = 0u64;
    h.nonzero_buckets()
        .map(|(i, n)| {
            acc += n;
            (bucket_value(i as usize) / 1000.0, acc as f64 / total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = LatencyHistogram::new();
        for v in [1_000u64, 2_000, 5_000, 50_000] {
            h.record(v);
        }
        let cdf = latency_cdf(&h);
        assert_eq!(cdf.last().unwrap().1, 1.0);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let c = Chart {
            title: "t".into(),
            x_label: "ms".into(),
            y_label: "F".into(),
            log_x: true,
            series: vec![Series {
                name: "a".into(),
                points: cdf,
            }],
        };
        let files = write_chart(dir.path(), "cdf", &c).unwrap();
        for f in files {
            assert!(std::fs::metadata(&f).unwrap().len() > 100, "{f:?}");
        }
    }
}
