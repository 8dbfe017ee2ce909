//! Several instances over one bucket: the users and the mappings read from
//! objects (`s3://…`), polled for a new version; a change reaches every
//! instance within the interval without ending the sessions open, and a
//! bad version is refused while the last good one stays in force.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use argon2::PasswordHasher;
use bytes::Bytes;
use corral_domain::ObjectKey;
use corral_domain::port::PutMode;
use corral_fixtures::servers::S3Server;

use super::{Server, openssh, password, sftp_batch, users_json};

/// The S3 options of the shared sources on `moto`, in a file in `dir`.
fn s3_options(moto: &S3Server, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("s3.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","region":"{}"}}"#,
            moto.endpoint, moto.access_key, moto.secret_key, moto.region
        ),
    )
    .expect("options");
    path
}

/// The `corral` command with the shared sources' S3 options.
fn corral(options: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
    c.arg("--source-options")
        .arg(options)
        .env_remove("CORRAL_CONFIG");
    c
}

/// What a new login of `user` lists at the top of its sandbox.
fn listing(server: &Server, user: &str, cwd: &std::path::Path) -> String {
    let out = sftp_batch(server, user, 1, "ls -1\n", cwd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        if out.status.success() {
            ""
        } else {
            "(login failed)"
        }
    )
}

#[test]
fn instances_share_users_and_mappings_from_a_bucket_and_follow_changes() {
    let moto = S3Server::moto();
    moto.create_bucket("shared");
    let base = tempfile::tempdir().expect("tempdir");
    for (dir, file) in [
        ("a/alice", "first.txt"),
        ("b/alice", "moved-here.txt"),
        ("b/bob", "bobs.txt"),
    ] {
        std::fs::create_dir_all(base.path().join(dir)).expect("dir");
        std::fs::write(base.path().join(dir).join(file), "x").expect("file");
    }
    let mappings = |side: &str| format!(r#"{{"": {{"": "{}/{side}/%u"}}}}"#, base.path().display());
    let bucket = crate::common::raw_backend(
        &format!(
            r#"{{"": {{"": {{"type":"S3","bucketName":"shared","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
            moto.endpoint, moto.access_key, moto.secret_key
        ),
        "x",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let put = |key: &str, text: String| {
        rt.block_on(bucket.put(
            &ObjectKey::from_raw(key),
            Bytes::from(text),
            PutMode::Overwrite,
        ))
        .expect("put");
    };
    put("conf/corral.json", mappings("a"));
    put("conf/users.json", users_json(&["alice"]));
    let work = tempfile::tempdir().expect("tempdir");
    let options = s3_options(&moto, work.path());
    let options = options.display().to_string();
    let extra = [
        "--config",
        "s3://shared/conf/corral.json",
        "--users",
        "s3://shared/conf/users.json",
        "--source-options",
        &options,
        "--reload-every",
        "1s",
    ];
    let one = Server::start_in(tempfile::tempdir().expect("tempdir"), &extra);
    let two = Server::start_in(tempfile::tempdir().expect("tempdir"), &extra);
    for s in [&one, &two] {
        let l = listing(s, "alice", work.path());
        assert!(l.contains("first.txt"), "{l}\n{}", s.log());
        assert!(listing(s, "bob", work.path()).contains("(login failed)"));
    }
    // A session open on the first instance across the change.
    let mut held = openssh("sftp", &one, "alice")
        .args(["-P", &one.port.to_string(), "-b", "-", "alice@127.0.0.1"])
        .current_dir(work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp");
    let mut stdin = held.stdin.take().expect("stdin");
    stdin.write_all(b"ls -1\n").expect("ls");
    std::thread::sleep(Duration::from_millis(500));

    // The mapping changed as an admin does (If-Match on the object).
    let out = corral(&options)
        .args(["--config", "s3://shared/conf/corral.json"])
        .args(["admin", "mappings", "set", ""])
        .arg(format!(r#"{{"": "{}/b/%u"}}"#, base.path().display()))
        .output()
        .expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A user added as an admin does; a bad entry refused first.
    let admin_users = |args: &[&str]| {
        corral(&options)
            .args(["admin", "users"])
            .args(args)
            .args(["--users", "s3://shared/conf/users.json"])
            .output()
            .expect("admin")
    };
    let out = admin_users(&["set", "bob", r#"{"password": "not a hash"}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bob"), "{err}");
    let hash = argon2::Argon2::default()
        .hash_password(password("bob").as_bytes())
        .expect("hash")
        .to_string();
    let out = admin_users(&["set", "bob", &format!(r#"{{"password": "{hash}"}}"#)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    for s in [&one, &two] {
        loop {
            let (a, b) = (
                listing(s, "alice", work.path()),
                listing(s, "bob", work.path()),
            );
            if a.contains("moved-here.txt") && b.contains("bobs.txt") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not reloaded: alice {a:?}, bob {b:?}\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let reloaded_in = started.elapsed();
    // The held session goes on, in the sandbox it logged in to.
    stdin.write_all(b"ls -1\nbye\n").expect("ls");
    drop(stdin);
    let out = held.wait_with_output().expect("sftp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("first.txt").count(), 2, "{text}");

    // A bad version is refused; the last good one stays in force.
    put(
        "conf/corral.json",
        r#"{"": {"": {"type": "S3"}}}"#.to_owned(),
    );
    std::thread::sleep(Duration::from_secs(3));
    for s in [&one, &two] {
        assert!(listing(s, "alice", work.path()).contains("moved-here.txt"));
        let log = s.log();
        assert!(
            log.contains("reload refused") && log.contains("bucketName"),
            "{log}"
        );
        // Refused once, not at every poll.
        assert_eq!(log.matches("reload refused").count(), 1, "{log}");
    }
    println!(
        "shared: both instances served the new users and mappings {reloaded_in:.1?} after the change (poll every 1 s)"
    );
}

#[test]
fn admins_editing_the_shared_mappings_at_once_lose_nothing() {
    let moto = S3Server::moto();
    moto.create_bucket("admins");
    let bucket = crate::common::raw_backend(
        &format!(
            r#"{{"": {{"": {{"type":"S3","bucketName":"admins","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
            moto.endpoint, moto.access_key, moto.secret_key
        ),
        "x",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let key = ObjectKey::from_raw("conf/corral.json");
    rt.block_on(bucket.put(
        &key,
        Bytes::from(r#"{"": {"": "/srv/%u"}}"#),
        PutMode::Overwrite,
    ))
    .expect("put");
    // The server enforces If-Match: a stale tag is refused.
    let e = rt
        .block_on(bucket.put_if_match(&key, Bytes::from("{}"), "\"0000\""))
        .unwrap_err();
    assert_eq!(e.kind(), corral_domain::ErrorKind::Conflict, "{e}");
    let work = tempfile::tempdir().expect("tempdir");
    let options = s3_options(&moto, work.path());
    let admin = |args: &[&str]| {
        let mut c = corral(&options);
        c.args([
            "--config",
            "s3://admins/conf/corral.json",
            "admin",
            "mappings",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    // Eight admins at once, each setting another user.
    let children: Vec<_> = (0..8)
        .map(|i| {
            let user = format!("user{i}");
            let mounts = format!(r#"{{"": "/srv/{user}"}}"#);
            admin(&["set", &user, &mounts]).spawn().expect("admin")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("admin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = rt.block_on(async {
        let r = bucket.get(&key, None).await.expect("get");
        let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(r.body)
            .await
            .expect("body");
        String::from_utf8(parts.concat()).expect("utf-8")
    });
    for i in 0..8 {
        assert!(
            text.contains(&format!("/srv/user{i}")),
            "user{i} lost:\n{text}"
        );
    }
    assert!(text.contains("/srv/%u"), "{text}");
    // A bad spec is refused naming the user and the key; nothing changes.
    let out = admin(&["set", "bad", r#"{"": {"type": "S3"}}"#])
        .output()
        .expect("admin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bucketName"), "{err}");
    // The "get": any command reads the shared config.
    let out = corral(&options)
        .args(["--config", "s3://admins/conf/corral.json"])
        .args(["--user", "user5", "mappings"])
        .output()
        .expect("mappings");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains("/srv/user5"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&["delete", "user3"]).output().expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = rt.block_on(async {
        let r = bucket.get(&key, None).await.expect("get");
        let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(r.body)
            .await
            .expect("body");
        String::from_utf8(parts.concat()).expect("utf-8")
    });
    assert!(
        !after.contains("/srv/user3") && after.contains("/srv/user4") && !after.contains("\"bad\""),
        "{after}"
    );
}
