//! The S3 backend: every sandbox setting mapped onto `object_store`'s
//! `AmazonS3`, plus corral's own signed requests where `object_store` has no
//! API or would break a sandbox rule (ListObjectsV2 with raw keys,
//! ListMultipartUploads).
//!
//! Both share one configuration ([`client_options`]): the same endpoint,
//! proxy, trust store, timeouts and credentials. Raw requests are signed
//! with `object_store`'s public SigV4 signer ([`AwsAuthorizer`]) and sent
//! through an HTTP client built from the same `ClientOptions`, so a proxy or
//! CA setting can never apply to one kind of request and not the other.
//!
//! Credentials: `accessKeyId`/`secretKey`/`sessionToken` when configured;
//! otherwise, in `object_store`'s order, `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, then web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), then container
//! credentials (`AWS_CONTAINER_CREDENTIALS_*`), then the instance metadata
//! service. Only credential variables are read from the environment: the
//! endpoint, region and bucket always come from the sandbox's settings.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use corral_domain::config::{S3Spec, Scheme};
use corral_domain::port::{
    ContentChecksum, ListItem, ListOptions, ListStream, ObjectMeta, PendingUpload, UploadId,
    etag_md5,
};
use corral_domain::{Capabilities, Error, ErrorKind, ObjectKey, Operation, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::backend::{Flavor, ObjectStoreBackend};
use crate::errors::{Context, chain_text, classify};
use crate::tls::CaBundle;

/// RFC 3986 unreserved characters stay; everything else is encoded (as SigV4 wants).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The same, keeping `/`: an object's path in a URL.
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// Credential-related environment variables, the only ones read when no keys are configured.
const CREDENTIAL_ENV: [&str; 11] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
];

fn config_err(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).with_operation(Operation::Configure)
}

/// Whether each request's signature covers the SHA-256 of its body. Over
/// https with the CRC-64/NVME checksum it does not (`UNSIGNED-PAYLOAD`, as
/// the AWS SDKs do): TLS protects the body on the way, the server checks
/// the CRC, and hashing every byte with SHA-256 as well costs the client
/// CPU. Over plain http the signature is the only guard against a body
/// changed on the way; with the SHA-256 checksum the hash is computed
/// anyway. `signPayload` overrides the choice.
pub(crate) fn signs_payload(spec: &S3Spec) -> bool {
    if let Some(sign) = spec.sign_payload {
        return sign;
    }
    !(endpoint_url(spec).starts_with("https://")
        && spec.checksum == corral_domain::config::UploadChecksum::Crc64Nvme)
}

/// The endpoint requests go to, without a trailing `/` (no credentials are ever in it).
pub(crate) fn endpoint_url(spec: &S3Spec) -> String {
    match &spec.endpoint {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => format!("https://s3.{}.amazonaws.com", spec.region),
    }
}

/// Whether requests name the bucket in the path (S3-compatible servers) or the host (AWS).
fn path_style(spec: &S3Spec) -> bool {
    spec.endpoint.is_some() || spec.bucket_name.contains('.')
}

/// The proxy URL with percent-encoded credentials, and the same without them (for messages).
pub(crate) fn proxy_urls(spec: &S3Spec) -> Option<(String, String)> {
    let p = spec.proxy.as_ref()?;
    let host_port = format!("{}:{}", p.host, p.port);
    let shown = format!("{}://{host_port}", p.scheme);
    let userinfo = match (&p.user_name, &p.password) {
        (Some(u), Some(pw)) => format!(
            "{}:{}@",
            utf8_percent_encode(u, STRICT),
            utf8_percent_encode(pw.expose(), STRICT)
        ),
        (Some(u), None) => format!("{}@", utf8_percent_encode(u, STRICT)),
        _ => String::new(),
    };
    Some((format!("{}://{userinfo}{host_port}", p.scheme), shown))
}

/// The HTTP settings shared by `AmazonS3` and corral's own requests.
pub(crate) fn client_options(spec: &S3Spec) -> Result<ClientOptions> {
    let mut opts = ClientOptions::new()
        .with_allow_http(spec.scheme == Scheme::Http)
        .with_timeout(spec.transport.request_timeout)
        .with_connect_timeout(spec.transport.connect_timeout);
    let cas = CaBundle::load(spec.ca_file.as_deref(), spec.ca_path.as_deref())?;
    if let Some(cas) = &cas {
        for cert in cas.certificates()? {
            opts = opts.with_root_certificate(cert);
        }
        opts = opts.with_no_system_certificates(true);
    }
    if let Some((url, _)) = proxy_urls(spec) {
        opts = opts.with_proxy_url(url);
        if let (Some(cas), Some(p)) = (&cas, &spec.proxy)
            && p.scheme == Scheme::Https
        {
            opts = opts.with_proxy_ca_certificate(cas.pem_text());
        }
    }
    if !spec.verify_ssl {
        opts = opts.with_allow_invalid_certificates(true);
    }
    Ok(opts)
}

fn retry_config(spec: &S3Spec) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: spec.transport.max_retries as usize,
        retry_timeout: Duration::from_secs(180).max(spec.transport.request_timeout),
    }
}

/// Builds the S3 backend for `spec` (one per bucket and connection settings).
pub(crate) fn build(spec: &S3Spec, caps: Capabilities) -> Result<ObjectStoreBackend> {
    let endpoint = endpoint_url(spec);
    let ctx = Context {
        backend: "S3",
        endpoint: Some(endpoint.clone()),
        bucket: Some(spec.bucket_name.clone()),
        region: Some(spec.region.clone()),
        proxy: proxy_urls(spec).map(|(_, shown)| shown),
    };
    if !spec.verify_ssl {
        tracing::warn!(
            bucket = %spec.bucket_name,
            endpoint = %endpoint,
            "verifySSL is false: TLS certificates are not verified for this sandbox"
        );
    }
    let options = client_options(spec)?;
    let mut builder = AmazonS3Builder::new();
    match &spec.credentials {
        Some(c) => {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(c.secret_key.expose());
            if let Some(t) = &c.session_token {
                builder = builder.with_token(t.expose());
            }
        }
        None => {
            for name in CREDENTIAL_ENV {
                if let (Ok(value), Ok(key)) = (
                    std::env::var(name),
                    name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>(),
                ) {
                    builder = builder.with_config(key, value);
                }
            }
        }
    }
    // with_client_options replaces earlier client settings: it goes first.
    builder = builder
        .with_client_options(options.clone())
        .with_bucket_name(&spec.bucket_name)
        .with_region(&spec.region)
        .with_virtual_hosted_style_request(!path_style(spec))
        .with_retry(retry_config(spec))
        .with_disable_tagging(true);
    builder = builder.with_unsigned_payload(!signs_payload(spec));
    match spec.checksum {
        corral_domain::config::UploadChecksum::None => {}
        corral_domain::config::UploadChecksum::Sha256 => {
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        corral_domain::config::UploadChecksum::Crc64Nvme => {
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::CRC64NVME);
        }
    }
    if spec.endpoint.is_some() {
        builder = builder.with_endpoint(&endpoint);
    }
    let s3 = Arc::new(builder.build().map_err(|e| {
        config_err(format!(
            "S3 sandbox for bucket {:?}: {}",
            spec.bucket_name,
            chain_text(&e)
        ))
    })?);
    let http = ReqwestConnector::default()
        .connect(&options)
        .map_err(|e| config_err(format!("HTTP client: {}", chain_text(&e))))?;
    let bucket_url = if path_style(spec) {
        format!(
            "{endpoint}/{}",
            utf8_percent_encode(&spec.bucket_name, STRICT)
        )
    } else {
        format!(
            "https://{}.s3.{}.amazonaws.com",
            spec.bucket_name, spec.region
        )
    };
    let raw = RawS3 {
        http,
        bucket_url,
        region: spec.region.clone(),
        credentials: s3.credentials().clone(),
        max_retries: spec.transport.max_retries,
        etag_is_md5: spec.quirks.etag_is_md5,
        ctx: ctx.clone(),
    };
    Ok(ObjectStoreBackend::new(
        s3.clone(),
        Flavor::S3 { multipart: s3, raw },
        caps,
        ctx,
    ))
}

/// corral's own signed S3 requests.
#[derive(Clone)]
pub(crate) struct RawS3 {
    http: HttpClient,
    bucket_url: String,
    region: String,
    credentials: AwsCredentialProvider,
    max_retries: u32,
    /// Whether single-part ETags are MD5s (the `etagIsMd5` quirk).
    etag_is_md5: bool,
    ctx: Context,
}

/// One page of ListObjectsV2, with raw keys.
#[derive(Debug, Default)]
struct ListPage {
    items: Vec<ListItem>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    #[serde(default)]
    size: u64,
    last_modified: Option<String>,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(s?).ok()?;
    Some(SystemTime::from(t))
}

/// The checksum of an object's whole content that a HEAD's `header`s vouch
/// for: a CRC-64/NVME of the full object (so said, or of an object stored
/// in one part), else an ETag that is a plain MD5 — unless the object is
/// encrypted with SSE-KMS or SSE-C (whose ETags are not MD5s) or the server
/// is declared not to keep MD5 ETags.
fn content_checksum<'h>(
    header: &impl Fn(&str) -> Option<&'h str>,
    etag: Option<&str>,
    etag_is_md5: bool,
) -> Option<ContentChecksum> {
    use base64::Engine;
    let single_part = etag.is_some_and(|e| !e.contains('-'));
    let full_object = header("x-amz-checksum-type").map_or(single_part, |t| t == "FULL_OBJECT");
    let crc = header("x-amz-checksum-crc64nvme")
        .filter(|_| full_object)
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    if let Some(crc) = crc {
        return Some(ContentChecksum::Crc64Nvme(crc));
    }
    let plain = header("x-amz-server-side-encryption").is_none_or(|v| v == "AES256")
        && header("x-amz-server-side-encryption-customer-algorithm").is_none();
    etag.filter(|_| etag_is_md5 && plain)
        .and_then(etag_md5)
        .map(ContentChecksum::Md5)
}

/// The ETag S3 gives a multipart upload of these parts (their ids as
/// object_store keeps them: the part's ETag, or an XML record holding it
/// and its checksum): the MD5 of the parts' MD5s, then `-<parts>`. `None`
/// if a part's ETag is not an MD5.
pub(crate) fn multipart_etag<'a>(part_ids: impl Iterator<Item = &'a str>) -> Option<String> {
    use md5::Digest;
    let mut digest = md5::Md5::new();
    let mut parts = 0usize;
    /// How object_store records a part when it sends checksums.
    #[derive(Deserialize)]
    struct PartMetadata {
        e_tag: String,
    }
    for id in part_ids {
        let etag = quick_xml::de::from_str::<PartMetadata>(id)
            .map(|m| m.e_tag)
            .unwrap_or_else(|_| id.to_owned());
        digest.update(etag_md5(&etag)?);
        parts += 1;
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (parts > 0).then(|| format!("\"{hex}-{parts}\""))
}

/// A ListObjectsV2 answer, parsed: its objects and prefixes in key order,
/// and the token of the next page. Keys are taken as the XML spells them
/// (the domain decides what may be shown); an answer that cannot be used
/// is an error, never a panic.
fn parse_list_page(body: &[u8]) -> Result<ListPage> {
    let result: ListBucketResult = quick_xml::de::from_reader(body)
        .map_err(|e| invalid_response(format!("the ListObjectsV2 answer is not valid XML: {e}")))?;
    if result.encoding_type.is_some() {
        return Err(invalid_response(
            "the server url-encoded keys it was not asked to encode".to_owned(),
        ));
    }
    let mut items = Vec::with_capacity(result.contents.len() + result.common_prefixes.len());
    for c in result.contents {
        items.push(ListItem::Object(ObjectMeta {
            key: ObjectKey::from_raw(c.key),
            size: c.size,
            last_modified: parse_time(c.last_modified.as_deref()),
            etag: c.e_tag,
            checksum: None,
        }));
    }
    for p in result.common_prefixes {
        items.push(ListItem::Prefix(ObjectKey::from_raw(p.prefix)));
    }
    items.sort_by(|a, b| a.key().cmp(b.key()));
    let next = match (result.is_truncated, result.next_continuation_token) {
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => {
            return Err(invalid_response(
                "the listing is truncated but the server gave no continuation token".to_owned(),
            ));
        }
        (false, _) => None,
    };
    Ok(ListPage { items, next })
}

/// The pause before retry `attempt` (1-based): 200 ms, doubling, at most 6.4 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(attempt.min(6)))
}

fn invalid_response(message: String) -> Error {
    Error::new(ErrorKind::InvalidResponse, message)
}

impl RawS3 {
    /// Sends a signed request to the bucket with `query`, retrying temporary failures.
    async fn send(
        &self,
        method: http::Method,
        query: &[(&str, &str)],
        op: Operation,
    ) -> Result<Bytes> {
        self.send_body(method, query, Bytes::new(), op).await
    }

    /// Sends a signed request with a body (with its Content-MD5, which some
    /// bucket configuration calls require).
    async fn send_body(
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
        let mut attempt = 0u32;
        loop {
            let result = self.send_once(&method, &url, body.clone()).await;
            match result {
                Err(e) if e.is_temporary() && attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "retrying {op}");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other.map_err(|e| e.with_operation(op)),
            }
        }
    }

    /// A HEAD of `key` that also tells which checksum of the whole content
    /// the server vouches for, which object_store's does not (it neither
    /// asks for checksums nor shows the encryption headers). `Ok(None)` when
    /// the answer is neither 200 nor 404, or the request failed: the caller
    /// then asks object_store, whose errors are retried and classified.
    pub(crate) async fn head_object(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let Ok(credential) = self.credentials.get_credential().await else {
            return Ok(None);
        };
        let url = format!(
            "{}/{}",
            self.bucket_url,
            utf8_percent_encode(key.as_str(), PATH)
        );
        let Ok(mut request) = http::Request::builder()
            .method(http::Method::HEAD)
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
            200 => {}
            404 => {
                return Err(Error::not_found("no such object")
                    .with_operation(Operation::Head)
                    .with_path(key.as_str().to_owned()));
            }
            status => {
                tracing::debug!(status, key = %key, "HEAD not answered 200 or 404: asking object_store");
                return Ok(None);
            }
        }
        let headers = response.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(size) = header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
            return Ok(None);
        };
        let etag = header("etag").map(str::to_owned);
        Ok(Some(ObjectMeta {
            key: key.clone(),
            size,
            last_modified: header("last-modified")
                .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
                .map(SystemTime::from),
            checksum: content_checksum(&header, etag.as_deref(), self.etag_is_md5),
            etag,
        }))
    }

    async fn send_once(&self, method: &http::Method, url: &str, body: Bytes) -> Result<Bytes> {
        let credential = self.credentials.get_credential().await.map_err(|e| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!("no S3 credentials: {}", chain_text(&e)),
            )
        })?;
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
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
            return Ok(body);
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

    /// Fetches a listing page again while its answer is unusable (not XML,
    /// or truncated without a way to go on): a glitch that a second request
    /// usually clears. A server that keeps answering so is refused.
    async fn page_with_retries<T, F, Fut>(&self, mut fetch: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0u32;
        loop {
            match fetch().await {
                Err(e) if e.kind() == ErrorKind::InvalidResponse && attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "fetching the listing page again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        options: &ListOptions,
        token: Option<&str>,
    ) -> Result<ListPage> {
        self.page_with_retries(|| self.list_page_once(prefix, options, token))
            .await
    }

    async fn list_page_once(
        &self,
        prefix: &str,
        options: &ListOptions,
        token: Option<&str>,
    ) -> Result<ListPage> {
        // No `encoding-type=url`: s3s-fs echoes it without encoding keys, so a
        // decoded key could name another object. Raw XML keys are exact; a key
        // with a control character arrives as is and the domain hides it.
        let mut query = vec![("list-type", "2"), ("prefix", prefix)];
        if options.delimiter {
            query.push(("delimiter", "/"));
        }
        if let Some(t) = token {
            query.push(("continuation-token", t));
        } else if let Some(after) = &options.start_after {
            query.push(("start-after", after.as_str()));
        }
        let body = self
            .send(http::Method::GET, &query, Operation::List)
            .await?;
        parse_list_page(&body)
    }

    /// A lazily paginated listing; a repeated continuation token is an error, not a loop.
    pub(crate) fn list(&self, prefix: ObjectKey, options: ListOptions) -> ListStream {
        struct State {
            raw: RawS3,
            prefix: ObjectKey,
            options: ListOptions,
            token: Option<String>,
            seen: HashSet<String>,
            done: bool,
        }
        let state = State {
            raw: self.clone(),
            prefix,
            options,
            token: None,
            seen: HashSet::new(),
            done: false,
        };
        let pages = futures::stream::try_unfold(state, |mut s| async move {
            if s.done {
                return Ok(None);
            }
            let page = s
                .raw
                .list_page(s.prefix.as_str(), &s.options, s.token.as_deref())
                .await?;
            match page.next {
                Some(t) => {
                    if !s.seen.insert(t.clone()) {
                        return Err(invalid_response(format!(
                            "the server repeated the continuation token {t:?}: the listing would never end"
                        )));
                    }
                    s.token = Some(t);
                }
                None => s.done = true,
            }
            Ok(Some((
                futures::stream::iter(page.items.into_iter().map(Ok)),
                s,
            )))
        });
        Box::pin(pages.try_flatten())
    }

    /// Installs a bucket lifecycle rule that aborts incomplete multipart
    /// uploads `days` after they start. Refuses to replace existing rules
    /// unless `replace`.
    pub(crate) async fn set_upload_expiry(&self, days: u32, replace: bool) -> Result<()> {
        match self
            .send(
                http::Method::GET,
                &[("lifecycle", "")],
                Operation::Configure,
            )
            .await
        {
            Ok(existing) if !replace && String::from_utf8_lossy(&existing).contains("<Rule>") => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the bucket already has lifecycle rules and setting this one would replace them: add the rule with your usual tool, or pass --replace",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                return Err(Error::unsupported(format!(
                    "the server at {} does not support bucket lifecycle rules: abort leftovers with `corral uploads abort --older-than 24h` instead",
                    self.ctx.endpoint.as_deref().unwrap_or("the endpoint")
                )));
            }
            Err(e) => return Err(e),
        }
        let body = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><ID>corral-abort-incomplete-multipart-uploads</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status><AbortIncompleteMultipartUpload><DaysAfterInitiation>{days}</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule></LifecycleConfiguration>"#
        );
        self.send_body(http::Method::PUT, &[("lifecycle", "")], Bytes::from(body), Operation::Configure)
            .await
            .map(|_| ())
            .map_err(|e| {
                if e.kind() == ErrorKind::Unsupported {
                    Error::unsupported(format!(
                        "the server at {} does not support bucket lifecycle rules: abort leftovers with `corral uploads abort --older-than 24h` instead",
                        self.ctx.endpoint.as_deref().unwrap_or("the endpoint")
                    ))
                } else {
                    e
                }
            })
    }

    /// ListMultipartUploads under `prefix`, every page.
    pub(crate) async fn list_multipart_uploads(
        &self,
        prefix: &ObjectKey,
    ) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let mut seen = HashSet::new();
        loop {
            let (uploads, next) = self
                .page_with_retries(|| self.multipart_page(prefix, markers.as_ref()))
                .await?;
            out.extend(uploads);
            match next {
                Some(m) => {
                    if !seen.insert(m.clone()) {
                        return Err(invalid_response(
                            "the server repeated the upload listing markers".to_owned(),
                        ));
                    }
                    markers = Some(m);
                }
                None => return Ok(out),
            }
        }
    }

    /// One page of ListMultipartUploads, and the markers of the next one.
    async fn multipart_page(
        &self,
        prefix: &ObjectKey,
        markers: Option<&(String, String)>,
    ) -> Result<(Vec<PendingUpload>, Option<(String, String)>)> {
        let mut query = vec![("uploads", ""), ("prefix", prefix.as_str())];
        if let Some((k, u)) = markers {
            query.push(("key-marker", k));
            query.push(("upload-id-marker", u));
        }
        let body = self
            .send(http::Method::GET, &query, Operation::ListMultipart)
            .await?;
        let result: ListMultipartUploadsResult = quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| {
                invalid_response(format!(
                    "the ListMultipartUploads answer is not valid XML: {e}"
                ))
            })?;
        if result.encoding_type.is_some() {
            return Err(invalid_response(
                "the server url-encoded keys it was not asked to encode".to_owned(),
            ));
        }
        let uploads = result
            .upload
            .into_iter()
            .map(|u| PendingUpload {
                key: ObjectKey::from_raw(u.key),
                upload_id: UploadId(u.upload_id),
                initiated: parse_time(u.initiated.as_deref()),
            })
            .collect();
        match (
            result.is_truncated,
            result.next_key_marker,
            result.next_upload_id_marker,
        ) {
            (true, Some(k), Some(u)) => Ok((uploads, Some((k, u)))),
            (true, _, _) => Err(invalid_response(
                "the upload listing is truncated but the server gave no markers".to_owned(),
            )),
            (false, _, _) => Ok((uploads, None)),
        }
    }
}

impl std::fmt::Debug for RawS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawS3")
            .field("bucket_url", &self.bucket_url)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> S3Spec {
        let m: corral_domain::Mappings =
            serde_json::from_str(&format!(r#"{{"": {{"": {json}}}}}"#)).unwrap();
        match m.entries().next().unwrap().2 {
            corral_domain::SandboxSpec::S3(s) => (**s).clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn proxy_credentials_are_percent_encoded_and_hidden_in_messages() {
        let s = spec(
            r#"{"type":"S3","bucketName":"bkt","proxyHost":"127.0.0.1","proxyPort":3128,"proxyUserName":"us er","proxyPassword":"p@ss:w/rd"}"#,
        );
        let (url, shown) = proxy_urls(&s).unwrap();
        assert_eq!(url, "http://us%20er:p%40ss%3Aw%2Frd@127.0.0.1:3128");
        assert_eq!(shown, "http://127.0.0.1:3128");
        let u = url::Url::parse(&url).unwrap();
        assert_eq!(
            percent_encoding::percent_decode_str(u.password().unwrap())
                .decode_utf8()
                .unwrap(),
            "p@ss:w/rd"
        );
    }

    #[test]
    fn endpoints() {
        let s = spec(r#"{"type":"S3","bucketName":"bkt","region":"eu-west-3"}"#);
        assert_eq!(endpoint_url(&s), "https://s3.eu-west-3.amazonaws.com");
        assert!(!path_style(&s));
        let s =
            spec(r#"{"type":"S3","bucketName":"bkt","endpointOverride":"http://127.0.0.1:9000"}"#);
        assert_eq!(endpoint_url(&s), "http://127.0.0.1:9000");
        assert!(path_style(&s));
    }

    #[test]
    fn which_checksum_a_head_vouches_for() {
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        let crc = "x1ObT5zM8/g="; // 8 bytes
        let check = |headers: &[(&str, &str)], etag: &str, etag_is_md5: bool| {
            let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            content_checksum(&header, Some(etag), etag_is_md5)
        };
        let crc_value = ContentChecksum::Crc64Nvme(0xc7539b4f9cccf3f8);
        // A full-object CRC wins over the MD5, in one part or many.
        let full = [
            ("x-amz-checksum-crc64nvme", crc),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ];
        assert_eq!(check(&full, md5, true), Some(crc_value));
        assert_eq!(check(&full, "\"abc-3\"", true), Some(crc_value));
        // Without a type, only an object in one part has a full-object CRC.
        let untyped = [("x-amz-checksum-crc64nvme", crc)];
        assert_eq!(check(&untyped, md5, true), Some(crc_value));
        assert_eq!(check(&untyped, "\"abc-3\"", true), None);
        let composite = [
            ("x-amz-checksum-crc64nvme", crc),
            ("x-amz-checksum-type", "COMPOSITE"),
        ];
        assert!(matches!(
            check(&composite, md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        // A CRC that is not 8 bytes is ignored (a server got it wrong).
        let short = [("x-amz-checksum-crc64nvme", "G1nPAg==")];
        assert!(matches!(
            check(&short, md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        // MD5 ETags: not under SSE-KMS or SSE-C, nor when declared otherwise.
        assert!(matches!(
            check(&[], md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        assert!(matches!(
            check(&[("x-amz-server-side-encryption", "AES256")], md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        assert_eq!(
            check(&[("x-amz-server-side-encryption", "aws:kms")], md5, true),
            None
        );
        assert_eq!(
            check(
                &[("x-amz-server-side-encryption-customer-algorithm", "AES256")],
                md5,
                true
            ),
            None
        );
        assert_eq!(check(&[], md5, false), None);
        assert_eq!(check(&[], "\"abc-3\"", true), None);
    }

    #[test]
    fn the_etag_of_a_multipart_upload_is_computed_from_its_parts() {
        // Three parts of 5 MiB of `bytes(range(256))` repeated, as measured on
        // s3s-fs, moto and Garage: "10ccd64f051a319244e160dd762a1604-3".
        use md5::Digest;
        let data: Vec<u8> = (0..=255u8).cycle().take(15 << 20).collect();
        let ids: Vec<String> = data
            .chunks(5 << 20)
            .enumerate()
            .map(|(i, c)| {
                let hex: String = md5::Md5::digest(c).iter().map(|b| format!("{b:02x}")).collect();
                if i == 0 {
                    format!("\"{hex}\"")
                } else {
                    format!("<PartMetadata><e_tag>&quot;{hex}&quot;</e_tag><checksum_crc64nvme>x</checksum_crc64nvme></PartMetadata>")
                }
            })
            .collect();
        assert_eq!(
            multipart_etag(ids.iter().map(String::as_str)).as_deref(),
            Some("\"10ccd64f051a319244e160dd762a1604-3\"")
        );
        assert_eq!(multipart_etag(["\"not-an-md5\""].into_iter()), None);
        assert_eq!(multipart_etag(std::iter::empty()), None);
    }

    #[test]
    fn the_payload_is_signed_unless_tls_and_a_crc_protect_it() {
        let with = |extra: &str| spec(&format!(r#"{{"type":"S3","bucketName":"bkt"{extra}}}"#));
        assert!(!signs_payload(&with("")), "AWS over https with the CRC");
        assert!(!signs_payload(&with(
            r#","endpointOverride":"https://s3.example""#
        )));
        assert!(signs_payload(&with(
            r#","endpointOverride":"http://127.0.0.1:9""#
        )));
        assert!(signs_payload(&with(r#","checksum":"sha256""#)));
        assert!(signs_payload(&with(r#","checksum":"none""#)));
        assert!(signs_payload(&with(r#","signPayload":true"#)));
        assert!(!signs_payload(&with(
            r#","endpointOverride":"http://127.0.0.1:9","signPayload":false"#
        )));
    }

    /// Listing answers come from the server: fuzzed, they never panic, and
    /// keys arrive exactly as the XML spells them.
    mod listing_answers {
        use super::super::parse_list_page;
        use corral_domain::port::ListItem;
        use proptest::prelude::*;

        fn escape(key: &str) -> String {
            key.chars()
                .map(|c| match c {
                    '&' => "&amp;".to_owned(),
                    '<' => "&lt;".to_owned(),
                    '>' => "&gt;".to_owned(),
                    c if (c as u32) < 0x20 => format!("&#x{:x};", c as u32),
                    c => c.to_string(),
                })
                .collect()
        }

        fn page(keys: &[String], prefixes: &[String], token: Option<&str>) -> String {
            let mut xml =
                String::from(r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>"#);
            for k in keys {
                xml.push_str(&format!(
                    "<Contents><Key>{}</Key><Size>1</Size><ETag>\"e\"</ETag></Contents>",
                    escape(k)
                ));
            }
            for p in prefixes {
                xml.push_str(&format!(
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    escape(p)
                ));
            }
            match token {
                Some(t) => xml.push_str(&format!(
                    "<IsTruncated>true</IsTruncated><NextContinuationToken>{}</NextContinuationToken>",
                    escape(t)
                )),
                None => xml.push_str("<IsTruncated>false</IsTruncated>"),
            }
            xml.push_str("</ListBucketResult>");
            xml
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z/. ]{1,12}",
                "[^\\x00]{1,12}",
                Just(" leading and trailing ".to_owned()),
                Just("tab\tand\nnewline\r".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_list_page(&body);
            }

            #[test]
            fn mutated_pages_never_panic(
                keys in prop::collection::vec(key(), 0..4),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                how in 0..3u8,
            ) {
                let mut body = page(&keys, &[], Some("t")).into_bytes();
                let i = at.index(body.len());
                match how {
                    0 => body.truncate(i),
                    1 => body[i] = byte,
                    _ => body.insert(i, byte),
                }
                let _ = parse_list_page(&body);
            }

            #[test]
            fn keys_arrive_exactly_as_spelled(
                keys in prop::collection::vec(key(), 0..5),
                prefixes in prop::collection::vec(key(), 0..3),
                token in prop::option::of("[A-Za-z0-9+/=]{1,16}"),
            ) {
                let parsed = parse_list_page(page(&keys, &prefixes, token.as_deref()).as_bytes())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut objects: Vec<String> = Vec::new();
                let mut dirs: Vec<String> = Vec::new();
                for item in parsed.items {
                    match item {
                        ListItem::Object(m) => objects.push(m.key.as_str().to_owned()),
                        ListItem::Prefix(p) => dirs.push(p.as_str().to_owned()),
                        ListItem::Special(k, _) => {
                            return Err(TestCaseError::fail(format!("S3 reported a special entry {k:?}")));
                        }
                    }
                }
                let (mut want_objects, mut want_dirs) = (keys.clone(), prefixes.clone());
                want_objects.sort();
                want_dirs.sort();
                objects.sort();
                dirs.sort();
                prop_assert_eq!(objects, want_objects);
                prop_assert_eq!(dirs, want_dirs);
                prop_assert_eq!(parsed.next, token);
            }
        }
    }
}
