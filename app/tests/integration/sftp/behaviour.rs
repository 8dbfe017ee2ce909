//! What users of `corral serve sftp` rely on, with the clients they use:
//! paramiko's defaults on large files, a user who holds many handles next
//! to one who transfers, a bulk uploader pipelining thousands of files, a
//! killed client, packets the server does not know, files written in
//! place, files visible while they are written, modification times, `..`
//! at the root, and the user's own File sandbox made at first login.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_fixtures::servers::S3Server;

use super::{Server, ok, paramiko, pattern, sftp_batch};

fn behaviour(server: &Server, user: &str, name: &str, args: &[&str]) -> String {
    let mut all = vec![name];
    all.extend_from_slice(args);
    ok(&mut paramiko(server, user, "behaviour.py", &all))
}

/// Mappings of a File sandbox `<root>/%u` (made at first login).
fn file_mappings(root: &Path) -> String {
    format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.display())).expect("json")
    )
}

fn s3_mappings(s: &S3Server, bucket: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"{bucket}","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

#[test]
fn paramiko_gets_and_puts_300_mib_with_its_defaults() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    let local = tempfile::tempdir().expect("tempdir");
    let file = local.path().join("big.bin").display().to_string();
    let out = behaviour(
        &server,
        "alice",
        "big",
        &[&(300u64 << 20).to_string(), &file],
    );
    assert!(out.contains("ok"), "{out}");
    // paramiko sent a READ for every 32 KiB (9,600 at once): every one was
    // answered, none refused for being one of many.
    assert!(
        !server.log().contains("too many requests waiting"),
        "{}",
        server.log()
    );
    server.settled();
}

/// A paramiko scenario left running, with its stdin kept open.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the client");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Waits for a line starting with `what`.
    #[track_caller]
    fn expect(&self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(what) => return l,
                Ok(l) if l.starts_with("FAIL") => panic!("the client failed: {l}"),
                Ok(_) => {}
                Err(e) => panic!("no {what:?} from the client within {limit:?}: {e}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_user_holding_64_handles_never_holds_up_another() {
    let _alone = super::timing_group();
    let root = tempfile::tempdir().expect("tempdir");
    let src = root.path().join("greedy/src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..8 {
        std::fs::write(src.join(format!("{i}.bin")), pattern(24 << 20, i)).expect("source");
    }
    // 256 MiB in all: a quarter (64 MiB) per user. Before transfers took
    // cache as they needed it, four opens held all of it.
    let server = Server::start(
        &file_mappings(root.path()),
        &["greedy", "other"],
        &["--max-cloud-cache-size", "256MiB", "--cache-wait", "10s"],
    );
    let greedy = Running::start(paramiko(&server, "greedy", "behaviour.py", &["hold", "64"]));
    // 32 readers started, then 32 writers send 4 MiB each at once: greedy
    // wants twice its share and holds its share, no more (its own writes
    // wait for its own room, and SSH's flow control holds it back).
    greedy.expect("opened", Duration::from_secs(60));
    let key = "corral_cache_user_reserved_bytes{user=\"greedy\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let held = server.metrics().get(key).copied().unwrap_or(0.0);
        if held >= (48u64 << 20) as f64 || Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        held >= (48u64 << 20) as f64,
        "greedy holds only {held} bytes: {:?}",
        server.metrics()
    );
    assert!(
        held <= (64u64 << 20) as f64,
        "greedy holds {held} bytes, over its share"
    );

    // The other user uploads and downloads 20 MiB meanwhile, without
    // waiting (a wait for room in the cache would take the whole 10 s).
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(20 << 20, 9);
    std::fs::write(dir.path().join("up.bin"), &data).expect("local");
    let started = Instant::now();
    let out = sftp_batch(
        &server,
        "other",
        64,
        "put up.bin\nget up.bin back.bin\n",
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the other user waited {:?}",
        started.elapsed()
    );
    assert!(std::fs::read(dir.path().join("back.bin")).expect("back") == data);
    let m = server.metrics();
    assert!(
        m[key] >= (48u64 << 20) as f64 && m["corral_sessions"] >= 1.0,
        "greedy still holds its share: {m:?}"
    );
    // Killed with its writes held back by flow control, greedy's end is
    // seen once its waits for its own room give up (the cache wait) and
    // the server reads on: it held only its share until then.
    drop(greedy);
    settled_within(&server, Duration::from_secs(20));
}

/// Waits until nothing holds or waits for cache and no session is open;
/// fails after `limit`.
#[track_caller]
fn settled_within(server: &Server, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let m = server.metrics();
        let zero = |k: &str| m.get(k).copied().unwrap_or(-1.0) == 0.0;
        if zero("corral_cache_reserved_bytes")
            && zero("corral_cache_waiting_transfers")
            && zero("corral_sessions")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled within {limit:?}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bulk_uploader_pipelining_2000_files_completes() {
    let _alone = super::timing_group();
    let root = tempfile::tempdir().expect("tempdir");
    // A small cache, so that holding a part per open file would run out.
    let server = Server::start(
        &file_mappings(root.path()),
        &["bulk"],
        &["--max-cloud-cache-size", "64MiB", "--cache-wait", "20s"],
    );
    let out = behaviour(&server, "bulk", "pipeline", &["2000", "64", "1024"]);
    assert!(out.starts_with("ok 2000 files"), "{out}");
    let on_disk = std::fs::read_dir(root.path().join("bulk/bulk"))
        .expect("ls")
        .count();
    assert_eq!(on_disk, 2000);
    settled_within(&server, Duration::from_secs(5));
}

#[test]
fn a_client_killed_mid_pipeline_releases_everything_at_once() {
    let _alone = super::timing_group();
    let s3 = S3Server::garage();
    s3.create_bucket("pipe");
    let server = Server::start(
        &s3_mappings(&s3, "pipe"),
        &["bulk"],
        &["--cache-wait", "60s"],
    );
    let mut c = paramiko(
        &server,
        "bulk",
        "behaviour.py",
        &["pipeline", "2000", "64", "65536", "640"],
    );
    let out = super::run(&mut c, Duration::from_secs(120));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Its writes and uploads in flight are dropped, their cache returned,
    // within the moment (not after the cache wait).
    settled_within(&server, Duration::from_secs(1));
    let m = server.metrics();
    assert!(
        m.get("corral_transfers_total{direction=\"upload\",result=\"aborted\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
}

#[test]
fn unknown_and_malformed_packets_are_answered_and_the_session_goes_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    assert!(behaviour(&server, "alice", "garbage", &[]).contains("ok"));
    server.settled();
}

fn in_place_on(mappings: &str, big: u64, extra: &[&str]) {
    let server = Server::start(mappings, &["alice"], extra);
    let out = behaviour(&server, "alice", "in-place", &[&big.to_string()]);
    assert!(out.contains("ok"), "{out}");
    server.settled();
}

#[test]
fn writes_without_truncation_keep_the_other_bytes_on_file() {
    let root = tempfile::tempdir().expect("tempdir");
    in_place_on(
        &file_mappings(root.path()),
        12 << 20,
        &["--max-cloud-cache-upload-size", "5MiB"],
    );
}

#[test]
fn writes_without_truncation_keep_the_other_bytes_on_memory() {
    in_place_on(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        12 << 20,
        &["--max-cloud-cache-upload-size", "5MiB"],
    );
}

#[test]
fn writes_without_truncation_keep_the_other_bytes_on_garage() {
    let s3 = S3Server::garage();
    s3.create_bucket("inplace");
    in_place_on(
        &s3_mappings(&s3, "inplace"),
        12 << 20,
        &["--max-cloud-cache-upload-size", "5MiB"],
    );
}

#[test]
fn writes_without_truncation_keep_the_other_bytes_on_moto() {
    let s3 = S3Server::moto();
    s3.create_bucket("inplace");
    in_place_on(
        &s3_mappings(&s3, "inplace"),
        12 << 20,
        &["--max-cloud-cache-upload-size", "5MiB"],
    );
}

#[test]
fn a_file_being_written_is_visible_and_never_read_half_done() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    assert!(behaviour(&server, "alice", "visible", &[]).contains("ok"));
    server.settled();
    let s3 = S3Server::moto();
    s3.create_bucket("visible");
    let server = Server::start(&s3_mappings(&s3, "visible"), &["alice"], &[]);
    assert!(behaviour(&server, "alice", "visible", &[]).contains("ok"));
    server.settled();
}

#[test]
fn modification_times_are_kept_on_file_and_s3() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    assert!(behaviour(&server, "alice", "times", &[]).contains("ok"));
    let meta = std::fs::metadata(root.path().join("alice/t.txt")).expect("t.txt");
    let mtime = meta
        .modified()
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(mtime, 1_600_000_000, "the file's own time");
    for s3 in [S3Server::moto(), S3Server::garage()] {
        s3.create_bucket("times");
        let server = Server::start(&s3_mappings(&s3, "times"), &["alice"], &[]);
        assert!(behaviour(&server, "alice", "times", &[]).contains("ok"));
        server.settled();
    }
}

#[test]
fn cd_up_at_the_root_stays_at_the_root() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sftp_batch(
        &server,
        "alice",
        1,
        "cd ..\npwd\ncd /..\npwd\nls\n",
        dir.path(),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("escapes"), "{stderr}");
    // `pwd` answers with the remote directory: the root, both times.
    let dirs: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Remote working directory: "))
        .collect();
    assert_eq!(dirs, ["/", "/"], "{stdout}");
}

#[test]
fn a_users_file_sandbox_is_made_at_first_login_and_only_below_the_base() {
    let root = tempfile::tempdir().expect("tempdir");
    let base = root.path().join("homes");
    std::fs::create_dir(&base).expect("base");
    let mappings = format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u/files", base.display())).expect("json")
    );
    let server = Server::start(&mappings, &["newcomer"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f.txt"), b"first").expect("local");
    let out = sftp_batch(&server, "newcomer", 1, "put f.txt\nls -l\n", dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = base.join("newcomer/files");
    assert_eq!(
        std::fs::read(made.join("f.txt")).expect("uploaded"),
        b"first"
    );
    use std::os::unix::fs::PermissionsExt;
    for d in [base.join("newcomer"), made] {
        let mode = std::fs::metadata(&d).expect("made").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    assert!(
        server.log().contains("made the user's File sandbox"),
        "{}",
        server.log()
    );
    // A base that is missing is never made.
    drop(server);
    let gone = root.path().join("missing-base");
    let mappings = format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", gone.display())).expect("json")
    );
    let server = Server::start(&mappings, &["newcomer"], &[]);
    let out = sftp_batch(&server, "newcomer", 1, "ls\n", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("No such file"),
        "a sandbox under a missing base was served: {stderr}"
    );
    assert!(!gone.exists(), "the base was made");
    assert!(
        server.log().contains("cannot make the user's File sandbox"),
        "{}",
        server.log()
    );
}

#[test]
fn openssh_sees_what_it_was_told() {
    // The server speaks to clients, not to operators: no setting, flag or
    // OS error number in what a client prints.
    let root = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&file_mappings(root.path()), &["alice"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sftp_batch(
        &server,
        "alice",
        1,
        "-get /nothing.txt\n-mkdir /a/b/c\n-rmdir /\n-rename /x /y\n",
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for leak in ["os error", "maxCloud", "--", "create it first", "parents"] {
        assert!(
            !stderr.contains(leak),
            "{leak:?} in what the client printed:\n{stderr}"
        );
    }
    assert!(stderr.contains("No such file"), "{stderr}");
}
