//! Dead properties (PROPPATCH): one user's, moved and copied with their
//! resources and dropped with them. They are kept in one document per user
//! among the server's own data in the sandbox of `/`
//! ([`corral::UserSandbox::write_private`]): they survive a restart and are
//! seen by every instance over the same bucket. The document is read at the
//! user's first use in this process and again before each PROPPATCH, and
//! written whole after each change; two instances changing the same user's
//! properties at the same moment: the last write wins (docs/SERVE.md).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use corral::{UserSandbox, VirtualPath};
use dav_server::fs::{DavProp, FsError, FsResult};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// The document's name among the server's own data.
const DOCUMENT: &str = "webdav-props.json";

/// A property's name: its namespace and local name.
type Name = (String, String);

/// At most this many bytes of property values per user: a client cannot
/// grow the server's memory, or the document, without bound.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub(super) struct Props {
    /// `None` until read from the sandbox.
    inner: tokio::sync::Mutex<Option<Inner>>,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    by_path: HashMap<String, BTreeMap<Name, DavProp>>,
    bytes: usize,
}

/// One property as the document keeps it.
#[derive(Serialize, Deserialize)]
struct Stored {
    ns: Option<String>,
    name: String,
    prefix: Option<String>,
    xml: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Document {
    props: BTreeMap<String, Vec<Stored>>,
}

impl Inner {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let doc: Document = serde_json::from_slice(bytes)?;
        let mut inner = Inner::default();
        for (path, props) in doc.props {
            let m = inner.by_path.entry(path).or_default();
            for p in props {
                let prop = DavProp {
                    name: p.name,
                    prefix: p.prefix,
                    namespace: p.ns,
                    xml: p.xml.map(String::into_bytes),
                };
                inner.bytes += size(&prop);
                m.insert(name(&prop), prop);
            }
        }
        Ok(inner)
    }

    fn document(&self) -> Option<Bytes> {
        if self.by_path.is_empty() {
            return None;
        }
        let doc = Document {
            props: self
                .by_path
                .iter()
                .map(|(path, m)| {
                    let props = m
                        .values()
                        .map(|p| Stored {
                            ns: p.namespace.clone(),
                            name: p.name.clone(),
                            prefix: p.prefix.clone(),
                            xml: p
                                .xml
                                .as_ref()
                                .map(|x| String::from_utf8_lossy(x).into_owned()),
                        })
                        .collect();
                    (path.clone(), props)
                })
                .collect(),
        };
        serde_json::to_vec(&doc).ok().map(Bytes::from)
    }

    fn removed(&mut self, path: &VirtualPath) -> bool {
        let before = self.by_path.len();
        let Inner { by_path, bytes } = self;
        by_path.retain(|k, m| {
            let keep = !under(k, path.as_str());
            if !keep {
                *bytes -= m.values().map(size).sum::<usize>();
            }
            keep
        });
        self.by_path.len() != before
    }
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

/// Reads the user's document; an unreadable one is logged and taken as empty.
async fn load(sb: &UserSandbox) -> FsResult<Inner> {
    match sb.read_private(DOCUMENT).await {
        Ok(None) => Ok(Inner::default()),
        Ok(Some(bytes)) => Ok(Inner::parse(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the WebDAV properties document cannot be read: starting empty");
            Inner::default()
        })),
        // A view whose `/` only lists mounts has nowhere to keep them:
        // none to read (a PROPPATCH then fails to store).
        Err(e) if e.kind() == corral::ErrorKind::PermissionDenied => {
            tracing::debug!(error = %e, "no place for the WebDAV properties");
            Ok(Inner::default())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the WebDAV properties");
            Err(FsError::GeneralFailure)
        }
    }
}

async fn save(sb: &UserSandbox, inner: &Inner) -> FsResult<()> {
    sb.write_private(DOCUMENT, inner.document())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot store the WebDAV properties");
            FsError::GeneralFailure
        })
}

impl Props {
    /// The properties, read from the sandbox the first time (or `fresh`).
    async fn with<T>(
        &self,
        sb: &UserSandbox,
        fresh: bool,
        f: impl FnOnce(&mut Inner) -> (T, bool),
    ) -> FsResult<T> {
        let mut guard = self.inner.lock().await;
        if guard.is_none() || fresh {
            *guard = Some(load(sb).await?);
        }
        let Some(inner) = guard.as_mut() else {
            return Err(FsError::GeneralFailure);
        };
        let mut next = inner.clone();
        let (out, changed) = f(&mut next);
        if changed {
            save(sb, &next).await?;
        }
        *inner = next;
        Ok(out)
    }

    pub(super) async fn has(&self, sb: &UserSandbox, path: &VirtualPath) -> bool {
        self.with(sb, false, |i| {
            (
                i.by_path.get(path.as_str()).is_some_and(|m| !m.is_empty()),
                false,
            )
        })
        .await
        .unwrap_or(false)
    }

    /// Applies `patch` (true: set, false: remove) all or nothing.
    pub(super) async fn patch(
        &self,
        sb: &UserSandbox,
        path: &VirtualPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsResult<Vec<(StatusCode, DavProp)>> {
        self.with(sb, true, |inner| {
            let adding: usize = patch.iter().filter(|(set, _)| *set).map(|(_, p)| size(p)).sum();
            if inner.bytes + adding > MAX_BYTES {
                tracing::info!(path = %path, "PROPPATCH refused: the user's properties would pass {MAX_BYTES} bytes");
                let answer = patch
                    .iter()
                    .map(|(_, p)| (StatusCode::INSUFFICIENT_STORAGE, bare(p)))
                    .collect();
                return (answer, false);
            }
            let Inner { by_path, bytes } = inner;
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
            (answer, true)
        })
        .await
    }

    /// Every property of `path`, with values or names only.
    pub(super) async fn all(
        &self,
        sb: &UserSandbox,
        path: &VirtualPath,
        values: bool,
    ) -> FsResult<Vec<DavProp>> {
        self.with(sb, false, |i| {
            let props = i
                .by_path
                .get(path.as_str())
                .map(|m| {
                    m.values()
                        .map(|p| if values { p.clone() } else { bare(p) })
                        .collect()
                })
                .unwrap_or_default();
            (props, false)
        })
        .await
    }

    /// One property's value (its XML).
    pub(super) async fn get(
        &self,
        sb: &UserSandbox,
        path: &VirtualPath,
        prop: &DavProp,
    ) -> FsResult<Vec<u8>> {
        self.with(sb, false, |i| {
            let v = i
                .by_path
                .get(path.as_str())
                .and_then(|m| m.get(&name(prop)))
                .and_then(|p| p.xml.clone());
            (v, false)
        })
        .await?
        .ok_or(FsError::NotFound)
    }

    /// `path` and everything below it are gone.
    pub(super) async fn removed(&self, sb: &UserSandbox, path: &VirtualPath) {
        let _ = self.with(sb, false, |i| ((), i.removed(path))).await;
    }

    /// What was under `from` is under `to` now.
    pub(super) async fn moved(&self, sb: &UserSandbox, from: &VirtualPath, to: &VirtualPath) {
        let _ = self
            .with(sb, false, |inner| {
                let mut changed = inner.removed(to);
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
                        changed = true;
                    }
                }
                ((), changed)
            })
            .await;
    }

    /// What is at `from` is also at `to` now (dav-server copies a
    /// collection resource by resource: each call names one).
    pub(super) async fn copied(&self, sb: &UserSandbox, from: &VirtualPath, to: &VirtualPath) {
        let _ = self
            .with(sb, false, |inner| {
                let mut changed = inner.removed(to);
                if let Some(m) = inner.by_path.get(from.as_str()).cloned() {
                    let added: usize = m.values().map(size).sum();
                    if inner.bytes + added <= MAX_BYTES {
                        inner.bytes += added;
                        inner.by_path.insert(to.as_str().to_owned(), m);
                        changed = true;
                    }
                }
                ((), changed)
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral::cache::CacheConfig;
    use corral::{Corral, Identity};

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).expect("path")
    }

    fn prop(name: &str, value: &str) -> DavProp {
        DavProp::new(name.into(), "x".into(), "urn:x".into(), value.into())
    }

    fn sandbox(corral: &Corral) -> UserSandbox {
        corral.sandbox(&Identity::user("u")).expect("sandbox")
    }

    #[tokio::test]
    async fn set_move_copy_remove_and_read_back_by_another_process() {
        let corral = Corral::from_json(r#"{"": {"": {"type": "Memory"}}}"#, CacheConfig::default())
            .expect("corral");
        let sb = sandbox(&corral);
        let p = Props::default();
        p.patch(&sb, &vp("/a/f"), vec![(true, prop("one", "1"))])
            .await
            .expect("patch");
        assert!(p.has(&sb, &vp("/a/f")).await);
        p.moved(&sb, &vp("/a"), &vp("/b")).await;
        assert!(!p.has(&sb, &vp("/a/f")).await);
        assert!(p.get(&sb, &vp("/b/f"), &prop("one", "")).await.is_ok());
        p.copied(&sb, &vp("/b/f"), &vp("/c")).await;
        assert!(p.has(&sb, &vp("/c")).await && p.has(&sb, &vp("/b/f")).await);
        // /b2 is not under /b.
        p.patch(&sb, &vp("/b2"), vec![(true, prop("two", "2"))])
            .await
            .expect("patch");
        p.removed(&sb, &vp("/b")).await;
        assert!(!p.has(&sb, &vp("/b/f")).await && p.has(&sb, &vp("/b2")).await);
        // A new process reads what this one stored.
        let again = Props::default();
        let value = again
            .get(&sb, &vp("/c"), &prop("one", ""))
            .await
            .expect("stored");
        assert!(String::from_utf8_lossy(&value).contains(">1<"), "{value:?}");
        assert!(again.has(&sb, &vp("/b2")).await && !again.has(&sb, &vp("/b/f")).await);
        p.patch(&sb, &vp("/c"), vec![(false, prop("one", ""))])
            .await
            .expect("patch");
        p.patch(&sb, &vp("/b2"), vec![(false, prop("two", ""))])
            .await
            .expect("patch");
        // Nothing left: no document either.
        assert_eq!(sb.read_private(DOCUMENT).await.expect("read"), None);
    }

    #[tokio::test]
    async fn the_users_bytes_are_bounded() {
        let corral = Corral::from_json(r#"{"": {"": {"type": "Memory"}}}"#, CacheConfig::default())
            .expect("corral");
        let sb = sandbox(&corral);
        let p = Props::default();
        let big = "v".repeat(MAX_BYTES);
        let answer = p
            .patch(&sb, &vp("/f"), vec![(true, prop("big", &big))])
            .await
            .expect("patch");
        assert_eq!(answer[0].0, StatusCode::INSUFFICIENT_STORAGE);
        assert!(!p.has(&sb, &vp("/f")).await);
    }
}
