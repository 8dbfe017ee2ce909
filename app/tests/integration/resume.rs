//! No orphaned multipart uploads, and uploads that resume after a crash:
//! real `corral` processes, killed with SIGKILL, on a real Garage node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_fixtures::servers::S3Server;

const SIZE: usize = 200 << 20;

fn corral_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.args(args)
        .current_dir(dir)
        .env("USER", "tester")
        .env("CORRAL_STATE_DIR", dir.join("state"))
        .env_remove("CORRAL_CONFIG")
        .env("RUST_LOG", "warn");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    corral_cmd(dir, args).output().expect("run corral")
}

#[track_caller]
fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = run(dir, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "corral {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed)
        .collect()
}

struct Setup {
    server: S3Server,
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup() -> Setup {
    let server = S3Server::garage();
    server.create_bucket("transfers");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("corral.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"mappings": {{"": {{"": {{"type":"S3","bucketName":"transfers","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}}}"#,
            server.endpoint, server.access_key, server.secret_key
        ),
    )
    .expect("config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    Setup {
        server,
        dir,
        config,
    }
}

impl Setup {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--config", self.config.to_str().expect("utf-8")];
        a.extend_from_slice(rest);
        a
    }

    fn journal_entries(&self) -> Vec<serde_json::Value> {
        let dir = self.dir.path().join("state/uploads/tester");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| {
                        serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `cp big.bin corral:/big.bin` with 5 MiB parts sent one at a
    /// time, and kills it with SIGKILL once at least 3 parts are journaled.
    fn upload_and_kill(&self) -> serde_json::Value {
        let args = self.args(&[
            "--max-cloud-cache-upload-size",
            "5MiB",
            "cp",
            "big.bin",
            "corral:/big.bin",
        ]);
        let mut child: Child = corral_cmd(self.dir.path(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn corral");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let parts = self
                .journal_entries()
                .first()
                .map(|e| e["parts"].as_array().map_or(0, Vec::len))
                .unwrap_or(0);
            if parts >= 3 {
                break;
            }
            assert!(
                child.try_wait().expect("wait").is_none(),
                "the upload ended before it could be killed"
            );
            assert!(Instant::now() < deadline, "no part was journaled in time");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let entries = self.journal_entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries[0].clone()
    }

    /// No upload pending on the server, no journal entry.
    #[track_caller]
    fn assert_nothing_left(&self) {
        assert!(self.pending().is_empty(), "zero pending uploads remain");
        assert!(
            self.journal_entries().is_empty(),
            "no journal entry remains"
        );
    }

    fn pending(&self) -> Vec<String> {
        let (out, _) = ok(self.dir.path(), &self.args(&["uploads", "list"]));
        out.lines().map(str::to_owned).collect()
    }
}

#[test]
fn a_killed_upload_resumes_and_sends_only_what_is_missing() {
    let s = setup();
    let data = pattern(SIZE, 1);
    std::fs::write(s.dir.path().join("big.bin"), &data).expect("write");
    let entry = s.upload_and_kill();
    let done = entry["parts"].as_array().expect("parts").len();
    assert_eq!(
        s.pending().len(),
        1,
        "the killed upload is pending on the server"
    );
    // What the operator sees of it: whose it is and what it holds.
    let (listed, _) = ok(s.dir.path(), &s.args(&["--json", "uploads", "list"]));
    let row: serde_json::Value = serde_json::from_str(listed.trim()).expect("json");
    assert_eq!(row["path"], "/big.bin", "{row}");
    assert_eq!(row["owner"], "tester", "{row}");
    // The journal lags the server by the parts that completed as it died.
    let parts = row["parts"].as_u64().expect("parts");
    assert!(parts >= done as u64, "{row}");
    assert_eq!(
        row["stored_bytes"].as_u64(),
        Some(parts * (SIZE / 40) as u64),
        "{row}"
    );

    let (out, err) = ok(
        s.dir.path(),
        &s.args(&["--json", "cp", "--resume", "big.bin", "corral:/big.bin"]),
    );
    assert!(
        err.contains(&format!(
            "resuming the upload: {done} of 40 parts are on the server"
        )),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let sent = report["bytes_sent"].as_u64().expect("bytes_sent");
    assert!(sent < SIZE as u64, "sent {sent} bytes of {SIZE}");
    assert_eq!(
        sent,
        SIZE as u64 - done as u64 * (5 << 20),
        "exactly the missing parts were sent"
    );

    ok(
        s.dir.path(),
        &s.args(&["cp", "corral:/big.bin", "back.bin"]),
    );
    assert!(
        std::fs::read(s.dir.path().join("back.bin")).expect("read") == data,
        "the object differs from the source"
    );
    assert!(s.pending().is_empty(), "nothing pending after completion");
    assert!(s.journal_entries().is_empty(), "the journal entry is gone");
}

#[test]
fn a_changed_source_restarts_from_zero() {
    let s = setup();
    std::fs::write(s.dir.path().join("big.bin"), pattern(SIZE, 2)).expect("write");
    s.upload_and_kill();
    let changed = pattern(SIZE, 3);
    std::fs::write(s.dir.path().join("big.bin"), &changed).expect("rewrite");
    let (out, err) = ok(
        s.dir.path(),
        &s.args(&["--json", "cp", "--resume", "big.bin", "corral:/big.bin"]),
    );
    assert!(err.contains("restarting the upload from zero"), "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(report["bytes_sent"].as_u64(), Some(SIZE as u64));
    ok(
        s.dir.path(),
        &s.args(&["cp", "corral:/big.bin", "back.bin"]),
    );
    assert!(std::fs::read(s.dir.path().join("back.bin")).expect("read") == changed);
    assert!(s.pending().is_empty());
}

#[test]
fn stale_uploads_are_aborted_without_resume() {
    let s = setup();
    std::fs::write(s.dir.path().join("big.bin"), pattern(SIZE, 4)).expect("write");
    s.upload_and_kill();
    assert_eq!(s.pending().len(), 1);
    // Another copy, without --resume, once the entry is older than the threshold.
    std::fs::write(s.dir.path().join("small.txt"), b"small").expect("write");
    let (_, err) = ok(
        s.dir.path(),
        &s.args(&[
            "cp",
            "--stale-after",
            "0s",
            "small.txt",
            "corral:/small.txt",
        ]),
    );
    assert!(
        err.contains("aborted the interrupted upload of /big.bin"),
        "{err}"
    );
    s.assert_nothing_left();
}

/// Uploads left by another tool (boto3) are found and removed; one outside
/// the user's prefix is neither listed nor touched.
#[test]
fn leftovers_of_any_tool_are_listed_and_aborted_within_the_prefix() {
    let s = setup();
    let python = std::env::var("CORRAL_MOTO_SERVER")
        .map(|m| PathBuf::from(m).with_file_name("python"))
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/corral-tools/moto-venv/bin/python")
        });
    let boto = |code: &str| -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{}', aws_secret_access_key='{}', region_name='us-east-1')\n{code}",
            s.server.endpoint, s.server.access_key, s.server.secret_key
        );
        let out = Command::new(&python)
            .arg("-c")
            .arg(script)
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .output()
            .expect("python (boto3 comes with moto)");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    boto(
        "print(s3.create_multipart_upload(Bucket='transfers', Key='users/tester/left/by-boto.bin')['UploadId'])",
    );
    boto(
        "print(s3.create_multipart_upload(Bucket='transfers', Key='users/other/not-mine.bin')['UploadId'])",
    );
    let listed = s.pending();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with("/left/by-boto.bin\t"), "{listed:?}");
    let (out, _) = ok(s.dir.path(), &s.args(&["uploads", "abort", "--all"]));
    assert_eq!(out.trim(), "aborted 1 upload(s)");
    assert!(s.pending().is_empty());
    let rest = boto(
        "print([u['Key'] for u in s3.list_multipart_uploads(Bucket='transfers').get('Uploads', [])])",
    );
    assert_eq!(
        rest.trim(),
        "['users/other/not-mine.bin']",
        "the upload outside the prefix is untouched"
    );

    // The bucket rule for incomplete uploads.
    let out = run(
        s.dir.path(),
        &s.args(&["uploads", "lifecycle", "--days", "2"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        (out.status.success() && stdout.contains("aborted 2 day(s) after they start"))
            || err.contains("does not support bucket lifecycle rules"),
        "{stdout}{err}"
    );
}

/// Ctrl-C (SIGINT) in the middle of an upload: the process aborts its
/// multipart upload before it exits, and forgets it.
#[test]
fn ctrl_c_aborts_the_upload() {
    let s = setup();
    std::fs::write(s.dir.path().join("big.bin"), pattern(SIZE, 5)).expect("write");
    let args = s.args(&[
        "--max-cloud-cache-upload-size",
        "5MiB",
        "cp",
        "big.bin",
        "corral:/big.bin",
    ]);
    let mut child = corral_cmd(s.dir.path(), &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .journal_entries()
        .first()
        .map_or(0, |e| e["parts"].as_array().map_or(0, Vec::len))
        < 2
    {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the upload ended before Ctrl-C"
        );
        assert!(Instant::now() < deadline, "no part was journaled in time");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.pending().is_empty(), "the interrupted upload was aborted");
    assert!(s.journal_entries().is_empty(), "and forgotten");
}

/// `cp` through a fault proxy in front of the server, with retries off;
/// big.bin (12 MiB) fails to upload and its abort fails too: the upload is
/// left pending and its journal entry kept as abandoned.
fn abandon_an_upload(s: &Setup) -> (corral_fixtures::faults::FaultProxy, PathBuf) {
    use corral_fixtures::faults::FaultProxy;
    let proxy = FaultProxy::start(
        &format!("127.0.0.1:{}", s.server.port),
        0.0,
        7,
        Duration::ZERO,
    );
    let via_proxy = s.dir.path().join("via-proxy.json");
    std::fs::write(
        &via_proxy,
        std::fs::read_to_string(&s.config)
            .expect("config")
            .replace(&s.server.endpoint, &proxy.endpoint)
            .replace(
                r#""conditionalCreate":false"#,
                r#""conditionalCreate":false,"maxRetries":0"#,
            ),
    )
    .expect("config");
    let args = |rest: &[&'static str]| {
        let mut a = vec!["--config".to_owned(), via_proxy.display().to_string()];
        a.extend(rest.iter().map(|r| (*r).to_owned()));
        a
    };
    std::fs::write(s.dir.path().join("big.bin"), pattern(12 << 20, 5)).expect("write");
    proxy.force("UploadPart", "500 InternalError", 1_000);
    proxy.force("AbortMultipartUpload", "500 InternalError", 1_000);
    let a = args(&[
        "--max-cloud-cache-upload-size",
        "5MiB",
        "cp",
        "big.bin",
        "corral:/big.bin",
    ]);
    let out = run(
        s.dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let error = err
        .lines()
        .find(|l| l.starts_with("corral: "))
        .unwrap_or_default();
    assert!(
        error.contains("is left pending on the server") && error.contains("corral uploads abort"),
        "{err}"
    );
    assert!(
        error.contains("/big.bin") && !error.contains("users/"),
        "the error names the user's path, not the key: {error}"
    );
    let aborts = proxy
        .stats()
        .faults
        .get(&(
            "500 InternalError".to_owned(),
            "AbortMultipartUpload".to_owned(),
        ))
        .copied()
        .unwrap_or(0);
    assert!(aborts >= 3, "the abort was tried {aborts} times");
    assert_eq!(s.pending().len(), 1, "the upload is pending");
    let entries = s.journal_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["abandoned"], true);
    // The server answers again.
    proxy.force("UploadPart", "500 InternalError", 0);
    proxy.force("AbortMultipartUpload", "500 InternalError", 0);
    (proxy, via_proxy)
}

/// An abandoned upload is aborted by the next run, whatever its age.
#[test]
fn an_upload_whose_abort_fails_is_kept_and_aborted_by_the_next_run() {
    let s = setup();
    let (_proxy, via_proxy) = abandon_an_upload(&s);
    std::fs::write(s.dir.path().join("small.txt"), b"small").expect("write");
    let config = via_proxy.display().to_string();
    let a = [
        "--config",
        config.as_str(),
        "cp",
        "small.txt",
        "corral:/small.txt",
    ];
    let (_, err) = ok(s.dir.path(), &a);
    assert!(
        err.contains("aborted the interrupted upload of /big.bin"),
        "{err}"
    );
    s.assert_nothing_left();
}

/// `cp --resume` continues an abandoned upload instead of aborting it, and
/// the object comes out whole.
#[test]
fn an_abandoned_upload_can_be_resumed() {
    let s = setup();
    let (_proxy, via_proxy) = abandon_an_upload(&s);
    let config = via_proxy.display().to_string();
    let a = [
        "--config",
        config.as_str(),
        "--max-cloud-cache-upload-size",
        "5MiB",
        "cp",
        "--resume",
        "big.bin",
        "corral:/big.bin",
    ];
    let (_, err) = ok(s.dir.path(), &a);
    assert!(err.contains("resuming the upload"), "{err}");
    s.assert_nothing_left();
    ok(
        s.dir.path(),
        &s.args(&["cp", "corral:/big.bin", "back.bin"]),
    );
    assert!(
        std::fs::read(s.dir.path().join("back.bin")).expect("read")
            == std::fs::read(s.dir.path().join("big.bin")).expect("read")
    );
}
