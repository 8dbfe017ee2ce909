//! [`ObjectStoreBackend`]: the storage port over `object_store`, for S3,
//! memory and embedders' stores. (File sandboxes have a backend of their
//! own, [`crate::FileBackend`]: `object_store`'s `LocalFileSystem` follows
//! links.)
//!
//! Reads, writes, copies and deletes go through [`ObjectStore`]. Listing
//! needs a strategy of its own: `object_store` parses every listed key into
//! its `Path` type and fails the *whole* page on one key it cannot parse (a
//! planted `a/../b`, `a//b`, or a name with a newline), and it folds the
//! directory marker `d/` onto `d`. corral must hide such keys and count
//! them, not fail, so S3 is listed with corral's own ListObjectsV2 request
//! (raw keys, [`crate::s3`]); only the in-memory store, which can hold
//! nothing unparseable, uses `object_store`'s listing. Multipart goes
//! through [`MultipartStore`].

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListItem, ListOptions, ListStream, ObjectMeta,
    PendingUpload, PutMode, PutResult, UploadId,
};
use corral_domain::{Capabilities, Error, ErrorKind, ObjectKey, ObjectStorage, Operation, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::{Path, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

use crate::errors::{Context, from_object_store};
use crate::s3::RawS3;

/// How listing and multipart work for this backend.
pub(crate) enum Flavor {
    S3 {
        multipart: Arc<dyn MultipartStore>,
        raw: RawS3,
    },
    /// Any store handed over by an embedder; listed with object_store's listing.
    Custom {
        multipart: Arc<dyn MultipartStore>,
    },
    Memory {
        store: Arc<InMemory>,
    },
}

/// The storage port over an `object_store` store. Build one with
/// [`crate::Backends`], or directly with [`ObjectStoreBackend::memory`].
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    flavor: Flavor,
    caps: Capabilities,
    pub(crate) ctx: Context,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("backend", &self.caps.name)
            .field("endpoint", &self.ctx.endpoint)
            .field("bucket", &self.ctx.bucket)
            .finish_non_exhaustive()
    }
}

/// Converts a port key to an `object_store` path, keeping a trailing `/`
/// (directory markers) that `Path::parse` would strip.
pub(crate) fn to_path(key: &ObjectKey) -> Result<Path> {
    let s = key.as_str();
    let invalid = |e: &dyn fmt::Display| {
        Error::invalid_input(format!("not a valid object key: {e}")).with_path(s.to_owned())
    };
    if s.is_empty() || s.starts_with('/') {
        return Err(invalid(&"empty or starting with `/`"));
    }
    match s.strip_suffix('/') {
        // `join` with an empty part is how object_store 0.14 expresses `d/`.
        Some(body) => Ok(Path::parse(body)
            .map_err(|e| invalid(&e))?
            .join(PathPart::from(""))),
        None => Path::parse(s).map_err(|e| invalid(&e)),
    }
}

/// Whether two ETags are the same, quotes and case aside.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"')
        .eq_ignore_ascii_case(b.trim_matches('"'))
}

pub(crate) fn meta_from(m: object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        key: ObjectKey::from_raw(String::from(m.location)),
        size: m.size,
        last_modified: Some(SystemTime::from(m.last_modified)),
        etag: m.e_tag,
        checksum: None,
    }
}

/// A listing prefix must be empty or end in `/` (a directory).
fn check_prefix(prefix: &ObjectKey) -> Result<()> {
    let p = prefix.as_str();
    if !(p.is_empty() || p.ends_with('/')) || p.starts_with('/') {
        return Err(Error::invalid_input(format!(
            "listing prefix {p:?} must be empty or end with `/`"
        ))
        .with_operation(Operation::List));
    }
    Ok(())
}

impl ObjectStoreBackend {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        flavor: Flavor,
        caps: Capabilities,
        ctx: Context,
    ) -> Self {
        Self {
            store,
            flavor,
            caps,
            ctx,
        }
    }

    /// A backend over an in-memory store (shared with others built on the same store).
    pub fn memory(store: Arc<InMemory>) -> Self {
        Self::new(
            store.clone(),
            Flavor::Memory { store },
            Capabilities::memory(),
            Context {
                backend: "Memory",
                ..Context::default()
            },
        )
    }

    /// A backend over any `object_store` store with multipart support.
    pub fn custom(
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        capabilities: Capabilities,
    ) -> Self {
        let name = capabilities.name;
        Self::new(
            store,
            Flavor::Custom { multipart },
            capabilities,
            Context {
                backend: name,
                ..Context::default()
            },
        )
    }

    /// Overrides declared capabilities (per-endpoint quirks from configuration).
    #[must_use]
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// The in-memory store keeps the `Bytes` it is given; the port's callers
    /// may hand out buffers of the transfer cache, which must come back, so
    /// the memory backend stores a copy. The others send or write the bytes
    /// and drop them.
    fn owned(&self, data: Bytes) -> Bytes {
        match self.flavor {
            Flavor::Memory { .. } | Flavor::Custom { .. } => Bytes::copy_from_slice(&data),
            Flavor::S3 { .. } => data,
        }
    }

    fn err(&self, e: object_store::Error, op: Operation, key: &ObjectKey) -> Error {
        from_object_store(e, op, key.as_str(), &self.ctx)
    }

    fn multipart(&self) -> &dyn MultipartStore {
        match &self.flavor {
            Flavor::S3 { multipart, .. } => multipart.as_ref(),
            Flavor::Memory { store } => store.as_ref(),
            Flavor::Custom { multipart } => multipart.as_ref(),
        }
    }

    /// object_store's own listing: for stores that can hold nothing unparseable.
    fn list_object_store(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &ObjectKey,
        opts: ListOptions,
    ) -> ListStream {
        let store = store.clone();
        let raw_prefix = prefix.as_str().to_owned();
        let ctx = self.ctx.clone();
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

#[async_trait]
impl ObjectStorage for ObjectStoreBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        if let Flavor::S3 { raw, .. } = &self.flavor
            && let Some(meta) = raw.head_object(key).await?
        {
            return Ok(meta);
        }
        let path = to_path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.err(e, Operation::Head, key))?;
        Ok(ObjectMeta {
            key: key.clone(),
            ..meta_from(meta)
        })
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        let path = to_path(key)?;
        let options = GetOptions {
            range: range.map(|r| match r {
                ByteRange::Bounded(r) => GetRange::Bounded(r),
                ByteRange::From(o) => GetRange::Offset(o),
                ByteRange::Suffix(n) => GetRange::Suffix(n),
            }),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| self.err(e, Operation::Get, key))?;
        let meta = ObjectMeta {
            key: key.clone(),
            ..meta_from(result.meta.clone())
        };
        let range = result.range.clone();
        let (ctx, k) = (self.ctx.clone(), key.as_str().to_owned());
        let body = result
            .into_stream()
            .map_err(move |e| from_object_store(e, Operation::Get, &k, &ctx));
        Ok(GetResult {
            meta,
            range,
            body: Box::pin(body),
        })
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        let data = self.owned(data);
        let path = to_path(key)?;
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(r) => Ok(PutResult { etag: r.e_tag }),
            // object_store reads the ETag only after a 2xx: the object was stored.
            // Seen with s3s-fs for directory markers.
            Err(e) if e.to_string().contains("ETag Header missing") => Ok(PutResult::default()),
            Err(e) => {
                let e = self.err(e, Operation::Put, key);
                // S3 answers 412 Precondition Failed to a create whose key exists.
                if mode == PutMode::Create && e.kind() == ErrorKind::Conflict {
                    return Err(
                        Error::new(ErrorKind::AlreadyExists, "the object already exists")
                            .with_operation(Operation::Put)
                            .with_path(key.as_str().to_owned()),
                    );
                }
                Err(e)
            }
        }
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        let mut failed = Vec::new();
        let mut paths = Vec::with_capacity(keys.len());
        for key in keys {
            match to_path(&key) {
                Ok(p) => paths.push(p),
                Err(e) => failed.push((key, e)),
            }
        }
        // delete_stream batches (1,000 keys per DeleteObjects on S3).
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(stream);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    let err = from_object_store(e, Operation::Delete, "", &self.ctx);
                    failed.push((ObjectKey::from_raw(""), err));
                }
            }
        }
        Ok(failed)
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        if let Err(e) = check_prefix(prefix) {
            return Box::pin(futures::stream::once(async { Err(e) }));
        }
        match &self.flavor {
            Flavor::S3 { raw, .. } => raw.list(prefix.clone(), options),
            Flavor::Memory { .. } | Flavor::Custom { .. } => {
                self.list_object_store(&self.store, prefix, options)
            }
        }
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        let (src, dst) = (to_path(from)?, to_path(to)?);
        self.store
            .copy(&src, &dst)
            .await
            .map_err(|e| self.err(e, Operation::Copy, from))
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let mp = self.multipart();
        let path = to_path(key)?;
        // object_store does not retry a CreateMultipartUpload whose answer is
        // cut short; two more tries here. An upload created by a try whose
        // answer was lost is swept by the caller (see the upload's end).
        let mut tries = 0u64;
        loop {
            match mp.create_multipart(&path).await {
                Ok(id) => return Ok(UploadId(id)),
                Err(e) => {
                    let e = self.err(e, Operation::CreateMultipart, key);
                    if !e.is_temporary() || tries == 2 {
                        return Err(e);
                    }
                    tries += 1;
                    tracing::debug!(key = %key, error = %e, "creating the multipart upload again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                }
            }
        }
    }

    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        if number == 0 || u64::from(number) > corral_domain::parts::MAX_PARTS {
            return Err(
                Error::invalid_input(format!("part number {number} is outside 1..=10000"))
                    .with_operation(Operation::UploadPart),
            );
        }
        let mp = self.multipart();
        let data = self.owned(data);
        let path = to_path(key)?;
        let part = mp
            .put_part(
                &path,
                &upload.0,
                (number - 1) as usize,
                PutPayload::from_bytes(data),
            )
            .await
            .map_err(|e| self.err(e, Operation::UploadPart, key))?;
        Ok(CompletedPart {
            number,
            etag: part.content_id,
        })
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        mut parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        parts.sort_by_key(|p| p.number);
        let contiguous = parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.number as usize == i + 1);
        if parts.is_empty() || !contiguous {
            return Err(Error::invalid_input(
                "a multipart upload completes with parts 1..=N, each exactly once",
            )
            .with_operation(Operation::CompleteMultipart)
            .with_path(key.as_str().to_owned()));
        }
        let mp = self.multipart();
        let path = to_path(key)?;
        let ids: Vec<PartId> = parts
            .into_iter()
            .map(|p| PartId { content_id: p.etag })
            .collect();
        let expected = crate::s3::multipart_etag(ids.iter().map(|p| p.content_id.as_str()));
        let mut again = matches!(self.flavor, Flavor::S3 { .. });
        loop {
            let e = match mp.complete_multipart(&path, &upload.0, ids.clone()).await {
                Ok(r) => return Ok(PutResult { etag: r.e_tag }),
                Err(e) => self.err(e, Operation::CompleteMultipart, key),
            };
            // The answer may have been lost after the server completed the
            // upload (a retry then finds no such upload): the object tells.
            if !(e.is_temporary() || e.kind() == ErrorKind::NotFound) || !again {
                return Err(e);
            }
            if let (Some(want), Ok(meta)) = (&expected, self.head(key).await)
                && meta.etag.as_deref().is_some_and(|got| same_etag(got, want))
            {
                tracing::info!(key = %key, "the answer to CompleteMultipartUpload was lost; the object is complete");
                return Ok(PutResult { etag: meta.etag });
            }
            if e.kind() == ErrorKind::NotFound {
                return Err(e);
            }
            again = false; // one more try of our own, then the caller aborts
        }
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        let mp = self.multipart();
        let path = to_path(key)?;
        mp.abort_multipart(&path, &upload.0)
            .await
            .map_err(|e| self.err(e, Operation::AbortMultipart, key))
    }

    async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<()> {
        match &self.flavor {
            Flavor::S3 { raw, .. } => raw.set_upload_expiry(days, replace).await,
            _ => Err(Error::unsupported(format!(
                "the {} backend has no bucket lifecycle rules",
                self.caps.name
            ))
            .with_operation(Operation::Configure)),
        }
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        match &self.flavor {
            Flavor::S3 { raw, .. } if self.caps.list_pending_uploads => {
                raw.list_multipart_uploads(prefix).await
            }
            _ => Err(Error::unsupported(format!(
                "the {} backend cannot list pending multipart uploads",
                self.caps.name
            ))
            .with_operation(Operation::ListMultipart)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_keep_their_slash() {
        let p = to_path(&ObjectKey::from_raw("a/d/")).unwrap();
        assert_eq!(p.as_ref(), "a/d/");
        let p = to_path(&ObjectKey::from_raw("a/100% +#1")).unwrap();
        assert_eq!(p.as_ref(), "a/100% +#1");
        assert!(to_path(&ObjectKey::from_raw("a/../b")).is_err());
        assert!(to_path(&ObjectKey::from_raw("")).is_err());
        assert!(to_path(&ObjectKey::from_raw("/a")).is_err());
    }
}
