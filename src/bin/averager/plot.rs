//! `demo --plot FILE.svg`: the spread across peers per round, on a log scale, as SVG (plotters'
//! SVG backend only: no fonts or image libraries needed).

use std::path::Path;

use plotters::prelude::*;

use crate::Result;
use crate::failure::Failure;

/// A log axis cannot show 0: a spread of exactly 0 (every peer bit-identical) is drawn at this
/// floor, and the caption says so.
const FLOOR: f64 = 1e-9;

/// Draws `spreads` (index = round, 0 = before the first round) to an SVG file at `path`.
///
/// # Errors
/// When the file cannot be written.
pub(crate) fn spread_svg(path: &Path, spreads: &[f64], title: &str) -> Result<()> {
    draw(path, spreads, title).map_err(|e| Failure::new(format!("--plot {}: {e}", path.display())))
}

fn draw(path: &Path, spreads: &[f64], title: &str) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(f64, f64)> = spreads
        .iter()
        .enumerate()
        .map(|(round, s)| (round as f64, if s.is_finite() && *s > FLOOR { *s } else { FLOOR }))
        .collect();
    let hit_floor = spreads.iter().any(|s| !(s.is_finite() && *s > FLOOR));
    let top = points.iter().map(|p| p.1).fold(FLOOR, f64::max) * 2.0;
    let bottom = points.iter().map(|p| p.1).fold(top, f64::min) / 2.0;
    let last_round = (points.len().max(2) - 1) as f64;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(60);
    head.draw(&Text::new(short(title, 100), (10, 10), ("sans-serif", 16).into_font()))?;
    let note = if hit_floor {
        format!("spread across peers per round (a spread of 0 is drawn at {FLOOR:.0e})")
    } else {
        "spread across peers per round".to_string()
    };
    head.draw(&Text::new(note, (10, 34), ("sans-serif", 14).into_font()))?;

    let mut chart = ChartBuilder::on(&body)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..last_round, (bottom..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("max over elements of (max - min across peers)")
        .x_labels(points.len().clamp(2, 20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))?;
    chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

/// `text`, cut to `max` characters.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max - 3).collect::<String>() + "..."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_even_with_zero_spread() {
        let dir = std::env::temp_dir().join(format!("averager-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spread.svg");
        spread_svg(&path, &[7.9, 3.1, 0.9, 0.0], "a test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{}", &svg[..200.min(svg.len())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        assert!(spread_svg(Path::new("/nonexistent-dir/x.svg"), &[1.0, 0.5], "t").is_err());
    }
}
