//! `corral serve webdav` with real clients: litmus (every suite) on
//! Memory, File and Garage; rclone's webdav backend; curl and raw requests
//! for confinement, bad input, cut uploads, and the request sequences of
//! macOS Finder and the Windows mini-redirector.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use corral_domain::ObjectKey;
use corral_fixtures::servers::{Pki, S3Server};

use crate::sftp::{Server, clients_venv, ok, password, pattern, run};

const MEMORY: &str = r#"{"": {"": {"type": "Memory"}}}"#;

fn s3_mappings(s: &S3Server, bucket: &str, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"{bucket}","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

fn file_mappings(base: &std::path::Path) -> String {
    format!(r#"{{"": {{"": "{}/%u"}}}}"#, base.display())
}

fn url(server: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.port)
}

/// curl as `user` (no user: no credentials): the status and the body.
fn curl(server: &Server, user: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-S",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .args(["--max-time", "60"]);
    if let Some(u) = user {
        c.args(["-u", &format!("{u}:{}", password(u))]);
    }
    c.args(args).arg(url(server, path));
    let out = run(&mut c, Duration::from_secs(90));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// One raw HTTP/1.1 request (the head, then `body`), the connection closed
/// after it; the answer's status and text.
fn raw(server: &Server, head: &str, body: &[u8], close_early: bool) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    if close_early {
        // The body is cut: the client goes away.
        s.shutdown(std::net::Shutdown::Both).ok();
        return (0, String::new());
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn basic(user: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password(user)))
}

#[test]
fn litmus_passes_every_suite_on_memory_file_and_garage() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-litmus");
    let files = tempfile::tempdir().expect("tempdir");
    // litmus writes its debug.log where it runs.
    let logs = tempfile::tempdir().expect("tempdir");
    for (backend, mappings) in [
        ("Memory", MEMORY.to_owned()),
        ("File", file_mappings(files.path())),
        ("Garage", s3_mappings(&garage, "dav-litmus", "users/%u")),
    ] {
        let server = Server::start_webdav(&mappings, &["alice"], &[]);
        let out = run(
            Command::new("litmus")
                .args([&url(&server, "/"), "alice", &password("alice")])
                .current_dir(logs.path()),
            Duration::from_secs(300),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let summaries: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("<- summary for"))
            .collect();
        assert_eq!(
            summaries.len(),
            5,
            "{backend}: not every suite ran:\n{text}"
        );
        for s in &summaries {
            assert!(
                s.contains(", 0 failed."),
                "{backend}: {s}\n{text}\n{}",
                server.log()
            );
        }
        assert!(out.status.success(), "{backend}: litmus failed:\n{text}");
    }
}

/// rclone with a `D:` remote on the server (its webdav backend).
fn rclone(server: &Server, user: &str) -> Command {
    let bin = clients_venv().join("bin/rclone");
    let obscured = ok(Command::new(&bin).args(["obscure", &password(user)]));
    let mut c = Command::new(bin);
    c.env("RCLONE_CONFIG_D_TYPE", "webdav")
        .env("RCLONE_CONFIG_D_URL", url(server, "/"))
        .env("RCLONE_CONFIG_D_VENDOR", "other")
        .env("RCLONE_CONFIG_D_USER", user)
        .env("RCLONE_CONFIG_D_PASS", obscured.trim())
        .env("RCLONE_CONFIG", "/dev/null")
        .args(["-q", "--retries", "1", "--low-level-retries", "1"]);
    c
}

#[test]
fn rclone_copies_checks_and_lists_a_tree_on_garage() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-rclone");
    let server = Server::start_webdav(
        &s3_mappings(&garage, "dav-rclone", "users/%u"),
        &["alice"],
        &[],
    );
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(src.path().join("sub/deeper")).expect("dirs");
    let files = [
        ("empty", 0usize),
        ("small.txt", 1234),
        ("sub/six-mib.bin", 6 << 20),
        ("sub/deeper/odd.bin", (5 << 20) + 1),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(src.path().join(name), pattern(*len, i as u64 + 1)).expect("write");
    }
    let src_s = src.path().display().to_string();
    ok(rclone(&server, "alice").args(["copy", &src_s, "D:tree"]));
    ok(rclone(&server, "alice").args(["check", &src_s, "D:tree"]));
    let listing = ok(rclone(&server, "alice").args(["lsl", "D:tree"]));
    for (name, len) in files {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{len} ")) && l.ends_with(name)),
            "{name} ({len} bytes) not listed:\n{listing}"
        );
    }
    let back = tempfile::tempdir().expect("tempdir");
    ok(rclone(&server, "alice").args(["copy", "D:tree", &back.path().display().to_string()]));
    for (name, _) in files {
        assert_eq!(
            std::fs::read(back.path().join(name)).expect("copied back"),
            std::fs::read(src.path().join(name)).expect("source"),
            "{name}"
        );
    }
    assert!(
        server.log().contains("direction=\"upload\""),
        "no transfer log"
    );
}

#[test]
fn logins_are_checked_and_users_see_only_their_own_sandbox() {
    let base = tempfile::tempdir().expect("tempdir");
    let server = Server::start_webdav(&file_mappings(base.path()), &["alice", "bob"], &[]);
    assert_eq!(curl(&server, None, &[], "/").0, 401);
    let out = run(
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-u",
                "alice:wrong",
            ])
            .arg(url(&server, "/")),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "401");
    assert_eq!(
        curl(
            &server,
            Some("bob"),
            &["-X", "PUT", "--data-binary", "bob's"],
            "/b.txt"
        )
        .0,
        201
    );
    let secret = base.path().join("bob/b.txt");
    assert!(secret.exists(), "bob's file is in bob's folder");
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["--data-binary", "mine", "-X", "PUT"],
            "/a.txt"
        )
        .0,
        201
    );
    let (code, body) = curl(&server, Some("alice"), &[], "/a.txt");
    assert_eq!((code, body.as_str()), (200, "mine"));
    assert_eq!(curl(&server, Some("bob"), &[], "/a.txt").0, 404);
    // Ranges.
    let (code, body) = curl(&server, Some("alice"), &["-r", "1-2"], "/a.txt");
    assert_eq!((code, body.as_str()), (206, "in"));
    let (code, _) = curl(&server, Some("alice"), &["-r", "10-20"], "/a.txt");
    assert_eq!(code, 416);
    // Links planted in a File sandbox are never followed.
    std::os::unix::fs::symlink("/etc/passwd", base.path().join("alice/passwd")).expect("link");
    std::os::unix::fs::symlink(base.path().join("bob"), base.path().join("alice/bob"))
        .expect("link");
    for path in ["/passwd", "/bob/b.txt"] {
        let (code, body) = curl(&server, Some("alice"), &[], path);
        assert_ne!(code, 200, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    // Every traversal spelling stays inside or is refused.
    for path in [
        "/../bob/b.txt",
        "/%2e%2e/bob/b.txt",
        "/x/..%2f..%2fbob/b.txt",
        "/..%5cbob%5cb.txt",
        "/a.txt%00",
    ] {
        let (code, _) = curl(&server, Some("alice"), &[], path);
        assert!(matches!(code, 400 | 403 | 404), "{path}: {code}");
    }
    for dest in [
        "http://other.example/stolen".to_owned(),
        url(&server, "/../bob/stolen"),
        url(&server, "/%2e%2e/bob/stolen"),
        "/../../stolen".to_owned(),
    ] {
        for method in ["COPY", "MOVE"] {
            let (code, _) = curl(
                &server,
                Some("alice"),
                &["-X", method, "-H", &format!("Destination: {dest}")],
                "/a.txt",
            );
            assert!(code >= 400, "{method} to {dest}: {code}");
        }
    }
    // Bob's folder holds only his file; nothing was made beside the sandboxes.
    let mut bobs: Vec<String> = std::fs::read_dir(base.path().join("bob"))
        .expect("bob")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    bobs.sort();
    assert_eq!(bobs, ["b.txt"]);
    let mut top: Vec<String> = std::fs::read_dir(base.path())
        .expect("base")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["alice", "bob"]);
    assert!(
        base.path().join("alice/a.txt").exists(),
        "refused moves moved nothing"
    );
}

#[test]
fn bad_requests_get_a_clear_status_and_the_server_goes_on() {
    let server = Server::start_webdav(MEMORY, &["alice"], &[]);
    assert_eq!(curl(&server, Some("alice"), &["-X", "MKCOL"], "/d").0, 201);
    let bad_xml = [
        "-X",
        "PROPFIND",
        "-H",
        "Depth: 0",
        "--data-binary",
        "<propfind xmlns='DAV:'><prop>",
    ];
    assert_eq!(curl(&server, Some("alice"), &bad_xml, "/d").0, 400);
    let bad_patch = ["-X", "PROPPATCH", "--data-binary", "<<<not xml"];
    assert_eq!(curl(&server, Some("alice"), &bad_patch, "/d").0, 400);
    // A huge XML body is refused without being held.
    let huge = tempfile::NamedTempFile::new().expect("temp");
    let mut body = String::from("<?xml version='1.0'?><D:propfind xmlns:D='DAV:'><D:prop>");
    while body.len() < 8 << 20 {
        body.push_str("<D:getetag/>");
    }
    body.push_str("</D:prop></D:propfind>");
    std::fs::write(huge.path(), body).expect("write");
    let at = format!("@{}", huge.path().display());
    let (code, _) = curl(
        &server,
        Some("alice"),
        &["-X", "PROPFIND", "--data-binary", &at],
        "/d",
    );
    assert_eq!(code, 413);
    let (code, _) = curl(&server, Some("alice"), &["-X", "FROBNICATE"], "/d");
    assert_eq!(code, 501, "unknown method");
    assert_eq!(curl(&server, Some("alice"), &["-X", "MOVE"], "/d").0, 400);
    // dav-server refuses Depth: infinity with 501.
    let infinity = ["-X", "PROPFIND", "-H", "Depth: infinity"];
    let (code, _) = curl(&server, Some("alice"), &infinity, "/");
    assert!(matches!(code, 403 | 501), "Depth: infinity: {code}");
    // Still serving.
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "PROPFIND", "-H", "Depth: 1"],
            "/"
        )
        .0,
        207
    );
}

#[test]
fn a_cut_or_short_put_leaves_nothing_on_garage() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-cut");
    let mappings = s3_mappings(&garage, "dav-cut", "users/%u");
    // 5 MiB parts: the cut body has a part stored when it is cut.
    let server = Server::start_webdav(
        &mappings,
        &["alice"],
        &["--max-cloud-cache-upload-size", "5MiB"],
    );
    let auth = basic("alice");
    // 12 MiB announced, 7 MiB sent (a part on its way), then the client goes.
    let head = format!(
        "PUT /cut.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n",
        12 << 20
    );
    raw(&server, &head, &pattern(7 << 20, 3), true);
    // Finder's chunked PUT whose body is shorter than it announced.
    let data = pattern(100_000, 4);
    let mut chunked = format!("{:x}\r\n", data.len()).into_bytes();
    chunked.extend_from_slice(&data);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "PUT /short.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nTransfer-Encoding: chunked\r\nX-Expected-Entity-Length: 200000\r\nConnection: close\r\n\r\n"
    );
    let (code, text) = raw(&server, &head, &chunked, false);
    assert!(code >= 400, "a short body was taken: {text}");
    std::thread::sleep(Duration::from_secs(2));
    for path in ["/cut.bin", "/short.bin"] {
        let (code, _) = curl(
            &server,
            Some("alice"),
            &["-X", "PROPFIND", "-H", "Depth: 0"],
            path,
        );
        assert_eq!(code, 404, "{path} exists after a cut PUT");
    }
    let bucket = crate::common::raw_backend(&s3_mappings(&garage, "dav-cut", ""), "x");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pending = rt
            .block_on(bucket.list_pending_uploads(&ObjectKey::from_raw("")))
            .expect("list pending");
        if pending.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left pending: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        server.log().contains("result=\"aborted\""),
        "{}",
        server.log()
    );
}

#[test]
fn finder_and_windows_request_sequences_work() {
    let base = tempfile::tempdir().expect("tempdir");
    let server = Server::start_webdav(&file_mappings(base.path()), &["alice"], &[]);
    let auth = basic("alice");
    // Finder: a chunked PUT with X-Expected-Entity-Length.
    let data = pattern(300_000, 9);
    let mut chunked = Vec::new();
    for piece in data.chunks(65_536) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "PUT /f.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nTransfer-Encoding: chunked\r\nX-Expected-Entity-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    let (code, text) = raw(&server, &head, &chunked, false);
    assert_eq!(code, 201, "{text}");
    assert_eq!(
        std::fs::read(base.path().join("alice/f.bin")).expect("stored"),
        data
    );
    // Finder's AppleDouble probe: a clean 404.
    assert_eq!(curl(&server, Some("alice"), &[], "/._f.bin").0, 404);
    // Finder: a zero-byte PUT, a LOCK, the real PUT under the lock, UNLOCK.
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "PUT", "--data-binary", ""],
            "/g.txt"
        )
        .0,
        201
    );
    let lockinfo = "<?xml version='1.0' encoding='utf-8'?><D:lockinfo xmlns:D='DAV:'><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner><D:href>finder</D:href></D:owner></D:lockinfo>";
    let out = run(
        Command::new("curl")
            .args([
                "-s",
                "-i",
                "-X",
                "LOCK",
                "-u",
                &format!("alice:{}", password("alice")),
            ])
            .args(["-H", "Timeout: Second-600", "--data-binary", lockinfo])
            .arg(url(&server, "/g.txt")),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let token = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("lock-token: ")
                .or_else(|| l.strip_prefix("Lock-Token: "))
        })
        .expect("Lock-Token")
        .trim()
        .to_owned();
    // Without the token the PUT is refused; with it, it lands.
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "PUT", "--data-binary", "x"],
            "/g.txt"
        )
        .0,
        423
    );
    let iff = format!("If: ({token})");
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "PUT", "-H", &iff, "--data-binary", "finder"],
            "/g.txt"
        )
        .0,
        204
    );
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "UNLOCK", "-H", &format!("Lock-Token: {token}")],
            "/g.txt"
        )
        .0,
        204
    );
    assert_eq!(
        std::fs::read_to_string(base.path().join("alice/g.txt")).expect("g"),
        "finder"
    );
    // Windows: LOCK without Depth, then the Win32 times in a PROPPATCH.
    let out = run(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "LOCK"])
            .args([
                "-u",
                &format!("alice:{}", password("alice")),
                "--data-binary",
                lockinfo,
            ])
            .arg(url(&server, "/w.txt")),
        Duration::from_secs(30),
    );
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(code.as_str(), "200" | "201"),
        "LOCK of a new name: {code}"
    );
    let patch = "<?xml version='1.0' encoding='utf-8'?><D:propertyupdate xmlns:D='DAV:' xmlns:Z='urn:schemas-microsoft-com:'><D:set><D:prop><Z:Win32LastModifiedTime>Wed, 01 Jan 2020 10:00:00 GMT</Z:Win32LastModifiedTime><Z:Win32FileAttributes>00000020</Z:Win32FileAttributes></D:prop></D:set></D:propertyupdate>";
    let (code, body) = curl(
        &server,
        Some("alice"),
        &["-X", "PROPPATCH", "--data-binary", patch],
        "/g.txt",
    );
    assert_eq!(code, 207, "{body}");
    assert!(body.contains("200 OK"), "{body}");
    let modified = std::fs::metadata(base.path().join("alice/g.txt"))
        .expect("g")
        .modified()
        .expect("mtime");
    assert_eq!(
        modified,
        std::time::UNIX_EPOCH + Duration::from_secs(1_577_872_800),
        "the Win32 time was kept"
    );
}

#[test]
fn https_serves_and_plain_http_off_loopback_is_refused() {
    let pki = Pki::generate();
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let server = Server::start_webdav(
        MEMORY,
        &["alice"],
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let out = run(
        Command::new("curl")
            .args(["-s", "-S", "--cacert", &pki.ca_file.display().to_string()])
            .args(["-u", &format!("alice:{}", password("alice")), "-X", "PUT"])
            .args(["--data-binary", "over TLS"])
            .args(["-w", "%{http_code}"])
            .arg(format!("https://localhost:{}/tls.txt", server.port)),
        Duration::from_secs(30),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "201",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port gets nothing served.
    let (code, _) = curl(&server, Some("alice"), &[], "/tls.txt");
    assert_ne!(code, 200);
    // Plain HTTP on an address other than loopback: refused at start.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_corral")).args([
            "serve",
            "webdav",
            "--listen",
            "0.0.0.0:0",
            "--users",
            "/dev/null",
        ]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-cert"), "{err}");
}

#[test]
fn dead_properties_outlive_the_server_and_are_seen_by_another_instance() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-props");
    let mappings = s3_mappings(&garage, "dav-props", "users/%u");
    let patch = "<?xml version='1.0' encoding='utf-8'?><D:propertyupdate xmlns:D='DAV:' xmlns:Z='urn:example:corral'><D:set><D:prop><Z:colour>teal &amp; grey</Z:colour></D:prop></D:set></D:propertyupdate>";
    let find = "<?xml version='1.0' encoding='utf-8'?><D:propfind xmlns:D='DAV:'><D:prop><Z:colour xmlns:Z='urn:example:corral'/></D:prop></D:propfind>";
    {
        let server = Server::start_webdav(&mappings, &["alice"], &[]);
        let put = ["-X", "PUT", "--data-binary", "x"];
        assert_eq!(curl(&server, Some("alice"), &put, "/f.txt").0, 201);
        let (code, body) = curl(
            &server,
            Some("alice"),
            &["-X", "PROPPATCH", "--data-binary", patch],
            "/f.txt",
        );
        assert_eq!(code, 207, "{body}");
        // Moved with its resource.
        let dest = format!("Destination: {}", url(&server, "/g.txt"));
        assert_eq!(
            curl(
                &server,
                Some("alice"),
                &["-X", "MOVE", "-H", &dest],
                "/f.txt"
            )
            .0,
            201
        );
    }
    // A new process (a restart, or another instance over the bucket).
    let server = Server::start_webdav(&mappings, &["alice"], &[]);
    let propfind = ["-X", "PROPFIND", "-H", "Depth: 0", "--data-binary", find];
    let (code, body) = curl(&server, Some("alice"), &propfind, "/g.txt");
    assert_eq!(code, 207, "{body}");
    assert!(body.contains("teal &amp; grey"), "{body}");
    // The document is the server's own: never listed, never reachable.
    let (code, body) = curl(
        &server,
        Some("alice"),
        &["-X", "PROPFIND", "-H", "Depth: 1"],
        "/",
    );
    assert_eq!(code, 207, "{body}");
    assert!(
        body.contains("g.txt") && !body.contains(".corral"),
        "{body}"
    );
    for path in [
        "/.corral/webdav-props.json",
        "/.corral/",
        "/%2ecorral/webdav-props.json",
    ] {
        let (code, body) = curl(&server, Some("alice"), &[], path);
        assert!(matches!(code, 403 | 404), "{path}: {code} {body}");
        assert!(!body.contains("teal"), "{path}: {body}");
        let put = ["-X", "PUT", "--data-binary", "{}"];
        assert_eq!(curl(&server, Some("alice"), &put, path).0, 403, "{path}");
    }
    // Still there after the refused writes.
    let (_, body) = curl(&server, Some("alice"), &propfind, "/g.txt");
    assert!(body.contains("teal &amp; grey"), "{body}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = Server::start_webdav(MEMORY, &["alice"], &[]);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.write_all(b"PROPFIND / HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(40),
        "closed after {waited:?}"
    );
    // Others are served meanwhile and after.
    assert_eq!(
        curl(
            &server,
            Some("alice"),
            &["-X", "PROPFIND", "-H", "Depth: 0"],
            "/"
        )
        .0,
        207
    );
}

#[test]
fn cadaver_makes_puts_lists_gets_moves_sets_a_property_and_removes_on_garage() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-cadaver");
    let server = Server::start_webdav(
        &s3_mappings(&garage, "dav-cadaver", "users/%u"),
        &["alice"],
        &[],
    );
    let home = tempfile::tempdir().expect("tempdir");
    let netrc = home.path().join(".netrc");
    std::fs::write(
        &netrc,
        format!(
            "machine 127.0.0.1\nlogin alice\npassword {}\n",
            password("alice")
        ),
    )
    .expect("netrc");
    std::fs::set_permissions(&netrc, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let data = pattern(3 * MIB_DAV + 5, 21);
    std::fs::write(home.path().join("local.bin"), &data).expect("local");
    let script = "mkcol d\nput local.bin d/f.bin\nls d\nget d/f.bin back.bin\nmove d/f.bin d/g.bin\npropset d/g.bin colour teal\npropget d/g.bin colour\nrm d/g.bin\nrmcol d\nls\nquit\n";
    let mut child = Command::new("cadaver")
        .arg(url(&server, "/"))
        .env("HOME", home.path())
        .current_dir(home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cadaver (scripts/install-test-deps.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    let out = child.wait_with_output().expect("cadaver");
    let text = String::from_utf8_lossy(&out.stdout);
    // Eight commands succeed; the last listing finds the root empty.
    assert_eq!(text.matches("succeeded.").count(), 8, "{text}");
    assert!(text.contains("collection is empty"), "{text}");
    assert!(
        text.contains("f.bin") && text.contains("Value of colour is: teal"),
        "{text}"
    );
    assert!(!text.contains("failed"), "{text}");
    assert!(std::fs::read(home.path().join("back.bin")).expect("got") == data);
}

const MIB_DAV: usize = 1 << 20;

#[test]
fn a_user_uploading_at_full_tilt_never_holds_up_another() {
    let garage = S3Server::garage();
    garage.create_bucket("dav-fair");
    // 32 MiB in all, 8 MiB per upload; a user holds a quarter (8 MiB); a
    // transfer waits at most 5 s for room, so a starved one would fail.
    let server = Server::start_webdav(
        &s3_mappings(&garage, "dav-fair", "users/%u"),
        &["alice", "bob"],
        &[
            "--max-cloud-cache-size",
            "32MiB",
            "--max-cloud-cache-upload-size",
            "8MiB",
            "--max-cloud-cache-download-size",
            "8MiB",
            "--cache-wait",
            "5s",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("big.bin"), pattern(96 * MIB_DAV, 5)).expect("big");
    std::fs::write(dir.path().join("small.bin"), pattern(MIB_DAV, 6)).expect("small");
    // Alice's uploads at 16 MB/s each, so that they run while bob's do
    // whatever the machine's speed; bob's at full speed.
    let put = |user: &str, local: &str, to: &str| {
        let rate = if user == "alice" { "16M" } else { "0" };
        Command::new("curl")
            .args([
                "-s",
                "-S",
                "-f",
                "-u",
                &format!("{user}:{}", password(user)),
            ])
            .args(["--limit-rate", rate])
            .args(["-T", local, &url(&server, to)])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl")
    };
    let alices: Vec<_> = (0..4)
        .map(|i| put("alice", "big.bin", &format!("/big-{i}.bin")))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let out = put("bob", "small.bin", &format!("/small-{i}.bin"))
            .wait_with_output()
            .expect("curl");
        assert!(
            out.status.success(),
            "bob's upload {i} failed while alice uploads: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
    }
    let mut alices = alices;
    let running = alices
        .iter_mut()
        .map(|c| matches!(c.try_wait(), Ok(None)))
        .filter(|r| *r)
        .count();
    assert!(
        running > 0,
        "alice's uploads were over before bob's: nothing was shared"
    );
    for c in alices {
        let out = c.wait_with_output().expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, body) = curl(
        &server,
        Some("bob"),
        &["-X", "PROPFIND", "-H", "Depth: 1"],
        "/",
    );
    assert_eq!(code, 207);
    assert_eq!(body.matches("small-").count(), 5, "{body}");
}
