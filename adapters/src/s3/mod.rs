//! [`S3Backend`]: an S3 bucket (AWS or any S3-compatible server).
//!
//! Object operations go through `object_store`'s `AmazonS3` ([`Objects`]);
//! what it lacks or would get wrong goes through corral's own signed
//! requests, split by concern:
//!
//! | module | what |
//! |---|---|
//! | [`options`] | every sandbox setting mapped onto the HTTP client and `AmazonS3` |
//! | [`signed`] | signing and sending corral's own requests; a HEAD that asks for checksums |
//! | [`listing`] | ListObjectsV2 with raw keys |
//! | [`uploads`] | pending multipart uploads and the lifecycle rule that aborts them |
//! | [`checksums`] | what an answer vouches for about an object's content |
//!
//! `object_store` does not retry a CreateMultipartUpload whose answer was
//! cut, nor recognise a CompleteMultipartUpload that succeeded though its
//! answer was lost: this backend does both.

mod checksums;
mod listing;
mod options;
mod signed;
mod uploads;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use corral_domain::config::S3Spec;
use corral_domain::port::{
    ByteRange, CompletedPart, GetResult, ListOptions, ListStream, ObjectMeta, PendingUpload,
    PutMode, PutResult, UploadId,
};
use corral_domain::retry::Backoff;
use corral_domain::{Capabilities, Error, ErrorKind, ObjectKey, ObjectStorage, Result};
use object_store::client::HttpConnector;
use object_store::client::ReqwestConnector;

use crate::errors::{Context, chain_text};
use crate::objects::{Objects, check_prefix, same_etag};
use crate::retry::retry;
use signed::Signed;

/// An S3 bucket: objects through `object_store`'s `AmazonS3`; listings with
/// raw keys, pending uploads and HEADs that ask for checksums through
/// corral's own signed requests.
pub struct S3Backend {
    objects: Objects,
    signed: Signed,
    caps: Capabilities,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("endpoint", &self.objects.ctx.endpoint)
            .field("bucket", &self.objects.ctx.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// The backend for `spec` (one per bucket and connection settings).
    pub fn new(spec: &S3Spec, caps: Capabilities) -> Result<Self> {
        let endpoint = options::endpoint_url(spec);
        let ctx = Context {
            backend: "S3",
            endpoint: Some(endpoint.clone()),
            bucket: Some(spec.bucket_name.clone()),
            region: Some(spec.region.clone()),
            proxy: options::proxy_urls(spec).map(|(_, shown)| shown),
        };
        if !spec.verify_ssl {
            tracing::warn!(
                bucket = %spec.bucket_name,
                endpoint = %endpoint,
                "verifySSL is false: TLS certificates are not verified for this sandbox"
            );
        }
        let client = options::client_options(spec)?;
        let s3 = Arc::new(options::amazon_s3(spec, &client)?);
        let http = ReqwestConnector::default()
            .connect(&client)
            .map_err(|e| options::config_err(format!("HTTP client: {}", chain_text(&e))))?;
        let signed = Signed {
            http,
            bucket_url: options::bucket_url(spec),
            region: spec.region.clone(),
            credentials: Arc::clone(s3.credentials()),
            max_retries: spec.transport.max_retries,
            etag_is_md5: spec.quirks.etag_is_md5,
            ctx: ctx.clone(),
        };
        Ok(Self {
            objects: Objects {
                store: Arc::clone(&s3) as _,
                multipart: s3,
                ctx,
            },
            signed,
            caps,
        })
    }

    /// Overrides declared capabilities (per-endpoint quirks from configuration).
    #[must_use]
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }
}

impl S3Backend {
    /// After a CreateMultipartUpload that needed a retry: an earlier try
    /// whose answer was lost may have made an upload too. Aborts the pending
    /// uploads of `key` made since `since` but `kept`.
    async fn sweep_lost_creations(&self, key: &ObjectKey, kept: &UploadId, since: SystemTime) {
        if !self.caps.list_pending_uploads {
            return;
        }
        let Ok(pending) = uploads::list_multipart_uploads(&self.signed, key).await else {
            return;
        };
        for u in pending {
            if u.key == *key && u.upload_id != *kept && u.initiated.is_none_or(|t| t >= since) {
                match self.objects.abort_multipart(key, &u.upload_id).await {
                    Ok(()) => {
                        tracing::info!(key = %key, upload = %u.upload_id, "aborted an upload whose creation answer was lost")
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, upload = %u.upload_id, error = %e, "could not abort an orphaned upload")
                    }
                }
            }
        }
    }
}

#[async_trait]
impl ObjectStorage for S3Backend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        if let Some(meta) = self.signed.head_object(key).await? {
            return Ok(meta);
        }
        self.objects.head(key).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult> {
        self.objects.get(key, range).await
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        self.objects.put(key, data, mode).await
    }

    async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<Vec<(ObjectKey, Error)>> {
        self.objects.delete_many(keys).await
    }

    fn list(&self, prefix: &ObjectKey, options: ListOptions) -> ListStream {
        if let Err(e) = check_prefix(prefix) {
            return Box::pin(futures::stream::once(async { Err(e) }));
        }
        listing::list(&self.signed, prefix.clone(), options)
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        self.objects.copy(from, to).await
    }

    async fn create_multipart(&self, key: &ObjectKey) -> Result<UploadId> {
        // object_store does not retry a CreateMultipartUpload whose answer is
        // cut short; two more tries here. An upload created by a try whose
        // answer was lost is swept by the caller (see the upload's end).
        let backoff = Backoff {
            retries: 2,
            first: Duration::from_millis(200),
            factor: 2,
            max: Duration::from_millis(400),
        };
        let since = SystemTime::now() - Duration::from_secs(2);
        let tries = AtomicU32::new(0);
        let id = retry(
            backoff,
            "creating the multipart upload",
            Error::is_temporary,
            || {
                tries.fetch_add(1, Ordering::Relaxed);
                self.objects.create_multipart(key)
            },
        )
        .await?;
        if tries.load(Ordering::Relaxed) > 1 {
            self.sweep_lost_creations(key, &id, since).await;
        }
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        data: Bytes,
    ) -> Result<CompletedPart> {
        self.objects.upload_part(key, upload, number, data).await
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: Vec<CompletedPart>,
    ) -> Result<PutResult> {
        let ids = Objects::part_ids(key, parts)?;
        let expected = checksums::multipart_etag(ids.iter().map(|p| p.content_id.as_str()));
        let mut again = true;
        loop {
            let e = match self
                .objects
                .complete_multipart(key, upload, ids.clone())
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            // The answer may have been lost after the server completed the
            // upload (a retry then finds no such upload): the object tells.
            if !(e.is_temporary() || e.kind() == ErrorKind::NotFound) || !again {
                return Err(e);
            }
            if let (Some(want), Ok(meta)) = (&expected, self.head(key).await)
                && meta.etag.as_deref().is_some_and(|got| same_etag(got, want))
            {
                tracing::info!(key = %key, "the answer to CompleteMultipartUpload was lost; the object is complete");
                return Ok(PutResult { etag: meta.etag });
            }
            if e.kind() == ErrorKind::NotFound {
                return Err(e);
            }
            again = false; // one more try of our own, then the caller aborts
        }
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload: &UploadId) -> Result<()> {
        self.objects.abort_multipart(key, upload).await
    }

    async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<()> {
        uploads::set_upload_expiry(&self.signed, days, replace).await
    }

    async fn list_pending_uploads(&self, prefix: &ObjectKey) -> Result<Vec<PendingUpload>> {
        if !self.caps.list_pending_uploads {
            return Err(Error::unsupported(format!(
                "the {} backend cannot list pending multipart uploads",
                self.caps.name
            ))
            .with_operation(corral_domain::Operation::ListMultipart));
        }
        uploads::list_multipart_uploads(&self.signed, prefix).await
    }
}
