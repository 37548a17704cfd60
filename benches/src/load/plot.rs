//! `--plot FILE.svg`: throughput over time and the latency distribution, side by side.

use std::path::Path;

use plotters::prelude::*;

use super::stats::Summary;

/// Draws `summary` into an SVG file.
pub fn write_svg(path: &Path, title: &str, summary: &Summary) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);

    let seconds = summary.per_second.len().max(1) as u64;
    let max_rate = summary
        .per_second
        .iter()
        .map(|s| s.requests_per_s())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..seconds + 1, 0f64..max_rate * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc("requests/s")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            summary
                .per_second
                .iter()
                .map(|s| (s.second, s.requests_per_s())),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?;

    // x = -log10(1 - quantile): 1 is p90, 2 is p99, 3 is p99.9.
    let points: Vec<(f64, f64)> = summary
        .quantiles
        .iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, us)| (-(1.0 - q).log10(), *us as f64 / 1000.0))
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(0.001f64, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("latency distribution", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x.ceil(), 0f64..max_y * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("p{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(points, &RED))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
