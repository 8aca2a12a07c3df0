//! Line charts written as SVG and PNG (plotters), shared by the trainer's evaluation and the
//! testbed's benchmarks.
#![forbid(unsafe_code)]

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = c
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&c.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let colours = |i: usize| Palette99::pick(i).to_rgba();
    if c.log_x {
        let x0 = x0.max(1e-3);
        let mut chart = builder
            .build_cartesian_2d((x0..x1.max(x0 * 1.01)).log_scale(), (y0 - pad)..(y1 + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in c.series.iter().enumerate() {
            let col = colours(i);
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|(x, y)| *x > 0.0 && y.is_finite()),
                    col.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.6))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in c.series.iter().enumerate() {
            let col = colours(i);
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite()),
                    col.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.6))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` in `dir`; returns both paths.
pub fn write_chart(dir: &Path, stem: &str, c: &Chart) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|e| PlotError {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    draw(SVGBackend::new(&svg, (1000, 620)).into_drawing_area(), c).map_err(|message| {
        PlotError {
            path: svg.clone(),
            message,
        }
    })?;
    draw(BitMapBackend::new(&png, (1000, 620)).into_drawing_area(), c).map_err(|message| {
        PlotError {
            path: png.clone(),
            message,
        }
    })?;
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let c = Chart {
            title: "t".into(),
            x_label: "ms".into(),
            y_label: "F".into(),
            log_x: true,
            series: vec![Series {
                name: "a".into(),
                points: vec![(1.0, 0.1), (10.0, 0.9), (100.0, 1.0)],
            }],
        };
        let files = write_chart(dir.path(), "cdf", &c).unwrap();
        assert_eq!(files.len(), 2);
        for f in files {
            assert!(std::fs::metadata(&f).unwrap().len() > 100, "{f:?}");
        }
        // An unwritable directory is an error naming it.
        let bad = dir.path().join("file");
        std::fs::write(&bad, "x").unwrap();
        let e = write_chart(&bad, "c", &c).unwrap_err().to_string();
        assert!(e.contains("file"), "{e}");
    }
}
