//! The order of requests that name the same path: each takes a [`Turn`]
//! as it arrives, and is served once the turns taken before it on its paths
//! are over, as a server serving one request at a time would serve them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

/// The order of requests that name the same path: each takes a [`Turn`]
/// as it arrives and waits for the turns taken before it on those paths.
#[derive(Default)]
pub(crate) struct Order {
    state: std::sync::Mutex<OrderState>,
}

#[derive(Default)]
struct OrderState {
    next: u64,
    /// The last turn taken on each path, and how to know it is over.
    last: HashMap<String, (u64, watch::Receiver<()>)>,
}

/// A request's place in the order of its paths; over when dropped.
pub(crate) struct Turn {
    order: Arc<Order>,
    ticket: u64,
    paths: Vec<String>,
    before: Vec<watch::Receiver<()>>,
    _over: watch::Sender<()>,
}

impl Order {
    /// A turn on `paths`, after every turn already taken on them.
    pub(crate) fn take(self: &Arc<Self>, paths: Vec<String>) -> Turn {
        let (over, done) = watch::channel(());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        let ticket = s.next;
        let mut before = Vec::new();
        for p in &paths {
            if let Some((_, rx)) = s.last.insert(p.clone(), (ticket, done.clone())) {
                before.push(rx);
            }
        }
        Turn {
            order: Arc::clone(self),
            ticket,
            paths,
            before,
            _over: over,
        }
    }
}

impl Turn {
    /// Waits until the turns taken before this one are over.
    pub(crate) async fn ready(&mut self) {
        for mut rx in self.before.drain(..) {
            // Over when its sender is dropped.
            while rx.changed().await.is_ok() {}
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut s = self.order.state.lock().unwrap_or_else(|p| p.into_inner());
        for p in &self.paths {
            if s.last.get(p).is_some_and(|(t, _)| *t == self.ticket) {
                s.last.remove(p);
            }
        }
    }
}
