//! The controller serves the filter module it ships with: `meshtune controller` flags →
//! `/filter.wasm` and `/api/filter` over real HTTP on 127.0.0.1:0, the sha256 checked against
//! `sha256sum` of the file, conditional requests by ETag, and the answers without a module.

use clap::Parser;
use meshtune_controller::admin::{FilterJson, DEFAULT_FILTER_WASM, WASM_CONTENT_TYPE};
use meshtune_controller::cli::{self, ControllerArgs};
use meshtune_test_support::http;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
}

fn args(extra: &[&str]) -> ControllerArgs {
    let mut argv = vec!["controller"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().args
}

/// The module the tests serve: the real filter build when `MESHTUNE_WASM` names it
/// (`cargo xtask test`), else a minimal valid module (header only) in `dir`.
fn module_file(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("MESHTUNE_WASM").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let p = dir.join("filter.wasm");
    std::fs::write(&p, b"\0asm\x01\0\0\0").unwrap();
    p
}

/// SHA-256 by coreutils, independent of the controller's code.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Running {
    admin: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), meshtune_controller::policy_loop::LoopError>>,
}

async fn start(args: ControllerArgs) -> Running {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cli::run(args, grpc, admin_l, async move {
        let _ = rx.await;
    }));
    let mut up = false;
    for _ in 0..200 {
        if get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "admin server not up");
    Running { admin, stop, task }
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("controller stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

async fn get(
    addr: SocketAddr,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Result<http::Response, http::HttpError> {
    tokio::task::spawn_blocking(move || http::get(addr, path, headers))
        .await
        .unwrap()
}

async fn get_if_none_match(addr: SocketAddr, etag: String) -> http::Response {
    tokio::task::spawn_blocking(move || {
        http::get(addr, "/filter.wasm", &[("if-none-match", etag.as_str())])
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn serves_the_module_with_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let file = module_file(dir.path());
    let bytes = std::fs::read(&file).unwrap();
    let expected_sha = sha256sum(&file);
    let run = start(args(&["--filter-wasm", file.to_str().unwrap()])).await;

    let wasm = get(run.admin, "/filter.wasm", &[]).await.unwrap();
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.header("content-type"), Some(WASM_CONTENT_TYPE));
    assert_eq!(wasm.body.len(), bytes.len());
    assert!(
        wasm.body == bytes,
        "served bytes differ from {}",
        file.display()
    );
    let etag = wasm.header("etag").expect("ETag header").to_string();
    assert_eq!(etag, format!("\"sha256-{expected_sha}\""));

    let api = get(run.admin, "/api/filter", &[]).await.unwrap();
    assert_eq!(api.status, 200, "{}", api.text());
    assert!(api
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let info: FilterJson = serde_json::from_slice(&api.body).unwrap();
    assert_eq!(info.sha256, expected_sha);
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(info.filter_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.url_path, "/filter.wasm");
    assert_eq!(Path::new(&info.path), file.as_path());

    // A client that has these bytes revalidates without a body; another tag gets the bytes.
    let again = get_if_none_match(run.admin, etag.clone()).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = get_if_none_match(run.admin, "\"sha256-0000\"".into()).await;
    assert_eq!(other.status, 200);
    assert!(other.body == bytes);
    run.shutdown().await;
}

#[tokio::test]
async fn without_a_module_both_paths_answer_404_naming_the_flag() {
    if Path::new(DEFAULT_FILTER_WASM).exists() {
        // A machine with the image's layout serves that file by default; the other test
        // covers serving.
        eprintln!("SKIP: {DEFAULT_FILTER_WASM} exists on this machine");
        return;
    }
    let run = start(args(&[])).await;
    for path in ["/filter.wasm", "/api/filter"] {
        let r = get(run.admin, path, &[]).await.unwrap();
        assert_eq!(r.status, 404, "{path}");
        let text = r.text();
        assert!(
            text.contains("--filter-wasm") && text.contains(DEFAULT_FILTER_WASM),
            "{path}: {text}"
        );
    }
    run.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_non_wasm_file_is_refused_at_start_naming_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.wasm");
    let e = cli::prepare(args(&["--filter-wasm", missing.to_str().unwrap()]))
        .await
        .err()
        .expect("missing module refused")
        .to_string();
    assert!(
        e.contains("--filter-wasm") && e.contains(missing.to_str().unwrap()),
        "{e}"
    );

    let text = dir.path().join("filter.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let e = cli::prepare(args(&["--filter-wasm", text.to_str().unwrap()]))
        .await
        .err()
        .expect("non-wasm file refused")
        .to_string();
    assert!(
        e.contains("--filter-wasm")
            && e.contains(text.to_str().unwrap())
            && e.contains("not a WebAssembly module"),
        "{e}"
    );
}
