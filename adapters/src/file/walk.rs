//! Listing a File sandbox: a walk in key order that never follows a link.
//!
//! S3 lists keys in byte order, and the rest of corral relies on it. A
//! directory `d` holds the keys `d/…`, which sort by `d/`, not by `d`
//! (`d.txt` comes before them: `.` is below `/`). So each directory's
//! entries are read once, sorted by the key they stand for (a directory's
//! name with its `/`), and handed out smallest first; a subdirectory is
//! entered when its turn comes, through its handle (`O_NOFOLLOW`), and its
//! own sorted entries go on top of the stack. The walk holds one directory
//! handle and one sorted directory per level, never the tree, and it cannot
//! loop: links are reported, not entered ([`ListItem::Special`]), and a
//! directory already on the stack (a bind mount of an ancestor) is skipped.
//!
//! Names that are not UTF-8 cannot be keys and are skipped with a warning;
//! named staging files ([`super::stage`]) are internal and skipped silently.

use std::time::SystemTime;

use cap_std::fs::{Dir, MetadataExt};
use corral_domain::node::NodeKind;
use corral_domain::port::{ListItem, ListOptions, ObjectMeta};
use corral_domain::{ObjectKey, Operation, Result};

use super::resolve::{io_error, kind_of, why};
use super::stage::is_staging_name;

/// One entry of a directory, with the key it stands for.
struct Node {
    /// `prefix + name`, with a `/` for a directory.
    key: String,
    name: String,
    kind: NodeKind,
    size: u64,
    modified: Option<SystemTime>,
    etag: Option<String>,
}

struct Level {
    dir: Dir,
    id: (u64, u64),
    /// Sorted largest first: the next entry is popped from the end.
    nodes: Vec<Node>,
}

/// The walk's state between pages.
pub(super) struct Walk {
    stack: Vec<Level>,
    options: ListOptions,
}

/// The entity tag of a file as stored: changes when the content is replaced.
pub(super) fn etag(meta: &cap_std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .map(|t| t.into_std())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), mtime, meta.len())
}

fn read_level(dir: Dir, prefix: &str, key: &str) -> Result<Level> {
    let id = dir
        .dir_metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| io_error(e, Operation::List, key))?;
    let mut nodes = Vec::new();
    let entries = dir
        .entries()
        .map_err(|e| io_error(e, Operation::List, key))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, Operation::List, key))?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(prefix, "skipping a file name that is not UTF-8");
            continue;
        };
        if is_staging_name(&name) {
            continue;
        }
        // lstat: the entry itself, whatever it is. Gone since readdir: skip.
        let Ok(meta) = dir.symlink_metadata(&name) else {
            continue;
        };
        let kind = kind_of(&meta);
        let key = match kind {
            NodeKind::Directory => format!("{prefix}{name}/"),
            _ => format!("{prefix}{name}"),
        };
        let file = kind == NodeKind::File;
        nodes.push(Node {
            key,
            name,
            kind,
            size: if file { meta.len() } else { 0 },
            modified: meta.modified().ok().map(|t| t.into_std()),
            etag: file.then(|| etag(&meta)),
        });
    }
    nodes.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(Level { dir, id, nodes })
}

impl Walk {
    /// Starts at directory `dir`, whose keys start with `prefix`.
    pub(super) fn new(dir: Dir, prefix: &str, options: ListOptions) -> Result<Self> {
        let level = read_level(dir, prefix, prefix)?;
        Ok(Self {
            stack: vec![level],
            options,
        })
    }

    /// Up to `max` more items; fewer only at the end.
    pub(super) fn page(&mut self, max: usize) -> Result<Vec<ListItem>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(level) = self.stack.last_mut() else {
                break;
            };
            let Some(node) = level.nodes.pop() else {
                self.stack.pop();
                continue;
            };
            let after = self.options.start_after.as_ref().map(ObjectKey::as_str);
            let shown = after.is_none_or(|a| node.key.as_str() > a);
            match node.kind {
                NodeKind::File => {
                    if shown {
                        out.push(ListItem::Object(ObjectMeta {
                            key: ObjectKey::from_raw(node.key),
                            size: node.size,
                            last_modified: node.modified,
                            etag: node.etag,
                            checksum: None,
                        }));
                    }
                }
                NodeKind::Special(kind) => {
                    if shown {
                        out.push(ListItem::Special(ObjectKey::from_raw(node.key), kind));
                    }
                }
                NodeKind::Directory if self.options.delimiter => {
                    if shown {
                        out.push(ListItem::Prefix(ObjectKey::from_raw(node.key)));
                    }
                }
                NodeKind::Directory => {
                    // Every key below starts with the marker; if the marker sorts
                    // before `after` without being its prefix, so does all of it.
                    let below_after = after.is_some_and(|a| !a.starts_with(&node.key));
                    if !shown && below_after {
                        continue;
                    }
                    let dir = match cap_fs_ext::DirExt::open_dir_nofollow(&level.dir, &node.name) {
                        Ok(d) => d,
                        Err(e) => {
                            // Replaced by a link since it was read: report that.
                            let e = why(&level.dir, &node.name, e, Operation::List, &node.key);
                            if let Some(kind) = e.special() {
                                let key = node.key.trim_end_matches('/').to_owned();
                                out.push(ListItem::Special(ObjectKey::from_raw(key), kind));
                            }
                            continue;
                        }
                    };
                    let next = match read_level(dir, &node.key, &node.key) {
                        Ok(l) => l,
                        Err(e) if e.kind() == corral_domain::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    if self.stack.iter().any(|l| l.id == next.id) {
                        tracing::warn!(key = %node.key, "skipping a directory that is its own ancestor (a bind mount?)");
                        continue;
                    }
                    if shown {
                        out.push(ListItem::Object(ObjectMeta {
                            key: ObjectKey::from_raw(node.key),
                            size: 0,
                            last_modified: node.modified,
                            etag: None,
                            checksum: None,
                        }));
                    }
                    self.stack.push(next);
                }
            }
        }
        Ok(out)
    }
}
