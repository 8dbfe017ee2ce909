//! The sandbox service on Memory mounts: mounts in the view, directory rules,
//! and what a listing shows of objects written beside corral.

use std::sync::Arc;

use corral::Corral;
use corral::cache::CacheConfig;
use corral_domain::listing::EntryKind;
use corral_domain::{ErrorKind, Identity, Mappings};
use futures::TryStreamExt;

fn corral(json: &str) -> Corral {
    let m: Mappings = serde_json::from_str(json).expect("mappings");
    Corral::new(m, CacheConfig::default()).expect("corral")
}

async fn names(sb: &corral::UserSandbox, path: &str) -> Vec<String> {
    let entries: Vec<_> = sb.list(path).try_collect().await.expect("list");
    entries
        .into_iter()
        .map(|e| format!("{}{}", e.name, if e.is_dir() { "/" } else { "" }))
        .collect()
}

#[tokio::test]
async fn mounts_directories_and_planted_objects() {
    let c = corral(
        r#"{"": {"": {"type":"Memory","path":"home/%u"}, "a/b": {"type":"Memory","path":"shared"}}}"#,
    );
    let sb = c.sandbox(&Identity::user("alice")).expect("sandbox");
    // A path holding a mount point is a directory, even with nothing of its own.
    assert_eq!(
        sb.stat("/a").await.expect("stat").kind,
        EntryKind::Directory
    );
    assert_eq!(names(&sb, "/").await, ["a/"]);
    assert_eq!(names(&sb, "/a").await, ["b/"]);
    let e = sb
        .remove(
            "/a",
            corral::RemoveOptions {
                recursive: true,
                only: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // Files land in the right mount, under the user's prefix.
    sb.write("/notes.txt", b"mine", None).await.expect("write");
    sb.write("/a/b/common.txt", b"shared", None)
        .await
        .expect("write");
    let bob = c.sandbox(&Identity::user("bob")).expect("bob");
    assert_eq!(
        names(&bob, "/").await,
        ["a/"],
        "bob does not see alice's files"
    );
    assert_eq!(
        &bob.read("/a/b/common.txt").await.expect("read")[..],
        b"shared"
    );

    // A file and a directory of the same name: the directory wins.
    sb.write("/dup", b"file", None).await.expect("file dup");
    sb.write("/dup/inside", b"x", None).await.expect("dir dup");
    assert_eq!(names(&sb, "/").await, ["a/", "dup/", "notes.txt"]);
    assert_eq!(
        sb.stat("/dup").await.expect("stat").kind,
        EntryKind::Directory
    );

    // mkdir: an empty directory exists through its marker and can be removed.
    sb.mkdir("/empty", corral::MkdirOptions::default())
        .await
        .expect("mkdir");
    assert_eq!(
        sb.stat("/empty").await.expect("stat").kind,
        EntryKind::Directory
    );
    assert!(names(&sb, "/empty").await.is_empty());
    sb.remove("/empty", corral::RemoveOptions::default())
        .await
        .expect("rmdir");
    assert_eq!(
        sb.stat("/empty").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

use crate::common;

/// Dropping any future of the API leaves no reservation, no partial object
/// and no pending multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_futures_leave_nothing_behind() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let storage = common::Counting::new(Duration::from_millis(100));
    let m: Mappings = serde_json::from_str(
        r#"{"": {"": {"type": "Custom", "backend": "counting", "path": "u/%u"}}}"#,
    )
    .expect("mappings");
    // Two 8 MiB parts in flight at a time, 100 ms each: a 40 MiB write takes 300 ms.
    let cache = CacheConfig {
        upload: 16 << 20,
        download: 16 << 20,
        ..CacheConfig::default()
    };
    let corral = Corral::builder(m)
        .cache(cache)
        .backend("counting", Arc::clone(&storage) as _)
        .build()
        .expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    let data = vec![7u8; 40 << 20];

    // A write dropped while parts are in flight.
    drop_mid_upload(sb.write("/big.bin", &data, None), &storage).await;
    assert_eq!(corral.cache().settle(Duration::from_secs(5)).await, 0);
    assert_eq!(
        storage.open_uploads.load(Ordering::SeqCst),
        0,
        "no pending multipart upload"
    );
    assert_eq!(
        sb.stat("/big.bin").await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "no partial object"
    );
    assert_eq!(corral.cache().metrics().reserved, 0);

    // The same through write_stream and write_from.
    let chunks = futures::stream::iter(
        data.chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    drop_mid_upload(sb.write_stream("/s.bin", None, None, chunks), &storage).await;
    assert_eq!(corral.cache().settle(Duration::from_secs(5)).await, 0);
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
    drop_mid_upload(
        sb.write_from("/r.bin", Some(data.len() as u64), None, &data[..]),
        &storage,
    )
    .await;
    assert_eq!(corral.cache().settle(Duration::from_secs(5)).await, 0);
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
    assert_eq!(corral.cache().metrics().reserved, 0);

    // Reads dropped half-way.
    sb.write("/small.bin", &data[..(20 << 20)], None)
        .await
        .expect("write");
    let mut reader = sb.reader("/small.bin").await.expect("reader");
    let mut first = vec![0u8; 1 << 20];
    tokio::io::AsyncReadExt::read_exact(&mut reader, &mut first)
        .await
        .expect("read");
    assert!(
        corral.cache().metrics().reserved > 0,
        "the reader holds its chunk"
    );
    // Its chunk comes back as it is dropped: nothing to wait for.
    drop(reader);
    assert_eq!(corral.cache().metrics().reserved, 0);
    let range = sb.read_range("/small.bin", 5, 10).await.expect("range");
    assert_eq!(&range[..], &data[5..15]);
    let m = corral.cache().metrics();
    assert_eq!((m.reserved, m.in_use), (0, 0), "{m:?}");
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
}

/// Polls `upload` until the backend has a multipart upload open, then drops
/// it: the drop happens mid-upload, not before the upload began.
async fn drop_mid_upload<T>(upload: impl Future<Output = T>, storage: &common::Counting) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut upload = std::pin::pin!(upload);
    let deadline = Instant::now() + Duration::from_secs(5);
    while storage.open_uploads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no multipart upload was started");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), upload.as_mut())
                .await
                .is_err(),
            "the upload ended before it could be dropped"
        );
    }
    // Parts are in flight (each takes 100 ms): the upload is not done.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), upload.as_mut())
            .await
            .is_err(),
        "the upload ended before it could be dropped"
    );
}

/// A backend that vouches for a wrong checksum of its objects: the
/// conformance suite says so, and a whole read through a sandbox is refused
/// while a ranged one is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_vouched_checksum_is_caught() {
    use corral_conformance::{Outcome, Target, run_cases};
    use std::sync::atomic::Ordering;

    let storage = common::Counting::new(std::time::Duration::ZERO);
    storage.wrong_checksum.store(true, Ordering::SeqCst);
    let report = run_cases(
        &Target::new("liar", Arc::clone(&storage) as _),
        &["put_head_get"],
    )
    .await;
    match report.outcome("put_head_get") {
        Some(Outcome::Fail(why)) => assert!(
            why.contains("the HEAD vouches for MD5 00000000000000000000000000000000"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    let m: Mappings = serde_json::from_str(r#"{"": {"": {"type": "Custom", "backend": "liar"}}}"#)
        .expect("mappings");
    let corral = Corral::builder(m)
        .backend("liar", Arc::clone(&storage) as _)
        .build()
        .expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    sb.write("/f", b"some bytes", None).await.expect("write");
    let e = sb.read("/f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert_eq!(
        &sb.read_range("/f", 5, 5).await.expect("range")[..],
        b"bytes"
    );
    storage.wrong_checksum.store(false, Ordering::SeqCst);
    assert_eq!(&sb.read("/f").await.expect("read")[..], b"some bytes");
}

/// A tree of files that do not all fit in the cache at once is copied whole
/// with many transfers allowed: each is admitted by what it will hold, so
/// none waits on the cache, whose wait here is zero (a wait would fail).
#[tokio::test]
async fn a_tree_larger_than_the_cache_copies_without_waiting_on_it() {
    use corral::transfer::{CopyOptions, Location, NoProgress};
    const MIB: usize = 1 << 20;
    let m: Mappings = serde_json::from_str(r#"{"": {"": {"type":"Memory","path":"home/%u"}}}"#)
        .expect("mappings");
    let cache = CacheConfig {
        total: 16 << 20,
        upload: 8 << 20,
        download: 8 << 20,
        wait: std::time::Duration::ZERO,
        ..CacheConfig::default()
    };
    let c = Corral::new(m, cache).expect("corral");
    let sb = c.sandbox(&Identity::user("alice")).expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    let mut files = Vec::new();
    for i in 0..6u8 {
        let name = if i % 2 == 0 {
            format!("f{i}.bin")
        } else {
            format!("sub/f{i}.bin")
        };
        let data = vec![i; 12 * MIB + usize::from(i)];
        std::fs::write(src.join(&name), &data).expect("write");
        files.push((name, data));
    }
    for i in 0..50 {
        std::fs::write(src.join(format!("small{i}")), [i as u8; 100]).expect("write");
    }
    let options = CopyOptions {
        recursive: true,
        transfers: 32,
        ..CopyOptions::default()
    };
    let up = sb
        .copy_paths(
            &[Location::Local(src.clone())],
            &Location::sandbox("/tree").expect("path"),
            &options,
            &NoProgress,
        )
        .await
        .expect("upload of the tree");
    assert_eq!(up.files, 56);
    let back = dir.path().join("back");
    let down = sb
        .copy_paths(
            &[Location::sandbox("/tree").expect("path")],
            &Location::Local(back.clone()),
            &options,
            &NoProgress,
        )
        .await
        .expect("download of the tree");
    assert_eq!(down.files, 56);
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(back.join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read(back.join("small7")).expect("read"),
        [7u8; 100]
    );
    // Admitted by what they hold, two 8 MiB transfers at a time filled the
    // cache (never more: the pool cannot exceed it).
    let metrics = sb.cache().metrics();
    assert_eq!(metrics.high_water, 16 << 20, "{metrics:?}");
}

/// A rename of a large file on S3 copies it on the server in parts, in
/// parallel (UploadPartCopy), not by one CopyObject: the new object's ETag
/// says how many parts made it. Nothing is left pending, and the bytes at
/// every part boundary are the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_rename_on_s3_is_copied_in_parts() {
    use bytes::Bytes;
    use corral_domain::ObjectKey;
    use corral_domain::parts::{COPY_PART_SIZE, PART_COPY_MIN_SIZE};
    use corral_domain::port::PutMode;
    use corral_fixtures::servers::S3Server;

    let garage = S3Server::garage();
    garage.create_bucket("copies");
    let json = format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"copies","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
        garage.endpoint, garage.access_key, garage.secret_key
    );
    let raw = common::raw_backend(&json, "alice");
    let k = |name: &str| ObjectKey::from_raw(format!("users/alice/{name}"));
    // The source: 60 parts of 5 MiB (300 MiB), planted with the raw client;
    // each part's first byte is its number.
    const PART: usize = 5 << 20;
    let size = 60 * PART as u64;
    assert!(size >= PART_COPY_MIN_SIZE);
    let key = k("big.bin");
    let upload = raw.create_multipart(&key).await.expect("create");
    let mut parts = Vec::new();
    for n in 1..=60u32 {
        let mut data = vec![0xA5u8; PART];
        data[0] = n as u8;
        parts.push(
            raw.upload_part(&key, &upload, n, Bytes::from(data))
                .await
                .expect("part"),
        );
    }
    raw.complete_multipart(&key, &upload, parts)
        .await
        .expect("complete");
    raw.put(
        &k("small.bin"),
        Bytes::from_static(b"small"),
        PutMode::Overwrite,
    )
    .await
    .expect("put");

    let c = Corral::from_json(&json, CacheConfig::default()).expect("corral");
    let sb = c.sandbox(&Identity::user("alice")).expect("sandbox");
    sb.rename(
        "/big.bin",
        "/moved/big.bin",
        corral::RenameOptions { replace: true },
    )
    .await
    .expect("rename");
    let meta = raw.head(&k("moved/big.bin")).await.expect("head");
    assert_eq!(meta.size, size);
    let copy_parts = size.div_ceil(COPY_PART_SIZE);
    let etag = meta.etag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{copy_parts}")),
        "the copy was not made of {copy_parts} parts: ETag {etag}"
    );
    assert_eq!(
        raw.head(&key).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "the source is gone"
    );
    // Bytes around each copy part's boundary, and each source part's first byte.
    for at in (0..size)
        .step_by(PART)
        .chain((1..copy_parts).map(|n| n * COPY_PART_SIZE))
    {
        let got = sb.read_range("/moved/big.bin", at, 1).await.expect("read");
        let want = if at % PART as u64 == 0 {
            (at / PART as u64 + 1) as u8
        } else {
            0xA5
        };
        assert_eq!(got[..], [want], "byte {at}");
    }
    // A small file is still one CopyObject: its ETag is the source's.
    let before = raw.head(&k("small.bin")).await.expect("head").etag;
    sb.rename(
        "/small.bin",
        "/small2.bin",
        corral::RenameOptions { replace: true },
    )
    .await
    .expect("rename");
    let after = raw.head(&k("small2.bin")).await.expect("head").etag;
    assert_eq!(before, after);
    assert!(
        raw.list_pending_uploads(&ObjectKey::from_raw(""))
            .await
            .expect("pending")
            .is_empty()
    );
}
