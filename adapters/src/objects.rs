//! [`Objects`]: the port's object operations over an `object_store` store
//! and its multipart API, shared by the S3 backend and the store backend
//! (memory and embedders' stores). Each backend adds what is its own:
//! listing, HEAD, checksums, retries of lost answers.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ObjectMeta, PutMode, PutResult, UploadId,
};
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::{Path, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

use crate::errors::{Context, from_object_store};

/// A store, its multipart API and what errors may say about it.
#[derive(Clone)]
pub(crate) struct Objects {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) multipart: Arc<dyn MultipartStore>,
    pub(crate) ctx: Context,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("backend", &self.ctx.backend)
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
        Error::invalid_input(format!("not a valid object key: {e}")).with_key(s.to_owned())
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
pub(crate) fn same_etag(a: &str, b: &str) -> bool {
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
pub(crate) fn check_prefix(prefix: &ObjectKey) -> Result<()> {
    let p = prefix.as_str();
    if !(p.is_empty() || p.ends_with('/')) || p.starts_with('/') {
        return Err(Error::invalid_input(format!(
            "listing prefix {p:?} must be empty or end with `/`"
        ))
        .with_operation(Operation::List));
    }
    Ok(())
}

impl Objects {
    pub(crate) fn err(&self, e: object_store::Error, op: Operation, key: &ObjectKey) -> Error {
        from_object_store(e, op, key.as_str(), &self.ctx)
    }

    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
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

    pub(crate) async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
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

    pub(crate) async fn put(
        &self,
        key: &ObjectKey,
        data: Bytes,
        mode: PutMode,
    ) -> Result<PutResult> {
        self.put_meta(key, data, mode, None).await
    }

    /// One PUT with `opts`; errors mapped (the caller refines their kind).
    async fn put_with_options(
        &self,
        key: &ObjectKey,
        data: Bytes,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let path = to_path(key)?;
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(r) => Ok(PutResult { etag: r.e_tag }),
            // object_store reads the ETag only after a 2xx: the object was stored.
            // Seen with s3s-fs for directory markers.
            Err(e) if e.to_string().contains("ETag Header missing") => Ok(PutResult::default()),
            Err(e) => Err(self.err(e, Operation::Put, key)),
        }
    }

    /// A PUT with one metadata entry (`x-amz-meta-NAME: VALUE` on S3).
    pub(crate) async fn put_meta(
        &self,
        key: &ObjectKey,
        data: Bytes,
        mode: PutMode,
        metadata: Option<(&'static str, String)>,
    ) -> Result<PutResult> {
        let mut attributes = object_store::Attributes::new();
        if let Some((name, value)) = metadata {
            attributes.insert(object_store::Attribute::Metadata(name.into()), value.into());
        }
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            attributes,
            ..PutOptions::default()
        };
        self.put_with_options(key, data, opts).await.map_err(|e| {
            // S3 answers 412 Precondition Failed to a create whose key exists.
            if mode == PutMode::Create && e.kind() == ErrorKind::Conflict {
                Error::new(ErrorKind::AlreadyExists, "the object already exists")
                    .with_operation(Operation::Put)
                    .with_key(key.as_str().to_owned())
            } else {
                e
            }
        })
    }

    /// A PUT that replaces the object only if its ETag is still `etag`.
    pub(crate) async fn put_if_match(
        &self,
        key: &ObjectKey,
        data: Bytes,
        etag: &str,
    ) -> Result<PutResult> {
        let opts = PutOptions {
            mode: object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(etag.to_owned()),
                version: None,
            }),
            ..PutOptions::default()
        };
        self.put_with_options(key, data, opts).await.map_err(|e| {
            // Changed (412), or gone: S3 answers 404 to If-Match on a missing key.
            if matches!(e.kind(), ErrorKind::Conflict | ErrorKind::NotFound) {
                Error::new(
                    ErrorKind::Conflict,
                    "the object changed since it was read (its ETag no longer matches)",
                )
                .with_operation(Operation::Put)
                .with_key(key.as_str().to_owned())
            } else {
                e
            }
        })
    }

    pub(crate) async fn delete_many(
        &self,
        keys: Vec<ObjectKey>,
    ) -> Result<Vec<(ObjectKey, Error)>> {
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

    pub(crate) async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        let (src, dst) = (to_path(from)?, to_path(to)?);
        self.store
            .copy(&src, &dst)
            .await
            .map_err(|e| self.err(e, Operation::Copy, from))
    }

    pub(crate) async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let path = to_path(key)?;
        let id = self
            .multipart
            .create_multipart(&path)
            .await
            .map_err(|e| self.err(e, Operation::CreateMultipart, key))?;
        Ok(UploadId(id))
    }

    pub(crate) async fn upload_part(
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
        let path = to_path(key)?;
        let part = self
            .multipart
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

    /// The parts in order, checked to be 1..=N, as object_store's ids.
    pub(crate) fn part_ids(key: &ObjectKey, mut parts: Vec<CompletedPart>) -> Result<Vec<PartId>> {
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
            .with_key(key.as_str().to_owned()));
        }
        Ok(parts
            .into_iter()
            .map(|p| PartId { content_id: p.etag })
            .collect())
    }

    pub(crate) async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        ids: Vec<PartId>,
    ) -> Result<PutResult> {
        let path = to_path(key)?;
        self.multipart
            .complete_multipart(&path, &upload.0, ids)
            .await
            .map(|r| PutResult { etag: r.e_tag })
            .map_err(|e| self.err(e, Operation::CompleteMultipart, key))
    }

    pub(crate) async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        let path = to_path(key)?;
        self.multipart
            .abort_multipart(&path, &upload.0)
            .await
            .map_err(|e| self.err(e, Operation::AbortMultipart, key))
    }
}
