//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a bounded
//! time with the committed seed corpora (`fuzz/seeds/<target>/`). Engine: libFuzzer through
//! cargo-fuzz on the stable toolchain with `--sanitizer none` (meshtune's crates forbid
//! `unsafe`, so what the fuzzer looks for is panics, hangs and huge allocations, which
//! libFuzzer catches without a sanitizer; see README.md "Fuzzing" for the measurements).
//!
//! Two builds ([`Build`]): CI's (`cargo xtask test`) is the unoptimised `--dev` build of all
//! seven targets, the cheapest cold build; `cargo xtask fuzz` defaults to cargo-fuzz's
//! optimised build for long local runs (`--dev` picks the CI build).
//!
//! Build output, working corpora and crash artifacts live under `<target dir>/fuzz/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{output_ok, run, Ctx, Result};

/// cargo-fuzz version `cargo xtask setup` installs (`cargo install --locked`) when missing.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds per target for `cargo xtask fuzz` without `--secs`.
pub const DEFAULT_FUZZ_SECS: u64 = 60;
/// Seconds per target in `cargo xtask test` (CI), after the [`Build::Dev`] build of all
/// seven targets (see README.md "Fuzzing" for the build and run times measured).
pub const CI_FUZZ_SECS: u64 = 15;
/// Per-input time limit: an input running longer is a hang (a finding).
const INPUT_TIMEOUT_SECS: u64 = 10;
/// Memory limit of the fuzzing process: more is a finding (huge allocation).
const RSS_LIMIT_MB: u64 = 2048;

/// Targets that build without tract or the controller library (cheap cold build).
pub const LIGHT_TARGETS: [&str; 4] = ["filter_config", "filter_hints", "filter_queue", "scenario"];
/// Targets behind the `policy` / `controller` features of the fuzz crate (tract, tonic, kube:
/// a long cold build).
pub const HEAVY_TARGETS: [&str; 3] = ["report", "guardrails", "model"];
const HEAVY_FEATURES: &str = "policy,controller";

fn max_len(target: &str) -> usize {
    // The model seed is an 11 KB ONNX file; everything else is small text or protobuf.
    if target == "model" {
        32 * 1024
    } else {
        4096
    }
}

/// Installs cargo-fuzz when `cargo fuzz` is missing (or not the pinned version).
pub fn setup(ctx: &Ctx) -> Result<()> {
    let have = output_ok(ctx.cargo().args(["fuzz", "--version"]));
    match have {
        Some(v) if v.contains(CARGO_FUZZ_VERSION) => {
            eprintln!("  {}", v.trim());
            Ok(())
        }
        _ => run(
            "install cargo-fuzz",
            ctx.cargo().args([
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ]),
        ),
    }
}

fn fuzz_dir(ctx: &Ctx) -> PathBuf {
    ctx.target_dir.join("fuzz")
}

fn host_triple() -> Result<String> {
    let v = output_ok(Command::new("rustc").arg("-vV")).ok_or("rustc -vV failed")?;
    v.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| "rustc -vV printed no host".into())
}

/// How the fuzz targets are built (both with debug assertions and overflow checks, the
/// panics the fuzzer looks for, and libFuzzer's coverage instrumentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `cargo fuzz build --dev`: unoptimised, no debuginfo (`[profile.dev]` of
    /// `fuzz/Cargo.toml`). The cheapest cold build of all seven targets; fewer inputs per
    /// second. What CI runs.
    Dev,
    /// cargo-fuzz's default: the release profile with one codegen unit. The fastest fuzzing
    /// and the longest cold build; for long local runs.
    Release,
}

impl Build {
    fn profile_dir(self) -> &'static str {
        match self {
            Build::Dev => "debug",
            Build::Release => "release",
        }
    }
}

fn binary(ctx: &Ctx, build: Build, target: &str) -> Result<PathBuf> {
    Ok(fuzz_dir(ctx)
        .join(host_triple()?)
        .join(build.profile_dir())
        .join(target))
}

/// One `cargo fuzz build` of every target (`heavy`: with the tract / controller ones).
fn build(ctx: &Ctx, kind: Build, heavy: bool) -> Result<()> {
    let mut c = ctx.cargo();
    c.current_dir(ctx.root.join("fuzz"))
        .args(["fuzz", "build", "--sanitizer", "none"]);
    if kind == Build::Dev {
        c.arg("--dev");
    }
    c.arg("--target-dir").arg(fuzz_dir(ctx));
    if heavy {
        c.args(["--features", HEAVY_FEATURES]);
    }
    let what = format!(
        "cargo fuzz build{} ({} targets)",
        if kind == Build::Dev { " --dev" } else { "" },
        if heavy { "all" } else { "light" }
    );
    run(&what, &mut c)
}

/// Runs one target for `secs`; returns the number of executions, or the finding.
fn run_target(ctx: &Ctx, kind: Build, target: &str, secs: u64) -> Result<u64> {
    let corpus = fuzz_dir(ctx).join("corpus").join(target);
    let artifacts = fuzz_dir(ctx).join("artifacts").join(target);
    let seeds = ctx.root.join("fuzz/seeds").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let bin = binary(ctx, kind, target)?;
    let mut c = Command::new(&bin);
    c.arg(&corpus).arg(&seeds).args([
        format!("-max_total_time={secs}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-max_len={}", max_len(target)),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_string(),
    ]);
    eprintln!("  $ {} ...", bin.display());
    let out = c.output().map_err(|e| format!("{}: {e}", bin.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "fuzz target {target} found a failure (artifacts in {}):\n{}",
            artifacts.display(),
            tail.join("\n")
        ));
    }
    Ok(execs)
}

/// Options of `cargo xtask fuzz`.
struct Opts {
    secs: u64,
    build: Build,
    targets: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        secs: DEFAULT_FUZZ_SECS,
        build: Build::Release,
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                o.secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--secs needs a number of seconds")?;
            }
            "--light" => o
                .targets
                .extend(LIGHT_TARGETS.iter().map(|t| t.to_string())),
            "--dev" => o.build = Build::Dev,
            t if LIGHT_TARGETS.contains(&t) || HEAVY_TARGETS.contains(&t) => {
                o.targets.push(t.to_string())
            }
            other => {
                return Err(format!(
                    "unknown fuzz option or target {other:?} (targets: {}, {})",
                    LIGHT_TARGETS.join(", "),
                    HEAVY_TARGETS.join(", ")
                ))
            }
        }
    }
    if o.targets.is_empty() {
        o.targets = LIGHT_TARGETS
            .iter()
            .chain(HEAVY_TARGETS.iter())
            .map(|t| t.to_string())
            .collect();
    }
    Ok(o)
}

fn run_all(ctx: &Ctx, kind: Build, targets: &[String], secs: u64) -> Result<()> {
    let heavy = targets.iter().any(|t| HEAVY_TARGETS.contains(&t.as_str()));
    let t0 = Instant::now();
    build(ctx, kind, heavy)?;
    let build_secs = t0.elapsed().as_secs_f64();
    eprintln!("  fuzz build: {build_secs:.0} s");
    let mut lines = Vec::new();
    for t in targets {
        let start = Instant::now();
        let execs = run_target(ctx, kind, t, secs)?;
        let s = start.elapsed().as_secs_f64();
        lines.push(format!(
            "  {t:<14} {s:>6.0} s {execs:>12} inputs {:>9.0}/s  no finding",
            execs as f64 / s.max(1e-9)
        ));
    }
    eprintln!(
        "fuzzing ({secs} s per target, {} build; build {:.0} s, all {:.0} s):",
        if kind == Build::Dev { "dev" } else { "release" },
        build_secs,
        t0.elapsed().as_secs_f64()
    );
    for l in lines {
        eprintln!("{l}");
    }
    Ok(())
}

/// `cargo xtask fuzz [--secs N] [--light] [--dev] [TARGET...]`.
pub fn fuzz(ctx: &Ctx, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    setup(ctx)?;
    run_all(ctx, o.build, &o.targets, o.secs)
}

/// The bounded run of `cargo xtask test`: every target, [`CI_FUZZ_SECS`] each, from one
/// [`Build::Dev`] build (the optimised build of tract, tonic and kube alone would exceed the
/// CI budget).
pub fn ci(ctx: &Ctx) -> Result<()> {
    let targets: Vec<String> = LIGHT_TARGETS
        .iter()
        .chain(HEAVY_TARGETS.iter())
        .map(|t| t.to_string())
        .collect();
    run_all(ctx, Build::Dev, &targets, CI_FUZZ_SECS)
}

/// The seed corpora: `cargo run --example seeds` in the fuzz crate (no instrumentation).
pub fn seeds(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.cargo();
    c.args(["run", "--manifest-path"])
        .arg(Path::new("fuzz").join("Cargo.toml"))
        .args(["--example", "seeds", "--target-dir"])
        .arg(fuzz_dir(ctx));
    run("fuzz seeds", &mut c)
}
