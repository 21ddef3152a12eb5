//! Plots: nodes over time per policy, queue depth, cumulative cost; PNG and SVG through plotters.
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
const SIZE: (u32, u32) = (1100, 560);
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

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    series: &Series,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.08;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `nodes`, `queue` and `cost` plots, each as PNG and SVG, into `dir`; returns the files written.
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
    let pick = |f: &dyn Fn(&crate::cluster::Sample) -> f64| -> Series {
        report
            .policies
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.series.iter().map(|s| (s.t / 3600.0, f(s))).collect(),
                )
            })
            .collect()
    };
    let charts: [(&str, String, &str, Series); 3] = [
        (
            "nodes",
            "GPU nodes over time (launching included)".into(),
            "nodes",
            pick(&|s| f64::from(s.nodes)),
        ),
        (
            "queue",
            "Requests waiting".into(),
            "queued requests",
            pick(&|s| s.queued as f64),
        ),
        (
            "cost",
            "Cumulative cost".into(),
            "USD",
            pick(&|s| s.cost_usd),
        ),
    ];
    let mut written = Vec::new();
    for (stem, title, y_desc, series) in &charts {
        let title = format!("{title}: {}", short(&report.workload));
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        let fail = |path: &Path, reason: String| SimError::Plot {
            path: path.to_owned(),
            reason,
        };
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, &title, y_desc, series).map_err(|r| fail(&png, r))?;
        }
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, &title, y_desc, series).map_err(|r| fail(&svg, r))?;
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
