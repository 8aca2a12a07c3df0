//! A minimal blocking HTTP/1.1 client (one request per connection) for admin endpoints of
//! Envoy, the controller and the workload. Handles `Content-Length`, chunked and
//! close-delimited bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Default connect/read timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of an HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http {method} {addr}{path}: {source}")]
    Io {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("http {addr}{path}: malformed response: {detail}")]
    Malformed {
        addr: SocketAddr,
        path: String,
        detail: String,
    },
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header value with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with extra headers.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    request(addr, "GET", path, headers, &[], DEFAULT_TIMEOUT)
}

/// `POST path` with a body.
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<Response, HttpError> {
    request(addr, "POST", path, &[], body, DEFAULT_TIMEOUT)
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io {
        method,
        addr,
        path: path.to_string(),
        source,
    };
    let bad = |detail: String| HttpError::Malformed {
        addr,
        path: path.to_string(),
        detail,
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("status line {line:?}")))?;
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(io)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| hdrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut out = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(io)?;
            let size_str = line.trim().split(';').next().unwrap_or("").to_string();
            let n = usize::from_str_radix(&size_str, 16)
                .map_err(|_| bad(format!("chunk size {size_str:?}")))?;
            if n == 0 {
                break;
            }
            let start = out.len();
            out.resize(start + n, 0);
            r.read_exact(&mut out[start..]).map_err(io)?;
            line.clear();
            r.read_line(&mut line).map_err(io)?;
        }
    } else if let Some(cl) = find("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| bad(format!("content-length {cl:?}")))?;
        out.resize(n, 0);
        r.read_exact(&mut out).map_err(io)?;
    } else {
        r.read_to_end(&mut out).map_err(io)?;
    }
    Ok(Response {
        status,
        headers: hdrs,
        body: out,
    })
}
