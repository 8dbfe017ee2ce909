//! The transfer cache against the Memory backend (and a counting wrapper
//! around it that sees every multipart call): round trips in memory and
//! file mode, out-of-order and streamed uploads, backpressure, admission
//! under load, and that every byte comes back however a transfer ends.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Counting, pattern};
use corral::cache::{CacheConfig, TransferCache};
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, Result};

const MIB: u64 = 1 << 20;

fn config(total: u64, per_transfer: u64) -> CacheConfig {
    CacheConfig {
        total,
        upload: per_transfer,
        download: per_transfer,
        wait: Duration::from_secs(30),
        ..CacheConfig::default()
    }
}

async fn upload_in_blocks(
    cache: &TransferCache,
    storage: Arc<dyn ObjectStorage>,
    key: &ObjectKey,
    data: &[u8],
    block: usize,
) -> Result<()> {
    let mut up = cache
        .upload(storage, key.clone(), Some(data.len() as u64))
        .await?;
    for (i, chunk) in data.chunks(block.max(1)).enumerate() {
        up.write_at((i * block) as u64, chunk).await?;
    }
    up.finish().await.map(|_| ())
}

async fn download_all(
    cache: &TransferCache,
    storage: Arc<dyn ObjectStorage>,
    key: &ObjectKey,
) -> Result<Vec<u8>> {
    let mut down = cache.download(storage, key.clone()).await?;
    let mut out = Vec::with_capacity(down.size() as usize);
    while let Some(chunk) = down.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn assert_round_trip(
    cache: &TransferCache,
    storage: &Arc<dyn ObjectStorage>,
    key: &ObjectKey,
    data: &[u8],
) {
    let back = download_all(cache, Arc::clone(storage), key)
        .await
        .expect("download");
    assert!(back == data, "{key}: the bytes read back differ");
}

async fn round_trips(cache: &TransferCache) {
    let storage = Counting::new(Duration::ZERO);
    let dynamic = Arc::clone(&storage) as Arc<dyn ObjectStorage>;
    let p = 8 * MIB as usize;
    for (i, size) in [0, 1, p - 1, p, p + 1, 3 * p + 12_345]
        .into_iter()
        .enumerate()
    {
        let key = ObjectKey::from_raw(format!("file-{size}"));
        let data = pattern(size, i as u64);
        upload_in_blocks(cache, Arc::clone(&dynamic), &key, &data, 1_000_003)
            .await
            .expect("upload");
        let back = download_all(cache, Arc::clone(&dynamic), &key)
            .await
            .expect("download");
        assert!(back == data, "size {size}: the bytes differ");
    }
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
    // 8 MiB + 1 and 3 parts + 12,345: 2 + 4 parts; the rest went as one PUT each.
    assert_eq!(storage.parts.load(Ordering::SeqCst), 6);
    let m = cache.metrics();
    assert_eq!((m.reserved, m.in_use, m.holders), (0, 0, 0), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_mode_round_trips() {
    let cache = TransferCache::open(config(64 * MIB, 32 * MIB)).expect("cache");
    assert_eq!(cache.metrics().in_use, 0, "nothing is allocated up front");
    round_trips(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_round_trips_through_a_real_cache_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.bin");
    let cfg = CacheConfig {
        file: Some(path.clone()),
        ..config(64 * MIB, 32 * MIB)
    };
    let cache = TransferCache::open(cfg.clone()).expect("cache");
    // The cache's bytes, and the canary that tells a truncation.
    assert_eq!(
        std::fs::metadata(&path).expect("created").len(),
        64 * MIB + 8
    );
    // Created sparse: no disk block is used before data is written.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&path).expect("meta").blocks() * 512 < MIB);
    round_trips(&cache).await;

    // A second process (here: a second open of the file) is refused.
    let e = TransferCache::open(cfg.clone()).unwrap_err();
    assert!(
        e.to_string().contains("is in use by another process"),
        "{e}"
    );
    drop(cache);
    // Reopened after the first closed; a larger file is accepted and never truncated.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(80 * MIB)
        .expect("grow");
    let again = TransferCache::open(cfg.clone()).expect("reopen");
    drop(again);
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), 80 * MIB);

    let small = dir.path().join("small.bin");
    std::fs::write(&small, vec![0u8; 1024]).expect("write");
    let e = TransferCache::open(CacheConfig {
        file: Some(small),
        ..cfg.clone()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("at least 64 MiB (67108864 bytes)"),
        "{e}"
    );
    let e = TransferCache::open(CacheConfig {
        file: Some(dir.path().to_path_buf()),
        ..cfg
    })
    .unwrap_err();
    assert!(e.to_string().contains("is not a regular file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_streamed_uploads() {
    let cache = TransferCache::open(config(64 * MIB, 32 * MIB)).expect("cache");
    let storage: Arc<dyn ObjectStorage> = Counting::new(Duration::ZERO);
    let p = 8 * MIB as usize;
    let data = pattern(3 * p + 777, 7);

    // Blocks of 1 MiB delivered in a shuffled order within the window of 4 parts.
    let key = ObjectKey::from_raw("shuffled");
    let mut up = cache
        .upload(Arc::clone(&storage), key.clone(), Some(data.len() as u64))
        .await
        .expect("upload");
    assert_eq!(up.window_parts(), 4);
    let mut blocks: Vec<usize> = (0..data.len().div_ceil(MIB as usize)).collect();
    blocks.reverse();
    blocks.swap(3, 17);
    for b in blocks {
        let start = b * MIB as usize;
        let end = (start + MIB as usize).min(data.len());
        up.write_at(start as u64, &data[start..end])
            .await
            .expect("write");
    }
    up.finish().await.expect("finish");
    assert_round_trip(&cache, &storage, &key, &data).await;

    // Unknown size: fixed parts of half the upload cache (16 MiB), the last one short.
    let key = ObjectKey::from_raw("streamed");
    let mut up = cache
        .upload(Arc::clone(&storage), key.clone(), None)
        .await
        .expect("upload");
    assert_eq!(up.part_size(), 16 * MIB);
    for chunk in data.chunks(999_999) {
        up.write(chunk).await.expect("write");
    }
    up.finish().await.expect("finish");
    assert_round_trip(&cache, &storage, &key, &data).await;

    // A short stream goes as one PUT.
    let key = ObjectKey::from_raw("short-stream");
    let mut up = cache
        .upload(Arc::clone(&storage), key.clone(), None)
        .await
        .expect("upload");
    up.write(b"tiny").await.expect("write");
    up.finish().await.expect("finish");
    assert_eq!(
        download_all(&cache, Arc::clone(&storage), &key)
            .await
            .expect("download"),
        b"tiny"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_window_and_gaps_are_refused_and_aborted() {
    let cache = TransferCache::open(config(64 * MIB, 16 * MIB)).expect("cache");
    let storage = Counting::new(Duration::ZERO);
    let dynamic = Arc::clone(&storage) as Arc<dyn ObjectStorage>;
    let key = ObjectKey::from_raw("window");
    let mut up = cache
        .upload(Arc::clone(&dynamic), key.clone(), Some(64 * MIB))
        .await
        .expect("upload");
    assert_eq!(up.window_parts(), 2);
    up.write_at(0, &[1u8; 100]).await.expect("part 1 starts");
    up.write_at(8 * MIB, &[2u8; 100])
        .await
        .expect("part 2 starts");
    let e = up.write_at(16 * MIB, &[3u8; 100]).await.unwrap_err();
    assert!(
        e.to_string().contains("beyond the transfer's window"),
        "{e}"
    );
    let e = up.finish().await.unwrap_err();
    assert!(
        e.to_string().contains("beyond the transfer's window"),
        "{e}"
    );
    assert_eq!(cache.metrics().reserved, 0);

    // A gap is found at finish; the upload that had started is aborted.
    let mut up = cache
        .upload(Arc::clone(&dynamic), key.clone(), Some(20 * MIB))
        .await
        .expect("upload");
    up.write_at(0, &vec![1u8; 8 * MIB as usize])
        .await
        .expect("part 1");
    up.write_at(16 * MIB, &vec![3u8; 4 * MIB as usize])
        .await
        .expect("part 3");
    let e = up.finish().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("bytes from offset 8388608 (part 2) were never written"),
        "{e}"
    );
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0, "aborted");
    assert_eq!(
        storage.head(&key).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "nothing visible"
    );

    // Past the declared size.
    let mut up = cache.upload(dynamic, key, Some(10)).await.expect("upload");
    let e = up.write_at(5, b"123456").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    drop(up);
    assert_eq!(cache.metrics().reserved, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_transfers_through_a_cache_that_fits_four() {
    // Each upload reserves 16 MiB (two 8 MiB parts); the cache holds 64 MiB.
    let cache = TransferCache::open(config(64 * MIB, 16 * MIB)).expect("cache");
    let storage = Counting::new(Duration::from_millis(2));
    let dynamic = Arc::clone(&storage) as Arc<dyn ObjectStorage>;
    let peak = Arc::new(AtomicU64::new(0));
    let peak_waiting = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn({
        let (cache, peak, peak_waiting) =
            (cache.clone(), Arc::clone(&peak), Arc::clone(&peak_waiting));
        async move {
            loop {
                let m = cache.metrics();
                peak.fetch_max(m.in_use.max(m.reserved), Ordering::Relaxed);
                peak_waiting.fetch_max(m.waiting, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let (cache, storage) = (cache.clone(), Arc::clone(&dynamic));
        tasks.spawn(async move {
            let size = (5 * MIB + i * 131_071) as usize; // 5 to ~13 MiB: one or two parts
            let data = pattern(size, 1000 + i);
            let key = ObjectKey::from_raw(format!("t/{i}"));
            upload_in_blocks(&cache, Arc::clone(&storage), &key, &data, 256 * 1024).await?;
            let back = download_all(&cache, storage, &key).await?;
            assert!(back == data, "transfer {i} differs");
            Ok::<_, Error>(())
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("transfer");
        done += 1;
    }
    watcher.abort();
    assert_eq!(done, 64);
    let m = cache.metrics();
    assert_eq!(
        (m.reserved, m.in_use, m.holders, m.waiting),
        (0, 0, 0, 0),
        "{m:?}"
    );
    // The cache was full, and transfers waited for room: admission was
    // at work (the pool itself never exceeds its capacity).
    let waited = peak_waiting.load(Ordering::Relaxed);
    println!(
        "64 transfers through 64 MiB: high-water {} MiB, at most {waited} waiting",
        m.high_water / MIB
    );
    assert_eq!(m.high_water, 64 * MIB, "{m:?}");
    assert!(waited > 0, "no transfer waited for room");
    // The buffers holding data stay within what is reserved.
    assert!(peak.load(Ordering::Relaxed) <= 64 * MIB);
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_and_panics_return_every_byte_and_abort_the_upload() {
    let cache = TransferCache::open(config(64 * MIB, 32 * MIB)).expect("cache");
    let storage = Counting::new(Duration::from_millis(200));
    let dynamic = Arc::clone(&storage) as Arc<dyn ObjectStorage>;

    // A future dropped in the middle of an upload: parts in flight, more filling.
    let key = ObjectKey::from_raw("cancelled");
    let fut = {
        let (cache, storage, key) = (cache.clone(), Arc::clone(&dynamic), key.clone());
        async move {
            let data = pattern(40 * MIB as usize, 3);
            upload_in_blocks(&cache, storage, &key, &data, MIB as usize).await
        }
    };
    let r = tokio::time::timeout(Duration::from_millis(300), fut).await;
    assert!(
        r.is_err(),
        "the upload should still be running when cancelled"
    );
    // The abort runs in the background: give it a moment.
    for _ in 0..100 {
        if storage.open_uploads.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        storage.open_uploads.load(Ordering::SeqCst),
        0,
        "the multipart upload was aborted"
    );
    assert_eq!(
        storage.head(&key).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let m = cache.metrics();
    assert_eq!((m.reserved, m.in_use, m.holders), (0, 0, 0), "{m:?}");

    // A panicking transfer.
    let task = tokio::spawn({
        let (cache, storage) = (cache.clone(), Arc::clone(&dynamic));
        async move {
            let mut up = cache
                .upload(storage, ObjectKey::from_raw("panics"), Some(20 * MIB))
                .await
                .expect("upload");
            up.write_at(0, &vec![0u8; 9 * MIB as usize])
                .await
                .expect("write");
            panic!("the transfer's task panics");
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    for _ in 0..100 {
        if storage.open_uploads.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(storage.open_uploads.load(Ordering::SeqCst), 0);
    assert_eq!(cache.metrics().reserved, 0);

    // A download dropped half-way.
    let key = ObjectKey::from_raw("to-read");
    upload_in_blocks(
        &cache,
        Arc::clone(&dynamic),
        &key,
        &pattern(30 * MIB as usize, 4),
        MIB as usize,
    )
    .await
    .expect("upload");
    let mut down = cache
        .download(Arc::clone(&dynamic), key)
        .await
        .expect("download");
    let first = down.next_chunk().await.expect("read").expect("chunk");
    assert!(!first.is_empty() && first.len() <= 8 * MIB as usize);
    assert!(cache.metrics().reserved > 0, "the read-ahead holds room");
    drop(first);
    drop(down);
    // The fetches in flight end as their tasks are aborted.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.metrics().reserved > 0 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let m = cache.metrics();
    assert_eq!((m.reserved, m.in_use), (0, 0), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_in_order_is_read_ahead_of() {
    let cache = TransferCache::open(config(64 * MIB, 32 * MIB)).expect("cache");
    let counting = Counting::new(Duration::ZERO);
    let storage: Arc<dyn ObjectStorage> = Arc::clone(&counting) as _;
    let key = ObjectKey::from_raw("in-order");
    let data = pattern(60 * MIB as usize, 11);
    upload_in_blocks(&cache, Arc::clone(&storage), &key, &data, 4 * MIB as usize)
        .await
        .expect("upload");
    let mut down = cache.download(storage, key).await.expect("download");
    // Chunks: 256 KiB, then 8 MiB each. The reader takes the first three.
    let mut got = 0usize;
    for _ in 0..3 {
        got += down.next_chunk().await.expect("read").expect("chunk").len();
    }
    assert_eq!(got, (256 << 10) + 2 * 8 * MIB as usize);
    // Moved on twice in order: chunks beyond the reader's are asked for
    // before it asks (before the fix, only the reader's own ever were: 3).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counting.gets.load(Ordering::SeqCst) < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        counting.gets.load(Ordering::SeqCst) >= 5,
        "GETs: {}",
        counting.gets.load(Ordering::SeqCst)
    );
    let mut rest = Vec::new();
    while let Some(c) = down.next_chunk().await.expect("read") {
        rest.extend_from_slice(&c);
    }
    assert_eq!(&rest[..], &data[got..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_restart_the_read_ahead() {
    let cache = TransferCache::open(config(64 * MIB, 16 * MIB)).expect("cache");
    let storage: Arc<dyn ObjectStorage> = Counting::new(Duration::ZERO);
    let key = ObjectKey::from_raw("random");
    let data = pattern(50 * MIB as usize + 3, 9);
    upload_in_blocks(&cache, Arc::clone(&storage), &key, &data, 4 * MIB as usize)
        .await
        .expect("upload");
    let mut down = cache.download(storage, key).await.expect("download");
    for offset in [
        40 * MIB + 5,
        3,
        49 * MIB,
        8 * MIB - 2,
        50 * MIB + 2,
        50 * MIB + 3,
    ] {
        let got = down.read_full(offset, 100).await.expect("read");
        // 100 bytes, fewer only at the end of the object.
        let o = (offset as usize).min(data.len());
        let want = &data[o..(o + 100).min(data.len())];
        assert_eq!(&got[..], want, "at {offset}");
    }
}

#[tokio::test]
async fn a_known_size_is_checked_before_any_byte_moves() {
    let cache = TransferCache::open(config(64 * MIB, 16 * MIB)).expect("cache");
    let storage: Arc<dyn ObjectStorage> = Counting::new(Duration::ZERO);
    let e = cache
        .upload(
            Arc::clone(&storage),
            ObjectKey::from_raw("huge"),
            Some(1 << 40),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert!(
        e.to_string()
            .contains("smaller than 1099511627776 bytes (1 TiB)"),
        "{e}"
    );
    // 200 GiB needs 21 MiB parts, more than this cache's 16 MiB per upload.
    let e = cache
        .upload(storage, ObjectKey::from_raw("big"), Some(200 << 30))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("maxCloudCacheUploadSize) to at least 21 MiB"),
        "{e}"
    );
    assert_eq!(cache.metrics().reserved, 0);
}
