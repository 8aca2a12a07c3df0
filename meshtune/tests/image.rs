//! The images `cargo xtask image` builds, unpacked and run: the controller image's root file
//! system (`buildah from` + `buildah mount`) runs `meshtune --version`, `meshtune controller
//! --help` and the controller itself under `chroot` as its non-root user, serving the module
//! it ships with; its config names a non-root user; it carries a CA bundle and the build's
//! filter module. The filter's OCI layout is the compat variant of the Wasm image spec Istio
//! reads. The manifests refer to these images and to the module's sha256.
//!
//! Needs buildah, root and the images (`cargo xtask image`; `cargo xtask test` builds them
//! first). Without them the tests skip, or fail under `CI`/`MESHTUNE_E2E_REQUIRED`.

use meshtune_test_support::{http, prereq};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONTROLLER_IMAGE: &str = "meshtune/controller";
/// Paths inside the controller image.
const BINARY: &str = "/usr/local/bin/meshtune";
const MODULE: &str = "/usr/local/share/meshtune/filter.wasm";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The URL the WasmPlugin fetches the module from: the controller Service's admin port.
const MODULE_URL: &str =
    "http://meshtune-controller.meshtune-system.svc.cluster.local:9090/filter.wasm";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo xtask image`'s output folder (`MESHTUNE_IMAGE_DIR`, else `<target>/image`).
fn image_dir() -> PathBuf {
    std::env::var_os("MESHTUNE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../image"))
}

/// The filter module of this build (`MESHTUNE_WASM`, else `cargo xtask wasm`'s output).
fn build_module() -> PathBuf {
    std::env::var_os("MESHTUNE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("../wasm32-unknown-unknown/wasm-release/meshtune_filter.wasm")
        })
}

fn buildah(args: &[&str]) -> Output {
    Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah runs")
}

fn ok_stdout(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    ok_stdout(&format!("sha256sum {}", path.display()), out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// True when buildah, root and the image are here; else skips (or fails when required).
fn prerequisites(image: &str) -> bool {
    let required = prereq::required(&prereq::env);
    let missing = if Command::new("buildah").arg("--version").output().is_err() {
        Some("buildah is not installed (cargo xtask setup installs the Debian package)".into())
    } else if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(true)
    {
        Some("not root: buildah mount and chroot need root here".into())
    } else if !buildah(&["inspect", "--type", "image", image])
        .status
        .success()
    {
        Some(format!("image {image} not built: run `cargo xtask image`"))
    } else {
        None
    };
    match missing {
        Some(msg) => {
            prereq::skip_or_fail(required, &msg);
            false
        }
        None => true,
    }
}

/// A working container of the image, mounted; removed on drop.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    fn new(image: &str) -> Self {
        let container = ok_stdout(
            "buildah from",
            buildah(&["from", "--pull=never", "--quiet", image]),
        )
        .trim()
        .to_string();
        let out = buildah(&["mount", &container]);
        if !out.status.success() {
            let _ = buildah(&["rm", &container]);
        }
        let root = PathBuf::from(ok_stdout("buildah mount", out).trim());
        Self { container, root }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// `chroot [--userspec=USER] ROOT ARGS...`
    fn chroot(&self, user: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        if let Some(u) = user {
            c.arg(format!("--userspec={u}"));
        }
        c.arg(&self.root).args(args);
        c
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = buildah(&["umount", &self.container]);
        let _ = buildah(&["rm", &self.container]);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until "admin listening on ADDR" (bounded by 20 s).
fn admin_addr(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the controller in the image prints its admin address within 20 s");
        if let Some(a) = line.strip_prefix("admin listening on ") {
            return a.parse().unwrap();
        }
    }
}

/// `User` of the image config as uid (numeric `UID[:GID]`, as the Containerfile sets it).
fn config_uid(inspect: &Value) -> u32 {
    let user = inspect["OCIv1"]["config"]["User"]
        .as_str()
        .expect("image config has a User");
    let uid = user.split(':').next().unwrap();
    uid.parse().unwrap_or_else(|_| {
        panic!("image User {user:?} is not numeric (kubelet's runAsNonRoot needs a uid)")
    })
}

#[test]
fn controller_image_runs_from_its_root_file_system() {
    let image = format!("{CONTROLLER_IMAGE}:{VERSION}");
    if !prerequisites(&image) {
        return;
    }
    let inspect: Value = serde_json::from_str(&ok_stdout(
        "buildah inspect",
        buildah(&["inspect", "--type", "image", &image]),
    ))
    .unwrap();
    let uid = config_uid(&inspect);
    assert_ne!(uid, 0, "the image runs as root");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"][0], BINARY, "{config}");
    // FROM scratch: the only layer is ours.
    let layers = inspect["OCIv1"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "FROM scratch gives one layer: {layers:?}");

    let m = Mounted::new(&image);
    // Nothing but what the Containerfile copies: no shell, no libc.
    assert!(!m.path("/bin/sh").exists(), "a shell in a scratch image");

    let out = m.chroot(None, &[BINARY, "--version"]).output().unwrap();
    let version = ok_stdout("meshtune --version in the image", out);
    assert_eq!(version.trim(), format!("meshtune {VERSION}"));

    let user = format!("{uid}:{uid}");
    let out = m
        .chroot(Some(&user), &[BINARY, "controller", "--help"])
        .output()
        .unwrap();
    let help = ok_stdout("meshtune controller --help in the image", out);
    assert!(
        help.contains("--filter-wasm") && help.contains("--grpc-listen"),
        "{help}"
    );
    // The deployed build has no developer subcommands.
    let out = m
        .chroot(None, &[BINARY, "train", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the image's binary has `train`");

    let ca = std::fs::read_to_string(m.path(CA_BUNDLE)).expect("CA bundle in the image");
    assert!(
        ca.matches("BEGIN CERTIFICATE").count() > 10,
        "{CA_BUNDLE} has no certificates"
    );

    let module = build_module();
    let build_sha = sha256sum(&module);
    let image_sha = sha256sum(&m.path(MODULE));
    assert_eq!(
        image_sha,
        build_sha,
        "{MODULE} in the image differs from {}: rebuild with `cargo xtask image`",
        module.display()
    );

    // The controller itself, as the image's user, with the default --filter-wasm.
    let mut child = KillOnDrop(
        m.chroot(
            Some(&user),
            &[
                BINARY,
                "controller",
                "--insecure-no-auth",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let admin = admin_addr(&mut child.0);
    let api = http::get(admin, "/api/filter", &[]).unwrap();
    assert_eq!(api.status, 200, "{}", api.text());
    let info: Value = serde_json::from_slice(&api.body).unwrap();
    assert_eq!(info["sha256"], build_sha.as_str(), "{info}");
    assert_eq!(info["path"], MODULE, "{info}");
    let wasm = http::get(admin, "/filter.wasm", &[]).unwrap();
    assert_eq!(wasm.status, 200);
    assert!(
        wasm.body == std::fs::read(&module).unwrap(),
        "served module differs"
    );
    drop(child);
}

/// Reads a blob of an OCI image layout by digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(sha256sum(&path), hex, "blob {digest} corrupt");
    bytes
}

#[test]
fn filter_image_is_the_wasm_image_spec_compat_layout() {
    let image = format!("meshtune/filter:{VERSION}");
    if !prerequisites(&image) {
        return;
    }
    let layout = image_dir().join("meshtune-filter-oci");
    let index: Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json"))
            .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask image writes it)", layout.display())),
    )
    .unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == VERSION)
        .unwrap_or_else(|| panic!("no manifest tagged {VERSION} in {index}"));
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest: Value =
        serde_json::from_slice(&blob(&layout, desc["digest"].as_str().unwrap())).unwrap();
    // Istio's fetcher (pkg/wasm/imagefetcher.go, extractOCIStandardImage) takes the last
    // layer, requires this media type and reads plugin.wasm from the gzip tar.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = &layers[0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let digest = layer["digest"].as_str().unwrap();
    blob(&layout, digest);
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let listing = ok_stdout(
        "tar -tzf layer",
        Command::new("tar").arg("-tzf").arg(&path).output().unwrap(),
    );
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    assert_eq!(names, ["plugin.wasm"], "layer holds {names:?}");
    let dir = tempfile::tempdir().unwrap();
    ok_stdout(
        "tar -xzf layer",
        Command::new("tar")
            .arg("-xzf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    assert_eq!(
        sha256sum(&dir.path().join("plugin.wasm")),
        sha256sum(&build_module())
    );
}

fn manifest_docs(file: &str) -> Vec<serde_yaml::Value> {
    let path = workspace().join("manifests/base").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn manifests_refer_to_the_images_and_the_module() {
    let controller = manifest_docs("controller.yaml");
    let deployment = controller
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("controller Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(format!("{CONTROLLER_IMAGE}:{VERSION}").as_str()),
        "controller.yaml must run the image `cargo xtask image` tags"
    );
    let uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64();
    assert_eq!(uid, Some(65532), "runAsUser is the image's USER");
    // The Service's admin port is the one in the module URL.
    let service = controller
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("controller Service");
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64() == Some(9090) && p["name"] == "http-admin"),
        "no admin port 9090 on the Service"
    );

    let plugin = manifest_docs("wasmplugin.yaml");
    let spec = &plugin
        .iter()
        .find(|d| d["kind"] == "WasmPlugin")
        .expect("WasmPlugin")["spec"];
    assert_eq!(spec["url"].as_str(), Some(MODULE_URL));
    let pinned = spec["sha256"].as_str().expect("WasmPlugin sha256");
    let module = build_module();
    if !module.is_file() {
        prereq::skip_or_fail(
            prereq::required(&prereq::env),
            &format!("{} not built: run `cargo xtask wasm`", module.display()),
        );
        return;
    }
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        pinned,
        sha256sum(&module),
        "manifests/base/wasmplugin.yaml pins another module than {} ({rustc}): run \
         `cargo xtask image --update-manifests` and commit",
        module.display()
    );
}
