//! A hostile or buggy server cannot move a user out of the sandbox nor crash
//! corral: every crafted answer is refused or hidden with a clear message.

use corral::Corral;
use corral::cache::CacheConfig;
use corral_domain::{ErrorKind, Identity};
use corral_fixtures::hostile::{Answer, HostileServer, Request};
use futures::TryStreamExt;

fn sandbox(server: &HostileServer) -> corral::UserSandbox {
    let json = format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","path":"users/%u","endpointOverride":"{}","accessKeyId":"a","secretKey":"b","maxRetries":0}}}}}}"#,
        server.endpoint
    );
    let corral = Corral::from_json(&json, CacheConfig::default()).expect("corral");
    corral.sandbox(&Identity::user("alice")).expect("sandbox")
}

fn listing(keys: &[&str], prefixes: &[&str], truncated: Option<&str>) -> Answer {
    Answer::xml(listing_xml(keys, prefixes, truncated))
}

fn listing_xml(keys: &[&str], prefixes: &[&str], truncated: Option<&str>) -> String {
    let mut xml =
        String::from(r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkt</Name>"#);
    for k in keys {
        xml.push_str(&format!("<Contents><Key>{k}</Key><Size>1</Size><ETag>\"x\"</ETag><LastModified>2026-11-28T00:00:00.000Z</LastModified></Contents>"));
    }
    for p in prefixes {
        xml.push_str(&format!(
            "<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>"
        ));
    }
    match truncated {
        Some(token) => xml.push_str(&format!(
            "<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
        )),
        None => xml.push_str("<IsTruncated>false</IsTruncated>"),
    }
    xml.push_str("</ListBucketResult>");
    xml
}

async fn names(sb: &corral::UserSandbox, path: &str) -> Result<Vec<String>, corral_domain::Error> {
    let entries: Vec<_> = sb.list(path).try_collect().await?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

#[tokio::test]
async fn listings_outside_the_prefix_or_with_odd_segments_are_hidden() {
    let server = HostileServer::start(|r: &Request| {
        if r.query.contains("list-type=2") {
            listing(
                &[
                    "users/alice/ok",
                    "users/bob/secret",
                    "users/alice-evil/x",
                    "users/alice/../bob/y",
                    "users/alice/./z",
                    "users/alice//w",
                    "users/alice/bad&#x1;name",
                    "/etc/passwd",
                ],
                &["users/alice/dir/", "users/bob/", "users/alice/../"],
                None,
            )
        } else {
            Answer::status(404, &[], "")
        }
    });
    let sb = sandbox(&server);
    let mut shown = names(&sb, "/").await.expect("list");
    shown.sort();
    assert_eq!(shown, ["dir", "ok"]);
}

#[tokio::test]
async fn a_looping_continuation_token_is_refused() {
    let server =
        HostileServer::start(|_: &Request| listing(&["users/alice/a"], &[], Some("again")));
    let e = names(&sandbox(&server), "/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        e.to_string()
            .contains("repeated the continuation token \"again\""),
        "{e}"
    );
}

#[tokio::test]
async fn a_truncated_listing_without_a_token_and_malformed_xml_are_refused() {
    let server = HostileServer::start(|_: &Request| {
        Answer::xml("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")
    });
    let e = names(&sandbox(&server), "/").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("truncated but the server gave no continuation token"),
        "{e}"
    );

    let server = HostileServer::start(|_: &Request| {
        Answer::xml("<ListBucketResult><Contents><Key>users/alice/a</Contents>")
    });
    let e = names(&sandbox(&server), "/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.to_string().contains("not valid XML"), "{e}");
}

/// A server that serves `data` at users/alice/f, answering ranged GETs with `ranged`.
fn object_server(data: Vec<u8>, ranged: fn(&[u8], u64, u64) -> Answer) -> HostileServer {
    serve_object(data, vec![("etag", "\"e\"".to_owned())], ranged)
}

/// A server that serves `data` at users/alice/f: HEAD with `headers` (and
/// its length), GETs answered by `ranged(data, first, last)`.
fn serve_object(
    data: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    ranged: impl Fn(&[u8], u64, u64) -> Answer + Send + Sync + 'static,
) -> HostileServer {
    HostileServer::start(move |r: &Request| {
        if r.query.contains("list-type=2") {
            return listing(&[], &[], None);
        }
        if r.path != "/bkt/users/alice/f" {
            return Answer::status(404, &[], "");
        }
        if r.method == "HEAD" {
            let len = data.len().to_string();
            let mut head: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            head.push(("content-length", &len));
            head.push(("last-modified", "Sat, 28 Nov 2026 00:00:00 GMT"));
            return Answer::status(200, &head, Vec::new());
        }
        let last = data.len() as u64 - 1;
        let (start, end) = r
            .header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(last).min(last)))
            .unwrap_or((0, last));
        ranged(&data, start, end)
    })
}

fn content_range(data: &[u8], start: u64, end: u64) -> String {
    format!("bytes {start}-{end}/{}", data.len())
}

#[tokio::test]
async fn a_wrong_range_a_whole_body_and_a_lying_length_are_refused() {
    let data: Vec<u8> = (0..100u8).collect();

    // The range of other bytes than those asked for.
    let server = object_server(data.clone(), |d, s, e| {
        let (s, e) = (s + 1, (e + 1).min(d.len() as u64 - 1));
        Answer::status(
            206,
            &[
                ("content-range", &content_range(d, s, e)),
                ("etag", "\"e\""),
                ("last-modified", "Sat, 28 Nov 2026 00:00:00 GMT"),
            ],
            d[s as usize..=e as usize].to_vec(),
        )
    });
    let e = sandbox(&server).read_range("/f", 10, 20).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        e.to_string()
            .contains("sent another byte range than the one asked for"),
        "{e}"
    );

    // 200 with the whole object for a ranged request.
    let server = object_server(data.clone(), |d, _, _| {
        Answer::status(
            200,
            &[
                ("etag", "\"e\""),
                ("last-modified", "Sat, 28 Nov 2026 00:00:00 GMT"),
            ],
            d.to_vec(),
        )
    });
    // Refused, never the wrong bytes. object_store refuses it as Other
    // (the server's fault: InvalidResponse would be the kind to tell).
    let e = sandbox(&server).read_range("/f", 10, 20).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(
        e.to_string()
            .contains("non-partial response when range requested"),
        "{e}"
    );

    // A Content-Length larger than what is sent: the read fails, clearly.
    let server = object_server(data.clone(), |d, s, e| {
        let body = d[s as usize..=e as usize].to_vec();
        let n = body.len();
        Answer::Http {
            status: 206,
            headers: vec![
                ("content-range".into(), content_range(d, s, e)),
                ("etag".into(), "\"e\"".into()),
                (
                    "last-modified".into(),
                    "Sat, 28 Nov 2026 00:00:00 GMT".into(),
                ),
            ],
            body: body[..n / 2].to_vec(),
            content_length: Some(n),
        }
    });
    // To the client, a body cut short of its length is a connection cut.
    let e = sandbox(&server).read("/f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains("end of file before message length reached"),
        "{e}"
    );
    // Downloaded to a local file, it keeps nothing partial: no file, no
    // temporary beside it.
    let local = tempfile::tempdir().expect("temp dir");
    let e = sandbox(&server)
        .copy_paths(
            &[corral::transfer::Location::sandbox("/f").expect("path")],
            &corral::transfer::Location::Local(local.path().join("f")),
            &corral::transfer::CopyOptions::default(),
            &corral::transfer::NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let left: Vec<_> = std::fs::read_dir(local.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "a failed download left {left:?}");

    // A connection reset instead of an answer.
    let server = HostileServer::start(|_: &Request| Answer::Reset);
    let e = sandbox(&server).stat("/f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

/// A 501 Not Implemented is final: asked once, not retried with backoff
/// (retrying it made every multipart upload on s3s-fs wait 6 s).
#[tokio::test]
async fn not_implemented_is_not_retried() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let server = HostileServer::start({
        let asked = Arc::clone(&asked);
        move |_: &Request| {
            asked.fetch_add(1, Ordering::SeqCst);
            Answer::status(
                501,
                &[("content-type", "application/xml")],
                "<Error><Code>NotImplemented</Code></Error>",
            )
        }
    });
    let json = format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","endpointOverride":"{}","accessKeyId":"a","secretKey":"b","maxRetries":5}}}}}}"#,
        server.endpoint
    );
    let storage = crate::common::raw_backend(&json, "alice");
    let started = std::time::Instant::now();
    let e = storage
        .list_pending_uploads(&corral_domain::ObjectKey::from_raw(""))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[tokio::test]
async fn an_unusable_listing_page_is_fetched_again_then_refused() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The first answer of each page is a glitch (cut XML, or truncated with
    // no token); the second is right.
    let asked = Arc::new(AtomicUsize::new(0));
    let server = HostileServer::start({
        let asked = Arc::clone(&asked);
        move |r: &Request| {
            let n = asked.fetch_add(1, Ordering::SeqCst);
            let second_page = r.query.contains("continuation-token=next");
            match (n, second_page) {
                (0, _) => Answer::xml("<ListBucketResult><Contents><Key>users/al"),
                (1, _) => listing(&["users/alice/a"], &[], Some("next")),
                (2, _) => Answer::xml(
                    listing_xml(&["users/alice/b"], &[], Some("x"))
                        .replace("<NextContinuationToken>x</NextContinuationToken>", ""),
                ),
                (_, true) => listing(&["users/alice/b"], &[], None),
                _ => Answer::status(500, &[], "unexpected"),
            }
        }
    });
    let json = |retries: u32| {
        format!(
            r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","path":"users/%u","endpointOverride":"{}","accessKeyId":"a","secretKey":"b","maxRetries":{retries}}}}}}}"#,
            server.endpoint
        )
    };
    let corral = Corral::from_json(&json(2), CacheConfig::default()).expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    assert_eq!(names(&sb, "/").await.expect("list"), ["a", "b"]);
    assert_eq!(asked.load(Ordering::SeqCst), 4);

    // A server that always answers so is refused after the retries.
    let always = Arc::new(AtomicUsize::new(0));
    let bad = HostileServer::start({
        let always = Arc::clone(&always);
        move |_: &Request| {
            always.fetch_add(1, Ordering::SeqCst);
            Answer::xml("<ListBucketResult><Contents><Key>users/al")
        }
    });
    let corral = Corral::from_json(
        &json(2).replace(&server.endpoint, &bad.endpoint),
        CacheConfig::default(),
    )
    .expect("corral");
    let e = names(
        &corral.sandbox(&Identity::user("alice")).expect("sandbox"),
        "/",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.to_string().contains("not valid XML"), "{e}");
    assert_eq!(always.load(Ordering::SeqCst), 3);
}

/// A server that serves `data` at users/alice/f with ETag `etag` (and
/// `extra` headers), answering ranged GETs rightly.
fn etag_server(data: Vec<u8>, etag: String, extra: &[(&'static str, String)]) -> HostileServer {
    let mut headers = vec![("etag", etag)];
    headers.extend_from_slice(extra);
    let get_headers = headers.clone();
    serve_object(data, headers, move |d, start, end| {
        let mut h: Vec<(&str, &str)> = get_headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let range = content_range(d, start, end);
        h.push(("content-range", &range));
        Answer::status(206, &h, d[start as usize..=end as usize].to_vec())
    })
}

#[tokio::test]
async fn a_download_is_checked_against_a_full_object_checksum_or_an_md5_etag() {
    use md5::{Digest, Md5};
    let hex = |d: &[u8]| {
        let sum = Md5::digest(d);
        format!(
            "\"{}\"",
            sum.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mut other = data.clone();
    other[1234] ^= 1;

    let read = |server: &HostileServer| {
        let sb = sandbox(server);
        async move { sb.read("/f").await }
    };

    // The right MD5: read whole, fine.
    let server = etag_server(data.clone(), hex(&data), &[]);
    assert_eq!(&read(&server).await.expect("read")[..], &data[..]);

    // Bytes that do not hash to the ETag: refused, and no local file is left.
    let server = etag_server(data.clone(), hex(&other), &[]);
    let sb = sandbox(&server);
    let e = sb.read("/f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    let message = e.to_string();
    assert!(
        message.contains("do not match the object's checksum (MD5"),
        "{e}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("f");
    let e = sb.download_to_file("/f", &local, |_| {}).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    // A part of it cannot be checked against the whole object's checksum.
    assert_eq!(
        &sb.read_range("/f", 10, 100).await.expect("range")[..],
        &data[10..110]
    );

    // Under SSE-KMS the ETag is not an MD5: not checked. Under SSE-S3 it is.
    let kms = [("x-amz-server-side-encryption", "aws:kms".to_owned())];
    let server = etag_server(data.clone(), hex(&other), &kms);
    assert_eq!(&read(&server).await.expect("read")[..], &data[..]);
    let sse_s3 = [("x-amz-server-side-encryption", "AES256".to_owned())];
    let server = etag_server(data.clone(), hex(&other), &sse_s3);
    let e = read(&server).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        e.to_string()
            .contains("do not match the object's checksum (MD5"),
        "{e}"
    );

    // A full-object CRC-64/NVME is checked first, in one part or many.
    let full = |d: &[u8]| {
        use base64::Engine;
        let crc = corral::cache::part_checksum(d).to_be_bytes();
        [
            (
                "x-amz-checksum-crc64nvme",
                base64::engine::general_purpose::STANDARD.encode(crc),
            ),
            ("x-amz-checksum-type", "FULL_OBJECT".to_owned()),
        ]
    };
    let multipart_etag = "\"0123456789abcdef0123456789abcdef-3\"".to_owned();
    let server = etag_server(data.clone(), multipart_etag.clone(), &full(&data));
    assert_eq!(&read(&server).await.expect("read")[..], &data[..]);
    let saved = dir.path().join("crc");
    let sb = sandbox(&server);
    sb.download_to_file("/f", &saved, |_| {})
        .await
        .expect("saved");
    assert_eq!(std::fs::read(&saved).expect("saved"), data);
    std::fs::remove_file(&saved).expect("rm");
    let server = etag_server(data.clone(), multipart_etag, &full(&other));
    let e = read(&server).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    let message = e.to_string();
    assert!(
        message.contains("do not match the object's checksum (CRC-64/NVME"),
        "{e}"
    );
    // Saved to a file (chunks written in place, their CRCs combined): refused too.
    let sb = sandbox(&server);
    let e = sb.download_to_file("/f", &saved, |_| {}).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        e.to_string()
            .contains("do not match the object's checksum (CRC-64/NVME"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    // Even when the MD5 ETag is right: the CRC is what is checked.
    let server = etag_server(data.clone(), hex(&data), &full(&other));
    let e = read(&server).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        e.to_string()
            .contains("do not match the object's checksum (CRC-64/NVME"),
        "{e}"
    );

    // A server whose ETags are not MD5s, declared so.
    let server = etag_server(data.clone(), hex(&other), &[]);
    let corral = Corral::from_json(
        &format!(
            r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","path":"users/%u","endpointOverride":"{}","accessKeyId":"a","secretKey":"b","maxRetries":0,"etagIsMd5":false}}}}}}"#,
            server.endpoint
        ),
        CacheConfig::default(),
    )
    .expect("corral");
    let sb = corral.sandbox(&Identity::user("alice")).expect("sandbox");
    assert_eq!(&sb.read("/f").await.expect("read")[..], &data[..]);
}

/// Errors name the user's path, never the bucket key: the layout of the
/// bucket (the prefix of each user) does not show.
#[tokio::test]
async fn errors_name_the_users_path_not_the_bucket_key() {
    let data: Vec<u8> = vec![1; 100];
    let server = HostileServer::start(move |r: &Request| {
        if r.query.contains("list-type=2") {
            return listing(&[], &[], None);
        }
        match r.method.as_str() {
            "HEAD" if r.path == "/bkt/users/alice/f" => Answer::status(
                200,
                &[
                    ("content-length", "100"),
                    ("etag", "\"e\""),
                    ("last-modified", "Sat, 28 Nov 2026 00:00:00 GMT"),
                ],
                Vec::new(),
            ),
            "HEAD" => Answer::status(404, &[], ""),
            _ => Answer::status(
                500,
                &[("content-type", "application/xml")],
                "<Error><Code>InternalError</Code></Error>",
            ),
        }
    });
    let sb = sandbox(&server);
    let e = sb.read("/f").await.unwrap_err();
    assert!(
        e.to_string().contains(" /f: ") && !e.to_string().contains("users/"),
        "{e}"
    );
    let e = sb.write("/g", &data, None).await.unwrap_err();
    assert!(
        e.to_string().contains(" /g: ") && !e.to_string().contains("users/"),
        "{e}"
    );
    for e in [
        sb.mkdir("/d", corral::MkdirOptions::default())
            .await
            .unwrap_err(),
        sb.remove("/f", corral::RemoveOptions::default())
            .await
            .unwrap_err(),
        sb.copy("/f", "/h", corral::TreeCopyOptions { recursive: false })
            .await
            .unwrap_err(),
        sb.rename("/f", "/h", corral::RenameOptions { replace: true })
            .await
            .unwrap_err(),
    ] {
        let text = e.to_string();
        assert!(text.contains(" /") && !text.contains("users/"), "{text}");
    }
}
