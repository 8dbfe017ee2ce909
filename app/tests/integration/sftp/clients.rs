//! Clients beyond the matrix, each run as its users run it:
//!
//! - sshfs: a mounted sandbox, written by `cp`, the shell's `>>` and `dd`
//!   (the kernel's writes at any offset), renamed, listed and emptied, on
//!   File and Garage; what is left is then read without the server.
//! - JSch 0.1 (it knows no ed25519 host key), OpenSSH held to
//!   `ecdsa-sha2-nistp256`, and PuTTY's psftp (it refuses an unknown host
//!   key in batch mode): each checks the server's host key against the one
//!   the server logged, then moves a file both ways.
//! - rclone sync run twice: the second run moves nothing, on File with the
//!   defaults, on S3 with `--update` (listings there show the upload time,
//!   not the time rclone set).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral::cache::CacheConfig;
use corral::{Corral, Identity, UserSandbox};
use corral_fixtures::servers::S3Server;
use futures::TryStreamExt;

use super::{Server, clients_venv, ok, password, pattern, rclone, run};

const MIB: usize = 1 << 20;
/// Debian's libjsch-java: JSch 0.1.5x.
const JSCH: &str = "/usr/share/java/jsch.jar";
const USER: &str = "alice";

/// File sandboxes `<root>/%u` for `user` (its directory made).
fn file_mappings(root: &Path, user: &str) -> String {
    std::fs::create_dir_all(root.join(user)).expect("mkdir");
    format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.display())).expect("json")
    )
}

/// S3 sandboxes `users/%u` in `bucket`.
fn s3_mappings(s: &S3Server, bucket: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"{bucket}","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client that must succeed; its stderr (where rclone and JSch write).
#[track_caller]
fn ok_stderr(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    stderr
}

/// Asserts that `got` is `want`, saying where they first differ.
#[track_caller]
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes where {} were expected, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// `t` within `slack` of `around`, either way.
fn near(t: SystemTime, around: SystemTime, slack: Duration) -> bool {
    let gap = t
        .duration_since(around)
        .or_else(|_| around.duration_since(t))
        .unwrap_or_default();
    gap <= slack
}

// ---------------------------------------------------------------------------
// Host keys

/// A host key as the server logged it at start:
/// `host key key=PATH algorithm=ALG fingerprint=SHA256:…`.
#[derive(Debug)]
struct HostKey {
    path: PathBuf,
    algorithm: String,
    fingerprint: String,
}

fn host_keys(server: &Server) -> Vec<HostKey> {
    server
        .log()
        .lines()
        .filter(|l| l.contains(" host key "))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some(HostKey {
                path: field("key=")?.into(),
                algorithm: field("algorithm=")?,
                fingerprint: field("fingerprint=")?,
            })
        })
        .collect()
}

/// A known-hosts file holding only the server's ECDSA key, read from the
/// key file the server made beside its one `--host-key` (the harness's
/// `host_key`): a client that checks it strictly proves that this is the
/// key it was offered.
fn ecdsa_known_hosts(server: &Server, dir: &Path) -> PathBuf {
    let keys = host_keys(server);
    let ecdsa = keys
        .iter()
        .find(|k| k.algorithm == "ecdsa-sha2-nistp256")
        .unwrap_or_else(|| panic!("no ECDSA host key logged: {keys:?}\n{}", server.log()));
    assert_eq!(
        ecdsa.path.file_name().and_then(|n| n.to_str()),
        Some("host_key_ecdsa"),
        "the ECDSA key is not beside the given one: {keys:?}"
    );
    let public = ok(Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&ecdsa.path));
    let file = dir.join("known_hosts");
    std::fs::write(
        &file,
        format!("[127.0.0.1]:{} {}\n", server.port, public.trim()),
    )
    .expect("known_hosts");
    file
}

#[test]
fn jsch_0_1_connects_with_an_ecdsa_host_key_and_transfers() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path(), USER), &[USER], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let classes = local.path().join("classes");
    std::fs::create_dir(&classes).expect("mkdir");
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/sftp/JschClient.java");
    ok(Command::new("javac")
        .args(["-cp", JSCH, "-d"])
        .arg(&classes)
        .arg(source));
    let big = pattern(20 * MIB, 3);
    let up = local.path().join("big.bin");
    let back = local.path().join("back.bin");
    std::fs::write(&up, &big).expect("write");
    let known_hosts = ecdsa_known_hosts(&server, local.path());

    let p = |p: &Path| p.display().to_string();
    let port = server.port.to_string();
    let pw = password(USER);
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(format!("{JSCH}:{}", classes.display()))
        .arg("JschClient")
        .args(["127.0.0.1", &port, USER, &pw, &p(&known_hosts)])
        .args(["put", &p(&up), "/big.bin", "--", "ls", "/", "--"])
        .args(["get", "/big.bin", &p(&back), "--"])
        .args([
            "rename",
            "/big.bin",
            "/moved.bin",
            "--",
            "stat",
            "/moved.bin",
            "--",
        ])
        .args(["rm", "/moved.bin", "--", "ls", "/"]);
    let shown = format!("{java:?}");
    let out = run(&mut java, Duration::from_secs(120));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{stdout}{stderr}\n{}",
        out.status,
        server.log()
    );
    // JSch 0.1 knows no ed25519: it took the ECDSA key, and the strict
    // known-hosts check passed on it.
    assert!(
        stderr.lines().any(|l| l == "hostkey ecdsa-sha2-nistp256"),
        "{stderr}"
    );
    // The first `ls` shows the upload, `stat` the renamed file, the last
    // `ls` nothing.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], "big.bin", "{stdout}");
    let (size, mtime) = lines[1].split_once(' ').expect("SIZE MTIME");
    assert_eq!(size, (20 * MIB).to_string(), "{stdout}");
    let mtime = UNIX_EPOCH + Duration::from_secs(mtime.parse().expect("seconds"));
    assert!(
        near(mtime, SystemTime::now(), Duration::from_secs(60)),
        "the upload's time is {mtime:?}"
    );
    same_bytes(
        &std::fs::read(back).expect("downloaded"),
        &big,
        "JSch's download",
    );
    let left: Vec<_> = std::fs::read_dir(root.path().join(USER))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in the sandbox: {left:?}");
    server.settled();
}

#[test]
fn openssh_with_only_ecdsa_host_keys_connects() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path(), USER), &[USER], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let data = pattern(5 * MIB, 4);
    std::fs::write(local.path().join("up.bin"), &data).expect("write");
    let known_hosts = ecdsa_known_hosts(&server, local.path());
    let batch = local.path().join("batch");
    std::fs::write(&batch, "put up.bin f.bin\nget f.bin back.bin\nrm f.bin\n").expect("batch");
    // Not the harness's `openssh()`: it turns host key checking off, and
    // OpenSSH keeps the first value given for an option.
    ok(Command::new("sshpass")
        .args(["-p", &password(USER), "sftp"])
        .args(["-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "BatchMode=no", "-o", "LogLevel=ERROR"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-P", &server.port.to_string(), "-b"])
        .arg(batch)
        .arg(format!("{USER}@127.0.0.1"))
        .current_dir(local.path()));
    same_bytes(
        &std::fs::read(local.path().join("back.bin")).expect("downloaded"),
        &data,
        "OpenSSH's download",
    );
    assert!(
        !root.path().join(USER).join("f.bin").exists(),
        "f.bin was not removed"
    );
    server.settled();
}

#[test]
fn psftp_puts_and_gets() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path(), USER), &[USER], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let data = pattern(5 * MIB, 5);
    std::fs::write(local.path().join("up.bin"), &data).expect("write");
    let script = local.path().join("script");
    std::fs::write(&script, "put up.bin f.bin\nget f.bin back.bin\nls\n").expect("script");
    // psftp refuses an unknown host key in batch mode: it is given the
    // fingerprints the server logged (ed25519 and the ECDSA one beside it).
    let keys = host_keys(&server);
    assert_eq!(keys.len(), 2, "{keys:?}\n{}", server.log());
    let mut psftp = Command::new("psftp");
    psftp.args([
        "-P",
        &server.port.to_string(),
        "-l",
        USER,
        "-pw",
        &password(USER),
    ]);
    for k in &keys {
        psftp.args(["-hostkey", &k.fingerprint]);
    }
    psftp
        .args(["-batch", "-b"])
        .arg(script)
        .arg("127.0.0.1")
        .current_dir(local.path())
        // PuTTY keeps a random seed in its home: not the user's.
        .env("HOME", local.path());
    let listing = ok(&mut psftp);
    same_bytes(
        &std::fs::read(local.path().join("back.bin")).expect("downloaded"),
        &data,
        "psftp's download",
    );
    same_bytes(
        &std::fs::read(root.path().join(USER).join("f.bin")).expect("uploaded"),
        &data,
        "psftp's upload",
    );
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" f.bin") && l.contains(&format!(" {} ", 5 * MIB))),
        "psftp's listing lacks f.bin of {} bytes:\n{listing}",
        5 * MIB
    );
    server.settled();
}

// ---------------------------------------------------------------------------
// sshfs

/// Whether something is mounted at `dir`.
fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
}

/// A user's sandbox mounted with sshfs (in the foreground, as this
/// process's child). Dropped, it is unmounted (lazily if busy) and sshfs
/// ended, so that a failing test leaves no mount behind.
struct Mount {
    /// Canonical: /proc/self/mountinfo shows mount points so.
    dir: PathBuf,
    child: Child,
    log: PathBuf,
    _tempdir: tempfile::TempDir,
}

impl Mount {
    fn new(server: &Server, user: &str, scratch: &Path) -> Self {
        let tempdir = tempfile::tempdir().expect("tempdir");
        let dir = tempdir.path().canonicalize().expect("canonical");
        let log = scratch.join("sshfs.log");
        // sshfs reads the password from stdin (password_stdin); its stderr
        // goes to a file, since ssh keeps it open until the unmount.
        let mut child = Command::new("sshfs")
            .args(["-f", "-p", &server.port.to_string(), "-o"])
            .arg(
                "password_stdin,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
                 PubkeyAuthentication=no,LogLevel=ERROR",
            )
            .arg(format!("{user}@127.0.0.1:/"))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshfs log"))
            .spawn()
            .expect("sshfs (scripts/install-test-deps.sh installs it)");
        let mut stdin = child.stdin.take().expect("stdin");
        // Made before any check, so that a failure unmounts.
        let mut mount = Self {
            dir,
            child,
            log,
            _tempdir: tempdir,
        };
        // A broken pipe means sshfs ended: told below, with its log.
        let _ = writeln!(stdin, "{}", password(user));
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounted(&mount.dir) {
            if let Some(status) = mount.child.try_wait().expect("wait") {
                panic!("sshfs ended ({status}) before mounting:\n{}", mount.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshfs did not mount within 30 s:\n{}",
                mount.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }

    fn at(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts, which must succeed (nothing holds the mount), and waits
    /// for sshfs to end.
    fn unmount(mut self) {
        ok(Command::new("fusermount3").arg("-u").arg(&self.dir));
        assert!(
            self.wait_end(Duration::from_secs(20)),
            "sshfs did not end after the unmount:\n{}",
            self.log()
        );
    }

    /// Whether sshfs ended within `limit` (an error waiting counts as
    /// ended: this runs in `drop`, where nothing may panic).
    fn wait_end(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted(&self.dir) {
            let quiet = |args: &[&str]| {
                Command::new("fusermount3")
                    .args(args)
                    .arg(&self.dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !quiet(&["-u"]) {
                quiet(&["-u", "-z"]);
            }
        }
        if !self.wait_end(Duration::from_secs(10)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the sandbox holds after the sshfs scenario, read without the server.
struct Left {
    /// Names at the root and in /d, sorted.
    root: Vec<String>,
    d: Vec<String>,
    /// /d/kept.bin.
    kept: Vec<u8>,
}

/// A user edits files on an sshfs mount of their sandbox; returns what
/// /d/kept.bin must hold at the end. `began` is before the server started.
fn sshfs_scenario(server: &Server, began: SystemTime) -> Vec<u8> {
    let local = tempfile::tempdir().expect("tempdir");
    let l = |name: &str| local.path().join(name);
    let m = Mount::new(server, USER, local.path());
    let read = |p: &str| {
        std::fs::read(m.at(p))
            .unwrap_or_else(|e| panic!("reading {p} on the mount: {e}\n{}", m.log()))
    };
    let sh = |script: &str| {
        ok(Command::new("sh")
            .args(["-ec", script, "sh"])
            .current_dir(&m.dir));
    };
    std::fs::create_dir(m.at("d")).expect("mkdir d on the mount");

    // `cp` in, read back.
    let first = pattern(3 * MIB, 1);
    std::fs::write(l("first.bin"), &first).expect("write");
    ok(Command::new("cp").arg(l("first.bin")).arg(m.at("d/f.bin")));
    same_bytes(&read("d/f.bin"), &first, "the copied file");

    // Overwritten by a shorter file: nothing of the old tail is left.
    let mut want = pattern(MIB + 5, 2);
    std::fs::write(l("second.bin"), &want).expect("write");
    ok(Command::new("cp").arg(l("second.bin")).arg(m.at("d/f.bin")));
    same_bytes(&read("d/f.bin"), &want, "the overwritten file");

    // Appended to, by a program (O_APPEND) and by the shell.
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.at("d/f.bin"))
        .and_then(|mut f| f.write_all(b"+appended"))
        .expect("append on the mount");
    sh("printf '%s' +shell >> d/f.bin");
    want.extend_from_slice(b"+appended+shell");
    same_bytes(&read("d/f.bin"), &want, "the appended file");

    // Four bytes written in place at offset 8: the bytes around them stay,
    // and so does the length.
    std::fs::write(l("four"), b"WXYZ").expect("write");
    ok(Command::new("dd")
        .arg(format!("if={}", l("four").display()))
        .arg(format!("of={}", m.at("d/f.bin").display()))
        .args(["bs=4", "seek=2", "count=1", "conv=notrunc", "status=none"]));
    want[8..12].copy_from_slice(b"WXYZ");
    same_bytes(&read("d/f.bin"), &want, "the file written in place");

    // Renamed; then a new file renamed over an existing one, as editors save.
    ok(Command::new("mv")
        .arg(m.at("d/f.bin"))
        .arg(m.at("d/kept.bin")));
    assert!(!m.at("d/f.bin").exists(), "d/f.bin is still there after mv");
    same_bytes(&read("d/kept.bin"), &want, "the renamed file");
    sh("echo old > d/victim.txt && echo replacement > d/new.txt && mv d/new.txt d/victim.txt");
    assert_eq!(read("d/victim.txt"), b"replacement\n");
    assert!(
        !m.at("d/new.txt").exists(),
        "d/new.txt is still there after mv"
    );

    // `ls -l`: every time shown is from this test's minutes (not 1970:
    // directories without a time of their own show the server's start).
    let now = SystemTime::now();
    for (dir, must) in [(".", "d"), ("d", "kept.bin")] {
        let listing = ok(Command::new("ls")
            .args(["-la", "--time-style=+%s", dir])
            .current_dir(&m.dir));
        let mut names = Vec::new();
        for line in listing.lines() {
            // "-rw-r--r-- 1 root root 1048590 1796291931 kept.bin"; "total N" is not an entry.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let &[_, _, _, _, _, secs, name] = fields.as_slice() else {
                continue;
            };
            // The mount root's `..` is the local parent, if shown at all.
            if name == ".." {
                continue;
            }
            let t = UNIX_EPOCH + Duration::from_secs(secs.parse().expect("seconds"));
            assert!(
                t + Duration::from_secs(60) >= began && t <= now + Duration::from_secs(60),
                "{dir}/{name} shows {secs} (the test began at {began:?}):\n{listing}"
            );
            names.push(name.to_owned());
        }
        assert!(
            names.iter().any(|n| n == must),
            "ls {dir} lacks {must}:\n{listing}"
        );
    }
    let modified = std::fs::metadata(m.at("d/kept.bin"))
        .and_then(|md| md.modified())
        .expect("stat on the mount");
    assert!(
        near(modified, now, Duration::from_secs(60)),
        "d/kept.bin was modified at {modified:?}, now is {now:?}"
    );

    // Removed; a directory tree made and removed.
    ok(Command::new("rm").arg(m.at("d/victim.txt")));
    assert!(
        !m.at("d/victim.txt").exists(),
        "d/victim.txt is still there after rm"
    );
    sh("mkdir -p e/f && rmdir e/f && rmdir e");
    assert!(!m.at("e").exists(), "e is still there after rmdir");

    m.unmount();
    want
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn sshfs_creates_writes_overwrites_appends_renames_and_removes_on_file() {
    let began = SystemTime::now();
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path(), USER), &[USER], &[]);
    let want = sshfs_scenario(&server, began);
    let home = root.path().join(USER);
    let names = |dir: &Path| {
        sorted(
            std::fs::read_dir(dir)
                .expect("ls")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
        )
    };
    let left = Left {
        root: names(&home),
        d: names(&home.join("d")),
        kept: std::fs::read(home.join("d/kept.bin")).expect("kept.bin on disk"),
    };
    same_bytes(&left.kept, &want, "d/kept.bin on disk");
    assert_eq!(
        (left.root, left.d),
        (vec!["d".to_owned()], vec!["kept.bin".to_owned()])
    );
    server.settled();
}

async fn names_in(sb: &UserSandbox, dir: &str) -> Vec<String> {
    let entries: Vec<_> = sb.list(dir).try_collect().await.expect("list");
    sorted(entries.into_iter().map(|e| e.name).collect())
}

#[test]
fn sshfs_creates_writes_overwrites_appends_renames_and_removes_on_garage() {
    let began = SystemTime::now();
    let s3 = S3Server::garage();
    s3.create_bucket("sftp");
    let mappings = s3_mappings(&s3, "sftp");
    let server = Server::start(&mappings, &[USER], &[]);
    let want = sshfs_scenario(&server, began);
    let corral = Corral::from_json(&mappings, CacheConfig::default()).expect("corral");
    let sb = corral.sandbox(&Identity::user(USER)).expect("sandbox");
    let left = runtime().block_on(async {
        Left {
            root: names_in(&sb, "/").await,
            d: names_in(&sb, "/d").await,
            kept: sb
                .read("/d/kept.bin")
                .await
                .expect("read kept.bin")
                .to_vec(),
        }
    });
    same_bytes(&left.kept, &want, "d/kept.bin in the bucket");
    assert_eq!(
        (left.root, left.d),
        (vec!["d".to_owned()], vec!["kept.bin".to_owned()])
    );
    server.settled();
}

// ---------------------------------------------------------------------------
// rclone sync

/// The harness's `S:` remote, at log level INFO (the harness passes `-q`,
/// which rclone refuses together with `-v`), times in UTC.
fn rclone_verbose(server: &Server, user: &str) -> Command {
    let quiet = rclone(server, user);
    let mut c = Command::new(quiet.get_program());
    for (k, v) in quiet.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.env("TZ", "UTC")
        .args(["-v", "--retries", "1", "--low-level-retries", "1"]);
    c
}

/// One local file of [`local_tree`].
struct LocalFile {
    /// Relative to the tree, `/`-separated.
    path: String,
    size: usize,
    modified: SystemTime,
}

/// 21 small files in three directories (`a`, `b`, `b/c`), each of its own
/// size and with its own modification time in 2024, a fraction past a
/// second: a server that dropped the times rclone sets would show others.
fn local_tree(dir: &Path) -> Vec<LocalFile> {
    let base = UNIX_EPOCH + Duration::from_secs(1_715_000_000);
    (0..21)
        .map(|i| {
            let path = format!("{}/file-{i:02}.txt", ["a", "b", "b/c"][i % 3]);
            let body = format!("file {i}\n").repeat(i + 1);
            let modified =
                base + Duration::from_secs(3_601 * i as u64) + Duration::from_millis(250);
            let p = dir.join(&path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, &body).expect("write");
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(modified))
                .expect("set mtime");
            LocalFile {
                path,
                size: body.len(),
                modified,
            }
        })
        .collect()
}

/// `t` as `rclone lsl` shows it in UTC, to the second: `2024-05-06 12:53:20`.
fn lsl_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// What `rclone lsl` lists: path → (size, time to the second).
fn lsl(server: &Server, remote: &str) -> BTreeMap<String, (usize, String)> {
    let listing = ok(rclone_verbose(server, USER).args(["lsl", remote]));
    listing
        .lines()
        .map(|l| {
            // "       63 2024-05-06 12:53:20.000000000 a/file-00.txt"
            let f: Vec<&str> = l.split_whitespace().collect();
            let &[size, date, time, path] = f.as_slice() else {
                panic!("an lsl line of another shape: {l:?}\n{listing}");
            };
            let seconds = time.split('.').next().expect("time");
            (
                path.to_owned(),
                (size.parse().expect("size"), format!("{date} {seconds}")),
            )
        })
        .collect()
}

/// How many files rclone's INFO log says it sent (new or replacing).
fn copied(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(": Copied (new)") || l.contains(": Copied (replaced"))
        .count()
}

/// Asserts that a sync's INFO log shows no file moved.
#[track_caller]
fn moved_nothing(log: &str) {
    for sign in ["Copied (", "Updated modification time", "Deleted"] {
        assert!(!log.contains(sign), "the second sync did {sign:?}:\n{log}");
    }
    assert!(log.contains("There was nothing to transfer"), "{log}");
}

#[test]
fn rclone_sync_twice_moves_nothing_the_second_time_on_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path(), USER), &[USER], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let files = local_tree(local.path());
    let tree = local.path().display().to_string();
    let sync = || ok_stderr(rclone_verbose(&server, USER).args(["sync", &tree, "S:/tree"]));

    let first = sync();
    assert_eq!(copied(&first), files.len(), "{first}");
    // The times rclone set (SETSTAT) are the files' own on disk.
    for f in &files {
        let on_disk = std::fs::metadata(root.path().join(USER).join("tree").join(&f.path))
            .and_then(|m| m.modified())
            .expect("stat on disk");
        assert_eq!(lsl_time(on_disk), lsl_time(f.modified), "{}", f.path);
    }
    let second = sync();
    moved_nothing(&second);

    let want: BTreeMap<_, _> = files
        .iter()
        .map(|f| (f.path.clone(), (f.size, lsl_time(f.modified))))
        .collect();
    assert_eq!(lsl(&server, "S:/tree"), want);
    server.settled();
}

/// Prints "PATH MTIME" for each path given after the port, user and
/// password, as STAT answers.
const PARAMIKO_STAT: &str = "
import sys, paramiko
t = paramiko.Transport(('127.0.0.1', int(sys.argv[1])))
t.connect(username=sys.argv[2], password=sys.argv[3])
s = paramiko.SFTPClient.from_transport(t)
for p in sys.argv[4:]:
    print(p, s.stat(p).st_mtime)
s.close()
t.close()
";

#[test]
fn rclone_sync_on_s3_moves_nothing_the_second_time_with_update() {
    let s3 = S3Server::garage();
    s3.create_bucket("sftp");
    let mappings = s3_mappings(&s3, "sftp");
    let server = Server::start(&mappings, &[USER], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let files = local_tree(local.path());
    let tree = local.path().display().to_string();
    // S3 listings show the upload time, not the time rclone set: with the
    // defaults every file differs from its copy on each run, and is sent
    // again. `--update` sends only what is newer here than there.
    let sync =
        || ok_stderr(rclone_verbose(&server, USER).args(["sync", "--update", &tree, "S:/tree"]));

    let first = sync();
    assert_eq!(copied(&first), files.len(), "{first}");
    let second = sync();
    moved_nothing(&second);

    // Listings: every file, of its size (their times are the uploads').
    let listed = lsl(&server, "S:/tree");
    let names: Vec<&String> = listed.keys().collect();
    let mut want: Vec<&String> = files.iter().map(|f| &f.path).collect();
    want.sort();
    assert_eq!(names, want);
    for f in &files {
        assert_eq!(listed[&f.path].0, f.size, "{}", f.path);
    }
    // STAT, through the server, shows the time rclone set (kept as the
    // object's `mtime` metadata, rclone's own convention on S3).
    let mut stat = Command::new(clients_venv().join("bin/python"));
    stat.args([
        "-c",
        PARAMIKO_STAT,
        &server.port.to_string(),
        USER,
        &password(USER),
    ])
    .args(files.iter().map(|f| format!("/tree/{}", f.path)));
    let stats = ok(&mut stat);
    let shown: BTreeMap<&str, &str> = stats.lines().filter_map(|l| l.split_once(' ')).collect();
    for f in &files {
        let secs = f
            .modified
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            .to_string();
        assert_eq!(
            shown.get(format!("/tree/{}", f.path).as_str()),
            Some(&secs.as_str()),
            "{}:\n{stats}",
            f.path
        );
    }
    server.settled();
}
