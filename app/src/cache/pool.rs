//! Admission: who may stage how many bytes, in what order.
//!
//! The cache has a fixed capacity. Every reservation belongs to an
//! *account* (a user of a server; one account for the command), and an
//! account holds at most its share of the cache (`maxCloudCachePerUser`).
//! Transfers reserve lazily, one part or one chunk at a time, when they need
//! the bytes, so an open file that moves nothing holds nothing. A request is
//! for at least `min` and at most `max` bytes. The algorithm:
//!
//! 1. A request joins its account's queue (first come, first served within
//!    an account); accounts with requests waiting take turns.
//! 2. The account whose turn it is gets its oldest request granted if its
//!    share allows and the free room holds `min`; it then goes to the back
//!    of the turn. An account at its share is passed over (it waits for its
//!    own transfers, never holding up the others). If the room does not hold
//!    the request whose turn it is, nobody overtakes it, so that a large
//!    request is not starved by small ones (at the cost of some idle bytes
//!    while it waits).
//! 3. A released reservation returns its extent, merges it with its
//!    neighbours and runs the turns again.
//! 4. A waiter gives up after the configured timeout with "cache full: N
//!    transfers hold X of Y". A waiter whose future is dropped (its session
//!    ended) leaves the queue at once; a grant that raced with the drop is
//!    returned by the [`Reservation`]'s own `Drop`.
//!
//! In file mode the extents are byte ranges of the cache file and must be
//! contiguous (a slot is one extent). In memory mode only the count matters,
//! so free bytes are one pool. Releasing is RAII: dropping a [`Reservation`]
//! (after success, an error, a cancelled future or a panic) gives its bytes
//! back.

// The free list is a list of byte ranges: one-range lists are meant.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use corral_domain::parts::human;
use corral_domain::{Error, ErrorKind};
use tokio::sync::oneshot;

/// What the cache is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheMetrics {
    /// The cache size.
    pub capacity: u64,
    /// The most one account may hold.
    pub per_account: u64,
    /// Bytes held by reservations.
    pub reserved: u64,
    /// Bytes of buffers holding data now (allocated in memory mode, written in file mode).
    pub in_use: u64,
    /// Bytes of memory buffers allocated, in use or kept spare (memory mode).
    pub allocated: u64,
    /// The most bytes ever reserved at once.
    pub high_water: u64,
    /// Reservations held (a transfer holds one per part or chunk staged).
    pub holders: u64,
    /// Requests waiting for room.
    pub waiting: u64,
    /// Accounts holding or waiting for room.
    pub accounts: u64,
}

/// One account's use of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUse {
    /// The account's name (the user's, for a server).
    pub name: String,
    /// Bytes it holds.
    pub reserved: u64,
    /// Its requests waiting for room.
    pub waiting: u64,
}

struct Waiter {
    id: u64,
    min: u64,
    max: u64,
    tx: oneshot::Sender<Reservation>,
}

#[derive(Default)]
struct AccountState {
    name: Arc<str>,
    held: u64,
    queue: VecDeque<Waiter>,
}

struct State {
    /// Free extents, sorted by start, merged (file mode); or one counter (memory mode).
    free: Vec<Range<u64>>,
    accounts: HashMap<u64, AccountState>,
    /// Accounts with requests waiting, in turn order.
    turn: VecDeque<u64>,
    next_id: u64,
    reserved: u64,
    high_water: u64,
    holders: u64,
    waiting: u64,
}

/// A memory buffer kept for later slots, with when it was last given back.
struct Spare {
    buf: memmap2::MmapMut,
    since: Instant,
}

/// Memory mode's buffers: anonymous mappings, so that a freed buffer goes
/// back to the system whatever the allocator's thresholds. Kept for later
/// slots while transfers want them (no fresh pages to fault in for every
/// part), and given back once nobody has wanted them for [`SPARE_IDLE`]:
/// a server idle after a burst returns near its idle size.
#[derive(Default)]
struct Buffers {
    spare: Vec<Spare>,
    /// Bytes of every buffer allocated (in use or spare).
    allocated: u64,
    /// Bytes of the spare buffers.
    spare_bytes: u64,
}

/// The most bytes kept in spare buffers: two parts, so that a transfer's
/// next part or chunk finds the buffer its last one gave back. Beyond,
/// buffers go back to the system at once: kept up to the cache's size, the
/// odd sizes of growing first parts added 22 MiB to a 64 MiB upload
/// (measured, `corral serve sftp`, 512 MiB put).
const SPARE_MOST: u64 = 16 << 20;

impl Buffers {
    /// Frees the oldest spare buffer; false if there is none.
    fn free_oldest(&mut self) -> bool {
        let Some(i) = (0..self.spare.len()).min_by_key(|&i| self.spare[i].since) else {
            return false;
        };
        let old = self.spare.swap_remove(i);
        self.allocated -= old.buf.len() as u64;
        self.spare_bytes -= old.buf.len() as u64;
        true
    }
}

/// How long a spare buffer is kept when no slot wants it.
pub(crate) const SPARE_IDLE: Duration = Duration::from_secs(20);

pub(crate) struct PoolInner {
    capacity: u64,
    per_account: u64,
    contiguous: bool,
    wait: Duration,
    state: Mutex<State>,
    in_use: AtomicU64,
    buffers: Mutex<Buffers>,
    /// Accounts by name, so that every session of one user shares one.
    names: Mutex<HashMap<Arc<str>, Weak<Account>>>,
    trimmer: std::sync::Once,
}

/// Who holds a reservation: one user of a server, or the command. Every
/// session of a user shares its account (see [`super::TransferCache::for_account`]).
pub struct Account {
    id: u64,
    name: Arc<str>,
    pool: Arc<PoolInner>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The account's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A reservation of at least `min` and at most `max` bytes, waiting
    /// for this account's turn up to the configured timeout.
    pub async fn reserve(&self, min: u64, max: u64) -> Result<Reservation, Error> {
        self.pool.reserve(self.id, &self.name, min, max).await
    }

    /// A reservation of up to `max` bytes (at least `min`) if one can be
    /// granted now without overtaking anyone.
    pub fn try_reserve(&self, min: u64, max: u64) -> Option<Reservation> {
        self.pool.try_reserve(self.id, &self.name, min, max)
    }

    pub(crate) fn pool(&self) -> &Arc<PoolInner> {
        &self.pool
    }
}

/// Bytes granted to one account; returned when dropped.
pub struct Reservation {
    pool: Arc<PoolInner>,
    account: u64,
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
            self.pool
                .release(&mut state, self.account, self.extent.clone());
            self.pool.grant_waiters(&mut state);
        }
    }
}

impl PoolInner {
    pub(crate) fn new(
        capacity: u64,
        per_account: u64,
        contiguous: bool,
        wait: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            per_account: per_account.clamp(1, capacity.max(1)),
            contiguous,
            wait,
            buffers: Mutex::default(),
            state: Mutex::new(State {
                free: if capacity > 0 {
                    vec![0..capacity]
                } else {
                    Vec::new()
                },
                accounts: HashMap::new(),
                turn: VecDeque::new(),
                next_id: 1,
                reserved: 0,
                high_water: 0,
                holders: 0,
                waiting: 0,
            }),
            in_use: AtomicU64::new(0),
            names: Mutex::default(),
            trimmer: std::sync::Once::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // (every update is a few arithmetic steps), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account called `name`, shared with every live holder of that name.
    pub(crate) fn account(self: &Arc<Self>, name: &str) -> Arc<Account> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = names.get(name).and_then(Weak::upgrade) {
            return a;
        }
        names.retain(|_, w| w.strong_count() > 0);
        let id = {
            let mut s = self.lock();
            let id = s.next_id;
            s.next_id += 1;
            id
        };
        let name: Arc<str> = Arc::from(name);
        let a = Arc::new(Account {
            id,
            name: Arc::clone(&name),
            pool: Arc::clone(self),
        });
        names.insert(name, Arc::downgrade(&a));
        a
    }

    /// A buffer of at least `len` bytes (memory mode): a spare one that
    /// fits, else a new one, freeing spare ones first if the cache's size
    /// would be exceeded. Its bytes are not cleared: every byte of a slot is
    /// written before it is read.
    pub(crate) fn take_buffer(self: &Arc<Self>, len: usize) -> Result<memmap2::MmapMut, Error> {
        let len = len.max(1);
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        // The smallest spare that holds `len`, but not one more than twice
        // as large (a small file does not pin a part-sized buffer).
        let best = b
            .spare
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.buf.len() >= len && s.buf.len() <= len.saturating_mul(2).max(1 << 16)
            })
            .min_by_key(|(_, s)| s.buf.len())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = b.spare.swap_remove(i).buf;
            b.spare_bytes -= buf.len() as u64;
            return Ok(buf);
        }
        // None fits: those too small go back to the system (a transfer's
        // parts grow to their size, then stay there; the small ones left
        // behind would only add to its memory).
        let (small, kept): (Vec<Spare>, Vec<Spare>) = std::mem::take(&mut b.spare)
            .into_iter()
            .partition(|s| s.buf.len() < len);
        b.spare = kept;
        for s in small {
            b.allocated -= s.buf.len() as u64;
            b.spare_bytes -= s.buf.len() as u64;
        }
        while b.allocated + len as u64 > self.capacity && b.free_oldest() {}
        let buf = memmap2::MmapMut::map_anon(len).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot allocate {} for the transfer cache: {e}",
                    human(len as u64)
                ),
            )
        })?;
        b.allocated += buf.len() as u64;
        drop(b);
        self.start_trimmer();
        Ok(buf)
    }

    /// A slot's buffer back, for later slots.
    pub(crate) fn give_back(&self, buf: memmap2::MmapMut) {
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        b.spare_bytes += buf.len() as u64;
        b.spare.push(Spare {
            buf,
            since: Instant::now(),
        });
        while b.spare_bytes > SPARE_MOST && b.free_oldest() {}
    }

    /// Frees the spare buffers nobody wanted for `idle`; returns their bytes.
    pub(crate) fn trim(&self, idle: Duration) -> u64 {
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let before = b.allocated;
        let mut kept = Vec::with_capacity(b.spare.len());
        for s in std::mem::take(&mut b.spare) {
            if s.since.elapsed() >= idle {
                b.allocated -= s.buf.len() as u64;
                b.spare_bytes -= s.buf.len() as u64;
            } else {
                kept.push(s);
            }
        }
        b.spare = kept;
        before - b.allocated
    }

    /// Trims spare buffers in the background, where a runtime runs (a
    /// server idle after a burst gives its memory back without a new
    /// transfer to notice).
    fn start_trimmer(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        self.trimmer.call_once(move || {
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(SPARE_IDLE / 4).await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.trim(SPARE_IDLE);
                }
            });
        });
    }

    pub(crate) fn add_in_use(&self, n: u64) {
        self.in_use.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub_in_use(&self, n: u64) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn metrics(&self) -> CacheMetrics {
        let allocated = self
            .buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocated;
        let s = self.lock();
        CacheMetrics {
            capacity: self.capacity,
            per_account: self.per_account,
            reserved: s.reserved,
            in_use: self.in_use.load(Ordering::Relaxed),
            allocated,
            high_water: s.high_water,
            holders: s.holders,
            waiting: s.waiting,
            accounts: s.accounts.len() as u64,
        }
    }

    /// What each account holds and waits for, largest first.
    pub(crate) fn accounts(&self) -> Vec<AccountUse> {
        let s = self.lock();
        let mut out: Vec<AccountUse> = s
            .accounts
            .values()
            .map(|a| AccountUse {
                name: a.name.to_string(),
                reserved: a.held,
                waiting: a.queue.len() as u64,
            })
            .collect();
        out.sort_by(|a, b| b.reserved.cmp(&a.reserved).then(a.name.cmp(&b.name)));
        out
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

    /// Counts a grant of `extent` to `account`.
    fn account_grant(&self, state: &mut State, account: u64, extent: &Range<u64>) {
        let n = extent.end - extent.start;
        state.holders += 1;
        state.reserved += n;
        state.high_water = state.high_water.max(state.reserved);
        if let Some(a) = state.accounts.get_mut(&account) {
            a.held += n;
        }
    }

    /// Returns `extent` of `account` to the free room.
    fn release(&self, state: &mut State, account: u64, extent: Range<u64>) {
        let n = extent.end - extent.start;
        state.holders -= 1;
        state.reserved -= n;
        if let Some(a) = state.accounts.get_mut(&account) {
            a.held -= n;
            if a.held == 0 && a.queue.is_empty() {
                state.accounts.remove(&account);
            }
        }
        self.free_extent(state, extent);
    }

    /// Grants waiting requests, account by account in turn (see the module docs).
    fn grant_waiters(self: &Arc<Self>, state: &mut State) {
        let mut passed = 0;
        while passed < state.turn.len() {
            let Some(&id) = state.turn.front() else { break };
            let Some(a) = state.accounts.get(&id) else {
                state.turn.pop_front();
                continue;
            };
            let Some(head) = a.queue.front() else {
                state.turn.pop_front();
                continue;
            };
            let (min, max, share) = (
                head.min,
                head.max,
                self.per_account - a.held.min(self.per_account),
            );
            if min > share {
                // At its share: its own transfers will make room for it.
                state.turn.rotate_left(1);
                passed += 1;
                continue;
            }
            let Some(extent) = self.alloc(state, min, max.min(share)) else {
                // Nobody overtakes the request whose turn it is.
                break;
            };
            let a = state.accounts.get_mut(&id).expect("present above");
            let waiter = a.queue.pop_front().expect("present above");
            let more = !a.queue.is_empty();
            state.waiting -= 1;
            state.turn.pop_front();
            if more {
                state.turn.push_back(id);
            }
            self.account_grant(state, id, &extent);
            passed = 0;
            let reservation = Reservation {
                pool: Arc::clone(self),
                account: id,
                extent,
                armed: true,
            };
            if let Err(unwanted) = waiter.tx.send(reservation) {
                // The waiter is gone: take the bytes back here, under the lock
                // (its Drop would take the lock again).
                let extent = unwanted.disarm();
                self.release(state, id, extent);
            }
        }
    }

    fn check_size(&self, min: u64) -> Result<(), Error> {
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
        if min > self.per_account {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a transfer needs at least {} of cache but one user may hold {}: raise the share per user (maxCloudCachePerUser)",
                    human(min),
                    human(self.per_account)
                ),
            )
            .with_setting("maxCloudCachePerUser"));
        }
        Ok(())
    }

    fn enqueue(
        &self,
        state: &mut State,
        account: u64,
        name: &Arc<str>,
        min: u64,
        max: u64,
    ) -> (u64, oneshot::Receiver<Reservation>) {
        let (tx, rx) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        let a = state
            .accounts
            .entry(account)
            .or_insert_with(|| AccountState {
                name: Arc::clone(name),
                ..AccountState::default()
            });
        if a.queue.is_empty() {
            state.turn.push_back(account);
        }
        let a = state.accounts.get_mut(&account).expect("inserted above");
        a.queue.push_back(Waiter { id, min, max, tx });
        state.waiting += 1;
        (id, rx)
    }

    /// A grant without queueing, when nobody waits (the common case).
    fn grant_now(
        self: &Arc<Self>,
        state: &mut State,
        account: u64,
        name: &Arc<str>,
        min: u64,
        max: u64,
    ) -> Option<Reservation> {
        if !state.turn.is_empty() {
            return None;
        }
        let held = state.accounts.get(&account).map_or(0, |a| a.held);
        let share = self.per_account.saturating_sub(held);
        if min > share {
            return None;
        }
        let extent = self.alloc(state, min, max.min(share))?;
        state
            .accounts
            .entry(account)
            .or_insert_with(|| AccountState {
                name: Arc::clone(name),
                ..AccountState::default()
            });
        self.account_grant(state, account, &extent);
        Some(Reservation {
            pool: Arc::clone(self),
            account,
            extent,
            armed: true,
        })
    }

    /// A grant now, if the turns allow one without waiting.
    fn try_reserve(
        self: &Arc<Self>,
        account: u64,
        name: &Arc<str>,
        min: u64,
        max: u64,
    ) -> Option<Reservation> {
        if self.check_size(min).is_err() {
            return None;
        }
        let max = max.max(min);
        let mut state = self.lock();
        if let Some(r) = self.grant_now(&mut state, account, name, min, max) {
            return Some(r);
        }
        let (id, mut rx) = self.enqueue(&mut state, account, name, min, max);
        self.grant_waiters(&mut state);
        if let Ok(r) = rx.try_recv() {
            return Some(r);
        }
        self.leave(&mut state, account, id);
        None
    }

    /// Removes waiter `id` of `account` if it still waits.
    fn leave(self: &Arc<Self>, state: &mut State, account: u64, id: u64) {
        let Some(a) = state.accounts.get_mut(&account) else {
            return;
        };
        let before = a.queue.len();
        a.queue.retain(|w| w.id != id);
        if a.queue.len() == before {
            return;
        }
        state.waiting -= 1;
        if a.queue.is_empty() {
            state.turn.retain(|t| *t != account);
            if a.held == 0 {
                state.accounts.remove(&account);
            }
        }
        // The head of a turn may have been this waiter: the next may fit now.
        self.grant_waiters(state);
    }

    /// A reservation of at least `min` and at most `max` bytes for
    /// `account`, waiting for its turn up to the configured timeout.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        account: u64,
        name: &Arc<str>,
        min: u64,
        max: u64,
    ) -> Result<Reservation, Error> {
        self.check_size(min)?;
        let max = max.max(min);
        let (id, rx) = {
            let mut state = self.lock();
            if let Some(r) = self.grant_now(&mut state, account, name, min, max) {
                return Ok(r);
            }
            let (id, mut rx) = self.enqueue(&mut state, account, name, min, max);
            self.grant_waiters(&mut state);
            if let Ok(r) = rx.try_recv() {
                return Ok(r);
            }
            (id, rx)
        };
        // Leaves the queue however this future ends (timeout, drop, grant).
        let _leave = LeaveQueue {
            pool: self,
            account,
            id,
        };
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
    account: u64,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        self.pool.leave(&mut state, self.account, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pool(capacity: u64, contiguous: bool) -> Arc<PoolInner> {
        PoolInner::new(capacity, capacity, contiguous, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn grants_up_to_max_and_returns_on_drop() {
        let p = pool(100 * MIB, true);
        let acct = p.account("a");
        let a = acct.reserve(8 * MIB, 64 * MIB).await.unwrap();
        assert_eq!(a.len(), 64 * MIB);
        let b = acct.reserve(8 * MIB, 64 * MIB).await.unwrap();
        assert_eq!(b.len(), 36 * MIB, "the rest, since it holds at least min");
        assert_eq!(p.metrics().reserved, 100 * MIB);
        assert_eq!(p.metrics().holders, 2);
        drop(a);
        drop(b);
        let m = p.metrics();
        assert_eq!(
            (m.reserved, m.holders, m.high_water, m.accounts),
            (0, 0, 100 * MIB, 0)
        );
        // Extents merged back: the whole capacity is one extent again.
        assert_eq!(
            acct.reserve(100 * MIB, 100 * MIB).await.unwrap().len(),
            100 * MIB
        );
    }

    #[tokio::test]
    async fn full_cache_times_out_with_the_numbers() {
        let p = pool(16 * MIB, false);
        let acct = p.account("a");
        let _a = acct.reserve(16 * MIB, 16 * MIB).await.unwrap();
        let e = acct.reserve(8 * MIB, 8 * MIB).await.unwrap_err();
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
        let e = acct.reserve(17 * MIB, 17 * MIB).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
    }

    #[tokio::test]
    async fn fifo_a_large_request_is_not_overtaken() {
        let p = PoolInner::new(10 * MIB, 10 * MIB, false, Duration::from_secs(5));
        let acct = p.account("a");
        let first = acct.reserve(6 * MIB, 6 * MIB).await.unwrap();
        // The large one queues first; a small one that would fit must wait behind it.
        let large = tokio::spawn({
            let acct = Arc::clone(&acct);
            async move { acct.reserve(10 * MIB, 10 * MIB).await.map(|r| r.len()) }
        });
        while p.metrics().waiting < 1 {
            tokio::task::yield_now().await;
        }
        let small = tokio::spawn({
            let acct = Arc::clone(&acct);
            async move { acct.reserve(MIB, MIB).await.map(|r| r.len()) }
        });
        while p.metrics().waiting < 2 {
            tokio::task::yield_now().await;
        }
        assert!(
            acct.try_reserve(MIB, MIB).is_none(),
            "4 MiB are free, yet a 1 MiB request does not overtake"
        );
        drop(first);
        assert_eq!(large.await.unwrap().unwrap(), 10 * MIB);
        assert_eq!(small.await.unwrap().unwrap(), MIB);
        assert_eq!(p.metrics().reserved, 0);
    }

    #[tokio::test]
    async fn an_account_at_its_share_never_holds_up_another() {
        let p = PoolInner::new(64 * MIB, 16 * MIB, false, Duration::from_secs(5));
        let (greedy, other) = (p.account("greedy"), p.account("other"));
        assert!(
            Arc::ptr_eq(&greedy, &p.account("greedy")),
            "one account per name"
        );
        let held = greedy.reserve(16 * MIB, 16 * MIB).await.unwrap();
        // Greedy waits for its own share to come back…
        let waiting = tokio::spawn({
            let greedy = Arc::clone(&greedy);
            async move { greedy.reserve(MIB, MIB).await.map(|r| r.len()) }
        });
        while p.metrics().waiting < 1 {
            tokio::task::yield_now().await;
        }
        // …while the other account is served at once, past it.
        let r = other
            .try_reserve(16 * MIB, 16 * MIB)
            .expect("served at once");
        assert_eq!(r.len(), 16 * MIB);
        let e = other.reserve(17 * MIB, 17 * MIB).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        assert_eq!(e.setting(), Some("maxCloudCachePerUser"), "{e}");
        let uses = p.accounts();
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert_eq!((uses[0].reserved, uses[1].reserved), (16 * MIB, 16 * MIB));
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), MIB);
    }

    #[tokio::test]
    async fn accounts_take_turns() {
        let p = PoolInner::new(4 * MIB, 4 * MIB, false, Duration::from_secs(5));
        let (a, b, c) = (p.account("a"), p.account("b"), p.account("c"));
        let all = c.reserve(4 * MIB, 4 * MIB).await.unwrap();
        // A queues three requests, then B one: B's comes second, not fourth.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (acct, tag) in [(&a, "a1"), (&a, "a2"), (&a, "a3"), (&b, "b1")] {
            let (acct, order) = (Arc::clone(acct), Arc::clone(&order));
            let expect = p.metrics().waiting + 1;
            tasks.push(tokio::spawn(async move {
                let r = acct.reserve(4 * MIB, 4 * MIB).await.unwrap();
                order.lock().unwrap().push(tag);
                drop(r);
            }));
            while p.metrics().waiting < expect {
                tokio::task::yield_now().await;
            }
        }
        drop(all);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a1", "b1", "a2", "a3"]);
    }

    /// The race of the module docs: a waiter is granted its room while its
    /// future is not polled, then dropped (its session ended). The grant
    /// sits in the waiter's channel and must come back to the pool through
    /// the Reservation's own Drop, here to the next waiter.
    #[tokio::test]
    async fn a_dropped_waiter_returns_a_racing_grant() {
        let p = PoolInner::new(8 * MIB, 8 * MIB, true, Duration::from_secs(5));
        let acct = p.account("a");
        let held = acct.reserve(8 * MIB, 8 * MIB).await.unwrap();
        let mut first = Box::pin(acct.reserve(8 * MIB, 8 * MIB));
        assert!(futures::poll!(first.as_mut()).is_pending(), "queued");
        let second = tokio::spawn({
            let acct = Arc::clone(&acct);
            async move { acct.reserve(8 * MIB, 8 * MIB).await.map(|r| r.len()) }
        });
        while p.metrics().waiting < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let m = p.metrics();
        assert_eq!(
            (m.reserved, m.holders, m.waiting),
            (8 * MIB, 1, 1),
            "granted to the first waiter, which has not seen it: {m:?}"
        );
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the racing grant came back to the next waiter")
            .unwrap();
        assert_eq!(got.unwrap(), 8 * MIB);
        let m = p.metrics();
        assert_eq!(
            (m.reserved, m.holders, m.waiting, m.accounts),
            (0, 0, 0, 0),
            "{m:?}"
        );
    }

    /// The other side of that race: the waiter's receiving end is gone
    /// before the grant is made, so the send fails and the grant is taken
    /// back under the lock.
    #[tokio::test]
    async fn a_grant_to_a_waiter_already_gone_is_taken_back() {
        let p = PoolInner::new(8 * MIB, 8 * MIB, true, Duration::from_secs(5));
        let acct = p.account("a");
        let held = acct.reserve(8 * MIB, 8 * MIB).await.unwrap();
        let (id, rx) = {
            let mut state = p.lock();
            let name: Arc<str> = Arc::from("a");
            p.enqueue(&mut state, acct.id, &name, 8 * MIB, 8 * MIB)
        };
        drop(rx);
        drop(held); // grants the queued waiter, whose send fails
        let m = p.metrics();
        assert_eq!(
            (m.reserved, m.holders, m.waiting, m.accounts),
            (0, 0, 0, 0),
            "{m:?}"
        );
        {
            let mut state = p.lock();
            p.leave(&mut state, acct.id, id); // already gone: no effect
        }
        assert_eq!(acct.reserve(8 * MIB, 8 * MIB).await.unwrap().len(), 8 * MIB);
    }

    #[tokio::test]
    async fn contiguous_extents_fragment_and_heal() {
        let p = pool(30 * MIB, true);
        let acct = p.account("a");
        let a = acct.reserve(10 * MIB, 10 * MIB).await.unwrap();
        let b = acct.reserve(10 * MIB, 10 * MIB).await.unwrap();
        let c = acct.reserve(10 * MIB, 10 * MIB).await.unwrap();
        drop(a);
        drop(c);
        // 20 MiB free, but not contiguous: a 20 MiB request must wait.
        assert!(acct.try_reserve(20 * MIB, 20 * MIB).is_none());
        drop(b);
        assert_eq!(
            acct.reserve(30 * MIB, 30 * MIB).await.unwrap().extent(),
            0..30 * MIB
        );
    }

    #[test]
    fn spare_buffers_are_reused_then_trimmed() {
        let p = pool(64 * MIB, false);
        let b = p.take_buffer(MIB as usize).unwrap();
        assert_eq!(p.metrics().allocated, MIB);
        p.give_back(b);
        let b = p.take_buffer(MIB as usize - 10).unwrap();
        assert_eq!(p.metrics().allocated, MIB, "the spare was reused");
        p.give_back(b);
        // A small request does not take a buffer more than twice its size.
        let small = p.take_buffer(4096).unwrap();
        assert_eq!(p.metrics().allocated, MIB + 4096);
        p.give_back(small);
        assert_eq!(p.trim(Duration::from_secs(3600)), 0, "recently used: kept");
        // A request none fits frees the spares too small for it.
        let big = p.take_buffer(4 * MIB as usize).unwrap();
        assert_eq!(
            p.metrics().allocated,
            4 * MIB,
            "the 1 MiB and 4 KiB spares freed"
        );
        p.give_back(big);
        assert_eq!(p.trim(Duration::ZERO), 4 * MIB);
        assert_eq!(p.metrics().allocated, 0);
    }

    #[test]
    fn spare_buffers_beyond_two_parts_are_freed_at_once() {
        let p = pool(256 * MIB, false);
        let bufs: Vec<_> = (0..5)
            .map(|_| p.take_buffer(8 * MIB as usize).unwrap())
            .collect();
        assert_eq!(p.metrics().allocated, 40 * MIB);
        for b in bufs {
            p.give_back(b);
        }
        assert_eq!(p.metrics().allocated, SPARE_MOST);
        let b = p.take_buffer(8 * MIB as usize).unwrap();
        assert_eq!(p.metrics().allocated, SPARE_MOST, "a spare was reused");
        p.give_back(b);
    }
}
