//! Running a scenario across child processes (`--procs`), so that one
//! process's open-file limit does not cap the connections: each child runs
//! its share and prints its report as JSON with its histograms (V2,
//! compressed, base64), and the parent adds them up.

use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde_json::Value;

use super::latency::Figures;

/// A histogram as text for a child's report.
pub fn encode_histogram(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|error| anyhow::anyhow!("serializing a histogram: {error:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A histogram from a child's report.
pub fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("histogram is not base64")?;
    Deserializer::new().deserialize(&mut &bytes[..]).map_err(|error| anyhow::anyhow!("reading a histogram: {error:?}"))
}

/// The histograms and counts a child adds to its JSON report.
pub fn figures_json(figures: &Figures) -> anyhow::Result<Value> {
    Ok(serde_json::json!({
        "delivery": encode_histogram(&figures.delivery)?,
        "ack": encode_histogram(&figures.ack)?,
        "connect": encode_histogram(&figures.connect)?,
        "send_lag": encode_histogram(&figures.send_lag)?,
        "timeline": figures
            .timeline
            .seconds()
            .map(|(second, histogram)| Ok(serde_json::json!([second, encode_histogram(histogram)?])))
            .collect::<anyhow::Result<Vec<Value>>>()?,
    }))
}

/// A child's figures from its report (counts, errors and histograms).
pub fn figures_from(report: &Value) -> anyhow::Result<Figures> {
    let mut figures = Figures::new();
    let histograms = &report["histograms"];
    figures.delivery = decode_histogram(histograms["delivery"].as_str().context("no delivery histogram")?)?;
    figures.ack = decode_histogram(histograms["ack"].as_str().context("no ack histogram")?)?;
    figures.connect = decode_histogram(histograms["connect"].as_str().context("no connect histogram")?)?;
    figures.send_lag = decode_histogram(histograms["send_lag"].as_str().context("no send lag histogram")?)?;
    for entry in histograms["timeline"].as_array().context("no timeline")? {
        let second = entry[0].as_u64().context("a timeline entry without its second")? as usize;
        let histogram = decode_histogram(entry[1].as_str().context("a timeline entry without its histogram")?)?;
        figures.timeline.add_second(second, &histogram)?;
    }
    figures.sent = report["sent"].as_u64().context("no sent count")?;
    figures.acked = report["acked"].as_u64().context("no acked count")?;
    figures.delivered = report["delivered"].as_u64().context("no delivered count")?;
    for (kind, count) in report["errors"].as_object().into_iter().flatten() {
        *figures.errors.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
    }
    for (kind, count) in report["events"].as_object().into_iter().flatten() {
        *figures.events.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
    }
    Ok(figures)
}

/// A child's command line: `loadgen <scenario> --json`, then each flag
/// that has a value.
pub fn child_args(scenario: &str, flags: Vec<(&str, Option<String>)>) -> Vec<String> {
    let mut args: Vec<String> = ["loadgen", scenario, "--json"].iter().map(|arg| arg.to_string()).collect();
    for (flag, value) in flags {
        if let Some(value) = value {
            args.push(flag.to_string());
            args.push(value);
        }
    }
    args
}

/// Prints a report as JSON: a child's with its histograms (its parent adds
/// them up), a parent's with how many processes ran it.
pub fn print_json(report: &impl serde::Serialize, figures: &Figures, child: bool, procs: usize) -> anyhow::Result<()> {
    let mut json = serde_json::to_value(report)?;
    if child {
        json["histograms"] = figures_json(figures)?;
    } else {
        json["procs"] = procs.into();
    }
    println!("{json}");
    Ok(())
}

/// Runs this binary once per argument list, all at once, and returns each
/// one's JSON report (its last stdout line).
pub fn run_children(arg_lists: Vec<Vec<String>>) -> anyhow::Result<Vec<Value>> {
    let exe = std::env::current_exe().context("finding the chatgw binary")?;
    let children = arg_lists
        .iter()
        .enumerate()
        .map(|(index, args)| {
            Command::new(&exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting load generator process {index}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut reports = Vec::with_capacity(children.len());
    let mut failures = Vec::new();
    for (index, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        match text.lines().rev().find(|line| line.starts_with('{')).map(serde_json::from_str::<Value>) {
            Some(Ok(report)) => reports.push(report),
            _ => failures.push(format!("process {index} ({})", output.status)),
        }
    }
    if !failures.is_empty() {
        bail!("load generator processes failed: {}", failures.join(", "));
    }
    Ok(reports)
}

/// Splits `total` into `parts` shares that differ by at most `unit`, each a
/// multiple of `unit` (pairs: unit 2).
pub fn shares(total: usize, parts: usize, unit: usize) -> anyhow::Result<Vec<usize>> {
    ensure!(parts >= 1 && unit >= 1 && total.is_multiple_of(unit), "cannot split {total} into {parts} parts of {unit}");
    let units = total / unit;
    ensure!(units >= parts, "{total} is too few to split over {parts} processes");
    Ok((0..parts).map(|part| (units / parts + usize::from(part < units % parts)) * unit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_travel_as_text() {
        let mut histogram = super::super::latency::histogram();
        for micros in [5, 50, 500, 5000] {
            histogram.record(micros).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&histogram).unwrap()).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), histogram.max());
        assert!(decode_histogram("not base64!").is_err());
    }

    #[test]
    fn child_arguments_leave_out_unset_flags() {
        let args = child_args("dm", vec![("--users", Some("4".into())), ("--in-flight", None)]);
        assert_eq!(args, ["loadgen", "dm", "--json", "--users", "4"]);
    }

    #[test]
    fn shares_are_even_and_whole() {
        assert_eq!(shares(10, 3, 2).unwrap(), vec![4, 4, 2]);
        assert_eq!(shares(9, 3, 1).unwrap(), vec![3, 3, 3]);
        assert!(shares(2, 3, 2).is_err());
        assert!(shares(5, 2, 2).is_err());
    }
}
