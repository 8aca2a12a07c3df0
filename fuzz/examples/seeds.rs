//! Writes the committed seed corpora under `fuzz/seeds/<target>/` from real inputs: reports and
//! queued worker windows produced by the filter's own recording and merging code, hint responses
//! as the controller serves them, the plugin configurations shipped in `manifests/`, the filter
//! example and the testbed, the simulator's scenario files, guardrail files as the controller's
//! tests write them, and the smallest shipped model. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (`cargo xtask fuzz --seeds`).

use std::fs;
use std::path::{Path, PathBuf};

use meshtune_filter::config::Config;
use meshtune_filter::hints::encode_published;
use meshtune_filter::report::{encode_worker_window, Aggregator};
use meshtune_filter::window::{endpoint_hash, Protocol, RequestRecord, Tracker};
use meshtune_proto::v1;
use prost::Message;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// One worker's window over 1 s: `n` requests per cluster with a mix of statuses, flags,
/// retries, protocols, endpoints and latencies, recorded through the filter's tracker.
fn worker_window(clusters: &[&str], n: u64, seed: u64) -> Vec<u8> {
    let start = 1_700_000_000_000_000_000u64;
    let mut t = Tracker::new(256, start);
    for (ci, c) in clusters.iter().enumerate() {
        let id = t.slot_for(c, start).unwrap();
        for i in 0..n {
            let now = start + i * 1_000_000;
            t.start(id, now);
            let status = match (i + seed + ci as u64) % 10 {
                0 => 503,
                1 => 404,
                _ => 200,
            };
            let rec = RequestRecord {
                status,
                flags: if status == 503 { 0x20 } else { 0 },
                attempts: 1 + (i % 3 == 0) as u64,
                request_bytes: 200 + i,
                response_bytes: 1000 + 7 * i,
                protocol: (i % 4 == 0).then_some(if i % 8 == 0 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                }),
                duration_us: Some(800 + (i * 137 + seed * 31) % 40_000),
                endpoint: (i % 4 == 0)
                    .then(|| endpoint_hash(format!("10.0.0.{}:8080", i % 3).as_bytes())),
            };
            t.finish(id, now + 500_000, &rec);
        }
    }
    let w = t.take_window(start + 1_000_000_000);
    encode_worker_window(&format!("worker-{seed}"), &w)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().unwrap().to_path_buf();
    let seeds = root.join("seeds");

    // filter_queue: worker windows as queued; several joined by the target's separator.
    let dir = seeds.join("filter_queue");
    let one = worker_window(&["outbound|8080||reviews.default.svc.cluster.local"], 40, 1);
    let two = worker_window(
        &["echo", "outbound|9080||ratings.shop.svc.cluster.local"],
        25,
        2,
    );
    write(&dir, "one_window", &one);
    write(&dir, "two_clusters", &two);
    let mut joined = one.clone();
    joined.extend_from_slice(b"\0\0\0\xff");
    joined.extend_from_slice(&two);
    write(&dir, "two_windows", &joined);

    // report: what the elected reporter sends (merged windows + identity), as the plugin does.
    let dir = seeds.join("report");
    for (name, windows) in [
        ("one_worker", vec![&one]),
        ("two_workers", vec![&one, &two]),
    ] {
        let mut agg = Aggregator::new(256, 64);
        for w in windows {
            agg.merge_bytes(w).unwrap();
        }
        let (start, len, upstreams) = agg.flush(0, 1_700_000_001_000);
        let req = v1::ReportRequest {
            reporter: Some(v1::Reporter {
                namespace: "default".into(),
                workload: "productpage".into(),
                pod: "productpage-v1-7d9f8c-abcde".into(),
                vm_id: "default.meshtune".into(),
                filter_version: meshtune_filter::FILTER_VERSION.into(),
                node_id:
                    "sidecar~10.0.0.7~productpage-v1-7d9f8c-abcde.default~default.svc.cluster.local"
                        .into(),
            }),
            sequence: 42,
            window_start_unix_ms: start,
            window_length_ms: len,
            upstreams,
            dropped_reports: 1,
        };
        write(&dir, name, &req.encode_to_vec());
    }
    let heartbeat = v1::ReportRequest {
        reporter: Some(v1::Reporter {
            namespace: "default".into(),
            vm_id: "meshtune".into(),
            ..Default::default()
        }),
        sequence: 1,
        ..Default::default()
    };
    write(&dir, "heartbeat", &heartbeat.encode_to_vec());

    // filter_hints: ReportResponse bodies as the controller serves them, and the published
    // shared-data form.
    let dir = seeds.join("filter_hints");
    let resp = v1::ReportResponse {
        accepted_sequence: 42,
        hints: vec![
            v1::Hint {
                cluster: "outbound|8080||reviews.default.svc.cluster.local".into(),
                timeout_ms: 250,
                max_retries: Some(2),
                concurrency_limit: 8,
                ttl_ms: meshtune_proto::DEFAULT_HINT_TTL_MS,
            },
            v1::Hint {
                cluster: "echo".into(),
                timeout_ms: 1000,
                max_retries: None,
                concurrency_limit: 0,
                ttl_ms: meshtune_proto::DEFAULT_HINT_TTL_MS,
            },
        ],
    };
    write(&dir, "response", &resp.encode_to_vec());
    write(
        &dir,
        "published",
        &encode_published(1_700_000_001_000, &resp),
    );
    write(
        &dir,
        "empty_response",
        &v1::ReportResponse {
            accepted_sequence: 7,
            hints: vec![],
        }
        .encode_to_vec(),
    );

    // filter_config: the configurations shipped and used (checked to parse).
    let dir = seeds.join("filter_config");
    let configs = [
        ("manifests_envoyfilter", r#"{"flush_interval_ms":1000}"#.to_string()),
        (
            "filter_example",
            r#"{"controller_cluster": "meshtune_controller",
 "controller_authority": "meshtune-controller",
 "flush_interval_ms": 1000, "report_timeout_ms": 500,
 "namespace": "default", "workload": "example", "pod": "example-0",
 "max_upstreams": 256, "max_queued_windows": 64}"#
                .to_string(),
        ),
        (
            "testbed",
            r#"{"controller_cluster":"meshtune_controller","flush_interval_ms":1000,"report_timeout_ms":500,"namespace":"testbed","workload":"client","pod":"client-0","max_upstreams":256,"max_queued_windows":64}"#
                .to_string(),
        ),
        ("per_worker", r#"{"report_mode":"per_worker","controller_cluster":"outbound|50051||meshtune-controller.meshtune-system.svc.cluster.local"}"#.to_string()),
        ("empty", String::new()),
    ];
    for (name, text) in configs {
        Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        write(&dir, name, text.as_bytes());
    }

    // scenario: the simulator's scenario files.
    let dir = seeds.join("scenario");
    for sub in ["train", "heldout"] {
        for e in fs::read_dir(repo.join("sim/scenarios").join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let name = format!("{sub}_{}", p.file_name().unwrap().to_string_lossy());
                write(&dir, &name, &fs::read(&p).unwrap());
            }
        }
    }

    // guardrails: first byte 0 = TOML, 1 = YAML (see the target).
    let dir = seeds.join("guardrails");
    let toml = "mode = \"enforce\"\nhysteresis = 0.05\nmax_step_factor = 2.0\nmax_linear_step = 0.25\nmin_dwell_secs = 30\nurgent_dwell_secs = 10\nrollback_threshold = 0.2\nrollback_min_delta = 0.01\nrollback_consecutive = 2\nrollback_windows = 5\nrollback_max_load_change = 0.25\n[hysteresis_per_knob]\n\"retries.attempts\" = 0.0\n[namespaces.payments]\n\"tcp.maxConnections\" = { min = 10, max = 2000 }\n\"timeout\" = { min = 200 }\n";
    let yaml = "mode: observe\nmin_dwell_secs: 0\nmax_step_factor: 4\nnamespaces:\n  shop:\n    http.http1MaxPendingRequests: {min: 1, max: 64}\n    outlierDetection.maxEjectionPercent: {max: 50}\n";
    write(
        &dir,
        "doc_example.toml",
        &[b"\0".as_slice(), toml.as_bytes()].concat(),
    );
    write(
        &dir,
        "namespaces.yaml",
        &[b"\x01".as_slice(), yaml.as_bytes()].concat(),
    );
    write(
        &dir,
        "enforce_no_dwell.toml",
        b"\0mode = \"enforce\"\nmin_dwell_secs = 0\n",
    );

    // model: the smallest shipped model.
    let dir = seeds.join("model");
    let mut models: Vec<PathBuf> = fs::read_dir(repo.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort_by_key(|p| (fs::metadata(p).unwrap().len(), p.clone()));
    let smallest = &models[0];
    write(
        &dir,
        &smallest.file_name().unwrap().to_string_lossy(),
        &fs::read(smallest).unwrap(),
    );
    eprintln!("seeds written under {}", seeds.display());
}
