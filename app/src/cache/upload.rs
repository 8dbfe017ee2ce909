//! Upload staging: bytes in (at any offset, in any order), parts out as soon
//! as each is complete.
//!
//! Part `n` covers bytes `[(n-1)·P, n·P)` of the file, `P` being the part size
//! of the domain's plan. A part fills a slot of the cache, taken when its
//! first byte arrives (never before: an open file that moves nothing holds
//! nothing). The first part of a stream of unknown size starts small and
//! grows as bytes arrive, so that a small file holds about its size, not a
//! whole part. When every byte of a part has been written it is frozen (no
//! copy) and sent with `upload_part` by a task of its own, while later
//! parts keep filling.
//!
//! The transfer's slots together stay within its window (the per-upload
//! limit): a write that needs a new slot when the window is full waits for
//! a part in flight to finish (backpressure). If every slot holds a part
//! that is still incomplete, waiting could never end, so the write fails
//! instead: a writer that delivers blocks out of order must stay within the
//! window above the lowest incomplete part. An upload over an existing
//! object ([`Base`]) instead completes its lowest part with the object's
//! own bytes and goes on.
//!
//! **Over an existing object** (a file opened for writing without
//! truncation): bytes not written keep the object's. At the end, a part
//! nobody wrote is copied on the server from the old object
//! (`upload_part_copy`, where the backend can; else read through the
//! slot), and a part written in places has its gaps filled from the old
//! object. The file is as long as the old object or the highest byte
//! written, whichever is more.
//!
//! A file no larger than one part goes as a single PUT. Any failure, and
//! dropping the [`Upload`] before [`Upload::finish`] returns, aborts the
//! multipart upload, so no incomplete upload is left on the server. An abort
//! that fails is tried again twice (after 0.5 s and 2 s, each try with the
//! client's own retries); one that still fails is reported in the error and
//! to the journal ([`UploadJournal::left_pending`]), which keeps it for a
//! later run to abort. Aborts of dropped uploads run in the background, in
//! the cache's registry (`aborts`), which a process waits for
//! before it exits.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use corral_domain::parts::{PartPlan, StreamingPlan, human};
use corral_domain::port::{ByteRange, CompletedPart, PutMode, PutOptions, PutResult, UploadId};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use futures::StreamExt;
use tokio::task::JoinSet;

use super::aborts::Aborts;
use super::store::{Slot, Stager};

pub(crate) use corral_adapters::retry::abort_upload;

/// The error of a failed upload whose abort failed too: says what is left.
/// Built from the messages, not the displays, so that the caller's path
/// (the user's, not the key) names it.
fn left_pending(e: Error, upload: &UploadId, abort: &Error) -> Error {
    let message = format!(
        "{}; aborting its multipart upload failed too ({}), so upload {upload} is left pending on the server: `corral uploads abort` removes it",
        e.message(),
        abort.message()
    );
    e.with_message(message)
}

/// After a CreateMultipartUpload that failed, its request may have made an
/// upload this process never learnt of: aborted if found.
async fn sweep_orphans(storage: &dyn ObjectStorage, key: &ObjectKey, since: SystemTime) {
    corral_adapters::retry::sweep_orphans(storage, key, since, None).await;
}

/// Told of a multipart upload's progress, to record it (see the CLI's
/// journal): called from the task that owns the [`Upload`], in order.
pub trait UploadJournal: Send + Sync {
    /// The multipart upload was created.
    fn started(&mut self, upload: &UploadId, part_size: u64);
    /// A part was accepted by the server; `crc64` is the CRC-64/NVME of its
    /// bytes (0 for a part copied on the server, whose bytes corral never saw).
    fn part_done(&mut self, part: &CompletedPart, crc64: u64);
    /// The upload failed and could not be aborted: it is pending on the
    /// server until someone aborts it, so its record must outlive this
    /// process. Called at most once, possibly from a background task.
    fn left_pending(&mut self, _error: &Error) {}
}

/// The CRC-64/NVME of a part's bytes, as journals record it.
pub fn part_checksum(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
}

/// An existing object an upload writes over: the bytes not written keep
/// its content (a file opened for writing without truncation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The object (the upload's own key, normally).
    pub key: ObjectKey,
    /// Its size.
    pub size: u64,
    /// Its entity tag when the upload started: if it changes, the upload
    /// fails rather than mixing two versions.
    pub etag: Option<String>,
}

/// A part being filled.
struct Filling {
    slot: Slot,
    /// Merged byte ranges written so far, relative to the part.
    covered: Vec<Range<usize>>,
}

impl Filling {
    /// Every byte of a part of `len` bytes written.
    fn whole(&mut self, len: usize) {
        self.covered.clear();
        self.covered.push(0..len);
    }

    fn cover(&mut self, r: Range<usize>) {
        let i = self.covered.partition_point(|c| c.end < r.start);
        let mut merged = r;
        while i < self.covered.len() && self.covered[i].start <= merged.end {
            let c = self.covered.remove(i);
            merged = merged.start.min(c.start)..merged.end.max(c.end);
        }
        self.covered.insert(i, merged);
    }

    fn covers(&self, len: usize) -> bool {
        len == 0 || (self.covered.len() == 1 && self.covered[0] == (0..len))
    }

    /// The ranges below `len` not written yet.
    fn gaps(&self, len: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        for c in &self.covered {
            if c.start > at {
                out.push(at..c.start.min(len));
            }
            at = at.max(c.end);
        }
        if at < len {
            out.push(at..len);
        }
        out.retain(|r| r.start < r.end);
        out
    }

    /// The end of the highest byte written in the part.
    fn written_end(&self) -> usize {
        self.covered.last().map_or(0, |c| c.end)
    }
}

/// How the parts are sized.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plan {
    Known(PartPlan),
    Streaming(StreamingPlan),
}

impl Plan {
    fn part_size(&self) -> u64 {
        match self {
            Self::Known(p) => p.part_size(),
            Self::Streaming(s) => s.part_size(),
        }
    }
}

/// The smallest slot a first part starts with.
const FIRST_SLOT: usize = 64 << 10;

/// An upload staged through the cache: blocks at any offset, each part sent
/// as soon as it is complete; dropping it unfinished aborts the multipart upload.
pub struct Upload {
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    plan: Plan,
    stager: Stager,
    aborts: Arc<Aborts>,
    base: Option<Base>,
    filling: BTreeMap<u64, Filling>,
    /// Parts handed to `upload_part` (or kept for the single PUT).
    sent: BTreeSet<u64>,
    upload_id: Option<UploadId>,
    in_flight: JoinSet<Result<(CompletedPart, u64), Error>>,
    journal: Option<Box<dyn UploadJournal>>,
    done: Vec<CompletedPart>,
    single: Option<Bytes>,
    failed: Option<Error>,
    finished: bool,
    /// The end of the highest byte written (the size of a streamed file).
    end: u64,
    /// The modification time to record with the object, if set.
    modified: Option<SystemTime>,
    /// How a one-part file is stored (create-if-absent, or over anything).
    put_mode: PutMode,
    /// When this upload started, less a margin for the server's clock.
    started: SystemTime,
    /// A CreateMultipartUpload was sent and never answered (it failed): an
    /// upload may exist that this process never learnt of.
    create_unknown: bool,
    /// Dropped unfinished, the upload is kept (its whole parts stored,
    /// the rest dropped) for a later writer to continue, not aborted.
    keep: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("plan", &self.plan)
            .field("upload_id", &self.upload_id)
            .finish_non_exhaustive()
    }
}

impl Upload {
    pub(crate) fn new(
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        plan: Plan,
        stager: Stager,
        aborts: Arc<Aborts>,
    ) -> Self {
        Self {
            storage,
            key,
            plan,
            stager,
            aborts,
            base: None,
            filling: BTreeMap::new(),
            sent: BTreeSet::new(),
            upload_id: None,
            in_flight: JoinSet::new(),
            journal: None,
            done: Vec::new(),
            single: None,
            failed: None,
            finished: false,
            end: 0,
            modified: None,
            put_mode: PutMode::Overwrite,
            started: SystemTime::now() - std::time::Duration::from_secs(5),
            create_unknown: false,
            keep: false,
        }
    }

    /// Dropped before [`Self::finish`], the upload is kept rather than
    /// aborted: the parts in flight are waited for, the bytes of parts not
    /// complete are dropped, and the multipart upload stays pending (if at
    /// least one part is stored) for [`super::TransferCache::continue_upload`].
    pub(crate) fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// Whether dropping it now would keep something: a multipart upload
    /// exists or a part is on its way.
    pub(crate) fn would_keep(&self) -> bool {
        self.keep
            && self.failed.is_none()
            && (self.upload_id.is_some() || !self.in_flight.is_empty())
    }

    /// Given up for good, even if it was to be kept: dropped, it is aborted.
    pub(crate) fn discard(mut self) {
        self.keep = false;
    }

    /// A continued upload: `size` bytes are stored already.
    pub(crate) fn stored(mut self, size: u64) -> Self {
        self.end = size;
        self
    }

    /// Writes over `base`: bytes not written keep its content.
    pub(crate) fn over(mut self, base: Base) -> Self {
        self.base = Some(base);
        self
    }

    /// Records the upload's progress in `journal` as parts complete.
    pub fn set_journal(&mut self, journal: Box<dyn UploadJournal>) {
        self.journal = Some(journal);
    }

    /// The modification time to store with the object (where the backend
    /// keeps one), as a client set it.
    pub fn set_modified(&mut self, modified: SystemTime) {
        self.modified = Some(modified);
    }

    /// How a file stored by one PUT is stored: [`PutMode::Create`] makes
    /// it create-if-absent on the backend.
    pub fn set_put_mode(&mut self, mode: PutMode) {
        self.put_mode = mode;
    }

    /// Continues a multipart upload that an earlier process started:
    /// `parts` are already on the server and are not sent again.
    pub(crate) fn resume(mut self, upload: UploadId, parts: Vec<CompletedPart>) -> Self {
        self.upload_id = Some(upload);
        for p in &parts {
            self.sent.insert(u64::from(p.number));
        }
        self.done = parts;
        self
    }

    /// The numbers of the parts sent so far (or already on the server).
    pub fn parts_sent(&self) -> impl Iterator<Item = u64> + '_ {
        self.sent.iter().copied()
    }

    /// The part size in use.
    pub fn part_size(&self) -> u64 {
        self.plan.part_size()
    }

    /// How many whole parts the transfer's window holds at once.
    pub fn window_parts(&self) -> usize {
        (self.stager.window.size() / self.part_size()).max(1) as usize
    }

    /// The size of the file so far: the end of the highest byte written, or
    /// the old object's size if larger.
    pub fn size(&self) -> u64 {
        self.end.max(self.base.as_ref().map_or(0, |b| b.size))
    }

    /// The length of part `n` if known now.
    fn part_len(&self, n: u64) -> usize {
        match self.plan {
            Plan::Known(p) => p
                .part_range(n)
                .map(|r| (r.end - r.start) as usize)
                .unwrap_or(0),
            Plan::Streaming(s) => s.part_size() as usize,
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Writes `data` at `offset`. Blocks may come in any order, each byte once.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Plan::Known(p) = self.plan
            && offset + data.len() as u64 > p.size()
        {
            return Err(self.fail(Error::invalid_input(format!(
                "write of {} bytes at offset {offset} goes past the declared size {}",
                data.len(),
                p.size()
            ))));
        }
        let p = self.part_size();
        let mut offset = offset;
        let mut data = data;
        while !data.is_empty() {
            let n = offset / p + 1;
            let within = (offset % p) as usize;
            let take = data.len().min(p as usize - within);
            if let Err(e) = self.write_part(n, within, &data[..take]).await {
                return Err(self.fail(e));
            }
            offset += take as u64;
            data = &data[take..];
        }
        self.end = self.end.max(offset);
        Ok(())
    }

    /// Writes `data` after everything written so far.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_at(self.end, data).await
    }

    /// How big a slot part `n` starts with, for `need` bytes of it now.
    fn first_slot_len(&self, n: u64, need: usize) -> usize {
        let full = self.part_len(n);
        match self.plan {
            // A stream's first part may be a small file: start small.
            Plan::Streaming(_) if n == 1 => need
                .max(FIRST_SLOT)
                .checked_next_power_of_two()
                .unwrap_or(full)
                .min(full),
            _ => full,
        }
    }

    async fn write_part(&mut self, n: u64, within: usize, data: &[u8]) -> Result<(), Error> {
        if self.sent.contains(&n) {
            return Err(Error::invalid_input(format!(
                "bytes at offset {} were written again after their part was sent",
                (n - 1) * self.part_size() + within as u64
            )));
        }
        if let Plan::Streaming(s) = self.plan {
            s.check_part(n)?;
        }
        let need = within + data.len();
        if !self.filling.contains_key(&n) {
            let len = self.first_slot_len(n, need);
            let slot = self.take_slot(n, len).await?;
            self.filling.insert(
                n,
                Filling {
                    slot,
                    covered: Vec::new(),
                },
            );
        }
        let have = self.filling.get(&n).expect("inserted above").slot.len();
        if need > have {
            self.grow(n, need).await?;
        }
        // A known part's length; a streamed part is complete when full.
        let len = self.part_len(n);
        let filling = self.filling.get_mut(&n).expect("inserted above");
        filling.slot.write_at(within, data)?;
        filling.cover(within..need);
        if filling.covers(len) {
            self.send(n, len).await?;
        }
        Ok(())
    }

    /// Moves part `n`'s slot into one that holds at least `need` bytes
    /// (eight times larger each step, at most the part).
    async fn grow(&mut self, n: u64, need: usize) -> Result<(), Error> {
        let full = self.part_len(n);
        let have = self.filling[&n].slot.len();
        let len = need
            .max(have.saturating_mul(8))
            .checked_next_power_of_two()
            .unwrap_or(full)
            .min(full);
        let share = self.window_share(n, (len - have) as u64).await?;
        let f = self.filling.remove(&n).expect("growing a filling part");
        let written = f.slot.len().min(f.written_end());
        let slot = f.slot.grow(len, share, written).await?;
        self.filling.insert(
            n,
            Filling {
                slot,
                covered: f.covered,
            },
        );
        Ok(())
    }

    /// A share of the window for `bytes` more of part `n`: waits for parts
    /// in flight to finish; with an old object under the upload, completes
    /// the lowest other incomplete part from it; else fails (the window rule).
    async fn window_share(
        &mut self,
        n: u64,
        bytes: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        loop {
            self.reap()?;
            if let Some(share) = self.stager.window.try_take(bytes) {
                return Ok(share);
            }
            if let Some(r) = self.in_flight.join_next().await {
                self.record(r)?;
                continue;
            }
            if let Some(lowest) = self.filling.keys().copied().find(|&k| k != n)
                && self.base.is_some()
            {
                // (Boxed: completing a part may grow it, which comes back here.)
                Box::pin(self.complete_from_base(lowest)).await?;
                continue;
            }
            if self.filling.is_empty() {
                // Nothing of ours holds the window: its shares are on their
                // way back (a part's bytes dropped just after its task).
                return Ok(self.stager.window.take(bytes).await);
            }
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "write to part {n} is beyond the transfer's window: the window ({}) holds parts that are not complete yet; write the earlier parts first",
                    human(self.stager.window.size())
                ),
            ));
        }
    }

    /// A slot of `len` bytes for part `n`.
    async fn take_slot(&mut self, n: u64, len: usize) -> Result<Slot, Error> {
        let share = self.window_share(n, len as u64).await?;
        self.stager.slot(len, share).await
    }

    /// Collects parts that finished, without waiting.
    fn reap(&mut self) -> Result<(), Error> {
        while let Some(r) = self.in_flight.try_join_next() {
            self.record(r)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        r: Result<Result<(CompletedPart, u64), Error>, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        match r {
            Ok(Ok((part, crc))) => {
                if let Some(j) = &mut self.journal {
                    j.part_done(&part, crc);
                }
                self.done.push(part);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::new(
                ErrorKind::Other,
                format!("a part upload task failed: {e}"),
            )),
        }
    }

    /// The multipart upload, created on first use.
    async fn upload_id(&mut self) -> Result<UploadId, Error> {
        if let Some(u) = &self.upload_id {
            return Ok(u.clone());
        }
        // Until it answers, an upload may exist that this process never
        // learns of (a lost answer): if it fails, the end of this upload
        // sweeps for it. (A lost answer that a retry recovers from is the
        // backend's to sweep: it knows which id it returned.)
        self.create_unknown = true;
        let u = self.storage.create_multipart(&self.key).await?;
        self.create_unknown = false;
        self.upload_id = Some(u.clone());
        let part_size = self.part_size();
        if let Some(j) = &mut self.journal {
            j.started(&u, part_size);
        }
        Ok(u)
    }

    /// Hands part `n` (its first `len` bytes) to the server.
    async fn send(&mut self, n: u64, len: usize) -> Result<(), Error> {
        let filling = self.filling.remove(&n).expect("part is filling");
        let bytes = filling.slot.freeze(len)?;
        self.sent.insert(n);
        if let Plan::Known(p) = self.plan
            && p.is_single_put()
        {
            self.single = Some(bytes);
            return Ok(());
        }
        let upload = self.upload_id().await?;
        let (storage, key) = (Arc::clone(&self.storage), self.key.clone());
        let number =
            u32::try_from(n).map_err(|_| Error::invalid_input("part number out of range"))?;
        self.in_flight.spawn(async move {
            let crc = part_checksum(&bytes);
            let part = storage.upload_part(&key, &upload, number, bytes).await?;
            Ok((part, crc))
        });
        Ok(())
    }

    /// Reads bytes `range` of the old object into `slot` at `at`.
    async fn read_base(&self, range: Range<u64>, slot: &mut Slot, at: usize) -> Result<(), Error> {
        let base = self.base.as_ref().expect("an upload over an object");
        let r = self
            .storage
            .get(&base.key, Some(ByteRange::Bounded(range.clone())))
            .await?;
        if let (Some(want), Some(got)) = (&base.etag, &r.meta.etag)
            && want != got
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the file was replaced while it was open for writing; write it again",
            ));
        }
        let len = (range.end - range.start) as usize;
        let mut done = 0usize;
        let mut body = r.body;
        while let Some(frame) = body.next().await {
            let frame = frame?;
            if done + frame.len() > len {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    format!("the server sent more than the {len} bytes of range {range:?}"),
                ));
            }
            slot.write_at(at + done, &frame)?;
            done += frame.len();
        }
        if done != len {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                format!("the server sent {done} of the {len} bytes of range {range:?}"),
            ));
        }
        Ok(())
    }

    /// Completes part `n` (of `len` bytes) with the old object's bytes
    /// where it was not written, and sends it. Bytes beyond the old object
    /// that were never written make it incomplete (a hole).
    async fn complete_from_base(&mut self, n: u64) -> Result<(), Error> {
        let len = self.part_len_at_end(n);
        let Some(mut f) = self.filling.remove(&n) else {
            return Ok(());
        };
        let start = (n - 1) * self.part_size();
        let base_size = self.base.as_ref().map_or(0, |b| b.size);
        if f.slot.len() < len {
            // Put it back and grow it to the part's length first.
            self.filling.insert(n, f);
            self.grow(n, len).await?;
            f = self.filling.remove(&n).expect("just grown");
        }
        for gap in f.gaps(len) {
            let abs = start + gap.start as u64..start + gap.end as u64;
            if abs.end > base_size {
                let missing = abs.start.max(base_size);
                self.filling.insert(n, f);
                return Err(incomplete(missing, n));
            }
            let mut slot = f.slot;
            let r = self.read_base(abs, &mut slot, gap.start).await;
            f.slot = slot;
            r?;
        }
        f.whole(len);
        self.filling.insert(n, f);
        self.send(n, len).await
    }

    /// Part `n`'s length in the file as it will be at the end.
    fn part_len_at_end(&self, n: u64) -> usize {
        match self.plan {
            Plan::Known(_) => self.part_len(n),
            Plan::Streaming(_) => {
                let p = self.part_size();
                let start = (n - 1) * p;
                (self.size().saturating_sub(start)).min(p) as usize
            }
        }
    }

    /// Sends part `n`, which nobody wrote, as a copy of the old object's bytes.
    async fn copy_from_base(&mut self, n: u64) -> Result<(), Error> {
        let base = self.base.clone().expect("an upload over an object");
        let p = self.part_size();
        let range = (n - 1) * p..((n - 1) * p + self.part_len_at_end(n) as u64);
        if self.storage.capabilities().part_copy {
            let upload = self.upload_id().await?;
            let (storage, key) = (Arc::clone(&self.storage), self.key.clone());
            let number =
                u32::try_from(n).map_err(|_| Error::invalid_input("part number out of range"))?;
            self.sent.insert(n);
            self.in_flight.spawn(async move {
                let part = storage
                    .upload_part_copy(
                        &key,
                        &upload,
                        number,
                        &base.key,
                        range,
                        base.etag.as_deref(),
                    )
                    .await?;
                Ok((part, 0))
            });
            return Ok(());
        }
        // Through a slot of the cache.
        let len = (range.end - range.start) as usize;
        let mut slot = self.take_slot(n, len).await?;
        self.read_base(range, &mut slot, 0).await?;
        let mut f = Filling {
            slot,
            covered: Vec::new(),
        };
        f.whole(len);
        self.filling.insert(n, f);
        self.send(n, len).await
    }

    /// Sends what is left, waits for every part and completes the upload.
    /// On any failure the multipart upload is aborted before returning.
    pub async fn finish(mut self) -> Result<PutResult, Error> {
        let result = match self.finish_inner().await {
            Err(e) => match self.abort().await {
                Some((upload, abort)) => Err(left_pending(e, &upload, &abort)),
                None => Err(e),
            },
            ok => ok,
        };
        self.finished = true;
        result
    }

    /// Gives the upload up because of `cause`: aborts it now and returns
    /// `cause`, saying so if the multipart upload could not be aborted.
    pub async fn cancel(mut self, cause: Error) -> Error {
        let e = match self.abort().await {
            Some((upload, abort)) => left_pending(cause, &upload, &abort),
            None => cause,
        };
        self.finished = true;
        e
    }

    async fn finish_inner(&mut self) -> Result<PutResult, Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let p = self.part_size();
        let size = self.size();
        let parts = match self.plan {
            Plan::Known(plan) => plan.parts(),
            Plan::Streaming(_) => size.div_ceil(p).max(1),
        };
        if self.base.is_some() {
            // Every part: completed from the old object where not written.
            for n in 1..=parts {
                if self.sent.contains(&n) {
                    continue;
                }
                if self.filling.contains_key(&n) {
                    if parts == 1 && self.upload_id.is_none() {
                        break; // one PUT, below
                    }
                    self.complete_from_base(n).await?;
                } else if parts == 1 && self.upload_id.is_none() {
                    break;
                } else if (n - 1) * p + self.part_len_at_end(n) as u64
                    <= self.base.as_ref().map_or(0, |b| b.size)
                {
                    self.copy_from_base(n).await?;
                }
                // Otherwise a part beyond the old object that nobody wrote:
                // a hole, reported below.
            }
            let len = size as usize;
            if parts == 1 && len > 0 && self.upload_id.is_none() && !self.sent.contains(&1) {
                if !self.filling.contains_key(&1) {
                    let slot = self.take_slot(1, len.max(1)).await?;
                    self.filling.insert(
                        1,
                        Filling {
                            slot,
                            covered: Vec::new(),
                        },
                    );
                }
                self.fill_single_from_base(len).await?;
            }
        }
        // The last part of a stream is complete when everything below `end` is written.
        if let Plan::Streaming(_) = self.plan {
            let last_len = (size - (parts - 1) * p) as usize;
            if let Some(f) = self.filling.get(&parts)
                && f.covers(last_len)
            {
                if parts == 1 && self.upload_id.is_none() {
                    let f = self.filling.remove(&1).expect("present");
                    self.single = Some(f.slot.freeze(last_len)?);
                    self.sent.insert(1);
                } else {
                    self.send(parts, last_len).await?;
                }
            }
        }
        if size == 0 && self.sent.is_empty() {
            // An empty file: one empty PUT.
            self.filling.clear();
            self.single = Some(Bytes::new());
            self.sent.insert(1);
        }
        if let Some(missing) = (1..=parts).find(|n| !self.sent.contains(n)) {
            let start = (missing - 1) * p;
            let at = self
                .filling
                .get(&missing)
                .and_then(|f| f.gaps(self.part_len_at_end(missing)).first().cloned())
                .map_or(start, |g| start + g.start as u64);
            return Err(incomplete(at, missing));
        }
        if let Some(bytes) = self.single.take() {
            let options = PutOptions {
                mode: self.put_mode,
                modified: self.modified,
            };
            return self.storage.put_with(&self.key, bytes, options).await;
        }
        while let Some(r) = self.in_flight.join_next().await {
            self.record(r)?;
        }
        let upload = self
            .upload_id
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Other, "no multipart upload"))?;
        let parts = std::mem::take(&mut self.done);
        let result = self
            .storage
            .complete_multipart(&self.key, &upload, parts)
            .await?;
        self.upload_id = None;
        if let Some(t) = self.modified
            && self.storage.capabilities().set_modified
        {
            // A multipart upload cannot carry it: the object is complete and
            // in place; a failure here loses only the time, which is said.
            if let Err(e) = self.storage.set_modified(&self.key, t).await {
                tracing::warn!(key = %self.key, error = %e, "the upload completed but its modification time was not kept");
            }
        }
        Ok(result)
    }

    /// Fills the gaps of a one-part file over an old object (`len` bytes in all).
    async fn fill_single_from_base(&mut self, len: usize) -> Result<(), Error> {
        let base_size = self.base.as_ref().map_or(0, |b| b.size);
        let have = self.filling[&1].slot.len();
        if have < len {
            self.grow(1, len).await?;
        }
        let mut f = self.filling.remove(&1).expect("filled above");
        for gap in f.gaps(len) {
            let abs = gap.start as u64..gap.end as u64;
            if abs.end > base_size {
                let missing = abs.start.max(base_size);
                self.filling.insert(1, f);
                return Err(incomplete(missing, 1));
            }
            let mut slot = f.slot;
            let r = self.read_base(abs, &mut slot, gap.start).await;
            f.slot = slot;
            r?;
        }
        f.whole(len);
        self.filling.insert(1, f);
        Ok(())
    }

    /// Stops every part in flight and aborts the multipart upload, if any;
    /// returns the upload and the error if it could not be aborted.
    async fn abort(&mut self) -> Option<(UploadId, Error)> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.filling.clear();
        let mut left = None;
        if let Some(upload) = self.upload_id.take()
            && let Err(e) = abort_upload(&*self.storage, &self.key, &upload).await
        {
            tracing::warn!(key = %self.key, upload = %upload, error = %e, "could not abort a multipart upload: it is left pending");
            if let Some(j) = &mut self.journal {
                j.left_pending(&e);
            }
            left = Some((upload, e));
        }
        if self.create_unknown {
            sweep_orphans(&*self.storage, &self.key, self.started).await;
        }
        left
    }
}

fn incomplete(offset: u64, part: u64) -> Error {
    Error::invalid_input(format!(
        "the upload is incomplete: bytes from offset {offset} (part {part}) were never written"
    ))
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped before finish (an error upstream, a cancelled future, a
        // panic, a session that ended): its slots come back now; in the
        // background, cancel the parts in flight, wait until they are gone
        // (their cache slots come back with them), then abort the upload, so
        // that no part lands after the abort.
        self.filling.clear();
        let mut parts = std::mem::take(&mut self.in_flight);
        // An upload that failed is given up, not kept.
        let keep = self.keep && self.failed.is_none();
        if !keep {
            parts.abort_all();
        }
        let upload = self.upload_id.take();
        let create_unknown = self.create_unknown;
        if parts.is_empty() && upload.is_none() && !create_unknown {
            return;
        }
        let stored_before = !self.done.is_empty();
        let (storage, key, started) = (Arc::clone(&self.storage), self.key.clone(), self.started);
        let mut journal = self.journal.take();
        if !Aborts::can_spawn() {
            tracing::warn!(key = %key, "no runtime to abort a dropped multipart upload: it is left pending");
            if let (Some(j), Some(_)) = (&mut journal, &upload) {
                j.left_pending(&Error::new(ErrorKind::Other, "no runtime to abort it"));
            }
            return;
        }
        self.aborts.spawn(async move {
            let mut stored = stored_before;
            while let Some(r) = parts.join_next().await {
                stored |= matches!(r, Ok(Ok(_)));
            }
            if keep && stored && let Some(upload) = &upload {
                // Kept: its stored parts are the checkpoint a later writer
                // continues from; the retention sweep aborts it otherwise.
                tracing::debug!(key = %key, upload = %upload, "kept an unfinished upload");
                return;
            }
            if let Some(upload) = upload
                && let Err(e) = abort_upload(&*storage, &key, &upload).await
            {
                tracing::warn!(key = %key, upload = %upload, error = %e, "could not abort a dropped multipart upload: it is left pending");
                if let Some(j) = &mut journal {
                    j.left_pending(&e);
                }
            }
            if create_unknown {
                sweep_orphans(&*storage, &key, started).await;
            }
            // The journal goes last, once the upload is settled.
            drop(journal);
        });
    }
}
