//! What every connection of the SFTP server shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral::OverwriteMode;

use crate::serve::{Core, CoreOptions};

/// How the SFTP server runs (the command's flags).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) core: CoreOptions,
    pub(crate) listen: SocketAddr,
    pub(crate) host_keys: Vec<PathBuf>,
    pub(crate) idle_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) max_channels: usize,
    pub(crate) max_handles: u64,
    pub(crate) overwrite: Option<OverwriteMode>,
    pub(crate) refuse_setstat: bool,
}

/// When a connection last heard from its client.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
    pub(crate) fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub(crate) fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// What every connection shares.
pub(crate) struct Server {
    pub(crate) core: Arc<Core>,
    pub(crate) options: Options,
}
