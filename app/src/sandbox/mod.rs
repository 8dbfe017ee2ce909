//! The sandboxed filesystem service: one user's view of their mounts, with
//! the operations of a filesystem on top of object storage.
//!
//! [`Corral`](crate::Corral) is built once per process from the mappings and the cache
//! settings; [`Corral::sandbox`](crate::Corral::sandbox) gives a [`UserSandbox`] for one user. Every
//! path is parsed by the domain ([`VirtualPath`]), located in the user's
//! view ([`corral_domain::UserView::locate`]) and mapped to a key by the
//! mount's [`SandboxRoot`]; every listing goes through the domain's rule
//! ([`DirectoryListing`]), so nothing outside the sandbox is ever listed,
//! read, written or deleted; every call to a backend goes through the
//! mount's [`scoped`] layer, so every error names the user's path.
//!
//! | module | what |
//! |---|---|
//! | `service` | [`Corral`](crate::Corral) and its builder |
//! | `read` | `stat`, `list`, `open`, `read`, `reader`, `download_to_file` |
//! | `write` | `create` ([`Writer`](crate::Writer)), `write`, `write_stream`, `mkdir`, `resume` |
//! | `tree` | `remove`, `copy`, `rename`, recursive or not |
//! | `admin` | `check`, the mounts' descriptions, pending uploads, conformance |
//! | `partial` | uploads kept after their writer went away, and continued |
//! | [`scoped`] | the layer that maps every backend error to the user's path |

pub(crate) mod admin;
pub(crate) mod lease;
pub(crate) mod partial;
pub(crate) mod private;
pub(crate) mod read;
pub(crate) mod scoped;
pub(crate) mod service;
pub(crate) mod tree;
pub(crate) mod write;
pub(crate) mod writing;

use std::sync::Arc;
use std::time::SystemTime;

use corral_domain::key::KeyClass;
use corral_domain::listing::{DirectoryListing, EntryKind, directory_exists};
use corral_domain::mapping::Location;
use corral_domain::port::{ListItem, ListOptions};
use corral_domain::{
    Capabilities, Error, ErrorKind, ObjectKey, ObjectStorage, SandboxRoot, UserView, VirtualPath,
};
use futures::TryStreamExt;

use crate::cache::TransferCache;
use scoped::Scoped;

/// What `stat` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path in the user's view.
    pub path: VirtualPath,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for a directory).
    pub size: u64,
    /// Last modification, if known.
    pub modified: Option<SystemTime>,
    /// The backend's entity tag of a stored file (S3: the object's ETag),
    /// if it gives one.
    pub etag: Option<String>,
}

/// What a copy or a move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Files copied or moved.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One mount of the user's view with its backend, opened or not.
#[derive(Debug)]
pub(crate) enum Slot {
    Open(Opened),
    /// The backend could not be opened: every operation on the mount says why.
    Failed(ErrorKind, String),
}

/// An opened mount.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) point: VirtualPath,
    pub(crate) root: SandboxRoot,
    /// The backend behind the error layer: every call goes through it.
    pub(crate) storage: Arc<Scoped>,
    /// Which store the keys are of (a directory, a bucket at an endpoint):
    /// the same for every mount of that store, whichever user's.
    pub(crate) store: Arc<str>,
}

impl Slot {
    pub(crate) fn open(
        storage: Arc<dyn ObjectStorage>,
        root: SandboxRoot,
        point: VirtualPath,
        store: Arc<str>,
    ) -> Self {
        Self::Open(Opened {
            storage: Arc::new(Scoped::new(storage, root.clone(), point.clone())),
            point,
            root,
            store,
        })
    }
}

/// The store a resolved spec's keys are of, as the table of files being
/// written names it.
pub(crate) fn store_id(spec: &corral_domain::mapping::ResolvedSpec) -> Arc<str> {
    use corral_domain::mapping::ResolvedSpec;
    Arc::from(match spec {
        ResolvedSpec::File { dir, .. } => format!("file:{dir}"),
        ResolvedSpec::S3 { spec, .. } => format!(
            "s3:{}:{}",
            spec.endpoint.as_ref().map_or("aws", |u| u.as_str()),
            spec.bucket_name
        ),
        ResolvedSpec::Memory { .. } => "memory".to_owned(),
        ResolvedSpec::Custom { backend, .. } => format!("custom:{backend}"),
        other => format!("{other:?}"),
    })
}

impl Opened {
    /// The backend as the port, errors mapped (what the cache is handed).
    pub(crate) fn port(&self) -> Arc<dyn ObjectStorage> {
        Arc::clone(&self.storage) as Arc<dyn ObjectStorage>
    }

    /// Whether two mounts are on one backend (server-side copies).
    pub(crate) fn same_backend(&self, other: &Self) -> bool {
        Arc::ptr_eq(self.storage.inner(), other.storage.inner())
    }
}

/// A place inside a mount: the mount, the path relative to its root, and
/// the user's path.
pub(crate) struct At<'a> {
    pub(crate) mount: &'a Opened,
    pub(crate) inner: VirtualPath,
    pub(crate) path: VirtualPath,
}

impl At<'_> {
    pub(crate) fn storage(&self) -> &Scoped {
        &self.mount.storage
    }
    pub(crate) fn caps(&self) -> &Capabilities {
        self.mount.storage.capabilities()
    }
    pub(crate) fn root(&self) -> &SandboxRoot {
        &self.mount.root
    }
    pub(crate) fn key(&self) -> Result<ObjectKey, Error> {
        Ok(self.mount.root.key_for(&self.inner)?)
    }
    pub(crate) fn is_mount_root(&self) -> bool {
        self.inner.is_root()
    }
    /// Another place of the same mount.
    pub(crate) fn at(&self, inner: VirtualPath) -> Result<Self, Error> {
        Ok(Self {
            mount: self.mount,
            path: self.mount.point.join_path(&inner)?,
            inner,
        })
    }
}

/// Where a path leads.
pub(crate) enum Place<'a> {
    Mount(At<'a>),
    /// A read-only directory above mounts.
    Virtual(VirtualPath),
}

/// Parses a user's path, naming it in the error.
pub(crate) fn parse(path: &str) -> Result<VirtualPath, Error> {
    VirtualPath::parse(path).map_err(|e| Error::from(e).with_path(path.to_owned()))
}

/// A path in a user's sandbox, as the library's methods take it: a
/// [`VirtualPath`] parsed at the edge (a server parses with its own
/// [`corral_domain::Resolution`]), or, for convenience, a string parsed
/// here with the strict rules.
pub trait SandboxPath {
    /// The parsed path, or an error naming the input.
    fn to_virtual(self) -> Result<VirtualPath, Error>;
}

impl SandboxPath for &VirtualPath {
    fn to_virtual(self) -> Result<VirtualPath, Error> {
        Ok(self.clone())
    }
}

impl SandboxPath for VirtualPath {
    fn to_virtual(self) -> Result<VirtualPath, Error> {
        Ok(self)
    }
}

impl SandboxPath for &str {
    fn to_virtual(self) -> Result<VirtualPath, Error> {
        parse(self)
    }
}

impl SandboxPath for &String {
    fn to_virtual(self) -> Result<VirtualPath, Error> {
        parse(self)
    }
}

impl SandboxPath for String {
    fn to_virtual(self) -> Result<VirtualPath, Error> {
        parse(&self)
    }
}

/// One user's sandbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserSandbox {
    view: Arc<UserView>,
    slots: Arc<Vec<Slot>>,
    cache: TransferCache,
    writing: Arc<writing::Writing>,
    /// Unfinished uploads are kept and continued ([`partial`]).
    partials: bool,
}

/// Where a file is stored, for the journal of uploads in flight.
pub(crate) struct FileKey {
    /// Its object key.
    pub(crate) key: String,
    /// The mount point it is under.
    pub(crate) mount: String,
    /// Whether another process can resume an upload to it.
    pub(crate) resumable: bool,
}

/// What a recursive walk found below a directory.
#[derive(Debug, Default)]
pub(crate) struct Below {
    /// Visible keys (files and markers), with their sizes.
    pub(crate) keys: Vec<(ObjectKey, u64)>,
    /// Links and special files (File sandboxes): never copied or entered.
    pub(crate) special: Vec<ObjectKey>,
}

impl UserSandbox {
    pub(crate) fn new(
        view: UserView,
        slots: Vec<Slot>,
        cache: TransferCache,
        writing: Arc<writing::Writing>,
    ) -> Self {
        Self {
            view: Arc::new(view),
            slots: Arc::new(slots),
            cache,
            writing,
            partials: false,
        }
    }

    /// Keeps unfinished uploads for a later writer to continue ([`partial`]).
    pub(crate) fn with_partials(mut self, on: bool) -> Self {
        self.partials = on;
        self
    }

    /// The user's view (mounts and where they lead).
    pub fn view(&self) -> &UserView {
        &self.view
    }

    /// The transfer cache.
    pub fn cache(&self) -> &TransferCache {
        &self.cache
    }

    /// The opened mounts, with their points.
    pub(crate) fn opened(&self) -> impl Iterator<Item = Result<&Opened, Error>> + '_ {
        self.view
            .mounts()
            .iter()
            .zip(self.slots.iter())
            .map(|(m, s)| match s {
                Slot::Open(o) => Ok(o),
                Slot::Failed(kind, msg) => {
                    Err(Error::new(*kind, msg.clone()).with_path(m.point.to_string()))
                }
            })
    }

    pub(crate) fn place(&self, path: &VirtualPath) -> Result<Place<'_>, Error> {
        match self.view.locate(path)? {
            Location::Virtual => Ok(Place::Virtual(path.clone())),
            Location::Mount { index, inner, .. } => match &self.slots[index] {
                Slot::Open(mount) => Ok(Place::Mount(At {
                    mount,
                    inner,
                    path: path.clone(),
                })),
                Slot::Failed(kind, msg) => {
                    Err(Error::new(*kind, msg.clone()).with_path(path.to_string()))
                }
            },
        }
    }

    /// The place of `path`, which must be inside a mount.
    pub(crate) fn mount(&self, path: &VirtualPath, what: &str) -> Result<At<'_>, Error> {
        match self.place(path)? {
            Place::Mount(t) => Ok(t),
            Place::Virtual(p) => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{what} {p}: it is a read-only directory that lists mounts"),
            )
            .with_path(p.to_string())),
        }
    }

    /// Whether a directory exists at `t`: on a backend with real
    /// directories, the directory; else its marker or any visible key below
    /// it (one listing, which returns the marker itself first).
    pub(crate) async fn dir_exists(t: &At<'_>) -> Result<bool, Error> {
        if t.is_mount_root() {
            return Ok(true);
        }
        if !t.caps().directory_markers {
            let Some(marker) = t.root().dir_marker_for(&t.inner)? else {
                return Ok(true);
            };
            return match t.storage().head(&marker).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            };
        }
        // Not a HEAD of the marker: s3s-fs answers HEAD `f/` with the file `f`.
        let prefix = t.root().list_prefix_for(&t.inner)?;
        let mut items = t.storage().list(&prefix, ListOptions::default());
        while let Some(item) = items.try_next().await? {
            let (marker, child) = match t.root().classify(item.key().as_str()) {
                KeyClass::Directory(p) if p == t.inner => (true, false),
                KeyClass::File(_) | KeyClass::Directory(_) => (false, true),
                KeyClass::RootMarker | KeyClass::Hidden(_) => (false, false),
            };
            if directory_exists(marker, child) {
                return Ok(true);
            }
        }
        Ok(directory_exists(false, false))
    }

    /// Every visible key at or below directory `t` (files and markers), and
    /// apart, the links and special files there (File sandboxes).
    pub(crate) async fn below(t: &At<'_>) -> Result<Below, Error> {
        let prefix = t.root().list_prefix_for(&t.inner)?;
        let mut items = t.storage().list(&prefix, ListOptions::default());
        let mut below = Below::default();
        while let Some(item) = items.try_next().await? {
            match item {
                ListItem::Special(key, _) => below.special.push(key),
                item if matches!(t.root().classify(item.key().as_str()), KeyClass::Hidden(_)) => {}
                ListItem::Object(meta) => below.keys.push((meta.key, meta.size)),
                ListItem::Prefix(key) => below.keys.push((key, 0)),
            }
        }
        Ok(below)
    }

    /// Where a file is stored: its key, the mount point it is under, and
    /// whether an upload to it can be resumed by another process (for the
    /// journal of uploads in flight).
    pub(crate) fn file_key(&self, vp: &VirtualPath) -> Result<FileKey, Error> {
        let t = self.mount(vp, "cannot write")?;
        Ok(FileKey {
            key: t.key()?.into_string(),
            mount: t.mount.point.to_string(),
            resumable: t.caps().resume,
        })
    }

    /// The listing rule for directory `t`, with the mounts below `dir`.
    pub(crate) fn listing_rule(&self, t: &At<'_>, dir: &VirtualPath) -> DirectoryListing {
        DirectoryListing::new(
            t.root().clone(),
            t.inner.clone(),
            self.view.mount_children(dir),
        )
    }
}
