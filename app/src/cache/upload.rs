//! Upload staging: bytes in (at any offset, in any order), parts out as soon
//! as each is complete.
//!
//! Part `n` covers bytes `[(n-1)·P, n·P)` of the file, `P` being the part size
//! of the domain's plan. A part fills a slot of the transfer's reservation;
//! when every byte of it has been written it is frozen (no copy) and sent
//! with `upload_part` by a task of its own, while later parts keep filling.
//! A write that needs a new slot when all are taken waits for a part in
//! flight to finish (backpressure). If every slot holds a part that is still
//! incomplete, waiting could never end, so the write fails instead: a writer
//! that delivers blocks out of order must stay within the window of
//! `slots × P` bytes above the lowest incomplete part.
//!
//! A file no larger than one part goes as a single PUT. Any failure, and
//! dropping the [`Upload`] before [`Upload::finish`] returns, aborts the
//! multipart upload, so no incomplete upload is left on the server. An abort
//! that fails is tried again twice (after 0.5 s and 2 s, each try with the
//! client's own retries); one that still fails is reported in the error and
//! to the journal ([`UploadJournal::left_pending`]), which keeps it for a
//! later run to abort.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use corral_domain::parts::{PartPlan, StreamingPlan, human};
use corral_domain::port::{CompletedPart, PutMode, PutResult, UploadId};
use corral_domain::retry::Backoff;
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage};
use tokio::task::JoinSet;

use super::store::{SlotBuf, Slots};

/// Aborts started by dropped uploads, so that a process can wait for them before it exits.
static BACKGROUND_ABORTS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits (up to `timeout`) for the aborts of uploads that were dropped
/// unfinished, e.g. on Ctrl-C: call it before the runtime shuts down, or an
/// abort may never be sent. Returns how many did not finish in time.
pub async fn wait_for_background_aborts(timeout: std::time::Duration) -> usize {
    let tasks: Vec<_> =
        std::mem::take(&mut *BACKGROUND_ABORTS.lock().unwrap_or_else(|p| p.into_inner()));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut late = 0;
    for task in tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            late += 1;
        }
    }
    late
}

/// Aborts `upload`, trying again when the server fails (the domain's
/// [`Backoff::aborts`]): an upload left pending costs storage until someone
/// aborts it. One already gone counts as aborted; refusals are final.
async fn abort_upload(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    upload: &UploadId,
) -> Result<(), Error> {
    let final_kind = |e: &Error| {
        matches!(
            e.kind(),
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::Unsupported
        )
    };
    let r = corral_adapters::retry::retry(
        Backoff::aborts(),
        "aborting the multipart upload",
        |e| e.kind() != ErrorKind::NotFound && !final_kind(e),
        || storage.abort_multipart(key, upload),
    )
    .await;
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The error of a failed upload whose abort failed too: says what is left.
/// Built from the messages, not the displays, so that the caller's path
/// (the user's, not the key) names it.
fn left_pending(e: Error, upload: &UploadId, abort: &Error) -> Error {
    let mut out = Error::new(
        e.kind(),
        format!(
            "{}; aborting its multipart upload failed too ({}), so upload {upload} is left pending on the server: `corral uploads abort` removes it",
            e.message(),
            abort.message()
        ),
    )
    .with_temporary(e.is_temporary());
    if let Some(op) = e.operation() {
        out = out.with_operation(op);
    }
    if let Some(path) = e.path() {
        out = out.with_path(path);
    }
    out
}

/// Aborts the multipart uploads of `key` that started during this upload and
/// are still pending, after a CreateMultipartUpload that failed: its
/// request may have reached the server and made an upload whose id this
/// process never learnt. Only where the server can list pending uploads.
/// (Never after an upload that went well: another writer of the same key
/// may be uploading now, and its upload is not an orphan.)
async fn sweep_orphans(storage: &dyn ObjectStorage, key: &ObjectKey, since: std::time::SystemTime) {
    if !storage.capabilities().list_pending_uploads {
        return;
    }
    let Ok(pending) = storage.list_pending_uploads(key).await else {
        return;
    };
    for u in pending {
        if u.key == *key && u.initiated.is_none_or(|t| t >= since) {
            match abort_upload(storage, key, &u.upload_id).await {
                Ok(()) => {
                    tracing::info!(key = %key, upload = %u.upload_id, "aborted an upload whose creation answer was lost")
                }
                Err(e) => {
                    tracing::warn!(key = %key, upload = %u.upload_id, error = %e, "could not abort an orphaned upload")
                }
            }
        }
    }
}

/// A copy of `e` (which is kept to fail later calls too), with its
/// operation and path as fields, so that a caller can rename the path.
fn replay(e: &Error) -> Error {
    let mut out = Error::new(e.kind(), e.message()).with_temporary(e.is_temporary());
    if let Some(op) = e.operation() {
        out = out.with_operation(op);
    }
    if let Some(path) = e.path() {
        out = out.with_path(path);
    }
    out
}

/// Told of a multipart upload's progress, to record it (see the CLI's
/// journal): called from the task that owns the [`Upload`], in order.
pub trait UploadJournal: Send {
    /// The multipart upload was created.
    fn started(&mut self, upload: &UploadId, part_size: u64);
    /// A part was accepted by the server; `crc64` is the CRC-64/NVME of its bytes.
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

/// A part being filled.
struct Filling {
    buf: SlotBuf,
    /// Merged byte ranges written so far, relative to the part.
    covered: Vec<Range<usize>>,
}

impl Filling {
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

/// An upload staged through the cache: blocks at any offset, each part sent
/// as soon as it is complete; dropping it unfinished aborts the multipart upload.
pub struct Upload {
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
    plan: Plan,
    slots: Arc<Slots>,
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
    /// When this upload started, less a margin for the server's clock.
    started: std::time::SystemTime,
    /// A CreateMultipartUpload was sent and never answered (it failed): an
    /// upload may exist that this process never learnt of.
    create_unknown: bool,
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
        slots: Arc<Slots>,
    ) -> Self {
        Self {
            storage,
            key,
            plan,
            slots,
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
            started: std::time::SystemTime::now() - std::time::Duration::from_secs(5),
            create_unknown: false,
        }
    }

    /// Records the upload's progress in `journal` as parts complete.
    pub fn set_journal(&mut self, journal: Box<dyn UploadJournal>) {
        self.journal = Some(journal);
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

    /// How many parts may be staged at once.
    pub fn window_parts(&self) -> usize {
        self.slots.count()
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
        let copy = replay(&e);
        if self.failed.is_none() {
            self.failed = Some(e);
        }
        copy
    }

    /// Writes `data` at `offset`. Blocks may come in any order, each byte once.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(replay(e));
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
        if !self.filling.contains_key(&n) {
            let buf = self.take_slot(n).await?;
            self.filling.insert(
                n,
                Filling {
                    buf,
                    covered: Vec::new(),
                },
            );
        }
        // A known part's length; a streamed part is complete when full.
        let len = self.part_len(n);
        let filling = self.filling.get_mut(&n).expect("inserted above");
        filling.buf.write_at(within, data)?;
        filling.cover(within..within + data.len());
        if filling.covers(len) {
            self.send(n, len).await?;
        }
        Ok(())
    }

    /// A slot for part `n`, waiting for a part in flight if none is free.
    async fn take_slot(&mut self, n: u64) -> Result<SlotBuf, Error> {
        loop {
            self.reap()?;
            if self.slots.available() > 0 {
                let len = self.part_len(n);
                return Ok(self.slots.take(len).await);
            }
            match self.in_flight.join_next().await {
                Some(r) => self.record(r)?,
                None => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "write to part {n} is beyond the transfer's window: all {} slots ({} each) hold parts that are not complete yet; write the earlier parts first",
                            self.slots.count(),
                            human(self.part_size())
                        ),
                    ));
                }
            }
        }
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

    /// Hands part `n` (its first `len` bytes) to the server.
    async fn send(&mut self, n: u64, len: usize) -> Result<(), Error> {
        let filling = self.filling.remove(&n).expect("part is filling");
        let bytes = filling.buf.freeze(len);
        self.sent.insert(n);
        if let Plan::Known(p) = self.plan
            && p.is_single_put()
        {
            self.single = Some(bytes);
            return Ok(());
        }
        let upload = match &self.upload_id {
            Some(u) => u.clone(),
            None => {
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
                u
            }
        };
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
        let parts = match self.plan {
            Plan::Known(plan) => plan.parts(),
            Plan::Streaming(_) => self.end.div_ceil(p).max(1),
        };
        // The last part of a stream is complete when everything below `end` is written.
        if let Plan::Streaming(_) = self.plan {
            let last_len = (self.end - (parts - 1) * p) as usize;
            if let Some(f) = self.filling.get(&parts)
                && f.covers(last_len)
            {
                if parts == 1 && self.upload_id.is_none() {
                    let f = self.filling.remove(&1).expect("present");
                    self.single = Some(f.buf.freeze(last_len));
                    self.sent.insert(1);
                } else {
                    self.send(parts, last_len).await?;
                }
            }
        }
        if self.end == 0 && self.sent.is_empty() {
            // An empty file: one empty PUT.
            self.single = Some(Bytes::new());
            self.sent.insert(1);
        }
        if let Some(missing) = (1..=parts).find(|n| !self.sent.contains(n)) {
            let start = (missing - 1) * p;
            return Err(Error::invalid_input(format!(
                "the upload is incomplete: bytes from offset {start} (part {missing}) were never written"
            )));
        }
        if let Some(bytes) = self.single.take() {
            return self.storage.put(&self.key, bytes, PutMode::Overwrite).await;
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
        Ok(result)
    }

    /// Stops every part in flight and aborts the multipart upload, if any;
    /// returns the upload and the error if it could not be aborted.
    async fn abort(&mut self) -> Option<(UploadId, Error)> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
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

impl Drop for Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped before finish (an error upstream, a cancelled future, a
        // panic): in the background, cancel the parts in flight, wait until
        // they are gone (their cache slots come back with them), then abort
        // the upload, so that no part lands after the abort.
        let mut parts = std::mem::take(&mut self.in_flight);
        parts.abort_all();
        let upload = self.upload_id.take();
        let create_unknown = self.create_unknown;
        if parts.is_empty() && upload.is_none() && !create_unknown {
            return;
        }
        let (storage, key, started) = (Arc::clone(&self.storage), self.key.clone(), self.started);
        let mut journal = self.journal.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let task = handle.spawn(async move {
                    while parts.join_next().await.is_some() {}
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
                BACKGROUND_ABORTS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(task);
            }
            Err(_) => {
                tracing::warn!(key = %key, "no runtime to abort a dropped multipart upload: it is left pending");
                if let (Some(j), Some(_)) = (&mut journal, &upload) {
                    j.left_pending(&Error::new(ErrorKind::Other, "no runtime to abort it"));
                }
            }
        }
    }
}
