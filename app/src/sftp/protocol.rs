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
//!   once;
//! - answers go out through one writer, in the order they are ready (each
//!   carries its request's id).
//!
//! **Memory and deadlock.** russh hands the channel's data to this loop
//! through a bounded queue and stops its whole connection while that queue
//! is full: if this loop stopped reading while its own answers wait to be
//! sent, neither side would move. So the reader never waits for an answer
//! to be sent: answers go into an unbounded queue, and what holds memory
//! is bounded where it is made. The data of WRITE requests waiting for their
//! handle takes a share of [`WRITE_BUDGET`] before the reader queues it (the
//! reader waits for the share, which handle tasks give back as they write,
//! without waiting on the writer); DATA answers take a share of
//! [`READ_BUDGET`] before they are made (the handle task waits for it; the
//! writer gives it back once the answer is sent). Other requests queued on a
//! handle are few bytes each, and at most [`QUEUED`] per handle.
//!
//! When the client ends the channel (EOF or CLOSE) or sends something that
//! cannot be framed, reading stops, the handles' tasks finish what they were
//! sent and drop their state (an upload not closed is aborted), the last
//! answers go out, then EOF and CLOSE are sent: [`run`] returns only then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::fs::{Fs, MAX_DATA, MAX_PACKET, Open, code, handle, status};

/// Path requests served at once per channel.
const CONCURRENT: usize = 64;
/// Bytes of WRITE data waiting for their handles, per channel: enough to
/// keep the handle busy (the transfer cache does the real buffering).
const WRITE_BUDGET: u32 = 256 << 10;
/// Bytes of DATA answers waiting to be sent, per channel.
const READ_BUDGET: u32 = 256 << 10;
/// Requests other than WRITE waiting for one handle.
const QUEUED: usize = 4096;

/// An answer, with the share of a budget it holds until it is sent.
type Answer = (Packet, Option<OwnedSemaphorePermit>);

/// A request for a handle, with the share of the write budget its data holds.
type Queued = (Packet, Option<OwnedSemaphorePermit>);

struct HandleQueue {
    tx: mpsc::UnboundedSender<Queued>,
    waiting: Arc<AtomicUsize>,
}

type Handles = Arc<Mutex<HashMap<String, HandleQueue>>>;

/// Reads one packet: `Ok(None)` at the end of the stream.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Packet>> {
    let len = match r.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 || len > MAX_PACKET + 1024 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a packet of {len} bytes is not SFTP"),
        ));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await?;
    let mut bytes = buf.freeze();
    Packet::try_from(&mut bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// What a handle's task needs besides its own state.
struct HandleCtx {
    fs: Arc<Fs>,
    name: String,
    out: mpsc::UnboundedSender<Answer>,
    handles: Handles,
    reads: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// The task of one handle: its requests in order, until CLOSE or the end.
async fn handle_task(ctx: HandleCtx, mut open: Open, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some((request, write_share)) = rx.recv().await {
        if write_share.is_none() {
            ctx.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let answer = match request {
            Packet::Close(c) => {
                ctx.handles.lock().await.remove(&ctx.name);
                let reply = ctx.fs.close(c.id, open).await;
                let _ = ctx.out.send((reply, None));
                return;
            }
            Packet::Read(r) => {
                // The answer's share of the read budget, before it is made.
                let len = r.len.clamp(1, MAX_DATA);
                let Ok(share) = Arc::clone(&ctx.reads).acquire_many_owned(len).await else {
                    break;
                };
                (
                    ctx.fs.on_handle(&mut open, Packet::Read(r)).await,
                    Some(share),
                )
            }
            other => {
                let reply = ctx.fs.on_handle(&mut open, other).await;
                drop(write_share);
                (reply, None)
            }
        };
        if ctx.out.send(answer).is_err() {
            break;
        }
    }
    ctx.fs.abandon(open);
}

/// Serves SFTP on `stream` until the client ends it; then, once the last
/// answer is out, runs `ending` (the exit status, which scp waits for) and
/// sends EOF and CLOSE. When `gone` says the connection itself is gone (a
/// killed client), answers are dropped rather than waited on: nothing could
/// send them, and what they hold must come back.
pub(crate) async fn run<S, E>(stream: S, fs: Arc<Fs>, ending: E, mut gone: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Future<Output = ()>,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (out, mut answers) = mpsc::unbounded_channel::<Answer>();
    let writing = tokio::spawn(async move {
        let sending = async {
            while let Some((p, share)) = answers.recv().await {
                let bytes = match Bytes::try_from(p) {
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
            _ = gone.wait_for(|g| *g) => {}
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
    let mut tasks = JoinSet::new();
    loop {
        let request = match read_packet(&mut reader).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(user = %fs.user, error = %e, "the SFTP stream ended");
                break;
            }
        };
        let id = request.get_request_id();
        tracing::trace!(id, kind = packet_kind(&request), "SFTP request");
        let on_handle = match &request {
            Packet::Init(_) => {
                let _ = out.send((Fs::version(), None));
                continue;
            }
            Packet::Read(r) => Some(r.handle.clone()),
            Packet::Write(w) => Some(w.handle.clone()),
            Packet::Close(c) => Some(c.handle.clone()),
            Packet::Fstat(f) => Some(f.handle.clone()),
            Packet::FSetStat(f) => Some(f.handle.clone()),
            Packet::ReadDir(r) => Some(r.handle.clone()),
            _ => None,
        };
        if let Some(h) = on_handle {
            let share = match &request {
                Packet::Write(w) => {
                    let n = (w.data.len() as u32).clamp(1, WRITE_BUDGET);
                    match Arc::clone(&writes).acquire_many_owned(n).await {
                        Ok(s) => Some(s),
                        Err(_) => break,
                    }
                }
                _ => None,
            };
            let map = handles.lock().await;
            let reply = match map.get(&h) {
                None => Some(code(id, StatusCode::Failure, "no such handle")),
                Some(q) if share.is_none() && q.waiting.load(Ordering::Relaxed) >= QUEUED => {
                    Some(code(
                        id,
                        StatusCode::Failure,
                        "too many requests waiting for this handle",
                    ))
                }
                Some(q) => {
                    if share.is_none() {
                        q.waiting.fetch_add(1, Ordering::Relaxed);
                    }
                    // In order, behind the handle's earlier requests.
                    match q.tx.send((request, share)) {
                        Ok(()) => None,
                        Err(_) => Some(code(id, StatusCode::Failure, "the handle is closed")),
                    }
                }
            };
            drop(map);
            if let Some(reply) = reply {
                let _ = out.send((reply, None));
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        let (fs, out, handles, reads) = (
            Arc::clone(&fs),
            out.clone(),
            Arc::clone(&handles),
            Arc::clone(&reads),
        );
        let number = next.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let _permit = permit;
            let opened = match request {
                Packet::Open(o) => fs.open(&o.filename, o.pflags, &o.attrs).await,
                Packet::OpenDir(o) => fs.opendir(&o.path).await,
                other => {
                    let _ = out.send((fs.on_path(other).await, None));
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
                        let waiting = Arc::new(AtomicUsize::new(0));
                        map.insert(
                            name.clone(),
                            HandleQueue {
                                tx,
                                waiting: Arc::clone(&waiting),
                            },
                        );
                        drop(map);
                        let ctx = HandleCtx {
                            fs,
                            name: name.clone(),
                            out: out.clone(),
                            handles,
                            reads,
                            waiting,
                        };
                        tokio::spawn(handle_task(ctx, open, rx));
                        handle(id, name)
                    }
                }
            };
            let _ = out.send((reply, None));
        });
        // Reap what is done, so the set does not grow with the session.
        while tasks.try_join_next().is_some() {}
    }
    // The client is gone or done: path requests finish, handles end (what was
    // not closed is abandoned: an upload aborts), the last answers go out.
    while tasks.join_next().await.is_some() {}
    handles.lock().await.clear();
    drop(out);
    let writer = writing.await;
    ending.await;
    if let Ok(mut writer) = writer {
        // EOF, then CLOSE when the stream is dropped.
        let _ = writer.shutdown().await;
    }
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
