//! Every S3 sandbox setting mapped onto HTTP client options and an
//! `AmazonS3` store. Both the store and corral's own signed requests
//! ([`super::signed`]) are built from the same [`client_options`]: the same
//! endpoint, proxy, trust store and timeouts, so a proxy or CA setting can
//! never apply to one kind of request and not the other.
//!
//! Credentials: `accessKeyId`/`secretKey`/`sessionToken` when configured;
//! otherwise, in `object_store`'s order, `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, then web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), then container
//! credentials (`AWS_CONTAINER_CREDENTIALS_*`), then the instance metadata
//! service. Only credential variables are read from the environment: the
//! endpoint, region and bucket always come from the sandbox's settings.

use std::time::Duration;

use corral_domain::config::{S3Spec, Scheme, UploadChecksum};
use corral_domain::{Error, ErrorKind, Operation, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::errors::chain_text;
use crate::tls::CaBundle;

/// RFC 3986 unreserved characters stay; everything else is encoded (as SigV4 wants).
pub(super) const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The same, keeping `/`: an object's path in a URL.
pub(super) const PATH: &AsciiSet = &STRICT.remove(b'/');

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

pub(super) fn config_err(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).with_operation(Operation::Configure)
}

/// Whether each request's signature covers the SHA-256 of its body. Over
/// https with the CRC-64/NVME checksum it does not (`UNSIGNED-PAYLOAD`, as
/// the AWS SDKs do): TLS protects the body on the way, the server checks
/// the CRC, and hashing every byte with SHA-256 as well costs the client
/// CPU. Over plain http the signature is the only guard against a body
/// changed on the way; with the SHA-256 checksum the hash is computed
/// anyway. `signPayload` overrides the choice.
pub(super) fn signs_payload(spec: &S3Spec) -> bool {
    if let Some(sign) = spec.sign_payload {
        return sign;
    }
    !(endpoint_url(spec).starts_with("https://") && spec.checksum == UploadChecksum::Crc64Nvme)
}

/// The endpoint requests go to, without a trailing `/` (no credentials are ever in it).
pub(super) fn endpoint_url(spec: &S3Spec) -> String {
    match &spec.endpoint {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => format!("https://s3.{}.amazonaws.com", spec.region),
    }
}

/// Whether requests name the bucket in the path (S3-compatible servers) or the host (AWS).
pub(super) fn path_style(spec: &S3Spec) -> bool {
    spec.endpoint.is_some()
        || spec.bucket_name.contains('.')
        || !corral_domain::config::bucket_name_is_dns_compatible(&spec.bucket_name)
}

/// The proxy URL with percent-encoded credentials, and the same without them (for messages).
pub(super) fn proxy_urls(spec: &S3Spec) -> Option<(String, String)> {
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
pub(super) fn client_options(spec: &S3Spec) -> Result<ClientOptions> {
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

/// The `AmazonS3` store of a sandbox, built from `options` (its [`client_options`]).
pub(super) fn amazon_s3(spec: &S3Spec, options: &ClientOptions) -> Result<AmazonS3> {
    let endpoint = endpoint_url(spec);
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
        UploadChecksum::None => {}
        UploadChecksum::Sha256 => {
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        UploadChecksum::Crc64Nvme => {
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::CRC64NVME);
        }
    }
    if spec.endpoint.is_some() {
        builder = builder.with_endpoint(&endpoint);
    }
    builder.build().map_err(|e| {
        config_err(format!(
            "S3 sandbox for bucket {:?}: {}",
            spec.bucket_name,
            chain_text(&e)
        ))
    })
}

/// The URL of the bucket, path-style or virtual-hosted.
pub(super) fn bucket_url(spec: &S3Spec) -> String {
    if path_style(spec) {
        format!(
            "{}/{}",
            endpoint_url(spec),
            utf8_percent_encode(&spec.bucket_name, STRICT)
        )
    } else {
        format!(
            "https://{}.s3.{}.amazonaws.com",
            spec.bucket_name, spec.region
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::s3) fn spec(json: &str) -> S3Spec {
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
}
