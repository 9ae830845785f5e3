//! The chart: median throughput against submitters, one line per
//! contender, log-log, as SVG (no fonts needed: text stays text).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{summarize, thousands};
use crate::{Results, Settings};

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("cannot draw the chart: {e:?}")
}

/// Draws `benchmarks.svg`.
pub fn draw(s: &Settings, r: &Results, path: &Path) -> Result<(), String> {
    let mut lines: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for (ci, name) in r.names.iter().enumerate() {
        let points: Vec<(f64, f64)> = s
            .submitters
            .iter()
            .enumerate()
            .filter_map(|(ni, &n)| {
                summarize(&r.throughput[ci][ni], |t| t.ops_per_sec)
                    .ok()
                    .map(|st| (n as f64, st.median))
            })
            .collect();
        if !points.is_empty() {
            lines.push((name, points));
        }
    }
    let all = lines.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo <= hi {
        (lo / 2.0, hi * 2.0)
    } else {
        (1.0, 10.0)
    };
    let max_n = s.submitters.iter().copied().max().unwrap_or(1) as f64;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput of no-op operations (median ops/s, higher is better)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(100)
        .build_cartesian_2d((0.8f64..max_n * 1.25).log_scale(), (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("concurrent submitters (closed loop)")
        .y_desc("operations per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| thousands(*y))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        // The floor in black, baler thick; the others from the palette.
        let color = if *name == "floor" {
            BLACK.to_rgba()
        } else {
            Palette99::pick(i).to_rgba()
        };
        let width = if *name == "baler" { 4 } else { 2 };
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(width))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
