//! The server's own counters over a measured phase, read from its
//! `/metrics` at the phase's start and end: how many cross-core messages
//! (`chatgw_mesh_messages_total`, every kind) each stored message cost
//! (`chatgw_messages_received_total`). Setup (signups, connections, the
//! warm-up) is outside the phase, so its hand-offs and subscriptions are
//! not counted.

use std::sync::Mutex;

use serde::Serialize;

/// The totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    mesh_messages: f64,
    messages_stored: f64,
}

impl Totals {
    /// Reads the server's `/metrics`.
    pub fn read(addr: &str) -> anyhow::Result<Self> {
        Ok(Self::parse(&super::idle::metrics_text(addr)?))
    }

    /// Sums each metric's samples over their labels.
    fn parse(text: &str) -> Self {
        let mut totals = Totals::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let value = line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
            match name {
                "chatgw_mesh_messages_total" => totals.mesh_messages += value,
                "chatgw_messages_received_total" => totals.messages_stored += value,
                _ => {}
            }
        }
        totals
    }
}

/// What the phase cost in the server's counters.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CounterFigures {
    /// Cross-core messages sent over the phase.
    pub mesh_messages: f64,
    /// Messages stored over the phase.
    pub messages_stored: f64,
    /// Cross-core messages per stored message.
    pub mesh_messages_per_stored: Option<f64>,
}

impl CounterFigures {
    fn between(start: Totals, end: Totals) -> Self {
        let mesh_messages = end.mesh_messages - start.mesh_messages;
        let messages_stored = end.messages_stored - start.messages_stored;
        CounterFigures {
            mesh_messages,
            messages_stored,
            mesh_messages_per_stored: (messages_stored > 0.0).then(|| mesh_messages / messages_stored),
        }
    }
}

/// The phase's counters, shared by a scenario's worker threads like the CPU
/// meter: the first to start reads the start, the first to stop the end.
/// A server that cannot be read leaves the figures out (and says why).
#[derive(Debug, Default)]
pub struct SharedCounters {
    start: Mutex<Option<Totals>>,
    figures: Mutex<Option<CounterFigures>>,
    failed: Mutex<Option<String>>,
}

impl SharedCounters {
    /// Reads the start (once).
    pub fn start(&self, addr: &str) {
        let mut start = self.start.lock().unwrap();
        if start.is_none() {
            match Totals::read(addr) {
                Ok(totals) => *start = Some(totals),
                Err(error) => *self.failed.lock().unwrap() = Some(format!("{error:#}")),
            }
        }
    }

    /// Reads the end (once).
    pub fn stop(&self, addr: &str) {
        let mut figures = self.figures.lock().unwrap();
        if figures.is_none()
            && let Some(start) = *self.start.lock().unwrap()
        {
            match Totals::read(addr) {
                Ok(end) => *figures = Some(CounterFigures::between(start, end)),
                Err(error) => *self.failed.lock().unwrap() = Some(format!("{error:#}")),
            }
        }
    }

    /// The phase's figures; a failed read is a warning, not a failed run.
    pub fn figures(&self) -> Option<CounterFigures> {
        if let Some(error) = self.failed.lock().unwrap().take() {
            eprintln!("the server's counters were not read: {error}");
        }
        *self.figures.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_labels_and_taken_between_two_readings() {
        let start = Totals::parse(
            "# TYPE chatgw_mesh_messages_total counter\n\
             chatgw_mesh_messages_total{kind=\"send\",shard=\"0\"} 10\n\
             chatgw_mesh_messages_total{kind=\"deliver\",shard=\"1\"} 5\n\
             chatgw_messages_received_total{shard=\"0\"} 7\n\
             chatgw_messages_received_total_other 99\n",
        );
        assert_eq!(start, Totals { mesh_messages: 15.0, messages_stored: 7.0 });
        let end = Totals { mesh_messages: 35.0, messages_stored: 27.0 };
        let figures = CounterFigures::between(start, end);
        assert_eq!(figures.mesh_messages_per_stored, Some(1.0));
        assert_eq!(CounterFigures::between(end, end).mesh_messages_per_stored, None);
    }
}
