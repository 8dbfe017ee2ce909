//! The aborts of uploads dropped unfinished, owned by the transfer cache.

use std::sync::Mutex;
use std::time::Duration;

/// Aborts of uploads dropped unfinished, running in the background: a
/// process waits for them before it exits ([`TransferCache::settle`]),
/// and a long-running one holds only those still running.
#[derive(Debug, Default)]
pub(crate) struct Aborts {
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Aborts {
    /// Whether a runtime is there to run one.
    pub(crate) fn can_spawn() -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    /// Runs `abort` in the background (a runtime must be there).
    pub(crate) fn spawn(&self, abort: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(abort);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub(crate) fn running(&self) -> usize {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.len()
    }

    pub(crate) async fn wait(&self, timeout: Duration) -> usize {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut late = 0;
        for task in tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                late += 1;
            }
        }
        late
    }
}
