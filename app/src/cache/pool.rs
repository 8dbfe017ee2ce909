//! Admission: who may stage how many bytes, in what order.
//!
//! The cache has a fixed capacity. A transfer asks for a *reservation* of at
//! least `min` bytes (one part for an upload, one chunk for a download) and
//! at most `max` (its per-transfer limit). The algorithm:
//!
//! 1. A request is granted at once if nobody is waiting and a free extent of
//!    at least `min` bytes exists; it gets `min(max, extent)` bytes.
//! 2. Otherwise it joins a FIFO queue. Only the head of the queue is ever
//!    considered: a small request never overtakes a large one, so a large
//!    request is not starved (at the cost of some idle bytes while the head
//!    waits for room).
//! 3. A released reservation returns its extent, merges it with its
//!    neighbours, and grants the queue's head while it fits.
//! 4. A waiter gives up after the configured timeout with "cache full: N
//!    transfers hold X of Y". A waiter whose future is dropped leaves the
//!    queue; a grant that raced with the drop is returned by the
//!    [`Reservation`]'s own `Drop`.
//!
//! In file mode the extents are byte ranges of the cache file and must be
//! contiguous (a transfer's buffers are slices of its extent). In memory mode
//! only the count matters, so free bytes are one pool. Releasing is RAII:
//! dropping a [`Reservation`] (after success, an error, a cancelled future
//! or a panic) gives its bytes back.

// The free list is a list of byte ranges: one-range lists are meant.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_domain::parts::human;
use corral_domain::{Error, ErrorKind};
use tokio::sync::oneshot;

/// What the cache is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheMetrics {
    /// The cache size.
    pub capacity: u64,
    /// Bytes held by reservations.
    pub reserved: u64,
    /// Bytes of buffers holding data now (allocated in memory mode, written in file mode).
    pub in_use: u64,
    /// The most bytes ever reserved at once.
    pub high_water: u64,
    /// Transfers holding a reservation.
    pub holders: u64,
    /// Transfers waiting for one.
    pub waiting: u64,
}

struct Waiter {
    id: u64,
    min: u64,
    max: u64,
    tx: oneshot::Sender<Reservation>,
}

struct State {
    /// Free extents, sorted by start, merged (file mode); or one counter (memory mode).
    free: Vec<Range<u64>>,
    queue: VecDeque<Waiter>,
    next_id: u64,
    reserved: u64,
    high_water: u64,
    holders: u64,
}

pub(crate) struct PoolInner {
    capacity: u64,
    contiguous: bool,
    wait: Duration,
    state: Mutex<State>,
    in_use: AtomicU64,
    buffers: Mutex<Buffers>,
}

/// Memory mode's buffers: allocated on first use, then kept for later
/// transfers, never more than the cache's size in all. Freeing an 8 MiB
/// buffer raises glibc's mmap threshold, after which freed buffers stay in
/// per-thread arenas: the process grew with its threads, not its cache.
#[derive(Default)]
struct Buffers {
    spare: Vec<Vec<u8>>,
    /// Bytes of every buffer allocated (in use or spare).
    allocated: u64,
}

/// Bytes granted to one transfer; returned when dropped.
pub struct Reservation {
    pool: Arc<PoolInner>,
    extent: Range<u64>,
    armed: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("extent", &self.extent)
            .finish()
    }
}

impl Reservation {
    /// How many bytes were granted.
    pub fn len(&self) -> u64 {
        self.extent.end - self.extent.start
    }

    /// Whether nothing was granted (a zero-byte transfer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the bytes are (an offset range of the cache file in file mode).
    pub(crate) fn extent(&self) -> Range<u64> {
        self.extent.clone()
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        &self.pool
    }

    /// Takes the extent out without releasing it (the caller frees it under the lock).
    fn disarm(mut self) -> Range<u64> {
        self.armed = false;
        self.extent.clone()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.pool.lock();
            self.pool.free_extent(&mut state, self.extent.clone());
            state.holders -= 1;
            state.reserved -= self.extent.end - self.extent.start;
            self.pool.grant_waiters(&mut state);
        }
    }
}

impl PoolInner {
    pub(crate) fn new(capacity: u64, contiguous: bool, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            contiguous,
            wait,
            buffers: Mutex::default(),
            state: Mutex::new(State {
                free: if capacity > 0 {
                    vec![0..capacity]
                } else {
                    Vec::new()
                },
                queue: VecDeque::new(),
                next_id: 0,
                reserved: 0,
                high_water: 0,
                holders: 0,
            }),
            in_use: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // (every update is a few arithmetic steps), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` bytes for a slot of `slot_size` (memory mode): a
    /// spare one if one is large enough, else a new one, freeing spare ones
    /// first if the cache's size would be exceeded. Its bytes are not
    /// cleared: every byte of a slot is written before it is read.
    pub(crate) fn take_buffer(&self, len: usize, slot_size: usize) -> Vec<u8> {
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let best = b
            .spare
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut buf = b.spare.swap_remove(i);
            buf.resize(len, 0);
            return buf;
        }
        let size = slot_size.max(len);
        while b.allocated + size as u64 > self.capacity {
            let Some(old) = b.spare.pop() else { break };
            b.allocated -= old.capacity() as u64;
        }
        let mut buf = Vec::with_capacity(size);
        buf.resize(len, 0);
        b.allocated += buf.capacity() as u64;
        buf
    }

    /// A slot's buffer back, for later slots.
    pub(crate) fn give_back(&self, buf: Vec<u8>) {
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        b.spare.push(buf);
    }

    pub(crate) fn add_in_use(&self, n: u64) {
        self.in_use.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub_in_use(&self, n: u64) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn metrics(&self) -> CacheMetrics {
        let s = self.lock();
        CacheMetrics {
            capacity: self.capacity,
            reserved: s.reserved,
            in_use: self.in_use.load(Ordering::Relaxed),
            high_water: s.high_water,
            holders: s.holders,
            waiting: s.queue.len() as u64,
        }
    }

    /// Takes up to `max` (at least `min`) bytes from the free extents, if possible.
    fn alloc(&self, state: &mut State, min: u64, max: u64) -> Option<Range<u64>> {
        if !self.contiguous {
            let available: u64 = state.free.iter().map(|r| r.end - r.start).sum();
            if available < min {
                return None;
            }
            let grant = max.min(available);
            // Memory mode: offsets are meaningless; keep one counter-like extent.
            let rest = available - grant;
            state.free = if rest > 0 { vec![0..rest] } else { Vec::new() };
            return Some(0..grant);
        }
        // Prefer an extent that holds `max`; else the largest that holds `min`.
        let pick = state
            .free
            .iter()
            .position(|r| r.end - r.start >= max)
            .or_else(|| {
                state
                    .free
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.end - r.start >= min)
                    .max_by_key(|(_, r)| r.end - r.start)
                    .map(|(i, _)| i)
            })?;
        let r = state.free[pick].clone();
        let grant = max.min(r.end - r.start);
        let taken = r.start..r.start + grant;
        if taken.end == r.end {
            state.free.remove(pick);
        } else {
            state.free[pick].start = taken.end;
        }
        Some(taken)
    }

    fn free_extent(&self, state: &mut State, extent: Range<u64>) {
        if extent.start == extent.end {
            return;
        }
        if !self.contiguous {
            let available: u64 = state.free.iter().map(|r| r.end - r.start).sum::<u64>()
                + (extent.end - extent.start);
            state.free = vec![0..available];
            return;
        }
        let i = state.free.partition_point(|r| r.start < extent.start);
        state.free.insert(i, extent);
        // Merge with the next, then with the previous.
        if i + 1 < state.free.len() && state.free[i].end == state.free[i + 1].start {
            state.free[i].end = state.free[i + 1].end;
            state.free.remove(i + 1);
        }
        if i > 0 && state.free[i - 1].end == state.free[i].start {
            state.free[i - 1].end = state.free[i].end;
            state.free.remove(i);
        }
    }

    fn account(&self, state: &mut State, extent: &Range<u64>) {
        state.holders += 1;
        state.reserved += extent.end - extent.start;
        state.high_water = state.high_water.max(state.reserved);
    }

    /// Grants the queue's head while it fits (FIFO: nobody overtakes the head).
    fn grant_waiters(self: &Arc<Self>, state: &mut State) {
        while let Some(head) = state.queue.front() {
            let Some(extent) = self.alloc(state, head.min, head.max) else {
                break;
            };
            let Some(waiter) = state.queue.pop_front() else {
                break;
            };
            self.account(state, &extent);
            let reservation = Reservation {
                pool: Arc::clone(self),
                extent,
                armed: true,
            };
            if let Err(unwanted) = waiter.tx.send(reservation) {
                // The waiter is gone: take the bytes back here, under the lock
                // (its Drop would take the lock again).
                let extent = unwanted.disarm();
                state.holders -= 1;
                state.reserved -= extent.end - extent.start;
                self.free_extent(state, extent);
            }
        }
    }

    /// A reservation of at least `min` and at most `max` bytes, waiting in
    /// FIFO order up to the configured timeout.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        min: u64,
        max: u64,
    ) -> Result<Reservation, Error> {
        let max = max.max(min);
        if min > self.capacity {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a transfer needs at least {} of cache but the cache holds {}: raise the cache size (maxCloudCacheSize)",
                    human(min),
                    human(self.capacity)
                ),
            )
            .with_setting("maxCloudCacheSize"));
        }
        let (id, rx) = {
            let mut state = self.lock();
            if state.queue.is_empty()
                && let Some(extent) = self.alloc(&mut state, min, max)
            {
                self.account(&mut state, &extent);
                return Ok(Reservation {
                    pool: Arc::clone(self),
                    extent,
                    armed: true,
                });
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(Waiter { id, min, max, tx });
            (id, rx)
        };
        // Leaves the queue however this future ends (timeout, drop, grant).
        let _leave = LeaveQueue { pool: self, id };
        match tokio::time::timeout(self.wait, rx).await {
            Ok(Ok(reservation)) => Ok(reservation),
            Ok(Err(_)) => Err(Error::new(ErrorKind::Other, "the cache was shut down")),
            Err(_) => {
                let m = self.metrics();
                Err(Error::new(
                    ErrorKind::Cancelled,
                    format!(
                        "cache full: {} transfers hold {} of {} and none finished within {} s; raise the cache size (maxCloudCacheSize) or run fewer transfers at once",
                        m.holders,
                        human(m.reserved),
                        human(m.capacity),
                        self.wait.as_secs()
                    ),
                )
                .with_setting("maxCloudCacheSize"))
            }
        }
    }
}

struct LeaveQueue<'a> {
    pool: &'a Arc<PoolInner>,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        let before = state.queue.len();
        state.queue.retain(|w| w.id != self.id);
        if state.queue.len() != before {
            // The head may have been this waiter: the next one may fit now.
            self.pool.grant_waiters(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pool(capacity: u64, contiguous: bool) -> Arc<PoolInner> {
        PoolInner::new(capacity, contiguous, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn grants_up_to_max_and_returns_on_drop() {
        let p = pool(100 * MIB, true);
        let a = p.reserve(8 * MIB, 64 * MIB).await.unwrap();
        assert_eq!(a.len(), 64 * MIB);
        let b = p.reserve(8 * MIB, 64 * MIB).await.unwrap();
        assert_eq!(b.len(), 36 * MIB, "the rest, since it holds at least min");
        assert_eq!(p.metrics().reserved, 100 * MIB);
        assert_eq!(p.metrics().holders, 2);
        drop(a);
        drop(b);
        let m = p.metrics();
        assert_eq!((m.reserved, m.holders, m.high_water), (0, 0, 100 * MIB));
        // Extents merged back: the whole capacity is one extent again.
        assert_eq!(
            p.reserve(100 * MIB, 100 * MIB).await.unwrap().len(),
            100 * MIB
        );
    }

    #[tokio::test]
    async fn full_cache_times_out_with_the_numbers() {
        let p = pool(16 * MIB, false);
        let _a = p.reserve(16 * MIB, 16 * MIB).await.unwrap();
        let e = p.reserve(8 * MIB, 8 * MIB).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert!(
            e.to_string()
                .starts_with("cache full: 1 transfers hold 16 MiB of 16 MiB"),
            "{e}"
        );
        assert_eq!(
            p.metrics().waiting,
            0,
            "the timed-out waiter left the queue"
        );
        let e = p.reserve(17 * MIB, 17 * MIB).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
    }

    #[tokio::test]
    async fn fifo_a_large_request_is_not_overtaken() {
        let p = PoolInner::new(10 * MIB, false, Duration::from_secs(5));
        let first = p.reserve(6 * MIB, 6 * MIB).await.unwrap();
        // The large one queues first; a small one that would fit must wait behind it.
        let large = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.reserve(10 * MIB, 10 * MIB).await.map(|r| r.len()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let small = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.reserve(MIB, MIB).await.map(|r| r.len()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            p.metrics().waiting,
            2,
            "4 MiB are free, yet the 1 MiB request waits"
        );
        drop(first);
        assert_eq!(large.await.unwrap().unwrap(), 10 * MIB);
        assert_eq!(small.await.unwrap().unwrap(), MIB);
        assert_eq!(p.metrics().reserved, 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_returns_a_racing_grant() {
        let p = PoolInner::new(8 * MIB, true, Duration::from_secs(5));
        let held = p.reserve(8 * MIB, 8 * MIB).await.unwrap();
        let waiting = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.reserve(8 * MIB, 8 * MIB).await.map(|r| r.len()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let m = p.metrics();
        assert_eq!((m.reserved, m.holders, m.waiting), (0, 0, 0));
    }

    #[tokio::test]
    async fn contiguous_extents_fragment_and_heal() {
        let p = pool(30 * MIB, true);
        let a = p.reserve(10 * MIB, 10 * MIB).await.unwrap();
        let b = p.reserve(10 * MIB, 10 * MIB).await.unwrap();
        let c = p.reserve(10 * MIB, 10 * MIB).await.unwrap();
        drop(a);
        drop(c);
        // 20 MiB free, but not contiguous: a 20 MiB request must wait.
        assert!(p.reserve(20 * MIB, 20 * MIB).await.is_err());
        drop(b);
        assert_eq!(
            p.reserve(30 * MIB, 30 * MIB).await.unwrap().extent(),
            0..30 * MIB
        );
    }
}
