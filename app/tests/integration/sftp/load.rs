//! Killed clients, a stopped server and load, on Garage.
//!
//! - SIGTERM to the server mid-upload: it exits 0 within seconds, the
//!   upload's stored parts kept for the client to continue.
//! - `kill -9` of a client in the middle of an upload and of a download:
//!   the upload's whole parts are kept (one pending upload, no object), and
//!   the cache's counters come back to 0.
//! - 32 sessions of 8 users at once move 2 GiB (16 uploads and 16
//!   downloads of 64 MiB) through a cache that fits 4 transfers: every file
//!   is byte-identical, all 32 sessions are open at once, the cache is used
//!   whole, the server's peak anonymous RSS stays within the cache + 75 MiB
//!   (19 MiB for password checks, 1 MiB per session, 24 MiB for the rest),
//!   and every counter is back to 0 at the end.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::cache::CacheConfig;
use corral::{Corral, Identity, ObjectStorage};
use corral_domain::ObjectKey;
use corral_fixtures::servers::S3Server;

use super::{Server, openssh, pattern};

const MIB: usize = 1 << 20;

fn mappings(s: &S3Server, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"load","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

/// An `sftp -b` client in its own process group, so that it can be killed
/// whole, limited to `kbits` Kbit/s (0: no limit).
pub(crate) fn spawn_sftp(
    server: &Server,
    user: &str,
    batch: &str,
    cwd: &std::path::Path,
    kbits: u32,
) -> std::process::Child {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = cwd.join(format!("batch-{user}-{n}"));
    std::fs::write(&file, batch).expect("batch");
    let mut c = openssh("sftp", server, user);
    if kbits > 0 {
        c.args(["-l", &kbits.to_string()]);
    }
    c.args(["-P", &server.port.to_string(), "-b"])
        .arg(&file)
        .arg(format!("{user}@127.0.0.1"))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    c.spawn().expect("sftp")
}

/// Waits until `f` holds, failing after `limit`.
pub(crate) fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) async fn pending(raw: &Arc<dyn ObjectStorage>) -> usize {
    raw.list_pending_uploads(&ObjectKey::from_raw(""))
        .await
        .expect("pending")
        .len()
}

#[test]
fn a_killed_client_leaves_nothing_behind() {
    let s3 = S3Server::garage();
    s3.create_bucket("load");
    let server = Server::start(
        &mappings(&s3, "users/%u"),
        &["alice"],
        &["--max-cloud-cache-upload-size", "8MiB"],
    );
    let raw = crate::common::raw_backend(&mappings(&s3, ""), "x");
    let corral =
        Corral::from_json(&mappings(&s3, "users/%u"), CacheConfig::default()).expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(48 * MIB, 3);
    std::fs::write(dir.path().join("up.bin"), &data).expect("write");
    rt.block_on(sb.write("/down.bin", &data, None))
        .expect("plant");

    for (what, batch) in [
        ("upload", "put up.bin /up.bin\n"),
        ("download", "get /down.bin down.bin\n"),
    ] {
        // 40 Mbit/s: the transfer takes about ten seconds.
        let mut client = spawn_sftp(&server, "alice", batch, dir.path(), 40_000);
        wait_for(
            &format!("the {what} to start"),
            Duration::from_secs(20),
            || server.metrics()["corral_cache_holders"] > 0.0,
        );
        // Killed mid-transfer: once the upload has a multipart upload on
        // the server (its first part sent), or once the download has
        // bytes on disk.
        if what == "upload" {
            wait_for(
                "a multipart upload on the server",
                Duration::from_secs(20),
                || rt.block_on(pending(&raw)) > 0,
            );
        } else {
            wait_for("downloaded bytes", Duration::from_secs(20), || {
                std::fs::metadata(dir.path().join("down.bin")).is_ok_and(|m| m.len() > 0)
            });
        }
        // kill -9 of the whole client (sshpass, sftp and ssh).
        let pgid = client.id() as i32;
        assert_eq!(kill_group(-pgid), 0, "kill");
        let _ = client.wait();
        let key = format!("corral_transfers_total{{direction=\"{what}\",result=\"aborted\"}}");
        // The transfer is logged as its handle is given up, just after the
        // session's end.
        wait_for(
            &format!("the {what} to be logged aborted"),
            Duration::from_secs(10),
            || server.metrics().contains_key(&key),
        );
        let m = server.settled();
        assert_eq!(m["corral_cache_reserved_bytes"], 0.0, "{what}: {m:?}");
        assert_eq!(m["corral_cache_in_use_bytes"], 0.0, "{what}: {m:?}");
        assert_eq!(m.get(&key), Some(&1.0), "{what}: {m:?}\n{}", server.log());
    }
    // The upload's whole parts are kept for the client to continue
    // (resume.rs); no object exists.
    assert_eq!(
        server.metrics()["corral_partial_uploads_kept_total"],
        1.0,
        "{}",
        server.log()
    );
    rt.block_on(async {
        assert_eq!(pending(&raw).await, 1, "the kept upload");
        assert_eq!(
            sb.stat("/up.bin").await.map(|_| ()).unwrap_err().kind(),
            corral::ErrorKind::NotFound,
            "a partial object exists"
        );
    });
    assert!(
        !dir.path().join("down.bin").exists()
            || std::fs::read(dir.path().join("down.bin")).expect("read") != data
    );
}

/// Garage, a server over it, and a 48 MiB upload through it at 40 Mbit/s
/// (about ten seconds; its first 8 MiB part is sent after about two), once
/// its multipart upload is on the server.
struct Uploading {
    s3: S3Server,
    raw: Arc<dyn ObjectStorage>,
    rt: tokio::runtime::Runtime,
    server: Server,
    client: std::process::Child,
    _dir: tempfile::TempDir,
}

fn uploading(seed: u64) -> Uploading {
    let s3 = S3Server::garage();
    s3.create_bucket("load");
    let raw = crate::common::raw_backend(&mappings(&s3, ""), "x");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = Server::start(
        &mappings(&s3, "users/%u"),
        &["alice"],
        &["--max-cloud-cache-upload-size", "16MiB"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("up.bin"), pattern(48 * MIB, seed)).expect("write");
    let client = spawn_sftp(&server, "alice", "put up.bin /up.bin\n", dir.path(), 40_000);
    wait_for(
        "a multipart upload on the server",
        Duration::from_secs(30),
        || rt.block_on(pending(&raw)) > 0,
    );
    Uploading {
        s3,
        raw,
        rt,
        server,
        client,
        _dir: dir,
    }
}

#[test]
fn a_killed_server_leaves_nothing_pending_once_restarted() {
    let Uploading {
        s3,
        raw,
        rt,
        mut server,
        mut client,
        _dir,
    } = uploading(5);
    server.kill();
    let _ = kill_group(-(client.id() as i32));
    let _ = client.wait();
    assert_eq!(
        rt.block_on(pending(&raw)),
        1,
        "the killed server's upload is pending"
    );
    // Restarted: uploads pending for longer than the retention are aborted.
    let server = Server::start(
        &mappings(&s3, "users/%u"),
        &["alice"],
        &["--partial-retention", "2s"],
    );
    wait_for(
        "the pending upload to be aborted",
        Duration::from_secs(20),
        || rt.block_on(pending(&raw)) == 0,
    );
    assert!(
        server.log().contains("aborted a stale multipart upload"),
        "{}",
        server.log()
    );
    wait_for("the abort counted", Duration::from_secs(5), || {
        server.metrics()["corral_stale_uploads_aborted_total"] == 1.0
    });
}

#[test]
fn a_stopped_server_keeps_what_its_uploads_stored() {
    let Uploading {
        s3: _s3,
        raw,
        rt,
        mut server,
        mut client,
        _dir,
    } = uploading(6);
    let status = server.terminate(Duration::from_secs(30));
    let client_status = client.wait().expect("client");
    assert!(status.success(), "{status}: {}", server.log());
    assert!(!client_status.success(), "the cut upload reported success");
    // Kept for the client to continue (resume.rs), once its parts in
    // flight were stored: the server waited for them before it stopped.
    assert_eq!(rt.block_on(pending(&raw)), 1, "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("stopping: no new sessions")
            && log.contains("kept the unfinished upload")
            && log.contains(" stopped"),
        "{log}"
    );
}

#[test]
fn a_truncated_cache_file_fails_only_the_transfers_staged_in_it() {
    let s3 = S3Server::garage();
    s3.create_bucket("load");
    let raw = crate::common::raw_backend(&mappings(&s3, ""), "x");
    let corral =
        Corral::from_json(&mappings(&s3, "users/%u"), CacheConfig::default()).expect("corral");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache_file = cache_dir.path().join("cache.bin");
    let shown = cache_file.display().to_string();
    let users = ["u1", "u2", "u3"];
    let server = Server::start(
        &mappings(&s3, "users/%u"),
        &users,
        &[
            "--cloud-cache-file",
            &shown,
            "--max-cloud-cache-size",
            "128MiB",
            "--max-cloud-cache-upload-size",
            "16MiB",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(24 * MIB, 20 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(dir.path().join(format!("up{i}.bin")), d).expect("local");
    }
    let down = corral.sandbox(&Identity::user("u3")).expect("sandbox");
    rt.block_on(down.write("/down.bin", &data[2], None))
        .expect("plant");
    // Two uploads and a download at 40 Mbit/s: each takes about five seconds.
    let mut clients = [
        spawn_sftp(&server, "u1", "put up0.bin /up.bin\n", dir.path(), 40_000),
        spawn_sftp(&server, "u2", "put up1.bin /up.bin\n", dir.path(), 40_000),
        spawn_sftp(
            &server,
            "u3",
            "get /down.bin down.bin\n",
            dir.path(),
            40_000,
        ),
    ];
    wait_for(
        "bytes staged in the cache file",
        Duration::from_secs(20),
        || server.metrics()["corral_cache_in_use_bytes"] > 0.0,
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cache_file)
        .expect("open the cache file")
        .set_len(0)
        .expect("truncate");
    let ok: Vec<bool> = clients
        .iter_mut()
        .map(|c| c.wait().expect("wait").success())
        .collect();
    assert!(
        ok.iter().any(|ok| !ok),
        "no transfer noticed the truncation: {ok:?}"
    );
    assert!(
        server.log().contains("the cache file was truncated"),
        "{}",
        server.log()
    );
    // What completed is exactly what was sent; what failed left nothing.
    for (i, user) in users.iter().take(2).enumerate() {
        let sb = corral.sandbox(&Identity::user(*user)).expect("sandbox");
        match rt.block_on(sb.read("/up.bin")) {
            Ok(got) => {
                assert!(ok[i], "{user}: a failed upload left a file");
                assert!(got[..] == data[i][..], "{user}: the stored bytes differ");
            }
            Err(e) => {
                assert!(!ok[i], "{user}: the upload succeeded but nothing is there");
                assert_eq!(e.kind(), corral::ErrorKind::NotFound, "{e}");
            }
        }
    }
    if ok[2] {
        let got = std::fs::read(dir.path().join("down.bin")).expect("downloaded");
        assert!(got == data[2], "a completed download differs");
    }
    // The server goes on, and so does its cache file.
    let out = super::sftp_batch(
        &server,
        "u1",
        64,
        "put up0.bin /again.bin\nget /again.bin again.bin\n",
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.path().join("again.bin")).expect("again") == data[0]);
    server.settled();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(15);
        while pending(&raw).await > 0 {
            assert!(Instant::now() < deadline, "an upload is left pending");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// SIGKILL to a process group.
pub(crate) fn kill_group(pid: i32) -> i32 {
    let Some(pid) = rustix::process::Pid::from_raw(pid.abs()) else {
        return -1;
    };
    match rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

#[test]
fn thirty_two_sessions_move_2_gib_through_a_cache_of_4_transfers() {
    let _alone = super::timing_group();
    const USERS: usize = 8;
    const PER_USER: usize = 4; // 2 uploads, 2 downloads
    const SIZE: usize = 64 * MIB;
    let s3 = S3Server::garage();
    s3.create_bucket("load");
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // 16 MiB per transfer, 64 MiB in all: four transfers at once.
    let server = Server::start(
        &mappings(&s3, "users/%u"),
        &refs,
        &[
            "--max-cloud-cache-size",
            "64MiB",
            "--max-cloud-cache-upload-size",
            "16MiB",
            "--max-cloud-cache-download-size",
            "16MiB",
            "--cache-wait",
            "600s",
        ],
    );
    let corral =
        Corral::from_json(&mappings(&s3, "users/%u"), CacheConfig::default()).expect("corral");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // Each user uploads two files and downloads two planted ones.
    let content = |u: usize, k: usize| pattern(SIZE, (u * 10 + k) as u64 + 100);
    for (u, name) in names.iter().enumerate() {
        let sb = corral.sandbox(&Identity::user(name)).expect("sandbox");
        for k in 0..2 {
            std::fs::write(dir.path().join(format!("up-{u}-{k}.bin")), content(u, k))
                .expect("write");
            rt.block_on(sb.write(&format!("/down-{k}.bin"), &content(u, k + 2), None))
                .expect("plant");
        }
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    for (u, name) in names.iter().enumerate() {
        for k in 0..PER_USER {
            let batch = if k < 2 {
                format!("put up-{u}-{k}.bin /up-{k}.bin\n")
            } else {
                format!("get /down-{}.bin got-{u}-{}.bin\n", k - 2, k - 2)
            };
            clients.push((
                format!("{name} #{k}"),
                spawn_sftp(&server, name, &batch, dir.path(), 0),
            ));
        }
    }
    let mut peak_anon = 0u64;
    let mut peak_sessions = 0.0f64;
    let mut peak_waiting = 0.0f64;
    while clients
        .iter_mut()
        .any(|(_, c)| c.try_wait().expect("wait").is_none())
    {
        let m = server.metrics();
        peak_sessions = peak_sessions.max(m["corral_sessions"]);
        peak_waiting = peak_waiting.max(m["corral_cache_waiting_transfers"]);
        peak_anon = peak_anon.max(server.anon_rss_kib() * 1024);
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the load did not end in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    for (name, c) in clients {
        let out = c.wait_with_output().expect("output");
        if !out.status.success() {
            let _ = std::fs::write(
                std::env::temp_dir().join("corral-sftp-load.log"),
                server.log(),
            );
        }
        assert!(
            out.status.success(),
            "{name}: {}\ngarage:\n{}\nserver:\n{}",
            String::from_utf8_lossy(&out.stderr),
            s3.log()
                .lines()
                .filter(|l| l.contains("ERROR")
                    || l.contains("WARN")
                    || l.contains("NoSuchUpload")
                    || l.contains("up-1"))
                .take(60)
                .collect::<Vec<_>>()
                .join("\n"),
            server
                .log()
                .lines()
                .filter(|l| !l.contains(" INFO ") || l.contains("error="))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let m = server.settled();
    let capacity = m["corral_cache_capacity_bytes"];
    let high_water = m["corral_cache_high_water_bytes"];
    let rss = server.peak_rss_kib() * 1024;
    let anon = peak_anon.max(server.anon_rss_kib() * 1024);
    println!(
        "sftp load: {} sessions of {USERS} users, {} MiB in {seconds:.1} s; at most {peak_sessions} sessions and {peak_waiting} waiting transfers seen; cache high-water {} of {} MiB; server peak anonymous RSS {} MiB (peak RSS with the executable's pages {} MiB)",
        USERS * PER_USER,
        USERS * PER_USER * SIZE / MIB,
        high_water / MIB as f64,
        capacity / MIB as f64,
        anon / MIB as u64,
        rss / MIB as u64
    );
    // The cache was used whole (and the pool never grants past it).
    assert_eq!(high_water, capacity, "{m:?}");
    assert_eq!(
        peak_sessions,
        (USERS * PER_USER) as f64,
        "not every session was open at once"
    );
    assert!(
        peak_waiting > 0.0,
        "the cache never made a transfer wait: not a load test"
    );
    // Anonymous memory (the executable's own pages, 26 MiB for a debug
    // build, are shared and file-backed): the cache, the password check's
    // memory (19 MiB, argon2id's m=19456, kept for the next check), at most
    // 1 MiB per session (its request budgets, 256 KiB each way, and SSH's
    // buffers) and 24 MiB for the rest (runtime, stacks, allocator arenas).
    // Measured: cache + 56 to 65 MiB (heaptrack: 20 MiB argon2, 22 MiB
    // sessions' buffers).
    let bound = capacity + (19 * MIB + USERS * PER_USER * MIB + 24 * MIB) as f64;
    assert!(
        anon as f64 <= bound,
        "server peak anonymous RSS {} MiB",
        anon / MIB as u64
    );
    for key in [
        "corral_cache_reserved_bytes",
        "corral_cache_in_use_bytes",
        "corral_cache_holders",
        "corral_cache_waiting_transfers",
        "corral_sessions",
    ] {
        assert_eq!(m[key], 0.0, "{key}: {m:?}");
    }
    assert_eq!(
        m["corral_transfers_total{direction=\"upload\",result=\"ok\"}"],
        (USERS * 2) as f64
    );
    assert_eq!(
        m["corral_transfers_total{direction=\"download\",result=\"ok\"}"],
        (USERS * 2) as f64
    );
    // Every file byte-identical: downloads here, uploads through the library.
    for (u, name) in names.iter().enumerate() {
        let sb = corral.sandbox(&Identity::user(name)).expect("sandbox");
        for k in 0..2 {
            let got =
                std::fs::read(dir.path().join(format!("got-{u}-{k}.bin"))).expect("downloaded");
            assert!(got == content(u, k + 2), "{name}: download {k} differs");
            let up = rt
                .block_on(sb.read(&format!("/up-{k}.bin")))
                .expect("read back");
            assert!(up == content(u, k), "{name}: upload {k} differs");
        }
    }
}
