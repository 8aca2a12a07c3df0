//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a bounded
//! time with the committed seed corpora (`fuzz/seeds/<target>/`). Engine: libFuzzer through
//! cargo-fuzz on the stable toolchain with `--sanitizer none` (meshtune's crates forbid
//! `unsafe`, so what the fuzzer looks for is panics, hangs and huge allocations, which
//! libFuzzer catches without a sanitizer; see README.md "Fuzzing" for the measurements).
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
/// Seconds per target in `cargo xtask test` (CI).
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

fn binary(ctx: &Ctx, target: &str) -> Result<PathBuf> {
    Ok(fuzz_dir(ctx)
        .join(host_triple()?)
        .join("release")
        .join(target))
}

fn build(ctx: &Ctx, heavy: bool) -> Result<()> {
    let mut c = ctx.cargo();
    c.current_dir(ctx.root.join("fuzz")).args([
        "fuzz",
        "build",
        "--sanitizer",
        "none",
        "--target-dir",
    ]);
    c.arg(fuzz_dir(ctx));
    if heavy {
        c.args(["--features", HEAVY_FEATURES]);
    }
    run(
        if heavy {
            "cargo fuzz build (all targets)"
        } else {
            "cargo fuzz build (light targets)"
        },
        &mut c,
    )
}

/// Runs one target for `secs`; returns the number of executions, or the finding.
fn run_target(ctx: &Ctx, target: &str, secs: u64) -> Result<u64> {
    let corpus = fuzz_dir(ctx).join("corpus").join(target);
    let artifacts = fuzz_dir(ctx).join("artifacts").join(target);
    let seeds = ctx.root.join("fuzz/seeds").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let bin = binary(ctx, target)?;
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

/// Whether the heavy targets are built already (then a rebuild only recompiles what changed).
fn heavy_cached(ctx: &Ctx) -> bool {
    HEAVY_TARGETS
        .iter()
        .all(|t| binary(ctx, t).is_ok_and(|b| b.is_file()))
}

/// Options of `cargo xtask fuzz`.
struct Opts {
    secs: u64,
    targets: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        secs: DEFAULT_FUZZ_SECS,
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

fn run_all(ctx: &Ctx, targets: &[String], secs: u64) -> Result<()> {
    let heavy = targets.iter().any(|t| HEAVY_TARGETS.contains(&t.as_str()));
    let t0 = Instant::now();
    build(ctx, heavy)?;
    eprintln!("  fuzz build: {:.0} s", t0.elapsed().as_secs_f64());
    let mut lines = Vec::new();
    for t in targets {
        let start = Instant::now();
        let execs = run_target(ctx, t, secs)?;
        let s = start.elapsed().as_secs_f64();
        lines.push(format!(
            "  {t:<14} {s:>6.0} s {execs:>12} inputs {:>9.0}/s  no finding",
            execs as f64 / s.max(1e-9)
        ));
    }
    eprintln!("fuzzing ({secs} s per target):");
    for l in lines {
        eprintln!("{l}");
    }
    Ok(())
}

/// `cargo xtask fuzz [--secs N] [--light] [TARGET...]`.
pub fn fuzz(ctx: &Ctx, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    setup(ctx)?;
    run_all(ctx, &o.targets, o.secs)
}

/// The bounded run of `cargo xtask test`: the light targets always; the heavy ones (tract's
/// cold release build alone exceeds the CI budget) only when their build is cached in the
/// target dir.
pub fn ci(ctx: &Ctx) -> Result<()> {
    let mut targets: Vec<String> = LIGHT_TARGETS.iter().map(|t| t.to_string()).collect();
    if heavy_cached(ctx) {
        targets.extend(HEAVY_TARGETS.iter().map(|t| t.to_string()));
    } else {
        eprintln!(
            "  fuzz: {} not built in {}; skipped here (run `cargo xtask fuzz`)",
            HEAVY_TARGETS.join(", "),
            fuzz_dir(ctx).display()
        );
    }
    run_all(ctx, &targets, CI_FUZZ_SECS)
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
