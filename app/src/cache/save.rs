//! A whole download written straight into a local file.
//!
//! [`Download::save_to`] does not stage chunks in the cache: each chunk's
//! ranged GET writes its body's frames to their place in the file as they
//! arrive (gathered into batches of 256 KiB, one `pwritev` each, one batch
//! writing while the next fills; one write at a time into the file). The
//! cache still admits each chunk (the transfer's window and the account's
//! turn, as for a staged chunk), so that a download takes its fair share
//! and the bytes in flight are counted; but what the process holds is the
//! batches, not the chunks: a copy into the cache and its memory are saved.
//!
//! The checksum the backend vouches for is checked all the same: each
//! chunk's CRC-64/NVME is computed with its writes, on the blocking pool,
//! and the chunks' CRCs are combined in order as they complete. An object
//! that only has an MD5 (whose state cannot be combined) is not saved this
//! way: [`Download::saves_checked`] tells the caller to read it in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use corral_domain::port::ContentChecksum;
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use futures::StreamExt;
use tokio::task::{JoinHandle, JoinSet};

use super::TransferCache;
use super::download::{
    Download, Fetch, Hasher, cut_short, get_checked, invalid_response, mismatch, too_long,
};
use super::store::write_pieces_at;

/// Bytes gathered from the body before one write. Small enough that the
/// frames are still in the CPU's cache when the kernel copies them into the
/// page cache: measured on a 1 GiB download, 1 MiB batches took 2.1–2.4 s
/// of system time, 256 KiB ones 0.9–1.0 s (64 KiB: 1.1–1.2 s).
const BATCH: usize = 256 << 10;

const CRC: crc_fast::CrcAlgorithm = crc_fast::CrcAlgorithm::Crc64Nvme;

/// One chunk to save: its fetch, and where its bytes go.
struct Job {
    fetch: Fetch,
    target: Target,
}

fn write_err(local: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::from_io(e.kind()),
        format!("cannot write {}: {e}", local.display()),
    )
}

fn task_err(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Other, format!("a download task failed: {e}"))
}

/// Writes `batch` at `at` and adds it to `hash`, on the blocking pool.
fn write_batch(
    file: &Arc<File>,
    turn: &Arc<std::sync::Mutex<()>>,
    batch: Vec<Bytes>,
    at: u64,
    mut hash: Option<Hasher>,
) -> JoinHandle<std::io::Result<Option<Hasher>>> {
    let (file, turn) = (Arc::clone(file), Arc::clone(turn));
    tokio::task::spawn_blocking(move || {
        {
            // Writers of one file queue here rather than spin on the
            // inode's lock in the kernel (measured: 12 % of the samples).
            let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
            write_pieces_at(&file, &batch, at)?;
        }
        if let Some(h) = &mut hash {
            for b in &batch {
                h.update(b);
            }
        }
        Ok(hash)
    })
}

/// Where a body goes: its file, the turn of its writers, its name in errors.
#[derive(Clone)]
struct Target {
    file: Arc<File>,
    turn: Arc<std::sync::Mutex<()>>,
    local: Arc<Path>,
}

/// Writes `body` at `start` of the target, at most `most` bytes, hashing it
/// into `hash` in order; returns the bytes written and the hash.
async fn write_body(
    mut body: corral_domain::port::ByteStream,
    target: &Target,
    start: u64,
    most: u64,
    mut hash: Option<Hasher>,
    too_long: impl Fn(u64) -> Error,
) -> Result<(u64, Option<Hasher>), Error> {
    let mut writing: Option<JoinHandle<std::io::Result<Option<Hasher>>>> = None;
    let (mut batch, mut batched) = (Vec::new(), 0usize);
    let (mut got, mut at) = (0u64, start);
    let wait = |w: JoinHandle<std::io::Result<Option<Hasher>>>| async move {
        w.await
            .map_err(task_err)?
            .map_err(|e| write_err(&target.local, e))
    };
    loop {
        let frame = body.next().await.transpose()?;
        let last = frame.is_none();
        if let Some(frame) = frame {
            got += frame.len() as u64;
            if got > most {
                return Err(too_long(got));
            }
            batched += frame.len();
            batch.push(frame);
        }
        if batched >= BATCH || (last && batched > 0) {
            // One batch writing while the next fills.
            if let Some(w) = writing.take() {
                hash = wait(w).await?;
            }
            let pieces = std::mem::take(&mut batch);
            writing = Some(write_batch(
                &target.file,
                &target.turn,
                pieces,
                at,
                hash.take(),
            ));
            at += batched as u64;
            batched = 0;
        }
        if last {
            break;
        }
    }
    if let Some(w) = writing.take() {
        hash = wait(w).await?;
    }
    Ok((got, hash))
}

/// Fetches one chunk into its place in the file; returns its CRC-64/NVME.
async fn save_chunk(job: Job) -> Result<u64, Error> {
    let Job { fetch: f, target } = job;
    let (key, range) = (&f.key, &f.range);
    let len = range.end - range.start;
    // The account's turn in the cache, for the bytes this chunk has in flight
    // (the window share, `f.share`, is held as long).
    let _held = f.stager.account.reserve(len, len).await?;
    let r = get_checked(&f.storage, key, range, f.etag.as_deref()).await?;
    let crc = Hasher::new(ContentChecksum::Crc64Nvme(0));
    let (got, crc) = write_body(r.body, &target, range.start, len, Some(crc), |_| {
        too_long(key, len, range)
    })
    .await?;
    if got != len {
        return Err(cut_short(key, got, len, range));
    }
    Ok(crc.and_then(|c| c.crc64()).unwrap_or_default())
}

impl TransferCache {
    /// Saves the whole of `key`, listed as `listed` bytes (a small file),
    /// into `file` with one GET, whose answer tells the checksum to check
    /// (no HEAD first); the cache admits it by its listed size. Returns
    /// its size. The body is read once, in order: an MD5 is checked too.
    pub(crate) async fn save_whole(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: &ObjectKey,
        listed: u64,
        file: Arc<File>,
        local: &Path,
    ) -> Result<u64, Error> {
        let stager = self.stager(self.config.download.min(self.config.per_account()));
        let _share = stager.window.take(listed).await;
        let _held = stager.account.reserve(listed.max(1), listed.max(1)).await?;
        let r = storage.get(key, None).await?;
        let target = Target {
            file,
            turn: Arc::new(std::sync::Mutex::new(())),
            local: Arc::from(local),
        };
        let expected = r.meta.checksum;
        let size = r.meta.size;
        let (got, hash) = write_body(r.body, &target, 0, size, expected.map(Hasher::new), |_| {
            invalid_response(
                key,
                format!("the server sent more than the {size} bytes of the object"),
            )
        })
        .await?;
        if got != size {
            return Err(invalid_response(
                key,
                format!("the server sent {got} of the object's {size} bytes (connection cut?)"),
            ));
        }
        if let (Some(expected), Some(hash)) = (expected, hash)
            && !hash.matches(expected)
        {
            return Err(mismatch(key, expected));
        }
        Ok(size)
    }
}

impl Download {
    /// Whether [`Self::save_to`] checks what this object's backend vouches
    /// for (a CRC-64/NVME, or nothing); an MD5 needs the bytes in order
    /// ([`Self::next_pieces`]).
    pub(crate) fn saves_checked(&self) -> bool {
        !matches!(self.meta.checksum, Some(ContentChecksum::Md5(_)))
    }

    /// Writes the whole object into `file` (named `local` in errors), each
    /// chunk straight to its place, and checks its CRC-64/NVME where the
    /// backend vouches for one. `progress` is told of each chunk written.
    pub(crate) async fn save_to(
        self,
        file: Arc<File>,
        local: &Path,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        let target = Target {
            file,
            // One write at a time into the file.
            turn: Arc::new(std::sync::Mutex::new(())),
            local: Arc::from(local),
        };
        let size = self.meta.size;
        let chunk = self.chunk;
        let chunks = size.div_ceil(chunk);
        let mut running: JoinSet<Result<(u64, u64), Error>> = JoinSet::new();
        // CRCs of chunks done out of order, and the combined CRC of the
        // chunks done in order.
        let mut early: BTreeMap<u64, u64> = BTreeMap::new();
        let (mut combined, mut in_order) = (crc_fast::checksum(CRC, b""), 0u64);
        let mut next = 0u64;
        loop {
            // As many chunks in flight as the window has room for, and at
            // least one.
            while next < chunks {
                let range = next * chunk..((next + 1) * chunk).min(size);
                let want = range.end - range.start;
                let share = if running.is_empty() {
                    self.stager.window.take(want).await
                } else {
                    match self.stager.window.try_take(want) {
                        Some(s) => s,
                        None => break,
                    }
                };
                let job = Job {
                    fetch: self.fetch_of(range, share),
                    target: target.clone(),
                };
                let k = next;
                running.spawn(async move { save_chunk(job).await.map(|crc| (k, crc)) });
                next += 1;
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (k, crc) = done.map_err(task_err)?.map_err(|e| self.named(e))?;
            early.insert(k, crc);
            while let Some(crc) = early.remove(&in_order) {
                let len = ((in_order + 1) * chunk).min(size) - in_order * chunk;
                combined = if in_order == 0 {
                    crc
                } else {
                    crc_fast::checksum_combine(CRC, combined, crc, len)
                };
                in_order += 1;
                progress(len);
            }
        }
        if let Some(ContentChecksum::Crc64Nvme(want)) = self.meta.checksum
            && combined != want
        {
            return Err(self.named(mismatch(&self.key, ContentChecksum::Crc64Nvme(want))));
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_crcs_combine_to_the_whole_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc_fast::checksum(super::CRC, &data);
        let (a, b) = data.split_at(4_321);
        let combined = crc_fast::checksum_combine(
            super::CRC,
            crc_fast::checksum(super::CRC, a),
            crc_fast::checksum(super::CRC, b),
            b.len() as u64,
        );
        assert_eq!(combined, whole);
        assert_ne!(crc_fast::checksum(super::CRC, a), whole);
    }
}
