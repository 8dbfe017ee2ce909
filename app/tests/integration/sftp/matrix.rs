//! Client × operation × backend. Each client, as its own user, makes a
//! directory, uploads a file of three multipart parts and a small one,
//! lists, renames, downloads, removes, and makes and removes a directory
//! (as far as the client can: scp only copies). Then, through the library
//! and a raw client of the bucket: the bytes are the ones sent, every key
//! lies under a user's prefix, and no multipart upload is pending; the
//! cache's counters are back to 0. Backends: Memory (checked through the
//! clients only: its store lives in the server's process), File, moto and
//! Garage.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use corral::cache::CacheConfig;
use corral::{Corral, Identity, ObjectStorage};
use corral_domain::ObjectKey;
use corral_fixtures::servers::S3Server;
use futures::TryStreamExt;

use super::{Server, ok, openssh, paramiko, password, pattern, rclone, sftp_batch};

const BIG: usize = 12 << 20;
const CLIENTS: [&str; 7] = [
    "sftp1", "sftp64", "scp", "curl", "paramiko", "rclone", "lftp",
];

/// What a client did besides uploading and downloading.
struct Done {
    /// It renamed small.txt to renamed.txt, then removed it, and made and removed /e.
    renamed: bool,
    /// Its listing of /d.
    listing: String,
}

fn curl(server: &Server, user: &str) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--fail",
        "--insecure",
        "-u",
        &format!("{user}:{}", password(user)),
    ]);
    let _ = server;
    c
}

fn url(server: &Server, path: &str) -> String {
    format!("sftp://127.0.0.1:{}{path}", server.port)
}

/// Runs one client's case in `dir` (which holds big.bin and small.txt).
fn client(name: &str, server: &Server, dir: &Path) -> Done {
    let user = name;
    let back = dir.join(format!("back-{user}.bin"));
    let back_s = back.display().to_string();
    match name {
        "sftp1" | "sftp64" => {
            let requests = if name == "sftp1" { 1 } else { 64 };
            let out = sftp_batch(
                server,
                user,
                requests,
                &format!(
                    "mkdir d\nput big.bin d/big.bin\nput small.txt d/small.txt\nls -l d\nrename d/small.txt d/renamed.txt\nget d/big.bin {back_s}\nrm d/renamed.txt\nmkdir e\nrmdir e\n"
                ),
                dir,
            );
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Done {
                renamed: true,
                listing: String::from_utf8_lossy(&out.stdout).into_owned(),
            }
        }
        "scp" => {
            let out = sftp_batch(server, user, 1, "mkdir d\n", dir);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let target = |p: &str| format!("{user}@127.0.0.1:{p}");
            let port = server.port.to_string();
            for (from, to) in [("big.bin", "/d/big.bin"), ("small.txt", "/d/small.txt")] {
                ok(openssh("scp", server, user)
                    .args(["-P", &port, from, &target(to)])
                    .current_dir(dir));
            }
            ok(openssh("scp", server, user)
                .args(["-P", &port, &target("/d/big.bin"), &back_s])
                .current_dir(dir));
            let listing =
                String::from_utf8_lossy(&sftp_batch(server, user, 1, "ls d\n", dir).stdout)
                    .into_owned();
            Done {
                renamed: false,
                listing,
            }
        }
        "curl" => {
            ok(curl(server, user)
                .args(["-Q", "mkdir /d", &url(server, "/")])
                .current_dir(dir));
            for (from, to) in [("big.bin", "/d/big.bin"), ("small.txt", "/d/small.txt")] {
                ok(curl(server, user)
                    .args(["-T", from, &url(server, to)])
                    .current_dir(dir));
            }
            let listing = ok(curl(server, user).args([&url(server, "/d/")]));
            ok(curl(server, user).args([
                "-Q",
                "rename /d/small.txt /d/renamed.txt",
                &url(server, "/"),
            ]));
            ok(curl(server, user).args([&url(server, "/d/big.bin"), "-o", &back_s]));
            ok(curl(server, user).args([
                "-Q",
                "rm /d/renamed.txt",
                "-Q",
                "mkdir /e",
                "-Q",
                "rmdir /e",
                &url(server, "/"),
            ]));
            Done {
                renamed: true,
                listing,
            }
        }
        "paramiko" => {
            let listing = ok(&mut paramiko(
                server,
                user,
                "matrix.py",
                &[&dir.display().to_string(), &back_s],
            ));
            Done {
                renamed: true,
                listing,
            }
        }
        "rclone" => {
            let local = |p: &str| dir.join(p).display().to_string();
            ok(rclone(server, user).args(["mkdir", "S:d"]));
            ok(rclone(server, user).args(["copyto", "-I", &local("big.bin"), "S:d/big.bin"]));
            ok(rclone(server, user).args(["copyto", "-I", &local("small.txt"), "S:d/small.txt"]));
            let listing = ok(rclone(server, user).args(["lsf", "S:d"]));
            ok(rclone(server, user).args(["moveto", "S:d/small.txt", "S:d/renamed.txt"]));
            ok(rclone(server, user).args(["copyto", "-I", "S:d/big.bin", &back_s]));
            ok(rclone(server, user).args(["deletefile", "S:d/renamed.txt"]));
            ok(rclone(server, user).args(["mkdir", "S:e"]));
            ok(rclone(server, user).args(["rmdir", "S:e"]));
            Done {
                renamed: true,
                listing,
            }
        }
        "lftp" => {
            let script = format!(
                "set sftp:auto-confirm yes; set net:max-retries 1; mkdir d; put big.bin -o d/big.bin; put small.txt -o d/small.txt; cls d; mv d/small.txt d/renamed.txt; get d/big.bin -o {back_s}; rm d/renamed.txt; mkdir e; rmdir e; bye"
            );
            let listing = ok(Command::new("lftp")
                .args(["-u", &format!("{user},{}", password(user)), "-e", &script])
                .arg(format!("sftp://127.0.0.1:{}", server.port))
                .current_dir(dir));
            Done {
                renamed: true,
                listing,
            }
        }
        other => panic!("no client {other}"),
    }
}

/// The raw bucket (or directory) and the library's view, where the test can
/// reach them (not Memory: its store lives in the server's process).
struct Check {
    corral: Corral,
    raw: Option<Arc<dyn ObjectStorage>>,
}

async fn check(check: &Check, user: &str, big: &[u8], done: &Done) {
    let sb = check
        .corral
        .sandbox(&Identity::user(user))
        .expect("sandbox");
    assert!(
        sb.read("/d/big.bin").await.expect("read big") == big,
        "{user}: the uploaded bytes differ"
    );
    let names: Vec<String> = sb
        .list("/d")
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    let want: &[&str] = if done.renamed {
        &["big.bin"]
    } else {
        &["big.bin", "small.txt"]
    };
    assert_eq!(names, want, "{user}");
    if done.renamed {
        assert!(sb.stat("/e").await.is_err(), "{user}: /e was not removed");
    }
    if let Some(raw) = &check.raw {
        let keys: Vec<String> = raw
            .list(&ObjectKey::from_raw(""), Default::default())
            .try_collect::<Vec<_>>()
            .await
            .expect("raw list")
            .into_iter()
            .map(|i| i.key().as_str().to_owned())
            .collect();
        for k in &keys {
            let owner = k.strip_prefix("users/").and_then(|r| r.split('/').next());
            assert!(
                owner.is_some_and(|o| CLIENTS.contains(&o)),
                "a key outside every user's prefix: {k:?}"
            );
        }
        assert!(
            keys.contains(&format!("users/{user}/d/big.bin")),
            "{user}: {keys:?}"
        );
        if raw.capabilities().list_pending_uploads {
            let pending = raw
                .list_pending_uploads(&ObjectKey::from_raw(""))
                .await
                .expect("pending");
            assert!(pending.is_empty(), "{user}: pending uploads {pending:?}");
        }
    }
}

fn matrix(mappings: &str, check: Option<Check>) {
    let server = Server::start(
        mappings,
        &CLIENTS,
        &[
            "--max-cloud-cache-upload-size",
            "5MiB",
            "--max-cloud-cache-size",
            "64MiB",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let big = pattern(BIG, 7);
    std::fs::write(dir.path().join("big.bin"), &big).expect("big");
    std::fs::write(dir.path().join("small.txt"), b"small file\n").expect("small");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for name in CLIENTS {
        let done = client(name, &server, dir.path());
        assert!(
            done.listing.contains("big.bin") && done.listing.contains("small.txt"),
            "{name}: the listing of /d lacks a file:\n{}",
            done.listing
        );
        let back = std::fs::read(dir.path().join(format!("back-{name}.bin"))).expect("downloaded");
        assert!(back == big, "{name}: the downloaded bytes differ");
        if let Some(c) = &check {
            rt.block_on(self::check(c, name, &big, &done));
        }
        let m = server.settled();
        assert_eq!(m["corral_cache_in_use_bytes"], 0.0, "{name}: {m:?}");
    }
    let m = server.metrics();
    assert!(
        m["corral_transfers_total{direction=\"upload\",result=\"ok\"}"] >= 14.0,
        "{m:?}"
    );
    assert_eq!(
        m.get("corral_transfers_total{direction=\"upload\",result=\"error\"}"),
        None,
        "{m:?}"
    );
}

fn s3_mappings(s: &S3Server, bucket: &str, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"{bucket}","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

fn s3_check(s: &S3Server, bucket: &str) -> Check {
    Check {
        corral: Corral::from_json(&s3_mappings(s, bucket, "users/%u"), CacheConfig::default())
            .expect("corral"),
        raw: Some(crate::common::raw_backend(&s3_mappings(s, bucket, ""), "x")),
    }
}

#[test]
fn every_client_on_memory() {
    matrix(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        None,
    );
}

#[test]
fn every_client_on_file() {
    let root = tempfile::tempdir().expect("tempdir");
    for u in CLIENTS {
        std::fs::create_dir_all(root.path().join(u)).expect("mkdir");
    }
    let mappings = format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.path().display())).expect("json")
    );
    let corral = Corral::from_json(&mappings, CacheConfig::default()).expect("corral");
    matrix(&mappings, Some(Check { corral, raw: None }));
}

#[test]
fn every_client_on_moto() {
    let s3 = S3Server::moto();
    s3.create_bucket("sftp");
    matrix(
        &s3_mappings(&s3, "sftp", "users/%u"),
        Some(s3_check(&s3, "sftp")),
    );
}

#[test]
fn every_client_on_garage() {
    let s3 = S3Server::garage();
    s3.create_bucket("sftp");
    matrix(
        &s3_mappings(&s3, "sftp", "users/%u"),
        Some(s3_check(&s3, "sftp")),
    );
}
