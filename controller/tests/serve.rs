//! In-process controller over real sockets: a tonic client sends reports on 127.0.0.1:0 and
//! the admin HTTP API is read back.

mod common;

use common::{report, upstream};
use meshtune_controller::config::Config;
use meshtune_controller::top::http_get;
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;

struct Running {
    grpc: String,
    admin: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), meshtune_controller::ControllerError>>,
}

async fn start(config: Config) -> Running {
    let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", g.local_addr().unwrap());
    let admin = format!("http://{}", a.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(meshtune_controller::serve(config, g, a, async move {
        let _ = rx.await;
    }));
    // Ready within a bounded time.
    let mut ready = false;
    for _ in 0..100 {
        if let Ok((200, _)) = http_get(&admin, "/readyz").await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "controller not ready");
    Running {
        grpc,
        admin,
        stop,
        task,
    }
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

async fn destinations(admin: &str) -> Value {
    let (status, body) = http_get(admin, "/api/destinations").await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn reports_are_aggregated_and_visible_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let hints = dir.path().join("hints.json");
    std::fs::write(
        &hints,
        r#"{"hints":[{"cluster":"svc-a","timeout_ms":50,"max_retries":0,"concurrency_limit":10,"ttl_ms":5000}]}"#,
    )
    .unwrap();
    let run = start(Config {
        hints_file: Some(hints.clone()),
        hints_poll: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let (status, _) = http_get(&run.admin, "/healthz").await.unwrap();
    assert_eq!(status, 200);

    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    let r1 = report(
        "pod-a",
        1,
        vec![
            upstream("svc-a", 10, 2, 20_000),
            upstream("svc-b", 4, 0, 1_000),
        ],
    );
    let resp = client.report(r1.clone()).await.unwrap().into_inner();
    assert_eq!(resp.accepted_sequence, 1);
    assert_eq!(resp.hints.len(), 1, "{resp:?}");
    assert_eq!(resp.hints[0].cluster, "svc-a");
    assert_eq!(resp.hints[0].timeout_ms, 50);
    assert_eq!(resp.hints[0].max_retries, Some(0));
    assert_eq!(resp.hints[0].concurrency_limit, 10);

    // A second reporter, and a duplicate of the first report (ignored).
    let resp = client
        .report(report("pod-b", 1, vec![upstream("svc-a", 5, 0, 40_000)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted_sequence, 1);
    let resp = client.report(r1).await.unwrap().into_inner();
    assert_eq!(resp.accepted_sequence, 1);

    // Bad reports: INVALID_ARGUMENT naming the field, aggregates untouched.
    let mut bad = report("pod-c", 1, vec![upstream("svc-a", 10, 0, 100)]);
    bad.reporter = None;
    let e = client.report(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("reporter"), "{}", e.message());
    let mut bad = report("pod-c", 1, vec![upstream("svc-a", 10, 0, 100)]);
    bad.upstreams[0].latency.as_mut().unwrap().sub_bucket_bits = 9;
    let e = client.report(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("upstreams[0].latency"),
        "{}",
        e.message()
    );

    let d = destinations(&run.admin).await;
    assert_eq!(d["window_secs"], 10);
    assert_eq!(d["reports_accepted"], 2);
    assert_eq!(d["reports_rejected"], 2);
    let list = d["destinations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = &list[0];
    assert_eq!(a["name"], "svc-a");
    assert_eq!(a["reporters"], 2);
    assert!(a["last_report_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(a["lifetime"]["requests"], 15);
    assert_eq!(a["lifetime"]["status_2xx"], 13);
    assert_eq!(a["lifetime"]["status_5xx"], 2);
    assert_eq!(a["lifetime"]["status_4xx"], 0);
    for k in ["flag_uo", "flag_ut", "flag_conn_failure", "retries", "shed"] {
        assert_eq!(a["lifetime"][k], 0, "{k}");
    }
    let p99 = a["lifetime"]["p99_ms"].as_f64().unwrap();
    assert!((p99 - 40.0).abs() <= 40.0 * 0.04, "{p99}");
    let w = &a["window"];
    assert_eq!(w["requests"], 15);
    assert!(w["rps"].as_f64().unwrap() > 0.0);
    let e5 = w["error_5xx_rate"].as_f64().unwrap();
    assert!((e5 - 2.0 / 15.0).abs() < 1e-9, "{e5}");
    for k in [
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "overflow_rate",
        "timeout_rate",
        "inflight_avg",
        "inflight_max",
    ] {
        assert!(w[k].is_number(), "window.{k} missing: {w}");
    }
    assert_eq!(w["inflight_max"], 4);
    assert_eq!(a["hint"]["timeout_ms"], 50);
    assert_eq!(list[1]["name"], "svc-b");
    assert_eq!(list[1]["lifetime"]["requests"], 4);
    assert!(list[1]["hint"].is_null());

    let (status, metrics) = http_get(&run.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for needle in [
        "meshtune_reports_accepted_total 2",
        "meshtune_reports_duplicate_total 1",
        "meshtune_reports_rejected_total{reason=\"reporter\"} 1",
        "meshtune_reports_rejected_total{reason=\"latency\"} 1",
        "meshtune_destinations_tracked 2",
        "meshtune_destination_requests_total{namespace=\"default\",destination=\"svc-a\",code_class=\"2xx\"}",
        "meshtune_destination_request_duration_seconds_count{namespace=\"default\",destination=\"svc-b\"} 4",
        "meshtune_destination_requests_total{namespace=\"default\",destination=\"svc-a\",code_class=\"5xx\"}",
        "meshtune_report_ingest_seconds_count 3",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }

    // The hints file changes: new hints within a bounded time.
    std::fs::write(&hints, r#"{"hints":[{"cluster":"svc-a","timeout_ms":75}]}"#).unwrap();
    let mut got = 0;
    for seq in 2..100 {
        let resp = client
            .report(report("pod-a", seq, vec![upstream("svc-a", 1, 0, 100)]))
            .await
            .unwrap()
            .into_inner();
        got = resp.hints.first().map(|h| h.timeout_ms).unwrap_or(0);
        if got == 75 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 75, "reloaded hint not served");
    run.shutdown().await;
}

#[tokio::test]
async fn oversized_reports_are_invalid_argument() {
    let run = start(Config {
        max_report_bytes: 2000,
        ..Config::default()
    })
    .await;
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    let ups = (0..40)
        .map(|i| upstream(&format!("cluster-{i}"), 1, 0, 100))
        .collect();
    let big = report("p", 1, ups);
    let size = prost::Message::encoded_len(&big);
    assert!(size > 2000 && size < 4000, "{size}");
    let e = client.report(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("report:"), "{}", e.message());
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"].as_array().unwrap().len(), 0);
    assert_eq!(d["reports_rejected"], 1);
    // A normal report still works.
    client
        .report(report("p", 1, vec![upstream("c", 3, 0, 100)]))
        .await
        .unwrap();
    assert_eq!(
        destinations(&run.admin).await["destinations"][0]["lifetime"]["requests"],
        3
    );
    run.shutdown().await;
}

#[tokio::test]
async fn hostile_reports_are_refused_before_decoding_and_rate_limited() {
    let run = start(Config {
        // One report per 100 s sustained, two at once: the third from one reporter is refused.
        reports_per_sec: 0.01,
        report_burst: 2.0,
        ..Config::default()
    })
    .await;
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();

    // More upstream windows than the shared per-report limit: refused by the pre-scan,
    // before decoding, naming the field.
    let limit = meshtune_proto::MAX_UPSTREAMS_PER_REPORT as usize;
    let ups = (0..=limit)
        .map(|i| upstream(&format!("c{i}"), 1, 0, 100))
        .collect();
    let e = client.report(report("many", 1, ups)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("upstreams:"), "{}", e.message());

    // Larger than the largest legitimate report: tonic refuses it before decoding.
    let mut huge = report("huge", 1, vec![upstream("c", 1, 0, 100)]);
    huge.upstreams[0].cluster = "x".repeat(Config::default().max_report_bytes + 1);
    let e = client.report(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");

    // Rate: two reports pass, the excess is RESOURCE_EXHAUSTED and counted.
    let mut codes = Vec::new();
    for seq in 1..=5 {
        let r = client
            .report(report("chatty", seq, vec![upstream("svc", 5, 0, 100)]))
            .await;
        codes.push(r.map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code()));
    }
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::Ok,
            tonic::Code::ResourceExhausted,
            tonic::Code::ResourceExhausted,
            tonic::Code::ResourceExhausted
        ]
    );
    // Another reporter is not affected.
    client
        .report(report("quiet", 1, vec![upstream("svc", 5, 0, 100)]))
        .await
        .unwrap();
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"][0]["lifetime"]["requests"], 15);
    let (_, metrics) = http_get(&run.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("meshtune_reports_rate_limited_total 3"),
        "{metrics}"
    );
    run.shutdown().await;
}

/// A minimal HTTP/2 client speaking raw frames, so a test can do what a well-behaved client
/// (h2, hyper, tonic) never does: open more concurrent streams than the server allows.
mod raw_h2 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const REFUSED_STREAM: u32 = 0x7;

    #[derive(Debug, Clone)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub struct Conn(pub TcpStream);

    impl Conn {
        /// Connects, sends the preface and empty SETTINGS, and returns the server's
        /// SETTINGS_MAX_CONCURRENT_STREAMS. Our ACK of the server's SETTINGS is followed by a
        /// PING whose answer proves the server has applied its settings.
        pub async fn open(addr: &str) -> (Self, Option<u32>) {
            let mut c = Conn(TcpStream::connect(addr).await.unwrap());
            c.0.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            c.send(SETTINGS, 0, 0, &[]).await;
            let mut max_streams = None;
            loop {
                let f = c.read().await;
                if f.kind == SETTINGS && f.flags & ACK == 0 {
                    for s in f.payload.chunks_exact(6) {
                        if u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                            max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                        }
                    }
                    break;
                }
            }
            c.send(SETTINGS, ACK, 0, &[]).await;
            c.send(PING, 0, 0, b"applied?").await;
            loop {
                let f = c.read().await;
                if f.kind == PING && f.flags & ACK != 0 {
                    break;
                }
            }
            (c, max_streams)
        }

        pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let len = (payload.len() as u32).to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            self.0.write_all(&f).await.unwrap();
        }

        pub async fn read(&mut self) -> Frame {
            let mut h = [0u8; 9];
            self.0.read_exact(&mut h).await.expect("connection open");
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.0.read_exact(&mut payload).await.unwrap();
            Frame {
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                payload,
            }
        }

        /// Opens stream `id` with the request headers of the Report method (no END_STREAM:
        /// the body is still to come, so the server's handler waits for it).
        pub async fn open_report_stream(&mut self, id: u32) {
            let mut block = Vec::new();
            for (name, value) in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/meshtune.v1.FeatureService/Report"),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ] {
                // HPACK literal header field without indexing, new name, no Huffman coding.
                block.push(0);
                block.push(name.len() as u8);
                block.extend_from_slice(name.as_bytes());
                block.push(value.len() as u8);
                block.extend_from_slice(value.as_bytes());
            }
            self.send(HEADERS, END_HEADERS, id, &block).await;
        }

        /// Sends `msg` as the gRPC body of stream `id` and ends the stream.
        pub async fn finish_report_stream(&mut self, id: u32, msg: &[u8]) {
            let mut body = vec![0u8];
            body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            body.extend_from_slice(msg);
            self.send(DATA, END_STREAM, id, &body).await;
        }

        /// Reads frames until `pred` matches one (PINGs answered, others kept), within 10 s.
        pub async fn read_until(
            &mut self,
            seen: &mut Vec<Frame>,
            pred: impl Fn(&Frame) -> bool,
        ) -> Frame {
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                loop {
                    let f = self.read().await;
                    if f.kind == PING && f.flags & ACK == 0 {
                        let p = f.payload.clone();
                        self.send(PING, ACK, 0, &p).await;
                        continue;
                    }
                    seen.push(f.clone());
                    if pred(&f) {
                        return f;
                    }
                }
            })
            .await
            .expect("the expected frame within 10 s")
        }
    }
}

/// `max_streams_per_connection` is what the server advertises and enforces: on one HTTP/2
/// connection whose Report streams are held open (bodies not yet sent), a stream beyond the
/// limit is refused with RST_STREAM(REFUSED_STREAM), the held streams are unaffected, another
/// connection is served meanwhile, and once a held stream completes a new one is accepted.
#[tokio::test]
async fn streams_beyond_the_per_connection_limit_are_refused_while_other_connections_work() {
    use raw_h2::*;
    let run = start(Config {
        max_streams_per_connection: 2,
        ..Config::default()
    })
    .await;
    let addr = run.grpc.trim_start_matches("http://").to_string();
    let (mut conn, advertised) = Conn::open(&addr).await;
    assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");

    conn.open_report_stream(1).await;
    conn.open_report_stream(3).await;
    conn.open_report_stream(5).await;
    let mut seen = Vec::new();
    let refused = conn
        .read_until(&mut seen, |f| f.kind == RST_STREAM || f.kind == GOAWAY)
        .await;
    assert_eq!(
        (refused.kind, refused.stream),
        (RST_STREAM, 5),
        "the third stream is reset, not the connection: {seen:?}"
    );
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
    assert!(
        !seen.iter().any(|f| f.stream == 1 || f.stream == 3),
        "held streams untouched: {seen:?}"
    );

    // A second connection is served while the first holds its two streams.
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    client
        .report(report("other-conn", 1, vec![upstream("svc", 4, 0, 100)]))
        .await
        .expect("a second connection is served");

    // Completing stream 1 frees a slot: stream 7 is accepted and answered.
    let body =
        |seq| prost::Message::encode_to_vec(&report("raw", seq, vec![upstream("svc", 1, 0, 100)]));
    conn.finish_report_stream(1, &body(1)).await;
    let mut seen = Vec::new();
    conn.read_until(&mut seen, |f| {
        f.stream == 1 && (f.kind == RST_STREAM || f.flags & END_STREAM != 0)
    })
    .await;
    assert!(
        !seen.iter().any(|f| f.kind == RST_STREAM),
        "stream 1 answered, not reset: {seen:?}"
    );
    conn.open_report_stream(7).await;
    conn.finish_report_stream(7, &body(2)).await;
    let mut seen = Vec::new();
    conn.read_until(&mut seen, |f| {
        f.stream == 7 && (f.kind == RST_STREAM || f.flags & END_STREAM != 0)
    })
    .await;
    assert!(
        !seen.iter().any(|f| f.kind == RST_STREAM),
        "stream 7 answered, not reset: {seen:?}"
    );
    // All three complete reports were accepted (4 + 1 + 1 requests).
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"][0]["lifetime"]["requests"], 6, "{d}");
    drop(conn);
    run.shutdown().await;
}

/// A Report whose body never arrives is ended at the request timeout with DEADLINE_EXCEEDED
/// (and counted); the connection and the server keep serving.
#[tokio::test]
async fn a_stalled_report_ends_at_the_request_timeout_and_the_server_keeps_serving() {
    use http_body_util::BodyExt;
    type Frame = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
    let timeout = Duration::from_millis(300);
    let run = start(Config {
        request_timeout: timeout,
        ..Config::default()
    })
    .await;
    let addr = run.grpc.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = |body| {
        http::Request::builder()
            .method("POST")
            .uri(format!("{}/meshtune.v1.FeatureService/Report", run.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap()
    };
    // Half a gRPC frame header, then nothing (the sender stays alive: the body never ends).
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(1);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[
        0, 0,
    ]))))
    .await
    .unwrap();
    let stalled =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let t0 = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(request(stalled)))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= timeout, "ended after {took:?}, before the timeout");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "DEADLINE_EXCEEDED: {:?}",
        resp.headers()
    );
    let (_, metrics) = http_get(&run.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("meshtune_reports_timed_out_total 1"),
        "{metrics}"
    );

    // The same connection still serves a complete report.
    let msg = prost::Message::encode_to_vec(&report("after", 1, vec![upstream("svc", 3, 0, 100)]));
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let full = http_body_util::Full::new(bytes::Bytes::from(body)).boxed();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(request(full)))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let trailers = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned()
        .expect("gRPC trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0")
    );
    drop(tx);
    drop(send);
    conn.abort();
    // So does a new one.
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    client
        .report(report("after", 2, vec![upstream("svc", 2, 0, 100)]))
        .await
        .unwrap();
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"][0]["lifetime"]["requests"], 5, "{d}");
    run.shutdown().await;
}
