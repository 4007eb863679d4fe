//! Pictures of a run, a merge, or a benchmark's targets side by side: one
//! SVG with the latency distribution by percentile (the percentile axis
//! log-scaled, as HdrHistogram's plotter draws it: 90%, 99%, 99.9%... are
//! evenly spaced), and the rate and p99 over time, one line per series.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One line in every chart: a run, a log, or a benchmark target.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// Latencies, nanoseconds.
    pub latency: Histogram<u64>,
    /// Per interval: seconds since the start (the interval's end), rate
    /// (per second), p99 (microseconds).
    pub timeline: Vec<(f64, f64, f64)>,
}

/// How far right the percentile axis goes: 99.999% (1 in 10^5).
const NINES: f64 = 5.0;

impl Default for Series {
    fn default() -> Series {
        Series {
            name: String::new(),
            latency: crate::report::histogram(),
            timeline: Vec::new(),
        }
    }
}

/// The percentile of a point on the log-scaled axis (0: 0%, 1: 90%,
/// 2: 99%, ...).
fn quantile_at(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

fn percent_label(x: &f64) -> String {
    let q = quantile_at(*x) * 100.0;
    match x.round() as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("{q:.*}%", (n - 2).max(0) as usize),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `series` into an SVG at `path`, titled `title`; `what` names the
/// latency (`call latency`, `round trip`...) and `per` the rate's unit
/// (`calls`, `messages`).
pub fn draw(
    path: &Path,
    title: &str,
    what: &str,
    per: &str,
    series: &[Series],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("--plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(420);
    let (left, right) = bottom.split_horizontally(500);

    // Latency by percentile.
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            (0..=(NINES * 40.0) as usize)
                .map(|i| {
                    let x = i as f64 / 40.0;
                    let us = s.latency.value_at_quantile(quantile_at(x)) as f64 / 1000.0;
                    (x, us)
                })
                .collect()
        })
        .collect();
    let top_us = points.iter().flatten().map(|&(_, y)| y).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{what} by percentile"), ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..NINES, 0f64..top_us)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(NINES as usize + 1)
        .x_label_formatter(&percent_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("latency (us)")
        .x_desc("percentile")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (s, line)) in series.iter().zip(points).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;

    // Rate and p99 over time.
    let end = series
        .iter()
        .flat_map(|s| s.timeline.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    for (area, label, pick) in [
        (&left, format!("{per}/s over time"), 1usize),
        (&right, "p99 over time (us)".to_string(), 2usize),
    ] {
        let value = |p: &(f64, f64, f64)| if pick == 1 { p.1 } else { p.2 };
        let high = series
            .iter()
            .flat_map(|s| s.timeline.iter().map(value))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(label, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..end, 0f64..high)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.timeline.iter().map(|p| (p.0, value(p))),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_is_log_scaled() {
        assert_eq!(percent_label(&0.0), "0%");
        assert_eq!(percent_label(&1.0), "90%");
        assert_eq!(percent_label(&2.0), "99%");
        assert_eq!(percent_label(&3.0), "99.9%");
        assert_eq!(percent_label(&5.0), "99.999%");
        assert!((quantile_at(2.0) - 0.99).abs() < 1e-12);
    }
}
