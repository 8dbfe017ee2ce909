//! The SFTP v3 loop of one channel: packets framed by their length, decoded
//! with russh-sftp's codec, served concurrently.
//!
//! russh-sftp's own server loop awaits each request before it reads the
//! next and never says when the session ended, so it is not used. Here:
//!
//! - requests on a handle go, in the order they came, to that handle's own
//!   task, which owns the handle's state (a read-ahead, an upload, a
//!   listing): one handle's requests are served in order, different
//!   handles' at once;
//! - requests that name paths each get a task, at most [`CONCURRENT`] at
//!   once, but those naming the same path are served in the order they
//!   came, and after a CLOSE of a handle of that path sent before them (as
//!   a server serving one request at a time would): sshfs sends OPEN(CREAT)
//!   and LSTAT of a file at once, and CLOSE without waiting for its answer
//!   before it opens the file again;
//! - answers go out through one writer, in the order they are ready (each
//!   carries its request's id);
//! - a packet of an unknown type is answered `OP_UNSUPPORTED`, one that
//!   cannot be decoded `BAD_MESSAGE`, and the session goes on.
//!
//! **Memory, back-pressure and deadlock.** russh adjusts the SSH window as
//! data arrives and hands it to this loop through a bounded queue; while
//! that queue is full it stops its whole connection, answers included. So
//! the reader never waits for something only an answer going out could
//! free: answers go into an unbounded queue, and what holds memory is
//! bounded where it is made.
//!
//! - WRITE data waiting for its handle takes a share of [`WRITE_BUDGET`]
//!   before the reader queues it: when a handle's writes back up (its
//!   upload waits for the cache, or for parts in flight), the reader stops
//!   reading the channel and SSH's flow control holds the client back.
//!   Handle tasks give shares back as they write, never waiting on the
//!   writer, so this cannot close a loop.
//! - DATA answers take a share of [`READ_BUDGET`] before they are made (the
//!   handle task waits for it; the writer gives it back once the answer is
//!   sent).
//! - Other requests (a READ is a few bytes) are queued without a limit per
//!   handle: a client that sends a READ for every 32 KiB of a large file at
//!   once (paramiko's `get`) is served in turn, never refused for being one
//!   of many. A session may have at most [`QUEUED`] of them waiting (a few
//!   MiB; a READ for every 32 KiB of an 8 GiB file); a client that queues
//!   more gets `FAILURE` for the excess, since stopping to read would stop
//!   the answers that drain the queue.
//!
//! When the client ends the channel (EOF or CLOSE) or the stream breaks,
//! reading stops; the handles' tasks finish what they were sent (an upload
//! not closed is given up), the last answers go out, then EOF and CLOSE are
//! sent: [`run`] returns only then. When the connection itself is gone (a
//! killed client, the idle timeout), every task is stopped at once: their
//! cache reservations and queued waits are released, their uploads
//! aborted, within the moment.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::fs::{Fs, MAX_DATA, MAX_PACKET, Open};
use super::order::Order;
use super::reply::{code, handle, status};
use super::request::HandleRequest;

/// Path requests served at once per channel.
const CONCURRENT: usize = 64;
/// Bytes of WRITE data waiting for their handles, per channel: enough to
/// keep the handle busy (the transfer cache does the real buffering).
const WRITE_BUDGET: u32 = 256 << 10;
/// Bytes of DATA answers waiting to be sent, per channel.
const READ_BUDGET: u32 = 256 << 10;
/// Requests other than WRITE waiting for their handles, per channel.
pub(crate) const QUEUED: usize = 1 << 18;

/// An answer, with the share of a budget it holds until it is sent.
pub(crate) type Answer = (super::reply::Reply, Option<OwnedSemaphorePermit>);

/// The paths a path request names, as the order keys them.
fn paths_of(p: &Packet) -> Vec<String> {
    let norm = |raw: &str| super::fs::path(raw).map_or_else(|_| raw.to_owned(), |p| p.to_string());
    match p {
        Packet::Open(o) => vec![norm(&o.filename)],
        Packet::OpenDir(o) => vec![norm(&o.path)],
        Packet::Stat(r) => vec![norm(&r.path)],
        Packet::Lstat(r) => vec![norm(&r.path)],
        Packet::SetStat(r) => vec![norm(&r.path)],
        Packet::Remove(r) => vec![norm(&r.filename)],
        Packet::MkDir(r) => vec![norm(&r.path)],
        Packet::RmDir(r) => vec![norm(&r.path)],
        Packet::Rename(r) => vec![norm(&r.oldpath), norm(&r.newpath)],
        Packet::Extended(x) if x.request == "posix-rename@openssh.com" => {
            let mut bytes = bytes::Bytes::from(x.data.clone());
            match russh_sftp::de::from_bytes::<russh_sftp::extensions::HardlinkExtension>(
                &mut bytes,
            ) {
                Ok(n) => vec![norm(&n.oldpath), norm(&n.newpath)],
                Err(_) => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// A queued request with the share of the write budget its data holds.
type Queued = (HandleRequest, Option<OwnedSemaphorePermit>);

struct HandleQueue {
    tx: mpsc::UnboundedSender<Queued>,
    /// The path the handle was opened on (its CLOSE takes a turn there).
    path: Option<String>,
}

type Handles = Arc<Mutex<HashMap<String, HandleQueue>>>;

/// What one frame held.
enum Frame {
    Packet(Packet),
    /// A request whose type is unknown (answered OP_UNSUPPORTED) or that
    /// could not be decoded (BAD_MESSAGE): its id, if it had one.
    Refused(Option<u32>, StatusCode, &'static str),
}

/// Reads one frame: `Ok(None)` at the end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let len = match r.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 || len > MAX_PACKET + 1024 {
        // Not SFTP (or a length no client sends): nothing after it can be framed.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a packet of {len} bytes is not SFTP"),
        ));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await?;
    let raw = buf.freeze();
    let kind = raw[0];
    let id = (raw.len() >= 5).then(|| (&raw[1..5]).get_u32());
    let mut bytes = raw.clone();
    Ok(Some(match Packet::try_from(&mut bytes) {
        Ok(p) => Frame::Packet(p),
        // Requests are types 1 and 3–20, and 200 (extended).
        Err(_) if matches!(kind, 1 | 3..=20 | 200) => Frame::Refused(
            id,
            StatusCode::BadMessage,
            "the request could not be decoded",
        ),
        Err(_) => Frame::Refused(id, StatusCode::OpUnsupported, "unknown request type"),
    }))
}

/// What a handle's task needs besides its own state.
struct HandleCtx {
    fs: Arc<Fs>,
    name: String,
    out: mpsc::UnboundedSender<Answer>,
    handles: Handles,
    reads: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
}

/// A handle's state, given up (an upload aborted, the transfer logged)
/// however its task ends without CLOSE: the client's end, or the task
/// stopped when the connection is gone.
struct Owned {
    fs: Arc<Fs>,
    open: Option<Open>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.fs.abandon(open);
        }
    }
}

/// The task of one handle: its requests in order, until CLOSE or the end.
async fn handle_task(ctx: HandleCtx, open: Open, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut owned = Owned {
        fs: Arc::clone(&ctx.fs),
        open: Some(open),
    };
    while let Some((request, write_share)) = rx.recv().await {
        if write_share.is_none() {
            ctx.queued.fetch_sub(1, Ordering::Relaxed);
        }
        let Some(open) = owned.open.as_mut() else {
            break;
        };
        let answer = match request {
            HandleRequest::Close { id, turn } => {
                ctx.handles.lock().await.remove(&ctx.name);
                let open = owned.open.take().expect("open until CLOSE");
                let reply = ctx.fs.close(id, open).await;
                let _ = ctx.out.send((reply.into(), None));
                // Requests on this path sent after the CLOSE go on now.
                drop(turn);
                return;
            }
            HandleRequest::Read { id, offset, len } => {
                // The answer's share of the read budget, before it is made.
                let len = len.clamp(1, MAX_DATA);
                let Ok(share) = Arc::clone(&ctx.reads).acquire_many_owned(len).await else {
                    break;
                };
                (ctx.fs.read(open, id, offset, len).await, Some(share))
            }
            other => {
                let reply = ctx.fs.on_handle(open, other).await;
                drop(write_share);
                (reply.into(), None)
            }
        };
        if ctx.out.send(answer).is_err() {
            break;
        }
    }
}

/// A request on a handle, or `None` for a path request.
fn for_handle(p: Packet) -> Result<(String, HandleRequest), Box<Packet>> {
    Ok(match p {
        Packet::Read(r) => (
            r.handle,
            HandleRequest::Read {
                id: r.id,
                offset: r.offset,
                len: r.len,
            },
        ),
        Packet::Write(w) => (
            w.handle,
            HandleRequest::Write {
                id: w.id,
                offset: w.offset,
                data: w.data,
            },
        ),
        Packet::Close(c) => (
            c.handle,
            HandleRequest::Close {
                id: c.id,
                turn: None,
            },
        ),
        Packet::Fstat(f) => (f.handle, HandleRequest::Fstat { id: f.id }),
        Packet::FSetStat(f) => (
            f.handle,
            HandleRequest::FSetStat {
                id: f.id,
                attrs: f.attrs,
            },
        ),
        Packet::ReadDir(r) => (r.handle, HandleRequest::ReadDir { id: r.id }),
        other => return Err(Box::new(other)),
    })
}

/// Waits until `gone` says the connection is gone (or its sender is dropped).
async fn gone_now(gone: &mut watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await;
}

/// The tasks of one channel: stopped together when the connection is gone.
#[derive(Clone)]
struct Tasks {
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl Tasks {
    fn new() -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Runs `task` until it ends or the tasks are stopped (then it is
    /// dropped where it is: what it held comes back).
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Waits for every task; stops them all if `gone` says so first.
    async fn finish(&self, gone: &mut watch::Receiver<bool>) {
        self.tracker.close();
        let stopped = tokio::select! {
            () = self.tracker.wait() => false,
            () = gone_now(gone) => true,
        };
        if stopped {
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Serves SFTP on `stream` until the client ends it; then, once the last
/// answer is out, runs `ending` (the exit status, which scp waits for) and
/// sends EOF and CLOSE. When `gone` says the connection itself is gone (a
/// killed client), every task is stopped and answers are dropped rather
/// than waited on: nothing could send them, and what they hold must come back.
pub(crate) async fn run<S, E>(stream: S, fs: Arc<Fs>, ending: E, mut gone: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Future<Output = ()>,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (out, mut answers) = mpsc::unbounded_channel::<Answer>();
    let mut writer_gone = gone.clone();
    let writing = tokio::spawn(async move {
        let sending = async {
            while let Some((p, share)) = answers.recv().await {
                let bytes = match p.encode() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode an SFTP answer");
                        continue;
                    }
                };
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
                drop(share);
            }
            let _ = writer.flush().await;
        };
        tokio::select! {
            () = sending => {}
            () = gone_now(&mut writer_gone) => {}
        }
        // Dropping what is still queued gives back its budget.
        drop(answers);
        writer
    });
    let handles: Handles = Arc::default();
    let next = AtomicU64::new(1);
    let limit = Arc::new(Semaphore::new(CONCURRENT));
    let writes = Arc::new(Semaphore::new(WRITE_BUDGET as usize));
    let reads = Arc::new(Semaphore::new(READ_BUDGET as usize));
    let queued = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Order::default());
    let (paths, handle_tasks) = (Tasks::new(), Tasks::new());
    let reading = async {
        loop {
            let request = match read_frame(&mut reader).await {
                Ok(Some(Frame::Packet(p))) => p,
                Ok(Some(Frame::Refused(id, status_code, why))) => {
                    tracing::debug!(user = %fs.user, ?id, why, "SFTP request refused");
                    if let Some(id) = id {
                        let _ = out.send((code(id, status_code, why).into(), None));
                    }
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(user = %fs.user, error = %e, "the SFTP stream ended");
                    break;
                }
            };
            let id = request.get_request_id();
            tracing::trace!(id, kind = packet_kind(&request), "SFTP request");
            if let Packet::Init(_) = request {
                let _ = out.send((Fs::version().into(), None));
                continue;
            }
            let (h, mut queued_request) = match for_handle(request) {
                Ok(x) => x,
                Err(request) => {
                    let request = *request;
                    // Its place among the requests on its paths, as it came.
                    let mut turn = order.take(paths_of(&request));
                    let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                        break;
                    };
                    let ctx = PathCtx {
                        fs: Arc::clone(&fs),
                        out: out.clone(),
                        handles: Arc::clone(&handles),
                        reads: Arc::clone(&reads),
                        queued: Arc::clone(&queued),
                        number: next.fetch_add(1, Ordering::Relaxed),
                        handle_tasks: handle_tasks.clone(),
                    };
                    paths.spawn(async move {
                        let _permit = permit;
                        turn.ready().await;
                        serve_path(request, ctx).await;
                        drop(turn);
                    });
                    continue;
                }
            };
            let share = match &queued_request {
                HandleRequest::Write { data, .. } => {
                    let n = (data.len() as u32).clamp(1, WRITE_BUDGET);
                    match Arc::clone(&writes).acquire_many_owned(n).await {
                        Ok(s) => Some(s),
                        Err(_) => break,
                    }
                }
                _ => None,
            };
            let map = handles.lock().await;
            if let (HandleRequest::Close { turn, .. }, Some(q)) = (&mut queued_request, map.get(&h))
                && let Some(path) = &q.path
            {
                // Requests on the handle's path sent after its CLOSE wait for it.
                *turn = Some(order.take(vec![path.clone()]));
            }
            let reply = match map.get(&h) {
                None => Some(code(id, StatusCode::Failure, "no such handle")),
                Some(_) if share.is_none() && queued.load(Ordering::Relaxed) >= QUEUED => {
                    Some(code(
                        id,
                        StatusCode::Failure,
                        "too many requests waiting: wait for answers before sending more",
                    ))
                }
                Some(q) => {
                    if share.is_none() {
                        queued.fetch_add(1, Ordering::Relaxed);
                    }
                    // In order, behind the handle's earlier requests.
                    match q.tx.send((queued_request, share)) {
                        Ok(()) => None,
                        Err(_) => Some(code(id, StatusCode::Failure, "the handle is closed")),
                    }
                }
            };
            drop(map);
            if let Some(reply) = reply {
                let _ = out.send((reply.into(), None));
            }
        }
    };
    let gone_first = tokio::select! {
        () = reading => false,
        () = gone_now(&mut gone) => true,
    };
    if gone_first {
        paths.stop.cancel();
        handle_tasks.stop.cancel();
    }
    // The client is done, or gone: what it sent is finished (or, if it is
    // gone, stopped); then the handles end (an upload not closed is given
    // up) and the last answers go out.
    paths.finish(&mut gone).await;
    handles.lock().await.clear();
    handle_tasks.finish(&mut gone).await;
    drop(out);
    let writer = writing.await;
    ending.await;
    if let Ok(mut writer) = writer {
        // EOF, then CLOSE when the stream is dropped.
        let _ = writer.shutdown().await;
    }
}

/// What a path request's task needs.
struct PathCtx {
    fs: Arc<Fs>,
    out: mpsc::UnboundedSender<Answer>,
    handles: Handles,
    reads: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    number: u64,
    handle_tasks: Tasks,
}

async fn serve_path(request: Packet, ctx: PathCtx) {
    let PathCtx {
        fs,
        out,
        handles,
        reads,
        queued,
        number,
        handle_tasks,
    } = ctx;
    let id = request.get_request_id();
    let opened = match request {
        Packet::Open(o) => fs.open(&o.filename, o.pflags, &o.attrs).await,
        Packet::OpenDir(o) => fs.opendir(&o.path).await,
        other => {
            let _ = out.send((fs.on_path(other).await.into(), None));
            return;
        }
    };
    let reply = match opened {
        Err(e) => status(id, &e),
        Ok(open) => {
            let mut map = handles.lock().await;
            if map.len() as u64 >= fs.max_handles {
                drop(map);
                fs.abandon(open);
                code(id, StatusCode::Failure, "too many open handles")
            } else {
                let name = format!("h{number}");
                let (tx, rx) = mpsc::unbounded_channel();
                let path = open.path().map(str::to_owned);
                map.insert(name.clone(), HandleQueue { tx, path });
                drop(map);
                let ctx = HandleCtx {
                    fs,
                    name: name.clone(),
                    out: out.clone(),
                    handles,
                    reads,
                    queued,
                };
                handle_tasks.spawn(handle_task(ctx, open, rx));
                handle(id, name)
            }
        }
    };
    let _ = out.send((reply.into(), None));
}

/// A request's kind, for traces (never its data).
fn packet_kind(p: &Packet) -> &'static str {
    match p {
        Packet::Init(_) => "init",
        Packet::Open(_) => "open",
        Packet::Close(_) => "close",
        Packet::Read(_) => "read",
        Packet::Write(_) => "write",
        Packet::Lstat(_) => "lstat",
        Packet::Fstat(_) => "fstat",
        Packet::SetStat(_) => "setstat",
        Packet::FSetStat(_) => "fsetstat",
        Packet::OpenDir(_) => "opendir",
        Packet::ReadDir(_) => "readdir",
        Packet::Remove(_) => "remove",
        Packet::MkDir(_) => "mkdir",
        Packet::RmDir(_) => "rmdir",
        Packet::RealPath(_) => "realpath",
        Packet::Stat(_) => "stat",
        Packet::Rename(_) => "rename",
        Packet::ReadLink(_) => "readlink",
        Packet::Symlink(_) => "symlink",
        Packet::Extended(_) => "extended",
        _ => "other",
    }
}
