//! Leases on continued uploads, kept in the bucket so that several server
//! instances agree without a database.
//!
//! A writer that continues a partial upload ([`super::partial`]) first
//! takes the upload's lease: a small object among the sandbox's private
//! data (`.corral/leases/<md5 of the upload id>`) created with
//! `If-None-Match: *`, naming this process and an expiry. Another instance
//! that finds a live lease is refused ([`ErrorKind::Busy`]), so two
//! instances never write or complete the same upload. The holder renews it
//! every third of its time with `If-Match` on the tag it wrote; a lease
//! past its expiry (its holder died) is taken over with `If-Match` on the
//! tag read. A holder whose renewal fails has lost it and does not
//! complete the upload. Released (deleted) when the writer finishes or is
//! dropped. Requests: one to take, one per renewal, one to release.
//!
//! A backend without conditional create (Garage 2.5 ignores
//! `If-None-Match`) cannot make a lease exclusive: none is taken there, and
//! docs/SERVE.md says to keep a client on one instance while it resumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use corral_domain::port::{PutMode, UploadId};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, SandboxRoot};
use futures::TryStreamExt;

/// How long a lease holds without renewal.
pub(crate) const TTL: Duration = Duration::from_secs(60);

/// The leases this process took, by key, with the number of the latest:
/// a release runs only if no newer take of the same key came after it (a
/// client that reconnects at once to the same instance), and takes and
/// releases of this process run one at a time.
fn taken() -> &'static tokio::sync::Mutex<std::collections::HashMap<String, u64>> {
    static TAKEN: std::sync::OnceLock<tokio::sync::Mutex<std::collections::HashMap<String, u64>>> =
        std::sync::OnceLock::new();
    TAKEN.get_or_init(Default::default)
}

/// The leases of this process alive now, by key: a lease of this process
/// that none of its writers holds any more (a cut writer, its release not
/// yet done) is taken over at once by this process.
fn live() -> &'static std::sync::Mutex<std::collections::HashMap<String, u32>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

fn live_count(key: &ObjectKey) -> u32 {
    live()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key.as_str())
        .copied()
        .unwrap_or(0)
}

/// This process, as leases name their holder.
fn me() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("pid {} started {nanos}", std::process::id())
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Doc {
    holder: String,
    /// Seconds since the epoch.
    expires: u64,
}

fn doc() -> Bytes {
    let d = Doc {
        holder: me().to_owned(),
        expires: now_secs() + TTL.as_secs(),
    };
    Bytes::from(serde_json::to_vec(&d).unwrap_or_default())
}

/// The key of `upload`'s lease in the sandbox at `root`.
pub(crate) fn key_of(root: &SandboxRoot, upload: &UploadId) -> Result<ObjectKey, Error> {
    use md5::Digest;
    let digest = md5::Md5::digest(upload.0.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(root.private_key(&format!("leases/{hex}"))?)
}

/// A lease held by this process; released when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    lost: Arc<AtomicBool>,
    renew: tokio::task::JoinHandle<()>,
    /// Which take of the key in this process this is.
    number: u64,
}

fn busy(path: &str, expires: u64) -> Error {
    let left = expires.saturating_sub(now_secs());
    Error::new(
        ErrorKind::Busy,
        format!(
            "{path} is being continued through another server; try again in {left} s, or write it again"
        ),
    )
    .with_path(path.to_owned())
}

impl Lease {
    /// Takes the lease at `key` for the upload of `path` (the user's path,
    /// for messages); `None` where the backend cannot make it exclusive.
    pub(crate) async fn take(
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        path: &str,
    ) -> Result<Option<Self>, Error> {
        Self::take_renewing(storage, key, path, TTL / 3).await
    }

    /// [`Self::take`], renewed every `every`.
    async fn take_renewing(
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        path: &str,
        every: Duration,
    ) -> Result<Option<Self>, Error> {
        if !storage.capabilities().conditional_create {
            return Ok(None);
        }
        let mut taken = taken().lock().await;
        let etag = match storage.put(&key, doc(), PutMode::Create).await {
            Ok(r) => r.etag,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let r = storage.get(&key, None).await?;
                let etag = r.meta.etag.clone();
                let parts: Vec<Bytes> = r.body.try_collect().await?;
                let held: Option<Doc> = serde_json::from_slice(&parts.concat()).ok();
                let expires = held.as_ref().map_or(0, |d| d.expires);
                let mine_and_free =
                    held.as_ref().is_some_and(|d| d.holder == me()) && live_count(&key) == 0;
                if !mine_and_free && expires > now_secs() {
                    return Err(busy(path, expires));
                }
                // Its holder died (or was a writer of this process now
                // gone): taken over, only if nobody else did first.
                let taken = match &etag {
                    Some(tag) => storage.put_if_match(&key, doc(), tag).await,
                    None => Err(Error::unsupported("no ETag")),
                };
                match taken {
                    Ok(r) => r.etag,
                    Err(e) if e.kind() == ErrorKind::Conflict => return Err(busy(path, expires)),
                    // A backend without If-Match (File: one process) overwrites.
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        storage.put(&key, doc(), PutMode::Overwrite).await?.etag
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let number = {
            let n = taken.entry(key.as_str().to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        *live()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.as_str().to_owned())
            .or_insert(0) += 1;
        drop(taken);
        let lost = Arc::new(AtomicBool::new(false));
        let renew = tokio::spawn(renew(
            Arc::clone(&storage),
            key.clone(),
            etag,
            Arc::clone(&lost),
            every,
        ));
        Ok(Some(Self {
            storage,
            key,
            lost,
            renew,
            number,
        }))
    }

    /// Whether it is still this process's (its renewals succeeded).
    pub(crate) fn held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }
}

async fn renew(
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    mut etag: Option<String>,
    lost: Arc<AtomicBool>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let r = match &etag {
            Some(tag) => storage.put_if_match(&key, doc(), tag).await,
            None => storage.put(&key, doc(), PutMode::Overwrite).await,
        };
        match r {
            Ok(r) => etag = r.etag,
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                etag = None;
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "lost the lease of a continued upload: it will not be completed here");
                lost.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        {
            let mut live = live().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = live.get_mut(self.key.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    live.remove(self.key.as_str());
                }
            }
        }
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        let (storage, key, number) = (Arc::clone(&self.storage), self.key.clone(), self.number);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut taken = taken().lock().await;
                if taken.get(key.as_str()) != Some(&number) {
                    return; // taken again since: the newer holder keeps it
                }
                taken.remove(key.as_str());
                if let Err(e) = storage.delete_many(vec![key.clone()]).await {
                    tracing::debug!(key = %key, error = %e, "cannot release a lease: it expires");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Arc<dyn ObjectStorage> {
        Arc::new(corral_adapters::ObjectStoreBackend::memory(
            Default::default(),
        ))
    }

    async fn expires(storage: &Arc<dyn ObjectStorage>, key: &ObjectKey) -> u64 {
        let r = storage.get(key, None).await.expect("lease");
        let parts: Vec<Bytes> = r.body.try_collect().await.expect("body");
        let d: Doc = serde_json::from_slice(&parts.concat()).expect("doc");
        d.expires
    }

    #[tokio::test]
    async fn a_lease_is_renewed_and_one_taken_over_loses_it() {
        let storage = memory();
        let key = ObjectKey::from_raw(".corral/leases/renewed");
        let every = Duration::from_millis(50);
        let lease = Lease::take_renewing(Arc::clone(&storage), key.clone(), "/f", every)
            .await
            .expect("take")
            .expect("exclusive on Memory");
        let tag = |s: &Arc<dyn ObjectStorage>| {
            let (s, key) = (Arc::clone(s), key.clone());
            async move { s.head(&key).await.expect("lease").etag }
        };
        let first = tag(&storage).await;
        // Renewed (rewritten with If-Match on its own tag) several times.
        tokio::time::sleep(every * 5).await;
        assert!(lease.held(), "a renewal failed");
        assert_ne!(tag(&storage).await, first, "not renewed");
        assert!(expires(&storage, &key).await >= now_secs() + TTL.as_secs() - 2);
        // Someone else overwrites it: the next renewal finds it changed.
        storage
            .put(&key, Bytes::from_static(b"{}"), PutMode::Overwrite)
            .await
            .expect("overwrite");
        tokio::time::sleep(every * 4).await;
        assert!(!lease.held(), "a lease taken over was still held");
    }
}
