//! SFTP requests as library calls on one user's sandbox.
//!
//! Paths are parsed once, here at the edge, by the domain's rules with the
//! chroot resolution ([`Resolution::Chroot`]): `/..` is `/`, as OpenSSH's
//! chrooted server has it, and nothing climbs above the user's root. A
//! backslash is an ordinary character, as everywhere in corral. Every rule
//! is the library's; this module only translates requests and answers.
//!
//! | request | what it does |
//! |---|---|
//! | OPEN for reading | [`UserSandbox::open`]: a read-ahead through the download cache, taking room as it reads |
//! | OPEN for writing | [`UserSandbox::create_with`]: `TRUNC` replaces the file; without it the bytes not written stay; `APPEND` writes at the end; `EXCL` is create-if-absent; without `CREAT` the file must exist. The file exists for `stat` and listings from now on |
//! | CLOSE | completes an upload: its failure is the answer |
//! | OPENDIR, READDIR | the listing, streamed a page at a time |
//! | STAT, LSTAT, FSTAT | what `stat` says (no link is ever shown) |
//! | SETSTAT, FSETSTAT | the modification time is kept (where the backend keeps one); other attributes are accepted and ignored, or refused with `--setstat refuse` |
//! | MKDIR, RMDIR, REMOVE, RENAME, `posix-rename@openssh.com` | the library's `mkdir`, `remove`, `rename` |
//! | REALPATH, `limits@openssh.com` | answered here |
//! | READLINK, SYMLINK | refused: `OP_UNSUPPORTED` |

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use corral::{
    DirEntry, Entry, EntryKind, Error, ErrorKind, FileReader, MkdirOptions, OverwriteMode,
    RemoveOptions, RenameOptions, Resolution, UserSandbox, VirtualPath, WriteOptions, Writer,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use russh_sftp::protocol::{
    Attrs, ExtendedReply, File, FileAttributes, Name, OpenFlags, Packet, StatusCode, Version,
};

use super::reply::{Reply, code, ok, status};
use super::request::HandleRequest;
use crate::serve::metrics::{Metrics, Outcome, Transfer};

/// The most data one READ returns, and one WRITE may carry (what
/// `limits@openssh.com` says).
pub(crate) const MAX_DATA: u32 = 255 << 10;
/// The largest packet a client may send.
pub(crate) const MAX_PACKET: u32 = 256 << 10;
/// Entries per READDIR answer.
const PAGE: usize = 128;

/// What a session's requests share.
#[derive(Debug)]
pub(crate) struct Fs {
    pub(crate) sb: UserSandbox,
    pub(crate) user: String,
    /// The client's address, for the transfer log.
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) overwrite: Option<OverwriteMode>,
    pub(crate) refuse_setstat: bool,
    pub(crate) max_handles: u64,
    pub(crate) metrics: Arc<Metrics>,
    /// The time shown for directories whose backend keeps none.
    pub(crate) epoch: SystemTime,
}

/// An open handle.
pub(crate) enum Open {
    Read {
        path: String,
        download: Box<FileReader>,
        started: Instant,
        bytes: u64,
    },
    Write {
        path: String,
        writer: Option<Box<Writer>>,
        /// Opened with APPEND: every write goes at the end.
        append: bool,
        started: Instant,
        /// Bytes the client sent.
        sent: u64,
        failed: Option<Error>,
    },
    Dir {
        entries: BoxStream<'static, Result<DirEntry, Error>>,
        done: bool,
    },
}

impl Open {
    /// The path a file was opened on (none for a directory).
    pub(crate) fn path(&self) -> Option<&str> {
        match self {
            Self::Read { path, .. } | Self::Write { path, .. } => Some(path),
            Self::Dir { .. } => None,
        }
    }
}

/// A client's path, parsed once: the domain's rules, `..` at the root
/// staying at the root.
pub(crate) fn path(raw: &str) -> Result<VirtualPath, Error> {
    VirtualPath::parse_with(raw, Resolution::Chroot)
        .map_err(|e| Error::from(e).with_path(raw.to_owned()))
}

fn secs(t: Option<SystemTime>) -> Option<u32> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The time a client set, if it set one.
fn requested_mtime(a: &FileAttributes) -> Option<SystemTime> {
    a.mtime
        .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s)))
}

impl Fs {
    fn attrs(&self, kind: EntryKind, size: u64, modified: Option<SystemTime>) -> FileAttributes {
        let dir = kind == EntryKind::Directory;
        let modified = modified.or(dir.then_some(self.epoch));
        FileAttributes {
            size: Some(size),
            uid: Some(0),
            gid: Some(0),
            user: None,
            group: None,
            permissions: Some(if dir { 0o040_755 } else { 0o100_644 }),
            atime: secs(modified),
            mtime: secs(modified),
        }
    }

    fn entry_attrs(&self, e: &Entry) -> FileAttributes {
        self.attrs(e.kind, e.size, e.modified)
    }

    /// The answer to INIT: version 3 and the extensions served.
    pub(crate) fn version() -> Packet {
        let mut v = Version::new();
        for (name, version) in [
            ("posix-rename@openssh.com", "1"),
            ("limits@openssh.com", "1"),
        ] {
            v.extensions.insert(name.to_owned(), version.to_owned());
        }
        Packet::Version(v)
    }

    /// OPEN: a new handle's state.
    pub(crate) async fn open(
        &self,
        filename: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Open, Error> {
        let p = path(filename)?;
        let append = flags.contains(OpenFlags::APPEND);
        let create = flags.contains(OpenFlags::CREATE);
        let exclusive = create && flags.contains(OpenFlags::EXCLUDE);
        // CREAT without WRITE (paramiko's mode "x", a lock file) makes the
        // file as open(2) does; an existing one is opened for reading.
        let write = flags.contains(OpenFlags::WRITE) || append || exclusive;
        if !write {
            match self.sb.open(&p).await {
                Ok(download) => {
                    return Ok(Open::Read {
                        path: p.to_string(),
                        download: Box::new(download),
                        started: Instant::now(),
                        bytes: 0,
                    });
                }
                Err(e) if create && e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let truncate = flags.contains(OpenFlags::TRUNCATE);
        let options = WriteOptions {
            size: None,
            overwrite: self.overwrite,
            if_not_exists: exclusive,
            must_exist: !create,
            keep_existing: !truncate,
        };
        let mut writer = self.sb.create_with(&p, options).await?;
        if let Some(notice) = writer.decision().notice() {
            tracing::debug!(user = %self.user, path = %p, "{notice}");
        }
        if let Some(t) = requested_mtime(attrs) {
            writer.set_modified(t);
        }
        if let Some(at) = writer.resumed_from() {
            tracing::info!(user = %self.user, path = %p, stored = at, "continuing a partial upload");
            self.metrics
                .partials_resumed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Open::Write {
            path: p.to_string(),
            writer: Some(Box::new(writer)),
            append,
            started: Instant::now(),
            sent: 0,
            failed: None,
        })
    }

    /// OPENDIR: the library's listing of a directory (not a directory is
    /// its error).
    pub(crate) async fn opendir(&self, raw: &str) -> Result<Open, Error> {
        Ok(Open::Dir {
            entries: self.sb.read_dir(&path(raw)?).await?,
            done: false,
        })
    }

    /// READ: whole answers but at the end of the file (clients that write
    /// in place, such as scp, take a short read in the middle for a hole).
    /// The DATA frame is built around the bytes as they leave the cache:
    /// one copy, not one into a buffer and another into the frame.
    pub(crate) async fn read(&self, open: &mut Open, id: u32, offset: u64, len: u32) -> Reply {
        let Open::Read {
            download, bytes, ..
        } = open
        else {
            return code(
                id,
                StatusCode::OpUnsupported,
                "this handle is not open for reading: read the file once it is closed",
            )
            .into();
        };
        let want = (len.min(MAX_DATA) as u64).min(download.size().saturating_sub(offset)) as usize;
        if want == 0 {
            return code(id, StatusCode::Eof, "end of file").into();
        }
        let mut frame = super::reply::start_data(id, want);
        let mut got = 0usize;
        while got < want {
            match download.read_at(offset + got as u64, want - got).await {
                Ok(piece) if piece.is_empty() => break,
                Ok(piece) => {
                    frame.extend_from_slice(&piece);
                    got += piece.len();
                }
                Err(e) => return status(id, &e).into(),
            }
        }
        if got == 0 {
            return code(id, StatusCode::Eof, "end of file").into();
        }
        *bytes += got as u64;
        Reply::Encoded(super::reply::finish_data(frame))
    }

    /// A request on an open handle (WRITE, FSTAT, FSETSTAT, READDIR).
    pub(crate) async fn on_handle(&self, open: &mut Open, request: HandleRequest) -> Packet {
        match (open, request) {
            (
                Open::Write {
                    writer,
                    append,
                    sent,
                    failed,
                    path,
                    ..
                },
                HandleRequest::Write { id, offset, data },
            ) => {
                if let Some(e) = failed {
                    return status(id, e);
                }
                let Some(wr) = writer.as_mut() else {
                    return code(id, StatusCode::Failure, "the handle is closed");
                };
                // APPEND: at the end, wherever the client says.
                let offset = if *append { wr.size() } else { offset };
                match wr.write_at(offset, &data).await {
                    Ok(()) => {
                        *sent += data.len() as u64;
                        ok(id)
                    }
                    Err(e) => {
                        tracing::warn!(user = %self.user, path = %path, error = %e, "a write failed: the upload is given up");
                        let e = match writer.take() {
                            Some(wr) => (*wr).cancel(e).await,
                            None => e,
                        };
                        *failed = Some(e.clone());
                        status(id, &e)
                    }
                }
            }
            (Open::Read { download, .. }, HandleRequest::Fstat { id }) => Packet::Attrs(Attrs {
                id,
                attrs: self.attrs(EntryKind::File, download.size(), download.modified()),
            }),
            (Open::Write { writer, sent, .. }, HandleRequest::Fstat { id }) => {
                let size = writer.as_ref().map_or(*sent, |w| w.size());
                Packet::Attrs(Attrs {
                    id,
                    attrs: self.attrs(EntryKind::File, size, Some(SystemTime::now())),
                })
            }
            (Open::Dir { .. }, HandleRequest::Fstat { id }) => Packet::Attrs(Attrs {
                id,
                attrs: self.attrs(EntryKind::Directory, 0, None),
            }),
            (Open::Write { writer, .. }, HandleRequest::FSetStat { id, attrs }) => {
                if self.refuse_setstat {
                    return self.setstat_refused(id);
                }
                let Some(wr) = writer.as_mut() else {
                    return ok(id);
                };
                if let Some(size) = attrs.size
                    && size != wr.size()
                {
                    return code(
                        id,
                        StatusCode::OpUnsupported,
                        "changing the size of a file being written is not supported",
                    );
                }
                if let Some(t) = requested_mtime(&attrs) {
                    wr.set_modified(t);
                }
                ok(id)
            }
            (Open::Read { path, .. }, HandleRequest::FSetStat { id, attrs }) => {
                match self::path(path) {
                    Ok(p) => self.setstat(id, &p, &attrs).await,
                    Err(e) => status(id, &e),
                }
            }
            (Open::Dir { .. }, HandleRequest::FSetStat { id, .. }) => ok(id),
            (Open::Dir { entries, done }, HandleRequest::ReadDir { id }) => {
                if *done {
                    return code(id, StatusCode::Eof, "end of directory");
                }
                let mut files = Vec::new();
                while files.len() < PAGE {
                    match entries.next().await {
                        Some(Ok(e)) => {
                            let a = self.attrs(e.kind, e.size, e.modified);
                            files.push(File::new(e.name.clone(), a));
                        }
                        Some(Err(e)) => {
                            *done = true;
                            if files.is_empty() {
                                return status(id, &e);
                            }
                            break;
                        }
                        None => {
                            *done = true;
                            break;
                        }
                    }
                }
                if files.is_empty() {
                    return code(id, StatusCode::Eof, "end of directory");
                }
                Packet::Name(Name { id, files })
            }
            (_, r) => code(
                request_id(&r),
                StatusCode::Failure,
                "that request does not apply to this handle",
            ),
        }
    }

    /// CLOSE: an upload completes (its failure is the answer); the transfer is logged.
    pub(crate) async fn close(&self, id: u32, open: Open) -> Packet {
        match open {
            Open::Read {
                path,
                started,
                bytes,
                ..
            } => {
                self.log(
                    "download",
                    &path,
                    bytes,
                    started.elapsed(),
                    Outcome::Ok,
                    None,
                );
                ok(id)
            }
            Open::Write {
                path,
                writer,
                started,
                sent,
                failed,
                ..
            } => {
                let result = match (writer, failed) {
                    (Some(w), None) => (*w).finish().await.map(|_| ()),
                    (_, Some(e)) => Err(e),
                    (None, None) => Err(Error::new(ErrorKind::Other, "the upload was given up")),
                };
                let outcome = if result.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Error
                };
                let error = result.as_ref().err().map(ToString::to_string);
                self.log(
                    "upload",
                    &path,
                    sent,
                    started.elapsed(),
                    outcome,
                    error.as_deref(),
                );
                match result {
                    Ok(()) => ok(id),
                    Err(e) => status(id, &e),
                }
            }
            Open::Dir { .. } => ok(id),
        }
    }

    /// A handle whose session ended without CLOSE: an upload keeps its
    /// whole parts for the client to continue (or, with none, is aborted):
    /// dropping its writer does; the transfer is logged as aborted.
    pub(crate) fn abandon(&self, open: Open) {
        match open {
            Open::Read {
                path,
                started,
                bytes,
                ..
            } => {
                self.log(
                    "download",
                    &path,
                    bytes,
                    started.elapsed(),
                    Outcome::Aborted,
                    None,
                );
            }
            Open::Write {
                path,
                writer,
                started,
                sent,
                ..
            } => {
                if writer.as_ref().is_some_and(|w| w.keeps_partial()) {
                    // Its whole parts stay stored for the client to continue.
                    tracing::info!(user = %self.user, path = %path, "kept the unfinished upload for the client to continue");
                    self.metrics
                        .partials_kept
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                drop(writer);
                self.log(
                    "upload",
                    &path,
                    sent,
                    started.elapsed(),
                    Outcome::Aborted,
                    None,
                );
            }
            Open::Dir { .. } => {}
        }
    }

    /// The transfer's log line and counters.
    fn log(
        &self,
        direction: &'static str,
        path: &str,
        bytes: u64,
        elapsed: Duration,
        outcome: Outcome,
        error: Option<&str>,
    ) {
        self.metrics.transfer(&Transfer {
            user: &self.user,
            peer: self.peer,
            direction,
            path,
            bytes,
            elapsed,
            outcome,
            error,
        });
    }

    fn setstat_refused(&self, id: u32) -> Packet {
        code(
            id,
            StatusCode::OpUnsupported,
            "changing attributes is not supported",
        )
    }

    /// SETSTAT of a path: the modification time is kept where the backend
    /// keeps one; other attributes are accepted and ignored.
    async fn setstat(&self, id: u32, p: &VirtualPath, attrs: &FileAttributes) -> Packet {
        if self.refuse_setstat {
            return self.setstat_refused(id);
        }
        // As chmod: no such file, no change.
        let entry = match self.sb.stat(p).await {
            Ok(e) => e,
            Err(e) => return status(id, &e),
        };
        if let Some(size) = attrs.size
            && entry.kind == EntryKind::File
            && entry.size != size
        {
            return code(
                id,
                StatusCode::OpUnsupported,
                "changing a file's size is not supported: write it again",
            );
        }
        if let Some(t) = requested_mtime(attrs) {
            match self.sb.set_modified(p, t).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    tracing::debug!(user = %self.user, path = %p, "the backend keeps no modification times: SETSTAT ignored");
                }
                Err(e) => return status(id, &e),
            }
        }
        ok(id)
    }

    /// A request that names paths, not handles.
    pub(crate) async fn on_path(&self, request: Packet) -> Packet {
        let id = request.get_request_id();
        let r = match request {
            Packet::Stat(r) => self.stat(id, &r.path).await,
            Packet::Lstat(r) => self.stat(id, &r.path).await,
            Packet::SetStat(r) => match path(&r.path) {
                Ok(p) => Ok(self.setstat(id, &p, &r.attrs).await),
                Err(e) => Err(e),
            },
            Packet::MkDir(r) => match path(&r.path) {
                Ok(p) => self
                    .sb
                    .mkdir(&p, MkdirOptions::default())
                    .await
                    .map(|()| ok(id)),
                Err(e) => Err(e),
            },
            Packet::RmDir(r) => self.remove(id, &r.path, true).await,
            Packet::Remove(r) => self.remove(id, &r.filename, false).await,
            Packet::Rename(r) => self.rename(id, &r.oldpath, &r.newpath, false).await,
            Packet::RealPath(r) => {
                let raw = if r.path.is_empty() {
                    "."
                } else {
                    r.path.as_str()
                };
                path(raw).map(|p| {
                    Packet::Name(Name {
                        id,
                        files: vec![File::dummy(p.to_string())],
                    })
                })
            }
            Packet::ReadLink(_) | Packet::Symlink(_) => Ok(code(
                id,
                StatusCode::OpUnsupported,
                "links are not supported: a sandbox holds files and directories only",
            )),
            Packet::Extended(x) => self.extended(id, &x.request, x.data).await,
            _ => Ok(code(id, StatusCode::OpUnsupported, "not supported")),
        };
        r.unwrap_or_else(|e| status(id, &e))
    }

    async fn stat(&self, id: u32, raw: &str) -> Result<Packet, Error> {
        let e = self.sb.stat(&path(raw)?).await?;
        Ok(Packet::Attrs(Attrs {
            id,
            attrs: self.entry_attrs(&e),
        }))
    }

    /// REMOVE (a file) and RMDIR (an empty directory): the library tells
    /// which is which, in the same call.
    async fn remove(&self, id: u32, raw: &str, dir: bool) -> Result<Packet, Error> {
        let only = if dir {
            EntryKind::Directory
        } else {
            EntryKind::File
        };
        let options = RemoveOptions {
            recursive: false,
            only: Some(only),
        };
        self.sb.remove(&path(raw)?, options).await.map(|()| ok(id))
    }

    /// RENAME refuses an existing target (SFTP v3); `posix-rename@openssh.com` replaces it.
    async fn rename(&self, id: u32, from: &str, to: &str, replace: bool) -> Result<Packet, Error> {
        let (from, to) = (path(from)?, path(to)?);
        self.sb
            .rename(&from, &to, RenameOptions { replace })
            .await
            .map(|_| ok(id))
    }

    async fn extended(&self, id: u32, request: &str, data: Vec<u8>) -> Result<Packet, Error> {
        let bad = |e: String| Error::invalid_input(format!("{request}: {e}"));
        match request {
            "limits@openssh.com" => {
                let limits = russh_sftp::extensions::LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET),
                    max_read_len: u64::from(MAX_DATA),
                    max_write_len: u64::from(MAX_DATA),
                    max_open_handles: self.max_handles,
                };
                let data = russh_sftp::ser::to_bytes(&limits).map_err(|e| bad(e.to_string()))?;
                Ok(Packet::ExtendedReply(ExtendedReply {
                    id,
                    data: data.to_vec(),
                }))
            }
            "posix-rename@openssh.com" => {
                let mut bytes = Bytes::from(data);
                let names: russh_sftp::extensions::HardlinkExtension =
                    russh_sftp::de::from_bytes(&mut bytes).map_err(|e| bad(e.to_string()))?;
                self.rename(id, &names.oldpath, &names.newpath, true).await
            }
            other => Ok(code(
                id,
                StatusCode::OpUnsupported,
                &format!("{other} is not supported"),
            )),
        }
    }
}

fn request_id(r: &HandleRequest) -> u32 {
    match r {
        HandleRequest::Read { id, .. }
        | HandleRequest::Write { id, .. }
        | HandleRequest::Fstat { id }
        | HandleRequest::FSetStat { id, .. }
        | HandleRequest::ReadDir { id }
        | HandleRequest::Close { id, .. } => *id,
    }
}
