//! corral's own signed S3 requests, for what `object_store` has no API for
//! or would do against a sandbox rule: listings with raw keys, pending
//! uploads, lifecycle rules, and a HEAD that asks for checksums. They are
//! signed with `object_store`'s public SigV4 signer ([`AwsAuthorizer`]) and
//! sent through an HTTP client built from the sandbox's
//! [`super::options::client_options`].

use std::time::SystemTime;

use bytes::Bytes;
use corral_domain::port::{GetResult, ObjectMeta};
use corral_domain::retry::Backoff;
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};
use futures::TryStreamExt;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use percent_encoding::utf8_percent_encode;

use super::checksums::content_checksum;
use super::options::{PATH, STRICT};
use crate::errors::{Context, chain_text, classify};
use crate::retry::retry;

/// The client of corral's own signed requests to one bucket.
#[derive(Clone)]
pub(super) struct Signed {
    pub(super) http: HttpClient,
    pub(super) bucket_url: String,
    pub(super) region: String,
    pub(super) credentials: AwsCredentialProvider,
    pub(super) max_retries: u32,
    /// Whether single-part ETags are MD5s (the `etagIsMd5` quirk).
    pub(super) etag_is_md5: bool,
    pub(super) ctx: Context,
}

pub(super) fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(s?).ok()?;
    Some(SystemTime::from(t))
}

/// rclone's `mtime` metadata: seconds since the epoch, with a fraction.
pub(super) fn parse_mtime(v: &str) -> Option<SystemTime> {
    let secs: f64 = v.trim().parse().ok()?;
    if !(0.0..1e11).contains(&secs) {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs))
}

/// `t` as rclone writes the `mtime` metadata.
pub(super) fn format_mtime(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

pub(super) fn invalid_response(message: String) -> Error {
    Error::new(ErrorKind::InvalidResponse, message)
}

impl Signed {
    /// Sends a signed request to the bucket with `query`, retrying temporary failures.
    pub(super) async fn send(
        &self,
        method: http::Method,
        query: &[(&str, &str)],
        op: Operation,
    ) -> Result<Bytes> {
        self.send_body(method, query, Bytes::new(), op).await
    }

    /// Sends a signed request with a body (with its Content-MD5, which some
    /// bucket configuration calls require).
    pub(super) async fn send_body(
        &self,
        method: http::Method,
        query: &[(&str, &str)],
        body: Bytes,
        op: Operation,
    ) -> Result<Bytes> {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, STRICT),
                    utf8_percent_encode(v, STRICT)
                )
            })
            .collect();
        let url = format!("{}/?{}", self.bucket_url, query.join("&"));
        retry(
            Backoff::requests(self.max_retries),
            op.as_str(),
            Error::is_temporary,
            || self.send_once(&method, &url, body.clone()),
        )
        .await
        .map_err(|e| e.with_operation(op))
    }

    /// A HEAD of `key` that also tells which checksum of the whole content
    /// the server vouches for, which object_store's does not (it neither
    /// asks for checksums nor shows the encryption headers). `Ok(None)` when
    /// the answer is neither 200 nor 404, or the request failed: the caller
    /// then asks object_store, whose errors are retried and classified.
    pub(crate) async fn head_object(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let Some(response) = self
            .object_request(http::Method::HEAD, key, Operation::Head)
            .await?
        else {
            return Ok(None);
        };
        Ok(self.meta_of(key, response.headers()))
    }

    /// A GET of the whole of `key` whose metadata tells the checksum the
    /// server vouches for, as [`Self::head_object`] does: one request where
    /// a HEAD and a GET would be two. `Ok(None)` as there.
    pub(crate) async fn get_object(&self, key: &ObjectKey) -> Result<Option<GetResult>> {
        let Some(response) = self
            .object_request(http::Method::GET, key, Operation::Get)
            .await?
        else {
            return Ok(None);
        };
        let Some(meta) = self.meta_of(key, response.headers()) else {
            return Ok(None);
        };
        let (ctx, k) = (self.ctx.clone(), key.as_str().to_owned());
        let body = response.into_body().bytes_stream().map_err(move |e| {
            let text = chain_text(&e);
            match classify(&e, &text, &ctx) {
                Some(c) => c.into_error(),
                None => Error::new(ErrorKind::Unavailable, format!("reading the body: {text}")),
            }
            .with_operation(Operation::Get)
            .with_key(k.clone())
        });
        Ok(Some(GetResult {
            range: 0..meta.size,
            meta,
            body: Box::pin(body),
        }))
    }

    /// A signed request of `method` on `key` asking for checksums: the
    /// answer if 200, not found if 404, `None` otherwise (see
    /// [`Self::head_object`]).
    async fn object_request(
        &self,
        method: http::Method,
        key: &ObjectKey,
        op: Operation,
    ) -> Result<Option<object_store::client::HttpResponse>> {
        let Ok(credential) = self.credentials.get_credential().await else {
            return Ok(None);
        };
        let url = format!(
            "{}/{}",
            self.bucket_url,
            utf8_percent_encode(key.as_str(), PATH)
        );
        let Ok(mut request) = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("x-amz-checksum-mode", "ENABLED")
            .body(HttpRequestBody::from(Bytes::new()))
        else {
            return Ok(None);
        };
        if AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .is_err()
        {
            return Ok(None);
        }
        let Ok(response) = self.http.execute(request).await else {
            return Ok(None);
        };
        match response.status().as_u16() {
            200 => Ok(Some(response)),
            404 => Err(Error::not_found("no such object")
                .with_operation(op)
                .with_key(key.as_str().to_owned())),
            status => {
                tracing::debug!(status, key = %key, op = op.as_str(), "not answered 200 or 404: asking object_store");
                Ok(None)
            }
        }
    }

    /// What an answer's headers say of object `key`.
    fn meta_of(&self, key: &ObjectKey, headers: &http::HeaderMap) -> Option<ObjectMeta> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let size = header("content-length").and_then(|v| v.parse::<u64>().ok())?;
        let etag = header("etag").map(str::to_owned);
        // A time a client set (rclone's `mtime` metadata) wins over the
        // server's time of the upload.
        let modified = header("x-amz-meta-mtime")
            .and_then(parse_mtime)
            .or_else(|| {
                header("last-modified")
                    .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
                    .map(SystemTime::from)
            });
        Some(ObjectMeta {
            key: key.clone(),
            size,
            last_modified: modified,
            checksum: content_checksum(&header, etag.as_deref(), self.etag_is_md5),
            etag,
        })
    }

    /// Sends a signed request about object `key` with extra `headers`,
    /// retrying temporary failures; returns the answer's headers and body.
    pub(super) async fn send_object(
        &self,
        method: http::Method,
        key: &ObjectKey,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        op: Operation,
    ) -> Result<(http::HeaderMap, Bytes)> {
        let mut url = format!(
            "{}/{}",
            self.bucket_url,
            utf8_percent_encode(key.as_str(), PATH)
        );
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(k, STRICT),
                        utf8_percent_encode(v, STRICT)
                    )
                })
                .collect();
            url = format!("{url}?{}", q.join("&"));
        }
        retry(
            Backoff::requests(self.max_retries),
            op.as_str(),
            Error::is_temporary,
            || self.send_with(&method, &url, headers, Bytes::new()),
        )
        .await
        .map_err(|e| e.with_operation(op).with_key(key.as_str().to_owned()))
    }

    /// The path of `key` as `x-amz-copy-source` names it: `/bucket/key`,
    /// URL-encoded.
    pub(super) fn copy_source(&self, key: &ObjectKey) -> String {
        format!(
            "/{}/{}",
            utf8_percent_encode(self.ctx.bucket.as_deref().unwrap_or_default(), PATH),
            utf8_percent_encode(key.as_str(), PATH)
        )
    }

    async fn send_once(&self, method: &http::Method, url: &str, body: Bytes) -> Result<Bytes> {
        self.send_with(method, url, &[], body).await.map(|(_, b)| b)
    }

    async fn send_with(
        &self,
        method: &http::Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(http::HeaderMap, Bytes)> {
        let credential = self.credentials.get_credential().await.map_err(|e| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!("no S3 credentials: {}", chain_text(&e)),
            )
        })?;
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if !body.is_empty() {
            use base64::Engine;
            use md5::Digest;
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
            builder = builder
                .header("content-md5", md5)
                .header("content-type", "application/xml");
        }
        let mut request: HttpRequest = builder
            .body(HttpRequestBody::from(body))
            .map_err(|e| Error::invalid_input(format!("bad request URL: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| Error::new(ErrorKind::Other, format!("signing failed: {e}")))?;
        let response = self.http.execute(request).await.map_err(|e| {
            let text = chain_text(&e);
            match classify(&e, &text, &self.ctx) {
                Some(c) => c.into_error(),
                None => Error::new(ErrorKind::Unavailable, text),
            }
        })?;
        let status = response.status();
        let answer_headers = response.headers().clone();
        let body = response.into_body().bytes().await.map_err(|e| {
            let text = chain_text(&e);
            match classify(&e, &text, &self.ctx) {
                Some(c) => c.into_error(),
                None => Error::new(
                    ErrorKind::Unavailable,
                    format!("reading the answer: {text}"),
                ),
            }
        })?;
        if status.is_success() {
            return Ok((answer_headers, body));
        }
        let text = format!(
            "status code: {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&body)
        );
        let io = std::io::Error::other(text.clone());
        // 501 Not Implemented will not change by retrying.
        let temporary = matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504);
        Err(match classify(&io, &text, &self.ctx) {
            Some(c) => c.into_error(),
            None => Error::new(ErrorKind::Other, format!("the server answered {status}")),
        }
        .with_temporary(temporary))
    }
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("bucket_url", &self.bucket_url)
            .finish_non_exhaustive()
    }
}
