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
    PutMode, PutOptions, PutResult, StoredPart, UploadId,
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
        if !corral_domain::config::bucket_name_is_dns_compatible(&spec.bucket_name) {
            tracing::info!(
                bucket = %spec.bucket_name,
                "a legacy bucket name (capitals, `_` or over 63 characters): requests name it in the path"
            );
        }
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
        // A whole object: its checksum comes with it (no HEAD needed).
        if range.is_none()
            && let Some(r) = self.signed.get_object(key).await?
        {
            return Ok(r);
        }
        self.objects.get(key, range).await
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutResult> {
        self.objects.put(key, data, mode).await
    }

    async fn put_if_match(&self, key: &ObjectKey, data: Bytes, etag: &str) -> Result<PutResult> {
        self.objects.put_if_match(key, data, etag).await
    }

    async fn put_with(
        &self,
        key: &ObjectKey,
        data: Bytes,
        options: PutOptions,
    ) -> Result<PutResult> {
        let meta = options.modified.map(|t| ("mtime", signed::format_mtime(t)));
        self.objects.put_meta(key, data, options.mode, meta).await
    }

    async fn set_modified(&self, key: &ObjectKey, modified: SystemTime) -> Result<()> {
        // S3 changes metadata only by a copy of the object onto itself,
        // which CopyObject does up to 5 GiB.
        let meta = self.head(key).await?;
        if meta.size > corral_domain::parts::MAX_COPY_OBJECT_SIZE {
            return Err(Error::unsupported(
                "S3 cannot change the time of an object over 5 GiB without copying it",
            )
            .with_key(key.as_str().to_owned()));
        }
        let mut headers = vec![
            ("x-amz-copy-source", self.signed.copy_source(key)),
            ("x-amz-metadata-directive", "REPLACE".to_owned()),
            ("x-amz-meta-mtime", signed::format_mtime(modified)),
        ];
        if let Some(etag) = &meta.etag {
            // Not over a version that replaced it meanwhile.
            headers.push(("x-amz-copy-source-if-match", etag.clone()));
        }
        self.signed
            .send_object(
                http::Method::PUT,
                key,
                &[],
                &headers,
                corral_domain::Operation::Copy,
            )
            .await?;
        Ok(())
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
            // An earlier try whose answer was lost may have made an upload too.
            crate::retry::sweep_orphans(self, key, since, Some(&id)).await;
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

    async fn upload_part_copy(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        number: u32,
        source: &ObjectKey,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> Result<CompletedPart> {
        if range.start >= range.end {
            return Err(Error::invalid_input("an empty range cannot be a part"));
        }
        let part = number.to_string();
        let mut headers = vec![
            ("x-amz-copy-source", self.signed.copy_source(source)),
            (
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            ),
        ];
        if let Some(etag) = if_match {
            headers.push(("x-amz-copy-source-if-match", etag.to_owned()));
        }
        let (_, body) = self
            .signed
            .send_object(
                http::Method::PUT,
                key,
                &[("partNumber", &part), ("uploadId", &upload.0)],
                &headers,
                corral_domain::Operation::UploadPart,
            )
            .await
            .map_err(|e| {
                // The source changed since the upload began.
                if e.kind() == ErrorKind::Conflict || e.message().contains("PreconditionFailed") {
                    Error::new(
                        ErrorKind::Conflict,
                        "the file was replaced while it was open for writing; write it again",
                    )
                    .with_key(key.as_str().to_owned())
                } else {
                    e
                }
            })?;
        let etag = checksums::copy_part_id(&body).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidResponse,
                format!(
                    "the answer to UploadPartCopy holds no ETag: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            )
            .with_operation(corral_domain::Operation::UploadPart)
        })?;
        Ok(CompletedPart { number, etag })
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

    async fn list_parts(&self, key: &ObjectKey, upload: &UploadId) -> Result<Vec<StoredPart>> {
        uploads::list_parts(&self.signed, key, upload)
            .await
            .map_err(|e| e.with_key(key.as_str().to_owned()))
    }
}
