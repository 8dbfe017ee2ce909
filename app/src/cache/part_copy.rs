//! Copies on the server in parts: an object copied by UploadPartCopy
//! requests running in parallel, none of its bytes passing through the
//! process (so the cache is not used). Large renames and copies on S3 go
//! this way: one CopyObject copies at the pace of one request and stops at
//! 5 GiB.

use std::sync::Arc;

use corral_domain::parts::PartPlan;
use corral_domain::port::{CompletedPart, PutResult, UploadId};
use corral_domain::{Error, ObjectKey, ObjectStorage};
use futures::{StreamExt, TryStreamExt};

use super::aborts::Aborts;
use super::upload::abort_upload;

/// Part copies in flight at once, per copy.
pub const PART_COPIES_AT_ONCE: usize = 8;

/// Aborts the upload unless disarmed: a copy that fails, or whose future is
/// dropped (a client gone mid-rename), leaves nothing pending.
struct Pending {
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    upload: Option<UploadId>,
    aborts: Arc<Aborts>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        if !Aborts::can_spawn() {
            tracing::warn!(key = %self.key, upload = %upload, "no runtime to abort a dropped copy: its upload is left pending");
            return;
        }
        let (storage, key) = (Arc::clone(&self.storage), self.key.clone());
        self.aborts.spawn(async move {
            if let Err(e) = abort_upload(storage.as_ref(), &key, &upload).await {
                tracing::warn!(key = %key, upload = %upload, error = %e, "cannot abort the upload of a failed copy");
            }
        });
    }
}

/// Copies `from` (`size` bytes, entity tag `etag` when known: a source
/// that changes during the copy fails it) to `to` on the server, in parts
/// of [`PartPlan::for_copy`], [`PART_COPIES_AT_ONCE`] at a time. A failure
/// or a drop aborts the upload (in `aborts`, the cache's registry).
pub(crate) async fn copy_in_parts(
    storage: Arc<dyn ObjectStorage>,
    from: &ObjectKey,
    to: &ObjectKey,
    size: u64,
    etag: Option<&str>,
    aborts: Arc<Aborts>,
) -> Result<PutResult, Error> {
    let plan = PartPlan::for_copy(size)?;
    let upload = storage.create_multipart(to).await?;
    let mut pending = Pending {
        storage: Arc::clone(&storage),
        key: to.clone(),
        upload: Some(upload.clone()),
        aborts,
    };
    let copies = plan.iter().map(|(n, range)| {
        let (storage, upload) = (&storage, &upload);
        async move {
            let number =
                u32::try_from(n).map_err(|_| Error::invalid_input("part number out of range"))?;
            storage
                .upload_part_copy(to, upload, number, from, range, etag)
                .await
        }
    });
    let parts: Vec<CompletedPart> = futures::stream::iter(copies)
        .buffered(PART_COPIES_AT_ONCE)
        .try_collect()
        .await?;
    let done = storage.complete_multipart(to, &upload, parts).await?;
    pending.upload = None;
    Ok(done)
}
