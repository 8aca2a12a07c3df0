//! `meshtune top`: polls the admin `/api/destinations` and renders a table. Rendering is pure
//! ([`render`]); [`http_get`] is a minimal HTTP/1.1 GET client (hyper) also used by tests.

use crate::api::DestinationsResponse;
use crate::hints::Hint;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::fmt::Write as _;

/// Default admin URL polled by `meshtune top`.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:18001";
/// Default refresh interval of `meshtune top`.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;

/// Flags of `meshtune top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Admin base URL.
    #[arg(long, default_value = DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = DEFAULT_INTERVAL_MS)]
    pub interval_ms: u64,
    /// Print one table and exit.
    #[arg(long)]
    pub once: bool,
}

/// Polls the admin API and redraws the table on `out` every interval until Ctrl-C; with
/// `--once` prints one table and fails if the controller cannot be read.
pub async fn run(args: &TopArgs, out: &mut impl std::io::Write) -> Result<(), TopError> {
    loop {
        let table = match fetch_destinations(&args.admin).await {
            Ok(r) => render(&r),
            Err(e) if args.once => return Err(e),
            Err(e) => format!("{e}\n"),
        };
        if !args.once {
            // Clear the screen and home the cursor.
            write!(out, "\x1b[2J\x1b[H").map_err(TopError::Output)?;
        }
        write!(out, "{table}").map_err(TopError::Output)?;
        out.flush().map_err(TopError::Output)?;
        if args.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(args.interval_ms.max(50))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("bad admin URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP request to {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url} returned status {status}")]
    Status { url: String, status: u16 },
    #[error("writing the table: {0}")]
    Output(std::io::Error),
    #[error("GET {url}: invalid JSON: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// GETs `path` from `base_url` (`http://host:port` or `host:port`); returns status and body.
pub async fn http_get(base_url: &str, path: &str) -> Result<(u16, String), TopError> {
    let trimmed = base_url.trim_end_matches('/');
    let authority = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if authority.is_empty() || authority.contains('/') || trimmed.starts_with("https://") {
        return Err(TopError::Url {
            url: base_url.to_string(),
            message: "expected http://host:port".into(),
        });
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let url = format!("http://{authority}{path}");
    let http = |e: &dyn std::fmt::Display| TopError::Http {
        url: url.clone(),
        message: e.to_string(),
    };
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| TopError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let res = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Fetches and parses `/api/destinations`.
pub async fn fetch_destinations(base_url: &str) -> Result<DestinationsResponse, TopError> {
    let path = "/api/destinations";
    let (status, body) = http_get(base_url, path).await?;
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    if status != 200 {
        return Err(TopError::Status { url, status });
    }
    serde_json::from_str(&body).map_err(|source| TopError::Json { url, source })
}

fn hint_text(h: &Option<Hint>) -> String {
    let Some(h) = h else { return "-".into() };
    let mut parts = Vec::new();
    if h.timeout_ms > 0 {
        parts.push(format!("timeout={}ms", h.timeout_ms));
    }
    if let Some(r) = h.max_retries {
        parts.push(format!("retries={r}"));
    }
    if h.concurrency_limit > 0 {
        parts.push(format!("limit={}", h.concurrency_limit));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// A knob in force, `-` before the first decision; Istio's "unlimited" shows as `inf`.
fn knob_text(d: &crate::api::DestinationJson, name: &str) -> String {
    match d.knobs.as_ref().and_then(|k| k.get(name)) {
        None => "-".into(),
        Some(v) if *v >= meshtune_core::knobs::ISTIO_UNLIMITED => "inf".into(),
        Some(v) => format!("{v:.0}"),
    }
}

/// Where the knobs in force come from: `pushed` (meshtune), `cluster` (the cluster's own
/// DestinationRule/VirtualService), `default` (Istio's defaults), `-` (not decided yet).
fn source_text(d: &crate::api::DestinationJson) -> &str {
    match d.knobs_source.as_deref() {
        None => "-",
        Some("istio_defaults") => "default",
        Some(s) => s,
    }
}

/// The last decision: outcome and number of changed knobs.
fn last_text(d: &crate::api::DestinationJson) -> String {
    match &d.last_decision {
        None => "-".into(),
        Some(l) if l.changed.is_empty() => l.outcome.clone(),
        Some(l) => format!("{}({})", l.outcome, l.changed.len()),
    }
}

/// Renders the destinations table (one header line, one line per destination: the reporters'
/// NAMESPACE and the DESTINATION cluster they report).
pub fn render(r: &DestinationsResponse) -> String {
    let ns_w = r
        .destinations
        .iter()
        .map(|d| d.namespace.chars().count())
        .max()
        .unwrap_or(0)
        .max("NAMESPACE".len());
    let name_w = r
        .destinations
        .iter()
        .map(|d| d.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "window {}s  reports accepted {}  rejected {}  destinations {}",
        r.window_secs,
        r.reports_accepted,
        r.reports_rejected,
        r.destinations.len()
    );
    let _ = writeln!(
        out,
        "{:<ns_w$} {:<name_w$} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:<7}  {:<16}  HINT",
        "NAMESPACE",
        "DESTINATION",
        "RPS",
        "P50_MS",
        "P99_MS",
        "5XX%",
        "UO%",
        "UT%",
        "INFLIGHT",
        "PENDING",
        "MAXREQ",
        "TMO_MS",
        "FROM",
        "LAST"
    );
    for d in &r.destinations {
        let w = &d.window;
        let _ = writeln!(
            out,
            "{:<ns_w$} {:<name_w$} {:>9.1} {:>9.2} {:>9.2} {:>6.1} {:>6.1} {:>6.1} {:>8.1} {:>7} {:>7} {:>7} {:<7}  {:<16}  {}",
            d.namespace,
            d.name,
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.error_5xx_rate * 100.0,
            w.overflow_rate * 100.0,
            w.timeout_rate * 100.0,
            w.inflight_avg,
            knob_text(d, "http.http1MaxPendingRequests"),
            knob_text(d, "http.http2MaxRequests"),
            knob_text(d, "timeout"),
            source_text(d),
            last_text(d),
            hint_text(&d.hint)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DestinationJson, LifetimeJson, WindowJson};

    fn dest(name: &str, rps: f64, e5: f64, hint: Option<Hint>) -> DestinationJson {
        DestinationJson {
            namespace: "default".into(),
            name: name.into(),
            reporters: 1,
            last_report_unix_ms: 0,
            window: WindowJson {
                requests: 10,
                rps,
                p50_ms: 1.5,
                p90_ms: 2.0,
                p99_ms: 12.25,
                error_5xx_rate: e5,
                overflow_rate: 0.0,
                timeout_rate: 0.5,
                inflight_avg: 3.0,
                inflight_max: 4,
                duration_s: 10.0,
                conn_failure_rate: 0.0,
                retries: 0,
                shed: 0,
                measured_requests: 10,
                estimated: false,
            },
            lifetime: LifetimeJson {
                requests: 10,
                status_2xx: 10,
                status_4xx: 0,
                status_5xx: 0,
                flag_uo: 0,
                flag_ut: 0,
                flag_conn_failure: 0,
                retries: 0,
                shed: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                status_other: 0,
                request_bytes: 0,
                response_bytes: 0,
                latency_samples: 0,
                unmeasured_requests: 0,
            },
            hint,
            knobs: None,
            knobs_source: None,
            knobs_objects: Vec::new(),
            last_decision: None,
        }
    }

    #[test]
    fn renders_one_aligned_row_per_destination() {
        let r = DestinationsResponse {
            window_secs: 10,
            reports_accepted: 7,
            reports_rejected: 1,
            reports_duplicate: 0,
            reporters: 1,
            auth: "none".into(),
            identities: Vec::new(),
            destinations: vec![
                dest("a-rather-long-cluster-name", 123.45, 0.02, None),
                dest(
                    "b",
                    1.0,
                    0.0,
                    Some(Hint {
                        cluster: "b".into(),
                        timeout_ms: 50,
                        max_retries: Some(0),
                        concurrency_limit: 10,
                        ttl_ms: 5000,
                    }),
                ),
            ],
        };
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("accepted 7") && lines[0].contains("rejected 1"));
        assert!(lines[1].starts_with("NAMESPACE DESTINATION "));
        assert!(lines[2].starts_with("default   a-rather-long-cluster-name "));
        assert!(
            lines[2].contains("123.5") && lines[2].contains("2.0") && lines[2].contains("50.0")
        );
        assert!(lines[2].ends_with(" -"));
        assert!(lines[3].starts_with("default   b "));
        assert!(
            lines[3].ends_with("timeout=50ms retries=0 limit=10"),
            "{}",
            lines[3]
        );
        // Columns line up: the RPS column ends at the same offset in every row.
        let col = "NAMESPACE".len() + 1 + "a-rather-long-cluster-name".len() + 1 + 9;
        for l in &lines[1..] {
            assert_eq!(l.as_bytes()[col], b' ', "{l}");
            assert_ne!(l.as_bytes()[col - 1], b' ', "{l}");
        }
    }

    #[test]
    fn knobs_in_force_and_last_decision_are_shown() {
        let mut d = dest("c", 1.0, 0.0, None);
        let mut k = crate::decision::knobs_by_name(&meshtune_core::Knobs::istio_defaults());
        k.insert("http.http1MaxPendingRequests".into(), 64.0);
        k.insert("timeout".into(), 900.0);
        d.knobs = Some(k);
        d.knobs_source = Some("cluster".into());
        d.last_decision = Some(crate::api::LastDecisionJson {
            unix_ms: 1,
            mode: "enforce".into(),
            changed: vec!["timeout".into(), "http.http1MaxPendingRequests".into()],
            outcome: "pushed".into(),
        });
        let r = DestinationsResponse {
            window_secs: 10,
            reports_accepted: 0,
            reports_rejected: 0,
            reports_duplicate: 0,
            reporters: 0,
            auth: "none".into(),
            identities: Vec::new(),
            destinations: vec![d],
        };
        let text = render(&r);
        let row = text.lines().nth(2).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cols[9..14],
            &["64", "inf", "900", "cluster", "pushed(2)"],
            "{row}"
        );
    }

    #[test]
    fn empty_table_has_header_only() {
        let r = DestinationsResponse {
            window_secs: 10,
            reports_accepted: 0,
            reports_rejected: 0,
            reports_duplicate: 0,
            reporters: 0,
            auth: "none".into(),
            identities: Vec::new(),
            destinations: vec![],
        };
        assert_eq!(render(&r).lines().count(), 2);
    }

    #[test]
    fn bad_urls_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(http_get("https://x:1", "/")).unwrap_err();
        assert!(matches!(e, TopError::Url { .. }), "{e}");
        let e = rt.block_on(http_get("http://x:1/path", "/")).unwrap_err();
        assert!(matches!(e, TopError::Url { .. }), "{e}");
    }
}
