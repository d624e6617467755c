//! `loadtest --plot FILE.svg`: one row per policy, each backend's share of the requests and the
//! p50/p99 latency per window over time, with the kill and restart of backend 3 marked. Drawn
//! with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use crate::{Run, SAMPLE};

/// Latency percentiles are taken over windows this long (ms).
const WINDOW_MS: u32 = 250;

pub(crate) fn draw(path: &Path, rows: &[Run], targets: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let n = rows.len().max(1);
    let root = SVGBackend::new(path, (1200, 280 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let cells = root.split_evenly((n, 2));
    for (r, run) in rows.iter().enumerate() {
        share_chart(&cells[2 * r], run, targets)?;
        latency_chart(&cells[2 * r + 1], run)?;
    }
    root.present()?;
    Ok(())
}

/// Vertical lines at the kill and restart of backend 3.
fn faults(run: &Run) -> Vec<(f64, &'static str, RGBColor)> {
    let mut v = Vec::new();
    if let Some(t) = run.killed_at {
        v.push((t, "b3 killed", RED));
    }
    if let Some(t) = run.restarted_at {
        v.push((t, "b3 restarted", GREEN));
    }
    v
}

fn share_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    run: &Run,
    targets: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let end = run.secs.max(SAMPLE.as_secs_f64());
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: share per backend", run.policy), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..end, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("% of requests")
        .draw()?;
    // Each backend's share of the requests completed between two samples.
    for (b, target) in targets.iter().enumerate() {
        let color = Palette99::pick(b).to_rgba();
        let points: Vec<(f64, f64)> = run
            .shares
            .windows(2)
            .filter_map(|w| {
                let total: u64 = w[1].1.iter().zip(&w[0].1).map(|(a, b)| a - b).sum();
                let mine = w[1].1.get(b)? - w[0].1.get(b)?;
                (total > 0).then(|| (w[1].0, 100.0 * mine as f64 / total as f64))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("b{b} {target}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    for (t, label, color) in faults(run) {
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, 100.0)], color.stroke_width(1)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

fn latency_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    run: &Run,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut windows: Vec<Vec<u32>> = Vec::new();
    for &(at, us) in &run.timeline {
        let w = (at / WINDOW_MS) as usize;
        if windows.len() <= w {
            windows.resize(w + 1, Vec::new());
        }
        windows[w].push(us);
    }
    let pct = |v: &mut Vec<u32>, p: f64| -> f64 {
        v.sort_unstable();
        let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
        f64::from(v[i]) / 1000.0
    };
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for (w, v) in windows.iter_mut().enumerate() {
        if v.is_empty() {
            continue;
        }
        let t = (w as f64 + 1.0) * f64::from(WINDOW_MS) / 1000.0;
        p50.push((t, pct(v, 0.5)));
        p99.push((t, pct(v, 0.99)));
    }
    let top = p99.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let end = run.secs.max(SAMPLE.as_secs_f64());
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: latency per {WINDOW_MS} ms", run.policy),
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart.configure_mesh().x_desc("s").y_desc("ms").draw()?;
    chart
        .draw_series(LineSeries::new(p50, BLUE.stroke_width(2)))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(p99, MAGENTA.stroke_width(2)))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MAGENTA.stroke_width(2)));
    for (t, label, color) in faults(run) {
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, top)], color.stroke_width(1)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
