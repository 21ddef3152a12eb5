//! Plots: nodes over time, queue depth and cumulative cost, one panel per policy (small multiples) with
//! the lower bound drawn in; PNG and SVG through plotters.
//!
//! Text is drawn with an embedded subset of DejaVu Sans (ASCII only, 14 kB; Bitstream Vera licence, see
//! `assets/DejaVuSans-LICENSE.txt`) registered with plotters' `ab_glyph` backend, so plots render on
//! machines with no system fonts.

use crate::error::{Result, SimError};
use crate::report::Report;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1400, 720);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
];

fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
}

/// One panel: a policy's line and, grey, the bound's.
struct Panel {
    name: String,
    points: Vec<(f64, f64)>,
    bound: Vec<(f64, f64)>,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    bound_label: &str,
    panels: &[Panel],
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let all = panels
        .iter()
        .flat_map(|p| p.points.iter().chain(p.bound.iter()));
    let (x_max, y_max) = all.fold((1e-3f64, 1.0f64), |(x, y), (px, py)| {
        (x.max(*px), y.max(*py))
    });
    let y_max = y_max * 1.08;
    let root = root.titled(title, (FAMILY, 22)).map_err(err)?;
    let cols = 4usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((rows, cols));
    for (i, (area, panel)) in areas.iter().zip(panels).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.name, (FAMILY, 17))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("hours")
            .y_desc(y_desc)
            .x_labels(5)
            .y_labels(5)
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 12))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(err)?;
        if !panel.bound.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    panel.bound.iter().copied(),
                    RGBColor(40, 40, 40).stroke_width(1),
                ))
                .map_err(err)?
                .label(bound_label)
                .legend(|(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 18, y)],
                        RGBColor(40, 40, 40).stroke_width(2),
                    )
                });
        }
        chart
            .draw_series(LineSeries::new(
                panel.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(panel.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        if !panel.bound.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FAMILY, 11))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `nodes`, `queue` and `cost` plots, each as PNG and SVG, into `dir`; returns the files written.
/// Each plot has one panel per policy on shared axes (small multiples); the nodes and cost panels carry
/// the lower bound's line (nodes serving at full speed; the bound's cumulative cost).
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::Plot {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    if !font_ready() {
        return Err(SimError::Plot {
            path: dir.to_owned(),
            reason: "the embedded font could not be loaded".into(),
        });
    }
    let bound = |f: &dyn Fn(&crate::cluster::Sample) -> f64| -> Vec<(f64, f64)> {
        report
            .bound_series
            .iter()
            .map(|s| (s.t / 3600.0, f(s)))
            .collect()
    };
    let panels = |f: &dyn Fn(&crate::cluster::Sample) -> f64, with_bound: bool| -> Vec<Panel> {
        report
            .policies
            .iter()
            .map(|p| Panel {
                name: p.name.clone(),
                points: p.series.iter().map(|s| (s.t / 3600.0, f(s))).collect(),
                bound: if with_bound { bound(f) } else { Vec::new() },
            })
            .collect()
    };
    let charts: [(&str, &str, &str, &str, Vec<Panel>); 3] = [
        (
            "nodes",
            "GPU nodes over time (launching included)",
            "nodes",
            "bound: nodes serving (mean)",
            panels(&|s| f64::from(s.nodes), true),
        ),
        (
            "queue",
            "Requests waiting",
            "queued",
            "",
            panels(&|s| s.queued as f64, false),
        ),
        (
            "cost",
            "Cumulative cost",
            "USD",
            "lower bound",
            panels(&|s| s.cost_usd, true),
        ),
    ];
    let mut written = Vec::new();
    for (stem, title, y_desc, bound_label, series) in &charts {
        let title = format!("{title}: {}", short(&report.workload));
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        let fail = |path: &Path, reason: String| SimError::Plot {
            path: path.to_owned(),
            reason,
        };
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, &title, y_desc, bound_label, series).map_err(|r| fail(&png, r))?;
        }
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, &title, y_desc, bound_label, series).map_err(|r| fail(&svg, r))?;
        }
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

fn short(s: &str) -> String {
    let s = s.split(" (").next().unwrap_or(s);
    s.chars().take(70).collect()
}
