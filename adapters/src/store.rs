//! [`ObjectStoreBackend`]: the storage port over an `object_store` store
//! with multipart support, for Memory sandboxes and for embedders' own
//! stores (`Custom`). Such a store parses every key into its `Path` type, so
//! it can hold nothing that a listing would have to hide: `object_store`'s
//! own listing is used, with S3's shape restored (markers `d/`, common
//! prefixes, the marker of the prefix itself).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListItem, ListOptions, ListStream, ObjectMeta,
    PendingUpload, PutMode, PutResult, StoredPart, UploadId,
};
use corral_domain::{Capabilities, Error, ObjectKey, ObjectStorage, Operation, Result};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::errors::{Context, from_object_store};
use crate::objects::{Objects, check_prefix, meta_from, to_path};
use crate::pending::Tracker;

/// The storage port over an `object_store` store. Build one with
/// [`crate::Backends`], or directly with [`ObjectStoreBackend::memory`].
pub struct ObjectStoreBackend {
    objects: Objects,
    caps: Capabilities,
    /// Its multipart uploads, as this process made them (object_store
    /// cannot list them).
    pending: Arc<Tracker>,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("backend", &self.caps.name)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBackend {
    /// A backend over an in-memory store (shared with others built on the same store).
    pub fn memory(store: Arc<InMemory>) -> Self {
        Self::custom(
            Arc::clone(&store) as Arc<dyn ObjectStore>,
            store,
            Capabilities::memory(),
        )
    }

    /// A backend over any `object_store` store with multipart support.
    pub fn custom(
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        capabilities: Capabilities,
    ) -> Self {
        Self {
            objects: Objects {
                store,
                multipart,
                ctx: Context {
                    backend: capabilities.name,
                    ..Context::default()
                },
            },
            caps: capabilities,
            pending: Arc::default(),
        }
    }

    /// Shares the record of multipart uploads with the other backends on
    /// the same store.
    pub(crate) fn with_tracker(mut self, pending: Arc<Tracker>) -> Self {
        self.pending = pending;
        self
    }

    /// Overrides declared capabilities.
    #[must_use]
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// object_store's own listing: for stores that can hold nothing unparseable.
    fn list_store(&self, prefix: &ObjectKey, opts: ListOptions) -> ListStream {
        let store = Arc::clone(&self.objects.store);
        let raw_prefix = prefix.as_str().to_owned();
        let ctx = self.objects.ctx.clone();
        let stream = async move {
            let path = Path::parse(raw_prefix.trim_end_matches('/'))
                .map_err(|e| Error::invalid_input(e.to_string()))?;
            let path = (!raw_prefix.is_empty()).then_some(path);
            let mut items: Vec<ListItem> = if opts.delimiter {
                let r = store
                    .list_with_delimiter(path.as_ref())
                    .await
                    .map_err(|e| from_object_store(e, Operation::List, &raw_prefix, &ctx))?;
                // S3 reports a marker `d/` below the prefix as the common prefix `d/`.
                let mut items: Vec<ListItem> = r
                    .objects
                    .into_iter()
                    .map(|m| {
                        let meta = meta_from(m);
                        let below = meta
                            .key
                            .as_str()
                            .get(raw_prefix.len()..)
                            .unwrap_or_default();
                        if below.contains('/') {
                            ListItem::Prefix(meta.key)
                        } else {
                            ListItem::Object(meta)
                        }
                    })
                    .collect();
                for p in r.common_prefixes {
                    let key = format!("{}/", String::from(p));
                    items.push(ListItem::Prefix(ObjectKey::from_raw(key)));
                }
                items
            } else {
                store
                    .list(path.as_ref())
                    .map_ok(|m| ListItem::Object(meta_from(m)))
                    .try_collect()
                    .await
                    .map_err(|e| from_object_store(e, Operation::List, &raw_prefix, &ctx))?
            };
            items.retain(|i| i.key().as_str().starts_with(&raw_prefix));
            // InMemory does not list the marker equal to the prefix; S3 does.
            if !raw_prefix.is_empty() && !items.iter().any(|i| i.key().as_str() == raw_prefix) {
                let marker = to_path(&ObjectKey::from_raw(raw_prefix.clone()))?;
                if let Ok(m) = store.head(&marker).await {
                    items.push(ListItem::Object(ObjectMeta {
                        key: ObjectKey::from_raw(raw_prefix.clone()),
                        ..meta_from(m)
                    }));
                }
            }
            if let Some(after) = &opts.start_after {
                items.retain(|i| i.key() > after);
            }
            items.sort_by(|a, b| a.key().cmp(b.key()));
            // A marker `d/` and the common prefix `d/` are one entry.
            items.dedup_by(|a, b| a.key() == b.key());
            Ok::<_, Error>(futures::stream::iter(items.into_iter().map(Ok)))
        };
        Box::pin(futures::stream::once(stream).try_flatten())
    }
}

/// Such stores keep the `Bytes` they are given; the port's callers may hand
/// out buffers of the transfer cache, which must come back: store a copy.
fn owned(data: Bytes) -> Bytes {
    Bytes::copy_from_slice(&data)
}

#[async_trait]
impl ObjectStorage for ObjectStoreBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        self.objects.head(key).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        self.objects.get(key, range).await
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        self.objects.put(key, owned(data), mode).await
    }

    async fn put_if_match(&self, key: &ObjectKey, data: Bytes, etag: &str) -> Result<PutResult> {
        self.objects.put_if_match(key, owned(data), etag).await
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        self.objects.delete_many(keys).await
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        if let Err(e) = check_prefix(prefix) {
            return Box::pin(futures::stream::once(async { Err(e) }));
        }
        self.list_store(prefix, options)
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.objects.copy(from, to).await
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let id = self.objects.create_multipart(key).await?;
        self.pending.created(key, &id);
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        let size = data.len() as u64;
        let part = self
            .objects
            .upload_part(key, upload, number, owned(data))
            .await?;
        self.pending.part(
            upload,
            StoredPart {
                number,
                etag: part.etag.clone(),
                size,
            },
        );
        Ok(part)
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        let ids = Objects::part_ids(key, parts)?;
        let done = self.objects.complete_multipart(key, upload, ids).await?;
        self.pending.ended(upload);
        Ok(done)
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.objects.abort_multipart(key, upload).await?;
        self.pending.ended(upload);
        Ok(())
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        Ok(self.pending.list(prefix))
    }

    async fn list_parts(&self, key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        self.pending.parts(key, upload)
    }
}
