//! The sandboxed filesystem service: one user's view of their mounts, with
//! the operations of a filesystem on top of object storage.
//!
//! [`Corral`] is built once per process from the mappings and the cache
//! settings; [`Corral::sandbox`] gives a [`UserSandbox`] for one user. Every
//! path is parsed by the domain ([`VirtualPath`]), located in the user's view
//! ([`corral_domain::UserView::locate`]) and mapped to a key by the mount's
//! [`SandboxRoot`]; every listing goes back through the root's strict inverse,
//! so nothing outside the sandbox is ever listed, read, written or deleted.
//! The rules themselves live in `corral-domain`; this module wires them to
//! the backends and the transfer cache.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use corral_adapters::{Backends, OpenSandbox};
use corral_domain::key::{HiddenCount, KeyClass};
use corral_domain::listing::{DirEntry, EntryKind, directory_exists};
use corral_domain::mapping::Location;
use corral_domain::overwrite::{
    BACKUP_SUFFIX, OverwriteDecision, PART_FILE_SUFFIX, RefuseReason, WritePlan, decide,
};
use corral_domain::parts::MAX_COPY_OBJECT_SIZE;
use corral_domain::port::{ListItem, ListOptions, PutMode};
use corral_domain::{
    Capabilities, Error, ErrorKind, Identity, Mappings, ObjectKey, ObjectStorage, OverwriteMode,
    SandboxRoot, UserView, VirtualPath,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::cache::{CacheConfig, Download, TransferCache, Upload};

/// corral for a whole process: the mappings, the backends and the transfer cache.
#[derive(Debug, Clone)]
pub struct Corral {
    mappings: Arc<Mappings>,
    backends: Arc<Backends>,
    cache: TransferCache,
}

impl Corral {
    /// Builds the service. The cache is opened (and, in file mode, its file
    /// created and locked) here; backends connect on first use.
    pub fn new(mappings: Mappings, cache: CacheConfig) -> Result<Self, Error> {
        Self::builder(mappings).cache(cache).build()
    }

    /// Builds the service from mappings written as JSON (the JetStream-compatible shape).
    pub fn from_json(mappings: &str, cache: CacheConfig) -> Result<Self, Error> {
        let mappings: Mappings = serde_json::from_str(mappings).map_err(|e| {
            Error::invalid_input(format!("mappings: {e}"))
                .with_operation(corral_domain::Operation::Configure)
        })?;
        Self::new(mappings, cache)
    }

    /// A builder, to register backends of one's own before building.
    pub fn builder(mappings: Mappings) -> CorralBuilder {
        CorralBuilder {
            mappings,
            cache: CacheConfig::default(),
            backends: Backends::new(),
        }
    }

    /// The mappings.
    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    /// The transfer cache.
    pub fn cache(&self) -> &TransferCache {
        &self.cache
    }

    /// The sandbox of one user.
    pub fn sandbox(&self, identity: &Identity) -> Result<UserSandbox, Error> {
        let view = self.mappings.resolve(identity)?;
        let opened = view
            .mounts()
            .iter()
            .map(|m| {
                self.backends
                    .open(&m.spec)
                    .map_err(|e| (e.kind(), e.to_string()))
            })
            .collect();
        Ok(UserSandbox {
            view,
            opened,
            cache: self.cache.clone(),
        })
    }
}

/// Builds a [`Corral`]: mappings, cache settings, and backends of one's own.
#[derive(Debug)]
pub struct CorralBuilder {
    mappings: Mappings,
    cache: CacheConfig,
    backends: Backends,
}

impl CorralBuilder {
    /// The transfer cache settings (default: 1 GiB in memory, 64 MiB per transfer).
    #[must_use]
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Registers a backend for `Custom` sandboxes naming it
    /// (`{"type": "Custom", "backend": "NAME", "path": "prefix/%u"}`).
    #[must_use]
    pub fn backend(self, name: impl Into<String>, storage: Arc<dyn ObjectStorage>) -> Self {
        self.backends.register(name, storage);
        self
    }

    /// Opens the cache and builds the service.
    pub fn build(self) -> Result<Corral, Error> {
        Ok(Corral {
            mappings: Arc::new(self.mappings),
            backends: Arc::new(self.backends),
            cache: TransferCache::open(self.cache)?,
        })
    }
}

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
}

/// What a copy or a move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Files copied or moved.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Where a path leads, with its backend.
struct Target<'a> {
    storage: &'a Arc<dyn ObjectStorage>,
    root: &'a SandboxRoot,
    inner: VirtualPath,
    mount_point: &'a VirtualPath,
}

impl Target<'_> {
    fn caps(&self) -> &Capabilities {
        self.storage.capabilities()
    }
    fn key(&self) -> Result<ObjectKey, Error> {
        Ok(self.root.key_for(&self.inner)?)
    }
    fn is_mount_root(&self) -> bool {
        self.inner.is_root()
    }
}

enum Place<'a> {
    Mount(Target<'a>),
    /// A read-only directory above mounts.
    Virtual,
}

/// A write in progress; see [`UserSandbox::create`].
#[derive(Debug)]
pub struct Writer {
    upload: Upload,
    decision: OverwriteDecision,
    finish: Finish,
    /// The user's path, named in errors instead of the bucket key.
    path: String,
}

#[derive(Debug)]
enum Finish {
    Direct,
    PartFile {
        storage: Arc<dyn ObjectStorage>,
        part: ObjectKey,
        target: ObjectKey,
        backup: Option<ObjectKey>,
    },
}

impl Writer {
    /// The effective overwrite decision (with a notice when a requested mode was ignored).
    pub fn decision(&self) -> &OverwriteDecision {
        &self.decision
    }

    /// Records the upload's progress (multipart uploads only).
    pub fn set_journal(&mut self, journal: Box<dyn crate::cache::UploadJournal>) {
        self.upload.set_journal(journal);
    }

    /// The part size of the upload.
    pub fn part_size(&self) -> u64 {
        self.upload.part_size()
    }

    /// The parts already sent (or, when resumed, already on the server).
    pub fn parts_sent(&self) -> Vec<u64> {
        self.upload.parts_sent().collect()
    }

    /// Writes bytes at an offset (any order, each byte once).
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let r = self.upload.write_at(offset, data).await;
        r.map_err(|e| e.with_path(self.path.clone()))
    }

    /// Writes after what was written so far.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let r = self.upload.write(data).await;
        r.map_err(|e| e.with_path(self.path.clone()))
    }

    /// Gives the write up because of `cause`: aborts the upload now (rather
    /// than in the background, as dropping the writer does) and returns
    /// `cause`, saying so if the upload could not be aborted.
    pub async fn cancel(self, cause: Error) -> Error {
        self.upload.cancel(cause).await.with_path(self.path)
    }

    /// Completes the write: the data becomes visible at the target only now.
    pub async fn finish(self) -> Result<OverwriteDecision, Error> {
        let path = self.path.clone();
        self.finish_inner().await.map_err(|e| e.with_path(path))
    }

    async fn finish_inner(self) -> Result<OverwriteDecision, Error> {
        self.upload.finish().await?;
        if let Finish::PartFile {
            storage,
            part,
            target,
            backup,
        } = self.finish
        {
            if let Some(backup) = backup {
                match storage.rename(&target, &backup).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            storage.rename(&part, &target).await?;
        }
        Ok(self.decision)
    }
}

/// One user's sandbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserSandbox {
    view: UserView,
    opened: Vec<Result<OpenSandbox, (ErrorKind, String)>>,
    cache: TransferCache,
}

fn parse(path: &str) -> Result<VirtualPath, Error> {
    VirtualPath::parse(path).map_err(|e| Error::from(e).with_path(path.to_owned()))
}

fn read_only(path: &VirtualPath, what: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!("{what} {path}: it is a read-only directory that lists mounts"),
    )
    .with_path(path.to_string())
}

impl UserSandbox {
    /// The user's view (mounts and where they lead).
    pub fn view(&self) -> &UserView {
        &self.view
    }

    /// The transfer cache.
    pub fn cache(&self) -> &TransferCache {
        &self.cache
    }

    /// The backend and key prefix of the mount at `mount` (for tools such as
    /// the conformance suite, which work below the sandbox's prefix).
    pub fn backend(&self, mount: &str) -> Result<(Arc<dyn ObjectStorage>, SandboxRoot), Error> {
        let vp = parse(mount)?;
        let i = self
            .view
            .mounts()
            .iter()
            .position(|m| m.point == vp)
            .ok_or_else(|| Error::not_found(format!("{vp} is not a mount point of this user")))?;
        let opened = self.opened[i]
            .as_ref()
            .map_err(|(kind, msg)| Error::new(*kind, msg.clone()))?;
        Ok((opened.storage.clone(), opened.root.clone()))
    }

    /// `e`, naming the user's path where it named a bucket key: an error
    /// does not show where in the bucket a sandbox lives.
    fn user_facing(&self, e: Error) -> Error {
        let Some(key) = e.path().filter(|p| !p.starts_with('/')).map(str::to_owned) else {
            return e;
        };
        let owner = self
            .view
            .mounts()
            .iter()
            .zip(&self.opened)
            .filter_map(|(m, o)| o.as_ref().ok().map(|o| (m, o)))
            .filter(|(_, o)| key.starts_with(o.root.prefix()))
            .max_by_key(|(_, o)| o.root.prefix().len());
        let Some((mount, opened)) = owner else {
            return e;
        };
        let path = match opened.root.classify(&key) {
            KeyClass::File(p) | KeyClass::Directory(p) => mount.point.join_path(&p).ok(),
            KeyClass::RootMarker | KeyClass::Hidden(_) => None,
        };
        e.with_path(path.unwrap_or_else(|| mount.point.clone()).to_string())
    }

    fn place(&self, path: &VirtualPath) -> Result<Place<'_>, Error> {
        match self.view.locate(path)? {
            Location::Virtual => Ok(Place::Virtual),
            Location::Mount { mount, inner } => {
                let i = self
                    .view
                    .mounts()
                    .iter()
                    .position(|m| std::ptr::eq(m, mount))
                    .ok_or_else(|| Error::new(ErrorKind::Other, "mount not found"))?;
                let opened = self.opened[i].as_ref().map_err(|(kind, msg)| {
                    Error::new(*kind, msg.clone()).with_path(path.to_string())
                })?;
                Ok(Place::Mount(Target {
                    storage: &opened.storage,
                    root: &opened.root,
                    inner,
                    mount_point: &mount.point,
                }))
            }
        }
    }

    fn mount(&self, path: &VirtualPath, what: &str) -> Result<Target<'_>, Error> {
        match self.place(path)? {
            Place::Mount(t) => Ok(t),
            Place::Virtual => Err(read_only(path, what)),
        }
    }

    /// Whether a directory exists at `t`: its marker or any visible key below
    /// it (one listing, which also returns the marker itself), or on a
    /// backend with real directories, the directory.
    async fn dir_exists(t: &Target<'_>) -> Result<bool, Error> {
        if t.is_mount_root() {
            return Ok(true);
        }
        if !t.caps().directory_markers {
            let Some(marker) = t.root.dir_marker_for(&t.inner)? else {
                return Ok(true);
            };
            return match t.storage.head(&marker).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            };
        }
        // Not a HEAD of the marker: s3s-fs answers HEAD `f/` with the file `f`.
        let prefix = t.root.list_prefix_for(&t.inner)?;
        let mut items = t.storage.list(&prefix, ListOptions::default());
        // The listing returns the marker itself first, then the keys below;
        // stop at the first visible one.
        while let Some(item) = items.try_next().await? {
            let (marker, child) = match t.root.classify(item.key().as_str()) {
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

    /// File or directory at `path`; a directory wins over a file of the same name.
    pub async fn stat(&self, path: &str) -> Result<Entry, Error> {
        let r = self.stat_inner(path).await;
        r.map_err(|e| self.user_facing(e))
    }

    async fn stat_inner(&self, path: &str) -> Result<Entry, Error> {
        let vp = parse(path)?;
        let t = match self.place(&vp)? {
            Place::Virtual => {
                return Ok(Entry {
                    path: vp,
                    kind: EntryKind::Directory,
                    size: 0,
                    modified: None,
                });
            }
            Place::Mount(t) => t,
        };
        // A path that holds mount points is a directory even if its own sandbox has nothing there.
        if !self.view.mount_children(&vp).is_empty() || Self::dir_exists(&t).await? {
            return Ok(Entry {
                path: vp,
                kind: EntryKind::Directory,
                size: 0,
                modified: None,
            });
        }
        let meta = t
            .storage
            .head(&t.key()?)
            .await
            .map_err(|e| e.with_path(vp.to_string()))?;
        Ok(Entry {
            path: vp,
            kind: EntryKind::File,
            size: meta.size,
            modified: meta.last_modified,
        })
    }

    /// The entries of directory `path`, streamed as the backend pages in
    /// (mount points first, then the backend's entries in key order).
    pub fn list(&self, path: &str) -> BoxStream<'static, Result<DirEntry, Error>> {
        match self.list_inner(path) {
            Ok(s) => {
                let this = self.clone();
                Box::pin(s.map_err(move |e| this.user_facing(e)))
            }
            Err(e) => Box::pin(futures::stream::once(async { Err(e) })),
        }
    }

    fn list_inner(&self, path: &str) -> Result<BoxStream<'static, Result<DirEntry, Error>>, Error> {
        let vp = parse(path)?;
        let mounts = self.view.mount_children(&vp);
        let mount_entries: Vec<Result<DirEntry, Error>> = mounts
            .iter()
            .map(|m| Ok(DirEntry::directory(m.clone())))
            .collect();
        let t = match self.place(&vp)? {
            Place::Virtual => return Ok(Box::pin(futures::stream::iter(mount_entries))),
            Place::Mount(t) => t,
        };
        let root = t.root.clone();
        let inner = t.inner.clone();
        let prefix = root.list_prefix_for(&inner)?;
        let items = t.storage.list(
            &prefix,
            ListOptions {
                delimiter: true,
                start_after: None,
            },
        );
        let shown = vp.to_string();
        let state = ListState {
            root,
            inner,
            mounts,
            hidden: HiddenCount::default(),
            pending: Vec::new(),
            shadowed: 0,
            path: shown,
        };
        let entries = futures::stream::unfold(
            (items, state, false),
            |(mut items, mut st, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match items.next().await {
                        Some(Ok(item)) => {
                            let out = st.push(item);
                            if !out.is_empty() {
                                return Some((
                                    futures::stream::iter(out.into_iter().map(Ok)).boxed(),
                                    (items, st, false),
                                ));
                            }
                        }
                        Some(Err(e)) => {
                            return Some((
                                futures::stream::iter(vec![Err(e)]).boxed(),
                                (items, st, true),
                            ));
                        }
                        None => {
                            let out = st.end();
                            return Some((futures::stream::iter(out).boxed(), (items, st, true)));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(
            futures::stream::iter(mount_entries).chain(entries.flatten()),
        ))
    }

    /// Reads a whole file (for small files; large ones go through [`Self::open`]).
    pub async fn read(&self, path: &str) -> Result<Bytes, Error> {
        let mut d = self.open(path).await?;
        let mut out = Vec::with_capacity(d.size() as usize);
        while let Some(chunk) = d.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    /// Up to `len` bytes of a file from `offset` (fewer at the end of the file).
    pub async fn read_range(&self, path: &str, offset: u64, len: usize) -> Result<Bytes, Error> {
        let mut d = self.open(path).await?;
        let mut out = Vec::with_capacity(len.min(d.size().saturating_sub(offset) as usize));
        let mut at = offset;
        while out.len() < len {
            let chunk = d.read_at(at, len - out.len()).await?;
            if chunk.is_empty() {
                break;
            }
            at += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    /// A file as an [`tokio::io::AsyncRead`], read ahead through the cache.
    pub async fn reader(
        &self,
        path: &str,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, Error> {
        let d = self.open(path).await?;
        let chunks = futures::stream::try_unfold(d, |mut d| async move {
            Ok::<_, Error>(d.next_chunk().await?.map(|c| (c, d)))
        })
        .map_err(std::io::Error::other);
        Ok(tokio_util::io::StreamReader::new(Box::pin(chunks)))
    }

    /// Writes a file from a stream of byte chunks (`size` if known).
    pub async fn write_stream<S, E>(
        &self,
        path: &str,
        size: Option<u64>,
        mode: Option<OverwriteMode>,
        stream: S,
    ) -> Result<OverwriteDecision, Error>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut w = self.create(path, size, mode).await?;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => w.write(&chunk).await,
                Err(e) => Err(Error::new(
                    ErrorKind::Other,
                    format!("reading the source: {e}"),
                )),
            };
            if let Err(e) = written {
                return Err(w.cancel(e).await);
            }
        }
        w.finish().await
    }

    /// Writes a file from an [`tokio::io::AsyncRead`] (`size` if known).
    pub async fn write_from<R>(
        &self,
        path: &str,
        size: Option<u64>,
        mode: Option<OverwriteMode>,
        reader: R,
    ) -> Result<OverwriteDecision, Error>
    where
        R: tokio::io::AsyncRead + Send + Unpin,
    {
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20);
        self.write_stream(path, size, mode, stream).await
    }

    /// Downloads a file to a local path: into a temporary file beside it,
    /// created exclusively under a random name (never through a link), and
    /// renamed over `local` only when every byte arrived, so that a failure
    /// or a cancellation leaves no partial file. A link at `local` is
    /// replaced, not written through. `progress` is told of the bytes as
    /// they are written.
    pub async fn download_to_file(
        &self,
        path: &str,
        local: &std::path::Path,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        let mut d = self.open(path).await?;
        let dir = local
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let local_err = |p: &std::path::Path, e: std::io::Error| {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Other,
            };
            Error::new(kind, format!("cannot write {}: {e}", p.display()))
        };
        // Removed when dropped, unless persisted.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".corral-part")
            .tempfile_in(dir)
            .map_err(|e| local_err(local, e))?;
        let file = Arc::new(
            temp.as_file()
                .try_clone()
                .map_err(|e| local_err(local, e))?,
        );
        let mut total = 0u64;
        // Chunks are written by the blocking pool, two at a time, while the next
        // ones download; a chunk's cache slot comes back when its write is done.
        let mut writes: tokio::task::JoinSet<std::io::Result<()>> = tokio::task::JoinSet::new();
        let join = |r: Option<Result<std::io::Result<()>, tokio::task::JoinError>>| match r {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(local_err(local, e)),
            Some(Err(e)) => Err(Error::new(
                ErrorKind::Other,
                format!("a write task failed: {e}"),
            )),
        };
        while let Some(chunk) = d.next_chunk().await? {
            let (f, at, len) = (file.clone(), total, chunk.len() as u64);
            writes
                .spawn_blocking(move || std::os::unix::fs::FileExt::write_all_at(&*f, &chunk, at));
            total += len;
            progress(len);
            while writes.len() >= 2 {
                join(writes.join_next().await)?;
            }
        }
        while !writes.is_empty() {
            join(writes.join_next().await)?;
        }
        drop(file);
        temp.persist(local).map_err(|e| local_err(local, e.error))?;
        Ok(total)
    }

    /// Opens a file for reading through the cache's read-ahead.
    pub async fn open(&self, path: &str) -> Result<Download, Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot read")?;
        if t.is_mount_root() || Self::dir_exists(&t).await? {
            return Err(
                Error::new(ErrorKind::InvalidInput, format!("{vp} is a directory"))
                    .with_path(vp.to_string()),
            );
        }
        let mut d = self
            .cache
            .download(t.storage.clone(), t.key()?)
            .await
            .map_err(|e| e.with_path(vp.to_string()))?;
        d.set_path(vp.to_string());
        Ok(d)
    }

    /// Starts writing `path` (`size` if known), applying the overwrite mode
    /// (the backend's own when `None` or when the request is ignored). The
    /// size is checked against the sandbox's limit before any byte moves.
    pub async fn create(
        &self,
        path: &str,
        size: Option<u64>,
        mode: Option<OverwriteMode>,
    ) -> Result<Writer, Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot write")?;
        if t.is_mount_root() || Self::dir_exists(&t).await? {
            return Err(
                Error::new(ErrorKind::AlreadyExists, format!("{vp} is a directory"))
                    .with_path(vp.to_string()),
            );
        }
        let decision = decide(mode, t.caps());
        let key = t.key()?;
        let existing = match t.storage.head(&key).await {
            Ok(m) => Some(m.size),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.with_path(vp.to_string())),
        };
        let plan = decision.effective.plan(existing, size);
        let (write_key, finish) = match plan {
            WritePlan::Refuse(reason) => {
                let why = match reason {
                    RefuseReason::Exists => format!(
                        "{vp} exists and overwrite mode {} never overwrites",
                        decision.effective
                    ),
                    RefuseReason::SizeDiffers { existing } => format!(
                        "{vp} exists with {existing} bytes and overwrite mode {} only overwrites a file of the same size or an empty one",
                        decision.effective
                    ),
                };
                return Err(Error::new(ErrorKind::AlreadyExists, why).with_path(vp.to_string()));
            }
            WritePlan::InPlace => (key, Finish::Direct),
            WritePlan::ViaPartFile { backup } => {
                let name = vp.file_name().unwrap_or_default();
                let sibling = |suffix: &str| -> Result<ObjectKey, Error> {
                    let p = vp
                        .parent()
                        .unwrap_or_default()
                        .join(&format!("{name}{suffix}"))?;
                    let inner = p.strip_prefix(t.mount_point).unwrap_or(p);
                    Ok(t.root.key_for(&inner)?)
                };
                let part = sibling(PART_FILE_SUFFIX)?;
                let backup = if backup {
                    Some(sibling(BACKUP_SUFFIX)?)
                } else {
                    None
                };
                (
                    part.clone(),
                    Finish::PartFile {
                        storage: t.storage.clone(),
                        part,
                        target: key,
                        backup,
                    },
                )
            }
        };
        let upload = self
            .cache
            .upload(t.storage.clone(), write_key, size)
            .await
            .map_err(|e| e.with_path(vp.to_string()))?;
        Ok(Writer {
            upload,
            decision,
            finish,
            path: vp.to_string(),
        })
    }

    /// Where a file of the sandbox is stored: its backend, its key and the
    /// mount point it is under (for journals and tools).
    pub fn object(
        &self,
        path: &str,
    ) -> Result<(Arc<dyn ObjectStorage>, ObjectKey, VirtualPath), Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot address")?;
        Ok((t.storage.clone(), t.key()?, t.mount_point.clone()))
    }

    /// Continues an in-place multipart upload to `path` that an earlier
    /// process started (`parts` are on the server). Only where the backend
    /// declares [`Capabilities::resume`].
    pub async fn resume(
        &self,
        path: &str,
        size: u64,
        part_size: u64,
        upload: corral_domain::port::UploadId,
        parts: Vec<corral_domain::port::CompletedPart>,
    ) -> Result<Writer, Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot write")?;
        if !t.caps().resume {
            return Err(Error::unsupported(format!(
                "the {} backend cannot resume uploads",
                t.caps().name
            )));
        }
        let upload = self
            .cache
            .resume_upload(t.storage.clone(), t.key()?, size, part_size, upload, parts)
            .await?;
        Ok(Writer {
            upload,
            decision: decide(None, t.caps()),
            finish: Finish::Direct,
            path: vp.to_string(),
        })
    }

    /// Writes a whole file from memory.
    pub async fn write(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<OverwriteMode>,
    ) -> Result<OverwriteDecision, Error> {
        let mut w = self.create(path, Some(data.len() as u64), mode).await?;
        if let Err(e) = w.write_at(0, data).await {
            return Err(w.cancel(e).await);
        }
        w.finish().await
    }

    /// Creates a directory (and, with `parents`, the missing ones above it).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), Error> {
        let r = self.mkdir_inner(path, parents).await;
        r.map_err(|e| self.user_facing(e))
    }

    async fn mkdir_inner(&self, path: &str, parents: bool) -> Result<(), Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot create a directory in")?;
        if t.is_mount_root() || Self::dir_exists(&t).await? {
            if parents {
                return Ok(());
            }
            return Err(
                Error::new(ErrorKind::AlreadyExists, format!("{vp} already exists"))
                    .with_path(vp.to_string()),
            );
        }
        let key = t.key()?;
        if t.storage.head(&key).await.is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{vp} exists and is a file"),
            )
            .with_path(vp.to_string()));
        }
        // Each missing ancestor gets a marker too, so removing the leaf later
        // does not make its parents vanish.
        let mut chain = Vec::new();
        let mut cur = t.inner.parent();
        while let Some(p) = cur {
            if p.is_root() {
                break;
            }
            let at = Target {
                storage: t.storage,
                root: t.root,
                inner: p.clone(),
                mount_point: t.mount_point,
            };
            if Self::dir_exists(&at).await? {
                break;
            }
            if !parents {
                return Err(Error::not_found(format!(
                    "the parent directory {} does not exist (use -p to create it)",
                    t.mount_point.join_path(&p)?
                ))
                .with_path(vp.to_string()));
            }
            chain.push(p.clone());
            cur = p.parent();
        }
        chain.reverse();
        chain.push(t.inner.clone());
        for dir in chain {
            if let Some(marker) = t.root.dir_marker_for(&dir)? {
                t.storage
                    .put(&marker, Bytes::new(), PutMode::Overwrite)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every visible key at or below directory `t` (files and markers), and
    /// apart, the links and special files there (File sandboxes).
    async fn keys_below(t: &Target<'_>) -> Result<Below, Error> {
        let prefix = t.root.list_prefix_for(&t.inner)?;
        let items: Vec<ListItem> = t
            .storage
            .list(&prefix, ListOptions::default())
            .try_collect()
            .await?;
        let mut below = Below::default();
        for item in items {
            match item {
                ListItem::Special(key, _) => below.special.push(key),
                item if matches!(t.root.classify(item.key().as_str()), KeyClass::Hidden(_)) => {}
                ListItem::Object(meta) => below.keys.push((meta.key, meta.size)),
                ListItem::Prefix(key) => below.keys.push((key, 0)),
            }
        }
        Ok(below)
    }

    /// Removes a file, an empty directory, or (with `recursive`) a directory and everything visible below it.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), Error> {
        let r = self.remove_inner(path, recursive).await;
        r.map_err(|e| self.user_facing(e))
    }

    async fn remove_inner(&self, path: &str, recursive: bool) -> Result<(), Error> {
        let vp = parse(path)?;
        let t = self.mount(&vp, "cannot remove")?;
        if t.is_mount_root() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{vp} is a mount point and cannot be removed"),
            )
            .with_path(vp.to_string()));
        }
        if !self.view.mount_children(&vp).is_empty() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{vp} holds a mount point and cannot be removed"),
            )
            .with_path(vp.to_string()));
        }
        let is_dir = match Self::dir_exists(&t).await {
            Ok(is_dir) => is_dir,
            // A link where a directory would be: removed as an entry below.
            Err(e) if e.special().is_some() => false,
            Err(e) => return Err(e),
        };
        if is_dir {
            let below = Self::keys_below(&t).await?;
            // Links and special files go too, as entries: never what they lead to.
            let mut keys: Vec<ObjectKey> = below
                .keys
                .into_iter()
                .map(|(k, _)| k)
                .chain(below.special)
                .collect();
            let own_marker = t.root.dir_marker_for(&t.inner)?;
            let children = keys
                .iter()
                .filter(|k| Some(*k) != own_marker.as_ref())
                .count();
            if children > 0 && !recursive {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "directory {vp} is not empty (use -r to remove it and everything in it)"
                    ),
                )
                .with_path(vp.to_string()));
            }
            if let Some(m) = own_marker {
                keys.push(m);
            }
            keys.sort_by_key(|k| std::cmp::Reverse(k.as_str().len()));
            keys.dedup();
            let failed = t.storage.delete_many(keys).await?;
            return match failed
                .into_iter()
                .find(|(_, e)| e.kind() != ErrorKind::NotFound)
            {
                None => Ok(()),
                Some((_, e)) => Err(e.with_path(vp.to_string())),
            };
        }
        let key = t.key()?;
        match t.storage.head(&key).await {
            Ok(_) => {}
            // Removing a link removes the link itself.
            Err(e) if e.special().is_some() => {}
            Err(e) => return Err(e.with_path(vp.to_string())),
        }
        let failed = t.storage.delete_many(vec![key]).await?;
        match failed.into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(e.with_path(vp.to_string())),
        }
    }

    /// Copies a file, or (with `recursive`) a directory, to `to`. Server-side
    /// within one mount; through the cache between mounts.
    pub async fn copy(&self, from: &str, to: &str, recursive: bool) -> Result<Copied, Error> {
        let r = self.transfer(from, to, recursive, false).await;
        r.map_err(|e| self.user_facing(e))
    }

    /// Moves a file or a directory. A file moves atomically where the backend
    /// renames atomically (File); a directory moves entry by entry, so it is
    /// never atomic: a failure half-way leaves some entries moved.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Copied, Error> {
        let r = self.transfer(from, to, true, true).await;
        r.map_err(|e| self.user_facing(e))
    }

    async fn transfer(
        &self,
        from: &str,
        to: &str,
        recursive: bool,
        remove_source: bool,
    ) -> Result<Copied, Error> {
        let (src, dst) = (parse(from)?, parse(to)?);
        if dst.starts_with(&src) {
            return Err(Error::invalid_input(format!(
                "cannot move or copy {src} into itself ({dst})"
            )));
        }
        let entry = self.stat(from).await?;
        let (s, d) = (
            self.mount(&src, "cannot read")?,
            self.mount(&dst, "cannot write")?,
        );
        if d.is_mount_root() || Self::dir_exists(&d).await? {
            return Err(
                Error::new(ErrorKind::AlreadyExists, format!("{dst} is a directory"))
                    .with_path(dst.to_string()),
            );
        }
        let pairs: Vec<(ObjectKey, ObjectKey, bool)> = if entry.kind == EntryKind::File {
            vec![(s.key()?, d.key()?, false)]
        } else {
            if !recursive {
                return Err(Error::invalid_input(format!(
                    "{src} is a directory (use -r)"
                )));
            }
            if s.is_mount_root() && remove_source {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{src} is a mount point and cannot be moved"),
                ));
            }
            // Where the backend renames a directory atomically (File), a move
            // is one rename: the directory with all it holds, links included,
            // stays inside the sandbox and nothing is walked.
            if remove_source
                && Arc::ptr_eq(s.storage, d.storage)
                && s.caps().atomic_rename
                && let (Some(from), Some(to)) = (
                    s.root.dir_marker_for(&s.inner)?,
                    d.root.dir_marker_for(&d.inner)?,
                )
            {
                let below = Self::keys_below(&s).await?;
                s.storage.rename(&from, &to).await?;
                return Ok(Copied {
                    files: below
                        .keys
                        .iter()
                        .filter(|(k, _)| !k.is_dir_marker())
                        .count() as u64,
                    bytes: below.keys.iter().map(|(_, size)| size).sum(),
                });
            }
            let below = Self::keys_below(&s).await?;
            if !below.special.is_empty() {
                tracing::warn!(path = %src, skipped = below.special.len(), "links and special files are not copied");
            }
            let mut pairs = Vec::new();
            for (key, _) in below.keys {
                let Some(rel) = s.root.entry_for(key.as_str()) else {
                    continue;
                };
                let rest = rel.strip_prefix(&s.inner).unwrap_or(rel);
                let target = d.inner.join_path(&rest)?;
                let new_key = if key.is_dir_marker() {
                    d.root
                        .dir_marker_for(&target)?
                        .unwrap_or_else(|| ObjectKey::from_raw(""))
                } else {
                    d.root.key_for(&target)?
                };
                pairs.push((key.clone(), new_key, key.is_dir_marker()));
            }
            if let Some(m) = s.root.dir_marker_for(&s.inner)?
                && !pairs.iter().any(|(k, _, _)| *k == m)
            {
                pairs.push((
                    m,
                    d.root
                        .dir_marker_for(&d.inner)?
                        .unwrap_or_else(|| ObjectKey::from_raw("")),
                    true,
                ));
            }
            // Files first, then directories deepest first: a directory is
            // removed after what was in it (File refuses a non-empty one), and a
            // failure half-way leaves the source directories in place.
            pairs.sort_by_key(|(k, _, marker)| (*marker, std::cmp::Reverse(k.as_str().len())));
            pairs
        };
        let same_backend = Arc::ptr_eq(s.storage, d.storage);
        let mut done = Copied::default();
        let delete = |storage: &Arc<dyn ObjectStorage>, key: ObjectKey| {
            let storage = storage.clone();
            async move {
                let failed = storage.delete_many(vec![key]).await?;
                match failed
                    .into_iter()
                    .find(|(_, e)| e.kind() != ErrorKind::NotFound)
                {
                    None => Ok::<(), Error>(()),
                    Some((_, e)) => Err(e),
                }
            }
        };
        for (from_key, to_key, marker) in pairs {
            if to_key.as_str().is_empty() {
                continue;
            }
            if marker {
                let exists = s.storage.head(&from_key).await.is_ok();
                if exists || !remove_source {
                    d.storage
                        .put(&to_key, Bytes::new(), PutMode::Overwrite)
                        .await?;
                }
                if remove_source && exists {
                    delete(s.storage, from_key).await?;
                }
                continue;
            }
            let size = s.storage.head(&from_key).await?.size;
            // S3's CopyObject stops at 5 GiB: larger objects go through the cache.
            let server_side =
                same_backend && (s.caps().atomic_rename || size <= MAX_COPY_OBJECT_SIZE);
            if server_side {
                if remove_source {
                    s.storage.rename(&from_key, &to_key).await?;
                } else {
                    s.storage.copy(&from_key, &to_key).await?;
                }
            } else {
                self.stream_copy(s.storage, &from_key, d.storage, &to_key)
                    .await?;
                if remove_source {
                    delete(s.storage, from_key).await?;
                }
            }
            done.files += 1;
            done.bytes += size;
        }
        Ok(done)
    }

    /// Copies through the cache: a download feeding an upload.
    async fn stream_copy(
        &self,
        from: &Arc<dyn ObjectStorage>,
        from_key: &ObjectKey,
        to: &Arc<dyn ObjectStorage>,
        to_key: &ObjectKey,
    ) -> Result<u64, Error> {
        let mut down = self.cache.download(from.clone(), from_key.clone()).await?;
        let size = down.size();
        let mut up = self
            .cache
            .upload(to.clone(), to_key.clone(), Some(size))
            .await?;
        let mut at = 0;
        while let Some(chunk) = down.next_chunk().await? {
            up.write_at(at, &chunk).await?;
            at += chunk.len() as u64;
        }
        up.finish().await?;
        Ok(size)
    }
}

/// What a recursive walk found below a directory.
#[derive(Default)]
struct Below {
    /// Visible keys (files and markers), with their sizes.
    keys: Vec<(ObjectKey, u64)>,
    /// Links and special files (File sandboxes): never copied or entered.
    special: Vec<ObjectKey>,
}

/// The streaming merge of a delimited listing. Keys arrive sorted, and a file
/// `x` sorts before the prefix `x/` (with `x.y` between them): a file is held
/// back until a key past `x/` shows that no directory of its name follows.
struct ListState {
    root: SandboxRoot,
    inner: VirtualPath,
    mounts: Vec<String>,
    hidden: HiddenCount,
    pending: Vec<(String, DirEntry)>,
    shadowed: u64,
    path: String,
}

impl ListState {
    fn push(&mut self, item: ListItem) -> Vec<DirEntry> {
        let key = item.key().as_str().to_owned();
        let class = match item {
            ListItem::Special(..) => {
                self.hidden.special();
                KeyClass::Hidden(corral_domain::key::HiddenReason::Special)
            }
            _ => self.hidden.classify(&self.root, &key),
        };
        let entry = match class {
            KeyClass::File(p) => p
                .strip_prefix(&self.inner)
                .filter(|r| r.depth() == 1)
                .map(|r| {
                    let (size, modified) = match &item {
                        ListItem::Object(m) => (m.size, m.last_modified),
                        ListItem::Prefix(_) | ListItem::Special(..) => (0, None),
                    };
                    DirEntry::file(r.as_str(), size, modified)
                }),
            KeyClass::Directory(p) => p
                .strip_prefix(&self.inner)
                .filter(|r| r.depth() == 1)
                .map(|r| DirEntry::directory(r.as_str())),
            KeyClass::RootMarker | KeyClass::Hidden(_) => None,
        };
        // Everything held back that sorts before `key` minus a directory can now go.
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if format!("{}/", self.pending[i].0) < key {
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
                self.pending.push((key, e));
            }
        }
        out
    }

    fn end(&mut self) -> Vec<Result<DirEntry, Error>> {
        if self.hidden.total > 0 {
            tracing::warn!(
                path = %self.path,
                hidden = self.hidden.total,
                outside_prefix = self.hidden.outside_prefix,
                examples = ?self.hidden.examples,
                "the listing hid keys a user could not have named"
            );
        }
        if self.hidden.special > 0 {
            tracing::info!(path = %self.path, hidden = self.hidden.special, "the listing hid links and special files, which corral never follows");
        }
        if self.shadowed > 0 {
            tracing::info!(path = %self.path, shadowed = self.shadowed, "files shadowed by a directory or mount of the same name");
        }
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(_, e)| Ok(e))
            .collect()
    }
}
