//! dav-server's filesystem trait on a user's sandbox: each method is one
//! library call, each library error one of dav-server's result codes.
//! Paths come decoded and dot-resolved by dav-server, and are parsed once
//! here into the domain's [`VirtualPath`]: what the library refuses
//! (backslashes, control characters, names that are not UTF-8) is refused.

use std::future::Future;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes};
use corral::{
    DirEntry, EntryKind, Error, ErrorKind, FileReader, MkdirOptions, RemoveOptions, RenameOptions,
    TreeCopyOptions, UserSandbox, VirtualPath, WriteOptions, Writer,
};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult,
    FsStream, OpenOptions, ReadDirMeta,
};
use futures::{FutureExt, StreamExt};

use super::props::Props;
use crate::serve::metrics::{Metrics, Outcome, Transfer};

/// One user's sandbox as dav-server sees it (cloned per request: cheap).
#[derive(Clone)]
pub(super) struct SandboxFs {
    pub(super) sandbox: UserSandbox,
    pub(super) user: Arc<str>,
    /// The client's address, for the transfer log.
    pub(super) peer: std::net::SocketAddr,
    pub(super) metrics: Arc<Metrics>,
    /// The user's dead properties (PROPPATCH).
    pub(super) props: Arc<Props>,
    /// The time shown where the backend keeps none (directories).
    pub(super) started: SystemTime,
}

/// The domain's path of a request's path (decoded, dots resolved by
/// dav-server, a collection's trailing slash dropped).
pub(super) fn virtual_path(path: &DavPath) -> FsResult<VirtualPath> {
    let text = std::str::from_utf8(path.as_bytes()).map_err(|_| FsError::Forbidden)?;
    let text = match text.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    VirtualPath::parse(text).map_err(|e| {
        tracing::debug!(path = text, error = %e, "refused path");
        FsError::Forbidden
    })
}

impl SandboxFs {
    /// dav-server's code for a library error; the detail goes to the log.
    fn fail(&self, what: &str, e: &Error) -> FsError {
        let code = match e.kind() {
            ErrorKind::NotFound => FsError::NotFound,
            ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty => FsError::Exists,
            ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::PermissionDenied
            | ErrorKind::EscapesSandbox
            | ErrorKind::InvalidInput
            | ErrorKind::Busy
            | ErrorKind::Conflict => FsError::Forbidden,
            ErrorKind::TooLarge => FsError::TooLarge,
            ErrorKind::Unsupported => FsError::NotImplemented,
            _ => FsError::GeneralFailure,
        };
        if code == FsError::GeneralFailure {
            tracing::warn!(user = %self.user, error = %e, "{what} failed on the server's side");
        } else {
            tracing::debug!(user = %self.user, error = %e, "{what} refused");
        }
        code
    }

    fn meta_of(&self, kind: EntryKind, size: u64, modified: Option<SystemTime>) -> Meta {
        Meta {
            dir: kind == EntryKind::Directory,
            len: size,
            modified: modified.unwrap_or(self.started),
            etag: None,
        }
    }
}

/// What PROPFIND and the conditional headers see of a file or directory.
#[derive(Debug, Clone)]
struct Meta {
    dir: bool,
    len: u64,
    modified: SystemTime,
    /// The backend's own tag of the stored file, without its quotes.
    etag: Option<String>,
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }

    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.modified)
    }

    fn is_dir(&self) -> bool {
        self.dir
    }

    fn is_symlink(&self) -> bool {
        false
    }

    fn etag(&self) -> Option<String> {
        if let Some(tag) = &self.etag {
            return Some(tag.trim_matches('"').to_owned());
        }
        // dav-server's own: size and time.
        let t = self
            .modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_micros();
        Some(if self.dir || self.len == 0 {
            format!("{t:x}")
        } else {
            format!("{:x}-{t:x}", self.len)
        })
    }
}

/// One entry of a listing.
struct Entry {
    name: String,
    meta: Meta,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }

    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        futures::future::ready(Ok(meta)).boxed()
    }
}

impl DavFileSystem for SandboxFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let vp = virtual_path(path)?;
            if options.write {
                let how = WriteOptions {
                    size: options.size,
                    if_not_exists: options.create_new,
                    must_exist: !options.create && !options.create_new,
                    keep_existing: !options.truncate,
                    ..WriteOptions::default()
                };
                let writer = self
                    .sandbox
                    .create_with(&vp, how)
                    .await
                    .map_err(|e| self.fail("PUT", &e))?;
                let file: Box<dyn DavFile> = Box::new(WriteFile {
                    fs: self.clone(),
                    path: vp,
                    writer: Some(writer),
                    expected: options.size,
                    pos: 0,
                    written: 0,
                    started: Instant::now(),
                    done: None,
                });
                Ok(file)
            } else {
                let reader = self
                    .sandbox
                    .open(&vp)
                    .await
                    .map_err(|e| self.fail("GET", &e))?;
                let file: Box<dyn DavFile> = Box::new(ReadFile {
                    fs: self.clone(),
                    path: vp,
                    reader,
                    pos: 0,
                    sent: 0,
                    started: Instant::now(),
                    logged: false,
                });
                Ok(file)
            }
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let vp = virtual_path(path)?;
            let entries = self
                .sandbox
                .read_dir(&vp)
                .await
                .map_err(|e| self.fail("PROPFIND", &e))?;
            let fs = self.clone();
            let stream: FsStream<Box<dyn DavDirEntry>> =
                Box::pin(entries.map(move |r: Result<DirEntry, Error>| {
                    r.map(|d| {
                        let entry: Box<dyn DavDirEntry> = Box::new(Entry {
                            meta: fs.meta_of(d.kind, d.size, d.modified),
                            name: d.name,
                        });
                        entry
                    })
                    .map_err(|e| fs.fail("PROPFIND", &e))
                }));
            Ok(stream)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let vp = virtual_path(path)?;
            let e = self
                .sandbox
                .stat(&vp)
                .await
                .map_err(|e| self.fail("stat", &e))?;
            let mut meta = self.meta_of(e.kind, e.size, e.modified);
            meta.etag = e.etag;
            let meta: Box<dyn DavMetaData> = Box::new(meta);
            Ok(meta)
        }
        .boxed()
    }

    fn symlink_metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        // Links are never followed nor shown as links: the library's view.
        self.metadata(path)
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let vp = virtual_path(path)?;
            self.sandbox
                .mkdir(&vp, MkdirOptions::default())
                .await
                .map_err(|e| self.fail("MKCOL", &e))
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.remove(path, EntryKind::Directory)
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.remove(path, EntryKind::File)
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (src, dst) = (virtual_path(from)?, virtual_path(to)?);
            // dav-server has applied `Overwrite` (and removed a replaced
            // collection) before it asks: a file there is replaced.
            self.sandbox
                .rename(&src, &dst, RenameOptions { replace: true })
                .await
                .map_err(|e| self.fail("MOVE", &e))?;
            self.props.moved(&self.sandbox, &src, &dst).await;
            Ok(())
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (src, dst) = (virtual_path(from)?, virtual_path(to)?);
            // One file: dav-server walks a collection itself (for `Depth`).
            self.sandbox
                .copy(&src, &dst, TreeCopyOptions::default())
                .await
                .map_err(|e| self.fail("COPY", &e))?;
            self.props.copied(&self.sandbox, &src, &dst).await;
            Ok(())
        }
        .boxed()
    }

    fn set_modified<'a>(&'a self, path: &'a DavPath, tm: SystemTime) -> FsFuture<'a, ()> {
        async move {
            let vp = virtual_path(path)?;
            self.sandbox
                .set_modified(&vp, tm)
                .await
                .map_err(|e| self.fail("PROPPATCH of the time", &e))
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        async move {
            match virtual_path(path) {
                Ok(vp) => self.props.has(&self.sandbox, &vp).await,
                Err(_) => false,
            }
        }
        .boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(hyper::StatusCode, DavProp)>> {
        async move {
            let vp = virtual_path(path)?;
            self.props.patch(&self.sandbox, &vp, patch).await
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let vp = virtual_path(path)?;
            self.props.all(&self.sandbox, &vp, do_content).await
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let vp = virtual_path(path)?;
            self.props.get(&self.sandbox, &vp, &prop).await
        }
        .boxed()
    }
}

impl SandboxFs {
    fn remove<'a>(&'a self, path: &'a DavPath, only: EntryKind) -> FsFuture<'a, ()> {
        async move {
            let vp = virtual_path(path)?;
            self.sandbox
                .remove(
                    &vp,
                    RemoveOptions {
                        recursive: false,
                        only: Some(only),
                    },
                )
                .await
                .map_err(|e| self.fail("DELETE", &e))?;
            self.props.removed(&self.sandbox, &vp).await;
            Ok(())
        }
        .boxed()
    }

    fn log(
        &self,
        direction: &'static str,
        path: &VirtualPath,
        bytes: u64,
        started: Instant,
        outcome: Outcome,
        error: Option<&str>,
    ) {
        let shown = path.to_string();
        self.metrics.transfer(&Transfer {
            user: &self.user,
            peer: Some(self.peer),
            direction,
            path: &shown,
            bytes,
            elapsed: started.elapsed(),
            outcome,
            error,
        });
    }
}

/// A PUT in progress: the library's writer, completed at `flush`, given up
/// (nothing left, not even a partial file) if dropped before.
struct WriteFile {
    fs: SandboxFs,
    path: VirtualPath,
    writer: Option<Writer>,
    /// The body's announced length (`Content-Length`, or Finder's
    /// `X-Expected-Entity-Length`): a body of another length stores nothing.
    expected: Option<u64>,
    pos: u64,
    written: u64,
    started: Instant,
    /// The file once stored.
    done: Option<Meta>,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl WriteFile {
    async fn write(&mut self, data: Bytes) -> FsResult<()> {
        let Some(w) = self.writer.as_mut() else {
            return Err(FsError::GeneralFailure);
        };
        if let Err(e) = w.write_at(self.pos, &data).await {
            return Err(self.give_up(&e));
        }
        self.pos += data.len() as u64;
        self.written += data.len() as u64;
        Ok(())
    }

    /// The upload's line in the transfer log.
    fn log(&self, outcome: Outcome, error: Option<&str>) {
        self.fs.log(
            "upload",
            &self.path,
            self.written,
            self.started,
            outcome,
            error,
        );
    }

    /// Gives the write up because of `e`; its code for dav-server.
    fn give_up(&mut self, e: &Error) -> FsError {
        if let Some(w) = self.writer.take() {
            w.discard();
        }
        let text = e.to_string();
        self.log(Outcome::Error, Some(&text));
        self.fs.fail("PUT", e)
    }
}

impl DavFile for WriteFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.done.clone().unwrap_or(Meta {
            dir: false,
            len: self.pos,
            modified: SystemTime::now(),
            etag: None,
        });
        let meta: Box<dyn DavMetaData> = Box::new(meta);
        futures::future::ready(Ok(meta)).boxed()
    }

    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let data = buf.copy_to_bytes(buf.remaining());
        self.write(data).boxed()
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        self.write(buf).boxed()
    }

    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        futures::future::ready(Err(FsError::Forbidden)).boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.pos.checked_add_signed(d),
        };
        let r = match to {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(FsError::GeneralFailure),
        };
        futures::future::ready(r).boxed()
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            let Some(w) = self.writer.take() else {
                return Ok(());
            };
            if let Some(n) = self.expected
                && self.written != n
            {
                w.discard();
                let why = format!(
                    "the body had {} bytes where {n} were announced: nothing stored",
                    self.written
                );
                tracing::info!(user = %self.fs.user, path = %self.path, "PUT refused: {why}");
                self.log(Outcome::Error, Some(&why));
                return Err(FsError::GeneralFailure);
            }
            if let Err(e) = w.finish().await {
                let text = e.to_string();
                self.log(Outcome::Error, Some(&text));
                return Err(self.fs.fail("PUT", &e));
            }
            self.log(Outcome::Ok, None);
            // The stored file's own tag, for the answer's ETag.
            self.done = match self.fs.sandbox.stat(&self.path).await {
                Ok(e) => {
                    let mut meta = self.fs.meta_of(e.kind, e.size, e.modified);
                    meta.etag = e.etag;
                    Some(meta)
                }
                Err(_) => None,
            };
            Ok(())
        }
        .boxed()
    }
}

impl Drop for WriteFile {
    fn drop(&mut self) {
        // The body ended early or the connection dropped: nothing is kept.
        if let Some(w) = self.writer.take() {
            w.discard();
            self.log(Outcome::Aborted, None);
        }
    }
}

/// A GET in progress: the library's read-ahead through the cache.
struct ReadFile {
    fs: SandboxFs,
    path: VirtualPath,
    reader: FileReader,
    pos: u64,
    sent: u64,
    started: Instant,
    /// Its line is in the transfer log already (it failed).
    logged: bool,
}

impl std::fmt::Debug for ReadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFile")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl ReadFile {
    /// The download's line in the transfer log.
    fn log(&self, outcome: Outcome, error: Option<&str>) {
        self.fs.log(
            "download",
            &self.path,
            self.sent,
            self.started,
            outcome,
            error,
        );
    }
}

impl DavFile for ReadFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(Meta {
            dir: false,
            len: self.reader.size(),
            modified: self.reader.modified().unwrap_or(self.fs.started),
            etag: self.reader.etag().map(str::to_owned),
        });
        futures::future::ready(Ok(meta)).boxed()
    }

    fn write_buf(&mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        futures::future::ready(Err(FsError::Forbidden)).boxed()
    }

    fn write_bytes(&mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        futures::future::ready(Err(FsError::Forbidden)).boxed()
    }

    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            match self.reader.read_at(self.pos, count).await {
                Ok(b) => {
                    self.pos += b.len() as u64;
                    self.sent += b.len() as u64;
                    Ok(b)
                }
                Err(e) => {
                    let text = e.to_string();
                    self.logged = true;
                    self.log(Outcome::Error, Some(&text));
                    Err(self.fs.fail("GET", &e))
                }
            }
        }
        .boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let size = self.reader.size();
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => size.checked_add_signed(d),
        };
        let r = match to {
            Some(n) if n <= size => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(FsError::GeneralFailure),
        };
        futures::future::ready(r).boxed()
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        // A HEAD opens and reads nothing: no transfer.
        if !self.logged && (self.sent > 0 || self.reader.size() == 0) {
            self.log(Outcome::Ok, None);
        }
    }
}
