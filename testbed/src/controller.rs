//! Launcher for the real `meshtune controller` process: spawns the binary with gRPC and admin
//! on port 0, parses `grpc listening on ADDR` / `admin listening on ADDR` from its stdout,
//! reads `/api/destinations`, and can be killed and restarted on the same ports (so Envoy's
//! static `meshtune_controller` cluster keeps pointing at it). Output goes to a log file.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::http;

/// How long to wait for the ports to be printed.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller: cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("controller: log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("controller did not print its ports within {0:?}; log {log_path}:\n{log}", log_path = .1.display(), log = .2)]
    NoPorts(Duration, PathBuf, String),
    #[error("controller admin: {0}")]
    Http(#[from] http::HttpError),
    #[error("controller admin {path}: status {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("controller admin {path}: bad JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// Controller launch options.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub bin: PathBuf,
    /// `--hints-file`.
    pub hints_file: Option<PathBuf>,
    /// `--window-secs`.
    pub window_secs: Option<u32>,
    /// Extra arguments after `controller`.
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Copy the controller's stdout (the log sink's diffs) into its log file; false reads and
    /// drops it (benchmarks that push thousands of destinations a second).
    pub log_stdout: bool,
}

impl ControllerConfig {
    pub fn new(bin: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            hints_file: None,
            window_secs: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            log_stdout: true,
        }
    }
}

/// `/api/destinations` → one destination's window view.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WindowView {
    pub requests: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub error_5xx_rate: f64,
    pub overflow_rate: f64,
    pub timeout_rate: f64,
    pub inflight_avg: f64,
    pub inflight_max: f64,
}

/// Lifetime counters of a destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Lifetime {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub flag_uo: u64,
    pub flag_ut: u64,
    pub flag_conn_failure: u64,
    pub retries: u64,
    pub shed: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// One destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Destination {
    pub name: String,
    /// Distinct reporters with a report in the window.
    pub reporters: u64,
    pub window: WindowView,
    pub lifetime: Lifetime,
    pub hint: serde_json::Value,
}

/// The whole `/api/destinations` answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Destinations {
    pub destinations: Vec<Destination>,
    pub reports_accepted: u64,
    pub reports_rejected: u64,
    /// Reports ignored as duplicates (sequence already seen).
    pub reports_duplicate: u64,
    /// Reporters the controller tracks.
    pub reporters: u64,
}

impl Destinations {
    /// A destination by name.
    pub fn get(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

/// A running controller; killed on drop.
#[derive(Debug)]
pub struct Controller {
    cfg: ControllerConfig,
    child: Option<Child>,
    grpc: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    log_path: PathBuf,
    starts: u32,
}

impl Controller {
    /// Starts on port 0 and waits for both ports.
    pub fn start(cfg: ControllerConfig) -> Result<Self, ControllerError> {
        let dir = meshtune_test_support::process::run_dir("controller").map_err(|source| {
            ControllerError::Log {
                path: std::env::temp_dir(),
                source,
            }
        })?;
        let log_path = dir.join("controller.log");
        let mut c = Controller {
            cfg,
            child: None,
            grpc: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            dir,
            log_path,
            starts: 0,
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> Result<(), ControllerError> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|source| ControllerError::Log {
                path: self.log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ControllerError::Log {
            path: self.log_path.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.cfg.bin);
        cmd.arg("controller")
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string());
        // Local runs are plaintext and unauthenticated unless the caller chose a mode.
        let chose_auth = self.cfg.extra_args.iter().any(|a| {
            a.starts_with("--tls-cert") || a == "--trust-xfcc" || a == "--insecure-no-auth"
        });
        if !chose_auth {
            cmd.arg("--insecure-no-auth");
        }
        if let Some(h) = &self.cfg.hints_file {
            cmd.arg("--hints-file").arg(h);
        }
        if let Some(w) = self.cfg.window_secs {
            cmd.arg("--window-secs").arg(w.to_string());
        }
        cmd.envs(self.cfg.env.iter().map(|(k, v)| (k, v)));
        cmd.args(&self.cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_err));
        let mut child = cmd.spawn().map_err(|source| ControllerError::Spawn {
            bin: self.cfg.bin.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel::<(bool, SocketAddr)>();
        let mut log = log;
        let log_stdout = self.cfg.log_stdout;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if log_stdout || line.contains(" listening on ") {
                    let _ = writeln!(log, "{line}");
                }
                for (prefix, grpc) in [("grpc listening on ", true), ("admin listening on ", false)]
                {
                    if let Some(rest) = line.find(prefix).map(|i| &line[i + prefix.len()..]) {
                        if let Ok(a) = rest.trim().parse() {
                            let _ = tx.send((grpc, a));
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + DEFAULT_START_TIMEOUT;
        let (mut got_grpc, mut got_admin) = (false, false);
        while !(got_grpc && got_admin) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok((true, a)) => {
                    self.grpc = a;
                    got_grpc = true;
                }
                Ok((false, a)) => {
                    self.admin = a;
                    got_admin = true;
                }
                Err(_) => {
                    let dead = self
                        .child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                    if dead || Instant::now() >= deadline {
                        self.kill();
                        return Err(ControllerError::NoPorts(
                            DEFAULT_START_TIMEOUT,
                            self.log_path.clone(),
                            meshtune_test_support::process::tail(&self.log_path, 4000),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// gRPC address.
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }
    /// Admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }
    /// Admin base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
    /// Process id (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL (no graceful shutdown: models a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports (retrying while the old sockets are released).
    pub fn restart(&mut self) -> Result<(), ControllerError> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("controller restart: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GET an admin path, expecting 200.
    pub fn admin_get(&self, path: &str) -> Result<String, ControllerError> {
        let r = http::get(self.admin, path, &[])?;
        if r.status != 200 {
            return Err(ControllerError::Status {
                path: path.into(),
                status: r.status,
                body: r.text(),
            });
        }
        Ok(r.text())
    }

    /// `/api/destinations`.
    pub fn destinations(&self) -> Result<Destinations, ControllerError> {
        let path = "/api/destinations";
        let text = self.admin_get(path)?;
        serde_json::from_str(&text).map_err(|source| ControllerError::Json {
            path: path.into(),
            source,
        })
    }

    /// Polls `/api/destinations` until `pred` holds or `timeout` passes; returns the last view.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Destinations) -> bool,
    ) -> Result<(bool, Destinations), ControllerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.destinations()?;
            if pred(&d) {
                return Ok((true, d));
            }
            if Instant::now() >= deadline {
                return Ok((false, d));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("controller log kept at {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes a hints file atomically (temp file + rename, so the controller never reads half).
pub fn write_hints(path: &Path, hints: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(hints).expect("serialisable"),
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations_tolerantly() {
        let d: Destinations = serde_json::from_str(
            r#"{"destinations":[{"name":"workload","window":{"requests":10,"p99_ms":3.5},
                "lifetime":{"requests":100,"status_5xx":10,"extra":1},"hint":null}],
                "reports_accepted":7,"reports_rejected":1}"#,
        )
        .unwrap();
        let w = d.get("workload").unwrap();
        assert_eq!(w.lifetime.requests, 100);
        assert_eq!(w.lifetime.status_5xx, 10);
        assert_eq!(w.window.p99_ms, 3.5);
        assert_eq!(d.reports_accepted, 7);
        assert!(d.get("other").is_none());
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let e = Controller::start(ControllerConfig::new(Path::new("/nonexistent/meshtune")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/meshtune"), "{e}");
    }
}
