//! Recursive operations on a directory, planned from the listing of what
//! lies below it: which key goes where, and in which order.
//!
//! Order matters for two reasons. A File sandbox refuses to remove a
//! directory that still holds something, so a directory goes after what is
//! in it, its subdirectories first. And a failure half-way should leave the
//! source's directories in place, so files go before any directory marker.

use crate::key::{ObjectKey, SandboxRoot};
use crate::path::{PathError, VirtualPath};

/// One key of a recursive copy or move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The key below the source directory.
    pub from: ObjectKey,
    /// Where it goes below the destination.
    pub to: ObjectKey,
    /// Whether it is a directory marker (created empty, not copied).
    pub marker: bool,
    /// Its size, as listed.
    pub size: u64,
}

/// The steps that copy directory `src` of `from` to `dst` of `to`, given
/// the visible keys at or below `src` with their sizes: each key's place
/// relative to `src`, recreated relative to `dst`; the source directory's own
/// marker is included where the backend has markers. Files first, then
/// markers, deepest first ([module docs](self)). A marker whose destination
/// is a sandbox root (which has none) is left out.
pub fn plan_copy(
    from: &SandboxRoot,
    src: &VirtualPath,
    to: &SandboxRoot,
    dst: &VirtualPath,
    below: impl IntoIterator<Item = (ObjectKey, u64)>,
) -> Result<Vec<Step>, PathError> {
    let mut steps = Vec::new();
    for (key, size) in below {
        let Some(rel) = from.entry_for(key.as_str()) else {
            continue;
        };
        let rest = rel.strip_prefix(src).unwrap_or(rel);
        let target = dst.join_path(&rest)?;
        let marker = key.is_dir_marker();
        let to_key = if marker {
            to.dir_marker_for(&target)?
        } else {
            Some(to.key_for(&target)?)
        };
        if let Some(to_key) = to_key {
            steps.push(Step {
                from: key,
                to: to_key,
                marker,
                size,
            });
        }
    }
    if let (Some(m), Some(to_marker)) = (from.dir_marker_for(src)?, to.dir_marker_for(dst)?)
        && !steps.iter().any(|s| s.from == m)
    {
        steps.push(Step {
            from: m,
            to: to_marker,
            marker: true,
            size: 0,
        });
    }
    steps.sort_by_key(|s| (s.marker, std::cmp::Reverse(depth(&s.from)), s.from.clone()));
    Ok(steps)
}

fn depth(key: &ObjectKey) -> usize {
    key.as_str().trim_end_matches('/').matches('/').count()
}

/// `keys` in the order a recursive remove deletes them: files (and other
/// entries) first, then directory markers, deepest first; each once.
pub fn delete_order(mut keys: Vec<ObjectKey>) -> Vec<ObjectKey> {
    keys.sort_by_key(|k| (k.is_dir_marker(), std::cmp::Reverse(depth(k)), k.clone()));
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> ObjectKey {
        ObjectKey::from_raw(s)
    }

    #[test]
    fn copies_keep_their_place_and_markers_come_last() {
        let from = SandboxRoot::new("u/a").unwrap();
        let to = SandboxRoot::new("u/b").unwrap();
        let src = VirtualPath::parse("/d").unwrap();
        let dst = VirtualPath::parse("/e/f").unwrap();
        let steps = plan_copy(
            &from,
            &src,
            &to,
            &dst,
            [
                (k("u/a/d/x/"), 0),
                (k("u/a/d/x/1"), 1),
                (k("u/a/d/2"), 2),
                (k("u/a/d/x/y/"), 0),
                (k("other/3"), 3),
            ],
        )
        .unwrap();
        let got: Vec<(&str, &str, bool)> = steps
            .iter()
            .map(|s| (s.from.as_str(), s.to.as_str(), s.marker))
            .collect();
        assert_eq!(
            got,
            [
                ("u/a/d/x/1", "u/b/e/f/x/1", false),
                ("u/a/d/2", "u/b/e/f/2", false),
                ("u/a/d/x/y/", "u/b/e/f/x/y/", true),
                ("u/a/d/x/", "u/b/e/f/x/", true),
                ("u/a/d/", "u/b/e/f/", true),
            ]
        );
        // To a sandbox root: no marker for it.
        let root = SandboxRoot::BUCKET_ROOT;
        let steps = plan_copy(&root, &src, &root, &VirtualPath::ROOT, [(k("d/"), 0)]).unwrap();
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn removes_go_children_first() {
        let order = delete_order(vec![k("d/"), k("d/e/"), k("d/f"), k("d/e/g"), k("d/f")]);
        assert_eq!(order, [k("d/e/g"), k("d/f"), k("d/e/"), k("d/")]);
    }
}
