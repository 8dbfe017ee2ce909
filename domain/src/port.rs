//! The storage port: the one narrow trait every backend implements.
//!
//! It speaks in raw [`ObjectKey`]s of one bucket (or one directory, or one
//! in-memory store), not in virtual paths: confinement is the domain's job
//! ([`crate::SandboxRoot`]) and happens before a key reaches a backend and
//! after a listing comes back from one. Keeping the port at the key level
//! also lets the conformance suite plant objects beside a sandbox with the
//! same trait, as a raw client would.
//!
//! Operations mirror S3's, so a backend is a thin translation; each states
//! its capabilities so that callers never learn about a gap by failing.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;

use crate::capability::Capabilities;
use crate::error::{Error, Operation, Result};
use crate::key::ObjectKey;
use crate::node::SpecialKind;

/// A stream of bytes from a GET.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A lazily paginated listing: the next page is fetched when this one is consumed.
pub type ListStream = Pin<Box<dyn Stream<Item = Result<ListItem>> + Send>>;

/// What a HEAD or a listing says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The raw key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, if the backend reports it.
    pub last_modified: Option<SystemTime>,
    /// The entity tag, quotes included, if the backend reports it.
    pub etag: Option<String>,
    /// A checksum of the object's whole content, where the backend vouches
    /// for one: a download of the whole object is checked against it.
    pub checksum: Option<ContentChecksum>,
}

/// A checksum of an object's whole content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentChecksum {
    /// CRC-64/NVME: S3's full-object `x-amz-checksum-crc64nvme`, which
    /// corral's uploads ask for and which survives multipart uploads.
    Crc64Nvme(u64),
    /// MD5: an S3 ETag that is a plain MD5 (see [`etag_md5`]).
    Md5([u8; 16]),
}

impl fmt::Display for ContentChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Crc64Nvme(c) => write!(f, "CRC-64/NVME {c:016x}"),
            Self::Md5(m) => {
                f.write_str("MD5 ")?;
                m.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// The MD5 an entity tag spells, if it is a plain one: 32 hex digits,
/// quoted or not. S3 gives one for an object stored by a single PUT (a
/// multipart upload's ETag ends in `-<parts>`), unless the object is
/// encrypted with SSE-KMS or SSE-C, which the backend has to rule out.
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag);
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// A byte range of a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end`, end exclusive.
    Bounded(Range<u64>),
    /// From an offset to the end.
    From(u64),
    /// The last N bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The absolute range this selects in an object of `size` bytes, or an
    /// error if it selects nothing valid. Used to check what a server returned.
    pub fn resolve(&self, size: u64) -> Result<Range<u64>> {
        let r = match *self {
            Self::Bounded(ref r) => r.start..r.end.min(size),
            Self::From(start) => start..size,
            Self::Suffix(n) => size.saturating_sub(n)..size,
        };
        if r.start > r.end || (r.start >= size && size > 0) {
            return Err(Error::invalid_input(format!(
                "range {self:?} is outside an object of {size} bytes"
            )));
        }
        Ok(r)
    }
}

/// The answer to a GET.
pub struct GetResult {
    /// The object.
    pub meta: ObjectMeta,
    /// The bytes the body holds.
    pub range: Range<u64>,
    /// The body.
    pub body: ByteStream,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Whether a PUT may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Replace whatever is there.
    #[default]
    Overwrite,
    /// Fail with [`crate::ErrorKind::AlreadyExists`] if the key exists
    /// (where [`Capabilities::conditional_create`] holds).
    Create,
}

/// How a whole object is stored ([`ObjectStorage::put_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// Whether an existing object may be replaced.
    pub mode: PutMode,
    /// The modification time to record (as a client set it), where the
    /// backend keeps one ([`Capabilities::set_modified`]).
    pub modified: Option<SystemTime>,
}

/// The answer to a PUT or a completed multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResult {
    /// The new object's entity tag, if reported.
    pub etag: Option<String>,
}

/// Options of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOptions {
    /// Group keys below the next `/` into [`ListItem::Prefix`] entries.
    pub delimiter: bool,
    /// Start after this key (for resuming a listing page by page).
    pub start_after: Option<ObjectKey>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListItem {
    /// An object.
    Object(ObjectMeta),
    /// A common prefix (ending in `/`), with [`ListOptions::delimiter`].
    Prefix(ObjectKey),
    /// An entry of a File sandbox that is neither a file nor a directory
    /// (a link, a FIFO, …; see [`crate::node`]): never shown to a user, but
    /// reported so that listings count it and a recursive remove removes it.
    Special(ObjectKey, SpecialKind),
}

impl ListItem {
    /// The raw key or prefix.
    pub fn key(&self) -> &ObjectKey {
        match self {
            Self::Object(m) => &m.key,
            Self::Prefix(p) | Self::Special(p, _) => p,
        }
    }
}

/// The server's identifier of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(pub String);

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A part accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based part number.
    pub number: u32,
    /// The part's entity tag, needed to complete the upload.
    pub etag: String,
}

/// A part stored in a pending multipart upload, as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    /// 1-based part number.
    pub number: u32,
    /// Its entity tag, needed to complete the upload.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

impl StoredPart {
    /// The part as [`ObjectStorage::complete_multipart`] takes it.
    pub fn completed(&self) -> CompletedPart {
        CompletedPart {
            number: self.number,
            etag: self.etag.clone(),
        }
    }
}

/// An upload that was created and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it will create.
    pub key: ObjectKey,
    /// Its id.
    pub upload_id: UploadId,
    /// When it was created, if reported.
    pub initiated: Option<SystemTime>,
}

/// Object storage as corral needs it. See the [module docs](self).
#[async_trait]
pub trait ObjectStorage: Send + Sync + fmt::Debug + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> &Capabilities;

    /// The object's metadata; [`crate::ErrorKind::NotFound`] if absent.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// The object's bytes, whole or a range. A whole object's `meta`
    /// carries the checksum the backend vouches for, as [`Self::head`]'s
    /// does, where the backend tells it with the bytes (S3 does).
    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult>;

    /// Stores a whole object.
    ///
    /// `data` may point into the transfer cache, whose buffers come back to
    /// the cache only when every clone is dropped: an implementation that
    /// keeps the bytes after returning (an in-memory store) must copy them.
    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult>;

    /// Stores a whole object with options; by default [`Self::put`], then
    /// [`Self::set_modified`] where a time is asked for and kept.
    async fn put_with(
        &self,
        key: &ObjectKey,
        data: Bytes,
        options: PutOptions,
    ) -> Result<PutResult> {
        let r = self.put(key, data, options.mode).await?;
        if let Some(t) = options.modified
            && self.capabilities().set_modified
        {
            self.set_modified(key, t).await?;
        }
        Ok(r)
    }

    /// Replaces the object only if its entity tag is still `etag` (S3
    /// `If-Match`): [`crate::ErrorKind::Conflict`] if it changed or is gone,
    /// so that two writers of one small document never lose each other's
    /// change. [`crate::ErrorKind::Unsupported`] by default (File: a local
    /// file is edited by rename instead).
    async fn put_if_match(&self, key: &ObjectKey, data: Bytes, etag: &str) -> Result<PutResult> {
        let _ = (data, etag);
        Err(
            Error::unsupported("this backend cannot replace an object only if it is unchanged")
                .with_key(key.as_str().to_owned()),
        )
    }

    /// Records `modified` as the object's modification time, as a client
    /// set it (S3: the `mtime` metadata that rclone also uses, by a copy of
    /// the object onto itself; File: the file's own time). Where
    /// [`Capabilities::set_modified`] holds.
    async fn set_modified(&self, key: &ObjectKey, modified: SystemTime) -> Result<()> {
        let _ = (key, modified);
        Err(Error::unsupported(format!(
            "the {} backend keeps no modification times of its own",
            self.capabilities().name
        ))
        .with_operation(Operation::Put))
    }

    /// Deletes objects in batches; absent keys count as deleted. Returns the
    /// keys that could not be deleted, each with its error.
    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>>;

    /// Lists keys starting with `prefix` (raw: no `/` is added), in key order.
    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream;

    /// Copies an object within the backend.
    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()>;

    /// Moves an object within the backend, replacing `to`. Atomic where
    /// [`Capabilities::atomic_rename`] holds; otherwise a copy then a delete.
    async fn rename(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.copy(from, to).await?;
        let failed = self.delete_many(vec![from.clone()]).await?;
        match failed.into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(e),
        }
    }

    /// Moves an object within the backend unless something is at `to`
    /// ([`crate::ErrorKind::AlreadyExists`]). Atomic where the backend can
    /// refuse a rename over a name (File); by default `to` is looked up
    /// first, so a writer racing in between may be replaced.
    async fn rename_no_replace(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        match self.head(to).await {
            Ok(_) => {
                return Err(Error::new(
                    crate::error::ErrorKind::AlreadyExists,
                    "the target exists",
                )
                .with_operation(Operation::Copy)
                .with_key(to.as_str()));
            }
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.rename(from, to).await
    }

    /// Starts a multipart upload.
    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId>;

    /// Uploads part `number` (1-based) of an upload. As with [`Self::put`],
    /// `data` must not be kept after returning: copy it to keep it.
    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart>;

    /// Uploads part `number` as bytes `range` of the existing object
    /// `source` of this backend, without the bytes passing through corral
    /// (S3's UploadPartCopy). `if_match`: the source's entity tag; the part
    /// fails with [`crate::ErrorKind::Conflict`] if the source changed.
    /// Where [`Capabilities::part_copy`] holds.
    async fn upload_part_copy(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        source: &ObjectKey,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<CompletedPart> {
        let _ = (key, upload, number, source, range, if_match);
        Err(Error::unsupported(format!(
            "the {} backend cannot copy a part from an object",
            self.capabilities().name
        ))
        .with_operation(Operation::UploadPart))
    }

    /// Completes an upload: the object is the parts concatenated in
    /// part-number order (`parts` may be given in any order).
    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult>;

    /// Aborts an upload, freeing its parts.
    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()>;

    /// Installs a rule on the bucket that aborts incomplete multipart uploads
    /// `days` after they start (refusing to replace existing rules unless `replace`).
    async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<()> {
        let _ = (days, replace);
        Err(Error::unsupported(format!(
            "the {} backend has no bucket lifecycle rules",
            self.capabilities().name
        ))
        .with_operation(Operation::Configure))
    }

    /// Uploads under `prefix` that were neither completed nor aborted.
    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        let _ = prefix;
        Err(Error::unsupported(format!(
            "the {} backend cannot list pending multipart uploads",
            self.capabilities().name
        ))
        .with_operation(Operation::ListMultipart))
    }

    /// The parts stored so far in a pending upload, in part order (where
    /// [`Capabilities::list_pending_uploads`](crate::Capabilities) holds).
    async fn list_parts(&self, key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        let _ = upload;
        Err(Error::unsupported(format!(
            "the {} backend cannot list the parts of an upload",
            self.capabilities().name
        ))
        .with_operation(Operation::ListMultipart)
        .with_key(key.as_str().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_a_size() {
        assert_eq!(ByteRange::Bounded(2..5).resolve(10).unwrap(), 2..5);
        assert_eq!(ByteRange::Bounded(8..50).resolve(10).unwrap(), 8..10);
        assert_eq!(ByteRange::From(4).resolve(10).unwrap(), 4..10);
        assert_eq!(ByteRange::Suffix(3).resolve(10).unwrap(), 7..10);
        assert_eq!(ByteRange::Suffix(30).resolve(10).unwrap(), 0..10);
        assert!(ByteRange::From(10).resolve(10).is_err());
        #[allow(clippy::reversed_empty_ranges)] // The point of the test.
        let reversed = ByteRange::Bounded(5..2);
        assert!(reversed.resolve(10).is_err());
    }

    #[test]
    fn only_plain_md5_etags_spell_an_md5() {
        let md5 = etag_md5("\"9e107d9d372bb6826bd81d3542a419d6\"").unwrap();
        assert_eq!(md5[0], 0x9e);
        assert_eq!(md5[15], 0xd6);
        assert_eq!(etag_md5("9E107D9D372BB6826BD81D3542A419D6"), Some(md5));
        for not in [
            "\"9e107d9d372bb6826bd81d3542a419d6-2\"",
            "\"9e107d9d372bb6826bd81d3542a419d\"",
            "\"9e107d9d372bb6826bd81d3542a419zz\"",
            "W/\"9e107d9d372bb6826bd81d3542a419d6\"",
            "\"\"",
            "\"é07d9d372bb6826bd81d3542a419d6\"",
        ] {
            assert_eq!(etag_md5(not), None, "{not}");
        }
    }
}
