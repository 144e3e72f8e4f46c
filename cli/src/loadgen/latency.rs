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

/// Records the time from `since_ns` to now, in microseconds, and returns it.
pub fn record_since(histogram: &mut Histogram<u64>, since_ns: u64) -> u64 {
    record_between(histogram, since_ns, now_ns())
}

/// Records the time from `from_ns` to `to_ns` (a clock reading the caller
/// already has), in microseconds, and returns it.
pub fn record_between(histogram: &mut Histogram<u64>, from_ns: u64, to_ns: u64) -> u64 {
    let micros = (to_ns.saturating_sub(from_ns) / 1000).max(1);
    histogram.saturating_record(micros);
    micros
}

/// Adds `from`'s counts into `into` (histograms of one run, merged).
fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(from).map_err(|error| anyhow::anyhow!("merging histograms: {error}"))
}

/// The longest run a timeline follows, seconds (later ones share the last).
pub const TIMELINE_SECONDS_MAX: usize = 3600;

/// A histogram for one second of a timeline: 2 significant digits (1%),
/// 1 µs to 10 minutes, about 30 KB.
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// Latencies second by second through a run, by the second each message
/// was due (counted from the run's start): where a whole-run percentile
/// says how bad the tail is, this says when it happened (a periodic stall,
/// a compaction, a slow start).
#[derive(Default)]
pub struct Timeline {
    start_ns: Option<u64>,
    seconds: BTreeMap<usize, Histogram<u64>>,
}

impl Timeline {
    /// Seconds are counted from `start_ns` (the load generator's clock);
    /// nothing is recorded before this is set.
    pub fn start_at(&mut self, start_ns: u64) {
        self.start_ns = Some(start_ns);
    }

    /// Records a latency of `micros` for a message due at `due_ns`.
    pub fn record(&mut self, due_ns: u64, micros: u64) {
        let Some(start) = self.start_ns else { return };
        let second = (due_ns.saturating_sub(start) / 1_000_000_000).min(TIMELINE_SECONDS_MAX as u64 - 1) as usize;
        self.seconds.entry(second).or_insert_with(second_histogram).saturating_record(micros.max(1));
    }

    /// Adds another timeline to this one, second by second.
    pub fn merge(&mut self, other: &Timeline) -> anyhow::Result<()> {
        for (second, histogram) in &other.seconds {
            self.add_second(*second, histogram)?;
        }
        Ok(())
    }

    /// Adds one second's histogram to this timeline.
    pub fn add_second(&mut self, second: usize, histogram: &Histogram<u64>) -> anyhow::Result<()> {
        anyhow::ensure!(second < TIMELINE_SECONDS_MAX, "second {second} is past the timeline's end");
        add(self.seconds.entry(second).or_insert_with(second_histogram), histogram)
    }

    /// The seconds that had messages, each with its histogram, in order.
    pub fn seconds(&self) -> impl Iterator<Item = (usize, &Histogram<u64>)> {
        self.seconds.iter().map(|(second, histogram)| (*second, histogram))
    }

    /// Each second's figures, in order.
    pub fn summaries(&self) -> Vec<SecondSummary> {
        self.seconds()
            .map(|(second, histogram)| SecondSummary {
                second,
                count: histogram.len(),
                p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
                p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: histogram.max() as f64 / 1000.0,
            })
            .collect()
    }
}

/// The `count` seconds of `seconds` (a timeline's summaries) with the
/// highest p99, worst first.
pub fn worst_seconds(seconds: &[SecondSummary], count: usize) -> Vec<SecondSummary> {
    let mut all = seconds.to_vec();
    all.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms).then(a.second.cmp(&b.second)));
    all.truncate(count);
    all
}

/// How a timeline's seconds compare with a p99 budget. A few bad seconds
/// (a stall from something else on the machine, say) raise a run's p99
/// without moving its median second; this tells the two apart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondsSpread {
    /// Seconds in the timeline.
    pub seconds: usize,
    /// The median of the per-second p99s, ms.
    pub median_p99_ms: f64,
    /// The budget each second's p99 is held to, ms.
    pub budget_ms: f64,
    /// Seconds whose p99 is above the budget.
    pub over_budget: usize,
}

impl SecondsSpread {
    /// The spread of `seconds` (a timeline's summaries) against
    /// `budget_ms`; `None` for an empty timeline.
    pub fn of(seconds: &[SecondSummary], budget_ms: f64) -> Option<Self> {
        let mut p99s: Vec<f64> = seconds.iter().map(|second| second.p99_ms).collect();
        if p99s.is_empty() {
            return None;
        }
        p99s.sort_by(f64::total_cmp);
        let middle = p99s.len() / 2;
        let median_p99_ms = if p99s.len() % 2 == 1 { p99s[middle] } else { (p99s[middle - 1] + p99s[middle]) / 2.0 };
        Some(Self {
            seconds: p99s.len(),
            median_p99_ms,
            budget_ms,
            over_budget: p99s.iter().filter(|p99| **p99 > budget_ms).count(),
        })
    }

    /// `median 4.3 ms, 6 of 20 seconds over 5 ms`, for people.
    pub fn line(&self) -> String {
        format!(
            "median {:.1} ms, {} of {} seconds over {} ms",
            self.median_p99_ms, self.over_budget, self.seconds, self.budget_ms
        )
    }
}

/// One second of a timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondSummary {
    /// Seconds from the run's start to when these messages were due.
    pub second: usize,
    /// Messages due in this second that arrived.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl SecondSummary {
    /// `t=12s p99 8.1 ms max 30.2 ms`, for people.
    pub fn line(&self) -> String {
        format!("t={}s p99 {:.1} ms max {:.1} ms", self.second, self.p99_ms, self.max_ms)
    }
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
    /// How late the load generator handed each message to its connection,
    /// from the time it was due, µs (open loop only): a load generator
    /// that cannot keep its schedule shows here, not only as latency.
    pub send_lag: Histogram<u64>,
    /// Delivery latencies by the second each message was due.
    pub timeline: Timeline,
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Deliveries counted.
    pub delivered: u64,
    /// Errors by kind (server error codes, lost connections, ...).
    pub errors: BTreeMap<String, u64>,
    /// Other commands sent and events received, by kind (`typing_sent`,
    /// `reads_sent`, `typing_received`, `receipt_received`).
    pub events: BTreeMap<String, u64>,
}

impl Figures {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Figures {
            delivery: histogram(),
            ack: histogram(),
            connect: histogram(),
            send_lag: histogram(),
            timeline: Timeline::default(),
            sent: 0,
            acked: 0,
            delivered: 0,
            errors: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Counts one command sent or event received of `kind`.
    pub fn event(&mut self, kind: &str) {
        match self.events.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                self.events.insert(kind.to_string(), 1);
            }
        }
    }

    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds another worker's figures to these.
    pub fn merge(&mut self, other: Figures) -> anyhow::Result<()> {
        add(&mut self.delivery, &other.delivery)?;
        add(&mut self.ack, &other.ack)?;
        add(&mut self.connect, &other.connect)?;
        add(&mut self.send_lag, &other.send_lag)?;
        self.timeline.merge(&other.timeline)?;
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, count) in other.events {
            *self.events.entry(kind).or_default() += count;
        }
        Ok(())
    }
}

/// Writes a run's latencies into `dir`: `delivery.hgrm`, `ack.hgrm` and
/// `connect.hgrm` (percentile distributions), `latency.hlog` (an interval
/// log of the three over the whole run, tagged, then the delivery timeline
/// one second an interval, tagged `delivery-1s`) and
/// `latency.svg`/`latency.png` (delivery and ack by percentile).
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
        ("delivery-1s", figures.timeline.seconds()),
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
    fn timeline_files_latencies_by_due_second_and_merges() {
        let second = 1_000_000_000;
        let mut one = Timeline::default();
        one.record(5 * second, 100); // before the start: not counted
        one.start_at(10 * second);
        one.record(10 * second, 100);
        one.record(10 * second + second / 2, 300);
        one.record(12 * second, 20_000);
        let mut two = Timeline::default();
        two.start_at(0);
        two.record(second, 500);
        one.merge(&two).unwrap();
        let seconds = one.summaries();
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds.iter().map(|second| second.count).collect::<Vec<_>>(), [2, 1, 1]);
        assert!((seconds[0].max_ms - 0.3).abs() < 0.01, "{seconds:?}");
        assert!((seconds[1].max_ms - 0.5).abs() < 0.01, "{seconds:?}");
        assert!((seconds[2].p99_ms - 20.0).abs() < 0.3, "{seconds:?}");
        let worst = worst_seconds(&seconds, 2);
        assert_eq!(worst.iter().map(|second| second.second).collect::<Vec<_>>(), [2, 1]);
        // Two significant digits: 20,000 µs reads as 20.1 ms.
        assert_eq!(worst[0].line(), "t=2s p99 20.1 ms max 20.1 ms");
    }

    #[test]
    fn spread_holds_each_second_to_the_budget() {
        let second = |second, p99_ms| SecondSummary { second, count: 1, p50_ms: 1.0, p99_ms, max_ms: p99_ms };
        assert_eq!(SecondsSpread::of(&[], 5.0), None);
        let odd = SecondsSpread::of(&[second(0, 3.0), second(1, 25.0), second(2, 4.0)], 5.0).unwrap();
        assert_eq!((odd.seconds, odd.median_p99_ms, odd.over_budget), (3, 4.0, 1));
        // Even: the mean of the middle two; a p99 at the budget is within it.
        let even = SecondsSpread::of(&[second(0, 5.0), second(1, 2.0), second(2, 30.0), second(3, 4.0)], 5.0).unwrap();
        assert_eq!((even.seconds, even.median_p99_ms, even.over_budget), (4, 4.5, 1));
        assert_eq!(even.line(), "median 4.5 ms, 1 of 4 seconds over 5 ms");
    }

    #[test]
    fn timeline_caps_its_length() {
        let mut timeline = Timeline::default();
        timeline.start_at(0);
        timeline.record(u64::MAX, 1);
        assert_eq!(timeline.seconds().map(|(second, _)| second).collect::<Vec<_>>(), [TIMELINE_SECONDS_MAX - 1]);
        assert!(timeline.add_second(TIMELINE_SECONDS_MAX, &second_histogram()).is_err());
    }

    #[test]
    fn clock_is_monotonic_across_threads() {
        let before = now_ns();
        let inside = std::thread::spawn(now_ns).join().unwrap();
        assert!(inside >= before);
        assert!(now_ns() >= inside);
    }
}
