//! Removing, copying and moving files and directories inside the sandbox.
//! The domain plans recursive operations ([`corral_domain::tree`]): which
//! key goes where, children before parents.

use bytes::Bytes;
use corral_domain::listing::EntryKind;
use corral_domain::parts::{MAX_COPY_OBJECT_SIZE, PART_COPY_MIN_SIZE};
use corral_domain::port::PutMode;
use corral_domain::tree::{Step, delete_order, plan_copy};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, VirtualPath};

use super::{At, Copied, SandboxPath, UserSandbox};

/// How [`UserSandbox::remove`] removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// A directory goes with everything in it; without this, a directory
    /// that holds anything is [`ErrorKind::DirectoryNotEmpty`].
    pub recursive: bool,
    /// Only this kind: a directory where a file is expected is
    /// [`ErrorKind::IsADirectory`] (SFTP REMOVE), a file where a directory
    /// is expected [`ErrorKind::NotADirectory`] (SFTP RMDIR, WebDAV DELETE of
    /// a collection). `None`: either.
    pub only: Option<EntryKind>,
}

/// How [`UserSandbox::rename`] treats an existing target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameOptions {
    /// Replace a file at the target (POSIX `rename`, SFTP
    /// `posix-rename@openssh.com`, WebDAV `Overwrite: T`). Without it, an
    /// existing target is [`ErrorKind::AlreadyExists`] (SFTP v3 RENAME,
    /// WebDAV `Overwrite: F`): atomically where the backend can refuse a
    /// rename over a name (File: `renameat2(RENAME_NOREPLACE)`); elsewhere
    /// the target is looked up first.
    pub replace: bool,
}

/// How [`UserSandbox::copy`] copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCopyOptions {
    /// A directory is copied with everything in it; without this, copying
    /// a directory is refused.
    pub recursive: bool,
}

/// Deletes `keys`; what is already gone counts as deleted.
async fn delete(t: &At<'_>, keys: Vec<ObjectKey>) -> Result<(), Error> {
    let failed = t.storage().delete_many(keys).await?;
    match failed
        .into_iter()
        .find(|(_, e)| e.kind() != ErrorKind::NotFound)
    {
        None => Ok(()),
        Some((_, e)) => Err(e),
    }
}

impl UserSandbox {
    /// Removes a file, an empty directory, or (with `recursive`) a directory
    /// and everything visible below it, as `options` say. A link or special
    /// file (File sandboxes) is removed as an entry, never what it points to.
    pub async fn remove(
        &self,
        path: impl SandboxPath,
        options: RemoveOptions,
    ) -> Result<(), Error> {
        let vp = path.to_virtual()?;
        let t = self.mount(&vp, "cannot remove")?;
        if t.is_mount_root() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{vp} is a mount point and cannot be removed"),
            )
            .with_path(vp.to_string()));
        }
        if !self.view().mount_children(&vp).is_empty() {
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
        if !is_dir {
            // Nothing there is "not found", whatever was asked to go.
            let key = t.key()?;
            match t.storage().head(&key).await {
                Ok(_) => {}
                // Removing a link removes the link itself.
                Err(e) if e.special().is_some() => {}
                // Removing a partial file gives its upload up.
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        && options.only != Some(EntryKind::Directory) =>
                {
                    let Some(p) = self.partial_of(&t, &key).await else {
                        return Err(e);
                    };
                    super::partial::discard(&*t.mount.port(), &key, &p).await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        match (is_dir, options.only) {
            (true, Some(EntryKind::File)) => {
                return Err(
                    Error::new(ErrorKind::IsADirectory, format!("{vp} is a directory"))
                        .with_path(vp.to_string()),
                );
            }
            (false, Some(EntryKind::Directory)) => {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!("{vp} is not a directory"),
                )
                .with_path(vp.to_string()));
            }
            _ => {}
        }
        if is_dir {
            let below = Self::below(&t).await?;
            let own_marker = t.root().dir_marker_for(&t.inner)?;
            let mut keys: Vec<ObjectKey> = below
                .keys
                .into_iter()
                .map(|(k, _)| k)
                .chain(below.special)
                .filter(|k| Some(k) != own_marker.as_ref())
                .collect();
            if !keys.is_empty() && !options.recursive {
                return Err(Error::new(
                    ErrorKind::DirectoryNotEmpty,
                    format!("directory {vp} is not empty"),
                )
                .with_path(vp.to_string())
                .with_setting("recursive"));
            }
            keys.extend(own_marker);
            return delete(&t, delete_order(keys)).await;
        }
        delete(&t, vec![t.key()?]).await
    }

    /// Copies a file, or (with `recursive`) a directory, to `to`. Server-side
    /// within one backend; through the cache between backends.
    pub async fn copy(
        &self,
        from: impl SandboxPath,
        to: impl SandboxPath,
        options: TreeCopyOptions,
    ) -> Result<Copied, Error> {
        let (src, dst) = (from.to_virtual()?, to.to_virtual()?);
        self.transfer(&src, &dst, options.recursive, None).await
    }

    /// Moves a file or a directory, replacing a file at the target or not
    /// as `options` say. Where the backend renames atomically (File), so
    /// does the move, directory and all; elsewhere a directory moves entry
    /// by entry, so a failure half-way leaves some entries moved.
    pub async fn rename(
        &self,
        from: impl SandboxPath,
        to: impl SandboxPath,
        options: RenameOptions,
    ) -> Result<Copied, Error> {
        let (src, dst) = (from.to_virtual()?, to.to_virtual()?);
        self.transfer(&src, &dst, true, Some(options)).await
    }

    /// A copy, or a move (`rename: Some`).
    async fn transfer(
        &self,
        src: &VirtualPath,
        dst: &VirtualPath,
        recursive: bool,
        rename: Option<RenameOptions>,
    ) -> Result<Copied, Error> {
        let (src, dst) = (src.clone(), dst.clone());
        let remove_source = rename.is_some();
        let no_replace = rename.is_some_and(|r| !r.replace);
        if dst.starts_with(&src) {
            return Err(Error::invalid_input(format!(
                "cannot move or copy {src} into itself ({dst})"
            )));
        }
        let entry = self.stat_path(&src).await?;
        let (s, d) = (
            self.mount(&src, "cannot read")?,
            self.mount(&dst, "cannot write")?,
        );
        if d.is_mount_root() || Self::dir_exists(&d).await? {
            let kind = if no_replace {
                ErrorKind::AlreadyExists
            } else {
                ErrorKind::IsADirectory
            };
            return Err(
                Error::new(kind, format!("{dst} is a directory")).with_path(dst.to_string())
            );
        }
        if no_replace && self.writing.get(&d.mount.store, &d.key()?).is_some() {
            return Err(already_exists(&dst));
        }
        let same_backend = s.mount.same_backend(d.mount);
        let steps = if entry.kind == EntryKind::File {
            vec![Step {
                from: s.key()?,
                to: d.key()?,
                marker: false,
                size: entry.size,
            }]
        } else {
            if !recursive {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("{src} is a directory (copy or move it recursively)"),
                )
                .with_path(src.to_string())
                .with_setting("recursive"));
            }
            if s.is_mount_root() && remove_source {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{src} is a mount point and cannot be moved"),
                ));
            }
            let below = Self::below(&s).await?;
            // Where the backend renames a directory atomically (File), a move
            // is one rename: the directory with all it holds, links included,
            // stays inside the sandbox and nothing is walked.
            if remove_source
                && same_backend
                && s.caps().atomic_rename
                && let (Some(from), Some(to)) = (
                    s.root().dir_marker_for(&s.inner)?,
                    d.root().dir_marker_for(&d.inner)?,
                )
            {
                s.storage().rename(&from, &to).await?;
                let files = below.keys.iter().filter(|(k, _)| !k.is_dir_marker());
                return Ok(Copied {
                    files: files.clone().count() as u64,
                    bytes: files.map(|(_, size)| size).sum(),
                });
            }
            if !below.special.is_empty() {
                tracing::warn!(path = %src, skipped = below.special.len(), "links and special files are not copied");
            }
            plan_copy(s.root(), &s.inner, d.root(), &d.inner, below.keys)?
        };
        let mut done = Copied::default();
        for step in steps {
            if step.marker {
                let exists = s.storage().head(&step.from).await.is_ok();
                if exists || !remove_source {
                    d.storage()
                        .put(&step.to, Bytes::new(), PutMode::Overwrite)
                        .await?;
                }
                if remove_source && exists {
                    delete(&s, vec![step.from]).await?;
                }
                continue;
            }
            let meta = s.storage().head(&step.from).await?;
            let size = meta.size;
            // A large object is copied on the server in parts, in parallel;
            // a small one by one CopyObject (which stops at 5 GiB); between
            // backends, or where neither can, through the cache.
            let in_parts = same_backend
                && !s.caps().atomic_rename
                && s.caps().part_copy
                && s.caps().multipart
                && size >= PART_COPY_MIN_SIZE;
            let server_side =
                same_backend && (s.caps().atomic_rename || size <= MAX_COPY_OBJECT_SIZE);
            if in_parts {
                if no_replace && d.storage().head(&step.to).await.is_ok() {
                    return Err(already_exists(&dst));
                }
                self.cache()
                    .copy_in_parts(
                        s.mount.port(),
                        &step.from,
                        &step.to,
                        size,
                        meta.etag.as_deref(),
                    )
                    .await?;
                if remove_source {
                    delete(&s, vec![step.from]).await?;
                }
            } else if server_side {
                if no_replace {
                    s.storage()
                        .rename_no_replace(&step.from, &step.to)
                        .await
                        .map_err(|e| match e.kind() {
                            ErrorKind::AlreadyExists => already_exists(&dst),
                            _ => e,
                        })?;
                } else if remove_source {
                    s.storage().rename(&step.from, &step.to).await?;
                } else {
                    s.storage().copy(&step.from, &step.to).await?;
                }
            } else {
                if no_replace && d.storage().head(&step.to).await.is_ok() {
                    return Err(already_exists(&dst));
                }
                self.stream_copy(&s, &step.from, &d, &step.to).await?;
                if remove_source {
                    delete(&s, vec![step.from]).await?;
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
        from: &At<'_>,
        from_key: &ObjectKey,
        to: &At<'_>,
        to_key: &ObjectKey,
    ) -> Result<u64, Error> {
        let mut down = self
            .cache()
            .download(from.mount.port(), from_key.clone())
            .await?;
        let size = down.size();
        let mut up = self
            .cache()
            .upload(to.mount.port(), to_key.clone(), Some(size))
            .await?;
        let mut at = 0;
        while let Some(chunk) = down.next_chunk().await? {
            up.write_at(at, &chunk).await?;
            at += chunk.len() as u64;
        }
        up.finish().await?;
        Ok(size)
    }

    /// Whether `path` is a directory of the sandbox (or above its mounts).
    pub async fn is_dir(&self, path: impl SandboxPath) -> Result<bool, Error> {
        let vp = path.to_virtual()?;
        Ok(self.stat_path(&vp).await?.kind == EntryKind::Directory)
    }
}

fn already_exists(p: &VirtualPath) -> Error {
    Error::new(ErrorKind::AlreadyExists, format!("{p} already exists")).with_path(p.to_string())
}
