//! A test double next to the real backends: the Memory backend, counting
//! open multipart uploads and slowing parts down.
#![allow(dead_code, unreachable_pub)]

pub mod counted;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use corral_adapters::ObjectStoreBackend;
use corral_domain::port::{
    ByteRange, CompletedPart, ContentChecksum, GetResult, ListOptions, ListStream, ObjectMeta,
    PutMode, PutResult, UploadId,
};
use corral_domain::{Capabilities, Error, ObjectKey, ObjectStorage, Result};

/// The Memory backend, counting open multipart uploads and slowing parts
/// down a little; it can also vouch for a wrong checksum in its HEADs.
#[derive(Debug)]
pub struct Counting {
    pub inner: ObjectStoreBackend,
    pub open_uploads: AtomicI64,
    pub parts: AtomicU64,
    pub part_delay: Duration,
    pub wrong_checksum: AtomicBool,
    /// GETs asked for.
    pub gets: AtomicU64,
}

impl Counting {
    pub fn new(part_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: ObjectStoreBackend::memory(Default::default()),
            open_uploads: AtomicI64::new(0),
            parts: AtomicU64::new(0),
            part_delay,
            wrong_checksum: AtomicBool::new(false),
            gets: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl ObjectStorage for Counting {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let mut meta = self.inner.head(key).await?;
        if self.wrong_checksum.load(Ordering::SeqCst) {
            meta.checksum = Some(ContentChecksum::Md5([0; 16]));
        }
        Ok(meta)
    }
    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key, range).await
    }
    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        self.inner.put(key, data, mode).await
    }
    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        self.inner.delete_many(keys).await
    }
    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        self.inner.list(prefix, options)
    }
    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.inner.copy(from, to).await
    }
    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        let id = self.inner.create_multipart(key).await?;
        self.open_uploads.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }
    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        tokio::time::sleep(self.part_delay).await;
        self.parts.fetch_add(1, Ordering::SeqCst);
        self.inner.upload_part(key, upload, number, data).await
    }
    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        let r = self.inner.complete_multipart(key, upload, parts).await?;
        self.open_uploads.fetch_sub(1, Ordering::SeqCst);
        Ok(r)
    }
    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.inner.abort_multipart(key, upload).await?;
        self.open_uploads.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for every seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The backend of user `user`'s root mount in `mappings` (JSON), opened
/// directly, as a raw client of the bucket: to plant objects and to check.
pub fn raw_backend(mappings: &str, user: &str) -> Arc<dyn ObjectStorage> {
    let mappings: corral_domain::Mappings = serde_json::from_str(mappings).expect("mappings");
    let view = mappings
        .resolve(&corral_domain::Identity::user(user))
        .expect("view");
    corral_adapters::Backends::new()
        .open(&view.mounts()[0].spec)
        .expect("backend")
        .storage
}
