//! `corral cp` against a plain object_store client on one local S3 server
//! (s3s-fs, started here), in one run: a 1 GiB file up and down with the same
//! part size (8 MiB) and concurrency (8 parts in flight: the 64 MiB
//! per-transfer cache), the peak RSS of the corral process, and `cp -r` of
//! 1,000 files of 64 KiB.
//!
//! `scripts/bench-transfer.sh` builds the release binary and runs this;
//! results are in docs/PERFORMANCE.md.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
use common::corral_bin;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_fixtures::servers::S3Server;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 1 << 30;
const PART: u64 = 8 * MIB;
const IN_FLIGHT: usize = 8;

/// Runs corral, sampling its peak RSS (VmHWM) until it exits.
fn run_corral(dir: &Path, args: &[&str]) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = std::process::Command::new(corral_bin())
        .args(args)
        .current_dir(dir)
        .env("USER", "bench")
        .spawn()
        .expect("run corral (build it with cargo build --release -p corral)");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(v) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
        {
            peak_kib = peak_kib.max(v.parse().unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "corral {args:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (start.elapsed(), peak_kib / 1024)
}

fn rate(d: Duration) -> f64 {
    SIZE as f64 / MIB as f64 / d.as_secs_f64()
}

async fn baseline_upload(store: Arc<object_store::aws::AmazonS3>, file: &Path) -> Duration {
    let start = Instant::now();
    let path = StorePath::from("baseline.bin");
    let id = store.create_multipart(&path).await.unwrap();
    let f = Arc::new(std::fs::File::open(file).unwrap());
    let parts: Vec<_> = futures::stream::iter(0..SIZE.div_ceil(PART))
        .map(|i| {
            let (store, f, path, id) =
                (Arc::clone(&store), Arc::clone(&f), path.clone(), id.clone());
            async move {
                let len = PART.min(SIZE - i * PART) as usize;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, i * PART).unwrap();
                store
                    .put_part(&path, &id, i as usize, PutPayload::from(buf))
                    .await
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
        .unwrap();
    store.complete_multipart(&path, &id, parts).await.unwrap();
    start.elapsed()
}

async fn baseline_download(store: Arc<object_store::aws::AmazonS3>, out: &Path) -> Duration {
    let start = Instant::now();
    let f = Arc::new(std::fs::File::create(out).unwrap());
    let path = StorePath::from("baseline.bin");
    futures::stream::iter(0..SIZE.div_ceil(PART))
        .map(|i| {
            let (store, f, path) = (Arc::clone(&store), Arc::clone(&f), path.clone());
            async move {
                let range = i * PART..(i * PART + PART).min(SIZE);
                let r = store
                    .get_opts(
                        &path,
                        GetOptions {
                            range: Some(GetRange::Bounded(range.clone())),
                            ..Default::default()
                        },
                    )
                    .await?;
                let bytes = r.bytes().await?;
                f.write_all_at(&bytes, range.start).unwrap();
                Ok::<_, object_store::Error>(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    start.elapsed()
}

fn main() {
    let server = S3Server::s3s_fs();
    server.create_bucket("bench");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let block: Vec<u8> = (0..MIB as usize)
            .map(|i| (i as u8).wrapping_mul(151))
            .collect();
        for i in 0..SIZE / MIB {
            let mut b = block.clone();
            b[0] = i as u8;
            f.write_all(&b).unwrap();
        }
    }
    let config = dir.path().join("corral.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"mappings": {{"": {{"": {{"type":"S3","bucketName":"bench","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}"}}}}}}}}"#,
            server.endpoint, server.access_key, server.secret_key
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config.to_str().unwrap();
    let store = Arc::new(
        AmazonS3Builder::new()
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(300)),
            )
            .with_endpoint(&server.endpoint)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id(&server.access_key)
            .with_secret_access_key(&server.secret_key)
            .build()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "1 GiB on s3s-fs 0.14.1, 8 MiB parts, 8 in flight (two cores shared by client and server); best of 2, alternating"
    );
    // Alternate the two clients and keep each one's best of two: the disk
    // flushing one run's writes during the next would otherwise favour whichever goes first.
    let (mut base_up, mut corral_up, mut up_rss) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..2 {
        base_up = base_up.min(rt.block_on(baseline_upload(Arc::clone(&store), &big)));
        let (t, rss) = run_corral(
            dir.path(),
            &["--config", cfg, "cp", "big.bin", "corral:/big.bin"],
        );
        corral_up = corral_up.min(t);
        up_rss = up_rss.max(rss);
    }
    println!(
        "upload:   object_store {:.0} MiB/s, corral cp {:.0} MiB/s = {:.2}x; corral peak RSS {} MiB",
        rate(base_up),
        rate(corral_up),
        base_up.as_secs_f64() / corral_up.as_secs_f64(),
        up_rss
    );
    let (mut base_down, mut corral_down, mut down_rss) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..2 {
        base_down = base_down.min(rt.block_on(baseline_download(
            Arc::clone(&store),
            &dir.path().join("base.out"),
        )));
        let (t, rss) = run_corral(
            dir.path(),
            &["--config", cfg, "cp", "corral:/big.bin", "corral.out"],
        );
        corral_down = corral_down.min(t);
        down_rss = down_rss.max(rss);
    }
    println!(
        "download: object_store {:.0} MiB/s, corral cp {:.0} MiB/s = {:.2}x; corral peak RSS {} MiB",
        rate(base_down),
        rate(corral_down),
        base_down.as_secs_f64() / corral_down.as_secs_f64(),
        down_rss
    );
    let same =
        std::fs::read(&big).unwrap() == std::fs::read(dir.path().join("corral.out")).unwrap();
    assert!(same, "the downloaded file differs");

    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    let small: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..1000 {
        std::fs::write(many.join(format!("f{i:04}.bin")), &small).unwrap();
    }
    let (t, rss) = run_corral(
        dir.path(),
        &["--config", cfg, "cp", "-r", "many", "corral:/many"],
    );
    println!(
        "cp -r of 1,000 files of 64 KiB: {:.0} files/s ({:.1} s); peak RSS {} MiB",
        1000.0 / t.as_secs_f64(),
        t.as_secs_f64(),
        rss
    );
}
