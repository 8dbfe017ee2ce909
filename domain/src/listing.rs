//! What a user sees in a directory, decided once for every backend.
//!
//! A directory listing merges three sources: the backend's entries (files,
//! and directories as markers or common prefixes), and the mounts that lie
//! one level below the directory in the user's view. The rules:
//!
//! - a name that is both a file and a directory is shown once, as the
//!   directory (a file `a` and keys under `a/` can coexist in a bucket when
//!   another tool wrote them; the directory is what holds the user's data).
//!   The file is shadowed: neither listed nor opened through corral until
//!   the directory is gone;
//! - a mount point shadows whatever the parent sandbox holds under the same
//!   name: it is shown once, as a directory;
//! - entries keep the backend's key order, after the mounts.
//!
//! [`DirectoryListing`] is that rule, streamed.
//!
//! On S3 a directory exists if its marker exists or any key lies below it
//! ([`directory_exists`]); an empty directory exists only through its marker.

use std::time::SystemTime;

use crate::key::{HiddenCount, HiddenReason, KeyClass, SandboxRoot};
use crate::path::VirtualPath;
use crate::port::ListItem;

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A file with its size.
    File,
    /// A directory (or mount point).
    Directory,
}

/// One entry of a directory as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (one segment).
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, if known.
    pub modified: Option<SystemTime>,
}

impl DirEntry {
    /// A file entry.
    pub fn file(name: impl Into<String>, size: u64, modified: Option<SystemTime>) -> Self {
        Self {
            name: name.into(),
            kind: EntryKind::File,
            size,
            modified,
        }
    }

    /// A directory entry.
    pub fn directory(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: EntryKind::Directory,
            size: 0,
            modified: None,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }
}

/// The listing of one directory, streamed: the rule every listing of
/// corral goes through (the sandbox service's, and the conformance
/// suite's).
///
/// Fed the backend's delimited listing of the directory's prefix in key
/// order ([`Self::push`]), it hands out the entries the user may see as soon
/// as they are decided, then the rest at the end ([`Self::finish`]):
///
/// - each key goes through the sandbox root's strict inverse
///   ([`SandboxRoot::classify`]): keys a user could not have named are
///   hidden and counted ([`HiddenCount`]), links and special files too;
/// - mount points come first ([`Self::mount_entries`]) and shadow whatever
///   the sandbox holds under their names;
/// - a file and a directory of one name are shown once, as the directory.
///   Keys arrive sorted and a file `x` sorts before the prefix `x/` (with
///   `x.y` between them), so a file is held back until a key past `x/`
///   shows that no directory of its name follows. What is held back is
///   bounded by the names that sort between `x` and `x/`.
#[derive(Debug)]
pub struct DirectoryListing {
    root: SandboxRoot,
    dir: VirtualPath,
    mounts: Vec<String>,
    hidden: HiddenCount,
    /// Files held back, with their keys.
    pending: Vec<(String, DirEntry)>,
    shadowed: u64,
}

impl DirectoryListing {
    /// The listing of `dir` (relative to `root`) with the names of the
    /// mounts one level below it.
    pub fn new(root: SandboxRoot, dir: VirtualPath, mounts: Vec<String>) -> Self {
        Self {
            root,
            dir,
            mounts,
            hidden: HiddenCount::default(),
            pending: Vec::new(),
            shadowed: 0,
        }
    }

    /// The mount points below the directory: the first entries.
    pub fn mount_entries(&self) -> Vec<DirEntry> {
        self.mounts.iter().map(DirEntry::directory).collect()
    }

    /// One item of the backend's listing; returns the entries now decided.
    pub fn push(&mut self, item: &ListItem) -> Vec<DirEntry> {
        let key = item.key().as_str();
        let class = match item {
            ListItem::Special(..) => {
                self.hidden.special();
                KeyClass::Hidden(HiddenReason::Special)
            }
            _ => self.hidden.classify(&self.root, key),
        };
        let one_below = |p: VirtualPath| p.strip_prefix(&self.dir).filter(|r| r.depth() == 1);
        let entry = match class {
            KeyClass::File(p) => one_below(p).map(|r| match item {
                ListItem::Object(m) => DirEntry::file(r.as_str(), m.size, m.last_modified),
                _ => DirEntry::file(r.as_str(), 0, None),
            }),
            KeyClass::Directory(p) => one_below(p).map(|r| DirEntry::directory(r.as_str())),
            KeyClass::RootMarker | KeyClass::Hidden(_) => None,
        };
        // Everything held back that sorts before `key` minus a directory can go.
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if format!("{}/", self.pending[i].0).as_str() < key {
                out.push(self.pending.remove(i).1);
            } else {
                i += 1;
            }
        }
        if let Some(e) = entry {
            if self.mounts.contains(&e.name) {
                self.shadowed += u64::from(e.kind == EntryKind::File);
            } else if e.is_dir() {
                if let Some(i) = self.pending.iter().position(|(_, p)| p.name == e.name) {
                    self.pending.remove(i);
                    self.shadowed += 1;
                }
                out.push(e);
            } else {
                self.pending.push((key.to_owned(), e));
            }
        }
        out
    }

    /// The end of the backend's listing: the entries still held back.
    pub fn finish(&mut self) -> Vec<DirEntry> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// What was hidden so far, and why.
    pub fn hidden(&self) -> &HiddenCount {
        &self.hidden
    }

    /// Files shadowed by a directory or mount of the same name.
    pub fn shadowed(&self) -> u64 {
        self.shadowed
    }
}

/// Whether a directory exists on a backend with directory markers: its
/// marker exists, or at least one key lies below it.
pub fn directory_exists(marker_exists: bool, has_children: bool) -> bool {
    marker_exists || has_children
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::key::ObjectKey;
    use crate::port::ObjectMeta;

    fn object(key: &str) -> ListItem {
        ListItem::Object(ObjectMeta {
            key: ObjectKey::from_raw(key),
            size: 1,
            last_modified: None,
            etag: None,
            checksum: None,
        })
    }

    fn all(listing: &mut DirectoryListing, items: &[ListItem]) -> Vec<(String, EntryKind)> {
        let mut out = listing.mount_entries();
        for i in items {
            out.extend(listing.push(i));
        }
        out.extend(listing.finish());
        out.into_iter().map(|e| (e.name, e.kind)).collect()
    }

    #[test]
    fn directory_wins_and_mounts_shadow() {
        let root = SandboxRoot::new("u").unwrap();
        let mut l =
            DirectoryListing::new(root, VirtualPath::ROOT, vec!["archive".into(), "z".into()]);
        let items = [
            object("u/a"),
            object("u/a.txt"),
            ListItem::Prefix(ObjectKey::from_raw("u/a/")),
            object("u/archive"),
            object("u/b"),
            ListItem::Prefix(ObjectKey::from_raw("u/c/")),
            object("u/x/../y"),
            ListItem::Special(
                ObjectKey::from_raw("u/link"),
                crate::node::SpecialKind::Symlink,
            ),
            object("other/f"),
        ];
        assert_eq!(
            all(&mut l, &items),
            [
                ("archive".to_owned(), EntryKind::Directory),
                ("z".to_owned(), EntryKind::Directory),
                ("a.txt".to_owned(), EntryKind::File),
                ("a".to_owned(), EntryKind::Directory),
                ("b".to_owned(), EntryKind::File),
                ("c".to_owned(), EntryKind::Directory),
            ]
        );
        assert_eq!(l.shadowed(), 2, "the file a and the file archive");
        assert_eq!(l.hidden().special, 1);
        assert_eq!(l.hidden().outside_prefix, 1);
        assert_eq!(l.hidden().total, 2, "u/x/../y and other/f");
    }

    #[test]
    fn existence() {
        assert!(directory_exists(true, false));
        assert!(directory_exists(false, true));
        assert!(!directory_exists(false, false));
    }
}
