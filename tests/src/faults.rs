//! A fault-injecting HTTP proxy on 127.0.0.1, put between corral and a real
//! S3 server: it forwards requests (one per connection) and, at a chosen
//! rate, injects a fault instead, by operation and at random (seeded):
//! 500 InternalError, 503 SlowDown, a connection reset before the answer or
//! in the middle of the body, a stall longer than the client's timeout, a
//! truncated listing page (more pages announced, no token), and failed
//! CompleteMultipartUpload and AbortMultipartUpload calls. A test can also
//! force a given fault on the next requests of an operation
//! ([`FaultProxy::force`]), to aim at one path.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which S3 operation a request is.
fn operation(method: &str, query: &str) -> &'static str {
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    match method {
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" => "PutObject",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        "GET" if has("list-type") => "ListObjectsV2",
        "GET" if has("uploads") => "ListMultipartUploads",
        "GET" => "GetObject",
        "HEAD" => "HeadObject",
        _ => "Other",
    }
}

/// The faults, by name.
pub const FAULTS: [&str; 6] = [
    "500 InternalError",
    "503 SlowDown",
    "reset before the answer",
    "reset mid-body",
    "stall",
    "truncated listing",
];

/// What the proxy did, for the report.
#[derive(Debug, Default, Clone)]
pub struct FaultStats {
    /// Requests seen.
    pub requests: u64,
    /// Faults injected, by fault and operation.
    pub faults: BTreeMap<(String, String), u64>,
}

impl FaultStats {
    /// Faults injected in all.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// Faults forced on the next requests of an operation: operation → (fault, how many left).
type Forced = Mutex<BTreeMap<String, (&'static str, u64)>>;

/// What the connections share.
struct Shared {
    upstream: String,
    rate: f64,
    enabled: AtomicBool,
    rng: Rng,
    stats: Mutex<FaultStats>,
    forced: Forced,
    stall: Duration,
    corrupt: Corrupt,
}

/// What the proxy corrupts on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corrupt {
    Nothing,
    Uploads,
    Downloads,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: point corral's `endpointOverride` here.
    pub endpoint: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A small deterministic generator (xorshift), shared by the connections.
struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self
                .0
                .compare_exchange(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return y,
                Err(now) => x = now,
            }
        }
    }
    fn chance(&self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

impl FaultProxy {
    /// Forwards to `upstream` (`127.0.0.1:PORT`), faulting a `rate` of requests
    /// (0.0–1.0); a stall lasts `stall`.
    pub fn start(upstream: &str, rate: f64, seed: u64, stall: Duration) -> Self {
        Self::start_with(upstream, rate, seed, stall, Corrupt::Nothing)
    }

    /// Forwards everything, but flips one byte in the body of every PUT
    /// (objects and parts) on its way: a server that verifies checksums
    /// must refuse them.
    pub fn corrupting(upstream: &str) -> Self {
        Self::start_with(upstream, 0.0, 1, Duration::ZERO, Corrupt::Uploads)
    }

    /// Forwards everything, but flips one byte near the end of the body of
    /// every successful GetObject answer: the length is right, the bytes are not.
    pub fn corrupting_downloads(upstream: &str) -> Self {
        Self::start_with(upstream, 0.0, 1, Duration::ZERO, Corrupt::Downloads)
    }

    fn start_with(upstream: &str, rate: f64, seed: u64, stall: Duration, corrupt: Corrupt) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            rate,
            enabled: AtomicBool::new(true),
            rng: Rng(AtomicU64::new(seed | 1)),
            stats: Mutex::new(FaultStats::default()),
            forced: Mutex::new(BTreeMap::new()),
            stall,
            corrupt,
        });
        let thread = std::thread::spawn({
            let (stop, shared) = (stop.clone(), shared.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || {
                                let _ = handle(client, &shared);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }
        });
        Self {
            endpoint,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Injects `fault` (one of [`FAULTS`]) into the next `times` requests of
    /// `operation` (e.g. `"AbortMultipartUpload"`), whatever the rate, even
    /// with injection off; 0 stops forcing.
    pub fn force(&self, operation: &str, fault: &str, times: u64) {
        let fault = FAULTS
            .iter()
            .find(|f| **f == fault)
            .unwrap_or_else(|| panic!("unknown fault {fault:?}"));
        self.shared
            .forced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation.to_owned(), (fault, times));
    }

    /// Turns injection on or off (off to check the results through the same path).
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::Relaxed);
    }

    /// What was done so far.
    pub fn stats(&self) -> FaultStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error_body(code: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>"#
    )
}

/// Counts one `fault` injected into a request of `op`.
fn count(stats: &Mutex<FaultStats>, fault: &str, op: &str) {
    *stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .faults
        .entry((fault.to_owned(), op.to_owned()))
        .or_default() += 1;
}

/// The fault for a request of `op`: a forced one, or one at random.
fn pick_fault(shared: &Shared, op: &str) -> Option<&'static str> {
    {
        let mut forced = shared.forced.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fault, left)) = forced.get_mut(op)
            && *left > 0
        {
            *left -= 1;
            return Some(*fault);
        }
    }
    let rate = if shared.enabled.load(Ordering::Relaxed) {
        shared.rate
    } else {
        0.0
    };
    if !shared.rng.chance(rate) {
        return None;
    }
    let rng = &shared.rng;
    // Faults that fit the operation: a listing may also come back truncated;
    // completing or aborting fails with an error, a reset, or a lost answer.
    let pick = match op {
        "ListObjectsV2" => [5, 5, 0, 1, 3][(rng.next() % 5) as usize],
        "CompleteMultipartUpload" | "AbortMultipartUpload" => (rng.next() % 4) as usize,
        _ => (rng.next() % 5) as usize,
    };
    Some(FAULTS[pick])
}

fn handle(client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (stats, stall, corrupt) = (&shared.stats, shared.stall, shared.corrupt);
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    head.push_str(&line);
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.push_str(&h);
    }
    head.push_str("connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let op = operation(&method, &query);
    if corrupt == Corrupt::Uploads && method == "PUT" && !body.is_empty() {
        let mid = body.len() / 2;
        body[mid] ^= 0x5a;
        count(stats, "corrupted body", op);
    }
    let mut client = client;
    stats.lock().unwrap_or_else(|p| p.into_inner()).requests += 1;
    let fault = pick_fault(shared, op);
    if let Some(f) = fault {
        count(stats, f, op);
    }
    let respond = |client: &mut TcpStream, status: &str, code: &str| {
        let body = error_body(code);
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    match fault {
        Some("500 InternalError") => {
            respond(&mut client, "500 Internal Server Error", "InternalError");
            return Ok(());
        }
        Some("503 SlowDown") => {
            respond(&mut client, "503 Slow Down", "SlowDown");
            return Ok(());
        }
        Some("reset before the answer") => {
            return client.shutdown(std::net::Shutdown::Both);
        }
        Some("stall") => {
            std::thread::sleep(stall);
            return client.shutdown(std::net::Shutdown::Both);
        }
        _ => {}
    }
    let mut up = TcpStream::connect(&shared.upstream)?;
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n");
    if corrupt == Corrupt::Downloads
        && op == "GetObject"
        && (answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 206"))
        && let Some(end) = head_end
        && answer.len() > end + 4 + 16
    {
        // Ten bytes from the end: data, whether the body is sized or chunked.
        let at = answer.len() - 10;
        answer[at] ^= 0x5a;
        count(stats, "corrupted body", op);
    }
    match fault {
        Some("reset mid-body") => {
            let cut = answer.len() * 3 / 4;
            client.write_all(&answer[..cut])?;
            client.shutdown(std::net::Shutdown::Both)
        }
        Some("truncated listing") => {
            let text = String::from_utf8_lossy(&answer).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let mut body = body.replace(
                "<IsTruncated>false</IsTruncated>",
                "<IsTruncated>true</IsTruncated>",
            );
            if let (Some(a), Some(b)) = (
                body.find("<NextContinuationToken>"),
                body.find("</NextContinuationToken>"),
            ) {
                body.replace_range(a..b + "</NextContinuationToken>".len(), "");
            }
            let head: Vec<&str> = head
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
                .collect();
            write!(
                client,
                "{}\r\ncontent-length: {}\r\n\r\n{body}",
                head.join("\r\n"),
                body.len()
            )?;
            Ok(())
        }
        _ => client.write_all(&answer),
    }
}
