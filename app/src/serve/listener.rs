//! A front-end's listening socket and its connections, counted against
//! the server's maximum: a connection holds a [`ConnectionSlot`] while it
//! lasts, and a stopping server waits (bounded) for them to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral::{Error, ErrorKind};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub(crate) struct Listener {
    socket: TcpListener,
    open: Arc<AtomicUsize>,
    max: usize,
    /// What a connection is to this front-end (`sessions`, `connections`), for the log.
    what: &'static str,
}

/// One connection's place among the server's maximum; given back when dropped.
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Listener {
    pub(crate) async fn bind(
        addr: SocketAddr,
        max: usize,
        what: &'static str,
    ) -> Result<Self, Error> {
        let socket = TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        Ok(Self {
            socket,
            open: Arc::default(),
            max,
            what,
        })
    }

    /// The next connection within the maximum (those beyond it are closed
    /// and logged); `None` once `stop` is cancelled.
    pub(crate) async fn next(
        &self,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, ConnectionSlot)> {
        loop {
            let accepted = tokio::select! {
                a = self.socket.accept() => a,
                () = stop.cancelled() => return None,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait, never stop serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = ConnectionSlot(Arc::clone(&self.open));
            if self.open.fetch_add(1, Ordering::SeqCst) >= self.max {
                tracing::warn!(%peer, "connection refused: the server has its maximum of {}", self.what);
                continue;
            }
            return Some((tcp, peer, slot));
        }
    }

    /// Waits for the connections to end (each was told to), at most 10 s.
    pub(crate) async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
