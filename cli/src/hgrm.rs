//! Latency histograms on disk, in HdrHistogram's own formats: the
//! percentile distribution (`.hgrm`, as `outputPercentileDistribution`
//! writes it, values in milliseconds) and the interval log (`.hlog`,
//! compressed histograms with their start times, through the hdrhistogram
//! crate's writer). `chatgw report` reads `.hgrm` files back.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

/// Histograms here count microseconds; files show milliseconds.
const MICROS_PER_MS: f64 = 1000.0;

/// One row of a percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Latency, ms.
    pub value_ms: f64,
    /// 0 to 1.
    pub percentile: f64,
    /// Values at or below this one.
    pub total_count: u64,
}

/// The percentile distribution of a histogram of microseconds, in the
/// `.hgrm` text format (values in ms, 5 ticks per half distance).
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut text = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / MICROS_PER_MS;
        let percentile = step.quantile_iterated_to();
        if percentile < 1.0 {
            text.push_str(&format!("{value:12.3} {percentile:2.12} {total:10} {:14.2}\n", 1.0 / (1.0 - percentile)));
        } else {
            text.push_str(&format!("{value:12.3} {percentile:2.12} {total:10}\n"));
        }
    }
    let (mean, deviation, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (histogram.mean() / MICROS_PER_MS, histogram.stdev() / MICROS_PER_MS, histogram.max() as f64 / MICROS_PER_MS)
    };
    text.push_str(&format!("#[Mean    = {mean:12.3}, StdDeviation   = {deviation:12.3}]\n"));
    text.push_str(&format!("#[Max     = {max:12.3}, Total count    = {:12}]\n", histogram.len()));
    text.push_str(&format!(
        "#[Buckets = {:12}, SubBuckets     = {:12}]\n",
        histogram.buckets(),
        histogram.distinct_values()
    ));
    text
}

/// Reads the rows of a `.hgrm` text.
pub fn parse(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(value), Some(percentile), Some(total)) = (fields.first(), fields.get(1), fields.get(2)) else {
            bail!("line {}: expected value, percentile and total count", number + 1);
        };
        rows.push(Row {
            value_ms: value.parse().with_context(|| format!("line {}: value", number + 1))?,
            percentile: percentile.parse().with_context(|| format!("line {}: percentile", number + 1))?,
            total_count: total.parse().with_context(|| format!("line {}: total count", number + 1))?,
        });
    }
    if rows.is_empty() {
        bail!("no percentile rows");
    }
    if rows.windows(2).any(|pair| pair[1].percentile < pair[0].percentile || pair[1].value_ms < pair[0].value_ms) {
        bail!("rows are not in increasing order");
    }
    Ok(rows)
}

/// Reads a `.hgrm` file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not a percentile distribution", path.display()))
}

/// The value (ms) at `percentile` (0 to 1) of a distribution: the first
/// row at or past it.
pub fn value_at(rows: &[Row], percentile: f64) -> f64 {
    rows.iter().find(|row| row.percentile >= percentile).or(rows.last()).map_or(0.0, |row| row.value_ms)
}

/// Writes the histograms as one interval of an HdrHistogram interval log,
/// each tagged with its name, then `per_second`'s histograms (each with its
/// second from the start) as one-second intervals under its tag.
pub fn write_interval_log<'a>(
    path: &Path,
    started: SystemTime,
    duration: Duration,
    histograms: &[(&str, &Histogram<u64>)],
    per_second: (&str, impl IntoIterator<Item = (usize, &'a Histogram<u64>)>),
) -> anyhow::Result<()> {
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("chatgw loadgen latencies, microseconds")
            .with_start_time(started)
            .with_base_time(started)
            .with_max_value_divisor(MICROS_PER_MS)
            .begin_log_with(&mut file, &mut serializer)
            .context("starting the interval log")?;
        for (name, histogram) in histograms {
            let tag = Tag::new(name).with_context(|| format!("tag {name:?}"))?;
            log.write_histogram(histogram, Duration::ZERO, duration, Some(tag))
                .map_err(|error| anyhow::anyhow!("writing the interval log: {error:?}"))?;
        }
        let (name, seconds) = per_second;
        let tag = Tag::new(name).with_context(|| format!("tag {name:?}"))?;
        for (second, histogram) in seconds {
            log.write_histogram(histogram, Duration::from_secs(second as u64), Duration::from_secs(1), Some(tag))
                .map_err(|error| anyhow::anyhow!("writing the interval log: {error:?}"))?;
        }
    }
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut histogram = crate::loadgen::latency_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros).unwrap();
        }
        histogram
    }

    #[test]
    fn a_distribution_reads_back() {
        let text = percentile_distribution(&sample());
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(text.contains("#[Max     =       10.007, Total count    =        10000]"), "{text}");
        let rows = parse(&text).unwrap();
        assert_eq!(rows.first().unwrap().value_ms, 0.001);
        assert_eq!(rows.last().unwrap().percentile, 1.0);
        assert_eq!(rows.last().unwrap().total_count, 10_000);
        let median = value_at(&rows, 0.5);
        assert!((4.9..=5.1).contains(&median), "{median}");
        assert!((9.8..=10.1).contains(&value_at(&rows, 0.99)));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(parse("").is_err());
        assert!(parse("Value Percentile\n\n1.0 abc 3\n").is_err());
        assert!(parse("2.0 0.5 1\n1.0 0.9 2\n").is_err(), "out of order");
    }

    #[test]
    fn an_interval_log_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.hlog");
        let histogram = sample();
        let mut timeline = crate::loadgen::latency::Timeline::default();
        timeline.start_at(0);
        timeline.record(0, 100);
        timeline.record(3_500_000_000, 9_000);
        write_interval_log(
            &path,
            SystemTime::now(),
            Duration::from_secs(5),
            &[("delivery", &histogram)],
            ("delivery-1s", timeline.seconds()),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("#[StartTime: ") && text.contains("Tag=delivery,"), "{text}");
        let intervals: Vec<(String, u64, u64, f64)> =
            hdrhistogram::serialization::interval_log::IntervalLogIterator::new(text.as_bytes())
                .filter_map(|entry| match entry.unwrap() {
                    hdrhistogram::serialization::interval_log::LogEntry::Interval(interval) => Some((
                        interval.tag().map(|tag| tag.as_str().to_string()).unwrap_or_default(),
                        interval.start_timestamp().as_secs(),
                        interval.duration().as_secs(),
                        interval.max(),
                    )),
                    _ => None,
                })
                .collect();
        assert_eq!(intervals.len(), 3, "{intervals:?}");
        assert_eq!((intervals[0].0.as_str(), intervals[0].2), ("delivery", 5));
        assert_eq!((intervals[1].0.as_str(), intervals[1].1, intervals[1].2), ("delivery-1s", 0, 1));
        assert_eq!((intervals[2].0.as_str(), intervals[2].1), ("delivery-1s", 3));
        assert!((intervals[2].3 - 9.0).abs() < 0.1, "max in ms: {intervals:?}");
    }
}
