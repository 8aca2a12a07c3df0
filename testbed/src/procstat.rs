//! CPU time and CPU affinity of processes (Linux `/proc`, `taskset`).
//!
//! - [`cpu_ns`]: CPU time of a whole process in nanoseconds, the sum over its threads of the
//!   first field of `/proc/<pid>/task/<tid>/schedstat` (time on CPU, ns resolution). Threads
//!   that exited earlier are not included (Envoy's threads live as long as the process).
//!   [`cpu_ticks`] (`/proc/<pid>/stat` utime + stime, 10 ms ticks) is the coarse fallback.
//! - [`rss_bytes`] / [`peak_rss_bytes`]: resident memory now and its high-water mark
//!   (`VmRSS` / `VmHWM` of `/proc/<pid>/status`).
//! - [`allowed_cpus`] / [`pin`]: the CPUs this process may run on, and pinning a process (all
//!   its threads) to a CPU list with `taskset` from util-linux (the workspace forbids `unsafe`,
//!   so no direct `sched_setaffinity`). Threads and children created later inherit the mask.

use std::process::Command;

/// Nanoseconds per clock tick: `USER_HZ` is 100 on every Linux architecture we run on.
pub const NS_PER_TICK: u64 = 10_000_000;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("/proc/{pid}/stat: {source}")]
    Io { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat: cannot parse {text:?}")]
    Parse { pid: u32, text: String },
    #[error("/proc/{pid}/task: {source}")]
    Tasks { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/task/*/schedstat: no readable thread")]
    NoSchedstat { pid: u32 },
}

/// Errors pinning a process.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("cannot run taskset: {0}")]
    Spawn(std::io::Error),
    #[error("taskset -a -p -c {cpus} {pid} failed ({status}): {stderr}")]
    Failed {
        cpus: String,
        pid: u32,
        status: String,
        stderr: String,
    },
}

/// A `kB` field of `/proc/<pid>/status` text (e.g. `VmHWM`), in bytes.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

fn status_field(pid: u32, field: &str) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(path).map_err(|source| ProcError::Io { pid, source })?;
    parse_status_kb(&text, field).ok_or(ProcError::Parse { pid, text })
}

/// Resident set size of `pid` now, bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    status_field(pid, "VmRSS")
}

/// Peak resident set size of `pid` since it started, bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Result<u64, ProcError> {
    status_field(pid, "VmHWM")
}

/// Parses utime + stime (ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the
    // last ')'. Then field 3 (state) is index 0, utime (field 14) index 11, stime index 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Io { pid, source })?;
    parse_cpu_ticks(&text).ok_or(ProcError::Parse { pid, text })
}

/// Time on CPU (ns) from the text of a `schedstat` file: `<run ns> <wait ns> <timeslices>`.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    let mut f = text.split_whitespace();
    let run = f.next()?.parse().ok()?;
    // A well-formed line has the other two fields too.
    f.next()?.parse::<u64>().ok()?;
    Some(run)
}

/// (time on CPU, time runnable but waiting for a CPU) in ns from a `schedstat` text.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_whitespace();
    let run = f.next()?.parse().ok()?;
    let wait = f.next()?.parse().ok()?;
    Some((run, wait))
}

/// Sum of the on-CPU time of several threads' `schedstat` texts; None if none parses.
pub fn sum_schedstat_ns<'a>(texts: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    texts
        .into_iter()
        .filter_map(parse_schedstat_ns)
        .fold(None, |acc, ns| Some(acc.unwrap_or(0) + ns))
}

fn task_schedstats(pid: u32) -> Result<Vec<String>, ProcError> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|source| ProcError::Tasks { pid, source })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .collect())
}

/// CPU time of all live threads of `pid` in nanoseconds (`/proc/<pid>/task/*/schedstat`).
/// A thread that exits between listing and reading is skipped.
pub fn cpu_ns(pid: u32) -> Result<u64, ProcError> {
    let texts = task_schedstats(pid)?;
    sum_schedstat_ns(texts.iter().map(String::as_str)).ok_or(ProcError::NoSchedstat { pid })
}

/// (on-CPU, runnable-but-waiting) ns summed over the live threads of `pid`.
pub fn sched_ns(pid: u32) -> Result<(u64, u64), ProcError> {
    let texts = task_schedstats(pid)?;
    texts
        .iter()
        .filter_map(|t| parse_schedstat(t))
        .fold(None, |acc: Option<(u64, u64)>, (r, w)| {
            let (ar, aw) = acc.unwrap_or((0, 0));
            Some((ar + r, aw + w))
        })
        .ok_or(ProcError::NoSchedstat { pid })
}

/// How a process's CPU time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuClock {
    /// `/proc/<pid>/task/*/schedstat`, ns resolution.
    Schedstat,
    /// `/proc/<pid>/stat` utime + stime, 10 ms resolution.
    Ticks,
}

impl CpuClock {
    /// The best clock that works for `pid`.
    pub fn detect(pid: u32) -> Self {
        if cpu_ns(pid).is_ok() {
            CpuClock::Schedstat
        } else {
            CpuClock::Ticks
        }
    }

    /// CPU time of `pid` in ns with this clock.
    pub fn read_ns(self, pid: u32) -> Result<u64, ProcError> {
        match self {
            CpuClock::Schedstat => cpu_ns(pid),
            CpuClock::Ticks => cpu_ticks(pid).map(|t| t * NS_PER_TICK),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            CpuClock::Schedstat => "sum of /proc/<pid>/task/*/schedstat (ns)",
            CpuClock::Ticks => "/proc/<pid>/stat utime+stime (10 ms ticks; schedstat unavailable)",
        }
    }
}

/// Parses a kernel CPU list (`0-3,5,7-8`) into CPU numbers.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `Cpus_allowed_list` of a `/proc/<pid>/status` text.
pub fn parse_allowed_cpus(status: &str) -> Option<Vec<u32>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

/// CPUs this process may run on (None if unknown).
pub fn allowed_cpus() -> Option<Vec<u32>> {
    parse_allowed_cpus(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The CPUs `pid` may run on (its main thread's mask).
pub fn cpus_of(pid: u32) -> Option<Vec<u32>> {
    parse_allowed_cpus(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Whether `taskset` can be run.
pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Pins all threads of `pid` to `cpus` (a CPU list such as `1` or `0-1`).
pub fn pin(pid: u32, cpus: &str) -> Result<(), AffinityError> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(AffinityError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AffinityError::Failed {
            cpus: cpus.to_string(),
            pid,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub use meshtune_test_support::process::pinned_command;

#[cfg(test)]
mod tests {

    #[test]
    fn status_fields_parse_in_bytes_and_this_process_has_a_peak() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n";
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(2 << 20));
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(1 << 20));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
        let me = std::process::id();
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 0);
        assert!(peak_rss_bytes(me).unwrap() >= rss, "the peak read later");
    }

    use super::*;
    use std::path::Path;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let s = "4242 (envoy worker 1) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(s), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat_ns("46701355 31228476 115\n"),
            Some(46_701_355)
        );
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_schedstat_ns("12"), None, "truncated line");
        assert_eq!(parse_schedstat_ns("x 1 2"), None);
        assert_eq!(
            sum_schedstat_ns(["100 5 1\n", "garbage", "23 0 4\n"]),
            Some(123)
        );
        assert_eq!(sum_schedstat_ns(["", "x"]), None);
        assert_eq!(sum_schedstat_ns(["0 0 0"]), Some(0));
        assert_eq!(parse_schedstat("5 7 1"), Some((5, 7)));
        assert_eq!(parse_schedstat("5"), None);
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        let status = "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(parse_allowed_cpus(status), Some(vec![0, 1]));
        assert_eq!(parse_allowed_cpus("Name:\tx\n"), None);
    }

    fn burn() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        burn();
        assert!(cpu_ticks(me).unwrap() > 0);
        assert!(cpu_ticks(u32::MAX).is_err());
        let a = cpu_ns(me).unwrap();
        burn();
        let b = cpu_ns(me).unwrap();
        assert!(b > a, "schedstat time grows while burning CPU: {a} -> {b}");
        assert!(cpu_ns(u32::MAX).is_err());
        let (run, _wait) = sched_ns(me).unwrap();
        assert!(run >= b);
        // ns and ticks agree to within a few ticks (threads that exited are only in ticks).
        let ticks_ns = CpuClock::Ticks.read_ns(me).unwrap();
        assert!(
            b <= ticks_ns + 5 * NS_PER_TICK,
            "schedstat {b} ns vs ticks {ticks_ns} ns"
        );
    }

    #[test]
    fn pins_a_child_process() {
        let Some(cpus) = allowed_cpus() else {
            eprintln!("SKIP: no Cpus_allowed_list");
            return;
        };
        if !taskset_available() {
            eprintln!("SKIP: taskset not installed");
            return;
        }
        let last = *cpus.last().unwrap();
        let mut child = pinned_command(Path::new("sleep"), Some(&last.to_string()))
            .arg("5")
            .spawn()
            .unwrap();
        // taskset execs the program: same pid, pinned mask.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let got = cpus_of(child.id());
        let first = cpus[0];
        let repinned = pin(child.id(), &first.to_string());
        let after = cpus_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Some(vec![last]));
        repinned.unwrap();
        assert_eq!(after, Some(vec![first]));
        assert!(pin(u32::MAX, "0").is_err());
    }
}
