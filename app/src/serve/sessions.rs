//! Sessions per user, against the limit (`--max-sessions-per-user`): a
//! [`SessionSlot`] counts one until it is dropped, however the session ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::metrics::Metrics;

/// Sessions by user.
#[derive(Debug)]
pub(crate) struct Sessions {
    by_user: Arc<Mutex<HashMap<String, usize>>>,
    per_user: usize,
}

/// One logged-in session, counted for its user until dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    by_user: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
    metrics: Arc<Metrics>,
    from: Option<SocketAddr>,
}

impl Sessions {
    pub(crate) fn new(per_user: usize) -> Self {
        Self {
            by_user: Arc::default(),
            per_user,
        }
    }

    /// A session of `user` if the limit allows.
    pub(crate) fn enter(
        &self,
        user: &str,
        metrics: Arc<Metrics>,
        from: Option<SocketAddr>,
    ) -> Option<SessionSlot> {
        let mut m = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_owned()).or_default();
        if *n >= self.per_user {
            return None;
        }
        *n += 1;
        metrics.sessions.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, peer = ?from, "logged in");
        Some(SessionSlot {
            by_user: Arc::clone(&self.by_user),
            user: user.to_owned(),
            metrics,
            from,
        })
    }
}

impl SessionSlot {
    /// The user of the session.
    // Asked by the SFTP front-end only.
    #[cfg_attr(not(feature = "sftp"), allow(dead_code))]
    pub(crate) fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut m = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
        self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(user = self.user, peer = ?self.from, "session ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_sessions_are_counted_until_their_slots_drop() {
        let s = Sessions::new(2);
        let m = Arc::new(Metrics::default());
        let a = s.enter("alice", Arc::clone(&m), None).expect("first");
        let b = s.enter("alice", Arc::clone(&m), None).expect("second");
        assert!(s.enter("alice", Arc::clone(&m), None).is_none(), "third");
        let other = s.enter("bob", Arc::clone(&m), None).expect("another user");
        assert_eq!(m.sessions.load(Ordering::Relaxed), 3);
        drop(a);
        let c = s.enter("alice", Arc::clone(&m), None).expect("room again");
        drop((b, c, other));
        assert_eq!(m.sessions.load(Ordering::Relaxed), 0);
        assert!(s.by_user.lock().unwrap().is_empty());
    }
}
