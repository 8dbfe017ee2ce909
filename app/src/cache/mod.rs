//! The transfer cache: bounded staging for S3 uploads and downloads.
//!
//! A transfer takes cache bytes when it needs them and as much as it needs:
//! one [`Reservation`] per part being filled (upload) or chunk being read
//! ahead (download), never at open. A small file holds about its size; a
//! large one holds at most its per-transfer window (`maxCloudCacheUploadSize`,
//! `maxCloudCacheDownloadSize`). Every reservation belongs to an account —
//! a user of a server, or the command — which holds at most its share
//! (`maxCloudCachePerUser`), and accounts waiting for room take turns
//! ([`pool`]): no user can hold what the others need, and a request that
//! waits longer than `waitSeconds` fails with "cache full".
//!
//! Bytes live in memory, in buffers taken when a part or chunk needs them
//! and returned to the system once no transfer has wanted them for a while,
//! or in a cache file (`cloudCacheFile`) read and written at offsets, never
//! mapped ([`store`]). [`Upload`] fills parts in any order and sends each as
//! soon as it is complete; [`Download`] reads ahead with ranged GETs. Both
//! stop at their window (backpressure) and give every byte back when
//! dropped, however they end.
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
//! assert_eq!(&down.read_full(0, 5).await?[..], b"hello");
//! drop(down);
//! assert_eq!(cache.metrics().reserved, 0);
//! # Ok(()) }
//! ```

mod aborts;
mod config;
mod download;
mod part_copy;
pub mod pool;
mod save;
pub mod store;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use corral_domain::parts::{DEFAULT_PART_SIZE, PartPlan, StreamingPlan};
use corral_domain::{Error, ObjectKey, ObjectStorage};

pub use config::{CacheConfig, CacheSection, SizeValue, parse_size};
pub use download::Download;
pub use part_copy::PART_COPIES_AT_ONCE;
pub use pool::{Account, AccountUse, CacheMetrics, Reservation};
pub use upload::{Base, Upload, UploadJournal, part_checksum};

use aborts::Aborts;
use pool::PoolInner;
use store::{Backing, CacheFile, Stager, Window};
use upload::Plan;

/// The account of a cache not bound to a user (the command's).
const DEFAULT_ACCOUNT: &str = "";

/// The cache, shared by every transfer of a process. Cheap to clone; a
/// clone bound to an account ([`Self::for_account`]) stages that
/// account's transfers.
#[derive(Clone)]
pub struct TransferCache {
    config: CacheConfig,
    pool: Arc<PoolInner>,
    backing: Backing,
    aborts: Arc<Aborts>,
    account: Arc<Account>,
}

impl std::fmt::Debug for TransferCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferCache")
            .field("config", &self.config)
            .field("account", &self.account.name())
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl TransferCache {
    /// Opens the cache: validates the limits and, in file mode, creates (or
    /// checks) and locks the cache file. Memory is not allocated here.
    pub fn open(config: CacheConfig) -> Result<Self, Error> {
        config.validate()?;
        let backing = match &config.file {
            Some(path) => Backing::File(Arc::new(CacheFile::open(path, config.total)?)),
            None => Backing::Memory,
        };
        let contiguous = matches!(backing, Backing::File(_));
        let pool = PoolInner::new(config.total, config.per_account(), contiguous, config.wait);
        let account = pool.account(DEFAULT_ACCOUNT);
        Ok(Self {
            pool,
            config,
            backing,
            aborts: Arc::default(),
            account,
        })
    }

    /// The same cache, staging the transfers of account `name` (a user):
    /// every clone bound to one name shares that account's share.
    pub fn for_account(&self, name: &str) -> Self {
        Self {
            account: self.pool.account(name),
            ..self.clone()
        }
    }

    /// The account this handle stages for.
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Bytes in use, reserved, high-water mark, transfers waiting.
    pub fn metrics(&self) -> CacheMetrics {
        self.pool.metrics()
    }

    /// What each account holds and waits for, largest first.
    pub fn accounts(&self) -> Vec<AccountUse> {
        self.pool.accounts()
    }

    /// Aborts of dropped uploads still running in the background.
    pub fn aborts_running(&self) -> usize {
        self.aborts.running()
    }

    /// Waits (up to `timeout`) for the aborts of uploads that were dropped
    /// unfinished, e.g. on Ctrl-C: call it before the runtime shuts down, or
    /// an abort may never be sent. Returns how many did not finish in time.
    pub async fn settle(&self, timeout: Duration) -> usize {
        self.aborts.wait(timeout).await
    }

    /// Gives back the spare memory buffers no transfer has wanted for
    /// `idle` (done in the background too); returns their bytes.
    pub fn trim(&self, idle: Duration) -> u64 {
        self.pool.trim(idle)
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
            .min(self.config.per_account())
    }

    /// A raw reservation of at least `min` and at most `max` bytes for this
    /// handle's account (its turn, with the timeout).
    pub async fn reserve(&self, min: u64, max: u64) -> Result<Reservation, Error> {
        self.account.reserve(min, max).await
    }

    fn stager(&self, window: u64) -> Stager {
        Stager {
            backing: self.backing.clone(),
            account: Arc::clone(&self.account),
            window: Window::new(window),
        }
    }

    /// Starts an upload of `size` bytes (or of unknown size) to `key`.
    ///
    /// A known size is checked against the backend's limit before any byte
    /// moves, and sets the part plan. Nothing is reserved until bytes arrive.
    pub async fn upload(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        size: Option<u64>,
    ) -> Result<Upload, Error> {
        let plan = match size {
            Some(size) => {
                storage.capabilities().check_file_size(size)?;
                Plan::Known(PartPlan::for_size(size, self.config.upload)?)
            }
            None => Plan::Streaming(StreamingPlan::new(self.config.upload)?),
        };
        Ok(self.new_upload(storage, key, plan))
    }

    fn new_upload(&self, storage: Arc<dyn ObjectStorage>, key: ObjectKey, plan: Plan) -> Upload {
        let window = self.config.upload.min(self.config.per_account());
        Upload::new(
            storage,
            key,
            plan,
            self.stager(window),
            Arc::clone(&self.aborts),
        )
    }

    /// Copies `from` (`size` bytes, entity tag `etag` when known: a source
    /// that changes during the copy fails it) to `to` on the server, in
    /// parts copied in parallel (UploadPartCopy); no byte passes through the
    /// process and no room of the cache is taken. A failure, or the future
    /// dropped, aborts the upload.
    pub async fn copy_in_parts(
        &self,
        storage: Arc<dyn ObjectStorage>,
        from: &ObjectKey,
        to: &ObjectKey,
        size: u64,
        etag: Option<&str>,
    ) -> Result<corral_domain::port::PutResult, Error> {
        part_copy::copy_in_parts(storage, from, to, size, etag, Arc::clone(&self.aborts)).await
    }

    /// Starts an upload to `key` over the existing object `base` (of
    /// unknown final size): bytes not written keep `base`'s content, copied
    /// on the server where the backend can.
    pub async fn upload_over(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        base: Base,
    ) -> Result<Upload, Error> {
        let plan = Plan::Streaming(StreamingPlan::new(self.config.upload)?);
        Ok(self.new_upload(storage, key, plan).over(base))
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
        Ok(self
            .new_upload(storage, key, Plan::Known(plan))
            .resume(upload, parts))
    }

    /// Continues a stream of unknown size to `key` that was kept after its
    /// writer went away: `parts` (the run 1..=n, each `part_size` bytes) are
    /// stored already, so the file is `n · part_size` bytes long and the next
    /// byte goes to part n + 1. Fails if a part of that size no longer fits
    /// the transfer's window (the cache was made smaller): the caller then
    /// starts over.
    pub async fn continue_upload(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        part_size: u64,
        upload: corral_domain::port::UploadId,
        parts: Vec<corral_domain::port::CompletedPart>,
    ) -> Result<Upload, Error> {
        let window = self.config.upload.min(self.config.per_account());
        if part_size > window {
            return Err(Error::invalid_input(format!(
                "its parts of {} are larger than the upload cache of a transfer ({})",
                corral_domain::parts::human(part_size),
                corral_domain::parts::human(window)
            )));
        }
        let plan = Plan::Streaming(StreamingPlan::with_part_size(part_size)?);
        let stored = part_size * parts.len() as u64;
        Ok(self
            .new_upload(storage, key, plan)
            .resume(upload, parts)
            .stored(stored))
    }

    /// Starts a download of `key`, reading ahead in chunks of up to 8 MiB
    /// (at most half the per-download window).
    pub async fn download(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
    ) -> Result<Download, Error> {
        let meta = storage.head(&key).await?;
        Ok(self.download_of(storage, key, meta))
    }

    /// A download of `key`, whose metadata the caller has.
    pub fn download_of(
        &self,
        storage: Arc<dyn ObjectStorage>,
        key: ObjectKey,
        meta: corral_domain::port::ObjectMeta,
    ) -> Download {
        let window = self.config.download.min(self.config.per_account());
        Download::new(
            storage,
            key,
            meta,
            self.download_chunk(),
            self.stager(window),
        )
    }

    /// The size of a download's chunks: two fit the window, one the reader
    /// still holds while the next one comes.
    pub(crate) fn download_chunk(&self) -> u64 {
        let window = self.config.download.min(self.config.per_account());
        DEFAULT_PART_SIZE.min(window / 2).max(64 << 10)
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
