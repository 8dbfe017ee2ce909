//! Client × operation × backend. Each client, as its own user, makes a
//! directory, uploads a file of three multipart parts and a small one,
//! lists, renames, downloads, removes, and makes and removes a directory
//! (scp only copies: it has no rename or remove). Then a fresh OpenSSH
//! session lists and downloads what the client left (on every backend,
//! Memory included: its store lives in the server's process), and, through
//! the library and a raw client of the bucket or directory: the bytes are
//! the ones sent, the client's keys all lie under its own user's prefix
//! (nothing outside it changed), and no multipart upload is pending; the
//! cache's counters are back to 0. Backends: Memory, File, moto and Garage.

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

/// What OpenSSH's `sftp -b` printed for one batch command: it echoes each
/// command as `sftp> command`, and the command's output follows.
fn batch_section(stdout: &str, command: &str) -> String {
    let echo = format!("sftp> {command}");
    let mut lines = stdout.lines().skip_while(|l| l.trim_end() != echo);
    assert!(
        lines.next().is_some(),
        "no {echo:?} in the batch output:\n{stdout}"
    );
    lines
        .take_while(|l| !l.starts_with("sftp> "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names in a listing of one name per line (`ls -1`), without the
/// directory OpenSSH puts before each.
fn names(listing: &str) -> Vec<String> {
    let mut v: Vec<String> = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or_default().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    v.sort();
    v
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
                listing: batch_section(&String::from_utf8_lossy(&out.stdout), "ls -l d"),
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
            let listing = batch_section(
                &String::from_utf8_lossy(&sftp_batch(server, user, 1, "ls d\n", dir).stdout),
                "ls d",
            );
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

/// What a fresh OpenSSH session sees after a client's case: /d holds what
/// the client left, /e is gone, and /d/big.bin downloads whole.
fn seen_again(server: &Server, user: &str, dir: &Path, big: &[u8], done: &Done) {
    let again = dir.join(format!("again-{user}.bin"));
    let out = sftp_batch(
        server,
        user,
        1,
        &format!("ls -1 /\nls -1 /d\nget /d/big.bin {}\n", again.display()),
        dir,
    );
    assert!(
        out.status.success(),
        "{user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        names(&batch_section(&stdout, "ls -1 /")),
        ["d"],
        "{user}: the root after the case"
    );
    let want: &[&str] = if done.renamed {
        &["big.bin"]
    } else {
        &["big.bin", "small.txt"]
    };
    assert_eq!(
        names(&batch_section(&stdout, "ls -1 /d")),
        want,
        "{user}: /d after the case"
    );
    assert!(
        std::fs::read(&again).expect("downloaded again") == big,
        "{user}: the file read again differs"
    );
}

/// The raw bucket (or directory) and the library's view.
struct Check {
    corral: Corral,
    raw: Arc<dyn ObjectStorage>,
    /// Where users' prefixes start in the raw view (`users/` on S3).
    root: &'static str,
}

async fn raw_keys(check: &Check) -> Vec<String> {
    let mut keys: Vec<String> = check
        .raw
        .list(&ObjectKey::from_raw(""), Default::default())
        .try_collect::<Vec<_>>()
        .await
        .expect("raw list")
        .into_iter()
        .map(|i| i.key().as_str().to_owned())
        .collect();
    keys.sort();
    keys
}

async fn check(check: &Check, user: &str, big: &[u8], done: &Done, before: &[String]) {
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
        assert_eq!(
            sb.stat("/e")
                .await
                .map(|_| ())
                .expect_err("/e is gone")
                .kind(),
            corral::ErrorKind::NotFound,
            "{user}: /e was not removed"
        );
    }
    // The client changed nothing outside its own user's prefix.
    let mine = format!("{}{user}/", check.root);
    let after = raw_keys(check).await;
    let outside = |keys: &[String]| -> Vec<String> {
        keys.iter()
            .filter(|k| !k.starts_with(&mine))
            .cloned()
            .collect()
    };
    assert_eq!(
        outside(&after),
        outside(before),
        "{user}: keys outside {mine} changed"
    );
    assert!(
        after.contains(&format!("{mine}d/big.bin")),
        "{user}: {after:?}"
    );
    if check.raw.capabilities().list_pending_uploads {
        let pending = check
            .raw
            .list_pending_uploads(&ObjectKey::from_raw(""))
            .await
            .expect("pending");
        assert!(pending.is_empty(), "{user}: pending uploads {pending:?}");
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
        let before = match &check {
            Some(c) => rt.block_on(raw_keys(c)),
            None => Vec::new(),
        };
        let done = client(name, &server, dir.path());
        assert!(
            done.listing.contains("big.bin") && done.listing.contains("small.txt"),
            "{name}: the listing of /d lacks a file:\n{}",
            done.listing
        );
        let back = std::fs::read(dir.path().join(format!("back-{name}.bin"))).expect("downloaded");
        assert!(back == big, "{name}: the downloaded bytes differ");
        seen_again(&server, name, dir.path(), &big, &done);
        if let Some(c) = &check {
            rt.block_on(self::check(c, name, &big, &done, &before));
        }
        let m = server.settled();
        assert_eq!(m["corral_cache_in_use_bytes"], 0.0, "{name}: {m:?}");
    }
    let m = server.metrics();
    // Two uploads by each client.
    assert_eq!(
        m["corral_transfers_total{direction=\"upload\",result=\"ok\"}"],
        (2 * CLIENTS.len()) as f64,
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
        raw: crate::common::raw_backend(&s3_mappings(s, bucket, ""), "x"),
        root: "users/",
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
    let whole = format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&root.path().display().to_string()).expect("json")
    );
    let raw = crate::common::raw_backend(&whole, "x");
    matrix(
        &mappings,
        Some(Check {
            corral,
            raw,
            root: "",
        }),
    );
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
