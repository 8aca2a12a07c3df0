//! The `meshtune` binary as a real process: prints its ports, serves, `top --once` renders it,
//! and SIGTERM stops it cleanly.

use meshtune_controller::top::http_get;
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_test_support::reports::{report, upstream};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshtune");

/// `meshtune controller` on loopback port 0 (the bound ports are printed on stdout).
fn controller() -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "controller",
        "--insecure-no-auth",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    c
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout until both "... listening on ADDR" lines arrived (bounded by 10 s).
fn read_ports(child: &mut Child) -> (String, String) {
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
    let (mut grpc, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while grpc.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("port lines within 10 s");
        if let Some(a) = line.strip_prefix("grpc listening on ") {
            grpc = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("admin listening on ") {
            admin = Some(a.to_string());
        }
    }
    (grpc.unwrap(), admin.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_ports_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let hints = dir.path().join("hints.json");
    std::fs::write(&hints, r#"{"hints":[{"cluster":"svc-x","timeout_ms":30}]}"#).unwrap();
    let child = controller()
        .arg("--hints-file")
        .arg(&hints)
        .args(["--window-secs", "5"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let (grpc, admin) = read_ports(&mut child.0);
    assert!(
        grpc.starts_with("127.0.0.1:") && !grpc.ends_with(":0"),
        "{grpc}"
    );
    assert!(
        admin.starts_with("127.0.0.1:") && !admin.ends_with(":0"),
        "{admin}"
    );
    let admin_url = format!("http://{admin}");
    assert_eq!(http_get(&admin_url, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(&admin_url, "/readyz").await.unwrap().0, 200);

    let mut client = FeatureServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let resp = client
        .report(report("pod-1", 1, vec![upstream("svc-x", 7, 1, 3_000)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.hints[0].timeout_ms, 30);

    let (_, body) = http_get(&admin_url, "/api/destinations").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["window_secs"], 5);
    assert_eq!(d["destinations"][0]["lifetime"]["requests"], 7);

    let top = Command::new(BIN)
        .args(["top", "--once", "--admin", &admin_url])
        .output()
        .unwrap();
    assert!(top.status.success(), "{top:?}");
    let text = String::from_utf8(top.stdout).unwrap();
    // NAMESPACE (the reporter's, `default`) then DESTINATION.
    let row = text
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["default", "svc-x"]))
        .expect(&text);
    assert!(row.contains("timeout=30ms"), "{row}");

    // SIGTERM with the gRPC client's HTTP/2 connection still open (as Envoy keeps it): the
    // controller closes it and exits well before its 5 s grace period.
    let pid = child.0.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
    drop(client);
}

#[test]
fn top_once_fails_clearly_without_a_controller() {
    // Bind then drop: a port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "top",
            "--once",
            "--admin",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn a_bad_model_file_is_refused_at_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken-model.onnx");
    std::fs::write(&model, b"not onnx").unwrap();
    let out = controller().arg("--model").arg(&model).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model") && err.contains("broken-model.onnx"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing is served with a bad model"
    );
}

#[test]
fn envoy_file_sink_without_cds_is_a_flag_error() {
    let out = controller()
        .args([
            "--sink",
            "envoy-file",
            "--envoy-destination",
            "svc=127.0.0.1:8080",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--envoy-cds"), "{err}");
}

#[test]
fn prometheus_source_without_url_is_a_flag_error() {
    let out = controller()
        .args(["--source", "prometheus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prometheus-url"), "{err}");
}

#[test]
fn record_from_an_unreachable_prometheus_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "record",
            "--from",
            "prometheus",
            "--prometheus-url",
            "http://127.0.0.1:9",
            "--start",
            "now-5m",
            "--step",
            "1m",
            "--out",
        ])
        .arg(dir.path().join("rows.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prometheus http://127.0.0.1:9"), "{err}");
    let out = Command::new(BIN)
        .args([
            "record",
            "--from",
            "prometheus",
            "--prometheus-url",
            "http://x",
        ])
        .args(["--start", "yesterday", "--out", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--start"), "{err}");
}

#[cfg(feature = "dev")]
#[test]
fn developer_subcommands_are_wired() {
    for sub in [
        vec!["sim", "--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
    ] {
        let out = Command::new(BIN).args(&sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}: {out:?}");
    }
}

#[test]
fn model_subcommand_runs_the_policy_validation() {
    let out = Command::new(BIN)
        .args(["model", "validate", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"junk").unwrap();
    let out = Command::new(BIN)
        .args(["model", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.onnx"), "{err}");
}

#[test]
fn leader_election_timings_are_checked_at_start() {
    let out = controller()
        .args([
            "--leader-elect",
            "--leader-elect-identity",
            "pod-a",
            "--leader-elect-renew-secs",
            "20",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--leader-elect") && err.contains("renew deadline"),
        "{err}"
    );
}

#[test]
fn uninstall_without_a_cluster_fails_naming_the_client() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["uninstall", "--dry-run"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kubernetes client"), "{err}");
}
