//! Helpers shared by chatgw's benchmarks: deterministic filler text and
//! latency summaries from an hdrhistogram (criterion reports means; tail
//! latency needs percentiles); and the peer server the comparison runs
//! beside chatgw ([`peer`], the `chatgw-peer` binary).

use hdrhistogram::Histogram;

pub mod peer;

/// A small, fast, deterministic pseudo-random generator (xorshift64*), so
/// runs are comparable and the generator costs nothing next to the work.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// `len` bytes of printable ASCII, random enough that compression does
    /// not flatter storage.
    pub fn text(&mut self, len: usize) -> String {
        (0..len).map(|_| (b' ' + (self.next_u64() % 94) as u8) as char).collect()
    }
}

/// A histogram of nanoseconds from 1 ns to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// `p50 … p99.9 max` of a histogram of nanoseconds, in microseconds.
pub fn summarize_us(histogram: &Histogram<u64>) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "n={} p50={:.1}us p90={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us",
        histogram.len(),
        us(histogram.value_at_quantile(0.50)),
        us(histogram.value_at_quantile(0.90)),
        us(histogram.value_at_quantile(0.99)),
        us(histogram.value_at_quantile(0.999)),
        us(histogram.max()),
    )
}

/// Whether the command line's filter (the first argument that is not a
/// flag, as criterion reads it) lets a section named `name` run.
pub fn filter_allows(name: &str) -> bool {
    match std::env::args().skip(1).find(|arg| !arg.starts_with('-')) {
        Some(filter) => name.contains(&filter),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_printable_and_sized() {
        let text = Rng::new(7).text(200);
        assert_eq!(text.len(), 200);
        assert!(text.bytes().all(|byte| (b' '..=b'~').contains(&byte)));
        assert_ne!(Rng::new(7).text(50), Rng::new(8).text(50));
    }

    #[test]
    fn summaries_report_percentiles() {
        let mut histogram = latency_histogram();
        for ns in 1..=1000u64 {
            histogram.record(ns * 1000).unwrap();
        }
        let summary = summarize_us(&histogram);
        assert!(
            summary.contains("n=1000") && summary.contains("p50=500.") && summary.contains("p99=990."),
            "{summary}"
        );
    }
}
