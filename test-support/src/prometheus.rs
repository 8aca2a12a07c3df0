//! A real Prometheus for tests (Debian package `prometheus`, installed by `cargo xtask
//! setup`): finds `prometheus` and `promtool` (`PROMETHEUS_BIN` / `PROMTOOL_BIN`, else
//! `PATH`), writes a generated config with static scrape targets, starts it on 127.0.0.1 with
//! its data in a fresh run directory, waits for `/-/ready`, and kills and reaps it on drop.
//! Missing binaries skip or fail the test by the [`crate::prereq`] rules.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{http, prereq, process};

/// Overrides the `prometheus` binary.
pub const PROMETHEUS_BIN_ENV: &str = "PROMETHEUS_BIN";
/// Overrides the `promtool` binary.
pub const PROMTOOL_BIN_ENV: &str = "PROMTOOL_BIN";

/// Errors starting Prometheus (each names the path or address).
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("prometheus on {addr} not ready after {waited:?}; log tail:\n{log}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        log: String,
    },
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
}

fn find(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = prereq::env(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn found_or_skip(env: &str, name: &str) -> Option<PathBuf> {
    match find(env, name) {
        Some(p) if p.is_file() => Some(p),
        other => {
            prereq::skip_or_fail(
                prereq::required(&prereq::env),
                &format!(
                    "{name} not found ({}; set {env} or run `cargo xtask setup`, which installs the Debian package prometheus)",
                    other.map_or("not on PATH".to_string(), |p| format!("{} missing", p.display()))
                ),
            );
            None
        }
    }
}

/// The `prometheus` binary, or `None` after a skip note (a failure under CI).
pub fn binary() -> Option<PathBuf> {
    found_or_skip(PROMETHEUS_BIN_ENV, "prometheus")
}

/// The `promtool` binary, or `None` after a skip note (a failure under CI).
pub fn promtool() -> Option<PathBuf> {
    found_or_skip(PROMTOOL_BIN_ENV, "promtool")
}

/// One scrape job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub metrics_path: String,
    pub targets: Vec<SocketAddr>,
}

impl Job {
    pub fn new(name: &str, metrics_path: &str, targets: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            metrics_path: metrics_path.into(),
            targets,
        }
    }
}

/// The generated `prometheus.yml` (YAML is a superset of JSON: written as JSON).
pub fn config(scrape_interval: Duration, jobs: &[Job]) -> String {
    let interval = format!("{}ms", scrape_interval.as_millis().max(1));
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "job_name": j.name,
                "metrics_path": j.metrics_path,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": j.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>()}],
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }))
    .expect("serialisable")
}

/// A running Prometheus; killed and reaped on drop.
#[derive(Debug)]
pub struct PrometheusProcess {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

fn free_port() -> Result<SocketAddr, PromError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(PromError::Port)?;
    l.local_addr().map_err(PromError::Port)
}

impl PrometheusProcess {
    /// Starts `bin` scraping `jobs` every `scrape_interval`, listening on a free 127.0.0.1
    /// port, and waits (up to 20 s) for `/-/ready`.
    pub fn start(bin: &Path, scrape_interval: Duration, jobs: &[Job]) -> Result<Self, PromError> {
        let dir = process::run_dir("prometheus").map_err(|source| PromError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config(scrape_interval, jobs)).map_err(|source| PromError::Write {
            path: cfg.clone(),
            source,
        })?;
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).map_err(|source| PromError::Write {
            path: log_path.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| PromError::Write {
            path: log_path.clone(),
            source,
        })?;
        let addr = free_port()?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| PromError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })?;
        let mut p = Self { child, addr, dir };
        let started = Instant::now();
        let limit = Duration::from_secs(20);
        loop {
            if http::get(addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(p);
            }
            let exited = p.child.try_wait().ok().flatten().is_some();
            if exited || started.elapsed() > limit {
                return Err(PromError::NotReady {
                    addr,
                    waited: started.elapsed(),
                    log: process::tail(&log_path, 2000),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The run directory (config, data, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of Prometheus' log.
    pub fn log_tail(&self, max: usize) -> String {
        process::tail(&self.dir.join("prometheus.log"), max)
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_jobs_and_interval() {
        let c = config(
            Duration::from_millis(500),
            &[Job::new(
                "envoy",
                "/stats/prometheus",
                vec!["127.0.0.1:9901".parse().unwrap()],
            )],
        );
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["global"]["scrape_interval"], "500ms");
        assert_eq!(v["scrape_configs"][0]["metrics_path"], "/stats/prometheus");
        assert_eq!(
            v["scrape_configs"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:9901"
        );
    }
}
