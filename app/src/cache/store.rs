//! Where staged bytes live: heap buffers allocated on demand, or slices of
//! one cache file.
//!
//! A transfer's reservation is cut into equal *slots* (one part or one
//! chunk each). A slot is taken when a part starts filling or a chunk starts
//! downloading, and given back when the last [`Bytes`] made from it is
//! dropped — after `object_store` has sent the part, or after the reader
//! has consumed the chunk. That is the backpressure: no free slot, no new
//! part or read-ahead.
//!
//! In **memory mode** a slot's buffer is allocated the first time a slot
//! needs one and then kept by the cache, for the transfer's later parts and
//! for later transfers (no fresh pages to fault in for every part): nothing
//! is allocated up front, a transfer never holds more than its reservation,
//! and the buffers never total more than the cache's size, whatever the
//! allocator does with freed memory.
//!
//! In **file mode** a slot is a byte range of the cache file. Data is
//! written with `pwrite` and handed out as [`Bytes`] that point into a
//! shared read-only mapping of the file, without a copy, so the bytes stay in
//! the page cache (file-backed, reclaimable) and the process's anonymous
//! memory does not grow with the cache size. The file is created sparse at
//! the cache size, locked against a second process, never truncated, and
//! its contents are never trusted: every slot is written before it is read.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_domain::parts::human;
use corral_domain::{Error, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{PoolInner, Reservation};

/// The cache file, mapped once.
pub(crate) struct CacheFile {
    file: File,
    map: memmap2::Mmap,
    path: PathBuf,
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
        let len = usize::try_from(size)
            .map_err(|_| cache_err("cache size exceeds the address space".to_owned()))?;
        // SAFETY: the file is locked exclusively against other processes
        // (advisory: a process that ignores locks can still write it, as with
        // any file). Within this process a byte range is written only while
        // the slot that owns it is taken, and a slot is given back only when
        // every `Bytes` pointing into it has been dropped, so no byte is
        // modified while a shared reference to it exists.
        #[allow(unsafe_code)] // The one exception to the workspace's rule; see above.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }.map_err(|e| {
            cache_err(format!(
                "the cache file (cloudCacheFile) {shown}: cannot map it: {e}"
            ))
        })?;
        Ok(Self {
            file,
            map,
            path: path.to_path_buf(),
        })
    }
}

/// Where a transfer's slots live.
#[derive(Debug, Clone)]
pub(crate) enum Backing {
    Memory,
    File(Arc<CacheFile>),
}

/// A transfer's reservation cut into slots.
pub(crate) struct Slots {
    backing: Backing,
    reservation: Reservation,
    slot_size: u64,
    count: usize,
    sem: Arc<Semaphore>,
    free: Mutex<Vec<usize>>,
}

impl Slots {
    /// Cuts `reservation` into slots of `slot_size` bytes (at least one).
    pub(crate) fn new(backing: Backing, reservation: Reservation, slot_size: u64) -> Arc<Self> {
        let count = reservation.len().checked_div(slot_size).unwrap_or(1).max(1) as usize;
        Arc::new(Self {
            backing,
            reservation,
            slot_size,
            count,
            sem: Arc::new(Semaphore::new(count)),
            free: Mutex::new((0..count).rev().collect()),
        })
    }

    /// How many slots the reservation holds.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Whether a slot is free right now.
    pub(crate) fn available(&self) -> usize {
        self.sem.available_permits()
    }

    fn pool(&self) -> &Arc<PoolInner> {
        self.reservation.pool()
    }

    /// Takes a slot for `len` bytes (≤ the slot size), waiting for one to be given back.
    pub(crate) async fn take(self: &Arc<Self>, len: usize) -> SlotBuf {
        let permit = Arc::clone(&self.sem)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let index = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("a permit guarantees a free slot");
        let data = match self.backing {
            Backing::Memory => self.pool().take_buffer(len, self.slot_size as usize),
            Backing::File(_) => Vec::new(),
        };
        self.pool().add_in_use(len as u64);
        SlotBuf {
            slots: Arc::clone(self),
            index,
            len,
            data,
            _permit: permit,
        }
    }
}

/// One taken slot: a part being filled or a chunk being downloaded.
pub(crate) struct SlotBuf {
    slots: Arc<Slots>,
    index: usize,
    len: usize,
    data: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl SlotBuf {
    fn file_offset(&self) -> u64 {
        self.slots.reservation.extent().start + self.index as u64 * self.slots.slot_size
    }

    /// Copies `data` in at `offset` within the slot.
    pub(crate) fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), Error> {
        let end = offset + data.len();
        assert!(
            end <= self.len,
            "a write past the end of its slot ({end} > {})",
            self.len
        );
        match &self.slots.backing {
            Backing::Memory => {
                self.data[offset..end].copy_from_slice(data);
                Ok(())
            }
            Backing::File(f) => f
                .file
                .write_all_at(data, self.file_offset() + offset as u64)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Other,
                        format!("writing the cache file {}: {e}", f.path.display()),
                    )
                }),
        }
    }

    /// The first `len` bytes, without a copy; the slot is given back when the
    /// last clone of the returned `Bytes` is dropped.
    pub(crate) fn freeze(self, len: usize) -> Bytes {
        assert!(len <= self.len);
        Bytes::from_owner(Frozen { buf: self, len })
    }
}

impl Drop for SlotBuf {
    fn drop(&mut self) {
        self.slots.pool().sub_in_use(self.len as u64);
        if self.data.capacity() > 0 {
            self.slots.pool().give_back(std::mem::take(&mut self.data));
        }
        self.slots
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.index);
        // The permit is released after this, when the field drops.
    }
}

struct Frozen {
    buf: SlotBuf,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        match &self.buf.slots.backing {
            Backing::Memory => &self.buf.data[..self.len],
            Backing::File(f) => {
                let start = self.buf.file_offset() as usize;
                &f.map[start..start + self.len]
            }
        }
    }
}
