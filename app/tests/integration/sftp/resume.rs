//! Uploads that survive: a session that ends mid-upload keeps the whole
//! parts stored, and a client continues from there (OpenSSH `reput`,
//! WinSCP's `.filepart` continued without truncation), through the same
//! server, a restarted one or another instance on the same bucket. A file
//! cut at any point and continued is byte-identical; the second run sends
//! only what was missing (at most one part more); a partial is never
//! readable, and never another user's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral::cache::CacheConfig;
use corral::{Corral, ErrorKind, Identity, ObjectStorage};
use corral_domain::ObjectKey;
use corral_fixtures::servers::S3Server;

use super::load::{kill_group, pending, spawn_sftp, wait_for};
use super::{Server, ok, paramiko, pattern, sftp_batch};

const MIB: usize = 1 << 20;
/// 10 MiB per upload: parts of 5 MiB.
const SMALL_PARTS: [&str; 2] = ["--max-cloud-cache-upload-size", "10MiB"];
const MEMORY: &str = r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#;

fn s3_mappings(s: &S3Server, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"resume","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

/// The bucket `resume` on `s3`: the users' mappings (under `users/%u`)
/// and a raw client of the whole bucket, to look at what is pending.
struct Bucket {
    _s3: S3Server,
    mappings: String,
    raw: Arc<dyn ObjectStorage>,
}

fn bucket(s3: S3Server) -> Bucket {
    s3.create_bucket("resume");
    let mappings = s3_mappings(&s3, "users/%u");
    let raw = crate::common::raw_backend(&s3_mappings(&s3, ""), "x");
    Bucket {
        _s3: s3,
        mappings,
        raw,
    }
}

fn file_mappings(root: &Path) -> String {
    std::fs::create_dir_all(root.join("alice")).expect("mkdir");
    format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.display())).expect("json")
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The bytes uploads have moved, as the server counts them.
pub(crate) fn uploaded(server: &Server) -> f64 {
    server
        .metrics()
        .get("corral_transfer_bytes_total{direction=\"upload\",result=\"ok\"}")
        .copied()
        .unwrap_or(0.0)
}

/// The parts stored so far in the one pending upload under the bucket.
pub(crate) async fn stored_parts(raw: &Arc<dyn ObjectStorage>) -> usize {
    let root = ObjectKey::from_raw("");
    let Ok(pending) = raw.list_pending_uploads(&root).await else {
        return 0;
    };
    let Some(p) = pending.first() else {
        return 0;
    };
    raw.list_parts(&p.key, &p.upload_id)
        .await
        .map_or(0, |parts| parts.len())
}

/// OpenSSH's own resume test, on one backend: the destination holds the
/// first 0, 1, 1 MiB, one part, size − 1 and all of the bytes, and `reput`
/// makes it whole.
fn reput_after_every_cut(mappings: &str) {
    let server = Server::start(mappings, &["alice"], &SMALL_PARTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 12 * MIB;
    let data = pattern(size, 41);
    std::fs::write(dir.path().join("big.bin"), &data).expect("local");
    for cut in [0, 1, MIB, 5 * MIB, size - 1, size] {
        std::fs::write(dir.path().join("head.bin"), &data[..cut]).expect("head");
        let out = sftp_batch(
            &server,
            "alice",
            64,
            &format!("put head.bin /f-{cut}\nreput big.bin /f-{cut}\n"),
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if cut == size {
            // OpenSSH has nothing to send, and says so.
            assert!(
                stderr.contains("same size or larger"),
                "cut {cut}: {stderr}"
            );
        } else {
            assert!(out.status.success(), "cut {cut}: {stderr}");
        }
        let back = dir.path().join(format!("back-{cut}"));
        let out = sftp_batch(
            &server,
            "alice",
            64,
            &format!("get /f-{cut} {}\n", back.display()),
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&back).expect("back") == data,
            "cut at {cut}: the file differs"
        );
    }
    server.settled();
}

#[test]
fn reput_after_every_cut_on_memory() {
    reput_after_every_cut(MEMORY);
}

#[test]
fn reput_after_every_cut_on_file() {
    let root = tempfile::tempdir().expect("tempdir");
    reput_after_every_cut(&file_mappings(root.path()));
}

#[test]
fn reput_after_every_cut_on_moto() {
    let b = bucket(S3Server::moto());
    reput_after_every_cut(&b.mappings);
    assert_eq!(rt().block_on(pending(&b.raw)), 0);
}

#[test]
fn reput_after_every_cut_on_garage() {
    let b = bucket(S3Server::garage());
    reput_after_every_cut(&b.mappings);
    assert_eq!(rt().block_on(pending(&b.raw)), 0);
}

/// A client killed at about half of an upload, on Garage: the server keeps
/// the whole parts; the partial shows with their size and cannot be read;
/// `reput` through another server process on the same bucket sends the rest
/// (at most one part more) and the file is identical.
#[test]
fn a_killed_upload_is_continued_through_another_instance() {
    let Bucket {
        _s3: _server,
        mappings,
        raw,
    } = bucket(S3Server::garage());
    let rt = rt();
    let flags = ["--max-cloud-cache-upload-size", "16MiB"];
    let part = 8 * MIB;
    let first = Server::start(&mappings, &["alice"], &flags);
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 96 * MIB;
    let data = pattern(size, 42);
    std::fs::write(dir.path().join("up.bin"), &data).expect("local");
    // 100 Mbit/s: about eight seconds; killed once half the parts are stored.
    let mut client = spawn_sftp(&first, "alice", "put up.bin /up.bin\n", dir.path(), 100_000);
    wait_for("half of the parts stored", Duration::from_secs(60), || {
        rt.block_on(stored_parts(&raw)) >= 6
    });
    assert_eq!(kill_group(-(client.id() as i32)), 0, "kill");
    let _ = client.wait();
    wait_for("the upload kept", Duration::from_secs(20), || {
        first.metrics()["corral_partial_uploads_kept_total"] == 1.0
    });
    first.settled();
    // What any process of the library sees of it, from the bucket alone.
    let corral = Corral::from_json(&mappings, CacheConfig::default())
        .expect("corral")
        .keep_partial_uploads(true);
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    let kept = rt
        .block_on(sb.stat("/up.bin"))
        .expect("a partial file")
        .size as usize;
    assert!(
        kept >= 6 * part && kept < size && kept.is_multiple_of(part),
        "kept {kept} bytes"
    );
    assert_eq!(
        rt.block_on(sb.read("/up.bin"))
            .expect_err("unreadable")
            .kind(),
        ErrorKind::Busy
    );
    // Continued through a second server process on the same bucket.
    let second = Server::start(&mappings, &["alice"], &flags);
    let out = sftp_batch(&second, "alice", 64, "reput up.bin /up.bin\n", dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = uploaded(&second) as usize;
    println!(
        "resume: {kept} of {size} bytes kept; the second run sent {sent} bytes ({} remained)",
        size - kept
    );
    assert!(
        sent >= size - kept && sent <= size - kept + part,
        "the second run sent {sent} bytes for {} missing",
        size - kept
    );
    assert_eq!(
        second.metrics()["corral_partial_uploads_resumed_total"],
        1.0
    );
    assert!(rt.block_on(sb.read("/up.bin")).expect("read") == data);
    assert_eq!(rt.block_on(pending(&raw)), 0, "an upload is left pending");
}

/// The server itself killed mid-upload: the parts S3 acknowledged are the
/// checkpoint, and the restarted server continues from them.
#[test]
fn an_upload_cut_by_a_killed_server_is_continued_after_a_restart() {
    let Bucket {
        _s3: _server,
        mappings,
        raw,
    } = bucket(S3Server::garage());
    let rt = rt();
    let flags = ["--max-cloud-cache-upload-size", "16MiB"];
    let mut server = Server::start(&mappings, &["alice"], &flags);
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 64 * MIB;
    let data = pattern(size, 43);
    std::fs::write(dir.path().join("up.bin"), &data).expect("local");
    let mut client = spawn_sftp(
        &server,
        "alice",
        "put up.bin /up.bin\n",
        dir.path(),
        100_000,
    );
    wait_for("three parts stored", Duration::from_secs(60), || {
        rt.block_on(stored_parts(&raw)) >= 3
    });
    server.kill();
    let _ = kill_group(-(client.id() as i32));
    let _ = client.wait();
    let server = Server::start(&mappings, &["alice"], &flags);
    let out = sftp_batch(
        &server,
        "alice",
        64,
        "ls -l /\nreput up.bin /up.bin\n",
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up.bin"),
        "the partial is listed"
    );
    assert_eq!(
        server.metrics()["corral_partial_uploads_resumed_total"],
        1.0
    );
    assert!(
        (uploaded(&server) as usize) < size,
        "it was sent again whole"
    );
    let sb = Corral::from_json(&mappings, CacheConfig::default())
        .expect("corral")
        .sandbox(&Identity::user("alice"))
        .expect("sandbox");
    assert!(rt.block_on(sb.read("/up.bin")).expect("read") == data);
    assert_eq!(rt.block_on(pending(&raw)), 0);
}

/// WinSCP's way, with paramiko: `NAME.filepart` cut, then continued from
/// the size the server shows (opened without truncation), then renamed.
fn filepart(mappings: &str) {
    let server = Server::start(mappings, &["alice"], &SMALL_PARTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("data.bin");
    std::fs::write(&local, pattern(13 * MIB, 44)).expect("local");
    let local = local.display().to_string();
    let cut = 12 * MIB;
    assert!(
        ok(&mut paramiko(
            &server,
            "alice",
            "resume.py",
            &["filepart-cut", &local, "/data.bin", &cut.to_string()]
        ))
        .contains("ok")
    );
    let out = ok(&mut paramiko(
        &server,
        "alice",
        "resume.py",
        &["filepart-continue", &local, "/data.bin"],
    ));
    // Two whole parts of 5 MiB were kept; the rest of the third was dropped.
    assert!(
        out.contains(&format!("continued from {}", 10 * MIB)) && out.contains("ok"),
        "{out}"
    );
    let m = server.settled();
    assert_eq!(m["corral_partial_uploads_kept_total"], 1.0, "{m:?}");
    assert_eq!(m["corral_partial_uploads_resumed_total"], 1.0, "{m:?}");
}

#[test]
fn a_filepart_is_continued_on_memory() {
    filepart(MEMORY);
}

#[test]
fn a_filepart_is_continued_on_garage() {
    let b = bucket(S3Server::garage());
    filepart(&b.mappings);
    assert_eq!(rt().block_on(pending(&b.raw)), 0);
}

/// Another user never sees, continues or removes a user's partial.
#[test]
fn a_partial_is_its_owners_alone() {
    let Bucket {
        _s3: _server,
        mappings,
        raw,
    } = bucket(S3Server::garage());
    let server = Server::start(&mappings, &["alice", "bob"], &SMALL_PARTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("data.bin");
    let data = pattern(13 * MIB, 45);
    std::fs::write(&local, &data).expect("local");
    let local_s = local.display().to_string();
    ok(&mut paramiko(
        &server,
        "alice",
        "resume.py",
        &[
            "filepart-cut",
            &local_s,
            "/secret.bin",
            &(12 * MIB).to_string(),
        ],
    ));
    server.settled();
    // Bob: nothing in his listing, nothing at that name; his own upload of
    // the name starts from nothing and leaves alice's alone.
    let out = sftp_batch(
        &server,
        "bob",
        64,
        "ls -1 /\nreput data.bin /secret.bin.filepart\nrm /secret.bin.filepart\nls -1 /\n",
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout
            .lines()
            .any(|l| !l.starts_with("sftp>") && l.contains("secret")),
        "bob sees alice's partial:\n{stdout}"
    );
    let rt = rt();
    let alices = ObjectKey::from_raw("users/alice/secret.bin.filepart");
    let left = rt
        .block_on(raw.list_pending_uploads(&alices))
        .expect("pending");
    assert_eq!(left.len(), 1, "alice's partial is gone: {left:?}");
    assert_eq!(
        server.metrics()["corral_partial_uploads_resumed_total"],
        0.0
    );
    // Alice continues hers.
    let out = ok(&mut paramiko(
        &server,
        "alice",
        "resume.py",
        &["filepart-continue", &local_s, "/secret.bin"],
    ));
    assert!(out.contains("ok"), "{out}");
    assert_eq!(rt.block_on(pending(&raw)), 0);
}

/// A partial is given up by an upload that truncates it, and by a remove:
/// aborted at once, not left to the retention sweep.
#[test]
fn a_partial_is_given_up_by_a_truncating_upload_or_a_remove() {
    // moto: Garage itself drops the older pending uploads of a key when a
    // newer version of it completes, which would hide what corral does.
    let Bucket {
        _s3: _server,
        mappings,
        raw,
    } = bucket(S3Server::moto());
    let server = Server::start(&mappings, &["alice"], &SMALL_PARTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("data.bin");
    let data = pattern(13 * MIB, 46);
    std::fs::write(&local, &data).expect("local");
    let local_s = local.display().to_string();
    let rt = rt();
    for name in ["/replaced.bin", "/removed.bin"] {
        ok(&mut paramiko(
            &server,
            "alice",
            "resume.py",
            &["filepart-cut", &local_s, name, &(12 * MIB).to_string()],
        ));
    }
    server.settled();
    assert_eq!(rt.block_on(pending(&raw)), 2, "two partials kept");
    // Older than the 5 s margin within which an upload also sweeps the
    // uploads of its key started just before it (lost creation answers):
    // the truncating upload alone must give this partial up.
    std::thread::sleep(Duration::from_secs(6));
    let out = sftp_batch(
        &server,
        "alice",
        64,
        "put data.bin /replaced.bin.filepart\nrm /removed.bin.filepart\nls -1 /\n",
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("sftp>")).collect();
    assert_eq!(listed, ["/replaced.bin.filepart"], "{stdout}");
    assert_eq!(rt.block_on(pending(&raw)), 0, "a partial was left pending");
    let back = dir.path().join("back.bin");
    let out = sftp_batch(
        &server,
        "alice",
        64,
        &format!("get /replaced.bin.filepart {}\n", back.display()),
        dir.path(),
    );
    assert!(out.status.success());
    assert!(std::fs::read(&back).expect("back") == data);
    assert_eq!(
        server.metrics()["corral_partial_uploads_resumed_total"],
        0.0
    );
}
