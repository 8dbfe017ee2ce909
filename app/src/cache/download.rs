//! Download staging: ranged GETs of chunks into the transfer's slots, ahead
//! of the reader.
//!
//! The object is read in chunks of `C` bytes (chunk `k` is
//! `[k·C, (k+1)·C)`). Up to one chunk per slot is fetched ahead of the
//! reader, each by its own ranged GET; a fetch waits for a free slot, and a
//! slot is given back when the reader drops the chunk's [`Bytes`], so a slow
//! reader holds the read-ahead back (backpressure). A read far from the
//! current position restarts the read-ahead there (random access).
//!
//! Every chunk is checked against what is known: the range the server says
//! it returned, the number of bytes it sent, and the entity tag of the
//! object when the download started (a change means the object was replaced
//! mid-download: the download fails rather than mixing two versions).
//!
//! Where the backend vouches for a checksum of the whole object (S3's
//! full-object CRC-64/NVME, or an ETag that is a plain MD5), a reader that
//! reads it whole, in order, gets it checked too: each chunk is hashed on
//! the blocking pool while the reader uses it, and the last chunk is handed
//! out only if the checksums agree.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use corral_domain::port::{ByteRange, ContentChecksum, ObjectMeta};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use futures::StreamExt;
use md5::{Digest, Md5};
use tokio::task::JoinHandle;

use super::store::Slots;

/// A download staged through the cache: chunks read ahead with ranged GETs,
/// each checked (range, length, ETag); a slow reader holds the read-ahead back.
pub struct Download {
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    meta: ObjectMeta,
    chunk: u64,
    slots: Arc<Slots>,
    /// Chunks requested, in order, starting at the reader's chunk.
    pending: VecDeque<(u64, JoinHandle<Result<Bytes, Error>>)>,
    next_fetch: u64,
    /// The chunk the reader is in, kept for small reads within it.
    current: Option<(u64, Bytes)>,
    pos: u64,
    /// The checksum check, while the reader reads in order from the start.
    check: Option<ContentCheck>,
    /// The path errors name (the user's, not the bucket key), if set.
    path: Option<String>,
}

/// A running checksum of the object's content.
enum Hasher {
    Crc64(Box<crc_fast::Digest>),
    Md5(Md5),
}

impl Hasher {
    fn new(expected: ContentChecksum) -> Self {
        match expected {
            ContentChecksum::Crc64Nvme(_) => Self::Crc64(Box::new(crc_fast::Digest::new(
                crc_fast::CrcAlgorithm::Crc64Nvme,
            ))),
            ContentChecksum::Md5(_) => Self::Md5(Md5::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc64(d) => d.update(data),
            Self::Md5(d) => d.update(data),
        }
    }

    fn matches(self, expected: ContentChecksum) -> bool {
        match (self, expected) {
            (Self::Crc64(d), ContentChecksum::Crc64Nvme(want)) => d.finalize() == want,
            (Self::Md5(d), ContentChecksum::Md5(want)) => d.finalize()[..] == want[..],
            _ => false,
        }
    }
}

/// The checksum of the bytes handed out so far, computed off the reader's task.
struct ContentCheck {
    expected: ContentChecksum,
    /// The hasher, or the task adding the latest chunk to it.
    state: Option<Result<Hasher, JoinHandle<Hasher>>>,
    /// Bytes hashed (or being hashed).
    upto: u64,
}

impl ContentCheck {
    fn new(expected: ContentChecksum) -> Self {
        Self {
            expected,
            state: Some(Ok(Hasher::new(expected))),
            upto: 0,
        }
    }

    async fn hasher(&mut self) -> Result<Hasher, Error> {
        match self.state.take() {
            Some(Ok(h)) => Ok(h),
            Some(Err(task)) => task
                .await
                .map_err(|e| Error::new(ErrorKind::Other, format!("a checksum task failed: {e}"))),
            None => Err(Error::new(ErrorKind::Other, "a checksum task was lost")),
        }
    }

    /// Adds `bytes`, in the background.
    async fn feed(&mut self, bytes: Bytes) -> Result<(), Error> {
        let mut h = self.hasher().await?;
        self.upto += bytes.len() as u64;
        self.state = Some(Err(tokio::task::spawn_blocking(move || {
            h.update(&bytes);
            h
        })));
        Ok(())
    }

    /// Whether everything fed has the expected checksum.
    async fn matches(&mut self) -> Result<bool, Error> {
        Ok(self.hasher().await?.matches(self.expected))
    }
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("key", &self.key)
            .field("size", &self.meta.size)
            .field("chunk", &self.chunk)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

fn invalid_response(key: &ObjectKey, message: String) -> Error {
    Error::new(ErrorKind::InvalidResponse, message)
        .with_operation(corral_domain::Operation::Get)
        .with_path(key.as_str().to_owned())
}

async fn fetch(
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    slots: Arc<Slots>,
    range: std::ops::Range<u64>,
    etag: Option<String>,
) -> Result<Bytes, Error> {
    let len = (range.end - range.start) as usize;
    let mut buf = slots.take(len).await;
    let r = storage
        .get(&key, Some(ByteRange::Bounded(range.clone())))
        .await?;
    if r.range != range {
        return Err(invalid_response(
            &key,
            format!("asked for bytes {range:?}, the server sent {:?}", r.range),
        ));
    }
    if let (Some(want), Some(got)) = (&etag, &r.meta.etag)
        && want != got
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            "the object was replaced during the download (its ETag changed); download it again",
        )
        .with_path(key.as_str().to_owned()));
    }
    let mut at = 0usize;
    let mut body = r.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if at + chunk.len() > len {
            return Err(invalid_response(
                &key,
                format!("the server sent more than the {len} bytes of range {range:?}"),
            ));
        }
        buf.write_at(at, &chunk)?;
        at += chunk.len();
    }
    if at != len {
        return Err(invalid_response(
            &key,
            format!("the server sent {at} of the {len} bytes of range {range:?} (connection cut?)"),
        ));
    }
    Ok(buf.freeze(len))
}

impl Download {
    pub(crate) fn new(
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        meta: ObjectMeta,
        chunk: u64,
        slots: Arc<Slots>,
    ) -> Self {
        Self {
            storage,
            key,
            chunk: chunk.max(1),
            slots,
            pending: VecDeque::new(),
            next_fetch: 0,
            current: None,
            pos: 0,
            check: meta.checksum.map(ContentCheck::new),
            path: None,
            meta,
        }
    }

    /// Names `path` in errors instead of the object key (the sandbox passes
    /// the user's path, so that no bucket layout shows).
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.path = Some(path.into());
    }

    fn named(&self, e: Error) -> Error {
        match &self.path {
            Some(p) => e.with_path(p.clone()),
            None => e,
        }
    }

    /// The object as it was when the download started.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    fn chunks(&self) -> u64 {
        self.meta.size.div_ceil(self.chunk)
    }

    /// Keeps one fetch per slot in flight, from the reader's chunk on.
    fn fill(&mut self) {
        while self.pending.len() < self.slots.count() && self.next_fetch < self.chunks() {
            let k = self.next_fetch;
            let range = k * self.chunk..((k + 1) * self.chunk).min(self.meta.size);
            let task = tokio::spawn(fetch(
                Arc::clone(&self.storage),
                self.key.clone(),
                Arc::clone(&self.slots),
                range,
                self.meta.etag.clone(),
            ));
            self.pending.push_back((k, task));
            self.next_fetch += 1;
        }
    }

    fn restart_at(&mut self, k: u64) {
        for (_, task) in self.pending.drain(..) {
            task.abort();
        }
        self.next_fetch = k;
    }

    /// Chunk `k`, from the read-ahead.
    async fn chunk_at(&mut self, k: u64) -> Result<Bytes, Error> {
        if let Some((c, bytes)) = &self.current
            && *c == k
        {
            return Ok(bytes.clone());
        }
        // Drop the current chunk first: its slot may be needed.
        self.current = None;
        while let Some((c, _)) = self.pending.front() {
            if *c >= k {
                break;
            }
            let (_, task) = self.pending.pop_front().expect("front exists");
            task.abort();
        }
        if self.pending.front().is_none_or(|(c, _)| *c != k) {
            self.restart_at(k);
        }
        self.fill();
        let (_, task) = self.pending.pop_front().expect("fill requested chunk k");
        let bytes = task
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("a download task failed: {e}")))??;
        self.current = Some((k, bytes.clone()));
        self.fill();
        Ok(bytes)
    }

    /// The next bytes in order (at most one chunk), or `None` at the end.
    /// Reading the whole object this way checks its checksum where one is known.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        match self.next_chunk_inner().await {
            Err(e) => Err(self.named(e)),
            ok => ok,
        }
    }

    async fn next_chunk_inner(&mut self) -> Result<Option<Bytes>, Error> {
        if self.pos >= self.meta.size {
            self.current = None;
            if self.meta.size == 0 {
                self.check_content().await?;
            }
            return Ok(None);
        }
        let bytes = self.read_at_inner(self.pos, usize::MAX).await?;
        if let Some(c) = &mut self.check {
            if c.upto == self.pos {
                c.feed(bytes.clone()).await?;
            } else {
                self.check = None; // not read in order: nothing to check
            }
        }
        self.pos += bytes.len() as u64;
        if self.pos == self.meta.size {
            self.check_content().await?;
        }
        Ok(Some(bytes))
    }

    /// Fails if the bytes read in order do not have the known checksum.
    async fn check_content(&mut self) -> Result<(), Error> {
        let Some(mut c) = self.check.take() else {
            return Ok(());
        };
        if c.upto != self.meta.size || c.matches().await? {
            return Ok(());
        }
        let hint = match c.expected {
            ContentChecksum::Md5(_) => {
                " (or the server's ETags are not MD5s: then set \"etagIsMd5\": false)"
            }
            ContentChecksum::Crc64Nvme(_) => "",
        };
        Err(Error::new(
            ErrorKind::InvalidResponse,
            format!(
                "the downloaded bytes do not match the object's checksum ({}): corrupted on the way{hint}",
                c.expected
            ),
        )
        .with_operation(corral_domain::Operation::Get)
        .with_path(self.key.as_str().to_owned()))
    }

    /// Up to `len` bytes at `offset`, without a copy; fewer at a chunk's end or
    /// the object's end, empty at or past the end.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Bytes, Error> {
        match self.read_at_inner(offset, len).await {
            Err(e) => Err(self.named(e)),
            ok => ok,
        }
    }

    async fn read_at_inner(&mut self, offset: u64, len: usize) -> Result<Bytes, Error> {
        if offset >= self.meta.size || len == 0 {
            return Ok(Bytes::new());
        }
        let k = offset / self.chunk;
        let bytes = self.chunk_at(k).await?;
        let start = (offset - k * self.chunk) as usize;
        let end = bytes.len().min(start.saturating_add(len));
        Ok(bytes.slice(start..end))
    }

    /// Moves the sequential reader to `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.pos = offset;
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        for (_, task) in self.pending.drain(..) {
            task.abort();
        }
    }
}
