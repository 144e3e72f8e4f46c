//! `chatgw report`: saved latency distributions (`.hgrm`) side by side,
//! with each one's ratio to the first, and on one chart: the way to compare
//! two runs or two systems.

use std::path::PathBuf;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

use crate::hgrm;
use crate::plot;

/// The percentiles a report shows (1.0 is the max).
const PERCENTILES: [(&str, f64); 6] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999), ("max", 1.0)];

/// Flags of `chatgw report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// `.hgrm` files (as `chatgw loadgen --out` writes them); the first is
    /// the baseline of the ratios.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Names for the files, in order (default: their file names).
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// Also plot them on one chart: writes PREFIX.svg and PREFIX.png.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The chart's title.
    #[arg(long, default_value = "latency by percentile")]
    title: String,
}

/// Runs `chatgw report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.names.is_empty() || args.names.len() == args.files.len(), "give one name per file");
    let mut series = Vec::new();
    for (index, path) in args.files.iter().enumerate() {
        let name = args.names.get(index).cloned().unwrap_or_else(|| path.display().to_string());
        series.push((name, hgrm::read(path)?));
    }
    let values: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, rows)| PERCENTILES.iter().map(|(_, percentile)| hgrm::value_at(rows, *percentile)).collect())
        .collect();
    let ratio = |file: usize, row: usize| {
        let base = values[0][row];
        if base > 0.0 { values[file][row] / base } else { f64::NAN }
    };
    if args.json {
        let files: Vec<Value> = series
            .iter()
            .enumerate()
            .map(|(file, (name, rows))| {
                let at: serde_json::Map<String, Value> = PERCENTILES
                    .iter()
                    .enumerate()
                    .map(|(row, (label, _))| {
                        (format!("{label}_ms"), json!({ "value": values[file][row], "ratio": ratio(file, row) }))
                    })
                    .collect();
                json!({ "name": name, "count": rows.last().map_or(0, |row| row.total_count), "percentiles": at })
            })
            .collect();
        println!("{}", json!({ "files": files }));
    } else {
        let mut header = vec!["percentile".to_string()];
        for (file, (name, _)) in series.iter().enumerate() {
            header.push(format!("{name} (ms)"));
            if file > 0 {
                header.push("ratio".into());
            }
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
        for (row, (label, _)) in PERCENTILES.iter().enumerate() {
            let mut cells = vec![label.to_string()];
            for (file, file_values) in values.iter().enumerate() {
                cells.push(format!("{:.3}", file_values[row]));
                if file > 0 {
                    cells.push(format!("{:.2}x", ratio(file, row)));
                }
            }
            table.add_row(cells);
        }
        let mut counts = vec!["count".to_string()];
        for (file, (_, rows)) in series.iter().enumerate() {
            counts.push(rows.last().map_or(0, |row| row.total_count).to_string());
            if file > 0 {
                counts.push(String::new());
            }
        }
        table.add_row(counts);
        println!("{table}");
    }
    if let Some(prefix) = &args.plot {
        plot::latency_by_percentile(prefix, &args.title, &series)?;
        if !args.json {
            println!(
                "plotted {} and {}",
                prefix.with_extension("svg").display(),
                prefix.with_extension("png").display()
            );
        }
    }
    Ok(())
}
