//! Files being written, as the rest of the process sees them.
//!
//! A file opened for writing exists from the moment it is opened, as on a
//! POSIX filesystem: `stat` and listings of every sandbox of the process
//! (the user's other sessions on the same server) show it, with the size
//! written so far, although the backend has nothing under its key until
//! the write completes. Reading it before then is refused ([`ErrorKind::Busy`]),
//! never answered with part of it; a write that is given up leaves nothing.
//! Entries are keyed by store (a directory, a bucket at an endpoint, the
//! memory store) and object key, so every mount of one store sees the file.
//!
//! The table is also what makes create-if-absent exclusive within the
//! process: a second exclusive create of a key being written fails at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use corral_domain::ObjectKey;

type Slot = (Arc<str>, String);

/// The files being written in this process.
#[derive(Debug, Default)]
pub(crate) struct Writing {
    map: Mutex<HashMap<Slot, Vec<Arc<WriteState>>>>,
}

/// One write in progress.
#[derive(Debug)]
pub(crate) struct WriteState {
    size: AtomicU64,
    modified: Mutex<SystemTime>,
}

impl WriteState {
    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
        *self.modified.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
    }
}

/// What a listing or `stat` shows of a file being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) size: u64,
    pub(crate) modified: SystemTime,
}

fn slot(store: &Arc<str>, key: &ObjectKey) -> Slot {
    (Arc::clone(store), key.as_str().to_owned())
}

impl Writing {
    /// Records a write of `key` on `storage`; it shows until the guard drops.
    /// With `exclusive`, fails (returns `None`) if `key` is being written.
    pub(crate) fn begin(
        self: &Arc<Self>,
        store: &Arc<str>,
        key: &ObjectKey,
        exclusive: bool,
    ) -> Option<WriteGuard> {
        let s = slot(store, key);
        let state = Arc::new(WriteState {
            size: AtomicU64::new(0),
            modified: Mutex::new(SystemTime::now()),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let writers = map.entry(s.clone()).or_default();
        if exclusive && !writers.is_empty() {
            return None;
        }
        writers.push(Arc::clone(&state));
        Some(WriteGuard {
            table: Arc::clone(self),
            slot: s,
            state,
        })
    }

    /// The latest write of `key`, if one is in progress.
    pub(crate) fn get(&self, store: &Arc<str>, key: &ObjectKey) -> Option<Shown> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&slot(store, key))
            .and_then(|w| w.last())
            .map(|s| Shown {
                size: s.size.load(Ordering::Relaxed),
                modified: *s.modified.lock().unwrap_or_else(|p| p.into_inner()),
            })
    }

    /// The keys being written on `storage` that start with `prefix`, each
    /// with its latest write.
    pub(crate) fn under(&self, store: &Arc<str>, prefix: &str) -> Vec<(String, Shown)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((b, k), w)| b == store && k.starts_with(prefix) && !w.is_empty())
            .filter_map(|((_, k), w)| {
                let s = w.last()?;
                Some((
                    k.clone(),
                    Shown {
                        size: s.size.load(Ordering::Relaxed),
                        modified: *s.modified.lock().unwrap_or_else(|p| p.into_inner()),
                    },
                ))
            })
            .collect()
    }

    /// How many writes are in progress.
    pub(crate) fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }
}

/// A write in the table; removed when dropped (completed or given up).
#[derive(Debug)]
pub(crate) struct WriteGuard {
    table: Arc<Writing>,
    slot: Slot,
    state: Arc<WriteState>,
}

impl WriteGuard {
    pub(crate) fn state(&self) -> &WriteState {
        &self.state
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut map = self.table.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get_mut(&self.slot) {
            w.retain(|s| !Arc::ptr_eq(s, &self.state));
            if w.is_empty() {
                map.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_shows_until_its_guard_drops() {
        let table = Arc::new(Writing::default());
        let storage: Arc<str> = Arc::from("file:/srv/a");
        let other: Arc<str> = Arc::from("file:/srv/b");
        let key = ObjectKey::from_raw("u/a/f");
        let g = table.begin(&storage, &key, true).expect("first");
        g.state().set_size(12);
        assert_eq!(table.get(&storage, &key).map(|s| s.size), Some(12));
        assert_eq!(table.get(&other, &key), None, "another backend");
        assert!(table.begin(&storage, &key, true).is_none(), "exclusive");
        let second = table.begin(&storage, &key, false).expect("not exclusive");
        assert_eq!(
            table.get(&storage, &key).map(|s| s.size),
            Some(0),
            "the latest"
        );
        assert_eq!(table.under(&storage, "u/a/").len(), 1);
        assert!(table.under(&storage, "u/b/").is_empty());
        drop(second);
        assert_eq!(table.get(&storage, &key).map(|s| s.size), Some(12));
        drop(g);
        assert_eq!((table.get(&storage, &key), table.len()), (None, 0));
    }
}
