//! CPU time of a process from `/proc/<pid>/stat` (utime + stime, in clock ticks).

/// Errors reading `/proc/<pid>/stat`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("/proc/{pid}/stat: {source}")]
    Io { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat: cannot parse {text:?}")]
    Parse { pid: u32, text: String },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let s = "4242 (envoy worker 1) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(s), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        // Burn a little CPU so the count is visible.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(me).unwrap() > 0);
        assert!(cpu_ticks(u32::MAX).is_err());
    }
}
