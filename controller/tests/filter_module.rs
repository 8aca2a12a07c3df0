//! The controller serves the filter module it ships with: `meshtune controller` flags →
//! `/filter.wasm` and `/api/filter` over real HTTP on 127.0.0.1:0, the sha256 checked against
//! `sha256sum` of the file, conditional requests by ETag, the answers without a module, and a
//! real Envoy that loads the module from `/filter.wasm` only with its sha256.

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
    let mut argv = vec!["controller", "--insecure-no-auth"];
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

/// An Envoy whose meshtune filter takes its code from the controller's `/filter.wasm`
/// (`vm_config.code.remote`, checked against `sha256`), the way the EnvoyFilter variant can
/// fetch it; the route answers 200 itself.
fn remote_module_bootstrap(admin: SocketAddr, sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "out",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "out",
                        "route_config": {"name": "r", "virtual_hosts": [{"name": "v",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": [
                            {"name": "meshtune", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "name": "meshtune",
                                    "root_id": "meshtune",
                                    "failure_policy": "FAIL_OPEN",
                                    "configuration": {
                                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": "{\"controller_cluster\": \"meshtune_module\"}"
                                    },
                                    "vm_config": {
                                        "runtime": "envoy.wasm.runtime.v8",
                                        "code": {"remote": {
                                            "http_uri": {
                                                "uri": format!("http://{admin}/filter.wasm"),
                                                "cluster": "meshtune_module",
                                                "timeout": "10s"
                                            },
                                            "sha256": sha256
                                        }}
                                    }
                                }
                            }},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "meshtune_module",
                "type": "STATIC",
                "load_assignment": {"cluster_name": "meshtune_module", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": admin.ip().to_string(), "port_value": admin.port()}}}}
                ]}]}
            }]
        }
    })
}

/// Waits (≤ 10 s) until Envoy counted a remote fetch, then returns (successes, failures,
/// wasm VMs created).
fn fetch_outcome(envoy: &meshtune_test_support::envoy::EnvoyProcess) -> (u64, u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = envoy.stats().unwrap();
        let get = |k: &str| stats.get(k).copied().unwrap_or(0);
        let ok = get("wasm.remote_load_fetch_successes");
        let failed = get("wasm.remote_load_fetch_failures");
        if ok + failed > 0 || std::time::Instant::now() > deadline {
            return (ok, failed, get("wasm.envoy.wasm.runtime.v8.created"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_loads_the_module_from_the_controller_only_with_its_sha256() {
    let Some(bin) = meshtune_test_support::envoy::binary() else {
        return;
    };
    let Some(module) = std::env::var_os("MESHTUNE_WASM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        meshtune_test_support::prereq::skip_or_fail(
            meshtune_test_support::prereq::required(&meshtune_test_support::prereq::env),
            "MESHTUNE_WASM does not name the built filter module (cargo xtask wasm)",
        );
        return;
    };
    let sha = sha256sum(&module);
    let run = start(args(&["--filter-wasm", module.to_str().unwrap()])).await;
    let admin = run.admin;
    let wrong: String = sha
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let (good, bad) = tokio::task::spawn_blocking(move || {
        let launch = meshtune_test_support::envoy::Launch::new(&bin);
        let start = |sha: &str| {
            meshtune_test_support::envoy::EnvoyProcess::start(
                &launch,
                &remote_module_bootstrap(admin, sha),
            )
            .unwrap()
        };
        let envoy = start(&sha);
        let good = fetch_outcome(&envoy);
        let r = http::get(envoy.listener(), "/", &[]).unwrap();
        assert_eq!(r.status, 200, "through the filter: {}", r.text());
        let log = envoy.log();
        assert!(
            !log.contains("failed to load"),
            "the fetched module did not load: {}",
            envoy.log_tail(40)
        );
        drop(envoy);
        let envoy = start(&wrong);
        let bad = fetch_outcome(&envoy);
        (good, bad)
    })
    .await
    .unwrap();
    assert_eq!(good.0, 1, "fetch with the right sha256: {good:?}");
    assert_eq!(good.1, 0, "fetch with the right sha256: {good:?}");
    assert!(
        good.2 >= 1,
        "no wasm VM created from the fetched module: {good:?}"
    );
    assert_eq!(
        bad.0, 0,
        "a module with another sha256 was accepted: {bad:?}"
    );
    assert!(bad.1 >= 1, "no failed fetch with a wrong sha256: {bad:?}");
    assert_eq!(bad.2, 0, "a VM was created from a refused module: {bad:?}");
    run.shutdown().await;
}
