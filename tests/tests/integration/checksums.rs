//! Which servers verify what corral sends with each PUT and part (the
//! checksum, and the payload's SHA-256 when the signature covers it): a
//! proxy flips one byte of every PUT body on its way, and a server that
//! verifies refuses the upload. The result per server is stated in
//! docs/COMPATIBILITY.md.

use crate::common;

use bytes::Bytes;
use corral_adapters::Backends;
use corral_domain::port::PutMode;
use corral_domain::{ErrorKind, ObjectKey, ObjectStorage};
use corral_fixtures::faults::FaultProxy;
use corral_fixtures::servers::S3Server;

/// Whether `server` refuses a corrupted PUT and a corrupted part with
/// `checksum`, the payload signed (its SHA-256 in the signature) or not.
async fn refuses_corruption(
    server: &S3Server,
    checksum: &str,
    signed: bool,
) -> (bool, bool, String) {
    let proxy = FaultProxy::corrupting(&format!("127.0.0.1:{}", server.port));
    let spec = common::s3_spec_at(
        &proxy.endpoint,
        &server.access_key,
        &server.secret_key,
        "sums",
        &format!(r#""checksum":"{checksum}","signPayload":{signed},"maxRetries":0"#),
    );
    let backend = Backends::new().s3(&spec).expect("backend");
    let data = Bytes::from(vec![7u8; 6 << 20]);
    let put = backend
        .put(
            &ObjectKey::from_raw(format!("{checksum}-{signed}/put")),
            data.clone(),
            PutMode::Overwrite,
        )
        .await;
    let key = ObjectKey::from_raw(format!("{checksum}-{signed}/part"));
    let upload = backend.create_multipart(&key).await.expect("create");
    let part = backend.upload_part(&key, &upload, 1, data).await;
    let _ = backend.abort_multipart(&key, &upload).await;
    let detail = match (&put, &part) {
        (Err(e), _) | (_, Err(e)) => format!("{} [{}]", e, e.kind()),
        _ => "accepted".to_owned(),
    };
    (put.is_err(), part.is_err(), detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_verify_upload_checksums() {
    let s3s = S3Server::s3s_fs();
    let moto = S3Server::moto();
    let garage = S3Server::garage();
    const VARIANTS: [(&str, bool); 5] = [
        ("sha256", true),
        ("crc64nvme", true),
        ("crc64nvme", false),
        ("none", true),
        ("none", false),
    ];
    // Measured, (PUT refused, part refused) per variant: a signed payload
    // is verified by s3s-fs and Garage; without it, Garage verifies the
    // CRC-64/NVME of PUTs and parts, s3s-fs of PUTs only; moto verifies
    // nothing. With neither, every server stores the corrupted bytes (the
    // control: the proxy does corrupt).
    let (all, put_only, nothing) = ((true, true), (true, false), (false, false));
    let expected = [
        ("s3s-fs", &s3s, [all, all, put_only, all, nothing]),
        ("moto", &moto, [nothing; 5]),
        ("Garage", &garage, [all, all, all, all, nothing]),
    ];
    for (name, server, want) in expected {
        server.create_bucket("sums");
        for ((checksum, signed), want) in VARIANTS.into_iter().zip(want) {
            let (put, part, detail) = refuses_corruption(server, checksum, signed).await;
            println!(
                "{name:<8} {checksum:<10} signed payload {signed:<5} corrupted PUT refused: {put:<5} corrupted part refused: {part:<5} ({detail})"
            );
            assert_eq!(
                (put, part),
                want,
                "{name} {checksum} signed {signed}: {detail}"
            );
        }
    }
    // And an uncorrupted upload with the default checksum is accepted everywhere.
    for server in [&s3s, &moto, &garage] {
        let spec = common::s3_spec(server, "sums", "");
        let backend = Backends::new().s3(&spec).expect("backend");
        let r = backend
            .put(
                &ObjectKey::from_raw("clean"),
                Bytes::from_static(b"clean"),
                PutMode::Overwrite,
            )
            .await;
        assert!(r.is_ok(), "{}: {r:?}", server.endpoint);
        assert_ne!(
            backend
                .head(&ObjectKey::from_raw("clean"))
                .await
                .map_err(|e| e.kind()),
            Err(ErrorKind::NotFound)
        );
    }
}
