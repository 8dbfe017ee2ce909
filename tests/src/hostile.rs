//! A hostile (or buggy) S3 server on 127.0.0.1: a test double that answers
//! each request with whatever a test scripts, to check that no answer can
//! move a user out of the sandbox or crash corral. It stands next to the
//! real servers of [`crate::servers`], never instead of them.
//!
//! HTTP/1.1, one request per connection (`Connection: close`), requests
//! signed or not (nothing is checked).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path, without the query (`/bucket/key`).
    pub path: String,
    /// The raw query (`list-type=2&prefix=…`).
    pub query: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status, extra headers and a body; `Content-Length` is the body's
    /// unless `content_length` says otherwise (a lie).
    Http {
        /// Status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
        /// A `Content-Length` to announce instead of the body's length.
        content_length: Option<usize>,
    },
    /// Close the connection without answering.
    Reset,
}

impl Answer {
    /// 200 with an XML body.
    pub fn xml(body: impl Into<String>) -> Self {
        Self::Http {
            status: 200,
            headers: vec![("content-type".into(), "application/xml".into())],
            body: body.into().into_bytes(),
            content_length: None,
        }
    }

    /// A status with headers and a body.
    pub fn status(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        Self::Http {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
            content_length: None,
        }
    }
}

/// The server; stops when dropped.
pub struct HostileServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HostileServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileServer")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl HostileServer {
    /// Starts a server answering every request with `script(request)`.
    pub fn start(script: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let script = script.clone();
                            std::thread::spawn(move || serve(stream, &*script));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
        });
        Self {
            endpoint,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, script: &(dyn Fn(&Request) -> Answer + Send + Sync)) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.clone(), String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let request = Request {
        method,
        path,
        query,
        headers,
    };
    if let Some(len) = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        let _ = reader.read_exact(&mut body);
    }
    let mut stream = stream;
    match script(&request) {
        Answer::Reset => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        Answer::Http {
            status,
            headers,
            body,
            content_length,
        } => {
            let mut head = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n");
            // A HEAD answer states the object's length itself.
            if !headers.iter().any(|(k, _)| k == "content-length") {
                head.push_str(&format!(
                    "content-length: {}\r\n",
                    content_length.unwrap_or(body.len())
                ));
            }
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            if request.method != "HEAD" {
                let _ = stream.write_all(&body);
            }
            let _ = stream.flush();
        }
    }
}
