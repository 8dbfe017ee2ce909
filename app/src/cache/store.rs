//! Where staged bytes live: memory buffers taken when a slot needs one, or
//! byte ranges of one cache file.
//!
//! A *slot* holds one part being filled or one chunk being downloaded. It
//! is taken when the part starts filling or the chunk starts downloading,
//! with two shares: one of its transfer's window (the per-transfer limit,
//! waited for by the transfer itself: backpressure) and one of the cache
//! (the account's turn, [`super::pool`]). Both come back when the last
//! [`Bytes`] made from the slot is dropped — after the backend has sent
//! the part, or after the reader has used the chunk.
//!
//! In **memory mode** a slot's buffer is an anonymous mapping taken from
//! the cache's spare buffers (or made), and given back to them when the slot
//! is; spare buffers nobody wants are returned to the system
//! ([`super::pool`]).
//!
//! In **file mode** a slot is a byte range of the cache file, written with
//! `pwrite` and read with `pread`. The file is never mapped, so nothing a
//! another process does to it can crash corral. It is created sparse at the
//! cache size, locked against a second process, never truncated by corral,
//! and its contents are never trusted: every byte of a slot is written
//! before it is read. Past the cache's bytes it holds a *canary*, a random
//! generation number: a truncation (log rotation, a temp cleaner, an
//! operator's mistake) removes it, and since the holes it leaves read back
//! as zeros, each slot checks the canary before and after it reads its
//! bytes back. A slot written before a truncation fails with an error
//! naming the file; the file is then re-armed with a new generation, so the
//! transfers that start after it work again.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use corral_domain::parts::human;
use corral_domain::{Error, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{Account, PoolInner, Reservation};

/// The cache file.
pub(crate) struct CacheFile {
    file: File,
    path: PathBuf,
    /// Where the canary is (the cache's size).
    canary_at: u64,
    /// The canary now: the generation slots are written in.
    generation: std::sync::atomic::AtomicU64,
    rearm: std::sync::Mutex<()>,
}

impl std::fmt::Debug for CacheFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn cache_err(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).with_setting("cloudCacheFile")
}

impl CacheFile {
    /// Opens (or creates, sparse) the cache file of at least `size` bytes and locks it.
    pub(crate) fn open(path: &Path, size: u64) -> Result<Self, Error> {
        let shown = path.display();
        let file = match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(cache_err(format!(
                        "the cache file (cloudCacheFile) {shown} is not a regular file"
                    )));
                }
                if meta.len() < size {
                    return Err(cache_err(format!(
                        "the cache file (cloudCacheFile) {shown} is {} but must hold the whole cache: at least {} ({size} bytes); grow it or lower the cache size (maxCloudCacheSize; the file is never truncated)",
                        human(meta.len()),
                        human(size)
                    )));
                }
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| {
                        cache_err(format!("the cache file (cloudCacheFile) {shown}: {e}"))
                    })?
            }
            Err(e) if e.kind() == IoKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| {
                        cache_err(format!(
                            "the cache file (cloudCacheFile) {shown}: cannot create it: {e}"
                        ))
                    })?;
                // Sparse: no disk block is used until a slot is written.
                file.set_len(size).map_err(|e| {
                    cache_err(format!(
                        "the cache file (cloudCacheFile) {shown}: cannot size it: {e}"
                    ))
                })?;
                file
            }
            Err(e) => {
                return Err(cache_err(format!(
                    "the cache file (cloudCacheFile) {shown}: {e}"
                )));
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(cache_err(format!(
                    "the cache file (cloudCacheFile) {shown} is in use by another process; give each process its own cache file"
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(cache_err(format!(
                    "the cache file (cloudCacheFile) {shown}: cannot lock it: {e}"
                )));
            }
        }
        let this = Self {
            file,
            path: path.to_path_buf(),
            canary_at: size,
            generation: std::sync::atomic::AtomicU64::new(0),
            rearm: std::sync::Mutex::new(()),
        };
        this.arm().map_err(|e| {
            cache_err(format!(
                "the cache file (cloudCacheFile) {shown}: {}",
                e.message()
            ))
        })?;
        Ok(this)
    }

    /// Writes a new generation's canary after the cache's bytes.
    fn arm(&self) -> Result<u64, Error> {
        let mut g = [0u8; 8];
        let mut filled = 0;
        while filled < g.len() {
            filled +=
                rustix::rand::getrandom(&mut g[filled..], rustix::rand::GetRandomFlags::empty())
                    .map_err(|e| self.io_err("arming", &e.into()))?;
        }
        let generation = u64::from_le_bytes(g) | 1; // never 0, which a hole reads as
        self.file
            .write_all_at(&generation.to_le_bytes(), self.canary_at)
            .map_err(|e| self.io_err("writing", &e))?;
        self.generation
            .store(generation, std::sync::atomic::Ordering::SeqCst);
        Ok(generation)
    }

    /// The generation slots are written in now.
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the file still holds generation `g`'s canary; if the canary
    /// is gone (the file was truncated), re-arms it for later slots.
    fn intact(&self, g: u64) -> Result<(), Error> {
        let mut buf = [0u8; 8];
        let read = self.file.read_exact_at(&mut buf, self.canary_at);
        let now = u64::from_le_bytes(buf);
        if read.is_ok() && now == g {
            return Ok(());
        }
        let _one = self.rearm.lock().unwrap_or_else(|p| p.into_inner());
        if read.is_err() || now != self.generation() {
            tracing::error!(path = %self.path.display(), "the cache file was truncated or overwritten by another process: the transfers staged in it fail; later ones use it again");
            if let Err(e) = self.arm() {
                tracing::error!(path = %self.path.display(), error = %e, "cannot re-arm the cache file");
            }
        }
        Err(self.io_err(
            "reading",
            &std::io::Error::other(
                "another process truncated or overwrote it while this transfer was staged in it",
            ),
        ))
    }

    fn io_err(&self, what: &str, e: &std::io::Error) -> Error {
        // The transfer fails; the detail (which file, what the system said)
        // is for the operator, who set the file up.
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "the transfer cache failed: {what} the cache file {}: {e}",
                self.path.display()
            ),
        )
        .with_temporary(false)
        .with_setting("cloudCacheFile")
    }

    fn write_at(&self, data: &[u8], at: u64) -> Result<(), Error> {
        self.file
            .write_all_at(data, at)
            .map_err(|e| self.io_err("writing", &e))
    }

    /// Reads `buf` at `at` for a slot of generation `g`: checked against
    /// the canary before and after (a truncation cannot be undone, so a
    /// canary intact after the read means the bytes were the slot's).
    fn read_at(&self, buf: &mut [u8], at: u64, g: u64) -> Result<(), Error> {
        self.intact(g)?;
        self.read_raw(buf, at)?;
        self.intact(g)
    }

    fn read_raw(&self, buf: &mut [u8], at: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() == IoKind::UnexpectedEof {
                self.io_err(
                    "reading",
                    &std::io::Error::other(
                        "it is shorter than corral made it (truncated by another process?)",
                    ),
                )
            } else {
                self.io_err("reading", &e)
            }
        })
    }
}

/// Where a cache's slots live.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    Memory,
    File(Arc<CacheFile>),
}

/// A transfer's window: the most it may hold of the cache at once, in KiB
/// (`maxCloudCacheUploadSize`, `maxCloudCacheDownloadSize`).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    sem: Arc<Semaphore>,
    kib: u32,
}

/// KiB that hold `bytes`.
pub(crate) fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl Window {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = kib(bytes).max(1);
        Self {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// A share of `bytes` if free now.
    pub(crate) fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sem)
            .try_acquire_many_owned(kib(bytes).min(self.kib))
            .ok()
    }

    /// A share of `bytes`, waiting for the transfer's own slots to come back.
    pub(crate) async fn take(&self, bytes: u64) -> OwnedSemaphorePermit {
        Arc::clone(&self.sem)
            .acquire_many_owned(kib(bytes).min(self.kib))
            .await
            .expect("a window's semaphore is never closed")
    }

    /// The window's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        u64::from(self.kib) * 1024
    }
}

/// What a transfer stages through: the backing, its account and its window.
#[derive(Debug, Clone)]
pub(crate) struct Stager {
    pub(crate) backing: Backing,
    pub(crate) account: Arc<Account>,
    pub(crate) window: Window,
}

impl Stager {
    fn pool(&self) -> &Arc<PoolInner> {
        self.account.pool()
    }

    /// A slot of `len` bytes with its window share `share` (taken by the
    /// caller, who knows whether to wait for it), waiting for the
    /// account's turn in the cache.
    pub(crate) async fn slot(
        &self,
        len: usize,
        share: OwnedSemaphorePermit,
    ) -> Result<Slot, Error> {
        let reservation = self.account.reserve(len as u64, len as u64).await?;
        self.fill_slot(len, share, reservation)
    }

    fn fill_slot(
        &self,
        len: usize,
        share: OwnedSemaphorePermit,
        reservation: Reservation,
    ) -> Result<Slot, Error> {
        let (mem, generation) = match &self.backing {
            Backing::Memory => (Some(self.pool().take_buffer(len)?), 0),
            Backing::File(f) => (None, f.generation()),
        };
        self.pool().add_in_use(len as u64);
        Ok(Slot {
            stager: self.clone(),
            reservation,
            share: Some(share),
            mem,
            len,
            generation,
        })
    }
}

/// One staged part or chunk: `len` bytes of the cache.
pub(crate) struct Slot {
    stager: Stager,
    reservation: Reservation,
    share: Option<OwnedSemaphorePermit>,
    mem: Option<memmap2::MmapMut>,
    len: usize,
    /// The cache file's generation when the slot was taken (file mode).
    generation: u64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("len", &self.len).finish()
    }
}

impl Slot {
    /// The slot's size.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn file_offset(&self) -> u64 {
        self.reservation.extent().start
    }

    /// Copies `data` in at `offset` within the slot.
    pub(crate) fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), Error> {
        let end = offset + data.len();
        assert!(
            end <= self.len,
            "a write past the end of its slot ({end} > {})",
            self.len
        );
        match (&mut self.mem, &self.stager.backing) {
            (Some(m), _) => {
                m[offset..end].copy_from_slice(data);
                Ok(())
            }
            (None, Backing::File(f)) => f.write_at(data, self.file_offset() + offset as u64),
            (None, Backing::Memory) => unreachable!("memory slots have a buffer"),
        }
    }

    /// The slot's bytes, where they are in memory (memory mode).
    pub(crate) fn in_memory(&self) -> Option<&[u8]> {
        self.mem.as_deref()
    }

    /// Reads `buf.len()` bytes at `offset` within the slot.
    pub(crate) fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let end = offset + buf.len();
        assert!(end <= self.len, "a read past the end of its slot");
        match (&self.mem, &self.stager.backing) {
            (Some(m), _) => {
                buf.copy_from_slice(&m[offset..end]);
                Ok(())
            }
            (None, Backing::File(f)) => {
                f.read_at(buf, self.file_offset() + offset as u64, self.generation)
            }
            (None, Backing::Memory) => unreachable!("memory slots have a buffer"),
        }
    }

    /// This slot's bytes moved into a larger slot of `len` bytes, with
    /// `share` more of the window; waits for the account's turn.
    pub(crate) async fn grow(
        self,
        len: usize,
        share: OwnedSemaphorePermit,
        written: usize,
    ) -> Result<Slot, Error> {
        let reservation = self.stager.account.reserve(len as u64, len as u64).await?;
        let mut bigger = self.stager.fill_slot(len, share, reservation)?;
        let mut at = 0;
        let mut buf = vec![0u8; written.min(1 << 20)];
        while at < written {
            let n = (written - at).min(buf.len());
            self.read_at(at, &mut buf[..n])?;
            bigger.write_at(at, &buf[..n])?;
            at += n;
        }
        // The old slot's window share moves to the bigger one.
        let mut old = self;
        if let (Some(mine), Some(theirs)) = (bigger.share.as_mut(), old.share.take()) {
            mine.merge(theirs);
        }
        drop(old);
        Ok(bigger)
    }

    /// The first `len` bytes, without a copy in memory mode (read back from
    /// the file in file mode); the slot is given back when the last clone
    /// of the returned `Bytes` is dropped.
    pub(crate) fn freeze(self, len: usize) -> Result<Bytes, Error> {
        assert!(len <= self.len);
        if len == 0 {
            return Ok(Bytes::new());
        }
        if self.mem.is_some() {
            return Ok(Bytes::from_owner(Frozen { slot: self, len }));
        }
        let mut copy = self.stager.pool().take_buffer(len)?;
        let read = self.read_at(0, &mut copy[..len]);
        if let Err(e) = read {
            self.stager.pool().give_back(copy);
            return Err(e);
        }
        // The copy lives in the slot, which the cache already counts.
        let mut slot = self;
        slot.mem = Some(copy);
        Ok(Bytes::from_owner(Frozen { slot, len }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stager.pool().sub_in_use(self.len as u64);
        if let Some(m) = self.mem.take() {
            self.stager.pool().give_back(m);
        }
        // The reservation and the window share go after this, as fields.
    }
}

struct Frozen {
    slot: Slot,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        match &self.slot.mem {
            Some(m) => &m[..self.len],
            None => &[],
        }
    }
}

/// Writes `pieces` one after the other at `at`, as few system calls as
/// the pieces allow (`pwritev`), without copying them together.
pub(crate) fn write_pieces_at(file: &File, pieces: &[Bytes], mut at: u64) -> std::io::Result<()> {
    const MAX_IOV: usize = 512;
    let mut i = 0;
    let mut skip = 0usize; // bytes of pieces[i] already written
    while i < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[i..]
            .iter()
            .take(MAX_IOV)
            .enumerate()
            .map(|(j, p)| std::io::IoSlice::new(if j == 0 { &p[skip..] } else { p }))
            .collect();
        let mut n = rustix::io::pwritev(file, &slices, at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the disk took no bytes",
            ));
        }
        at += n as u64;
        while n > 0 && i < pieces.len() {
            let left = pieces[i].len() - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
        while i < pieces.len() && pieces[i].len() == skip {
            i += 1;
            skip = 0;
        }
    }
    Ok(())
}
