//! `chatgw doctor`: checks a host for a given number of connections (one
//! million by default) and says what to change, with the command to do it.

use std::fmt;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

/// Flags of `chatgw doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The connections this host should hold.
    #[arg(long, default_value_t = 1_000_000)]
    connections: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine as it is.
    Pass,
    /// Works, but limits or slows what was asked.
    Warn,
    /// Stops what was asked.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// One check of the host.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// The value found.
    pub current: String,
    /// The value recommended.
    pub recommended: String,
    /// The command that fixes it (empty when it passes).
    pub fix: String,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_string())
}

fn at_least(value: u64, fail_below: u64, want: u64) -> Verdict {
    if value >= want {
        Verdict::Pass
    } else if value >= fail_below {
        Verdict::Warn
    } else {
        Verdict::Fail
    }
}

fn fix(verdict: Verdict, command: String) -> String {
    if verdict == Verdict::Pass { String::new() } else { command }
}

fn sysctl_min(name: &'static str, path: &str, fail_below: u64, want: u64) -> Check {
    match read(path).and_then(|text| text.split_whitespace().last().and_then(|value| value.parse::<u64>().ok())) {
        Some(value) => {
            let verdict = at_least(value, fail_below, want);
            let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
            Check {
                name,
                verdict,
                current: value.to_string(),
                recommended: format!(">= {want}"),
                fix: fix(verdict, format!("sysctl -w {key}={want} (and in /etc/sysctl.d/ to keep it)")),
            }
        }
        None => Check {
            name,
            verdict: Verdict::Warn,
            current: "unreadable".into(),
            recommended: format!(">= {want}"),
            fix: format!("check that {path} exists and is readable"),
        },
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0).then_some((limit.rlim_cur, limit.rlim_max))
}

fn shown(limit: u64) -> String {
    if limit == libc::RLIM_INFINITY { "unlimited".into() } else { limit.to_string() }
}

/// Whether io_uring can be set up here: the errno when not.
fn io_uring_works() -> Result<(), std::io::Error> {
    // io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes, as the
    // kernel's struct) and returns a file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor this function owns.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn kernel_version() -> Option<(u32, u32, String)> {
    let release = read("/proc/sys/kernel/osrelease")?;
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

/// Every check, for `connections` connections.
pub fn checks(connections: u64) -> Vec<Check> {
    let mut checks = Vec::new();
    file_checks(&mut checks, connections);
    network_checks(&mut checks, connections);
    io_uring_checks(&mut checks);
    machine_checks(&mut checks);
    checks
}

/// Open files: the process's limits and the kernel's.
fn file_checks(checks: &mut Vec<Check>, connections: u64) {
    // A descriptor per connection, and room for the rest of the process.
    let want_files = connections + connections / 10 + 10_000;
    match rlimit(libc::RLIMIT_NOFILE) {
        Some((soft, hard)) => {
            for (name, value) in [("open files (soft)", soft), ("open files (hard)", hard)] {
                let verdict = at_least(value, 65_536, want_files);
                checks.push(Check {
                    name,
                    verdict,
                    current: shown(value),
                    recommended: format!(">= {want_files}"),
                    fix: fix(
                        verdict,
                        format!(
                            "ulimit -n {want_files} (hard: '* hard nofile {want_files}' in /etc/security/limits.conf, or LimitNOFILE={want_files} in the systemd unit)"
                        ),
                    ),
                });
            }
        }
        None => checks.push(Check {
            name: "open files",
            verdict: Verdict::Warn,
            current: "unreadable".into(),
            recommended: format!(">= {want_files}"),
            fix: "check getrlimit(RLIMIT_NOFILE)".into(),
        }),
    }
    checks.push(sysctl_min("fs.nr_open", "/proc/sys/fs/nr_open", 65_536, want_files));
    checks.push(sysctl_min("fs.file-max", "/proc/sys/fs/file-max", 65_536, want_files * 2));
}

/// The listen backlog, TCP buffer memory and local ports.
fn network_checks(checks: &mut Vec<Check>, connections: u64) {
    checks.push(sysctl_min("net.core.somaxconn", "/proc/sys/net/core/somaxconn", 128, 4_096));
    // tcp_mem is in pages: about 8 KiB of buffers per idle-ish connection.
    let want_pages = connections * 8 * 1024 / 4096;
    let mut tcp_mem =
        sysctl_min("net.ipv4.tcp_mem (max pages)", "/proc/sys/net/ipv4/tcp_mem", want_pages / 8, want_pages);
    if tcp_mem.verdict != Verdict::Pass {
        // Three values: below pressure, pressure, most.
        tcp_mem.fix = format!(
            "sysctl -w net.ipv4.tcp_mem='{} {} {want_pages}' (and in /etc/sysctl.d/ to keep it)",
            want_pages / 4,
            want_pages / 2
        );
    }
    checks.push(tcp_mem);
    checks.push(match read("/proc/sys/net/ipv4/ip_local_port_range") {
        Some(text) => {
            let bounds: Vec<u64> = text.split_whitespace().filter_map(|value| value.parse().ok()).collect();
            let ports = match bounds.as_slice() {
                [low, high] => high.saturating_sub(*low) + 1,
                _ => 0,
            };
            let verdict = at_least(ports, 10_000, 60_000);
            Check {
                name: "net.ipv4.ip_local_port_range",
                verdict,
                current: format!("{} ({ports} ports)", bounds.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")),
                recommended: "1024 65535 (load generators: more source addresses too)".into(),
                fix: fix(verdict, "sysctl -w net.ipv4.ip_local_port_range='1024 65535'".into()),
            }
        }
        None => Check {
            name: "net.ipv4.ip_local_port_range",
            verdict: Verdict::Warn,
            current: "unreadable".into(),
            recommended: "1024 65535".into(),
            fix: String::new(),
        },
    });
}

/// Locked memory, and whether io_uring is allowed and works.
fn io_uring_checks(checks: &mut Vec<Check>) {
    if let Some((soft, _)) = rlimit(libc::RLIMIT_MEMLOCK) {
        // Each shard's io_uring rings and glommio's registered buffers.
        let want = 8u64 << 20;
        let verdict = at_least(soft, 1 << 20, want);
        checks.push(Check {
            name: "locked memory (memlock)",
            verdict,
            current: if soft == libc::RLIM_INFINITY { "unlimited".into() } else { format!("{} KiB", soft >> 10) },
            recommended: format!(">= {} KiB", want >> 10),
            fix: fix(verdict, "ulimit -l 65536 (or LimitMEMLOCK=64M in the systemd unit)".into()),
        });
    }
    let disabled = read("/proc/sys/kernel/io_uring_disabled");
    let verdict = match disabled.as_deref() {
        None | Some("0") => Verdict::Pass,
        Some("1") => Verdict::Warn,
        Some(_) => Verdict::Fail,
    };
    checks.push(Check {
        name: "kernel.io_uring_disabled",
        verdict,
        current: disabled.unwrap_or_else(|| "absent (allowed)".into()),
        recommended: "0".into(),
        fix: fix(verdict, "sysctl -w kernel.io_uring_disabled=0".into()),
    });
    checks.push(match io_uring_works() {
        Ok(()) => Check {
            name: "io_uring works",
            verdict: Verdict::Pass,
            current: "a ring was set up".into(),
            recommended: "works".into(),
            fix: String::new(),
        },
        Err(error) => Check {
            name: "io_uring works",
            verdict: Verdict::Fail,
            current: format!("io_uring_setup failed: {error}"),
            recommended: "works".into(),
            fix: "allow io_uring (kernel >= 5.8, kernel.io_uring_disabled=0, no seccomp filter blocking it)".into(),
        },
    });
}

/// The kernel's version and the cores.
fn machine_checks(checks: &mut Vec<Check>) {
    checks.push(match kernel_version() {
        Some((major, minor, release)) => {
            let verdict = if (major, minor) >= (5, 8) { Verdict::Pass } else { Verdict::Fail };
            Check {
                name: "kernel",
                verdict,
                current: release,
                recommended: ">= 5.8 (glommio's io_uring needs)".into(),
                fix: fix(verdict, "upgrade the kernel to 5.8 or newer".into()),
            }
        }
        None => Check {
            name: "kernel",
            verdict: Verdict::Warn,
            current: "unknown".into(),
            recommended: ">= 5.8".into(),
            fix: String::new(),
        },
    });
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    checks.push(Check {
        name: "cores",
        verdict: if cores >= 2 { Verdict::Pass } else { Verdict::Warn },
        current: cores.to_string(),
        recommended: "one shard each; the load generator best on other machines".into(),
        fix: String::new(),
    });
}

/// Runs `chatgw doctor`: exit status 0 unless a check fails (then 2).
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let checks = checks(args.connections);
    if args.json {
        let rows: Vec<Value> = checks
            .iter()
            .map(|check| {
                json!({
                    "check": check.name,
                    "verdict": check.verdict.to_string(),
                    "current": check.current,
                    "recommended": check.recommended,
                    "fix": check.fix,
                })
            })
            .collect();
        println!("{}", json!({ "connections": args.connections, "checks": rows }));
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header(vec!["check", "verdict", "current", "recommended", "fix"]);
        for check in &checks {
            table.add_row(vec![
                check.name.to_string(),
                check.verdict.to_string(),
                check.current.clone(),
                check.recommended.clone(),
                check.fix.clone(),
            ]);
        }
        println!("checks for {} connections\n{table}", args.connections);
    }
    let failed = checks.iter().filter(|check| check.verdict == Verdict::Fail).count();
    if failed > 0 {
        eprintln!("{failed} check(s) failed");
        std::process::exit(2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_give_verdicts() {
        assert_eq!(at_least(10, 5, 8), Verdict::Pass);
        assert_eq!(at_least(6, 5, 8), Verdict::Warn);
        assert_eq!(at_least(4, 5, 8), Verdict::Fail);
        assert_eq!(fix(Verdict::Pass, "x".into()), "");
    }

    #[test]
    fn every_check_runs_here() {
        let checks = checks(1_000);
        for name in ["open files (soft)", "fs.nr_open", "net.core.somaxconn", "io_uring works", "kernel", "cores"] {
            assert!(checks.iter().any(|check| check.name == name), "{name}");
        }
        assert!(checks.iter().all(|check| !check.current.is_empty()));
        assert!(
            checks.iter().filter(|check| check.verdict != Verdict::Pass).all(|check| !check.recommended.is_empty())
        );
    }
}
