//! Downloads checked end to end on real servers: a proxy flips one byte of
//! every GetObject answer (the length stays right), and a download must fail
//! wherever the server vouches for a checksum of the whole object — a
//! full-object CRC-64/NVME, or an ETag that is a plain MD5. Which objects
//! each server covers is stated in docs/COMPATIBILITY.md and asserted here.

use crate::common;

use std::time::Duration;

use corral::Corral;
use corral::cache::CacheConfig;
use corral_domain::{ErrorKind, Identity};
use corral_fixtures::faults::FaultProxy;
use corral_fixtures::servers::S3Server;

const MIB: usize = 1 << 20;

fn corral_at(server: &S3Server, endpoint: &str, extra: &str) -> Corral {
    Corral::from_json(
        &format!(
            r#"{{"": {{"": {{"type":"S3","bucketName":"sums","path":"users/%u","endpointOverride":"{endpoint}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false,"listMultipartUploads":false,"maxRetries":0{extra}}}}}}}"#,
            server.access_key, server.secret_key
        ),
        CacheConfig {
            upload: 5 << 20,
            download: 5 << 20,
            ..CacheConfig::default()
        },
    )
    .expect("corral")
}

/// For each object (single-part or 3-part, uploaded with corral's default
/// CRC-64/NVME or with no checksum): whether a corrupted download is refused.
async fn detected(server: &S3Server) -> Vec<(&'static str, bool)> {
    server.create_bucket("sums");
    let proxy = FaultProxy::corrupting_downloads(&format!("127.0.0.1:{}", server.port));
    let cases = [
        ("single part, CRC-64/NVME", "", 1000),
        ("3 parts, CRC-64/NVME", "", 12 * MIB),
        ("single part, no checksum", r#","checksum":"none""#, 1000),
        ("3 parts, no checksum", r#","checksum":"none""#, 12 * MIB),
    ];
    let mut out = Vec::new();
    for (i, (name, upload_option, size)) in cases.into_iter().enumerate() {
        let data = common::pattern(size, i as u64 + 9);
        // A name that needs encoding in a URL, so that corral's own signed
        // HEAD (which reads the checksum) is exercised with it.
        let path = format!("/o{i} a+b%20é&=.bin");
        let direct = corral_at(server, &server.endpoint, upload_option);
        let direct = direct.sandbox(&Identity::user("u")).expect("sandbox");
        direct.write(&path, &data, None).await.expect("upload");
        let corrupting = corral_at(server, &proxy.endpoint, "");
        let sb = corrupting.sandbox(&Identity::user("u")).expect("sandbox");
        let refused = match sb.read(&path).await {
            Ok(got) => {
                assert_ne!(&got[..], &data[..], "{name}: the proxy did not corrupt");
                false
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{name}: {e}");
                assert!(
                    e.to_string().contains("do not match the object's checksum"),
                    "{name}: {e}"
                );
                true
            }
        };
        // Saved to a local file (each chunk straight to its place, the
        // chunks' CRCs combined): refused alike, and no file is left.
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("f");
        let saved = sb.download_to_file(&path, &local, |_| {}).await;
        match &saved {
            Ok(_) => assert!(!refused, "{name}: read refused, saved accepted"),
            Err(e) => {
                assert!(refused, "{name}: read accepted, saved refused: {e}");
                assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{name}: {e}");
                assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
            }
        }
        // Uncorrupted, the same read succeeds: the check is not a false alarm.
        let clean = corral_at(server, &server.endpoint, "");
        let clean = clean.sandbox(&Identity::user("u")).expect("sandbox");
        let got = clean.read(&path).await.expect("clean read");
        assert_eq!(&got[..], &data[..], "{name}");
        clean
            .download_to_file(&path, &local, |_| {})
            .await
            .expect("clean save");
        assert!(std::fs::read(&local).expect("saved") == data, "{name}");
        out.push((name, refused));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_downloads_are_refused_where_the_server_vouches_for_a_checksum() {
    let started = std::time::Instant::now();
    let servers = [
        ("s3s-fs", S3Server::s3s_fs()),
        ("moto", S3Server::moto()),
        ("Garage", S3Server::garage()),
    ];
    // Measured: Garage keeps a full-object CRC-64/NVME for every object
    // corral uploads; s3s-fs only for single-part ones; moto keeps none that
    // can be trusted. Every server's single-part ETag is the MD5.
    let expected = [
        ("s3s-fs", [true, false, true, false]),
        ("moto", [true, false, true, false]),
        ("Garage", [true, true, true, false]),
    ];
    for ((name, server), (_, want)) in servers.iter().zip(expected) {
        let got = detected(server).await;
        for (case, refused) in &got {
            println!("{name:<7} {case:<26} corrupted download refused: {refused}");
        }
        let got: Vec<bool> = got.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, want, "{name}");
    }
    assert!(started.elapsed() < Duration::from_secs(120));
}
