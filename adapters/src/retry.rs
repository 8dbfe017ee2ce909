//! The one retry loop of corral's own requests: tries `f` until it
//! succeeds, fails for good, or the domain's [`Backoff`] is spent.

use std::future::Future;
use std::time::SystemTime;

use corral_domain::port::UploadId;
use corral_domain::retry::Backoff;
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, Result};

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

/// Aborts `upload`, trying again when the server fails ([`Backoff::aborts`]):
/// an upload left pending costs storage until someone aborts it. One
/// already gone counts as aborted; refusals are final.
pub async fn abort_upload(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    upload: &UploadId,
) -> Result<()> {
    let final_kind = |e: &Error| {
        matches!(
            e.kind(),
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::Unsupported
        )
    };
    let r = retry(
        Backoff::aborts(),
        "aborting the multipart upload",
        |e| e.kind() != ErrorKind::NotFound && !final_kind(e),
        || storage.abort_multipart(key, upload),
    )
    .await;
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Aborts the multipart uploads of `key` started since `since` and still
/// pending, but `keep`: after a CreateMultipartUpload whose answer was lost
/// (a retried one, or a failed one), the request may have made an upload
/// whose id was never learnt. Never after an upload that went well: another
/// writer of the same key may be uploading now, and its upload is not an
/// orphan. Only where the server can list pending uploads; the listing is
/// tried again like an abort, since the sweep runs when the server fails.
pub async fn sweep_orphans(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    since: SystemTime,
    keep: Option<&UploadId>,
) {
    if !storage.capabilities().list_pending_uploads {
        return;
    }
    let listed = retry(
        Backoff::aborts(),
        "listing pending uploads",
        Error::is_temporary,
        || storage.list_pending_uploads(key),
    )
    .await;
    let pending = match listed {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "cannot look for an upload whose creation answer was lost");
            return;
        }
    };
    for u in pending {
        if u.key != *key || Some(&u.upload_id) == keep || u.initiated.is_some_and(|t| t < since) {
            continue;
        }
        match abort_upload(storage, key, &u.upload_id).await {
            Ok(()) => {
                tracing::info!(key = %key, upload = %u.upload_id, "aborted an upload whose creation answer was lost")
            }
            Err(e) => {
                tracing::warn!(key = %key, upload = %u.upload_id, error = %e, "could not abort an orphaned upload")
            }
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
