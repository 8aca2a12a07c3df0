//! Process plumbing shared by the launchers: fresh run directories, log tails and commands
//! pinned to CPUs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory for one run's config and logs under the system temp dir.
pub fn run_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "meshtune-{prefix}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Last `max` bytes of a file (lossy).
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// A command that runs `program` pinned to `cpus` (`taskset -c cpus program …`; taskset
/// execs the program, so the child's pid is the program's).
pub fn pinned_command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_are_fresh_and_tails_are_bounded() {
        let a = run_dir("ts").unwrap();
        let b = run_dir("ts").unwrap();
        assert_ne!(a, b);
        let f = a.join("log");
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(tail(&f, 4), "6789");
        assert_eq!(tail(&f, 100), "0123456789");
        assert_eq!(tail(&a.join("missing"), 4), "");
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }
}
