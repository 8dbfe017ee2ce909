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
//! - [`merge`] sorts by name; a streamed listing keeps the backend's key order.
//!
//! On S3 a directory exists if its marker exists or any key lies below it
//! ([`directory_exists`]); an empty directory exists only through its marker.

use std::collections::BTreeMap;
use std::time::SystemTime;

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

/// Merges a directory's entries with the mount names below it; see the [module docs](self).
/// Returns the entries and how many were shadowed (a file under a directory's name).
pub fn merge(
    entries: impl IntoIterator<Item = DirEntry>,
    mounts: &[String],
) -> (Vec<DirEntry>, u64) {
    let mut by_name: BTreeMap<String, DirEntry> = BTreeMap::new();
    let mut shadowed = 0;
    for e in entries {
        match by_name.get(&e.name) {
            None => {
                by_name.insert(e.name.clone(), e);
            }
            Some(existing) => {
                if existing.kind != e.kind {
                    shadowed += 1;
                }
                if e.is_dir() {
                    by_name.insert(e.name.clone(), e);
                }
            }
        }
    }
    for m in mounts {
        if let Some(existing) = by_name.get(m)
            && !existing.is_dir()
        {
            shadowed += 1;
        }
        by_name.insert(m.clone(), DirEntry::directory(m.clone()));
    }
    (by_name.into_values().collect(), shadowed)
}

/// Whether a directory exists on a backend with directory markers: its
/// marker exists, or at least one key lies below it.
pub fn directory_exists(marker_exists: bool, has_children: bool) -> bool {
    marker_exists || has_children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_wins_and_mounts_shadow() {
        let entries = vec![
            DirEntry::file("b", 3, None),
            DirEntry::file("a", 1, None),
            DirEntry::directory("a"),
            DirEntry::directory("c"),
            DirEntry::directory("c"),
            DirEntry::file("archive", 9, None),
        ];
        let (merged, shadowed) = merge(entries, &["archive".to_owned(), "z".to_owned()]);
        let names: Vec<_> = merged.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [
                ("a", EntryKind::Directory),
                ("archive", EntryKind::Directory),
                ("b", EntryKind::File),
                ("c", EntryKind::Directory),
                ("z", EntryKind::Directory),
            ]
        );
        assert_eq!(shadowed, 2, "the file a and the file archive");
        // Order of arrival does not matter.
        let (again, _) = merge(
            vec![DirEntry::directory("a"), DirEntry::file("a", 1, None)],
            &[],
        );
        assert_eq!(again, vec![DirEntry::directory("a")]);
    }

    #[test]
    fn existence() {
        assert!(directory_exists(true, false));
        assert!(directory_exists(false, true));
        assert!(!directory_exists(false, false));
    }
}
