//! The filesystem rules a front-end relies on, decided by the library in
//! one call each (never by a front-end looking first): create-if-absent,
//! rename that does or does not replace, remove that tells a file from a
//! directory, a listing that refuses a file, reading a directory. Each on
//! Memory, File and an S3 server (moto, which enforces conditional writes),
//! including the race of two exclusive creates from two processes' worth of
//! state: exactly one wins where the backend declares conditional create.

use std::time::Duration;

use corral::cache::CacheConfig;
use corral::{
    Corral, ErrorKind, Identity, MkdirOptions, RemoveOptions, RenameOptions, UserSandbox,
    WriteOptions,
};
use corral_domain::listing::EntryKind;
use corral_fixtures::servers::S3Server;
use futures::StreamExt;

/// Two services on one store, as two server processes would be: each has
/// its own table of writes in progress.
struct Two {
    a: UserSandbox,
    b: UserSandbox,
    _dir: Option<tempfile::TempDir>,
    _server: Option<S3Server>,
}

fn two(mappings: &str) -> (UserSandbox, UserSandbox) {
    let open = || {
        Corral::from_json(mappings, CacheConfig::default())
            .expect("corral")
            .sandbox(&Identity::user("u"))
            .expect("sandbox")
    };
    (open(), open())
}

/// Memory (one store per process: both sandboxes from one service), File
/// and moto (two services each).
fn backends() -> Vec<(&'static str, Two)> {
    let memory = Corral::from_json(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        CacheConfig::default(),
    )
    .expect("corral");
    let mem = Two {
        a: memory.sandbox(&Identity::user("u")).expect("sandbox"),
        b: memory.sandbox(&Identity::user("u")).expect("sandbox"),
        _dir: None,
        _server: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("u")).expect("mkdir");
    let (a, b) = two(&format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", dir.path().display())).expect("json")
    ));
    let file = Two {
        a,
        b,
        _dir: Some(dir),
        _server: None,
    };
    let moto = S3Server::moto();
    moto.create_bucket("rules");
    let (a, b) = two(&format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"rules","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
        moto.endpoint, moto.access_key, moto.secret_key
    ));
    let s3 = Two {
        a,
        b,
        _dir: None,
        _server: Some(moto),
    };
    vec![("Memory", mem), ("File", file), ("moto", s3)]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn create_if_absent_is_exclusive_and_one_of_two_racing_creates_wins() {
    let rt = rt();
    for (name, t) in backends() {
        rt.block_on(async {
            let exclusive = WriteOptions {
                if_not_exists: true,
                ..WriteOptions::default()
            };
            t.a.write("/taken.txt", b"first", None)
                .await
                .expect("write");
            let e = t.a.create_with("/taken.txt", exclusive).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{name}: {e}");
            // In one process: the second exclusive create of a path being
            // written loses at once.
            let w =
                t.a.create_with("/one.txt", exclusive)
                    .await
                    .expect("create");
            let e = t.a.create_with("/one.txt", exclusive).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{name}: {e}");
            drop(w);
            // Two processes' worth of state: both open, both write; the
            // store decides, exactly one wins.
            let mut wa = t.a.create_with("/race.txt", exclusive).await.expect("a");
            let wb = t.b.create_with("/race.txt", exclusive).await;
            if name == "Memory" {
                // One process: the table refuses the second at once.
                assert_eq!(wb.unwrap_err().kind(), ErrorKind::AlreadyExists, "{name}");
                wa.write_at(0, b"from a").await.expect("write");
                wa.finish().await.expect("finish");
                return;
            }
            let mut wb = wb.expect("the other process opens: the store decides later");
            wa.write_at(0, b"from a").await.expect("write");
            wb.write_at(0, b"from b").await.expect("write");
            let (ra, rb) = tokio::join!(wa.finish(), wb.finish());
            let wins = [ra.is_ok(), rb.is_ok()];
            assert_eq!(
                wins.iter().filter(|w| **w).count(),
                1,
                "{name}: {ra:?} {rb:?}"
            );
            let lost = if ra.is_ok() { rb } else { ra };
            assert_eq!(lost.unwrap_err().kind(), ErrorKind::AlreadyExists, "{name}");
            let got = t.a.read("/race.txt").await.expect("read");
            assert!(&got[..] == b"from a" || &got[..] == b"from b", "{name}");
        });
    }
}

#[test]
fn rename_replaces_only_when_asked() {
    let rt = rt();
    for (name, t) in backends() {
        rt.block_on(async {
            let sb = &t.a;
            sb.write("/from.txt", b"new", None).await.expect("write");
            sb.write("/to.txt", b"old", None).await.expect("write");
            let keep = RenameOptions { replace: false };
            let e = sb.rename("/from.txt", "/to.txt", keep).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{name}: {e}");
            assert_eq!(
                &sb.read("/to.txt").await.expect("read")[..],
                b"old",
                "{name}"
            );
            assert_eq!(
                &sb.read("/from.txt").await.expect("read")[..],
                b"new",
                "{name}"
            );
            sb.mkdir("/dir", MkdirOptions::default())
                .await
                .expect("mkdir");
            let e = sb.rename("/from.txt", "/dir", keep).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{name}: {e}");
            let replace = RenameOptions { replace: true };
            sb.rename("/from.txt", "/to.txt", replace)
                .await
                .expect("rename");
            assert_eq!(
                &sb.read("/to.txt").await.expect("read")[..],
                b"new",
                "{name}"
            );
            assert_eq!(
                sb.stat("/from.txt").await.unwrap_err().kind(),
                ErrorKind::NotFound,
                "{name}"
            );
            sb.rename("/to.txt", "/fresh.txt", keep)
                .await
                .expect("to a free name");
        });
    }
}

#[test]
fn remove_tells_a_file_from_a_directory() {
    let rt = rt();
    for (name, t) in backends() {
        rt.block_on(async {
            let sb = &t.a;
            sb.write("/f.txt", b"f", None).await.expect("write");
            sb.mkdir("/d/e", MkdirOptions { parents: true })
                .await
                .expect("mkdir");
            let file_only = RemoveOptions {
                recursive: false,
                only: Some(EntryKind::File),
            };
            let dir_only = RemoveOptions {
                recursive: false,
                only: Some(EntryKind::Directory),
            };
            let e = sb.remove("/d/e", file_only).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::IsADirectory, "{name}: {e}");
            let e = sb.remove("/f.txt", dir_only).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotADirectory, "{name}: {e}");
            let e = sb.remove("/d", dir_only).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DirectoryNotEmpty, "{name}: {e}");
            sb.remove("/d/e", dir_only).await.expect("rmdir");
            sb.remove("/d", dir_only).await.expect("rmdir");
            sb.remove("/f.txt", file_only).await.expect("rm");
            // Nothing there: not found, whatever was asked to go.
            for only in [file_only, dir_only] {
                let e = sb.remove("/none", only).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::NotFound, "{name}: {e}");
            }
            for p in ["/d", "/f.txt"] {
                assert_eq!(
                    sb.stat(p).await.unwrap_err().kind(),
                    ErrorKind::NotFound,
                    "{name} {p}"
                );
            }
        });
    }
}

#[test]
fn listings_reads_and_writes_say_what_is_not_a_directory_or_a_file() {
    let rt = rt();
    for (name, t) in backends() {
        rt.block_on(async {
            let sb = &t.a;
            sb.write("/f.txt", b"f", None).await.expect("write");
            sb.mkdir("/d", MkdirOptions::default())
                .await
                .expect("mkdir");
            let e = sb.read_dir("/f.txt").await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotADirectory, "{name}: {e}");
            let e = sb.read_dir("/none").await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{name}: {e}");
            let e = sb.open("/d").await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::IsADirectory, "{name}: {e}");
            let e = sb.create("/d", None, None).await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::IsADirectory, "{name}: {e}");
            let e = sb
                .create_with(
                    "/none.txt",
                    WriteOptions {
                        must_exist: true,
                        ..WriteOptions::default()
                    },
                )
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{name}: {e}");
        });
    }
}

#[test]
fn uploads_given_up_by_the_hundred_leave_no_abort_behind() {
    // A server that runs for days holds no more than its uploads in flight:
    // the cache's registry of background aborts is reaped as they end.
    let rt = rt();
    let corral = Corral::from_json(
        r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#,
        CacheConfig::default(),
    )
    .expect("corral");
    let sb = corral.sandbox(&Identity::user("u")).expect("sandbox");
    rt.block_on(async {
        for i in 0..200 {
            // 12 MiB of 16: a multipart upload is under way when it is dropped.
            let mut w = sb
                .create(&format!("/given-up-{i}"), Some(16 << 20), None)
                .await
                .expect("create");
            w.write_at(0, &vec![1u8; 12 << 20]).await.expect("write");
            drop(w);
        }
        // Without waiting for them (which would empty the registry): the
        // aborts that ended are reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sb.cache().aborts_running() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} aborts still registered",
                sb.cache().aborts_running()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sb.cache().metrics().reserved, 0);
        assert_eq!(corral.writes_in_progress(), 0);
    });
}

#[test]
fn the_servers_own_data_is_kept_hidden_and_shared_by_instances() {
    let rt = rt();
    for (name, t) in backends() {
        rt.block_on(async {
            assert_eq!(
                t.a.read_private("doc.json").await.expect("read"),
                None,
                "{name}"
            );
            t.a.write_private("doc.json", Some(bytes::Bytes::from_static(b"{\"v\":1}")))
                .await
                .expect("write");
            // Another instance over the same store reads it.
            let got = t.b.read_private("doc.json").await.expect("read");
            assert_eq!(got.as_deref(), Some(&b"{\"v\":1}"[..]), "{name}");
            t.a.write("/visible.txt", b"x", None).await.expect("write");
            let names: Vec<String> =
                t.a.read_dir("/")
                    .await
                    .expect("list")
                    .map(|e| e.expect("entry").name)
                    .collect()
                    .await;
            assert_eq!(names, ["visible.txt"], "{name}: the private folder shows");
            for path in ["/.corral", "/.corral/doc.json"] {
                let e = t.a.stat(path).await.unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::PermissionDenied,
                    "{name} stat {path}: {e}"
                );
                let e = t.a.read(path).await.unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::PermissionDenied,
                    "{name} read {path}: {e}"
                );
                let e = t.a.write(path, b"y", None).await.unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::PermissionDenied,
                    "{name} write {path}: {e}"
                );
            }
            let e =
                t.a.rename(
                    "/visible.txt",
                    "/.corral/doc.json",
                    RenameOptions { replace: true },
                )
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{name}: {e}");
            let e =
                t.a.mkdir("/.corral", MkdirOptions::default())
                    .await
                    .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{name} mkdir: {e}");
            let all = RemoveOptions {
                recursive: true,
                only: None,
            };
            let e = t.a.remove("/.corral", all).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{name} remove: {e}");
            // Still there after the refusals.
            assert!(t.b.read_private("doc.json").await.expect("read").is_some());
            t.a.write_private("doc.json", None).await.expect("remove");
            assert_eq!(
                t.b.read_private("doc.json").await.expect("read"),
                None,
                "{name}"
            );
        });
    }
}
