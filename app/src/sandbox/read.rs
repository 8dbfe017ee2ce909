//! Reading: `stat`, listings (streamed, through the domain's rule), and
//! file contents through the cache's read-ahead.

use std::sync::Arc;

use bytes::Bytes;
use corral_domain::listing::{DirEntry, EntryKind};
use corral_domain::port::ListOptions;
use corral_domain::{Error, ErrorKind, ObjectStorage, VirtualPath};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::{Entry, Place, SandboxPath, UserSandbox, partial};
use crate::cache::Download;

impl UserSandbox {
    /// File or directory at `path`; a directory wins over a file of the same name.
    pub async fn stat(&self, path: impl SandboxPath) -> Result<Entry, Error> {
        let vp = path.to_virtual()?;
        self.stat_path(&vp).await
    }

    pub(crate) async fn stat_path(&self, vp: &VirtualPath) -> Result<Entry, Error> {
        let vp = vp.clone();
        let t = match self.place(&vp)? {
            Place::Virtual(_) => {
                return Ok(Entry {
                    path: vp,
                    kind: EntryKind::Directory,
                    size: 0,
                    modified: None,
                    etag: None,
                });
            }
            Place::Mount(t) => t,
        };
        // A file being written exists already, with the size written so far.
        if !t.is_mount_root()
            && let Some(w) = self.writing.get(&t.mount.store, &t.key()?)
        {
            return Ok(Entry {
                path: vp,
                kind: EntryKind::File,
                size: w.size,
                modified: Some(w.modified),
                etag: None,
            });
        }
        // A path that holds mount points is a directory even if its own sandbox has nothing there.
        if !self.view.mount_children(&vp).is_empty() || Self::dir_exists(&t).await? {
            return Ok(Entry {
                path: vp,
                kind: EntryKind::Directory,
                size: 0,
                modified: None,
                etag: None,
            });
        }
        let key = t.key()?;
        let meta = match t.storage().head(&key).await {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // An upload kept unfinished shows with what is stored.
                if let Some(p) = self.partial_of(&t, &key).await {
                    return Ok(Entry {
                        path: vp,
                        kind: EntryKind::File,
                        size: p.size(),
                        modified: p.initiated,
                        etag: None,
                    });
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        Ok(Entry {
            path: vp,
            kind: EntryKind::File,
            size: meta.size,
            modified: meta.last_modified,
            etag: meta.etag,
        })
    }

    /// The partial upload of `key`, where partials are kept ([`partial`]).
    pub(crate) async fn partial_of(
        &self,
        t: &super::At<'_>,
        key: &corral_domain::ObjectKey,
    ) -> Option<partial::Partial> {
        if !self.partials || !partial::supported(t.storage()) {
            return None;
        }
        partial::find(t.storage(), key).await
    }

    /// The entries of directory `path`, streamed as the backend pages in
    /// (mount points first, then the backend's entries in key order). Not a
    /// check that `path` is a directory: [`Self::read_dir`] is.
    pub fn list(&self, path: impl SandboxPath) -> BoxStream<'static, Result<DirEntry, Error>> {
        match path.to_virtual().and_then(|vp| self.list_inner(&vp)) {
            Ok(s) => s,
            Err(e) => Box::pin(futures::stream::once(async { Err(e) })),
        }
    }

    /// The entries of directory `path` ([`Self::list`]), once it is known to
    /// be one: [`ErrorKind::NotADirectory`] for a file, not found if nothing
    /// is there. What SFTP OPENDIR and a WebDAV PROPFIND need, in one call.
    pub async fn read_dir(
        &self,
        path: impl SandboxPath,
    ) -> Result<BoxStream<'static, Result<DirEntry, Error>>, Error> {
        let vp = path.to_virtual()?;
        let e = self.stat_path(&vp).await?;
        if e.kind != EntryKind::Directory {
            return Err(
                Error::new(ErrorKind::NotADirectory, format!("{vp} is not a directory"))
                    .with_path(vp.to_string()),
            );
        }
        self.list_inner(&vp)
    }

    fn list_inner(
        &self,
        vp: &VirtualPath,
    ) -> Result<BoxStream<'static, Result<DirEntry, Error>>, Error> {
        let vp = vp.clone();
        let t = match self.place(&vp)? {
            Place::Virtual(p) => {
                let mounts: Vec<Result<DirEntry, Error>> = self
                    .view()
                    .mount_children(&p)
                    .into_iter()
                    .map(|m| Ok(DirEntry::directory(m)))
                    .collect();
                return Ok(Box::pin(futures::stream::iter(mounts)));
            }
            Place::Mount(t) => t,
        };
        let rule = self.listing_rule(&t, &vp);
        let first: Vec<Result<DirEntry, Error>> =
            rule.mount_entries().into_iter().map(Ok).collect();
        let prefix = t.root().list_prefix_for(&t.inner)?;
        // Files being written here show as they are so far: in place of
        // their old entry, or after the listing if they are new.
        let writing: std::collections::BTreeMap<String, DirEntry> = self
            .writing
            .under(&t.mount.store, prefix.as_str())
            .into_iter()
            .filter_map(|(key, w)| {
                let name = key.strip_prefix(prefix.as_str())?;
                (!name.is_empty() && !name.contains('/')).then(|| {
                    (
                        name.to_owned(),
                        DirEntry::file(name, w.size, Some(w.modified)),
                    )
                })
            })
            .collect();
        let items = t.storage().list(
            &prefix,
            ListOptions {
                delimiter: true,
                start_after: None,
            },
        );
        let shown = vp.to_string();
        // Uploads kept unfinished show where no file of the name is listed,
        // looked up when the listing starts.
        let kept = (self.partials && partial::supported(t.storage()))
            .then(|| (Arc::clone(&t.mount.storage), prefix.clone()));
        let entries =
            futures::stream::unfold(Some((items, rule, writing, kept, None)), move |state| {
                let shown = shown.clone();
                async move {
                    let (mut items, mut rule, mut writing, mut kept, partials) = state?;
                    let mut partials: std::collections::BTreeMap<String, DirEntry> = match partials
                    {
                        Some(p) => p,
                        None => match kept.take() {
                            Some((storage, prefix)) => partial::under(&storage, &prefix)
                                .await
                                .into_iter()
                                .map(|(name, p)| {
                                    let e = DirEntry::file(&name, p.size(), p.initiated);
                                    (name, e)
                                })
                                .collect(),
                            None => Default::default(),
                        },
                    };
                    loop {
                        match items.next().await {
                            Some(Ok(item)) => {
                                let out = rule.push(&item);
                                if !out.is_empty() {
                                    for e in &out {
                                        partials.remove(&e.name);
                                    }
                                    let out = shown_as_written(out, &mut writing);
                                    let out = futures::stream::iter(out.into_iter().map(Ok));
                                    return Some((
                                        out.boxed(),
                                        Some((items, rule, writing, None, Some(partials))),
                                    ));
                                }
                            }
                            Some(Err(e)) => {
                                return Some((futures::stream::iter([Err(e)]).boxed(), None));
                            }
                            None => {
                                log_hidden(&rule, &shown);
                                let rest = rule.finish();
                                for e in &rest {
                                    partials.remove(&e.name);
                                }
                                let mut rest = shown_as_written(rest, &mut writing);
                                for name in writing.keys() {
                                    partials.remove(name);
                                }
                                rest.extend(std::mem::take(&mut writing).into_values());
                                rest.extend(partials.into_values());
                                let rest = rest.into_iter().map(Ok);
                                return Some((futures::stream::iter(rest).boxed(), None));
                            }
                        }
                    }
                }
            });
        Ok(Box::pin(
            futures::stream::iter(first).chain(entries.flatten()),
        ))
    }

    /// Reads a whole file (for small files; large ones go through [`Self::open`]).
    pub async fn read(&self, path: impl SandboxPath) -> Result<Bytes, Error> {
        let vp = path.to_virtual()?;
        let mut d = self.open_checked(&vp, false).await?;
        let mut out = Vec::with_capacity(d.size() as usize);
        while let Some(chunk) = d.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    /// Up to `len` bytes of a file from `offset` (fewer at the end of the file).
    pub async fn read_range(
        &self,
        path: impl SandboxPath,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, Error> {
        let mut d = self.open(path).await?;
        Ok(d.read_full(offset, len).await?.into())
    }

    /// A file as an [`tokio::io::AsyncRead`], read ahead through the cache.
    pub async fn reader(
        &self,
        path: impl SandboxPath,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, Error> {
        let vp = path.to_virtual()?;
        let d = self.open_checked(&vp, false).await?;
        let chunks = futures::stream::try_unfold(d, |mut d| async move {
            Ok::<_, Error>(d.next_chunk().await?.map(|c| (c, d)))
        })
        .map_err(std::io::Error::other);
        Ok(tokio_util::io::StreamReader::new(Box::pin(chunks)))
    }

    /// Downloads a file to a local path: into a temporary file beside it,
    /// created exclusively under a random name (never through a link), and
    /// renamed over `local` only when every byte arrived, so that a failure
    /// or a cancellation leaves no partial file. A link at `local` is
    /// replaced, not written through. `progress` is told of the bytes as
    /// they are written.
    pub async fn download_to_file(
        &self,
        path: impl SandboxPath,
        local: &std::path::Path,
        progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        let vp = path.to_virtual()?;
        self.download_to_file_checked(&vp, local, progress, false)
            .await
    }

    /// [`Self::download_to_file`]; `listed_file`: `path` came from a listing
    /// (which already applied the rule that a directory shadows a file), so
    /// the per-file lookup is saved.
    pub(crate) async fn download_to_file_checked(
        &self,
        path: &VirtualPath,
        local: &std::path::Path,
        progress: impl FnMut(u64) + Send,
        listed_file: bool,
    ) -> Result<u64, Error> {
        let d = self.open_checked(path, listed_file).await?;
        self.save_download(d, local, progress).await
    }

    /// [`Self::download_to_file`] of a file that a listing showed with
    /// `size` bytes: up to one chunk, with one GET whose answer tells the
    /// checksum (no HEAD first, no ranges).
    pub(crate) async fn download_listed_to_file(
        &self,
        path: &VirtualPath,
        local: &std::path::Path,
        size: u64,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        if size > self.cache.download_chunk() {
            return self
                .download_to_file_checked(path, local, progress, true)
                .await;
        }
        let t = self.mount(path, "cannot read")?;
        let key = t.key()?;
        let (temp, file) = temp_beside(local)?;
        let saved = self
            .cache
            .save_whole(t.mount.port(), &key, size, file, local)
            .await;
        match saved {
            Ok(n) => {
                temp.persist(local).map_err(|e| local_err(local, e.error))?;
                progress(n);
                Ok(n)
            }
            // Gone, being written, kept unfinished, or cut on the way: the
            // usual path says which, or tries again.
            Err(e) if e.kind() == ErrorKind::NotFound || e.is_temporary() => {
                drop(temp);
                self.download_to_file_checked(path, local, progress, true)
                    .await
            }
            Err(e) => Err(e.with_path(path.to_string())),
        }
    }

    /// Writes the opened download `d` to `local` ([`Self::download_to_file`]).
    pub(crate) async fn save_download(
        &self,
        mut d: Download,
        local: &std::path::Path,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        let d_size = d.size();
        let (temp, file) = temp_beside(local)?;
        if d.saves_checked() {
            // Each chunk straight to its place in the file.
            d.save_to(Arc::clone(&file), local, progress).await?;
            drop(file);
            temp.persist(local).map_err(|e| local_err(local, e.error))?;
            return Ok(d_size);
        }
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
        while let Some(pieces) = d.next_pieces().await? {
            let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
            let (f, at) = (Arc::clone(&file), total);
            writes.spawn_blocking(move || crate::cache::store::write_pieces_at(&f, &pieces, at));
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
    pub async fn open(&self, path: impl SandboxPath) -> Result<FileReader, Error> {
        let vp = path.to_virtual()?;
        Ok(FileReader(self.open_checked(&vp, false).await?))
    }

    pub(crate) async fn open_checked(
        &self,
        vp: &VirtualPath,
        listed_file: bool,
    ) -> Result<Download, Error> {
        let vp = vp.clone();
        let t = self.mount(&vp, "cannot read")?;
        let is_dir = || {
            Error::new(ErrorKind::IsADirectory, format!("{vp} is a directory"))
                .with_path(vp.to_string())
        };
        if t.is_mount_root() {
            return Err(is_dir());
        }
        let key = t.key()?;
        // The directory check and the HEAD at once: one round trip, not two.
        // A directory found ends the HEAD (some servers answer a HEAD of a
        // directory's name with errors that would be retried).
        let head = if listed_file {
            t.storage().head(&key).await
        } else {
            let dir = std::pin::pin!(Self::dir_exists(&t));
            let head = std::pin::pin!(t.storage().head(&key));
            match futures::future::select(dir, head).await {
                futures::future::Either::Left((dir, head)) => {
                    if dir? {
                        return Err(is_dir());
                    }
                    head.await
                }
                futures::future::Either::Right((head, dir)) => {
                    if dir.await? {
                        return Err(is_dir());
                    }
                    head
                }
            }
        };
        let mut d = match head {
            Ok(meta) => self.cache.download_of(t.mount.port(), key, meta),
            // Not stored yet, but being written: never half of it.
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && self.writing.get(&t.mount.store, &key).is_some() =>
            {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("{vp} is being written; it can be read once the write completes"),
                )
                .with_path(vp.to_string()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.partial_of(&t, &key).await.is_some() {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        format!(
                            "{vp} is an upload that was interrupted; it can be read once it is completed (continue it, or write it again)"
                        ),
                    )
                    .with_path(vp.to_string()));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        d.set_path(vp.to_string());
        Ok(d)
    }
}

/// A file open for reading ([`UserSandbox::open`]): a read-ahead through
/// the transfer cache. Its errors name the user's path; it never shows
/// where the file is stored.
#[derive(Debug)]
pub struct FileReader(Download);

impl FileReader {
    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.0.size()
    }

    /// Its modification time, if the backend keeps one.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.0.meta().last_modified
    }

    /// Its entity tag, if the backend gives one.
    pub fn etag(&self) -> Option<&str> {
        self.0.meta().etag.as_deref()
    }

    /// Up to `len` bytes at `offset`, without a copy in memory mode; fewer
    /// at the end of a piece or of the file, empty at or past the end.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Bytes, Error> {
        self.0.read_at(offset, len).await
    }

    /// Exactly `len` bytes at `offset` (fewer only at the end of the file).
    pub async fn read_full(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.0.read_full(offset, len).await
    }

    /// The next bytes in order, or `None` at the end: reading the whole
    /// file this way checks its checksum where the backend vouches for one.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        self.0.next_chunk().await
    }
}

fn local_err(p: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::from_io(e.kind()),
        format!("cannot write {}: {e}", p.display()),
    )
}

/// A temporary file beside `local`, created exclusively under a random
/// name (never through a link) and removed when dropped unless persisted,
/// with a second handle to write it through.
fn temp_beside(
    local: &std::path::Path,
) -> Result<(tempfile::NamedTempFile, Arc<std::fs::File>), Error> {
    let dir = local
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".corral-part")
        .tempfile_in(dir)
        .map_err(|e| local_err(local, e))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(|e| local_err(local, e))?;
    Ok((temp, Arc::new(file)))
}

/// `entries`, with those being written shown as written so far (and taken
/// out of `writing`).
fn shown_as_written(
    mut entries: Vec<DirEntry>,
    writing: &mut std::collections::BTreeMap<String, DirEntry>,
) -> Vec<DirEntry> {
    if writing.is_empty() {
        return entries;
    }
    for e in &mut entries {
        if let Some(w) = writing.remove(&e.name)
            && e.kind == EntryKind::File
        {
            *e = w;
        }
    }
    entries
}

/// Says what a listing hid: keys a user could not have named (a warning:
/// a server bug or another tool's doing), links and special files, files
/// shadowed by a directory or a mount of the same name.
fn log_hidden(rule: &corral_domain::listing::DirectoryListing, path: &str) {
    let hidden = rule.hidden();
    if hidden.total > 0 {
        tracing::warn!(
            path,
            hidden = hidden.total,
            outside_prefix = hidden.outside_prefix,
            examples = ?hidden.examples,
            "the listing hid keys a user could not have named"
        );
    }
    if hidden.special > 0 {
        tracing::info!(
            path,
            hidden = hidden.special,
            "the listing hid links and special files, which corral never follows"
        );
    }
    if rule.shadowed() > 0 {
        tracing::info!(
            path,
            shadowed = rule.shadowed(),
            "files shadowed by a directory or mount of the same name"
        );
    }
}
