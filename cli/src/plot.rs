//! Latency-by-percentile charts (the way HdrHistogram's plotter draws
//! them: the x axis is 1/(1-percentile) on a log scale, so the tail gets
//! room), as SVG and PNG through plotters.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::hgrm::Row;

/// The x axis ends at the 99.9999th percentile.
const X_MAX: f64 = 1e6;

fn x_of(percentile: f64) -> f64 {
    (1.0 / (1.0 - percentile).max(1.0 / X_MAX)).clamp(1.0, X_MAX)
}

fn percentile_label(x: &f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / x);
    if percentile < 1.0 {
        "0%".into()
    } else {
        let text = format!("{percentile:.4}");
        format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, Vec<Row>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(|error| anyhow::anyhow!("drawing: {error:?}"))?;
    let y_max =
        series.iter().flat_map(|(_, rows)| rows.iter().map(|row| row.value_ms)).fold(0.0f64, f64::max).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..X_MAX).log_scale(), 0f64..y_max)
        .map_err(|error| anyhow::anyhow!("drawing: {error:?}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile_label)
        .draw()
        .map_err(|error| anyhow::anyhow!("drawing: {error:?}"))?;
    for (index, (name, rows)) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                rows.iter().filter(|row| row.percentile < 1.0).map(|row| (x_of(row.percentile), row.value_ms)),
                color.stroke_width(2),
            ))
            .map_err(|error| anyhow::anyhow!("drawing: {error:?}"))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|error| anyhow::anyhow!("drawing: {error:?}"))?;
    area.present().map_err(|error| anyhow::anyhow!("writing the chart: {error:?}"))?;
    Ok(())
}

/// Draws `series` (name, distribution) into `<prefix>.svg` and `<prefix>.png`.
pub fn latency_by_percentile(prefix: &Path, title: &str, series: &[(String, Vec<Row>)]) -> anyhow::Result<()> {
    let svg = prefix.with_extension("svg");
    let png = prefix.with_extension("png");
    draw(SVGBackend::new(&svg, (1000, 600)).into_drawing_area(), title, series)
        .with_context(|| format!("plotting {}", svg.display()))?;
    draw(BitMapBackend::new(&png, (1000, 600)).into_drawing_area(), title, series)
        .with_context(|| format!("plotting {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_the_log_axis_and_back() {
        assert_eq!(x_of(0.0), 1.0);
        assert_eq!(x_of(0.99), 100.0000000000001_f64.min(x_of(0.99)).max(99.99));
        assert_eq!(x_of(1.0), X_MAX);
        assert_eq!(percentile_label(&1.0), "0%");
        assert_eq!(percentile_label(&10.0), "90%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
    }

    #[test]
    fn a_chart_is_written_as_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            Row { value_ms: 0.5, percentile: 0.0, total_count: 1 },
            Row { value_ms: 1.0, percentile: 0.5, total_count: 50 },
            Row { value_ms: 4.0, percentile: 0.99, total_count: 99 },
            Row { value_ms: 9.0, percentile: 1.0, total_count: 100 },
        ];
        let prefix = dir.path().join("latency");
        latency_by_percentile(&prefix, "test", &[("delivery".into(), rows)]).unwrap();
        let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("delivery"));
        let png = std::fs::read(prefix.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
