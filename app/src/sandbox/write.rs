//! Writing: new files through the cache ([`Writer`]), with the effective
//! overwrite decision of the domain, and directories.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use corral_domain::overwrite::{
    BACKUP_SUFFIX, OverwriteDecision, PART_FILE_SUFFIX, RefuseReason, WritePlan,
};
use corral_domain::port::{CompletedPart, PutMode, UploadId};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, OverwriteMode};
use futures::StreamExt;

use super::writing::WriteGuard;
use super::{SandboxPath, UserSandbox};
use crate::cache::{Base, Upload};
use corral_domain::VirtualPath;

/// How [`UserSandbox::create_with`] opens a file for writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The file's size, if known: checked against the sandbox's limit
    /// before any byte moves, and it sets the part plan.
    pub size: Option<u64>,
    /// The overwrite mode asked for (the backend's own when `None` or
    /// when the request is ignored).
    pub overwrite: Option<OverwriteMode>,
    /// Create-if-absent: fail with [`ErrorKind::AlreadyExists`] if the path
    /// exists or is being written. Exclusive within the process; on the
    /// backend, a one-part file is stored with `If-None-Match: *` where the
    /// backend declares conditional create.
    pub if_not_exists: bool,
    /// The file must exist already ([`ErrorKind::NotFound`] otherwise).
    pub must_exist: bool,
    /// Keep the bytes of an existing file that are not written (a file
    /// opened without truncation): the write goes in place, over it.
    pub keep_existing: bool,
}

/// How [`UserSandbox::mkdir`] makes a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MkdirOptions {
    /// Make the missing directories above it too, and succeed if it exists
    /// (`mkdir -p`); without it, an existing path is
    /// [`ErrorKind::AlreadyExists`] and a missing parent not found.
    pub parents: bool,
}

/// A write in progress; see [`UserSandbox::create`].
#[derive(Debug)]
pub struct Writer {
    upload: Upload,
    decision: OverwriteDecision,
    finish: Finish,
    /// The user's path, named in errors instead of the bucket key.
    path: String,
    /// The file as other readers of the process see it until it completes.
    shown: WriteGuard,
    /// A partial file continued: its size when opened, until the first
    /// write, which continues it if it starts there.
    first_write_at: Option<u64>,
    resumed_from: Option<u64>,
    /// How to start over, for a continued partial.
    restart: Option<Restart>,
    /// The lease of a continued upload, where the backend makes it exclusive.
    lease: Option<super::lease::Lease>,
}

#[derive(Debug)]
struct Restart {
    cache: crate::cache::TransferCache,
    storage: Arc<dyn ObjectStorage>,
    key: ObjectKey,
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

    /// The size of the partial file this writer continues (see
    /// [`Corral::keep_partial_uploads`](crate::Corral::keep_partial_uploads)),
    /// if it does: bytes from there on continue it.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// Whether dropping this writer unfinished keeps a partial file (its
    /// whole parts stored) rather than nothing.
    pub fn keeps_partial(&self) -> bool {
        self.upload.would_keep()
    }

    /// A continued partial whose first write is elsewhere than its end:
    /// given up, and a new upload begins.
    async fn start_over(&mut self) -> Result<(), Error> {
        let Some(r) = self.restart.take() else {
            return Ok(());
        };
        let mut fresh = r.cache.upload(r.storage, r.key, None).await?;
        fresh.keep_on_drop();
        std::mem::replace(&mut self.upload, fresh).discard();
        self.resumed_from = None;
        Ok(())
    }

    /// Writes bytes at an offset (any order, each byte once).
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if let Some(at) = self.first_write_at.take()
            && offset != at
        {
            self.start_over()
                .await
                .map_err(|e| e.with_path(self.path.clone()))?;
        }
        let r = self.upload.write_at(offset, data).await;
        self.shown.state().set_size(self.upload.size());
        r.map_err(|e| e.with_path(self.path.clone()))
    }

    /// Writes after what was written so far.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.first_write_at = None;
        let r = self.upload.write(data).await;
        self.shown.state().set_size(self.upload.size());
        r.map_err(|e| e.with_path(self.path.clone()))
    }

    /// The file's size so far (the highest byte written, or the old file's
    /// size if larger when writing over it).
    pub fn size(&self) -> u64 {
        self.upload.size()
    }

    /// The modification time to keep with the file when it completes
    /// (as a client sets it), where the backend keeps one.
    pub fn set_modified(&mut self, modified: SystemTime) {
        self.upload.set_modified(modified);
    }

    /// Gives the write up because of `cause`: aborts the upload now (rather
    /// than in the background, as dropping the writer does) and returns
    /// `cause`, saying so if the upload could not be aborted.
    pub async fn cancel(self, cause: Error) -> Error {
        self.upload.cancel(cause).await.with_path(self.path)
    }

    /// Gives the write up without keeping a partial file, even where
    /// partial uploads are kept (a WebDAV PUT is whole or nothing): the
    /// upload is aborted in the background, as when an unkept writer drops.
    pub fn discard(self) {
        self.upload.discard();
    }

    /// Completes the write: the data becomes visible at the target only now.
    pub async fn finish(self) -> Result<OverwriteDecision, Error> {
        let path = self.path.clone();
        self.finish_inner().await.map_err(|e| e.with_path(path))
    }

    async fn finish_inner(self) -> Result<OverwriteDecision, Error> {
        // Shown until here, then the object itself is.
        let _shown = self.shown;
        if let Some(lease) = &self.lease
            && !lease.held()
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{} is being continued through another server (this one lost its lease): not completed here",
                    self.path
                ),
            ));
        }
        self.upload.finish().await?;
        // Released once the object is there.
        drop(self.lease);
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

impl UserSandbox {
    /// Replaces the small file `path` whole, in one request, only if its
    /// entity tag is still `etag` (S3 `If-Match`): [`ErrorKind::Conflict`]
    /// if another writer changed it since it was read. Returns the new tag.
    pub async fn replace_if_unchanged(
        &self,
        path: impl SandboxPath,
        data: Bytes,
        etag: &str,
    ) -> Result<Option<String>, Error> {
        let vp = path.to_virtual()?;
        let t = self.mount(&vp, "cannot write")?;
        let key = t.key()?;
        let r = t
            .storage()
            .put_if_match(&key, data, etag)
            .await
            .map_err(|e| e.with_path(vp.to_string()))?;
        Ok(r.etag)
    }

    /// Writes a file from a stream of byte chunks (`size` if known).
    pub async fn write_stream<P: SandboxPath, S, E>(
        &self,
        path: P,
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
    pub async fn write_from<P: SandboxPath, R>(
        &self,
        path: P,
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

    /// Starts writing `path` (`size` if known), applying the overwrite mode
    /// (the backend's own when `None` or when the request is ignored). The
    /// size is checked against the sandbox's limit before any byte moves.
    pub async fn create(
        &self,
        path: impl SandboxPath,
        size: Option<u64>,
        mode: Option<OverwriteMode>,
    ) -> Result<Writer, Error> {
        let options = WriteOptions {
            size,
            overwrite: mode,
            ..WriteOptions::default()
        };
        self.create_checked(&path.to_virtual()?, options, false)
            .await
    }

    /// Starts writing `path` as `options` say. The file shows to `stat` and
    /// listings of this process from now on, with the size written so far;
    /// its content replaces the old one only when [`Writer::finish`] completes.
    pub async fn create_with(
        &self,
        path: impl SandboxPath,
        options: WriteOptions,
    ) -> Result<Writer, Error> {
        self.create_checked(&path.to_virtual()?, options, false)
            .await
    }

    /// [`Self::create_with`]; `listed_not_dir`: the caller listed the parent
    /// (a tree copy lists each directory once) and saw no directory of this
    /// name, so the per-file lookup is saved.
    pub(crate) async fn create_checked(
        &self,
        vp: &VirtualPath,
        options: WriteOptions,
        listed_not_dir: bool,
    ) -> Result<Writer, Error> {
        let vp = vp.clone();
        let t = self.mount(&vp, "cannot write")?;
        if t.is_mount_root() || (!listed_not_dir && Self::dir_exists(&t).await?) {
            return Err(
                Error::new(ErrorKind::IsADirectory, format!("{vp} is a directory"))
                    .with_path(vp.to_string()),
            );
        }
        let key = t.key()?;
        let backend = &t.mount.store;
        // In the table first: an exclusive create racing with another one
        // of this process loses here, before any request.
        let Some(shown) = self.writing.begin(backend, &key, options.if_not_exists) else {
            return Err(already_exists(&vp));
        };
        let wants_existing = options.if_not_exists || options.must_exist || options.keep_existing;
        let existing = if !wants_existing {
            None
        } else {
            match t.storage().head(&key).await {
                Ok(m) => Some(m),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            }
        };
        if options.if_not_exists && existing.is_some() {
            return Err(already_exists(&vp));
        }
        // Where unfinished uploads are kept, one of this file may be
        // continued by a write that keeps what is there.
        let keeps = self.partials && super::partial::supported(t.storage());
        let partial =
            if keeps && existing.is_none() && options.keep_existing && !options.if_not_exists {
                self.partial_of(&t, &key).await
            } else {
                None
            };
        // A write that replaces the file gives up a partial one: aborted
        // now rather than left to the retention sweep.
        if keeps && !options.keep_existing && !options.if_not_exists {
            super::partial::discard_pending(t.storage(), &key).await;
        }
        if options.must_exist && existing.is_none() && partial.is_none() {
            return Err(Error::not_found(format!("{vp} does not exist")).with_path(vp.to_string()));
        }
        if let Some(p) = partial {
            // Another instance may be continuing it: one at a time.
            let lease_key = super::lease::key_of(t.root(), &p.upload)?;
            let lease =
                super::lease::Lease::take(t.mount.port(), lease_key, &vp.to_string()).await?;
            match self
                .cache
                .continue_upload(
                    t.mount.port(),
                    key.clone(),
                    p.part_size,
                    p.upload.clone(),
                    p.parts.clone(),
                )
                .await
            {
                Ok(mut upload) => {
                    upload.keep_on_drop();
                    let writer = Writer {
                        upload,
                        decision: t.caps().decide(None),
                        finish: Finish::Direct,
                        path: vp.to_string(),
                        shown,
                        first_write_at: Some(p.size()),
                        resumed_from: Some(p.size()),
                        restart: Some(Restart {
                            cache: self.cache.clone(),
                            storage: t.mount.port(),
                            key,
                        }),
                        lease,
                    };
                    writer.shown.state().set_size(p.size());
                    return Ok(writer);
                }
                Err(e) => {
                    tracing::info!(path = %vp, error = %e, "a partial upload cannot be continued: it is given up and the file written again");
                    super::partial::discard(&*t.mount.port(), &key, &p).await;
                }
            }
        }
        if options.keep_existing
            && let Some(meta) = existing.clone().filter(|m| m.size > 0)
        {
            // In place, over the old bytes: whatever the overwrite mode, the
            // file is one file being changed, not a new one replacing it.
            let base = Base {
                key: key.clone(),
                size: meta.size,
                etag: meta.etag,
            };
            let upload = self.cache.upload_over(t.mount.port(), key, base).await?;
            let writer = Writer {
                upload,
                decision: t.caps().decide(None),
                finish: Finish::Direct,
                path: vp.to_string(),
                shown,
                first_write_at: None,
                resumed_from: None,
                restart: None,
                lease: None,
            };
            writer.shown.state().set_size(writer.upload.size());
            return Ok(writer);
        }
        let decision = t.caps().decide(options.overwrite);
        let existing_size = match (
            &existing,
            decision.effective.needs_existing_size(),
            wants_existing,
        ) {
            (Some(m), _, _) => Some(m.size),
            (None, true, false) => match t.storage().head(&key).await {
                Ok(m) => Some(m.size),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            _ => None,
        };
        let plan = decision.effective.plan(existing_size, options.size);
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
                    let inner = p.strip_prefix(&t.mount.point).unwrap_or(p);
                    Ok(t.root().key_for(&inner)?)
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
                        storage: t.mount.port(),
                        part,
                        target: key,
                        backup,
                    },
                )
            }
        };
        let mut upload = self
            .cache
            .upload(t.mount.port(), write_key, options.size)
            .await?;
        if options.if_not_exists && t.caps().conditional_create {
            upload.set_put_mode(PutMode::Create);
        }
        if keeps && matches!(finish, Finish::Direct) {
            upload.keep_on_drop();
        }
        Ok(Writer {
            upload,
            decision,
            finish,
            path: vp.to_string(),
            shown,
            first_write_at: None,
            resumed_from: None,
            restart: None,
            lease: None,
        })
    }

    /// Continues an in-place multipart upload to `path` that an earlier
    /// process started (`parts` are on the server). Only where the backend
    /// declares [`Capabilities::resume`].
    pub(crate) async fn resume(
        &self,
        vp: &VirtualPath,
        size: u64,
        part_size: u64,
        upload: UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<Writer, Error> {
        let vp = vp.clone();
        let t = self.mount(&vp, "cannot write")?;
        if !t.caps().resume {
            return Err(Error::unsupported(format!(
                "the {} backend cannot resume uploads",
                t.caps().name
            )));
        }
        let key = t.key()?;
        let shown = self
            .writing
            .begin(&t.mount.store, &key, false)
            .expect("not exclusive");
        let upload = self
            .cache
            .resume_upload(t.mount.port(), key, size, part_size, upload, parts)
            .await?;
        Ok(Writer {
            upload,
            decision: t.caps().decide(None),
            finish: Finish::Direct,
            path: vp.to_string(),
            shown,
            first_write_at: None,
            resumed_from: None,
            restart: None,
            lease: None,
        })
    }

    /// Sets the modification time of a file or directory as a client sets
    /// it (`touch -m`, `rclone`, `scp -p`), where the backend keeps one:
    /// [`ErrorKind::Unsupported`] where it does not (Memory). S3 keeps it in
    /// the object's `mtime` metadata, as rclone does, by copying the object
    /// onto itself; a directory that is only a prefix keeps none.
    pub async fn set_modified(
        &self,
        path: impl SandboxPath,
        modified: SystemTime,
    ) -> Result<(), Error> {
        let vp = path.to_virtual()?;
        let t = self.mount(&vp, "cannot change")?;
        if !t.caps().set_modified {
            return Err(Error::unsupported(format!(
                "the {} backend keeps no modification times",
                t.caps().name
            ))
            .with_path(vp.to_string()));
        }
        if t.is_mount_root() || Self::dir_exists(&t).await? {
            let Some(marker) = t.root().dir_marker_for(&t.inner)? else {
                return Ok(());
            };
            return match t.storage().set_modified(&marker, modified).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                other => other,
            };
        }
        let key = t.key()?;
        match t.storage().set_modified(&key, modified).await {
            // Being written: not stored yet; its writer keeps its own time.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && self.writing.get(&t.mount.store, &key).is_some() =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Writes a whole file from memory.
    pub async fn write(
        &self,
        path: impl SandboxPath,
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
    pub async fn mkdir(&self, path: impl SandboxPath, options: MkdirOptions) -> Result<(), Error> {
        let parents = options.parents;
        let vp = path.to_virtual()?;
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
        if self.writing.get(&t.mount.store, &key).is_some() || t.storage().head(&key).await.is_ok()
        {
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
            let at = t.at(p.clone())?;
            if Self::dir_exists(&at).await? {
                break;
            }
            if !parents {
                return Err(Error::not_found(format!(
                    "the parent directory {} does not exist",
                    at.path
                ))
                .with_path(vp.to_string())
                .with_setting("parents"));
            }
            chain.push(p.clone());
            cur = p.parent();
        }
        chain.reverse();
        chain.push(t.inner.clone());
        for dir in chain {
            if let Some(marker) = t.root().dir_marker_for(&dir)? {
                t.storage()
                    .put(&marker, Bytes::new(), PutMode::Overwrite)
                    .await?;
            }
        }
        Ok(())
    }
}

fn already_exists(vp: &VirtualPath) -> Error {
    Error::new(ErrorKind::AlreadyExists, format!("{vp} already exists")).with_path(vp.to_string())
}
