//! Uploads kept after their writer went away, and continued.
//!
//! Where [`Corral::keep_partial_uploads`](crate::Corral::keep_partial_uploads)
//! is on (a server turns it on), a file written from its start whose writer
//! goes away before completing it (a dropped connection, a killed client)
//! is not aborted: its whole parts stay stored in the pending multipart
//! upload, the bytes of a part not complete are dropped. What is stored is
//! found again from the backend alone (its pending uploads and their
//! parts: on S3 ListMultipartUploads and ListParts, so another process, or
//! this one restarted, finds it too; on File and Memory, the process's own
//! uploads): the run of parts 1, 2, … of one size ([`continuable`]).
//!
//! Such a *partial* file shows to `stat` and listings with the size stored,
//! where no complete file of that name exists; reading it is refused
//! ([`ErrorKind::Busy`]). A writer opened on it without truncation
//! continues the same upload when its first write starts at that size (an
//! append, or a client that resumes from the size it saw); a first write
//! elsewhere gives the partial up and starts over. A pending upload older
//! than the server's retention is aborted by its sweep.

use corral_domain::parts::continuable;
use corral_domain::port::{CompletedPart, StoredPart, UploadId};
use corral_domain::{ErrorKind, ObjectKey, ObjectStorage};

use super::scoped::Scoped;

/// An upload that can be continued.
#[derive(Debug, Clone)]
pub(crate) struct Partial {
    pub(crate) upload: UploadId,
    pub(crate) part_size: u64,
    /// Parts 1..=n, each `part_size` bytes.
    pub(crate) parts: Vec<CompletedPart>,
    /// When the upload was created, if known.
    pub(crate) initiated: Option<std::time::SystemTime>,
}

impl Partial {
    /// The bytes stored.
    pub(crate) fn size(&self) -> u64 {
        self.part_size * self.parts.len() as u64
    }

    fn from_parts(
        upload: UploadId,
        stored: &[StoredPart],
        initiated: Option<std::time::SystemTime>,
    ) -> Option<Self> {
        let sizes: Vec<(u32, u64)> = stored.iter().map(|p| (p.number, p.size)).collect();
        let (part_size, run) = continuable(&sizes)?;
        let mut parts: Vec<CompletedPart> = stored
            .iter()
            .filter(|p| p.number <= run)
            .map(StoredPart::completed)
            .collect();
        parts.sort_by_key(|p| p.number);
        Some(Self {
            upload,
            part_size,
            parts,
            initiated,
        })
    }
}

/// Whether `storage` can keep partial files.
pub(crate) fn supported(storage: &Scoped) -> bool {
    storage.capabilities().list_pending_uploads && storage.capabilities().multipart
}

/// The newest continuable upload of `key`, if any. A backend that cannot
/// tell (an error listing) has none: a lookup never fails what asked.
pub(crate) async fn find(storage: &Scoped, key: &ObjectKey) -> Option<Partial> {
    let pending = match storage.list_pending_uploads(key).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(key = %key, error = %e, "cannot look for a partial upload");
            return None;
        }
    };
    let mut mine: Vec<_> = pending.into_iter().filter(|p| p.key == *key).collect();
    mine.sort_by_key(|p| std::cmp::Reverse(p.initiated));
    for p in mine {
        match storage.list_parts(key, &p.upload_id).await {
            Ok(stored) => {
                if let Some(partial) = Partial::from_parts(p.upload_id, &stored, p.initiated) {
                    return Some(partial);
                }
            }
            // Completed or aborted meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(key = %key, error = %e, "cannot list the parts of a partial upload");
            }
        }
    }
    None
}

/// The continuable uploads of the keys directly under `prefix` (a
/// directory's listing prefix), by name.
pub(crate) async fn under(
    storage: &Scoped,
    prefix: &ObjectKey,
) -> std::collections::BTreeMap<String, Partial> {
    let mut out = std::collections::BTreeMap::new();
    let pending = match storage.list_pending_uploads(prefix).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(prefix = %prefix, error = %e, "cannot look for partial uploads");
            return out;
        }
    };
    let mut names: Vec<(String, ObjectKey)> = pending
        .iter()
        .filter_map(|p| {
            let name = p.key.as_str().strip_prefix(prefix.as_str())?;
            (!name.is_empty() && !name.contains('/')).then(|| (name.to_owned(), p.key.clone()))
        })
        .collect();
    names.sort();
    names.dedup();
    for (name, key) in names {
        if let Some(p) = find(storage, &key).await {
            out.insert(name, p);
        }
    }
    out
}

/// Gives `partial` of `key` up (a writer started over): aborted now.
pub(crate) async fn discard(storage: &dyn ObjectStorage, key: &ObjectKey, partial: &Partial) {
    if let Err(e) = corral_adapters::retry::abort_upload(storage, key, &partial.upload).await {
        tracing::warn!(key = %key, upload = %partial.upload, error = %e, "could not abort a partial upload given up: the retention sweep will");
    }
}

/// Gives up every pending upload of exactly `key` (a write that replaces
/// the file). Before this writer's own upload exists, so it is not one of
/// them; another process's upload of the same file at the same time is
/// (two writers of one file race anyway: the last to complete wins).
pub(crate) async fn discard_pending(storage: &Scoped, key: &ObjectKey) {
    let pending = match storage.list_pending_uploads(key).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(key = %key, error = %e, "cannot look for a partial upload");
            return;
        }
    };
    for p in pending.into_iter().filter(|p| p.key == *key) {
        if let Err(e) = corral_adapters::retry::abort_upload(storage, key, &p.upload_id).await {
            tracing::warn!(key = %key, upload = %p.upload_id, error = %e, "could not abort a partial upload given up: the retention sweep will");
        }
    }
}
