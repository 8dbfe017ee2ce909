//! Transfer-cache benchmarks (a plain binary: `cargo bench -p corral --bench cache -- SCENARIO`).
//!
//! Scenarios, each best run in its own process (RSS peaks are per process):
//! - `reserve`: cost of one reserve + release on an idle cache;
//! - `staging`: 1 GiB staged through an upload (memory and file mode) to a
//!   backend that drops the bytes, against one plain memcpy of the same bytes;
//! - `rss-memory` / `rss-file`: a 2 GiB upload with a 64 MiB per-transfer
//!   limit to the File backend, reporting the process's RSS and RssAnon
//!   (from /proc/self/status) before and at their peak.
//!
//! `scripts/bench-cache.sh` runs them all; results are in docs/PERFORMANCE.md.
#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use corral::cache::{CacheConfig, TransferCache};
use corral_domain::port::{
    CompletedPart, GetResult, ListOptions, ListStream, ObjectMeta, PutMode, PutResult, UploadId,
};
use corral_domain::{Capabilities, Error, ObjectKey, ObjectStorage, Result};

const MIB: u64 = 1 << 20;

/// Accepts everything and keeps nothing: measures the cache alone.
#[derive(Debug)]
struct Null(Capabilities);

#[async_trait]
impl ObjectStorage for Null {
    fn capabilities(&self) -> &Capabilities {
        &self.0
    }
    async fn head(&self, _: &ObjectKey) -> Result<ObjectMeta> {
        Err(Error::not_found("null"))
    }
    async fn get(
        &self,
        _: &ObjectKey,
        _: Option<corral_domain::port::ByteRange>,
    ) -> Result<GetResult> {
        Err(Error::not_found("null"))
    }
    async fn put(&self, _: &ObjectKey, data: Bytes, _: PutMode) -> Result<PutResult> {
        std::hint::black_box(data);
        Ok(PutResult::default())
    }
    async fn delete_many(&self, _: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        Ok(Vec::new())
    }
    fn list(&self, _: &ObjectKey, _: ListOptions) -> ListStream {
        Box::pin(futures::stream::empty())
    }
    async fn copy(&self, _: &ObjectKey, _: &ObjectKey) -> Result<()> {
        Ok(())
    }
    async fn create_multipart(&self, _: &ObjectKey) -> Result<UploadId> {
        Ok(UploadId("null".into()))
    }
    async fn upload_part(
        &self,
        _: &ObjectKey,
        _: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        std::hint::black_box(data);
        Ok(CompletedPart {
            number,
            etag: String::new(),
        })
    }
    async fn complete_multipart(
        &self,
        _: &ObjectKey,
        _: &UploadId,
        _: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        Ok(PutResult::default())
    }
    async fn abort_multipart(&self, _: &ObjectKey, _: &UploadId) -> Result<()> {
        Ok(())
    }
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn block(seed: u8) -> Vec<u8> {
    (0..MIB as usize)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn upload(
    cache: &TransferCache,
    storage: Arc<dyn ObjectStorage>,
    key: &str,
    size: u64,
    block: &[u8],
) {
    let mut up = cache
        .upload(storage, ObjectKey::from_raw(key), Some(size))
        .await
        .unwrap();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(block.len() as u64) as usize;
        up.write_at(off, &block[..n]).await.unwrap();
        off += n as u64;
    }
    up.finish().await.unwrap();
}

fn cfg(file: Option<std::path::PathBuf>) -> CacheConfig {
    CacheConfig {
        total: 256 * MIB,
        upload: 64 * MIB,
        download: 64 * MIB,
        file,
        wait: Duration::from_secs(60),
        per_user: None,
    }
}

async fn reserve() {
    let cache = TransferCache::open(cfg(None)).unwrap();
    let n = 1_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        let r = cache.reserve(8 * MIB, 64 * MIB).await.unwrap();
        std::hint::black_box(&r);
    }
    let per = start.elapsed() / n;
    println!(
        "reserve+release, idle cache: {} ns per operation ({n} operations)",
        per.as_nanos()
    );
}

async fn staging() {
    const TOTAL: u64 = 1 << 30;
    let data = block(7);
    // Baseline: copy the same bytes once into a reused 8 MiB buffer.
    let mut target = vec![0u8; 8 * MIB as usize];
    let start = Instant::now();
    let mut off = 0;
    while off < TOTAL {
        let at = (off % (8 * MIB)) as usize;
        target[at..at + MIB as usize].copy_from_slice(&data);
        std::hint::black_box(&target);
        off += MIB;
    }
    let memcpy = start.elapsed();
    let rate = |d: Duration| TOTAL as f64 / MIB as f64 / d.as_secs_f64();
    println!("memcpy of 1 GiB in 1 MiB blocks: {:.0} MiB/s", rate(memcpy));
    let null: Arc<dyn ObjectStorage> = Arc::new(Null(Capabilities::s3()));
    let dir = tempfile::tempdir().unwrap();
    for (mode, file) in [
        ("memory", None),
        ("file", Some(dir.path().join("cache.bin"))),
    ] {
        let cache = TransferCache::open(cfg(file)).unwrap();
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            upload(&cache, Arc::clone(&null), "bench", TOTAL, &data).await;
            best = best.min(start.elapsed());
        }
        println!(
            "staging 1 GiB, {mode} mode (best of 3): {:.0} MiB/s = {:.2}x memcpy",
            rate(best),
            memcpy.as_secs_f64() / best.as_secs_f64()
        );
    }
}

async fn rss(file_mode: bool) {
    const SIZE: u64 = 2 << 30;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let storage: Arc<dyn ObjectStorage> =
        Arc::new(corral_adapters::file_backend(&sandbox).unwrap());
    let file = file_mode.then(|| dir.path().join("cache.bin"));
    let cache = TransferCache::open(cfg(file)).unwrap();
    let data = block(3);
    let (idle_rss, idle_anon) = (status_kib("VmRSS:"), status_kib("RssAnon:"));
    let peak_anon = Arc::new(AtomicU64::new(idle_anon));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak_anon, stop) = (Arc::clone(&peak_anon), Arc::clone(&stop));
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak_anon.fetch_max(status_kib("RssAnon:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let start = Instant::now();
    upload(&cache, Arc::clone(&storage), "big.bin", SIZE, &data).await;
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        storage
            .head(&ObjectKey::from_raw("big.bin"))
            .await
            .unwrap()
            .size,
        SIZE
    );
    let peak_rss = status_kib("VmHWM:");
    let mode = if file_mode { "file" } else { "memory" };
    println!(
        "2 GiB upload to the File backend, {mode} mode, 64 MiB per transfer: {:.0} MiB/s; \
         idle RSS {} MiB, peak RSS {} MiB (+{} MiB); RssAnon idle {} MiB, peak {} MiB (+{} MiB)",
        SIZE as f64 / MIB as f64 / took.as_secs_f64(),
        idle_rss / 1024,
        peak_rss / 1024,
        peak_rss.saturating_sub(idle_rss) / 1024,
        idle_anon / 1024,
        peak_anon.load(Ordering::Relaxed) / 1024,
        peak_anon.load(Ordering::Relaxed).saturating_sub(idle_anon) / 1024,
    );
}

fn main() {
    let scenario = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match scenario.as_str() {
            "reserve" => reserve().await,
            "staging" => staging().await,
            "rss-memory" => rss(false).await,
            "rss-file" => rss(true).await,
            _ => {
                reserve().await;
                staging().await;
                println!("(run rss-memory and rss-file in processes of their own)");
            }
        }
    });
}
