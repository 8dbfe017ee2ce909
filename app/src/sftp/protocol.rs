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
//! When the client ends the channel (EOF or CLOSE) or sends something that
//! cannot be framed, reading stops, the handles' tasks finish what they were
//! sent and drop their state (an upload not closed is aborted), the last
//! answers go out, then EOF and CLOSE are sent: [`run`] returns only then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;

use super::fs::{Fs, MAX_PACKET, Open, code, handle, status};

/// Path requests served at once per channel.
const CONCURRENT: usize = 64;
/// Requests queued per handle before the reader waits: the reader then
/// stops reading the channel, and SSH flow control holds the client back.
/// What is queued here lies outside the transfer cache, so it stays small.
const QUEUE: usize = 8;
/// Answers queued for the writer.
const ANSWERS: usize = 32;

type Handles = Arc<Mutex<HashMap<String, mpsc::Sender<Packet>>>>;

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

/// The task of one handle: its requests in order, until CLOSE or the end.
async fn handle_task(
    fs: Arc<Fs>,
    id: String,
    mut open: Open,
    mut rx: mpsc::Receiver<Packet>,
    out: mpsc::Sender<Packet>,
    handles: Handles,
) {
    while let Some(request) = rx.recv().await {
        let reply = match request {
            Packet::Close(c) => {
                handles.lock().await.remove(&id);
                let reply = fs.close(c.id, open).await;
                let _ = out.send(reply).await;
                return;
            }
            other => fs.on_handle(&mut open, other).await,
        };
        if out.send(reply).await.is_err() {
            break;
        }
    }
    fs.abandon(open);
}

/// Serves SFTP on `stream` until the client ends it; then, once the last
/// answer is out, runs `ending` (the exit status, which scp waits for) and
/// sends EOF and CLOSE.
pub(crate) async fn run<S, E>(stream: S, fs: Arc<Fs>, ending: E)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Future<Output = ()>,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (out, mut answers) = mpsc::channel::<Packet>(ANSWERS);
    let writing = tokio::spawn(async move {
        while let Some(p) = answers.recv().await {
            let bytes = match Bytes::try_from(p) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode an SFTP answer");
                    continue;
                }
            };
            if writer.write_all(&bytes).await.is_err() {
                return writer;
            }
        }
        let _ = writer.flush().await;
        writer
    });
    let handles: Handles = Arc::default();
    let next = AtomicU64::new(1);
    let limit = Arc::new(Semaphore::new(CONCURRENT));
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
        let on_handle = match &request {
            Packet::Init(_) => {
                let _ = out.send(Fs::version()).await;
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
            let tx = handles.lock().await.get(&h).cloned();
            match tx {
                Some(tx) => {
                    // In order, behind the handle's earlier requests.
                    if tx.send(request).await.is_err() {
                        let _ = out
                            .send(code(id, StatusCode::Failure, "the handle is closed"))
                            .await;
                    }
                }
                None => {
                    let _ = out
                        .send(code(id, StatusCode::Failure, "no such handle"))
                        .await;
                }
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        let (fs, out, handles) = (Arc::clone(&fs), out.clone(), Arc::clone(&handles));
        let number = next.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let _permit = permit;
            let opened = match request {
                Packet::Open(o) => Some(fs.open(&o.filename, o.pflags, &o.attrs).await),
                Packet::OpenDir(o) => Some(fs.opendir(&o.path).await),
                other => {
                    let _ = out.send(fs.on_path(other).await).await;
                    None
                }
            };
            let reply = match opened {
                None => return,
                Some(Err(e)) => status(id, &e),
                Some(Ok(open)) => {
                    let mut map = handles.lock().await;
                    if map.len() as u64 >= fs.max_handles {
                        drop(map);
                        fs.abandon(open);
                        code(id, StatusCode::Failure, "too many open handles")
                    } else {
                        let name = format!("h{number}");
                        let (tx, rx) = mpsc::channel(QUEUE);
                        map.insert(name.clone(), tx);
                        drop(map);
                        tokio::spawn(handle_task(
                            Arc::clone(&fs),
                            name.clone(),
                            open,
                            rx,
                            out.clone(),
                            handles,
                        ));
                        handle(id, name)
                    }
                }
            };
            let _ = out.send(reply).await;
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
