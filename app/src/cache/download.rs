//! Download staging: ranged GETs of chunks, ahead of the reader.
//!
//! The object is read in chunks: a small first one of `H` bytes (256 KiB),
//! then chunks of `C` bytes (8 MiB): chunk 0 is `[0, H)`, chunk `k` is
//! `[H + (k-1)·C, H + k·C)`. Chunks are fetched ahead of the reader, each
//! by its own ranged GET. The read-ahead starts when the reader moves past
//! the first chunk, at one chunk beyond the reader's, and doubles each time
//! the reader moves on in order, up to the transfer's window
//! (`maxCloudCacheDownloadSize`): a reader that only looks at the start of
//! a file, or reads a small one, holds little. A read
//! far from the current position restarts the read-ahead there (random
//! access). A chunk takes its room in the cache when its GET starts (the
//! account's turn, [`super::pool`]) and gives it back when the reader has
//! dropped every piece of it: a slow reader holds the read-ahead back
//! (backpressure).
//!
//! A chunk's frames are written into its slot as they arrive (in memory
//! mode a buffer of exactly the chunk's size, so that what the cache counts
//! is what the process holds; in file mode its range of the cache file).
//! In memory mode the reader gets slices of the slot without a copy, each
//! keeping the slot until it is dropped; in file mode the bytes are read
//! back as the reader asks.
//!
//! Every chunk is checked against what is known: the range the server says
//! it returned, the number of bytes it sent, and the entity tag of the
//! object when the download started (a change means the object was replaced
//! mid-download: the download fails rather than mixing two versions).
//!
//! Where the backend vouches for a checksum of the whole object (S3's
//! full-object CRC-64/NVME, or an ETag that is a plain MD5), a reader that
//! reads it whole, in order, gets it checked too: the bytes are hashed on
//! the blocking pool while the reader uses them, and the last piece is
//! handed out only if the checksums agree.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use corral_domain::port::{ByteRange, ContentChecksum, ObjectMeta};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use futures::StreamExt;
use md5::{Digest, Md5};
use tokio::task::JoinHandle;

use super::store::{Slot, Stager};

/// The most bytes one piece read back from a file-mode chunk holds.
const FILE_PIECE: usize = 1 << 20;

/// The first chunk: what a reader that looks at a file's start holds.
const HEAD: u64 = 256 << 10;

/// Hash this many bytes at a time (one task on the blocking pool each).
const HASH_BATCH: u64 = 4 << 20;

/// A download staged through the cache: chunks read ahead with ranged GETs,
/// each checked (range, length, ETag); a slow reader holds the read-ahead back.
pub struct Download {
    storage: Arc<dyn ObjectStorage>,
    pub(super) key: ObjectKey,
    pub(super) meta: ObjectMeta,
    /// The size of chunks after the first.
    pub(super) chunk: u64,
    /// The size of the first chunk.
    head: u64,
    pub(super) stager: Stager,
    /// Chunks requested, in order, starting at the reader's chunk.
    pending: VecDeque<(u64, JoinHandle<Result<Chunk, Error>>)>,
    next_fetch: u64,
    /// Chunks to keep in flight beyond the reader's (ramps up).
    ahead: u64,
    /// The chunk the reader is in.
    current: Option<(u64, Chunk)>,
    pos: u64,
    /// The checksum check, while the reader reads in order from the start.
    check: Option<ContentCheck>,
    /// The path errors name (the user's, not the bucket key), if set.
    path: Option<String>,
}

/// A fetched chunk.
#[derive(Clone)]
struct Chunk(Arc<ChunkData>);

/// The chunk's slot, its first `len` bytes written.
struct ChunkData {
    slot: Slot,
    len: usize,
}

/// A slice of a chunk in memory: keeps the chunk's slot while it lives.
struct Piece {
    chunk: Arc<ChunkData>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        self.chunk
            .slot
            .in_memory()
            .map_or(&[][..], |m| &m[self.range.clone()])
    }
}

impl Chunk {
    fn len(&self) -> usize {
        self.0.len
    }

    /// Up to `max` bytes at `at`: a slice, no copy, in memory mode; read
    /// back from the cache file (a piece at most) in file mode.
    fn piece(&self, at: usize, max: usize) -> Result<Bytes, Error> {
        let len = self.len();
        if at >= len || max == 0 {
            return Ok(Bytes::new());
        }
        if self.0.slot.in_memory().is_some() {
            let end = len.min(at.saturating_add(max));
            return Ok(Bytes::from_owner(Piece {
                chunk: Arc::clone(&self.0),
                range: at..end,
            }));
        }
        let n = (len - at).min(max).min(FILE_PIECE);
        let mut buf = vec![0u8; n];
        self.0.slot.read_at(at, &mut buf)?;
        Ok(Bytes::from(buf))
    }
}

/// A running checksum of the object's content.
pub(super) enum Hasher {
    Crc64(Box<crc_fast::Digest>),
    Md5(Md5),
}

impl Hasher {
    pub(super) fn new(expected: ContentChecksum) -> Self {
        match expected {
            ContentChecksum::Crc64Nvme(_) => Self::Crc64(Box::new(crc_fast::Digest::new(
                crc_fast::CrcAlgorithm::Crc64Nvme,
            ))),
            ContentChecksum::Md5(_) => Self::Md5(Md5::new()),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc64(d) => d.update(data),
            Self::Md5(d) => d.update(data),
        }
    }

    /// The CRC-64/NVME so far (of a CRC-64 hasher).
    pub(super) fn crc64(&self) -> Option<u64> {
        match self {
            Self::Crc64(d) => Some(d.finalize()),
            Self::Md5(_) => None,
        }
    }

    pub(super) fn matches(self, expected: ContentChecksum) -> bool {
        match (self, expected) {
            (Self::Crc64(d), ContentChecksum::Crc64Nvme(want)) => d.finalize() == want,
            (Self::Md5(d), ContentChecksum::Md5(want)) => d.finalize()[..] == want[..],
            _ => false,
        }
    }
}

/// The checksum of the bytes handed out so far, computed off the reader's
/// task, a batch at a time.
struct ContentCheck {
    expected: ContentChecksum,
    /// The hasher, or the task adding the latest batch to it.
    state: Option<Result<Hasher, JoinHandle<Hasher>>>,
    /// Pieces handed out and not yet hashed.
    batch: Vec<Bytes>,
    batched: u64,
    /// Bytes handed out (hashed or batched).
    upto: u64,
}

impl ContentCheck {
    pub(super) fn new(expected: ContentChecksum) -> Self {
        Self {
            expected,
            state: Some(Ok(Hasher::new(expected))),
            batch: Vec::new(),
            batched: 0,
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

    /// Adds `bytes`; hashes in the background once a batch is full.
    async fn feed(&mut self, bytes: Bytes) -> Result<(), Error> {
        self.upto += bytes.len() as u64;
        self.batched += bytes.len() as u64;
        self.batch.push(bytes);
        if self.batched >= HASH_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let mut h = self.hasher().await?;
        self.state = Some(Err(tokio::task::spawn_blocking(move || {
            for b in &batch {
                h.update(b);
            }
            h
        })));
        Ok(())
    }

    /// Whether everything fed has the expected checksum.
    async fn matches(&mut self) -> Result<bool, Error> {
        self.flush().await?;
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

pub(super) fn invalid_response(key: &ObjectKey, message: String) -> Error {
    Error::new(ErrorKind::InvalidResponse, message)
        .with_operation(corral_domain::Operation::Get)
        .with_key(key.as_str().to_owned())
}

/// A ranged GET of `range` of `key`, checked: the range the server says it
/// sent, and the object's entity tag when the download started (`etag`).
pub(super) async fn get_checked(
    storage: &Arc<dyn ObjectStorage>,
    key: &ObjectKey,
    range: &std::ops::Range<u64>,
    etag: Option<&str>,
) -> Result<corral_domain::port::GetResult, Error> {
    let r = storage
        .get(key, Some(ByteRange::Bounded(range.clone())))
        .await?;
    if r.range != *range {
        return Err(invalid_response(
            key,
            format!("asked for bytes {range:?}, the server sent {:?}", r.range),
        ));
    }
    if let (Some(want), Some(got)) = (etag, &r.meta.etag)
        && want != got
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            "the object was replaced during the download (its ETag changed); download it again",
        )
        .with_key(key.as_str().to_owned()));
    }
    Ok(r)
}

pub(super) fn mismatch(key: &ObjectKey, expected: ContentChecksum) -> Error {
    let hint = match expected {
        ContentChecksum::Md5(_) => {
            " (or the server's ETags are not MD5s: then set \"etagIsMd5\": false)"
        }
        ContentChecksum::Crc64Nvme(_) => "",
    };
    Error::new(
        ErrorKind::InvalidResponse,
        format!(
            "the downloaded bytes do not match the object's checksum ({expected}): corrupted on the way{hint}"
        ),
    )
    .with_operation(corral_domain::Operation::Get)
    .with_key(key.as_str().to_owned())
}

/// One chunk to fetch: where from, its window share, what it must match.
pub(super) struct Fetch {
    pub(super) storage: Arc<dyn ObjectStorage>,
    pub(super) key: ObjectKey,
    pub(super) stager: Stager,
    pub(super) range: std::ops::Range<u64>,
    pub(super) etag: Option<String>,
    pub(super) share: tokio::sync::OwnedSemaphorePermit,
}

/// The server sent more than the `len` bytes of `range`.
pub(super) fn too_long(key: &ObjectKey, len: u64, range: &std::ops::Range<u64>) -> Error {
    invalid_response(
        key,
        format!("the server sent more than the {len} bytes of range {range:?}"),
    )
}

/// The server sent `got` of the `len` bytes of `range`.
pub(super) fn cut_short(
    key: &ObjectKey,
    got: u64,
    len: u64,
    range: &std::ops::Range<u64>,
) -> Error {
    invalid_response(
        key,
        format!("the server sent {got} of the {len} bytes of range {range:?} (connection cut?)"),
    )
}

async fn fetch(f: Fetch) -> Result<Chunk, Error> {
    let Fetch {
        storage,
        key,
        stager,
        range,
        etag,
        share,
    } = f;
    let len = (range.end - range.start) as usize;
    // The chunk's room in the cache, before a byte moves.
    let mut slot = stager.slot(len, share).await?;
    let r = get_checked(&storage, &key, &range, etag.as_deref()).await?;
    let mut at = 0usize;
    let mut body = r.body;
    while let Some(frame) = body.next().await {
        let frame = frame?;
        if frame.is_empty() {
            continue;
        }
        if at + frame.len() > len {
            return Err(too_long(&key, len as u64, &range));
        }
        slot.write_at(at, &frame)?;
        at += frame.len();
    }
    if at != len {
        return Err(cut_short(&key, at as u64, len as u64, &range));
    }
    Ok(Chunk(Arc::new(ChunkData { slot, len })))
}

impl Download {
    pub(crate) fn new(
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        meta: ObjectMeta,
        chunk: u64,
        stager: Stager,
    ) -> Self {
        let chunk = chunk.max(1);
        Self {
            storage,
            key,
            chunk,
            head: HEAD.min(chunk),
            stager,
            pending: VecDeque::new(),
            next_fetch: 0,
            ahead: 0,
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

    pub(super) fn named(&self, e: Error) -> Error {
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
        if self.meta.size <= self.head {
            return u64::from(self.meta.size > 0);
        }
        1 + (self.meta.size - self.head).div_ceil(self.chunk)
    }

    /// The chunk that holds byte `offset`.
    fn chunk_of(&self, offset: u64) -> u64 {
        if offset < self.head {
            0
        } else {
            1 + (offset - self.head) / self.chunk
        }
    }

    /// Where chunk `k` starts.
    fn start_of(&self, k: u64) -> u64 {
        if k == 0 {
            0
        } else {
            self.head + (k - 1) * self.chunk
        }
    }

    fn range_of(&self, k: u64) -> std::ops::Range<u64> {
        let start = self.start_of(k);
        let len = if k == 0 { self.head } else { self.chunk };
        start..(start + len).min(self.meta.size)
    }

    /// The fetch of `range` of this object, with its window share.
    pub(super) fn fetch_of(
        &self,
        range: std::ops::Range<u64>,
        share: tokio::sync::OwnedSemaphorePermit,
    ) -> Fetch {
        Fetch {
            storage: Arc::clone(&self.storage),
            key: self.key.clone(),
            stager: self.stager.clone(),
            range,
            etag: self.meta.etag.clone(),
            share,
        }
    }

    fn spawn_fetch(&mut self, k: u64, share: tokio::sync::OwnedSemaphorePermit) {
        let task = tokio::spawn(fetch(self.fetch_of(self.range_of(k), share)));
        self.pending.push_back((k, task));
        self.next_fetch = k + 1;
    }

    /// Keeps the read-ahead's chunks in flight, from the reader's chunk on,
    /// as far as the window has room now.
    fn fill(&mut self) {
        while (self.pending.len() as u64) < self.ahead && self.next_fetch < self.chunks() {
            let k = self.next_fetch;
            let len = self.range_of(k);
            let Some(share) = self.stager.window.try_take(len.end - len.start) else {
                break;
            };
            self.spawn_fetch(k, share);
        }
    }

    fn restart_at(&mut self, k: u64) {
        for (_, task) in self.pending.drain(..) {
            task.abort();
        }
        self.next_fetch = k;
        self.ahead = 0;
    }

    /// Chunk `k`, from the read-ahead.
    async fn chunk_at(&mut self, k: u64) -> Result<Chunk, Error> {
        if let Some((c, chunk)) = &self.current
            && *c == k
        {
            return Ok(chunk.clone());
        }
        // Drop the current chunk first: its room may be needed.
        let moved_on = self.current.take().is_some_and(|(c, _)| c + 1 == k);
        while let Some((c, _)) = self.pending.front() {
            if *c >= k {
                break;
            }
            let (_, task) = self.pending.pop_front().expect("front exists");
            task.abort();
        }
        if self.pending.front().is_none_or(|(c, _)| *c != k) {
            let ahead = self.ahead;
            self.restart_at(k);
            if moved_on {
                // In order, with nothing requested yet (the read-ahead had
                // not started): the ramp goes on.
                self.ahead = ahead;
            }
        }
        if moved_on {
            // Read in order: read further ahead, up to the window.
            let most = (self.stager.window.size() / self.chunk).max(1);
            self.ahead = if self.ahead == 0 {
                1
            } else {
                (self.ahead * 2).min(most)
            };
        }
        if self.pending.is_empty() {
            // The reader needs this one: wait for the window (shares of
            // aborted fetches come back as their tasks end).
            let range = self.range_of(k);
            let share = self.stager.window.take(range.end - range.start).await;
            self.spawn_fetch(k, share);
        }
        self.fill();
        let (_, task) = self.pending.pop_front().expect("chunk k was requested");
        let chunk = task
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("a download task failed: {e}")))??;
        self.current = Some((k, chunk.clone()));
        self.fill();
        Ok(chunk)
    }

    /// The next bytes in order (a piece of at most one chunk), or `None` at
    /// the end. Reading the whole object this way checks its checksum where
    /// one is known.
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
        } else if self.start_of(self.chunk_of(self.pos)) == self.pos
            && let Some(c) = &mut self.check
        {
            // A chunk's end: its pieces go to be hashed now, so that the
            // batch never holds a chunk the window needs back.
            c.flush().await?;
        }
        Ok(Some(bytes))
    }

    /// The rest of the current chunk in order, as pieces (no copy in memory
    /// mode), or `None` at the end; see [`Self::next_chunk`].
    pub async fn next_pieces(&mut self) -> Result<Option<Vec<Bytes>>, Error> {
        let Some(first) = self.next_chunk().await? else {
            return Ok(None);
        };
        let mut out = vec![first];
        while self.pos < self.meta.size && self.start_of(self.chunk_of(self.pos)) != self.pos {
            match self.next_chunk().await? {
                Some(b) => out.push(b),
                None => break,
            }
        }
        Ok(Some(out))
    }

    /// Fails if the bytes read in order do not have the known checksum.
    async fn check_content(&mut self) -> Result<(), Error> {
        let Some(mut c) = self.check.take() else {
            return Ok(());
        };
        if c.upto != self.meta.size || c.matches().await? {
            return Ok(());
        }
        Err(mismatch(&self.key, c.expected))
    }

    /// Up to `len` bytes at `offset`, without a copy in memory mode; fewer
    /// at a piece's end or the object's end, empty at or past the end.
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
        let k = self.chunk_of(offset);
        let chunk = self.chunk_at(k).await?;
        let start = (offset - self.start_of(k)) as usize;
        chunk.piece(start, len)
    }

    /// Exactly `len` bytes at `offset` (fewer only at the end of the
    /// object), copied together from the pieces.
    pub async fn read_full(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let want = len.min(self.meta.size.saturating_sub(offset) as usize);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let piece = self
                .read_at(offset + out.len() as u64, want - out.len())
                .await?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
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
