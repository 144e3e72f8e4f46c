//! The live line a scenario shows while it runs (indicatif, on stderr, only
//! when that is a terminal): connections open, messages sent and delivered,
//! the delivery rate over the last moment, and the highest p99 a worker has
//! reported so far.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Counters a scenario's workers update for the live line.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections open.
    pub connections: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages delivered.
    pub delivered: AtomicU64,
    /// The highest delivery p99 a worker has reported, µs.
    pub p99_us: AtomicU64,
}

impl Live {
    /// A worker's p99 so far (it reports every so often).
    pub fn report_p99(&self, p99_us: u64) {
        self.p99_us.fetch_max(p99_us, Ordering::Relaxed);
    }
}

/// The running line; `finish` clears it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts redrawing every 250 ms.
    pub fn start(label: &str, connections_total: u64, live: Arc<Live>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bar = ProgressBar::new(connections_total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] conns {pos}/{len}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_string());
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let delivered = live.delivered.load(Ordering::Relaxed);
                    let now = Instant::now();
                    let rate = (delivered - last.1.min(delivered)) as f64 / now.duration_since(last.0).as_secs_f64();
                    last = (now, delivered);
                    bar.set_position(live.connections.load(Ordering::Relaxed));
                    bar.set_message(format!(
                        "sent {}  delivered {}  {:.0}/s  p99 {:.2} ms",
                        live.sent.load(Ordering::Relaxed),
                        delivered,
                        rate,
                        live.p99_us.load(Ordering::Relaxed) as f64 / 1000.0
                    ));
                    bar.tick();
                }
                bar.finish_and_clear();
            })
        };
        Progress { stop, thread: Some(thread) }
    }

    /// Stops and clears the line.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_runs_and_stops() {
        let live = Arc::new(Live::default());
        let progress = Progress::start("test", 10, live.clone());
        live.connections.store(10, Ordering::Relaxed);
        live.report_p99(1500);
        live.report_p99(900);
        assert_eq!(live.p99_us.load(Ordering::Relaxed), 1500, "the highest stays");
        std::thread::sleep(Duration::from_millis(300));
        progress.finish();
    }
}
