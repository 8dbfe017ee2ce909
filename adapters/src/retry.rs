//! The one retry loop of corral's own requests: tries `f` until it
//! succeeds, fails for good, or the domain's [`Backoff`] is spent.

use std::future::Future;

use corral_domain::retry::Backoff;
use corral_domain::{Error, Result};

/// Runs `f`, trying again after each pause of `backoff` while `again` says
/// the error is worth it. `what` names the attempt in debug logs.
pub async fn retry<T, F, Fut>(
    backoff: Backoff,
    what: &str,
    again: impl Fn(&Error) -> bool,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if again(&e) => {
                attempt += 1;
                let Some(pause) = backoff.pause(attempt) else {
                    return Err(e);
                };
                tracing::debug!(attempt, error = %e, "{what}: trying again");
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use corral_domain::ErrorKind;

    use super::*;

    #[tokio::test]
    async fn tries_again_only_what_is_worth_it() {
        let backoff = Backoff {
            retries: 3,
            first: Duration::from_millis(10),
            factor: 2,
            max: Duration::from_secs(1),
        };
        let calls = AtomicU32::new(0);
        let r: Result<()> = retry(backoff, "test", Error::is_temporary, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::new(ErrorKind::Unavailable, "503"))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "the first try and three more"
        );
        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = retry(backoff, "test", Error::is_temporary, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::not_found("gone"))
        })
        .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let r = retry(backoff, "test", Error::is_temporary, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=1 => Err(Error::new(ErrorKind::Unavailable, "503")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }
}
