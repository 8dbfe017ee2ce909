//! Keys resolved beneath the sandbox's root directory handle.
//!
//! A key is split into names once, and each name is opened relative to the
//! directory handle of the one before it, starting from the handle on the
//! sandbox root that was opened when the sandbox was. Every step is a single
//! name opened with `O_NOFOLLOW | O_DIRECTORY` (cap-std's
//! `open_dir_nofollow`), so the kernel itself refuses to go through a link,
//! and `..` never reaches the kernel: the domain refuses it and [`split`]
//! checks again. A link swapped in while an operation runs changes nothing:
//! a name already opened is a handle, not a path, and a name not yet opened
//! fails to open. When a step fails, the entry is looked at once more
//! (`lstat`) to say why: missing, a file in the way, or a link or special
//! file ([`corral_domain::node`]).

use std::io::{self, ErrorKind as IoKind};

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, FileTypeExt, Metadata, MetadataExt};
use corral_domain::node::{FileType, NodeKind, classify};
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};

/// A key as names: the directories on the way, and the last name (`None`
/// for the root). `dir` says whether the key is a directory marker (`d/`).
#[derive(Debug)]
pub(super) struct Names<'k> {
    pub(super) parents: Vec<&'k str>,
    pub(super) last: Option<&'k str>,
    pub(super) dir: bool,
}

/// Splits a key into names, refusing any that the kernel would read as
/// something else than one entry of one directory.
pub(super) fn split(key: &ObjectKey) -> Result<Names<'_>> {
    let raw = key.as_str();
    let dir = raw.ends_with('/');
    let body = raw.strip_suffix('/').unwrap_or(raw);
    if body.is_empty() {
        return Ok(Names {
            parents: Vec::new(),
            last: None,
            dir: true,
        });
    }
    let mut names: Vec<&str> = body.split('/').collect();
    if let Some(bad) = names
        .iter()
        .find(|n| n.is_empty() || **n == "." || **n == ".." || n.contains('\0'))
    {
        return Err(
            Error::invalid_input(format!("{bad:?} is not a file name")).with_key(raw.to_owned())
        );
    }
    let last = names.pop();
    Ok(Names {
        parents: names,
        last,
        dir,
    })
}

/// What `lstat` says, in the domain's terms.
pub(super) fn kind_of(meta: &Metadata) -> NodeKind {
    let t = meta.file_type();
    let file_type = if t.is_symlink() {
        FileType::Symlink
    } else if t.is_dir() {
        FileType::Directory
    } else if t.is_file() {
        FileType::Regular
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else {
        FileType::Unknown
    };
    classify(file_type, meta.nlink())
}

/// An I/O error as the domain's, naming the key (never a host path: every
/// call here is relative to a directory handle, so the kernel's messages
/// hold none).
pub(super) fn io_error(e: io::Error, op: Operation, key: &str) -> Error {
    // The port speaks keys: a key below a file does not exist, and a key
    // that is a directory cannot be written as an object.
    let kind = match e.kind() {
        IoKind::NotADirectory => ErrorKind::NotFound,
        IoKind::IsADirectory => ErrorKind::AlreadyExists,
        k => ErrorKind::from_io(k),
    };
    Error::new(kind, e.to_string())
        .with_operation(op)
        .with_key(key.to_owned())
}

/// Why `name` in `dir` could not be opened as what was asked: the entry
/// is looked at without following it.
pub(super) fn why(dir: &Dir, name: &str, e: io::Error, op: Operation, key: &str) -> Error {
    match dir.symlink_metadata(name) {
        Ok(meta) => match kind_of(&meta) {
            NodeKind::Special(k) => Error::special_file(k)
                .with_operation(op)
                .with_key(key.to_owned()),
            // A file where a directory was needed: the path does not exist.
            // A file where a directory was needed: for a read the path does
            // not exist; a write cannot make it.
            NodeKind::File => {
                let kind = match op {
                    Operation::Head | Operation::Get | Operation::List | Operation::Delete => {
                        ErrorKind::NotFound
                    }
                    _ => ErrorKind::AlreadyExists,
                };
                Error::new(kind, format!("{name:?} is a file, not a directory"))
                    .with_operation(op)
                    .with_key(key.to_owned())
            }
            NodeKind::Directory => io_error(e, op, key),
        },
        Err(_) => io_error(e, op, key),
    }
}

/// Opens directory `name` of `dir`, never through a link; with `create`,
/// makes it first if it is missing.
pub(super) fn enter(dir: &Dir, name: &str, create: bool, op: Operation, key: &str) -> Result<Dir> {
    if create {
        match dir.create_dir(name) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::AlreadyExists => {}
            Err(e) => return Err(why(dir, name, e, op, key)),
        }
    }
    dir.open_dir_nofollow(name)
        .map_err(|e| why(dir, name, e, op, key))
}

/// Opens the directory `names` beneath `root`.
pub(super) fn open_dirs(
    root: &Dir,
    names: &[&str],
    create: bool,
    op: Operation,
    key: &str,
) -> Result<Dir> {
    let mut cur: Option<Dir> = None;
    for name in names {
        let next = enter(cur.as_ref().unwrap_or(root), name, create, op, key)?;
        cur = Some(next);
    }
    match cur {
        Some(d) => Ok(d),
        None => root.try_clone().map_err(|e| io_error(e, op, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_single_names() {
        let k = ObjectKey::from_raw("a/b/c.txt");
        let n = split(&k).unwrap();
        assert_eq!(
            (n.parents, n.last, n.dir),
            (vec!["a", "b"], Some("c.txt"), false)
        );
        let k = ObjectKey::from_raw("a/d/");
        let n = split(&k).unwrap();
        assert_eq!((n.parents, n.last, n.dir), (vec!["a"], Some("d"), true));
        let k = ObjectKey::from_raw("");
        assert_eq!(split(&k).unwrap().last, None);
        // Names that are special to a URL library are plain names here.
        let k = ObjectKey::from_raw("notes:/a|b#1?x");
        assert_eq!(split(&k).unwrap().last, Some("a|b#1?x"));
        for bad in ["a/../b", "a//b", "./a", "a/..", "a\0b", "/a"] {
            assert!(split(&ObjectKey::from_raw(bad)).is_err(), "{bad:?}");
        }
    }
}
