//! The transfer cache: bounded staging for S3 uploads and downloads.
//!
//! Every transfer through the cache holds a [`Reservation`] of cache bytes:
//! at least one part (upload) or one chunk (download) to start, at most its
//! per-transfer limit (`maxCloudCacheUploadSize`,
//! `maxCloudCacheDownloadSize`). The cache size
//! (`maxCloudCacheSize`) therefore bounds how many transfers run at
//! once; the others wait in FIFO order ([`pool`]) and fail with "cache full"
//! after a timeout.
//!
//! Bytes live in memory, allocated when a part or chunk needs them, or in a
//! cache file (`cloudCacheFile`) mapped once and divided into extents
//! ([`store`]). [`Upload`] fills parts in any order and sends each as soon as
//! it is complete; [`Download`] reads ahead with ranged GETs. Both stop at
//! their reservation (backpressure) and give every byte back when dropped,
//! however they end.
//!
//! ```
//! use std::sync::Arc;
//! use corral::cache::{CacheConfig, TransferCache};
//! use corral_domain::{ObjectKey, ObjectStorage};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> corral_domain::Result<()> {
//! let cache = TransferCache::open(CacheConfig::default())?;
//! let storage: Arc<dyn ObjectStorage> = Arc::new(corral_adapters::ObjectStoreBackend::memory(Default::default()));
//! let key = ObjectKey::from_raw("hello.txt");
//!
//! let mut up = cache.upload(storage.clone(), key.clone(), Some(5)).await?;
//! up.write_at(0, b"hello").await?;
//! up.finish().await?;
//!
//! let mut down = cache.download(storage, key).await?;
//! assert_eq!(&down.read_at(0, 5).await?[..], b"hello");
//! drop(down);
//! assert_eq!(cache.metrics().reserved, 0);
//! # Ok(()) }
//! ```

mod config;
mod download;
pub mod pool;
pub mod store;
mod upload;

use std::sync::Arc;

use corral_domain::parts::{DEFAULT_PART_SIZE, PartPlan, StreamingPlan};
use corral_domain::{Error, ObjectKey, ObjectStorage};

pub use config::{CacheConfig, CacheSection, SizeValue, parse_size};
pub use download::Download;
pub use pool::{CacheMetrics, Reservation};
pub use upload::{Upload, UploadJournal, part_checksum, wait_for_background_aborts};

use pool::PoolInner;
use store::{Backing, CacheFile, Slots};
use upload::Plan;

/// The cache, shared by every transfer of a process.
#[derive(Clone)]
pub struct TransferCache {
    config: CacheConfig,
    pool: Arc<PoolInner>,
    backing: Backing,
}

impl std::fmt::Debug for TransferCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferCache")
            .field("config", &self.config)
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl TransferCache {
    /// Opens the cache: validates the limits and, in file mode, creates (or
    /// checks), locks and maps the cache file. Memory is not allocated here.
    pub fn open(config: CacheConfig) -> Result<Self, Error> {
        config.validate()?;
        let backing = match &config.file {
            Some(path) => Backing::File(Arc::new(CacheFile::open(path, config.total)?)),
            None => Backing::Memory,
        };
        let contiguous = matches!(backing, Backing::File(_));
        Ok(Self {
            pool: PoolInner::new(config.total, contiguous, config.wait),
            config,
            backing,
        })
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Bytes in use, reserved, high-water mark, transfers waiting.
    pub fn metrics(&self) -> CacheMetrics {
        self.pool.metrics()
    }

    /// About the most a transfer of `size` bytes holds (to within a part;
    /// never less for sizes up to one part): its size rounded up to whole
    /// parts, at most the per-transfer limit. A caller that runs many
    /// transfers admits them by this, so that none waits on the cache
    /// (whose wait times out).
    pub fn most_held(&self, size: u64, upload: bool) -> u64 {
        let limit = if upload {
            self.config.upload
        } else {
            self.config.download
        };
        whole_chunks(size, DEFAULT_PART_SIZE)
            .min(limit)
            .min(self.config.total)
    }

    /// A raw reservation of at least `min` and at most `max` bytes (FIFO, with the timeout).
    pub async fn reserve(&self, min: u64, max: u64) -> Result<Reservation, Error> {
        self.pool.reserve(min, max).await
    }

    /// Starts an upload of `size` bytes (or of unknown size) to `key`.
    ///
    /// A known size is checked against the backend's limit before any byte
    /// moves, and sets the part plan; the reservation holds at least one part.
    pub async fn upload(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        size: Option<u64>,
    ) -> Result<Upload, Error> {
        let (plan, min, max) = match size {
            Some(size) => {
                storage.capabilities().check_file_size(size)?;
                let plan = PartPlan::for_size(size, self.config.upload)?;
                if plan.is_single_put() {
                    (Plan::Known(plan), size, size)
                } else {
                    let whole = plan.parts() * plan.part_size();
                    (
                        Plan::Known(plan),
                        plan.part_size(),
                        self.config.upload.min(whole),
                    )
                }
            }
            None => {
                let plan = StreamingPlan::new(self.config.upload)?;
                (Plan::Streaming(plan), plan.part_size(), self.config.upload)
            }
        };
        let part_size = match plan {
            Plan::Known(p) => p.part_size(),
            Plan::Streaming(s) => s.part_size(),
        };
        let reservation = self.pool.reserve(min, max).await?;
        let slots = Slots::new(self.backing.clone(), reservation, part_size.min(max.max(1)));
        Ok(Upload::new(storage, key, plan, slots))
    }

    /// Continues a multipart upload of `size` bytes to `key` that an earlier
    /// process started with parts of `part_size`; `parts` are on the server.
    pub async fn resume_upload(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        size: u64,
        part_size: u64,
        upload: corral_domain::port::UploadId,
        parts: Vec<corral_domain::port::CompletedPart>,
    ) -> Result<Upload, Error> {
        storage.capabilities().check_file_size(size)?;
        let plan = PartPlan::with_part_size(size, part_size)?;
        let max = self.config.upload.max(part_size).min(self.config.total);
        let reservation = self.pool.reserve(part_size, max).await?;
        let slots = Slots::new(self.backing.clone(), reservation, part_size);
        Ok(Upload::new(storage, key, Plan::Known(plan), slots).resume(upload, parts))
    }

    /// Starts a download of `key`, reading ahead in chunks of up to 8 MiB.
    pub async fn download(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
    ) -> Result<Download, Error> {
        let meta = storage.head(&key).await?;
        let chunk = DEFAULT_PART_SIZE.min(self.config.download);
        let min = meta.size.min(chunk);
        // Room for every chunk at once, and no more: a small file holds its
        // own size, not a whole chunk, so many small downloads fit at once.
        let max = self
            .config
            .download
            .min(whole_chunks(meta.size, chunk))
            .max(min);
        let reservation = self.pool.reserve(min, max).await?;
        let slots = Slots::new(self.backing.clone(), reservation, chunk.min(max.max(1)));
        Ok(Download::new(storage, key, meta, chunk, slots))
    }
}

/// Room for `size` bytes in chunks of `chunk`: whole chunks, except that a
/// file smaller than one chunk needs only its size.
fn whole_chunks(size: u64, chunk: u64) -> u64 {
    if size <= chunk {
        size
    } else {
        size.div_ceil(chunk) * chunk
    }
}
