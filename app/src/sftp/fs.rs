//! SFTP requests as library calls on one user's sandbox.
//!
//! Paths are normalized once, here at the edge: `\` becomes `/` (as Windows
//! clients mean it) and the domain's path type does the rest, so `..` never
//! climbs above the user's root. Every rule is the library's; this module
//! only translates requests and answers.
//!
//! | request | what it does |
//! |---|---|
//! | OPEN for reading | [`UserSandbox::open`]: a sequential read-ahead through the download cache; a READ elsewhere restarts it |
//! | OPEN for writing (`WRITE`, with `CREATE`, `TRUNCATE`) | [`UserSandbox::create`]: writes in any order, each byte once; the overwrite mode the domain decides; `EXCL` is create-if-absent |
//! | OPEN with `READ\|WRITE` or `APPEND` | refused: `OP_UNSUPPORTED` |
//! | CLOSE | completes an upload: its failure is the answer |
//! | OPENDIR, READDIR | the listing, streamed a page at a time |
//! | STAT, LSTAT, FSTAT | what `stat` says (no link is ever shown) |
//! | SETSTAT, FSETSTAT | accepted and ignored (logged), or refused with `--setstat refuse` |
//! | MKDIR, RMDIR, REMOVE, RENAME, `posix-rename@openssh.com` | the library's `mkdir`, `remove`, `rename` |
//! | REALPATH, `limits@openssh.com` | answered here |
//! | READLINK, SYMLINK | refused: `OP_UNSUPPORTED` |

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use corral::cache::Download;
use corral::{
    DirEntry, Entry, EntryKind, Error, ErrorKind, OverwriteMode, UserSandbox, VirtualPath, Writer,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};

use super::metrics::{Metrics, Outcome, Transfer};

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
    pub(crate) overwrite: Option<OverwriteMode>,
    pub(crate) refuse_setstat: bool,
    pub(crate) max_handles: u64,
    pub(crate) metrics: Arc<Metrics>,
}

/// An open handle.
pub(crate) enum Open {
    Read {
        path: String,
        download: Download,
        started: Instant,
        bytes: u64,
    },
    Write {
        path: String,
        writer: Option<Writer>,
        started: Instant,
        end: u64,
        failed: Option<String>,
    },
    Dir {
        entries: BoxStream<'static, Result<DirEntry, Error>>,
        done: bool,
    },
}

/// The status an error answers with.
pub(crate) fn status(id: u32, e: &Error) -> Packet {
    let code = match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied | ErrorKind::EscapesSandbox | ErrorKind::Unauthenticated => {
            StatusCode::PermissionDenied
        }
        ErrorKind::Unsupported => StatusCode::OpUnsupported,
        _ => StatusCode::Failure,
    };
    tracing::debug!(id, error = %e, "request failed");
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: e.to_string(),
        language_tag: "en-US".to_owned(),
    })
}

fn ok(id: u32) -> Packet {
    code(id, StatusCode::Ok, "")
}

pub(crate) fn code(id: u32, status_code: StatusCode, message: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code,
        error_message: if message.is_empty() {
            status_code.to_string()
        } else {
            message.to_owned()
        },
        language_tag: "en-US".to_owned(),
    })
}

/// A client's path, normalized: `\` as `/`, then the domain's rules.
pub(crate) fn path(raw: &str) -> Result<String, Error> {
    let raw = raw.replace('\\', "/");
    VirtualPath::parse(&raw)
        .map(|p| p.to_string())
        .map_err(|e| Error::from(e).with_path(raw))
}

fn secs(t: Option<SystemTime>) -> Option<u32> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

fn attrs(kind: EntryKind, size: u64, modified: Option<SystemTime>) -> FileAttributes {
    let dir = kind == EntryKind::Directory;
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

fn entry_attrs(e: &Entry) -> FileAttributes {
    attrs(e.kind, e.size, e.modified)
}

impl Fs {
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
        if flags.contains(OpenFlags::APPEND) {
            return Err(Error::unsupported(format!(
                "{p}: appending is not supported: a file is written whole, then replaces the old one"
            )));
        }
        let (read, write) = (
            flags.contains(OpenFlags::READ),
            flags.contains(OpenFlags::WRITE),
        );
        if read && write {
            return Err(Error::unsupported(format!(
                "{p}: opening for reading and writing at once is not supported: read it, or write it whole"
            )));
        }
        if !write {
            let download = self.sb.open(&p).await?;
            return Ok(Open::Read {
                path: p,
                download,
                started: Instant::now(),
                bytes: 0,
            });
        }
        let exists = match self.sb.stat(&p).await {
            Ok(e) if e.kind == EntryKind::Directory => {
                return Err(
                    Error::new(ErrorKind::AlreadyExists, format!("{p} is a directory"))
                        .with_path(p),
                );
            }
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if exists && flags.contains(OpenFlags::EXCLUDE) {
            return Err(
                Error::new(ErrorKind::AlreadyExists, format!("{p} already exists")).with_path(p),
            );
        }
        if !exists && !flags.contains(OpenFlags::CREATE) {
            return Err(Error::not_found(format!("{p} does not exist")).with_path(p));
        }
        let writer = self.sb.create(&p, attrs.size, self.overwrite).await?;
        if let Some(notice) = writer.decision().notice() {
            tracing::debug!(user = %self.user, path = %p, "{notice}");
        }
        Ok(Open::Write {
            path: p,
            writer: Some(writer),
            started: Instant::now(),
            end: 0,
            failed: None,
        })
    }

    /// OPENDIR.
    pub(crate) async fn opendir(&self, raw: &str) -> Result<Open, Error> {
        let p = path(raw)?;
        let e = self.sb.stat(&p).await?;
        if e.kind != EntryKind::Directory {
            return Err(
                Error::new(ErrorKind::InvalidInput, format!("{p} is not a directory")).with_path(p),
            );
        }
        Ok(Open::Dir {
            entries: self.sb.list(&p),
            done: false,
        })
    }

    /// A request on an open handle (READ, WRITE, FSTAT, FSETSTAT, READDIR).
    pub(crate) async fn on_handle(&self, open: &mut Open, request: Packet) -> Packet {
        let id = request.get_request_id();
        match (open, request) {
            (
                Open::Read {
                    download, bytes, ..
                },
                Packet::Read(r),
            ) => {
                // Whole answers but at the end of the file: clients that write
                // in place (scp) take a short read in the middle for a hole.
                let len = r.len.min(MAX_DATA) as usize;
                let mut data = Vec::with_capacity(len);
                while data.len() < len {
                    let at = r.offset + data.len() as u64;
                    match download.read_at(at, len - data.len()).await {
                        Ok(chunk) if chunk.is_empty() => break,
                        Ok(chunk) => data.extend_from_slice(&chunk),
                        Err(e) => return status(id, &e),
                    }
                }
                if data.is_empty() {
                    return code(id, StatusCode::Eof, "end of file");
                }
                *bytes += data.len() as u64;
                Packet::Data(Data { id, data })
            }
            (
                Open::Write {
                    writer,
                    end,
                    failed,
                    path,
                    ..
                },
                Packet::Write(w),
            ) => {
                if let Some(why) = failed {
                    return code(id, StatusCode::Failure, why);
                }
                let Some(wr) = writer.as_mut() else {
                    return code(id, StatusCode::Failure, "the handle is closed");
                };
                match wr.write_at(w.offset, &w.data).await {
                    Ok(()) => {
                        *end = (*end).max(w.offset + w.data.len() as u64);
                        ok(id)
                    }
                    Err(e) => {
                        tracing::warn!(user = %self.user, path = %path, error = %e, "a write failed: the upload is given up");
                        *failed = Some(e.to_string());
                        if let Some(wr) = writer.take() {
                            let e = wr.cancel(e).await;
                            return status(id, &e);
                        }
                        status(id, &e)
                    }
                }
            }
            (Open::Read { download, .. }, Packet::Fstat(_)) => {
                let m = download.meta();
                Packet::Attrs(Attrs {
                    id,
                    attrs: attrs(EntryKind::File, m.size, m.last_modified),
                })
            }
            (Open::Write { end, .. }, Packet::Fstat(_)) => Packet::Attrs(Attrs {
                id,
                attrs: attrs(EntryKind::File, *end, Some(SystemTime::now())),
            }),
            (Open::Dir { .. }, Packet::Fstat(_)) => Packet::Attrs(Attrs {
                id,
                attrs: attrs(EntryKind::Directory, 0, None),
            }),
            (_, Packet::FSetStat(_)) => self.setstat(id),
            (Open::Dir { entries, done }, Packet::ReadDir(_)) => {
                if *done {
                    return code(id, StatusCode::Eof, "end of directory");
                }
                let mut files = Vec::new();
                while files.len() < PAGE {
                    match entries.next().await {
                        Some(Ok(e)) => {
                            files
                                .push(File::new(e.name.clone(), attrs(e.kind, e.size, e.modified)));
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
            _ => code(
                id,
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
                end,
                failed,
            } => {
                let result = match (writer, failed) {
                    (Some(w), None) => w.finish().await.map(|_| ()),
                    (_, Some(why)) => Err(Error::new(ErrorKind::Other, why)),
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
                    end,
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

    /// A handle whose session ended without CLOSE: an upload is aborted
    /// (dropping its writer does), and the transfer logged as such.
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
                end,
                ..
            } => {
                drop(writer);
                self.log(
                    "upload",
                    &path,
                    end,
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
        elapsed: std::time::Duration,
        outcome: Outcome,
        error: Option<&str>,
    ) {
        self.metrics.transfer(&Transfer {
            user: &self.user,
            direction,
            path,
            bytes,
            elapsed,
            outcome,
            error,
        });
    }

    fn setstat(&self, id: u32) -> Packet {
        if self.refuse_setstat {
            return code(
                id,
                StatusCode::OpUnsupported,
                "changing attributes is not supported",
            );
        }
        tracing::debug!(user = %self.user, "SETSTAT accepted and ignored");
        ok(id)
    }

    /// A request that names paths, not handles.
    pub(crate) async fn on_path(&self, request: Packet) -> Packet {
        let id = request.get_request_id();
        let r = match request {
            Packet::Stat(r) => self.stat(id, &r.path).await,
            Packet::Lstat(r) => self.stat(id, &r.path).await,
            Packet::SetStat(r) => path(&r.path).map(|_| self.setstat(id)),
            Packet::MkDir(r) => match path(&r.path) {
                Ok(p) => self.sb.mkdir(&p, false).await.map(|()| ok(id)),
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
                        files: vec![File::dummy(p)],
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
            attrs: entry_attrs(&e),
        }))
    }

    async fn remove(&self, id: u32, raw: &str, dir: bool) -> Result<Packet, Error> {
        let p = path(raw)?;
        let e = self.sb.stat(&p).await?;
        match (e.kind == EntryKind::Directory, dir) {
            (true, false) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{p} is a directory (remove it with rmdir)"),
            )),
            (false, true) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{p} is not a directory"),
            )),
            _ => self.sb.remove(&p, false).await.map(|()| ok(id)),
        }
    }

    /// RENAME refuses an existing target (SFTP v3); `posix-rename@openssh.com` replaces it.
    async fn rename(&self, id: u32, from: &str, to: &str, replace: bool) -> Result<Packet, Error> {
        let (from, to) = (path(from)?, path(to)?);
        if !replace {
            match self.sb.stat(&to).await {
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("{to} already exists"),
                    )
                    .with_path(to));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.sb.rename(&from, &to).await.map(|_| ok(id))
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

/// A handle's reply to OPEN and OPENDIR.
pub(crate) fn handle(id: u32, handle: String) -> Packet {
    Packet::Handle(Handle { id, handle })
}
