//! The packet loop in process: a client on one end of an in-memory duplex
//! stream, [`protocol::run`] on the other, a Memory sandbox behind it. The
//! real-client tests (OpenSSH, paramiko, sshfs...) are in
//! `app/tests/integration/sftp`; these reach what no client sends on purpose
//! and run in milliseconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::OpenFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::fs::Fs;
use super::protocol;
use crate::serve::metrics::Metrics;
use corral::cache::CacheConfig;
use corral::{Corral, Identity};

/// A server on one end of a duplex stream; the other end is returned.
struct Server {
    corral: Corral,
    done: tokio::task::JoinHandle<()>,
    _gone: watch::Sender<bool>,
}

fn serve(user: &str) -> (Server, DuplexStream) {
    let corral = Corral::from_json(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        CacheConfig::default(),
    )
    .expect("corral");
    let sb = corral.sandbox(&Identity::user(user)).expect("sandbox");
    let fs = Arc::new(Fs {
        sb,
        user: user.to_owned(),
        peer: None,
        overwrite: None,
        refuse_setstat: false,
        max_handles: 64,
        metrics: Arc::new(Metrics::default()),
        epoch: SystemTime::UNIX_EPOCH,
    });
    let (client, server) = tokio::io::duplex(1 << 20);
    let (gone_tx, gone) = watch::channel(false);
    let done = tokio::spawn(protocol::run(server, fs, async {}, gone));
    (
        Server {
            corral,
            done,
            _gone: gone_tx,
        },
        client,
    )
}

/// Writes one raw packet: length, type, then the body as given.
async fn send(s: &mut DuplexStream, kind: u8, body: &[u8]) {
    let mut p = BytesMut::new();
    p.put_u32(1 + body.len() as u32);
    p.put_u8(kind);
    p.put_slice(body);
    s.write_all(&p).await.expect("send");
}

/// Reads one raw packet: its type and body.
async fn receive(s: &mut DuplexStream) -> (u8, Bytes) {
    let len = tokio::time::timeout(Duration::from_secs(5), s.read_u32())
        .await
        .expect("an answer within 5 s")
        .expect("length");
    let mut buf = vec![0; len as usize];
    s.read_exact(&mut buf).await.expect("body");
    let mut b = Bytes::from(buf);
    let kind = b.get_u8();
    (kind, b)
}

fn string(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

const STATUS: u8 = 101;
const HANDLE: u8 = 102;

/// The status code of a STATUS answer to request `id`.
fn status_of(kind: u8, mut body: Bytes, id: u32) -> u32 {
    assert_eq!(kind, STATUS, "a STATUS answer");
    assert_eq!(body.get_u32(), id, "the answer's id");
    body.get_u32()
}

async fn init(s: &mut DuplexStream) {
    send(s, 1, &3u32.to_be_bytes()).await;
    let (kind, mut body) = receive(s).await;
    assert_eq!(kind, 2, "VERSION");
    assert_eq!(body.get_u32(), 3);
}

/// Creates or truncates `path` and writes `data` (russh-sftp's `write`
/// opens without CREAT, so it only rewrites files that exist).
async fn put(sftp: &SftpSession, path: &str, data: &[u8]) {
    let mut f = sftp.create(path).await.expect("create");
    f.write_all(data).await.expect("write");
    f.shutdown().await.expect("close");
}

#[tokio::test]
async fn a_client_writes_lists_renames_and_removes() {
    let (server, stream) = serve("alice");
    let sftp = SftpSession::new(stream).await.expect("session");
    sftp.create_dir("/d").await.expect("mkdir");
    // WRITE without CREAT does not make a file.
    assert!(sftp.write("/d/a.txt", b"no").await.is_err());
    put(&sftp, "/d/a.txt", b"hello").await;
    assert_eq!(sftp.read("/d/a.txt").await.expect("read"), b"hello");
    let names: Vec<String> = sftp
        .read_dir("/d")
        .await
        .expect("readdir")
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["a.txt"]);
    assert_eq!(sftp.metadata("/d/a.txt").await.expect("stat").size, Some(5));

    // SSH_FXP_RENAME (v3) never replaces: the target stays as it was.
    put(&sftp, "/b.txt", b"other").await;
    assert!(sftp.rename("/d/a.txt", "/b.txt").await.is_err());
    assert_eq!(sftp.read("/b.txt").await.expect("read b"), b"other");
    sftp.rename("/d/a.txt", "/c.txt").await.expect("rename");

    // RMDIR refuses a file and a directory that is not empty; REMOVE refuses a directory.
    assert!(sftp.remove_dir("/c.txt").await.is_err());
    put(&sftp, "/d/x", b"x").await;
    assert!(sftp.remove_dir("/d").await.is_err());
    assert!(sftp.remove_file("/d").await.is_err());
    sftp.remove_file("/d/x").await.expect("remove x");
    sftp.remove_dir("/d").await.expect("rmdir");
    // Opening a file as a directory is refused.
    assert!(sftp.read_dir("/c.txt").await.is_err());

    let sb = server
        .corral
        .sandbox(&Identity::user("alice"))
        .expect("sandbox");
    assert_eq!(
        &sb.read("/c.txt").await.expect("in the sandbox")[..],
        b"hello"
    );
    drop(sftp);
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the loop ends with its client")
        .expect("no panic");
}

#[tokio::test]
async fn exclusive_create_fails_when_the_file_exists() {
    let (_server, stream) = serve("alice");
    let sftp = SftpSession::new(stream).await.expect("session");
    let excl = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
    let mut f = sftp.open_with_flags("/new", excl).await.expect("first");
    f.write_all(b"1").await.expect("write");
    f.shutdown().await.expect("close");
    drop(f);
    assert!(sftp.open_with_flags("/new", excl).await.is_err());
    assert_eq!(sftp.read("/new").await.expect("read"), b"1");
}

#[tokio::test]
async fn unknown_and_malformed_requests_get_an_answer_and_the_session_goes_on() {
    let (_server, mut s) = serve("alice");
    init(&mut s).await;
    // Type 99 is no request: OP_UNSUPPORTED (8) for its id.
    send(&mut s, 99, &7u32.to_be_bytes()).await;
    let (kind, body) = receive(&mut s).await;
    assert_eq!(status_of(kind, body, 7), 8);
    // An OPEN (3) cut short: BAD_MESSAGE (5).
    let mut b = BytesMut::new();
    b.put_u32(8);
    b.put_u32(1000);
    send(&mut s, 3, &b).await;
    let (kind, body) = receive(&mut s).await;
    assert_eq!(status_of(kind, body, 8), 5);
    // A READ on a handle never given: FAILURE (4).
    let mut b = BytesMut::new();
    b.put_u32(9);
    string(&mut b, b"h999");
    b.put_u64(0);
    b.put_u32(10);
    send(&mut s, 5, &b).await;
    let (kind, body) = receive(&mut s).await;
    assert_eq!(status_of(kind, body, 9), 4);
    // Still serving: STAT (17) of the root answers ATTRS (105).
    let mut b = BytesMut::new();
    b.put_u32(10);
    string(&mut b, b"/");
    send(&mut s, 17, &b).await;
    let (kind, mut body) = receive(&mut s).await;
    assert_eq!(kind, 105);
    assert_eq!(body.get_u32(), 10);
}

#[tokio::test]
async fn a_length_no_client_sends_ends_the_session() {
    let (server, mut s) = serve("alice");
    init(&mut s).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.expect("send");
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the loop ends")
        .expect("no panic");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("EOF");
    assert!(rest.is_empty(), "nothing after a frame that is not SFTP");
}

/// Opens `path` for writing with the given flags (raw), returning the handle.
async fn open_raw(s: &mut DuplexStream, id: u32, path: &str, pflags: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(id);
    string(&mut b, path.as_bytes());
    b.put_u32(pflags);
    b.put_u32(0); // no attributes
    send(s, 3, &b).await;
    let (kind, mut body) = receive(s).await;
    assert_eq!(kind, HANDLE, "a handle for {path}");
    assert_eq!(body.get_u32(), id);
    let n = body.get_u32() as usize;
    body.split_to(n)
}

async fn write_raw(s: &mut DuplexStream, id: u32, handle: &[u8], offset: u64, data: &[u8]) {
    let mut b = BytesMut::new();
    b.put_u32(id);
    string(&mut b, handle);
    b.put_u64(offset);
    string(&mut b, data);
    send(s, 6, &b).await;
}

#[tokio::test]
async fn pipelined_writes_out_of_order_land_in_place() {
    let (server, mut s) = serve("alice");
    init(&mut s).await;
    // WRITE | CREAT | TRUNC
    let h = open_raw(&mut s, 1, "/f", 0x02 | 0x08 | 0x10).await;
    // Three writes sent before any answer, the last part first.
    write_raw(&mut s, 2, &h, 8, b"CCCC").await;
    write_raw(&mut s, 3, &h, 0, b"AAAA").await;
    write_raw(&mut s, 4, &h, 4, b"BBBB").await;
    let mut b = BytesMut::new();
    b.put_u32(5);
    string(&mut b, &h);
    send(&mut s, 4, &b).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (kind, mut body) = receive(&mut s).await;
        assert_eq!(kind, STATUS);
        ids.push(body.get_u32());
        assert_eq!(body.get_u32(), 0, "OK");
    }
    // A handle's requests are answered in the order they came.
    assert_eq!(ids, [2, 3, 4, 5]);
    let sb = server.corral.sandbox(&Identity::user("alice")).expect("sb");
    assert_eq!(&sb.read("/f").await.expect("read")[..], b"AAAABBBBCCCC");
}

#[tokio::test]
async fn an_upload_cut_off_is_given_up_and_nothing_is_left_behind() {
    let (server, mut s) = serve("alice");
    init(&mut s).await;
    let h = open_raw(&mut s, 1, "/cut", 0x02 | 0x08 | 0x10).await;
    write_raw(&mut s, 2, &h, 0, &[7; 1000]).await;
    let (kind, body) = receive(&mut s).await;
    assert_eq!(status_of(kind, body, 2), 0);
    // The stream ends without a CLOSE.
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the loop ends")
        .expect("no panic");
    let cache = server.corral.cache();
    assert_eq!(
        cache.settle(Duration::from_secs(5)).await,
        0,
        "aborts settle"
    );
    let sb = server.corral.sandbox(&Identity::user("alice")).expect("sb");
    let err = sb
        .stat("/cut")
        .await
        .expect_err("no file from a cut upload");
    assert_eq!(err.kind(), corral::ErrorKind::NotFound);
    let m = cache.metrics();
    assert_eq!(
        (m.reserved, m.holders),
        (0, 0),
        "the upload's cache given back"
    );
    assert!(m.high_water > 0, "the upload held cache while it ran");
}
