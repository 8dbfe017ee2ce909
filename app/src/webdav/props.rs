//! Dead properties (PROPPATCH): one user's, kept by this process, moved and
//! copied with their resources and dropped with them. They do not survive
//! a restart and are not shared between instances (docs/SERVE.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use corral::VirtualPath;
use dav_server::fs::{DavProp, FsError, FsResult};
use hyper::StatusCode;

/// A property's name: its namespace and local name.
type Name = (String, String);

/// At most this many bytes of property values per user: a client cannot
/// grow the server's memory without bound.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub(super) struct Props {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_path: HashMap<String, BTreeMap<Name, DavProp>>,
    bytes: usize,
}

fn name(p: &DavProp) -> Name {
    (p.namespace.clone().unwrap_or_default(), p.name.clone())
}

fn size(p: &DavProp) -> usize {
    p.name.len() + p.xml.as_ref().map_or(0, Vec::len) + p.namespace.as_ref().map_or(0, String::len)
}

/// The property without its value, as a PROPPATCH answer names it.
fn bare(p: &DavProp) -> DavProp {
    DavProp {
        name: p.name.clone(),
        prefix: p.prefix.clone(),
        namespace: p.namespace.clone(),
        xml: None,
    }
}

/// Whether `path` is `root` or below it.
fn under(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

impl Props {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn has(&self, path: &VirtualPath) -> bool {
        self.lock()
            .by_path
            .get(path.as_str())
            .is_some_and(|m| !m.is_empty())
    }

    /// Applies `patch` (true: set, false: remove) all or nothing.
    pub(super) fn patch(
        &self,
        path: &VirtualPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsResult<Vec<(StatusCode, DavProp)>> {
        let mut inner = self.lock();
        let adding: usize = patch
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, p)| size(p))
            .sum();
        if inner.bytes + adding > MAX_BYTES {
            tracing::info!(path = %path, "PROPPATCH refused: the user's properties would pass {MAX_BYTES} bytes");
            return Ok(patch
                .iter()
                .map(|(_, p)| (StatusCode::INSUFFICIENT_STORAGE, bare(p)))
                .collect());
        }
        let Inner { by_path, bytes } = &mut *inner;
        let props = by_path.entry(path.as_str().to_owned()).or_default();
        let mut answer = Vec::with_capacity(patch.len());
        for (set, p) in patch {
            let key = name(&p);
            let reply = bare(&p);
            if let Some(old) = props.remove(&key) {
                *bytes -= size(&old);
            }
            if set {
                *bytes += size(&p);
                props.insert(key, p);
            }
            answer.push((StatusCode::OK, reply));
        }
        if props.is_empty() {
            by_path.remove(path.as_str());
        }
        Ok(answer)
    }

    /// Every property of `path`, with values or names only.
    pub(super) fn all(&self, path: &VirtualPath, values: bool) -> Vec<DavProp> {
        self.lock()
            .by_path
            .get(path.as_str())
            .map(|m| {
                m.values()
                    .map(|p| if values { p.clone() } else { bare(p) })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One property's value (its XML).
    pub(super) fn get(&self, path: &VirtualPath, prop: &DavProp) -> FsResult<Vec<u8>> {
        self.lock()
            .by_path
            .get(path.as_str())
            .and_then(|m| m.get(&name(prop)))
            .and_then(|p| p.xml.clone())
            .ok_or(FsError::NotFound)
    }

    /// `path` and everything below it are gone.
    pub(super) fn removed(&self, path: &VirtualPath) {
        let mut inner = self.lock();
        let Inner { by_path, bytes } = &mut *inner;
        by_path.retain(|k, m| {
            let keep = !under(k, path.as_str());
            if !keep {
                *bytes -= m.values().map(size).sum::<usize>();
            }
            keep
        });
    }

    /// What was under `from` is under `to` now.
    pub(super) fn moved(&self, from: &VirtualPath, to: &VirtualPath) {
        self.removed(to);
        let mut inner = self.lock();
        let keys: Vec<String> = inner
            .by_path
            .keys()
            .filter(|k| under(k, from.as_str()))
            .cloned()
            .collect();
        for k in keys {
            if let Some(m) = inner.by_path.remove(&k) {
                let new = format!("{}{}", to.as_str(), &k[from.as_str().len()..]);
                inner.by_path.insert(new, m);
            }
        }
    }

    /// What is under `from` is also under `to` now (dav-server copies a
    /// collection file by file: each call names one resource).
    pub(super) fn copied(&self, from: &VirtualPath, to: &VirtualPath) {
        self.removed(to);
        let mut inner = self.lock();
        if let Some(m) = inner.by_path.get(from.as_str()).cloned() {
            let added: usize = m.values().map(size).sum();
            if inner.bytes + added <= MAX_BYTES {
                inner.bytes += added;
                inner.by_path.insert(to.as_str().to_owned(), m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).expect("path")
    }

    fn prop(name: &str, value: &str) -> DavProp {
        DavProp::new(name.into(), "x".into(), "urn:x".into(), value.into())
    }

    #[test]
    fn set_move_copy_remove() {
        let p = Props::default();
        p.patch(&vp("/a/f"), vec![(true, prop("one", "1"))])
            .expect("patch");
        assert!(p.has(&vp("/a/f")));
        p.moved(&vp("/a"), &vp("/b"));
        assert!(!p.has(&vp("/a/f")));
        assert!(p.get(&vp("/b/f"), &prop("one", "")).is_ok());
        p.copied(&vp("/b/f"), &vp("/c"));
        assert!(p.has(&vp("/c")) && p.has(&vp("/b/f")));
        // /b2 is not under /b.
        p.patch(&vp("/b2"), vec![(true, prop("two", "2"))])
            .expect("patch");
        p.removed(&vp("/b"));
        assert!(!p.has(&vp("/b/f")) && p.has(&vp("/b2")) && p.has(&vp("/c")));
        p.patch(&vp("/c"), vec![(false, prop("one", ""))])
            .expect("patch");
        assert!(!p.has(&vp("/c")));
    }

    #[test]
    fn the_users_bytes_are_bounded() {
        let p = Props::default();
        let big = "v".repeat(MAX_BYTES);
        let answer = p
            .patch(&vp("/f"), vec![(true, prop("big", &big))])
            .expect("patch");
        assert_eq!(answer[0].0, StatusCode::INSUFFICIENT_STORAGE);
        assert!(!p.has(&vp("/f")));
    }
}
