//! The plot: one panel per report row, native and container side by side (bars: medians;
//! whiskers: min to max; dots: the repetitions), in the row's own unit. SVG, no font files.

use super::report::Report;
use plotters::prelude::*;
use std::path::Path;

const COLS: usize = 4;
const PANEL: (u32, u32) = (330, 240);

/// Height of the native/Docker/berth panel at the bottom, when there are Docker rows.
const SIDE_BY_SIDE: u32 = 380;

pub fn write(rep: &Report, path: &Path) -> Result<(), String> {
    let n = rep.rows.len().max(1);
    let rows = n.div_ceil(COLS);
    let docker = groups(rep);
    let extra = if docker.is_empty() { 0 } else { SIDE_BY_SIDE };
    let size = (PANEL.0 * COLS as u32, PANEL.1 * rows as u32 + 40 + extra);
    let root = SVGBackend::new(path, size).into_drawing_area();
    let (top, bottom) = root.split_vertically(PANEL.1 * rows as u32 + 40);
    draw(rep, &top, rows).map_err(|e| format!("plot: {e}"))?;
    if !docker.is_empty() {
        side_by_side(&docker, &bottom).map_err(|e| format!("plot: {e}"))?;
    }
    root.present()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Per Docker row: its name and the overhead % of Docker, berth mount, berth extract.
type Group = (String, [Option<f64>; 3]);

fn groups(rep: &Report) -> Vec<Group> {
    let overhead = |r: Option<&super::Row>| r.and_then(super::report::figures).map(|f| f.overhead);
    super::report::docker_rows(rep)
        .into_iter()
        .map(|d| {
            let find = |mode: &str| super::report::berth_beside(rep, d, mode);
            (
                format!("{}: {}", d.workload, d.metric),
                [
                    overhead(Some(d)),
                    overhead(find("mount")),
                    overhead(find("extract")),
                ],
            )
        })
        .collect()
}

/// One chart: overhead % against native of Docker, berth mount and berth extract per
/// workload, bars clipped at +-100% (the table has the figures).
fn side_by_side(groups: &[Group], area: &Area) -> Result<(), Box<dyn std::error::Error>> {
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "overhead vs native, % (blue: Docker, red: berth mount, green: berth extract; clipped at +-100)",
            ("sans-serif", 13),
        )
        .margin(10)
        .x_label_area_size(20)
        .y_label_area_size(46)
        .build_cartesian_2d(0f64..n, -100f64..100f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(9)
        .label_style(("sans-serif", 10))
        .draw()?;
    for (i, (name, v)) in groups.iter().enumerate() {
        let x = i as f64;
        for (k, (val, color)) in v.iter().zip([BLUE, RED, GREEN]).enumerate() {
            if let Some(o) = val {
                let o = o.clamp(-100.0, 100.0);
                let x0 = x + 0.15 + 0.23 * k as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.2, o)],
                    color.mix(0.6).filled(),
                )))?;
            }
        }
        let label: String = name.chars().take(34).collect();
        chart.draw_series(std::iter::once(Text::new(
            label,
            (x + 0.05, 95.0 - 6.0 * (i % 3) as f64),
            ("sans-serif", 8).into_font(),
        )))?;
    }
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(rep: &Report, root: &Area, rows: usize) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw_text(
        &format!(
            "berth: native vs container, {} reps (bars: median, whiskers: min-max, dots: reps)",
            rep.args.reps
        ),
        &("sans-serif", 16).into_font().color(&BLACK),
        (10, 12),
    )?;
    let panels = body.split_evenly((rows, COLS));
    for (area, r) in panels.iter().zip(&rep.rows) {
        let caption = format!("{}: {}", r.workload, r.metric);
        let all: Vec<f64> = r.native.iter().chain(&r.container).copied().collect();
        let top = all.iter().copied().fold(0.0f64, f64::max) * 1.25;
        let top = if top > 0.0 { top } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 11))
            .margin(6)
            .x_label_area_size(18)
            .y_label_area_size(46)
            .build_cartesian_2d(0f64..2f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(5)
            .y_desc(r.unit.as_str())
            .label_style(("sans-serif", 10))
            .draw()?;
        let short = r.container_label.replace("berth --mode ", "berth ");
        let sides = [
            (0.0, &r.native, BLUE, r.native_label.clone()),
            (1.0, &r.container, RED, short),
        ];
        for (x0, samples, color, label) in sides {
            chart.draw_series(std::iter::once(Text::new(
                label,
                (x0 + 0.08, top * 0.97),
                ("sans-serif", 10).into_font(),
            )))?;
            if samples.is_empty() {
                continue;
            }
            let s = crate::stats::Summary::of(samples);
            let (lo, hi) = (
                samples.iter().copied().fold(f64::INFINITY, f64::min),
                samples.iter().copied().fold(0.0f64, f64::max),
            );
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0 + 0.2, 0.0), (x0 + 0.8, s.median)],
                color.mix(0.35).filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x0 + 0.5, lo), (x0 + 0.5, hi)],
                BLACK.stroke_width(1),
            )))?;
            let k = samples.len().max(2) as f64;
            chart.draw_series(samples.iter().enumerate().map(|(i, v)| {
                Circle::new(
                    (x0 + 0.3 + 0.4 * i as f64 / (k - 1.0), *v),
                    2,
                    color.filled(),
                )
            }))?;
        }
        if let Some(why) = &r.failed {
            let mark = if why.starts_with("not run") {
                "NOT RUN"
            } else {
                "FAILED"
            };
            let short: String = why.chars().take(48).collect();
            chart.draw_series([
                Text::new(
                    mark.to_string(),
                    (1.1, top * 0.6),
                    ("sans-serif", 12).into_font().color(&RED),
                ),
                Text::new(short, (0.05, top * 0.45), ("sans-serif", 8).into_font()),
            ])?;
        }
    }
    Ok(())
}
