//! Line charts and histograms as PNG (plotters, with an embedded DejaVu Sans font so that no
//! system font is needed).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::atomic_file::write_atomically;

/// The font family every figure uses.
pub const FONT: &str = "sans-serif";

/// Registers the embedded font once.
pub fn ensure_font() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // The embedded font is a valid TrueType file; registration cannot fail on it.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: RGBColor,
}

fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// The frame every figure shares: a 900 x 540 PNG with a title, labelled axes on the given
/// ranges, what `draw` adds, and the legend; written atomically to `path`.
fn figure(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    (x, y): (Range<f64>, Range<f64>),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<()> {
    ensure_font();
    write_atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(draw_error)?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
        Ok(())
    })
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line chart with an optional horizontal reference line, written atomically to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<(f64, &str)>,
) -> Result<()> {
    let (x0, x1) = padded_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = padded_range(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(reference.map(|r| r.0)),
    );
    figure(
        path,
        title,
        (x_label, y_label),
        (x0..x1, y0..y1),
        SeriesLabelPosition::LowerRight,
        |chart| {
            for s in series {
                let color = s.color;
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(draw_error)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
                    });
            }
            if let Some((level, label)) = reference {
                let style = RED.stroke_width(2);
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x0, level), (x1, level)],
                        10,
                        6,
                        style,
                    ))
                    .map_err(draw_error)?
                    .label(label.to_string())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
            }
            Ok(())
        },
    )
}

/// Bin masses of weighted points on `bins` equal bins over `[lo, hi]`, as densities.
pub fn histogram(points: &[f64], weights: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let width = (hi - lo) / bins as f64;
    let mut mass = vec![0.0; bins];
    for (p, w) in points.iter().zip(weights) {
        if *p >= lo && *p <= hi {
            let i = (((p - lo) / width) as usize).min(bins - 1);
            mass[i] += w;
        }
    }
    mass.iter().map(|m| m / width).collect()
}

/// Histograms of sets of 1-d samples (label, values, colour), with an optimum's density
/// (weighted points) drawn over them.
pub fn histograms(
    path: &Path,
    title: &str,
    sets: &[(&str, &[f64], RGBColor)],
    optimum: Option<(&[f64], &[f64])>,
) -> Result<()> {
    let (lo, hi) = padded_range(
        sets.iter()
            .flat_map(|(_, values, _)| values.iter().copied()),
    );
    let bins = 80;
    let width = (hi - lo) / bins as f64;
    let densities: Vec<Vec<f64>> = sets
        .iter()
        .map(|(_, values, _)| {
            let w = vec![1.0 / values.len().max(1) as f64; values.len()];
            histogram(values, &w, lo, hi, bins)
        })
        .collect();
    let optimum_density = optimum.map(|(p, w)| histogram(p, w, lo, hi, bins));
    let top = densities
        .iter()
        .flatten()
        .chain(optimum_density.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b))
        * 1.1;
    figure(
        path,
        title,
        ("x", "density"),
        (lo..hi, 0.0..top.max(1e-6)),
        SeriesLabelPosition::UpperLeft,
        |chart| {
            for ((label, _, color), density) in sets.iter().zip(&densities) {
                let fill = color.mix(0.35).filled();
                chart
                    .draw_series(density.iter().enumerate().map(|(i, &d)| {
                        let x = lo + i as f64 * width;
                        Rectangle::new([(x, 0.0), (x + width, d)], fill)
                    }))
                    .map_err(draw_error)?
                    .label(label.to_string())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 22, y + 6)], fill));
            }
            if let Some(density) = &optimum_density {
                let style = RED.stroke_width(2);
                chart
                    .draw_series(LineSeries::new(
                        density
                            .iter()
                            .enumerate()
                            .map(|(i, &d)| (lo + (i as f64 + 0.5) * width, d)),
                        style,
                    ))
                    .map_err(draw_error)?
                    .label("optimum p* ~ p_base exp(lambda r)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
            }
            Ok(())
        },
    )
}

/// Grey, for base-model samples.
pub const BASE_COLOR: RGBColor = RGBColor(140, 140, 140);
/// Blue, for adapted samples.
pub const ADAPTED_COLOR: RGBColor = RGBColor(31, 119, 180);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_densities_integrate_to_the_mass_inside() {
        let d = histogram(&[0.1, 0.2, 0.9, 5.0], &[0.25; 4], 0.0, 1.0, 4);
        let integral: f64 = d.iter().map(|v| v * 0.25).sum();
        assert!((integral - 0.75).abs() < 1e-12);
        assert_eq!(d[0], 2.0 * 0.25 / 0.25);
    }
}
