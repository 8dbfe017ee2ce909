//! Which servers verify the checksum corral sends with each PUT and part: a
//! proxy flips one byte of every PUT body on its way, and a server that
//! verifies refuses the upload. The result per server is stated in
//! docs/COMPATIBILITY.md.

mod common;

use bytes::Bytes;
use corral_adapters::Backends;
use corral_conformance::faults::FaultProxy;
use corral_conformance::servers::S3Server;
use corral_domain::port::PutMode;
use corral_domain::{ErrorKind, ObjectKey, ObjectStorage};

/// Whether `server` refuses a corrupted PUT and a corrupted part with `checksum`.
async fn refuses_corruption(server: &S3Server, checksum: &str) -> (bool, bool, String) {
    let proxy = FaultProxy::corrupting(&format!("127.0.0.1:{}", server.port));
    let spec = common::s3_spec_at(
        &proxy.endpoint,
        &server.access_key,
        &server.secret_key,
        "sums",
        &format!(r#""checksum":"{checksum}","maxRetries":0"#),
    );
    let backend = Backends::new().s3(&spec).expect("backend");
    let data = Bytes::from(vec![7u8; 6 << 20]);
    let put = backend
        .put(
            &ObjectKey::from_raw(format!("{checksum}/put")),
            data.clone(),
            PutMode::Overwrite,
        )
        .await;
    let key = ObjectKey::from_raw(format!("{checksum}/part"));
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
    for (name, server) in [("s3s-fs", &s3s), ("moto", &moto), ("Garage", &garage)] {
        server.create_bucket("sums");
        for checksum in ["sha256", "crc64nvme"] {
            let (put, part, detail) = refuses_corruption(server, checksum).await;
            println!(
                "{name:<8} {checksum:<10} corrupted PUT refused: {put:<5} corrupted part refused: {part:<5} ({detail})"
            );
        }
    }
    // Measured: s3s-fs and Garage refuse corrupted data, moto stores it.
    for (server, verifies) in [(&s3s, true), (&moto, false), (&garage, true)] {
        let (put, part, detail) = refuses_corruption(server, "sha256").await;
        assert_eq!(
            (put, part),
            (verifies, verifies),
            "{}: {detail}",
            server.endpoint
        );
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
