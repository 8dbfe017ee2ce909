//! Logins: password checks at their pace, and addresses that fail too often.
//!
//! A failed login takes the same time whoever it names: an unknown user's
//! password is checked against a decoy hash ([`super::users`]), and the
//! protocol pads every rejection to one second. An address with
//! [`MAX_FAILURES`] failures in [`WINDOW`] is refused without a check for
//! the rest of the window. Passwords and keys are never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::users::Users;

/// Failed logins an address may make in [`WINDOW`] before it is refused.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`].
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Failed logins by address.
#[derive(Debug, Default)]
pub(crate) struct Failures(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl Failures {
    /// Whether `ip` has failed too often lately.
    pub(crate) fn blocked(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
    }

    /// Counts a failure of `ip`.
    pub(crate) fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        let e = map.entry(ip).or_insert((0, Instant::now()));
        e.0 += 1;
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that check passwords. An argon2 check holds 19 MiB while it
/// runs: checks run on one thread, in its reused memory, so that a crowd of
/// logins costs 19 MiB once, never 19 MiB per login. A check takes tens of
/// milliseconds: logins wait their turn.
pub(crate) struct PasswordChecks {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

impl PasswordChecks {
    /// Starts `threads` checking threads.
    pub(crate) fn start(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("corral-passwords-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a password-checking thread");
            }
        }
        Self {
            jobs: Mutex::new(tx),
        }
    }

    /// Whether `password` is `user`'s, checked on one of the threads.
    pub(crate) async fn check(&self, users: Arc<Users>, user: String, password: String) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(users.password_matches(&user, &password));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        sent.is_ok() && rx.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures() {
        let f = Failures::default();
        let ip: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES - 1 {
            f.failed(Some(ip));
        }
        assert!(!f.blocked(Some(ip)), "one failure short");
        f.failed(Some(ip));
        assert!(f.blocked(Some(ip)));
        assert!(!f.blocked(Some([127, 0, 0, 3].into())), "another address");
        assert!(!f.blocked(None));
    }
}
