//! The `corral` binary, end to end: on the embedded default (File) and on a
//! real S3 server (s3s-fs), with the errors users will hit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use corral_fixtures::servers::{Pki, S3Server, Squid, free_port};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn corral(dir: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .current_dir(dir)
        .env_remove("CORRAL_CONFIG")
        .env("USER", "tester")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run corral");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(dir: &Path, args: &[&str]) -> String {
    let r = corral(dir, args);
    assert_eq!(r.code, 0, "corral {args:?} failed:\n{}", r.stderr);
    r.stdout
}

#[track_caller]
fn fails(dir: &Path, args: &[&str], code: i32, needle: &str) -> String {
    let r = corral(dir, args);
    assert_eq!(
        r.code, code,
        "corral {args:?}: expected exit {code}, got {}:\n{}{}",
        r.code, r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "corral {args:?}: stderr lacks {needle:?}:\n{}",
        r.stderr
    );
    r.stderr
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

/// The same scenario on any sandbox: upload, list, read, download, mkdir, mv, rm.
fn scenario(dir: &Path, cfg: &[&str]) {
    let args =
        |rest: &[&str]| -> Vec<String> { cfg.iter().chain(rest).map(|s| s.to_string()).collect() };
    let run_ok = |rest: &[&str]| {
        let a = args(rest);
        ok(dir, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let big = pattern(20 << 20, 1); // 20 MiB: a multipart upload of three parts
    std::fs::write(dir.join("big.bin"), &big).expect("write");
    std::fs::write(dir.join("small.txt"), b"hello corral\n").expect("write");
    run_ok(&["cp", "big.bin", "small.txt", "corral:/in/"]);
    let listing = run_ok(&["ls", "corral:/in"]);
    assert_eq!(listing, "big.bin\nsmall.txt\n");
    assert_eq!(run_ok(&["cat", "corral:/in/small.txt"]), "hello corral\n");
    let long = run_ok(&["ls", "-l", "corral:/in"]);
    assert!(
        long.contains(&format!("{} ", 20 << 20)) && long.contains("big.bin"),
        "{long}"
    );
    let stat = run_ok(&["--json", "stat", "corral:/in/big.bin"]);
    let v: serde_json::Value = serde_json::from_str(stat.trim()).expect("json");
    assert_eq!(v["size"], 20 << 20);
    assert_eq!(v["type"], "file");

    run_ok(&["cp", "--verify", "corral:/in/big.bin", "back.bin"]);
    run_ok(&["cp", "--verify", "small.txt", "corral:/in/verified.txt"]);
    run_ok(&["rm", "corral:/in/verified.txt"]);
    assert!(
        std::fs::read(dir.join("back.bin")).expect("read") == big,
        "downloaded bytes differ"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corral-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    run_ok(&["mkdir", "-p", "corral:/a/b/c"]);
    assert_eq!(run_ok(&["ls", "corral:/a/b"]), "c/\n");
    run_ok(&["cp", "-r", "corral:/in", "corral:/a/copy"]);
    assert_eq!(run_ok(&["ls", "corral:/a/copy"]), "big.bin\nsmall.txt\n");
    run_ok(&["mv", "corral:/a/copy", "corral:/moved"]);
    assert_eq!(run_ok(&["ls", "corral:/moved"]), "big.bin\nsmall.txt\n");
    assert_eq!(run_ok(&["ls", "corral:/a"]), "b/\n");
    let tree = dir.join("tree");
    run_ok(&["cp", "-r", "corral:/moved", tree.to_str().expect("utf-8")]);
    assert!(std::fs::read(tree.join("big.bin")).expect("read") == big);
    run_ok(&["rm", "-r", "corral:/moved", "corral:/a"]);
    assert_eq!(run_ok(&["ls", "corral:/"]), "in/\n");
}

#[test]
fn embedded_default_file_sandbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    scenario(dir.path(), &[]);
    // The embedded default is a real directory.
    assert!(dir.path().join("corral-data/in/big.bin").is_file());
    // Errors with their exit codes.
    fails(
        dir.path(),
        &["cat", "corral:/../../etc/passwd"],
        4,
        "escapes the sandbox",
    );
    fails(dir.path(), &["cat", "corral:/nothing"], 3, "/nothing");
    fails(
        dir.path(),
        &["ls", "/etc"],
        2,
        "is not a sandbox path: write sandbox paths as corral:/PATH",
    );
    fails(
        dir.path(),
        &["cp", "no-such-file", "corral:/x"],
        3,
        "cannot read no-such-file",
    );
    fails(
        dir.path(),
        &["cp", "corral:/in/small.txt", "/nonexistent/dir/out.txt"],
        3,
        "cannot write",
    );
    let e = fails(dir.path(), &["rm", "corral:/in"], 5, "is not empty");
    assert!(e.contains("(on the command line: -r)"), "{e}");
    fails(
        dir.path(),
        &["mkdir", "corral:/q/r"],
        3,
        "does not exist (on the command line: -p)",
    );
    fails(
        dir.path(),
        &[
            "cp",
            "small.txt",
            "corral:/in/small.txt",
            "--overwrite",
            "in-place-never",
        ],
        5,
        "never overwrites",
    );
    fails(
        dir.path(),
        &["--max-cloud-cache-upload-size", "4MiB", "ls"],
        2,
        "smaller than one multipart part (5 MiB): set it to at least 5MiB (on the command line: --max-cloud-cache-upload-size)",
    );
    fails(
        dir.path(),
        &["--max-cloud-cache-size", "lots", "ls"],
        2,
        "'--max-cloud-cache-size <SIZE>': \"lots\" is not a size",
    );
    // A directory moves whole: nothing is left at the source, empty levels included.
    ok(dir.path(), &["mkdir", "-p", "corral:/deep/x/y"]);
    ok(dir.path(), &["cp", "small.txt", "corral:/deep/x/y/"]);
    let moved = ok(
        dir.path(),
        &["--json", "mv", "corral:/deep", "corral:/deep2"],
    );
    assert!(
        moved.contains("\"files\":1") && moved.contains("\"bytes\":13"),
        "{moved}"
    );
    assert!(
        !dir.path().join("corral-data/deep").exists(),
        "the source directory is left"
    );
    assert_eq!(
        ok(dir.path(), &["cat", "corral:/deep2/x/y/small.txt"]),
        "hello corral\n"
    );
    let copied = ok(
        dir.path(),
        &["--json", "cp", "-r", "corral:/deep2", "corral:/deep3"],
    );
    assert!(
        copied.contains("\"files\":1") && copied.contains("\"bytes\":13"),
        "{copied}"
    );
    // Names that are special to a URL library, or that look like staging
    // names, are plain names: they upload and download unchanged.
    for name in ["x#12", "notes:", "a|", "100% +?.txt"] {
        ok(dir.path(), &["cp", "small.txt", &format!("corral:/{name}")]);
        assert_eq!(
            ok(dir.path(), &["cat", &format!("corral:/{name}")]),
            "hello corral\n",
            "{name}"
        );
        assert!(
            dir.path().join("corral-data").join(name).is_file(),
            "{name} is stored under its own name"
        );
    }
    // A path through a file does not exist.
    fails(
        dir.path(),
        &["mkdir", "-p", "corral:/in/small.txt/sub"],
        5,
        "",
    );

    // Part-file backup mode on File: the old file is kept as .jetbak.
    std::fs::write(dir.path().join("small.txt"), b"second version\n").expect("write");
    ok(
        dir.path(),
        &[
            "cp",
            "--overwrite",
            "5",
            "small.txt",
            "corral:/in/small.txt",
        ],
    );
    assert_eq!(
        ok(dir.path(), &["cat", "corral:/in/small.txt"]),
        "second version\n"
    );
    assert_eq!(
        ok(dir.path(), &["cat", "corral:/in/small.txt.jetbak"]),
        "hello corral\n"
    );
}

fn write_config(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("corral.json");
    std::fs::write(&path, json).expect("write config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn s3_sandbox(server: &S3Server, bucket: &str, path: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"S3","bucketName":"{bucket}","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"{extra}}}"#,
        server.endpoint, server.access_key, server.secret_key
    )
}

#[test]
fn s3_sandbox_end_to_end() {
    // moto: s3s-fs stores directory markers as directories it does not list.
    let server = S3Server::moto();
    server.create_bucket("transfers");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            r#"{{"mappings": {{"": {{"": {}}}}}}}"#,
            s3_sandbox(&server, "transfers", "users/%u", "")
        ),
    );
    let c = config.to_str().expect("utf-8");
    scenario(dir.path(), &["--config", c]);

    // Objects live under the user's prefix in the bucket: look with a raw client.
    let raw: corral_domain::Mappings = serde_json::from_str(&format!(
        r#"{{"": {{"": {}}}}}"#,
        s3_sandbox(&server, "transfers", "", "")
    ))
    .expect("mapping");
    let view = raw
        .resolve(&corral_domain::Identity::user("raw"))
        .expect("view");
    let bucket = corral_adapters::Backends::new()
        .open(&view.mounts()[0].spec)
        .expect("backend");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let meta = rt
        .block_on(bucket.storage.head(&corral_domain::ObjectKey::from_raw(
            "users/tester/in/small.txt",
        )))
        .expect("the object is at users/tester/in/small.txt");
    assert_eq!(meta.size, 13);

    // Another user sees nothing of tester's files.
    assert_eq!(
        ok(
            dir.path(),
            &["--config", c, "--user", "other", "ls", "corral:/"]
        ),
        ""
    );
    fails(
        dir.path(),
        &[
            "--config",
            c,
            "--user",
            "other",
            "cat",
            "corral:/in/small.txt",
        ],
        3,
        "",
    );
    fails(
        dir.path(),
        &["--config", c, "--user", "../tester", "ls"],
        2,
        "cannot be used in a sandbox path",
    );

    // S3 ignores a requested overwrite mode, and says so.
    let err = corral(
        dir.path(),
        &[
            "--config",
            c,
            "cp",
            "--overwrite",
            "part-file-backup",
            "small.txt",
            "corral:/in/small.txt",
        ],
    );
    assert_eq!(err.code, 0, "{}", err.stderr);
    assert!(err.stderr.contains("overwrite mode part-file-backup (5) is not supported by this sandbox and was ignored; in-place-always (1) applies"), "{}", err.stderr);

    // A file of 1 TiB is refused before a byte moves (a sparse local file).
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge)
        .expect("create")
        .set_len(1 << 40)
        .expect("sparse 1 TiB");
    fails(
        dir.path(),
        &["--config", c, "cp", "huge.bin", "corral:/huge.bin"],
        1,
        "accepts files smaller than 1099511627776 bytes (1 TiB)",
    );

    // Secrets never shown.
    let m = ok(dir.path(), &["--config", c, "mappings"]);
    assert!(
        m.contains("secretKey=***") && !m.contains(&server.secret_key),
        "{m}"
    );
    ok(dir.path(), &["--config", c, "check", "--write"]);

    // A cache that fits two uploads and never waits: cp admits its files by
    // what they hold of the cache, so the third waits for room in cp, not in
    // the cache (whose wait of 0 s would fail it), and all three arrive.
    let busy = write_config(
        dir.path(),
        &format!(
            r#"{{"cache": {{"maxCloudCacheSize": "16MiB", "maxCloudCacheUploadSize": "8MiB", "maxCloudCacheDownloadSize": "8MiB", "waitSeconds": 0}},
                "mappings": {{"": {{"": {}}}}}}}"#,
            s3_sandbox(&server, "transfers", "users/%u", "")
        ),
    );
    let busy = busy.to_str().expect("utf-8");
    for i in 0..3 {
        std::fs::write(dir.path().join(format!("f{i}.bin")), pattern(20 << 20, i)).expect("write");
    }
    ok(
        dir.path(),
        &[
            "--config",
            busy,
            "cp",
            "f0.bin",
            "f1.bin",
            "f2.bin",
            "corral:/many/",
        ],
    );
    ok(
        dir.path(),
        &["--config", busy, "cp", "-r", "corral:/many", "many-back"],
    );
    for i in 0..3u8 {
        let name = format!("f{i}.bin");
        assert!(
            std::fs::read(dir.path().join("many-back").join(&name)).expect("read")
                == pattern(20 << 20, i),
            "{name} differs"
        );
    }
}

#[test]
fn conformance_against_a_configured_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = S3Server::moto();
    moto.create_bucket("transfers");
    let config = write_config(
        dir.path(),
        &format!(
            r#"{{"mappings": {{"": {{"": {}}}}}}}"#,
            s3_sandbox(&moto, "transfers", "users/%u", "")
        ),
    );
    let out = ok(
        dir.path(),
        &["--config", config.to_str().expect("utf-8"), "conformance"],
    );
    assert!(
        out.contains("multipart_complete") && out.contains("pass"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");

    // s3s-fs, declared to lack ListMultipartUploads: that case is reported
    // unsupported with its reason, and its other quirks fail the run (exit 1).
    let s3s = S3Server::s3s_fs();
    s3s.create_bucket("transfers");
    let config = write_config(
        dir.path(),
        &format!(
            r#"{{"mappings": {{"": {{"": {}}}}}}}"#,
            s3_sandbox(
                &s3s,
                "transfers",
                "users/%u",
                r#","listMultipartUploads":false"#
            )
        ),
    );
    let r = corral(
        dir.path(),
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--json",
            "conformance",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    let case = |name: &str| {
        v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["case"] == name)
            .cloned()
            .expect(name)
    };
    assert_eq!(case("list_pending_uploads")["result"], "unsupported");
    assert_eq!(
        case("list_pending_uploads")["detail"],
        "cannot list pending multipart uploads"
    );
    assert_eq!(case("longest_key")["result"], "fail");
    assert_eq!(case("put_head_get")["result"], "pass");
    assert!(
        r.stderr.contains("conformance case(s) failed"),
        "{}",
        r.stderr
    );
}

#[test]
fn connection_errors_through_the_binary() {
    let server = S3Server::s3s_fs();
    server.create_bucket("transfers");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |sandbox: String, args: &[&str], code: i32, needle: &str| {
        let config = write_config(
            dir.path(),
            &format!(r#"{{"mappings": {{"": {{"": {sandbox}}}}}}}"#),
        );
        let mut all = vec!["--config", config.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        fails(dir.path(), &all, code, needle)
    };
    run(
        s3_sandbox(&server, "no-such-bucket", "", r#","maxRetries":0"#),
        &["check"],
        3,
        "bucket \"no-such-bucket\" does not exist",
    );
    let wrong = format!(
        r#"{{"type":"S3","bucketName":"transfers","endpointOverride":"{}","accessKeyId":"{}","secretKey":"wrong","maxRetries":0}}"#,
        server.endpoint, server.access_key
    );
    let e = run(wrong, &["ls"], 4, "`secretKey`");
    assert!(!e.contains("wrong\""), "{e}");
    let closed = free_port();
    let unreachable = format!(
        r#"{{"type":"S3","bucketName":"transfers","endpointOverride":"http://127.0.0.1:{closed}","accessKeyId":"a","secretKey":"b","maxRetries":0}}"#
    );
    run(
        unreachable,
        &["ls"],
        1,
        &format!("cannot connect to http://127.0.0.1:{closed}"),
    );

    // A region mismatch, on Garage, which checks the region of every signature.
    let garage = S3Server::garage();
    garage.create_bucket("transfers");
    let wrong_region = s3_sandbox(
        &garage,
        "transfers",
        "",
        r#","region":"eu-west-3","maxRetries":0"#,
    );
    let e = run(
        wrong_region,
        &["ls"],
        2,
        "is not in region \"eu-west-3\": set `region`",
    );
    assert!(e.contains("us-east-1"), "{e}");

    // An unknown user where only named users are mapped.
    let config = write_config(
        dir.path(),
        r#"{"mappings": {"alice": {"": {"type":"Memory"}}}}"#,
    );
    fails(
        dir.path(),
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--user",
            "mallory",
            "ls",
        ],
        4,
        "no sandbox is mapped for user \"mallory\"",
    );

    // Secrets in a config readable by others: a warning.
    let loose = write_config(
        dir.path(),
        &format!(
            r#"{{"mappings": {{"": {{"": {}}}}}}}"#,
            s3_sandbox(&server, "transfers", "", "")
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = corral(
        dir.path(),
        &["--config", loose.to_str().expect("utf-8"), "ls"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("holds secrets and is readable by other users"),
        "{}",
        r.stderr
    );

    // Untrusted certificate and proxy authentication.
    let pki = Pki::generate();
    let tls = S3Server::moto_tls(&pki);
    tls.create_bucket("transfers");
    run(
        s3_sandbox(&tls, "transfers", "", r#","maxRetries":0"#),
        &["ls"],
        1,
        "TLS: the server's certificate is signed by an authority that is not trusted",
    );
    let squid = Squid::start(&pki);
    let via_proxy = s3_sandbox(
        &server,
        "transfers",
        "",
        &format!(
            r#","proxyHost":"127.0.0.1","proxyPort":{},"proxyUserName":"{}","proxyPassword":"bad","maxRetries":0"#,
            squid.http_port, squid.user
        ),
    );
    run(via_proxy, &["ls"], 4, "refused the credentials (407)");
}

/// `corral ls … | head -1` ends quietly: the reader goes away, corral stops
/// without an error message and exits 0.
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("corral-data/big");
    std::fs::create_dir_all(&big).expect("mkdir");
    // 20,000 names: far more than the pipe holds, so writes go on after the
    // reader has gone.
    for i in 0..20_000 {
        std::fs::write(big.join(format!("file-{i:05}")), b"").expect("write");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["ls", "-l", "corral:/big"])
        .current_dir(dir.path())
        .env_remove("CORRAL_CONFIG")
        .env("USER", "tester")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    // The reader is dropped here: the pipe is closed.
    assert!(first.contains("file-00000"), "{first}");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `corral admin mappings set|delete`: JetStream's setSandboxMapping and
/// deleteSandboxMapping on the config file. Other users, the cache section
/// and the file's mode stay; a bad spec is refused naming the user and the
/// key, and nothing changes.
#[test]
fn admin_mappings_set_and_delete_edit_the_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        r#"{"cache": {"maxCloudCacheSize": "256MiB"}, "mappings": {"alice": {"": {"type": "Memory"}}}}"#,
    );
    let cfg = path.to_str().expect("utf-8");
    ok(
        dir.path(),
        &[
            "--config",
            cfg,
            "admin",
            "mappings",
            "set",
            "bob",
            r#"{"": {"type": "Memory", "path": "b/%u"}, "shared": {"type": "Memory"}}"#,
        ],
    );
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert_eq!(now["cache"]["maxCloudCacheSize"], "256MiB");
    assert_eq!(now["mappings"]["alice"][""]["type"], "Memory");
    assert_eq!(now["mappings"]["bob"]["shared"]["type"], "Memory");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Bob's view through the file, as a server reloading it would see it.
    let view = ok(dir.path(), &["--config", cfg, "--user", "bob", "mappings"]);
    assert!(view.contains("/shared"), "{view}");

    // Refused, naming the key; the file is byte for byte what it was.
    let before = std::fs::read(&path).expect("read");
    let e = fails(
        dir.path(),
        &[
            "--config",
            cfg,
            "admin",
            "mappings",
            "set",
            "carol",
            r#"{"": {"type": "S3", "bucketNmae": "x"}}"#,
        ],
        2,
        "bucketNmae",
    );
    assert!(e.contains("carol"), "{e}");
    fails(
        dir.path(),
        &["--config", cfg, "admin", "mappings", "delete", "nobody"],
        3,
        "no mappings for user \"nobody\"",
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);

    ok(
        dir.path(),
        &["--config", cfg, "admin", "mappings", "delete", "bob"],
    );
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert!(now["mappings"].get("bob").is_none(), "{now}");
    assert_eq!(now["mappings"]["alice"][""]["type"], "Memory");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with(".corral-edit-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}
