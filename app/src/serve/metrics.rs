//! What a server counts, and the Prometheus text endpoint that shows it
//! (`--metrics ADDR`, any path): the transfer cache's capacity, reserved
//! bytes, bytes in use, high-water mark and waiting transfers; sessions; and
//! transfers and bytes by direction and result. Also the one log line per
//! transfer (user, path, bytes, seconds, result), as xferlog has.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corral::cache::TransferCache;
use tokio::net::TcpListener;

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// Completed (an upload visible, a download read).
    Ok,
    /// Failed with an error the client was told.
    Error,
    /// The session ended first: an upload was aborted.
    Aborted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Aborted => "aborted",
        }
    }
}

/// Transfers and bytes, by direction and outcome.
type ByOutcome = BTreeMap<(&'static str, Outcome), (u64, u64)>;

/// One finished transfer, for its log line and the counters.
pub(crate) struct Transfer<'a> {
    pub(crate) user: &'a str,
    /// The client's address (behind a balancer, as its PROXY header says).
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// `upload` or `download`.
    pub(crate) direction: &'static str,
    pub(crate) path: &'a str,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) outcome: Outcome,
    pub(crate) error: Option<&'a str>,
}

/// The server's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) sessions: AtomicU64,
    pub(crate) sessions_total: AtomicU64,
    pub(crate) logins_failed: AtomicU64,
    /// Uploads kept unfinished when their session ended, and continued.
    pub(crate) partials_kept: AtomicU64,
    pub(crate) partials_resumed: AtomicU64,
    /// Pending uploads older than the retention, aborted by the sweep.
    pub(crate) stale_aborted: AtomicU64,
    transfers: Mutex<ByOutcome>,
}

impl Metrics {
    /// Counts a failed login.
    pub(crate) fn failed_login(&self) {
        self.logins_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a finished transfer and logs its line.
    pub(crate) fn transfer(&self, t: &Transfer<'_>) {
        tracing::info!(
            target: "corral::xfer",
            user = t.user,
            peer = t.peer.map(|p| p.to_string()),
            direction = t.direction,
            path = t.path,
            bytes = t.bytes,
            seconds = format!("{:.3}", t.elapsed.as_secs_f64()),
            result = t.outcome.as_str(),
            error = t.error,
            "transfer"
        );
        let mut map = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry((t.direction, t.outcome)).or_default();
        e.0 += 1;
        e.1 += t.bytes;
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, cache: &TransferCache) -> String {
        let m = cache.metrics();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP corral_{name} {help}\n# TYPE corral_{name} gauge\ncorral_{name} {value}"
            );
        };
        gauge(
            "cache_capacity_bytes",
            "The transfer cache's size.",
            m.capacity,
        );
        gauge(
            "cache_reserved_bytes",
            "Bytes reserved by transfers.",
            m.reserved,
        );
        gauge(
            "cache_in_use_bytes",
            "Bytes of the cache holding data.",
            m.in_use,
        );
        gauge(
            "cache_high_water_bytes",
            "The most bytes ever reserved at once.",
            m.high_water,
        );
        gauge(
            "cache_holders",
            "Transfers holding a reservation.",
            m.holders,
        );
        gauge(
            "cache_waiting_transfers",
            "Transfers waiting for room in the cache.",
            m.waiting,
        );
        gauge(
            "cache_per_user_bytes",
            "The most one user may hold of the cache.",
            m.per_account,
        );
        gauge(
            "cache_allocated_bytes",
            "Memory buffers of the cache, in use or kept spare.",
            m.allocated,
        );
        gauge(
            "sessions",
            "Sessions open.",
            self.sessions.load(Ordering::Relaxed),
        );
        // The users holding most, so that an operator sees who holds what.
        let _ = writeln!(
            out,
            "# HELP corral_cache_user_reserved_bytes Bytes of the cache a user holds (the 20 holding most).\n# TYPE corral_cache_user_reserved_bytes gauge"
        );
        for a in cache.accounts().into_iter().take(20) {
            let name: String = a
                .name
                .chars()
                .map(|c| {
                    if c == '"' || c == '\\' || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "corral_cache_user_reserved_bytes{{user=\"{name}\"}} {}",
                a.reserved
            );
        }
        let _ = writeln!(
            out,
            "# HELP corral_sessions_total Sessions opened.\n# TYPE corral_sessions_total counter\ncorral_sessions_total {}",
            self.sessions_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP corral_logins_failed_total Failed logins.\n# TYPE corral_logins_failed_total counter\ncorral_logins_failed_total {}",
            self.logins_failed.load(Ordering::Relaxed)
        );
        for (name, help, v) in [
            (
                "corral_partial_uploads_kept_total",
                "Uploads kept unfinished when their session ended (whole parts stored), to be continued.",
                &self.partials_kept,
            ),
            (
                "corral_partial_uploads_resumed_total",
                "Uploads continued from a partial file.",
                &self.partials_resumed,
            ),
            (
                "corral_stale_uploads_aborted_total",
                "Pending uploads older than --partial-retention, aborted.",
                &self.stale_aborted,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let t = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP corral_transfers_total Transfers by direction and result.\n# TYPE corral_transfers_total counter"
        );
        for ((dir, outcome), (n, _)) in t.iter() {
            let _ = writeln!(
                out,
                "corral_transfers_total{{direction=\"{dir}\",result=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP corral_transfer_bytes_total Bytes moved by direction and result.\n# TYPE corral_transfer_bytes_total counter"
        );
        for ((dir, outcome), (_, b)) in t.iter() {
            let _ = writeln!(
                out,
                "corral_transfer_bytes_total{{direction=\"{dir}\",result=\"{}\"}} {b}",
                outcome.as_str()
            );
        }
        out
    }
}

/// Answers every HTTP request on `listener` with the exposition (HTTP/1.1
/// on hyper: keep-alive, pipelining and malformed requests are its to
/// handle).
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    cache: TransferCache,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (metrics, cache) = (std::sync::Arc::clone(&metrics), cache.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let body = metrics.render(&cache);
                async move {
                    hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "a metrics request failed");
            }
        });
    }
}
