//! [`FileBackend`]: a File sandbox, confined by the kernel.
//!
//! The sandbox's directory is opened once, as a handle, when the sandbox is;
//! every key is then resolved beneath that handle one name at a time without
//! following links ([`resolve`]), so no link, `..` or rename inside the
//! directory can make corral read, write, list or delete anything outside
//! it. Links and special files are handled by the domain's rule
//! ([`corral_domain::node`]): never followed or opened, hidden from
//! listings but reported to them, removed as entries. New content is staged
//! in nameless files and given its name in one step ([`stage`]), so a
//! reader sees the old file or the new one, and a write never goes through
//! an existing entry. Walks are bounded by the depth of the tree and cannot
//! loop ([`walk`]). Multipart uploads spool their parts in a nameless file
//! ([`uploads`]).
//!
//! Errors name the key, relative to the sandbox, and never the directory on
//! the host.

mod resolve;
mod stage;
mod uploads;
mod walk;

use std::fmt;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use corral_domain::node::NodeKind;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListOptions, ListStream, ObjectMeta, PendingUpload,
    PutMode, PutResult, StoredPart, UploadId,
};
use corral_domain::{Capabilities, Error, ErrorKind, ObjectKey, ObjectStorage, Operation, Result};
use futures::StreamExt;
use rustix::fs::AtFlags;

use resolve::{Names, io_error, kind_of, open_dirs, split, why};
use stage::Staged;
use uploads::Spool;
pub(crate) use uploads::Uploads;

/// How much of a file one read of a GET's body returns.
const READ_CHUNK: u64 = 1 << 20;
/// Entries per listing page.
const PAGE: usize = 1000;

/// A File sandbox's directory, confined by the kernel: every key is resolved
/// beneath a handle on the root, one name at a time, never through a link.
pub struct FileBackend {
    root: Arc<Dir>,
    /// The directory as configured: which uploads of the process are this
    /// sandbox's.
    scope: Arc<str>,
    caps: Capabilities,
    uploads: Arc<Uploads>,
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the host directory: Debug output can reach a user.
        f.debug_struct("FileBackend").finish_non_exhaustive()
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("a filesystem task failed: {e}")))?
}

/// The parent directory of a key's last name, and that name.
fn parent<'k>(
    root: &Dir,
    names: &Names<'k>,
    create: bool,
    op: Operation,
    key: &str,
) -> Result<(Dir, &'k str)> {
    let last = names.last.ok_or_else(|| {
        Error::invalid_input("the sandbox root is not a file")
            .with_operation(op)
            .with_key(key.to_owned())
    })?;
    Ok((open_dirs(root, &names.parents, create, op, key)?, last))
}

/// Opens a regular file for reading, without following a link and without
/// blocking on a FIFO; anything but a file with one link is refused.
fn open_file(
    dir: &Dir,
    name: &str,
    op: Operation,
    key: &str,
) -> Result<(std::fs::File, ObjectMeta)> {
    let mut options = OpenOptions::new();
    options.read(true);
    options.follow(FollowSymlinks::No);
    // O_NONBLOCK: a FIFO swapped in after the lstat below cannot hang the open.
    options.custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32);
    // Looked at first, so that a FIFO or device is never opened at all.
    let meta = dir
        .symlink_metadata(name)
        .map_err(|e| io_error(e, op, key))?;
    check_file(kind_of(&meta), op, key)?;
    let file = dir
        .open_with(name, &options)
        .map_err(|e| why(dir, name, e, op, key))?;
    // And again on the handle: what was opened is what is read.
    let meta = file.metadata().map_err(|e| io_error(e, op, key))?;
    check_file(kind_of(&meta), op, key)?;
    let object = ObjectMeta {
        key: ObjectKey::from_raw(key),
        size: meta.len(),
        last_modified: meta.modified().ok().map(|t| t.into_std()),
        etag: Some(walk::etag(&meta)),
        checksum: None,
    };
    Ok((file.into_std(), object))
}

/// The walk of a listing of `prefix`, or `None` if nothing is there.
fn start_walk(root: &Dir, prefix: &ObjectKey, options: ListOptions) -> Result<Option<walk::Walk>> {
    let op = Operation::List;
    let p = prefix.as_str();
    if !(p.is_empty() || p.ends_with('/')) {
        return Err(Error::invalid_input(format!(
            "listing prefix {p:?} must be empty or end with `/`"
        ))
        .with_operation(op));
    }
    let names = split(prefix).map_err(|e| e.with_operation(op))?;
    let mut all = names.parents.clone();
    all.extend(names.last);
    match open_dirs(root, &all, false, op, p) {
        Ok(dir) => walk::Walk::new(dir, p, options).map(Some),
        // Nothing there: an empty listing, as on S3.
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn check_file(kind: NodeKind, op: Operation, key: &str) -> Result<()> {
    match kind {
        NodeKind::File => Ok(()),
        NodeKind::Directory => Err(Error::not_found("it is a directory")
            .with_operation(op)
            .with_key(key.to_owned())),
        NodeKind::Special(k) => Err(Error::special_file(k)
            .with_operation(op)
            .with_key(key.to_owned())),
    }
}

fn persist_error(e: std::io::Error, mode: PutMode, op: Operation, key: &str) -> Error {
    match e.kind() {
        IoKind::AlreadyExists if mode == PutMode::Create => {
            Error::new(ErrorKind::AlreadyExists, "the object already exists")
                .with_operation(op)
                .with_key(key.to_owned())
        }
        IoKind::IsADirectory | IoKind::DirectoryNotEmpty => {
            Error::new(ErrorKind::AlreadyExists, "a directory of that name exists")
                .with_operation(op)
                .with_key(key.to_owned())
        }
        _ => io_error(e, op, key),
    }
}

impl FileBackend {
    /// The File sandbox of directory `dir`, which must exist. Its handle is
    /// opened now: later changes to the path on the host (a rename, a link)
    /// do not move the sandbox.
    pub fn open(dir: &Path) -> Result<Self> {
        let not_available = |why: &str| {
            // The host directory goes to the log, for the operator, and not
            // into the error, which a user may see.
            tracing::warn!(dir = %dir.display(), "File sandbox: {why}");
            Error::new(
                ErrorKind::NotFound,
                format!("the File sandbox's directory {why}"),
            )
            .with_operation(Operation::Configure)
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_available("is not a directory")),
            Err(e) if e.kind() == IoKind::NotFound => {
                return Err(not_available(
                    "does not exist; create it first (corral does not create sandbox roots)",
                ));
            }
            Err(e) => return Err(not_available(&format!("cannot be opened: {e}"))),
        }
        let root = Dir::open_ambient_dir(dir, cap_std::ambient_authority())
            .map_err(|e| not_available(&format!("cannot be opened: {e}")))?;
        Ok(Self {
            root: Arc::new(root),
            scope: Arc::from(dir.to_string_lossy().as_ref()),
            caps: Capabilities::file(),
            uploads: Arc::default(),
        })
    }

    /// As [`Self::open`], sharing multipart uploads with the process's other
    /// backends on the same directory (each session's), so that an upload
    /// kept by one can be continued by another.
    pub(crate) fn open_sharing(dir: &Path, uploads: Arc<Uploads>) -> Result<Self> {
        Ok(Self {
            uploads,
            ..Self::open(dir)?
        })
    }

    /// Creates `dir` below `base` where missing (each missing directory
    /// mode 0700), never `base` itself, never through a link: a user's own
    /// File sandbox made on first login. Returns whether anything was made.
    pub fn create_below(base: &Path, dir: &Path) -> Result<bool> {
        let refuse = |why: &str| {
            tracing::warn!(base = %base.display(), dir = %dir.display(), "cannot create a user's File sandbox: {why}");
            Error::new(
                ErrorKind::PermissionDenied,
                format!("the user's File sandbox cannot be created: {why}"),
            )
            .with_operation(Operation::Configure)
        };
        let rest = dir
            .strip_prefix(base)
            .map_err(|_| refuse("it is not below the base directory"))?;
        let mut names = Vec::new();
        for c in rest.components() {
            match c {
                std::path::Component::Normal(n) => names.push(
                    n.to_str()
                        .ok_or_else(|| refuse("its name is not UTF-8"))?
                        .to_owned(),
                ),
                std::path::Component::CurDir => {}
                _ => return Err(refuse("its path climbs out of the base directory")),
            }
        }
        let mut cur = Dir::open_ambient_dir(base, cap_std::ambient_authority())
            .map_err(|e| refuse(&format!("the base directory cannot be opened ({e})")))?;
        let mut made = false;
        for name in names {
            match cur.symlink_metadata(&name) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refuse("something other than a directory is in the way")),
                Err(e) if e.kind() == IoKind::NotFound => {
                    use cap_std::fs::DirBuilderExt;
                    let mut b = cap_std::fs::DirBuilder::new();
                    b.mode(0o700);
                    match cur.create_dir_with(&name, &b) {
                        Ok(()) => made = true,
                        Err(e) if e.kind() == IoKind::AlreadyExists => {}
                        Err(e) => return Err(refuse(&format!("{e}"))),
                    }
                }
                Err(e) => return Err(refuse(&format!("{e}"))),
            }
            // Entered without following a link: a link swapped in is refused.
            cur = resolve::enter(&cur, &name, false, Operation::Configure, "")
                .map_err(|e| refuse(e.message()))?;
        }
        Ok(made)
    }

    /// Renames the entry `from` to `to` (a directory with all it holds),
    /// over what is at `to` only with `replace`: refused atomically by the
    /// kernel otherwise (`renameat2(RENAME_NOREPLACE)`).
    async fn rename_entry(&self, from: &ObjectKey, to: &ObjectKey, replace: bool) -> Result<()> {
        let (root, from, to) = (Arc::clone(&self.root), from.clone(), to.clone());
        blocking(move || {
            let op = Operation::Copy;
            let (fk, tk) = (from.as_str(), to.as_str());
            let (src_names, dst_names) = (Self::names(&from, op)?, Self::names(&to, op)?);
            if src_names.dir != dst_names.dir {
                return Err(Error::invalid_input(
                    "a directory is renamed to a directory, a file to a file",
                )
                .with_operation(op)
                .with_key(fk.to_owned()));
            }
            let (sdir, sname) = parent(&root, &src_names, false, op, fk)?;
            let meta = sdir
                .symlink_metadata(sname)
                .map_err(|e| io_error(e, op, fk))?;
            match (kind_of(&meta), src_names.dir) {
                (NodeKind::File, false) | (NodeKind::Directory, true) => {}
                (NodeKind::Special(k), _) => {
                    return Err(Error::special_file(k)
                        .with_operation(op)
                        .with_key(fk.to_owned()));
                }
                _ => {
                    return Err(Error::not_found("no such object")
                        .with_operation(op)
                        .with_key(fk.to_owned()));
                }
            }
            let (ddir, dname) = parent(&root, &dst_names, true, op, tk)?;
            // renameat moves the entry itself: a directory with whatever it
            // holds, links included, all of it staying inside the sandbox.
            if replace {
                return sdir
                    .rename(sname, &ddir, dname)
                    .map_err(|e| persist_error(e, PutMode::Overwrite, op, tk));
            }
            rustix::fs::renameat_with(
                &sdir,
                sname,
                &ddir,
                dname,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| persist_error(e.into(), PutMode::Create, op, tk))
        })
        .await
    }

    fn names(key: &ObjectKey, op: Operation) -> Result<Names<'_>> {
        split(key).map_err(|e| e.with_operation(op))
    }
}

#[async_trait]
impl ObjectStorage for FileBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let (root, key) = (Arc::clone(&self.root), key.clone());
        blocking(move || {
            let op = Operation::Head;
            let k = key.as_str();
            let names = Self::names(&key, op)?;
            let (dir, name) = parent(&root, &names, false, op, k)?;
            let meta = dir.symlink_metadata(name).map_err(|e| io_error(e, op, k))?;
            match (kind_of(&meta), names.dir) {
                (NodeKind::Directory, true) | (NodeKind::File, false) => Ok(ObjectMeta {
                    key: key.clone(),
                    size: if names.dir { 0 } else { meta.len() },
                    last_modified: meta.modified().ok().map(|t| t.into_std()),
                    etag: (!names.dir).then(|| walk::etag(&meta)),
                    checksum: None,
                }),
                (NodeKind::Special(k), _) => Err(Error::special_file(k)
                    .with_operation(op)
                    .with_key(key.as_str().to_owned())),
                // `d/` names a file, or `f` a directory: no such object.
                _ => Err(Error::not_found("no such object")
                    .with_operation(op)
                    .with_key(key.as_str().to_owned())),
            }
        })
        .await
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        let (root, k) = (Arc::clone(&self.root), key.clone());
        let (file, meta, range) = blocking(move || {
            let key = k;
            let op = Operation::Get;
            let k = key.as_str();
            let names = Self::names(&key, op)?;
            if names.dir {
                return Err(Error::not_found("a directory has no content")
                    .with_operation(op)
                    .with_key(k.to_owned()));
            }
            let (dir, name) = parent(&root, &names, false, op, k)?;
            let (file, meta) = open_file(&dir, name, op, k)?;
            let range = match range {
                None => 0..meta.size,
                Some(r) => r.resolve(meta.size).map_err(|e| e.with_operation(op))?,
            };
            Ok((Arc::new(file), meta, range))
        })
        .await?;
        let (k, end) = (key.as_str().to_owned(), range.end);
        let body = futures::stream::try_unfold(range.start, move |at| {
            let (file, k) = (Arc::clone(&file), k.clone());
            async move {
                if at >= end {
                    return Ok(None);
                }
                let len = (end - at).min(READ_CHUNK) as usize;
                let chunk = blocking(move || {
                    let mut buf = BytesMut::zeroed(len);
                    file.read_exact_at(&mut buf, at)
                        .map_err(|e| io_error(e, Operation::Get, &k))?;
                    Ok(buf.freeze())
                })
                .await?;
                Ok(Some((chunk, at + len as u64)))
            }
        });
        Ok(GetResult {
            meta,
            range,
            body: body.boxed(),
        })
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        let (root, key) = (Arc::clone(&self.root), key.clone());
        blocking(move || {
            let op = Operation::Put;
            let k = key.as_str();
            let names = Self::names(&key, op)?;
            if names.dir {
                // A directory marker: the directories themselves.
                let mut all = names.parents.clone();
                all.extend(names.last);
                open_dirs(&root, &all, true, op, k)?;
                return Ok(PutResult::default());
            }
            let (dir, name) = parent(&root, &names, true, op, k)?;
            let staged = Staged::new(&dir).map_err(|e| io_error(e, op, k))?;
            staged
                .file()
                .write_all_at(&data, 0)
                .map_err(|e| io_error(e, op, k))?;
            staged
                .persist(name, mode == PutMode::Overwrite)
                .map_err(|e| persist_error(e, mode, op, k))?;
            Ok(PutResult::default())
        })
        .await
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        let root = Arc::clone(&self.root);
        blocking(move || {
            let op = Operation::Delete;
            // A directory goes after what was in it.
            let mut failed = Vec::new();
            for key in corral_domain::tree::delete_order(keys) {
                let k = key.as_str();
                let result = (|| {
                    let names = Self::names(&key, op)?;
                    let (dir, name) = match parent(&root, &names, false, op, k) {
                        Ok(p) => p,
                        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    let r = if names.dir {
                        dir.remove_dir(name)
                    } else {
                        match dir.symlink_metadata(name) {
                            // `f` when only `f/` exists: nothing to delete, as on S3.
                            Ok(m) if m.is_dir() => return Ok(()),
                            // Files, links and special files alike: the entry goes, and
                            // never what it points to (unlinkat does not follow).
                            _ => dir.remove_file(name),
                        }
                    };
                    match r {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == IoKind::NotFound => Ok(()),
                        // `d/` when `d` is a file: nothing to delete.
                        Err(e) if e.kind() == IoKind::NotADirectory => Ok(()),
                        Err(e) if e.kind() == IoKind::DirectoryNotEmpty => Err(Error::new(
                            ErrorKind::Conflict,
                            "the directory is not empty",
                        )
                        .with_operation(op)
                        .with_key(k.to_owned())),
                        Err(e) => Err(io_error(e, op, k)),
                    }
                })();
                if let Err(e) = result {
                    failed.push((key, e));
                }
            }
            Ok(failed)
        })
        .await
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        enum State {
            Start(ObjectKey, ListOptions),
            Walking(walk::Walk),
        }
        let root = Arc::clone(&self.root);
        let pages = futures::stream::try_unfold(
            Some(State::Start(prefix.clone(), options)),
            move |state| {
                let root = Arc::clone(&root);
                async move {
                    let mut walk = match state {
                        None => return Ok(None),
                        Some(State::Walking(w)) => w,
                        Some(State::Start(prefix, options)) => {
                            match blocking(move || start_walk(&root, &prefix, options)).await? {
                                Some(w) => w,
                                None => return Ok(None),
                            }
                        }
                    };
                    let (page, walk) = blocking(move || {
                        let page = walk.page(PAGE)?;
                        Ok((page, walk))
                    })
                    .await?;
                    let next = (page.len() == PAGE).then_some(State::Walking(walk));
                    Ok::<_, Error>(Some((
                        futures::stream::iter(page.into_iter().map(Ok::<_, Error>)),
                        next,
                    )))
                }
            },
        );
        Box::pin(futures::TryStreamExt::try_flatten(pages))
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        let (root, from, to) = (Arc::clone(&self.root), from.clone(), to.clone());
        blocking(move || {
            let op = Operation::Copy;
            let (fk, tk) = (from.as_str(), to.as_str());
            let (src_names, dst_names) = (Self::names(&from, op)?, Self::names(&to, op)?);
            if src_names.dir || dst_names.dir {
                return Err(Error::invalid_input("only files are copied")
                    .with_operation(op)
                    .with_key(fk.to_owned()));
            }
            let (sdir, sname) = parent(&root, &src_names, false, op, fk)?;
            let (mut src, _) = open_file(&sdir, sname, op, fk)?;
            let (ddir, dname) = parent(&root, &dst_names, true, op, tk)?;
            let staged = Staged::new(&ddir).map_err(|e| io_error(e, op, tk))?;
            // A copy of the bytes (copy_file_range, a reflink where the
            // filesystem can), never a hard link: the copy is a file of its own.
            std::io::copy(&mut src, &mut staged.file()).map_err(|e| io_error(e, op, tk))?;
            staged
                .persist(dname, true)
                .map_err(|e| persist_error(e, PutMode::Overwrite, op, tk))
        })
        .await
    }

    async fn rename(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.rename_entry(from, to, true).await
    }

    async fn rename_no_replace(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.rename_entry(from, to, false).await
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let (root, key, uploads, scope) = (
            Arc::clone(&self.root),
            key.clone(),
            Arc::clone(&self.uploads),
            Arc::clone(&self.scope),
        );
        blocking(move || {
            let op = Operation::CreateMultipart;
            let k = key.as_str();
            let names = Self::names(&key, op)?;
            if names.dir {
                return Err(Error::invalid_input("a directory is not uploaded")
                    .with_operation(op)
                    .with_key(k.to_owned()));
            }
            let (dir, _) = parent(&root, &names, true, op, k)?;
            let file = stage::anonymous(&dir).map_err(|e| io_error(e, op, k))?;
            let mut id = [0u8; 16];
            rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())
                .map_err(|e| io_error(e.into(), op, k))?;
            let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
            uploads.insert(id.clone(), Spool::new(scope, key.clone(), file));
            Ok(UploadId(id))
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        let op = Operation::UploadPart;
        if number == 0 || u64::from(number) > corral_domain::parts::MAX_PARTS {
            return Err(
                Error::invalid_input(format!("part number {number} is outside 1..=10000"))
                    .with_operation(op),
            );
        }
        let spool = self.uploads.get(&self.scope, key, upload, op)?;
        let k = key.as_str().to_owned();
        let part = blocking(move || {
            spool
                .write_part(number, &data)
                .map_err(|e| io_error(e, op, &k))
        })
        .await?;
        Ok(CompletedPart {
            number,
            etag: part.etag(),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        source: &ObjectKey,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> Result<CompletedPart> {
        let op = Operation::UploadPart;
        if number == 0 || u64::from(number) > corral_domain::parts::MAX_PARTS {
            return Err(
                Error::invalid_input(format!("part number {number} is outside 1..=10000"))
                    .with_operation(op),
            );
        }
        let spool = self.uploads.get(&self.scope, key, upload, op)?;
        let (root, source) = (Arc::clone(&self.root), source.clone());
        let if_match = if_match.map(str::to_owned);
        let part = blocking(move || {
            let k = source.as_str();
            let names = Self::names(&source, op)?;
            let (dir, name) = parent(&root, &names, false, op, k)?;
            let (file, meta) = open_file(&dir, name, op, k)?;
            if if_match.is_some() && meta.etag != if_match {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the file was replaced while it was open for writing; write it again",
                )
                .with_operation(op)
                .with_key(k.to_owned()));
            }
            if range.end > meta.size || range.start >= range.end {
                return Err(Error::invalid_input(format!(
                    "range {range:?} is outside a file of {} bytes",
                    meta.size
                ))
                .with_operation(op)
                .with_key(k.to_owned()));
            }
            spool
                .copy_part(number, &file, range)
                .map_err(|e| io_error(e, op, k))
        })
        .await?;
        Ok(CompletedPart {
            number,
            etag: part.etag(),
        })
    }

    async fn set_modified(&self, key: &ObjectKey, modified: std::time::SystemTime) -> Result<()> {
        let (root, key) = (Arc::clone(&self.root), key.clone());
        blocking(move || {
            let op = Operation::Put;
            let k = key.as_str();
            let names = Self::names(&key, op)?;
            let when = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let stamp = rustix::fs::Timestamps {
                // The access time stays as it is.
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: i64::try_from(when.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(when.subsec_nanos()),
                },
            };
            let Some(last) = names.last else {
                // The root itself.
                return rustix::fs::utimensat(&*root, ".", &stamp, AtFlags::empty())
                    .map_err(|e| io_error(e.into(), op, k));
            };
            let (dir, name) = parent(&root, &names, false, op, k)?;
            // The entry itself, never what a link points to; only a file or
            // a directory, as the key says.
            let meta = dir.symlink_metadata(name).map_err(|e| io_error(e, op, k))?;
            match (kind_of(&meta), names.dir) {
                (NodeKind::File, false) | (NodeKind::Directory, true) => {}
                (NodeKind::Special(kind), _) => {
                    return Err(Error::special_file(kind)
                        .with_operation(op)
                        .with_key(k.to_owned()));
                }
                _ => {
                    return Err(Error::not_found("no such object")
                        .with_operation(op)
                        .with_key(k.to_owned()));
                }
            }
            let _ = last;
            rustix::fs::utimensat(&dir, name, &stamp, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(e.into(), op, k))
        })
        .await
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        let op = Operation::CompleteMultipart;
        let spool = self.uploads.get(&self.scope, key, upload, op)?;
        let plan = spool.plan(parts)?;
        let (root, k) = (Arc::clone(&self.root), key.clone());
        let s = Arc::clone(&spool);
        blocking(move || {
            let ks = k.as_str();
            let names = Self::names(&k, op)?;
            // Resolved again: whatever happened to the path since the upload
            // began, the file lands beneath the root, through no link.
            let (dir, name) = parent(&root, &names, true, op, ks)?;
            let staged = Staged::new(&dir).map_err(|e| io_error(e, op, ks))?;
            s.assemble(&plan, staged.file())?;
            staged.file().sync_all().map_err(|e| io_error(e, op, ks))?;
            staged
                .persist(name, true)
                .map_err(|e| persist_error(e, PutMode::Overwrite, op, ks))
        })
        .await?;
        self.uploads.remove(&self.scope, key, upload, op)?;
        Ok(PutResult::default())
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.uploads
            .remove(&self.scope, key, upload, Operation::AbortMultipart)
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        Ok(self.uploads.list(&self.scope, prefix))
    }

    async fn list_parts(&self, key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        self.uploads.parts(&self.scope, key, upload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter_for_test(dir: &Dir, name: &str) -> Result<Dir> {
        resolve::enter(dir, name, false, Operation::Head, name)
    }

    #[test]
    fn a_link_is_never_entered() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("l")).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let root = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        assert!(enter_for_test(&root, "d").is_ok());
        let e = enter_for_test(&root, "l").unwrap_err();
        assert_eq!(e.special(), Some(corral_domain::node::SpecialKind::Symlink));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            enter_for_test(&root, "f").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            enter_for_test(&root, "none").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
