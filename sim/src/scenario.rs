//! Scenario files: TOML descriptions of the upstream hosts, their failures, the load and the
//! client Envoys. Invalid files are refused with the file, line, column and field path.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A scenario that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}:{line}:{column}: field `{field}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no *.toml scenario files")]
    Empty { dir: String },
    #[error("{file}: duplicate scenario name `{name}`")]
    DuplicateName { file: String, name: String },
}

/// Service-time distribution of one request on a host (before slow-down failures).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceDist {
    /// Every request takes exactly `ms`.
    Constant {
        ms: Positive,
    },
    Exponential {
        mean_ms: Positive,
    },
    /// Lognormal with the given mean and log-space standard deviation `sigma`.
    Lognormal {
        mean_ms: Positive,
        sigma: NonNegative,
    },
    /// Mixture of two exponentials: `slow_fraction` of requests have mean `slow_ms`.
    Bimodal {
        fast_ms: Positive,
        slow_ms: Positive,
        slow_fraction: Fraction,
    },
}

impl ServiceDist {
    /// The same distribution with every service time multiplied by `factor` (> 0).
    pub fn scaled(&self, factor: f64) -> ServiceDist {
        let f = |p: Positive| Positive(p.0 * factor);
        match *self {
            ServiceDist::Constant { ms } => ServiceDist::Constant { ms: f(ms) },
            ServiceDist::Exponential { mean_ms } => ServiceDist::Exponential {
                mean_ms: f(mean_ms),
            },
            ServiceDist::Lognormal { mean_ms, sigma } => ServiceDist::Lognormal {
                mean_ms: f(mean_ms),
                sigma,
            },
            ServiceDist::Bimodal {
                fast_ms,
                slow_ms,
                slow_fraction,
            } => ServiceDist::Bimodal {
                fast_ms: f(fast_ms),
                slow_ms: f(slow_ms),
                slow_fraction,
            },
        }
    }

    /// Mean service time in ms.
    pub fn mean_ms(&self) -> f64 {
        match *self {
            ServiceDist::Constant { ms } => ms.0,
            ServiceDist::Exponential { mean_ms } => mean_ms.0,
            ServiceDist::Lognormal { mean_ms, .. } => mean_ms.0,
            ServiceDist::Bimodal {
                fast_ms,
                slow_ms,
                slow_fraction,
            } => fast_ms.0 * (1.0 - slow_fraction.0) + slow_ms.0 * slow_fraction.0,
        }
    }
}

/// What goes wrong with one host, from `at_s` until `until_s` (or the end of the episode).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Failure {
    /// Service times multiplied by `factor`.
    Slow {
        host: u32,
        #[serde(default)]
        at_s: NonNegative,
        until_s: Option<Positive>,
        factor: Positive,
    },
    /// The host answers 503 with probability `error_rate` (replaces the base rate).
    Errors {
        host: u32,
        #[serde(default)]
        at_s: NonNegative,
        until_s: Option<Positive>,
        error_rate: Fraction,
    },
    /// Connections to the host fail (UF 503 after the connect time).
    Down {
        host: u32,
        #[serde(default)]
        at_s: NonNegative,
        until_s: Option<Positive>,
    },
}

impl Failure {
    pub fn host(&self) -> u32 {
        match *self {
            Failure::Slow { host, .. }
            | Failure::Errors { host, .. }
            | Failure::Down { host, .. } => host,
        }
    }

    /// Active interval [from, until) in seconds.
    pub fn interval_s(&self) -> (f64, f64) {
        let (a, u) = match *self {
            Failure::Slow { at_s, until_s, .. }
            | Failure::Errors { at_s, until_s, .. }
            | Failure::Down { at_s, until_s, .. } => (at_s, until_s),
        };
        (a.0, u.map(|u| u.0).unwrap_or(f64::INFINITY))
    }
}

/// The upstream hosts behind the destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    pub count: AtLeastOne,
    /// Requests a host serves at once (worker threads); more wait in the host's FIFO queue.
    pub concurrency: AtLeastOne,
    /// Host queue length beyond which it rejects with 503 at once (absent = unbounded).
    pub queue_limit: Option<u32>,
    /// A request whose client gave up while it still waited in the host queue is skipped
    /// (true) or still served (false, default: the server does not notice the reset).
    #[serde(default)]
    pub abandon_queued: bool,
    pub service: ServiceDist,
    /// Base probability that a response is a 503.
    #[serde(default)]
    pub error_rate: Fraction,
    #[serde(default)]
    pub failures: Vec<Failure>,
}

/// Shape of the offered load over the episode (requests per second, all clients together).
/// Written as a flat `[load]` table with `profile = "<variant>"` and the variant's fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadProfile {
    Constant {
        rps: NonNegative,
    },
    /// `rps`, then `to_rps` from `at_s` on.
    Step {
        rps: NonNegative,
        to_rps: NonNegative,
        at_s: NonNegative,
    },
    /// Linear from `rps` to `to_rps` over the episode.
    Ramp {
        rps: NonNegative,
        to_rps: NonNegative,
    },
    /// `rps * (1 + amplitude * sin(2π t / period_s))`.
    Diurnal {
        rps: NonNegative,
        amplitude: Fraction,
        period_s: Positive,
    },
    /// `rps`, with `burst_rps` for `duration_s` every `every_s` (first burst at `every_s`).
    Bursts {
        rps: NonNegative,
        burst_rps: NonNegative,
        every_s: Positive,
        duration_s: Positive,
    },
}

/// Inter-arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Open-loop Poisson arrivals (default).
    #[default]
    Poisson,
    /// Evenly spaced arrivals (deterministic; for tests).
    Uniform,
}

/// Load table as written (flat, so errors keep their line and field); see [`LoadProfile`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRaw {
    profile: ProfileKind,
    rps: NonNegative,
    to_rps: Option<NonNegative>,
    at_s: Option<NonNegative>,
    amplitude: Option<Fraction>,
    period_s: Option<Positive>,
    burst_rps: Option<NonNegative>,
    every_s: Option<Positive>,
    duration_s: Option<Positive>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ProfileKind {
    Constant,
    Step,
    Ramp,
    Diurnal,
    Bursts,
}

impl LoadRaw {
    /// The profile, or the name of a missing field.
    fn profile(self) -> Result<LoadProfile, &'static str> {
        let rps = self.rps;
        let need = |x: Option<NonNegative>, n: &'static str| x.ok_or(n);
        Ok(match self.profile {
            ProfileKind::Constant => LoadProfile::Constant { rps },
            ProfileKind::Step => LoadProfile::Step {
                rps,
                to_rps: need(self.to_rps, "to_rps")?,
                at_s: need(self.at_s, "at_s")?,
            },
            ProfileKind::Ramp => LoadProfile::Ramp {
                rps,
                to_rps: need(self.to_rps, "to_rps")?,
            },
            ProfileKind::Diurnal => LoadProfile::Diurnal {
                rps,
                amplitude: self.amplitude.ok_or("amplitude")?,
                period_s: self.period_s.ok_or("period_s")?,
            },
            ProfileKind::Bursts => LoadProfile::Bursts {
                rps,
                burst_rps: need(self.burst_rps, "burst_rps")?,
                every_s: self.every_s.ok_or("every_s")?,
                duration_s: self.duration_s.ok_or("duration_s")?,
            },
        })
    }
}

impl LoadProfile {
    /// Offered rate at time `t_s` of an episode lasting `episode_s`.
    pub fn rate(&self, t_s: f64, episode_s: f64) -> f64 {
        match *self {
            LoadProfile::Constant { rps } => rps.0,
            LoadProfile::Step { rps, to_rps, at_s } => {
                if t_s < at_s.0 {
                    rps.0
                } else {
                    to_rps.0
                }
            }
            LoadProfile::Ramp { rps, to_rps } => {
                let f = if episode_s > 0.0 {
                    (t_s / episode_s).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                rps.0 + (to_rps.0 - rps.0) * f
            }
            LoadProfile::Diurnal {
                rps,
                amplitude,
                period_s,
            } => rps.0 * (1.0 + amplitude.0 * (std::f64::consts::TAU * t_s / period_s.0).sin()),
            LoadProfile::Bursts {
                rps,
                burst_rps,
                every_s,
                duration_s,
            } => {
                let k = (t_s / every_s.0).floor();
                if k >= 1.0 && t_s - k * every_s.0 < duration_s.0 {
                    burst_rps.0
                } else {
                    rps.0
                }
            }
        }
    }
}

fn default_clients() -> AtLeastOne {
    AtLeastOne(1)
}
fn default_connect_ms() -> NonNegative {
    NonNegative(1.0)
}
fn default_rtt_ms() -> NonNegative {
    NonNegative(0.5)
}

/// A simulation scenario (see sim/README.md for the file format).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Default seed (run_episode takes its own).
    #[serde(default)]
    pub seed: u64,
    /// Decision window length in seconds.
    pub window_s: Positive,
    /// Episode length in windows.
    pub windows: AtLeastOne,
    /// Latency SLO for goodput, in ms.
    pub slo_ms: Positive,
    /// Number of client Envoys; limits are per client Envoy.
    #[serde(default = "default_clients")]
    pub clients: AtLeastOne,
    /// Time to open a new upstream connection.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: NonNegative,
    /// Network round trip added to every attempt.
    #[serde(default = "default_rtt_ms")]
    pub rtt_ms: NonNegative,
    pub hosts: Hosts,
    /// Offered load over time.
    #[serde(rename = "load", deserialize_with = "de_load")]
    pub load: LoadProfile,
    /// Inter-arrival process (default Poisson).
    #[serde(default)]
    pub arrivals: Arrivals,
    /// Where the file came from (set by the loader).
    #[serde(skip)]
    pub origin: String,
}

macro_rules! checked_newtype {
    ($name:ident, $inner:ty, $check:expr, $what:literal) => {
        #[doc = concat!("A number that must be ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
        #[serde(try_from = "TomlNumber")]
        pub struct $name(pub $inner);

        impl TryFrom<TomlNumber> for $name {
            type Error = String;
            fn try_from(n: TomlNumber) -> Result<Self, String> {
                let v = n.as_f64();
                let ok: fn(f64) -> bool = $check;
                if ok(v) {
                    Ok($name(v as $inner))
                } else {
                    Err(format!("{v} is not {}", $what))
                }
            }
        }
    };
}

fn de_load<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LoadProfile, D::Error> {
    let raw = LoadRaw::deserialize(d)?;
    raw.profile().map_err(|missing| {
        serde::de::Error::custom(format!(
            "missing field `{missing}` (needed by profile {:?})",
            raw.profile
        ))
    })
}

/// A TOML integer or float.
#[derive(Debug, Clone, Copy)]
pub enum TomlNumber {
    Int(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for TomlNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TomlNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<TomlNumber, E> {
                Ok(TomlNumber::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TomlNumber, E> {
                Ok(TomlNumber::Float(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<TomlNumber, E> {
                Ok(TomlNumber::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl TomlNumber {
    fn as_f64(self) -> f64 {
        match self {
            TomlNumber::Int(i) => i as f64,
            TomlNumber::Float(f) => f,
        }
    }
}

checked_newtype!(
    Positive,
    f64,
    |v| v.is_finite() && v > 0.0,
    "a finite number > 0"
);
checked_newtype!(
    NonNegative,
    f64,
    |v| v.is_finite() && v >= 0.0,
    "a finite number >= 0"
);
checked_newtype!(Fraction, f64, |v| (0.0..=1.0).contains(&v), "within [0, 1]");
checked_newtype!(
    AtLeastOne,
    u32,
    |v| v.fract() == 0.0 && (1.0..=1_000_000.0).contains(&v),
    "a whole number in [1, 1000000]"
);

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(p: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(p).map_err(|source| ScenarioError::Io {
            file: p.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &p.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn from_toml_str(s: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |span: Option<std::ops::Range<usize>>, field: String, message: String| {
            let (line, column) = line_col(s, span.map(|r| r.start).unwrap_or(0));
            ScenarioError::Invalid {
                file: origin.to_string(),
                line,
                column,
                field,
                message,
            }
        };
        let de = toml::Deserializer::parse(s)
            .map_err(|e| invalid(e.span(), "(syntax)".into(), e.message().to_string()))?;
        let mut sc: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            invalid(inner.span(), field, inner.message().to_string())
        })?;
        sc.origin = origin.to_string();
        // Cross-field checks, located with a span lookup of the offending key.
        let count = sc.hosts.count.0;
        for (i, f) in sc.hosts.failures.iter().enumerate() {
            let field = format!("hosts.failures[{i}]");
            if f.host() >= count {
                return Err(invalid(
                    find_key(s, "host", i),
                    format!("{field}.host"),
                    format!("host {} does not exist (hosts.count = {count})", f.host()),
                ));
            }
            let (from, until) = f.interval_s();
            if until <= from {
                return Err(invalid(
                    find_key(s, "until_s", i),
                    format!("{field}.until_s"),
                    format!("until_s {until} is not after at_s {from}"),
                ));
            }
        }
        if sc.name.trim().is_empty() {
            return Err(invalid(
                find_key(s, "name", 0),
                "name".into(),
                "must not be empty".into(),
            ));
        }
        Ok(sc)
    }

    /// Episode length in seconds.
    pub fn episode_s(&self) -> f64 {
        self.window_s.0 * self.windows.0 as f64
    }

    /// Total service capacity in requests per second (mean service time, all hosts healthy).
    pub fn capacity_rps(&self) -> f64 {
        self.hosts.count.0 as f64 * self.hosts.concurrency.0 as f64 * 1000.0
            / self.hosts.service.mean_ms()
    }
}

/// Span of the `nth` occurrence of `key = ` at the start of a line (approximate but good
/// enough to point at the line of a cross-field error).
fn find_key(s: &str, key: &str, nth: usize) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    let mut seen = 0;
    for line in s.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                if seen == nth {
                    let start = offset + (line.len() - t.len());
                    return Some(start..start + key.len());
                }
                seen += 1;
            }
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column of a byte offset.
fn line_col(s: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(s.len());
    let before = &s[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Loads every `*.toml` in a directory (sorted by file name); refuses duplicates by name.
pub fn load_dir(p: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let rd = std::fs::read_dir(p).map_err(|source| ScenarioError::Io {
        file: p.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for e in rd {
        let e = e.map_err(|source| ScenarioError::Io {
            file: p.display().to_string(),
            source,
        })?;
        let path = e.path();
        if path.extension().is_some_and(|x| x == "toml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ScenarioError::Empty {
            dir: p.display().to_string(),
        });
    }
    let mut out: Vec<Scenario> = Vec::with_capacity(files.len());
    for f in files {
        let sc = Scenario::from_file(&f)?;
        if out.iter().any(|o| o.name == sc.name) {
            return Err(ScenarioError::DuplicateName {
                file: f.display().to_string(),
                name: sc.name,
            });
        }
        out.push(sc);
    }
    Ok(out)
}

/// Loads a scenario file, or every scenario of a directory.
pub fn load_path(p: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    if p.is_dir() {
        load_dir(p)
    } else {
        Scenario::from_file(p).map(|s| vec![s])
    }
}
