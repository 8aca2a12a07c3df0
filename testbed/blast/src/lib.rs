//! Lean HTTP/1.1 load for saturation benchmarks: a closed-loop client ([`closed_loop`]) and a
//! fixed-response upstream ([`Upstream`]), each on its own single-threaded tokio runtime, with
//! a minimal HTTP/1.1 parser (keep-alive, `content-length` bodies; no chunked encoding).
//!
//! Why a crate of its own: the workspace compiles it at `opt-level = 3` even in dev builds
//! (`[profile.dev.package.meshtune-blast]` in the workspace `Cargo.toml`), so that
//! `cargo xtask bench filter-overhead` — which runs the dev-built `testbed` binary — drives
//! Envoy's core to saturation from the other core of a 2-core machine with headroom to spare.
//! The testbed's general load generator (hyper, generics instantiated in the unoptimised
//! testbed crate) topped out at ~4–5k rps there, so it, not Envoy, set the closed loop's rate.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The upstream's answer to every request.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
/// Largest request or response head accepted (bytes); a longer one closes the connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default bound on how long the closed loop waits past its duration for the last responses.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failed connection attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum BlastError {
    #[error("binding the upstream on 127.0.0.1: {0}")]
    Bind(#[source] io::Error),
    #[error("starting a tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("starting the upstream thread: {0}")]
    Thread(#[source] io::Error),
}

/// A malformed HTTP/1.1 head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("status line is not `HTTP/1.x NNN`")]
    StatusLine,
    #[error("content-length is not a number")]
    ContentLength,
    #[error("chunked transfer encoding is not supported")]
    Chunked,
    #[error("head longer than {MAX_HEAD_BYTES} bytes")]
    TooLong,
}

/// A parsed message head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Response status (0 for a request).
    pub status: u16,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// Body bytes that follow (`content-length`, 0 when absent).
    pub body_len: usize,
    /// `connection: close` was sent.
    pub close: bool,
}

impl Head {
    /// Head plus body.
    pub fn total(&self) -> usize {
        self.head_len + self.body_len
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses the head at the start of `buf`: `Ok(None)` until it is complete. `response`:
/// parse the status line too.
pub fn parse_head(buf: &[u8], response: bool) -> Result<Option<Head>, ParseError> {
    let Some(head_len) = find_head_end(buf) else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(ParseError::TooLong)
        } else {
            Ok(None)
        };
    };
    let head = &buf[..head_len - 4];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let status = if response {
        if first.len() < 12 || !first.starts_with(b"HTTP/1.") || first[8] != b' ' {
            return Err(ParseError::StatusLine);
        }
        std::str::from_utf8(&first[9..12])
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(ParseError::StatusLine)?
    } else {
        0
    };
    let (mut body_len, mut close) = (0, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(ParseError::ContentLength)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && value.eq_ignore_ascii_case(b"chunked")
        {
            return Err(ParseError::Chunked);
        } else if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close") {
            close = true;
        }
    }
    Ok(Some(Head {
        status,
        head_len,
        body_len,
        close,
    }))
}

/// The request the closed loop sends: `GET path` with `host`.
pub fn request_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes()
}

/// A fixed-response HTTP/1.1 upstream on 127.0.0.1 (port 0), served by one thread until
/// dropped: every request gets [`RESPONSE`].
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Binds and starts serving.
    pub fn start() -> Result<Self, BlastError> {
        let std_listener = StdListener::bind("127.0.0.1:0").map_err(BlastError::Bind)?;
        std_listener
            .set_nonblocking(true)
            .map_err(BlastError::Bind)?;
        let addr = std_listener.local_addr().map_err(BlastError::Bind)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BlastError::Runtime)?;
        let served = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let count = Arc::clone(&served);
        let thread = std::thread::Builder::new()
            .name("blast-upstream".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            r = listener.accept() => {
                                if let Ok((s, _)) = r {
                                    tokio::spawn(serve(s, Arc::clone(&count)));
                                }
                            }
                        }
                    }
                });
            })
            .map_err(BlastError::Thread)?;
        Ok(Self {
            addr,
            served,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers every complete request on `s` until the peer closes or sends garbage.
async fn serve(mut s: TcpStream, served: Arc<AtomicU64>) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(RESPONSE.len() * 4);
    let mut tmp = [0u8; 16 * 1024];
    loop {
        let mut used = 0;
        loop {
            match parse_head(&buf[used..], false) {
                Ok(Some(h)) if buf.len() - used >= h.total() => {
                    used += h.total();
                    out.extend_from_slice(RESPONSE);
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => break,
                Err(_) => return,
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// What a closed-loop run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// 2xx responses.
    pub ok: u64,
    /// Responses with another status.
    pub non_2xx: u64,
    /// Connection failures, resets, malformed or missing responses.
    pub errors: u64,
    pub elapsed: Duration,
}

impl Report {
    /// Responses (any status).
    pub fn completed(&self) -> u64 {
        self.ok + self.non_2xx
    }

    /// Responses per second.
    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

/// Closed loop on a single-threaded runtime on the calling thread: `concurrency` keep-alive
/// connections to `target`, each sending `GET path` (`host` header) as soon as the previous
/// response arrived, for `duration`; a connection that fails is re-opened and counted. Bounded:
/// responses still outstanding [`DEFAULT_GRACE`] after `duration` are abandoned (errors).
pub fn closed_loop(
    target: SocketAddr,
    host: &str,
    path: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<Report, BlastError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BlastError::Runtime)?;
    let request: Arc<[u8]> = request_bytes(host, path).into();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + duration;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (request, tally) = (Arc::clone(&request), Arc::clone(&tally));
            set.spawn(async move {
                let deadline = tokio::time::Instant::from_std(end + DEFAULT_GRACE);
                if tokio::time::timeout_at(deadline, drive(target, &request, end, &tally))
                    .await
                    .is_err()
                {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    Ok(Report {
        ok: tally.ok.load(Ordering::Relaxed),
        non_2xx: tally.non_2xx.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// One connection's loop (re-connecting after a failure) until `end`.
async fn drive(target: SocketAddr, request: &[u8], end: Instant, tally: &Tally) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut tmp = [0u8; 16 * 1024];
    'connect: while Instant::now() < end {
        let mut s = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        buf.clear();
        while Instant::now() < end {
            if s.write_all(request).await.is_err() {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue 'connect;
            }
            let head = loop {
                match parse_head(&buf, true) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                }
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            while buf.len() < head.total() {
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            buf.drain(..head.total());
            if (200..300).contains(&head.status) {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.non_2xx.fetch_add(1, Ordering::Relaxed);
            }
            if head.close {
                continue 'connect;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-len", true),
            Ok(None)
        );
        let h = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\nConnection: close\r\n\r\nrest",
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 503);
        assert_eq!(h.body_len, 19);
        assert!(h.close);
        assert_eq!(h.head_len, 75);
        let r = parse_head(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.head_len, r.body_len, r.close), (27, 0, false));
        assert_eq!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                true
            ),
            Err(ParseError::Chunked)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n", true),
            Err(ParseError::StatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", true),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1], false),
            Err(ParseError::TooLong)
        );
        assert_eq!(
            parse_head(RESPONSE, true).unwrap().unwrap().total(),
            RESPONSE.len()
        );
    }

    #[test]
    fn closed_loop_against_the_upstream_counts_every_response() {
        let up = Upstream::start().unwrap();
        let r = closed_loop(up.addr(), "x", "/", 4, Duration::from_millis(300)).unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.non_2xx, 0, "{r:?}");
        assert!(r.ok > 100, "{r:?}");
        // Every answered request was counted by the client (none in flight after the loop).
        assert_eq!(up.served(), r.ok, "{r:?}");
    }

    #[test]
    fn upstream_answers_pipelined_requests_with_bodies_in_order() {
        let up = Upstream::start().unwrap();
        let mut s = std::net::TcpStream::connect(up.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut tmp = [0u8; 1024];
        while got.len() < 2 * RESPONSE.len() {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&tmp[..n]);
        }
        assert_eq!(got, [RESPONSE, RESPONSE].concat());
        assert_eq!(up.served(), 2);
    }

    #[test]
    fn a_closed_port_counts_errors_and_ends() {
        // Bind and drop to get a port nothing listens on.
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = closed_loop(port, "x", "/", 2, Duration::from_millis(100)).unwrap();
        assert_eq!(r.completed(), 0);
        assert!(r.errors > 0);
    }
}
