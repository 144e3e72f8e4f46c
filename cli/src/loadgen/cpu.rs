//! CPU time and memory read from `/proc` over a scenario's measured phase
//! only (`--server-pid`): the server's and the load generator's own, so a
//! report can say what each message cost the server and when the load
//! generator, sharing the cores, was the bound.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

/// User plus system CPU seconds of process `pid` (all its threads), from
/// `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_seconds_from_stat(&text, clock_ticks_per_s())
}

/// This process's CPU seconds.
pub fn own_cpu_seconds() -> anyhow::Result<f64> {
    cpu_seconds(std::process::id())
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime and stime (fields 14 and 15) of a `stat` line, in seconds. The
/// command name (field 2) may hold spaces and parentheses, so the fields
/// are counted from its last `)`.
fn cpu_seconds_from_stat(text: &str, ticks_per_s: f64) -> anyhow::Result<f64> {
    let Some(end) = text.rfind(')') else { bail!("a stat line without its command name") };
    let fields: Vec<&str> = text[end + 1..].split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else { bail!("a stat line too short") };
    let ticks = utime.parse::<u64>().context("utime")? + stime.parse::<u64>().context("stime")?;
    Ok(ticks as f64 / ticks_per_s)
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kib(&text, "VmRSS:").map(|kib| kib * 1024).context("no VmRSS in /proc/PID/status")
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The kernel's memory for sockets, machine-wide: slab (socket structures,
/// inodes, epoll items and the rest) and TCP's buffer pages in use.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelMemory {
    /// `Slab` of `/proc/meminfo`, bytes.
    pub slab_bytes: u64,
    /// TCP's `mem` of `/proc/net/sockstat` (pages), in bytes.
    pub tcp_buffer_bytes: u64,
}

impl KernelMemory {
    /// Slab and TCP buffers together.
    pub fn total_bytes(&self) -> u64 {
        self.slab_bytes + self.tcp_buffer_bytes
    }

    /// Reads both now.
    pub fn now() -> anyhow::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let slab_bytes = status_kib(&meminfo, "Slab:").context("no Slab in /proc/meminfo")? * 1024;
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
        let tcp_pages = tcp_mem_pages(&sockstat).context("no TCP mem in /proc/net/sockstat")?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Ok(KernelMemory { slab_bytes, tcp_buffer_bytes: tcp_pages * page })
    }
}

fn tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|line| line.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// CPU over a measured phase: started when it starts, read when it ends.
#[derive(Debug)]
pub struct Meter {
    server_pid: Option<u32>,
    started: Instant,
    server_s: f64,
    own_s: f64,
}

/// What a phase cost, in CPU seconds and shares of the machine.
#[derive(Debug, Clone, Serialize)]
pub struct CpuFigures {
    /// Wall-clock seconds of the phase.
    pub wall_s: f64,
    /// The machine's cores (the shares' denominator).
    pub cores: usize,
    /// The server's CPU seconds in the phase (absent without `--server-pid`).
    pub server_cpu_s: Option<f64>,
    /// The load generator's own CPU seconds in the phase.
    pub loadgen_cpu_s: f64,
    /// The server's CPU over all cores' time, 0 to 1.
    pub server_share: Option<f64>,
    /// The load generator's CPU over all cores' time, 0 to 1.
    pub loadgen_share: f64,
}

impl CpuFigures {
    /// Server CPU seconds per 1,000 of `units` (messages delivered,
    /// handshakes).
    pub fn server_cpu_s_per_1000(&self, units: u64) -> Option<f64> {
        self.server_cpu_s.filter(|_| units > 0).map(|seconds| seconds * 1000.0 / units as f64)
    }
}

impl Meter {
    /// Starts measuring now.
    pub fn start(server_pid: Option<u32>) -> anyhow::Result<Self> {
        Ok(Meter {
            server_pid,
            started: Instant::now(),
            server_s: server_pid.map(cpu_seconds).transpose()?.unwrap_or(0.0),
            own_s: own_cpu_seconds()?,
        })
    }

    /// What the phase cost from its start to now.
    pub fn read(&self) -> anyhow::Result<CpuFigures> {
        let wall_s = self.started.elapsed().as_secs_f64().max(1e-9);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let server_cpu_s = self.server_pid.map(cpu_seconds).transpose()?.map(|now| now - self.server_s);
        let loadgen_cpu_s = own_cpu_seconds()? - self.own_s;
        let capacity = wall_s * cores as f64;
        Ok(CpuFigures {
            wall_s,
            cores,
            server_cpu_s,
            loadgen_cpu_s,
            server_share: server_cpu_s.map(|seconds| seconds / capacity),
            loadgen_share: loadgen_cpu_s / capacity,
        })
    }
}

/// The measured phase's meter, shared by a scenario's worker threads: the
/// first to start it starts it, the first to stop it fixes the figures.
#[derive(Debug, Default)]
pub struct SharedMeter {
    meter: std::sync::Mutex<Option<Meter>>,
    figures: std::sync::Mutex<Option<CpuFigures>>,
    failed: std::sync::Mutex<Option<String>>,
}

impl SharedMeter {
    /// Starts the phase (once).
    pub fn start(&self, server_pid: Option<u32>) {
        let mut meter = self.meter.lock().unwrap();
        if meter.is_none() {
            match Meter::start(server_pid) {
                Ok(started) => *meter = Some(started),
                Err(error) => *self.failed.lock().unwrap() = Some(format!("{error:#}")),
            }
        }
    }

    /// Ends the phase (once).
    pub fn stop(&self) {
        let mut figures = self.figures.lock().unwrap();
        if figures.is_none()
            && let Some(meter) = self.meter.lock().unwrap().as_ref()
        {
            match meter.read() {
                Ok(read) => *figures = Some(read),
                Err(error) => *self.failed.lock().unwrap() = Some(format!("{error:#}")),
            }
        }
    }

    /// The phase's figures, or why there are none.
    pub fn figures(&self) -> anyhow::Result<Option<CpuFigures>> {
        if let Some(error) = self.failed.lock().unwrap().take() {
            bail!("reading CPU time: {error}");
        }
        Ok(self.figures.lock().unwrap().clone())
    }
}

/// One line for people: the phase's CPU, and per 1,000 `units`.
pub fn line(cpu: &CpuFigures, per_1000: Option<f64>, units: &str) -> String {
    let server = match (cpu.server_cpu_s, cpu.server_share) {
        (Some(seconds), Some(share)) => format!("server {seconds:.2} s ({:.0}% of {} cores)", share * 100.0, cpu.cores),
        _ => "server not measured".to_string(),
    };
    let per = per_1000.map(|per| format!(", {per:.4} server CPU s per 1,000 {units}")).unwrap_or_default();
    format!(
        "CPU over {:.1} s: {server}, load generator {:.2} s ({:.0}%){per}",
        cpu.wall_s,
        cpu.loadgen_cpu_s,
        cpu.loadgen_share * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_seconds_from_stat(line, 100.0).unwrap(), 3.25);
        assert!(cpu_seconds_from_stat("4242 no name", 100.0).is_err());
        assert!(cpu_seconds_from_stat("1 (x) S 1", 100.0).is_err());
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let before = own_cpu_seconds().unwrap();
        let mut sum = 0u64;
        let until = Instant::now() + std::time::Duration::from_millis(60);
        while Instant::now() < until {
            sum = sum.wrapping_add(std::hint::black_box(sum) ^ 7);
        }
        std::hint::black_box(sum);
        assert!(own_cpu_seconds().unwrap() > before, "60 ms of spinning shows in /proc");
        assert!(rss_bytes(std::process::id()).unwrap() > 1 << 20);
        let kernel = KernelMemory::now().unwrap();
        assert!(kernel.slab_bytes > 0);
    }

    #[test]
    fn sockstat_and_status_lines_are_read() {
        let sockstat = "sockets: used 301\nTCP: inuse 12 orphan 0 tw 3 alloc 15 mem 7\nUDP: inuse 1 mem 2\n";
        assert_eq!(tcp_mem_pages(sockstat), Some(7));
        assert_eq!(status_kib("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
        let figures = CpuFigures {
            wall_s: 10.0,
            cores: 2,
            server_cpu_s: Some(4.0),
            loadgen_cpu_s: 6.0,
            server_share: Some(0.2),
            loadgen_share: 0.3,
        };
        assert_eq!(figures.server_cpu_s_per_1000(8000), Some(0.5));
        assert_eq!(figures.server_cpu_s_per_1000(0), None);
    }
}
