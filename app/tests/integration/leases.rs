//! Leases on continued uploads: two instances of the library over one
//! bucket (moto, which enforces conditional writes) never continue the
//! same upload at once; a lease whose holder died is taken over; a lease is
//! released when its upload completes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use corral::cache::CacheConfig;
use corral::{Corral, ErrorKind, Identity, UserSandbox, WriteOptions};
use corral_domain::port::PutMode;
use corral_domain::{ObjectKey, ObjectStorage};
use corral_fixtures::servers::S3Server;
use futures::TryStreamExt;

const MIB: usize = 1 << 20;

fn mappings(s: &S3Server, path: &str) -> String {
    format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"leases","path":"{path}","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}"#,
        s.endpoint, s.access_key, s.secret_key
    )
}

/// One server instance's view of alice's sandbox (its own cache and table
/// of writes), keeping cut uploads as a server does; 5 MiB parts.
fn instance(mappings: &str) -> UserSandbox {
    let cache = CacheConfig {
        upload: 5 << 20,
        ..CacheConfig::default()
    };
    Corral::from_json(mappings, cache)
        .expect("corral")
        .keep_partial_uploads(true)
        .sandbox(&Identity::user("alice"))
        .expect("sandbox")
}

const KEEP: WriteOptions = WriteOptions {
    size: None,
    overwrite: None,
    if_not_exists: false,
    must_exist: false,
    keep_existing: true,
};

/// Writes `data` to `path` through `sb` and goes away before completing.
async fn cut(sb: &UserSandbox, path: &str, data: &[u8], stored: u64) {
    let mut w = sb.create(path, None, None).await.expect("create");
    w.write(data).await.expect("write");
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sb.stat(path).await.map(|e| e.size).unwrap_or(0) != stored {
        assert!(
            Instant::now() < deadline,
            "{path}: the cut upload was not kept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leases_left(raw: &dyn ObjectStorage) -> Vec<String> {
    raw.list(
        &ObjectKey::from_raw("users/alice/.corral/leases/"),
        Default::default(),
    )
    .map_ok(|i| i.key().as_str().to_owned())
    .try_collect()
    .await
    .expect("list")
}

#[test]
fn one_instance_at_a_time_continues_an_upload() {
    let moto = S3Server::moto();
    moto.create_bucket("leases");
    let users = mappings(&moto, "users/%u");
    let raw = crate::common::raw_backend(&mappings(&moto, ""), "x");
    let (a, b, c) = (instance(&users), instance(&users), instance(&users));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let data = crate::common::pattern(12 * MIB + 100, 7);
        let kept = 10 * MIB as u64;
        cut(&a, "/big.bin", &data[..10 * MIB + 10], kept).await;
        // Two instances continue it at once: one wins, the other is told.
        let (rb, rc) = tokio::join!(
            b.create_with("/big.bin", KEEP),
            c.create_with("/big.bin", KEEP)
        );
        let (mut winner, loser) = match (rb, rc) {
            (Ok(w), Err(e)) | (Err(e), Ok(w)) => (w, e),
            (Ok(_), Ok(_)) => panic!("both instances continue the same upload"),
            (Err(x), Err(y)) => panic!("neither continues it: {x} / {y}"),
        };
        assert_eq!(loser.kind(), ErrorKind::Busy, "{loser}");
        assert!(loser.to_string().contains("another server"), "{loser}");
        assert_eq!(winner.resumed_from(), Some(kept));
        assert_eq!(
            leases_left(&*raw).await.len(),
            1,
            "one lease while it is continued"
        );
        winner
            .write_at(kept, &data[kept as usize..])
            .await
            .expect("write");
        winner.finish().await.expect("finish");
        assert!(a.read("/big.bin").await.expect("read") == data);
        // Released once the object is complete.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !leases_left(&*raw).await.is_empty() {
            assert!(Instant::now() < deadline, "the lease was not released");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            raw.list_pending_uploads(&ObjectKey::from_raw(""))
                .await
                .expect("pending")
                .is_empty()
        );

        // A lease of another process: refused while live, taken over once
        // its holder is past its time (it died).
        cut(&a, "/two.bin", &data[..5 * MIB + 1], 5 * MIB as u64).await;
        let pending = raw
            .list_pending_uploads(&ObjectKey::from_raw("users/alice/two.bin"))
            .await
            .expect("pending");
        let upload = &pending.first().expect("the kept upload").upload_id;
        let hex: String = {
            use md5::Digest;
            md5::Md5::digest(upload.0.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let lease = ObjectKey::from_raw(format!("users/alice/.corral/leases/{hex}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs();
        let plant = |expires: u64| {
            Bytes::from(format!(
                r#"{{"holder":"pid 1 elsewhere","expires":{expires}}}"#
            ))
        };
        raw.put(&lease, plant(now + 600), PutMode::Overwrite)
            .await
            .expect("plant");
        let e = b.create_with("/two.bin", KEEP).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        assert!(e.to_string().contains("try again in"), "{e}");
        raw.put(&lease, plant(now - 1), PutMode::Overwrite)
            .await
            .expect("plant");
        let mut w = b.create_with("/two.bin", KEEP).await.expect("taken over");
        assert_eq!(w.resumed_from(), Some(5 * MIB as u64));
        w.write_at(5 * MIB as u64, &data[5 * MIB..6 * MIB])
            .await
            .expect("write");
        w.finish().await.expect("finish");
        assert!(b.read("/two.bin").await.expect("read") == data[..6 * MIB]);
    });
}
