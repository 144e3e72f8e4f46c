//! One clock for the whole load generator, and latency histograms.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the load generator's epoch (one monotonic clock for
/// every thread, so a timestamp written by one is read by another).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records the time from `since_ns` to now, in microseconds.
pub fn record_since(histogram: &mut Histogram<u64>, since_ns: u64) {
    let micros = now_ns().saturating_sub(since_ns) / 1000;
    histogram.saturating_record(micros.max(1));
}

/// What every scenario counts, per worker and then merged: messages sent,
/// acknowledged and delivered, their latencies, and errors by kind.
pub struct Figures {
    /// Send (or due time) to a receiver's arrival, µs.
    pub delivery: Histogram<u64>,
    /// Send (or due time) to the sender's ack, µs.
    pub ack: Histogram<u64>,
    /// Connection times: TCP connect to the server's first frame (chatgw's
    /// `hello`) or to the end of the WebSocket handshake (NATS), µs.
    pub connect: Histogram<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Deliveries counted.
    pub delivered: u64,
    /// Errors by kind (server error codes, lost connections, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Figures {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Figures {
            delivery: histogram(),
            ack: histogram(),
            connect: histogram(),
            sent: 0,
            acked: 0,
            delivered: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds another worker's figures to these.
    pub fn merge(&mut self, other: Figures) -> anyhow::Result<()> {
        self.delivery.add(&other.delivery).map_err(|error| anyhow::anyhow!("merging histograms: {error}"))?;
        self.ack.add(&other.ack).map_err(|error| anyhow::anyhow!("merging histograms: {error}"))?;
        self.connect.add(&other.connect).map_err(|error| anyhow::anyhow!("merging histograms: {error}"))?;
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        Ok(())
    }
}

/// Writes a run's latencies into `dir`: `delivery.hgrm`, `ack.hgrm` and
/// `connect.hgrm` (percentile distributions), `latency.hlog` (an interval
/// log of the three, tagged) and `latency.svg`/`latency.png` (delivery and
/// ack by percentile).
pub fn write_outputs(
    dir: &std::path::Path,
    title: &str,
    figures: &Figures,
    measured: std::time::Duration,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut series = Vec::new();
    for (name, histogram) in [("delivery", &figures.delivery), ("ack", &figures.ack), ("connect", &figures.connect)] {
        let text = crate::hgrm::percentile_distribution(histogram);
        let path = dir.join(format!("{name}.hgrm"));
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        if name != "connect" && !histogram.is_empty() {
            series.push((name.to_string(), crate::hgrm::parse(&text)?));
        }
    }
    let started = std::time::SystemTime::now() - measured;
    crate::hgrm::write_interval_log(
        &dir.join("latency.hlog"),
        started,
        measured,
        &[("delivery", &figures.delivery), ("ack", &figures.ack), ("connect", &figures.connect)],
    )?;
    if !series.is_empty() {
        crate::plot::latency_by_percentile(&dir.join("latency"), title, &series)?;
    }
    Ok(())
}

/// With `--out DIR`: writes the run's latencies there (`write_outputs`) and
/// says so, unless the report is JSON.
pub fn keep(
    out: Option<&std::path::Path>,
    title: &str,
    figures: &Figures,
    duration_s: u64,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(dir) = out {
        write_outputs(dir, title, figures, std::time::Duration::from_secs(duration_s))?;
        if !json {
            println!("latencies written to {}", dir.display());
        }
    }
    Ok(())
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// 99.99th percentile.
    pub p9999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Summary {
    /// Summarises a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let at = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Summary {
            count: histogram.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            p9999_ms: at(0.9999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "n={} p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            self.count, self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.p9999_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_percentiles_in_milliseconds() {
        let mut histogram = histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros).unwrap();
        }
        let summary = Summary::of(&histogram);
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 0.5).abs() < 0.01, "{summary:?}");
        assert!((summary.p99_ms - 0.99).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 1.0).abs() < 0.01, "{summary:?}");
    }

    #[test]
    fn figures_merge_counts_histograms_and_errors() {
        let mut total = Figures::new();
        let mut one = Figures::new();
        one.sent = 3;
        one.delivered = 2;
        one.delivery.record(100).unwrap();
        one.error("rate_limited");
        let mut two = Figures::new();
        two.sent = 1;
        two.acked = 1;
        two.ack.record(200).unwrap();
        two.error("rate_limited");
        two.error("connection_lost");
        total.merge(one).unwrap();
        total.merge(two).unwrap();
        assert_eq!((total.sent, total.acked, total.delivered), (4, 1, 2));
        assert_eq!((total.delivery.len(), total.ack.len()), (1, 1));
        assert_eq!(total.errors["rate_limited"], 2);
        assert_eq!(total.errors["connection_lost"], 1);
    }

    #[test]
    fn clock_is_monotonic_across_threads() {
        let before = now_ns();
        let inside = std::thread::spawn(now_ns).join().unwrap();
        assert!(inside >= before);
        assert!(now_ns() >= inside);
    }
}
