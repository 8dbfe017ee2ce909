//! The typed sandbox configuration, validated once with errors that name the key.
//!
//! A spec is read as written (a self-describing value per key) and turned into a
//! [`SandboxSpec`] here. Every check lives in this module, so that an
//! adapter receiving a `SandboxSpec` can trust it: the scheme is `http` or
//! `https`, the endpoint is a URL that agrees with the scheme, the proxy port
//! is in range, credentials come in pairs, and so on.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::raw::{RawSpec, RawValue, closest};
use crate::secret::Secret;
use crate::template::PathTemplate;

pub use crate::error::ConfigError;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn parse(key: &str, value: &str) -> Result<Self, ConfigError> {
        match value.to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            _ => Err(ConfigError::key(
                key,
                format!("must be \"http\" or \"https\", not {value:?}"),
            )),
        }
    }

    /// The port a URL of this scheme uses by default.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A File sandbox: a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The directory, possibly with placeholders.
    pub path: PathTemplate,
}

/// A Memory sandbox: a prefix in the process's in-memory store (for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySpec {
    /// The key prefix, possibly with placeholders; empty is the store's root.
    pub path: PathTemplate,
}

/// Static S3 credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// `accessKeyId`.
    pub access_key_id: String,
    /// `secretKey`.
    pub secret_key: Secret,
    /// `sessionToken`, for temporary credentials.
    pub session_token: Option<Secret>,
}

/// The proxy every S3 request goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// `proxyScheme`: `http` (plain connection to the proxy) or `https` (TLS to the proxy).
    pub scheme: Scheme,
    /// `proxyHost`.
    pub host: String,
    /// `proxyPort`; defaults to 80 for `http` and 443 for `https`.
    pub port: u16,
    /// `proxyUserName`, for Basic authentication.
    pub user_name: Option<String>,
    /// `proxyPassword`.
    pub password: Option<Secret>,
}

/// Retry and timeout settings of an S3 sandbox (corral's own options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSpec {
    /// `maxRetries`: retries of a failed request (default 5).
    pub max_retries: u32,
    /// `connectTimeoutSeconds` (default 10 s).
    pub connect_timeout: Duration,
    /// `requestTimeoutSeconds`: one request, including the transfer of one part (default 300 s).
    pub request_timeout: Duration,
}

impl Default for TransportSpec {
    fn default() -> Self {
        Self {
            max_retries: 5,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// An S3 sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    /// `path`: the key prefix, possibly with placeholders; empty is the bucket root.
    pub path: PathTemplate,
    /// `bucketName`: must exist.
    pub bucket_name: String,
    /// `region` (default `us-east-1`).
    pub region: String,
    /// `scheme` (default `https`).
    pub scheme: Scheme,
    /// `endpointOverride`, normalized to a URL with the effective scheme.
    /// `None` means AWS's regional endpoint.
    pub endpoint: Option<Url>,
    /// Static credentials; `None` means the standard AWS sources.
    pub credentials: Option<StaticCredentials>,
    /// The proxy, if `proxyHost` is set.
    pub proxy: Option<ProxySpec>,
    /// `verifySSL` (default `true`).
    pub verify_ssl: bool,
    /// `caPath`: a directory of CA certificates.
    pub ca_path: Option<String>,
    /// `caFile`: a PEM bundle of CA certificates.
    pub ca_file: Option<String>,
    /// Retries and timeouts.
    pub transport: TransportSpec,
    /// What the server is declared to lack (corral's own options), so a
    /// quirky S3-compatible server is described in configuration.
    pub quirks: ServerQuirks,
    /// `checksum`: the checksum sent with every PUT and part for the server
    /// to verify (corral's own option).
    pub checksum: UploadChecksum,
    /// `signPayload`: whether signatures cover the SHA-256 of each body;
    /// `None` (the default) decides by the endpoint and the checksum.
    pub sign_payload: Option<bool>,
}

/// The checksum corral sends with each PUT and part (`x-amz-checksum-*`),
/// which the server verifies before storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadChecksum {
    /// `"none"`: no checksum header.
    None,
    /// `"sha256"`: `x-amz-checksum-sha256`, for servers that lack CRC-64/NVME.
    Sha256,
    /// `"crc64nvme"` (default): `x-amz-checksum-crc64nvme`, computed at memory
    /// speed (SHA-256 halved corral's upload throughput on two cores).
    #[default]
    Crc64Nvme,
}

/// Capabilities an S3-compatible server lacks, declared in configuration:
/// `listMultipartUploads: false` (s3s-fs), `conditionalCreate: false` (a
/// server that ignores `If-None-Match`, such as Garage), `etagIsMd5: false`
/// (a server whose single-part ETags are not the MD5 of the bytes even
/// without SSE-KMS or SSE-C, e.g. one that encrypts or compresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerQuirks {
    /// The server answers ListMultipartUploads (default true).
    pub list_multipart_uploads: bool,
    /// The server enforces create-if-absent (default true).
    pub conditional_create: bool,
    /// A single-part object's ETag is the MD5 of its bytes unless the
    /// server says it is encrypted with SSE-KMS or SSE-C (default true):
    /// full downloads are checked against it.
    pub etag_is_md5: bool,
}

impl Default for ServerQuirks {
    fn default() -> Self {
        Self {
            list_multipart_uploads: true,
            conditional_create: true,
            etag_is_md5: true,
        }
    }
}

/// One sandbox, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxSpec {
    /// A local directory.
    File(FileSpec),
    /// A prefix of an S3 bucket.
    S3(Box<S3Spec>),
    /// A prefix of the in-memory store.
    Memory(MemorySpec),
    /// A prefix of a backend registered by the program that embeds corral.
    Custom(CustomSpec),
}

/// A sandbox on a backend registered in code under a name
/// (`{"type": "Custom", "backend": "NAME", "path": "prefix/%u"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomSpec {
    /// The name the backend was registered under.
    pub backend: String,
    /// The key prefix, possibly with placeholders; empty is the backend's root.
    pub path: PathTemplate,
}

/// The type names accepted in `type`.
pub const SANDBOX_TYPES: [&str; 4] = ["File", "S3", "Memory", "Custom"];

/// Keys accepted for a Custom sandbox.
pub const CUSTOM_KEYS: [&str; 3] = ["type", "backend", "path"];

/// Keys accepted for an S3 sandbox, in documentation order.
pub const S3_KEYS: [&str; 25] = [
    "type",
    "path",
    "accessKeyId",
    "secretKey",
    "sessionToken",
    "bucketName",
    "region",
    "scheme",
    "endpointOverride",
    "proxyScheme",
    "proxyHost",
    "proxyPort",
    "proxyUserName",
    "proxyPassword",
    "verifySSL",
    "caPath",
    "caFile",
    "maxRetries",
    "connectTimeoutSeconds",
    "requestTimeoutSeconds",
    "listMultipartUploads",
    "conditionalCreate",
    "etagIsMd5",
    "checksum",
    "signPayload",
];

/// Keys accepted for a File or Memory sandbox.
pub const PATH_ONLY_KEYS: [&str; 2] = ["type", "path"];

impl SandboxSpec {
    /// The type name as written in `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File(_) => "File",
            Self::S3(_) => "S3",
            Self::Memory(_) => "Memory",
            Self::Custom(_) => "Custom",
        }
    }

    /// The `path` template.
    pub fn path(&self) -> &PathTemplate {
        match self {
            Self::File(f) => &f.path,
            Self::S3(s) => &s.path,
            Self::Memory(m) => &m.path,
            Self::Custom(c) => &c.path,
        }
    }

    pub(crate) fn from_raw(raw: RawSpec) -> Result<Self, ConfigError> {
        match raw {
            RawSpec::Path(path) => Ok(Self::File(FileSpec {
                path: file_path(&path)?,
            })),
            RawSpec::Object(entries) => Self::from_entries(entries),
        }
    }

    fn from_entries(entries: Vec<(String, RawValue)>) -> Result<Self, ConfigError> {
        let mut opts = Options { entries };
        let type_name = match opts.take("type") {
            None => {
                return Err(ConfigError::key(
                    "type",
                    "missing; use \"File\", \"S3\" or \"Memory\"",
                ));
            }
            Some(RawValue::Str(s)) => s,
            Some(other) => {
                return Err(ConfigError::key(
                    "type",
                    format!("must be a string, not {}", other.type_name()),
                ));
            }
        };
        let canonical = SANDBOX_TYPES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(&type_name))
            .ok_or_else(|| {
                ConfigError::key(
                    "type",
                    format!(
                        "unknown sandbox type {type_name:?}; use \"File\", \"S3\", \"Memory\" or \"Custom\""
                    ),
                )
            })?;
        let valid: &[&str] = match *canonical {
            "S3" => &S3_KEYS,
            "Custom" => &CUSTOM_KEYS,
            _ => &PATH_ONLY_KEYS,
        };
        opts.reject_unknown(canonical, valid)?;
        match *canonical {
            "File" => {
                let path = opts.string("path")?.ok_or_else(|| {
                    ConfigError::key("path", "a File sandbox needs the directory")
                })?;
                Ok(Self::File(FileSpec {
                    path: file_path(&path)?,
                }))
            }
            "Memory" => {
                let path = opts.string("path")?.unwrap_or_default();
                Ok(Self::Memory(MemorySpec {
                    path: prefix_template(&path)?,
                }))
            }
            "Custom" => {
                let backend = opts
                    .string("backend")?
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| {
                        ConfigError::key(
                            "backend",
                            "a Custom sandbox needs the name its backend was registered under",
                        )
                    })?;
                let path = opts.string("path")?.unwrap_or_default();
                Ok(Self::Custom(CustomSpec {
                    backend,
                    path: prefix_template(&path)?,
                }))
            }
            _ => Ok(Self::S3(Box::new(s3_from(opts)?))),
        }
    }
}

/// A key-prefix template, checked at load with sample values in its
/// placeholders, so that `a/../b` or a control character is a config error,
/// not a surprise at a user's login.
fn prefix_template(path: &str) -> Result<PathTemplate, ConfigError> {
    let template = PathTemplate::parse("path", path)?;
    let sample = crate::template::Identity::user("u")
        .with_domain("d")
        .with_full_name("f");
    let expanded = template
        .expand(&sample)
        .map_err(|e| ConfigError::key("path", e.to_string()))?;
    crate::key::SandboxRoot::new(&expanded)
        .map_err(|e| ConfigError::key("path", format!("is not a valid key prefix: {e}")))?;
    Ok(template)
}

fn file_path(path: &str) -> Result<PathTemplate, ConfigError> {
    if path.trim().is_empty() {
        return Err(ConfigError::key(
            "path",
            "a File sandbox needs a non-empty directory",
        ));
    }
    // A NUL cannot be passed to the kernel and a control character is a
    // copy-and-paste accident: refuse both now, not at a user's first login.
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(ConfigError::key(
            "path",
            format!(
                "a File sandbox's directory may not hold a control character ({:?} found)",
                c
            ),
        ));
    }
    PathTemplate::parse("path", path)
}

fn s3_from(mut o: Options) -> Result<S3Spec, ConfigError> {
    let path = prefix_template(&o.string("path")?.unwrap_or_default())?;
    let bucket_name = o.string("bucketName")?.unwrap_or_default();
    validate_bucket_name(&bucket_name)?;
    let region = o
        .string("region")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "us-east-1".to_owned());
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ConfigError::key(
            "region",
            format!("{region:?} is not a region name (such as \"us-east-1\")"),
        ));
    }
    let scheme_given = o.string("scheme")?.filter(|s| !s.is_empty());
    let mut scheme = match &scheme_given {
        Some(s) => Scheme::parse("scheme", s)?,
        None => Scheme::Https,
    };
    let endpoint = match o.string("endpointOverride")? {
        None => None,
        Some(e) if e.trim().is_empty() => None,
        Some(e) => {
            let url = parse_endpoint(&e, scheme, scheme_given.is_some())?;
            scheme = Scheme::parse("endpointOverride", url.scheme())?;
            Some(url)
        }
    };

    let access_key_id = o.string("accessKeyId")?.filter(|s| !s.is_empty());
    let secret_key = o
        .string("secretKey")?
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let session_token = o
        .string("sessionToken")?
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let credentials = match (access_key_id, secret_key) {
        (Some(access_key_id), Some(secret_key)) => Some(StaticCredentials {
            access_key_id,
            secret_key,
            session_token,
        }),
        (Some(_), None) => {
            return Err(ConfigError::key(
                "secretKey",
                "missing: `accessKeyId` is set, so `secretKey` must be too",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                "accessKeyId",
                "missing: `secretKey` is set, so `accessKeyId` must be too",
            ));
        }
        (None, None) if session_token.is_some() => {
            return Err(ConfigError::key(
                "sessionToken",
                "a session token needs `accessKeyId` and `secretKey`",
            ));
        }
        (None, None) => None,
    };

    let proxy_scheme_given = o.string("proxyScheme")?.filter(|s| !s.is_empty());
    let proxy_scheme = match &proxy_scheme_given {
        Some(s) => Scheme::parse("proxyScheme", s)?,
        None => Scheme::Http,
    };
    let proxy_host = o.string("proxyHost")?.filter(|s| !s.is_empty());
    let proxy_port = o.integer("proxyPort")?;
    let proxy_user = o.string("proxyUserName")?.filter(|s| !s.is_empty());
    let proxy_password = o
        .string("proxyPassword")?
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    let proxy = match proxy_host {
        Some(host) => {
            validate_proxy_host(&host)?;
            let port = match proxy_port {
                None => proxy_scheme.default_port(),
                Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    ConfigError::key("proxyPort", format!("must be between 1 and 65535, not {p}"))
                })?,
            };
            if proxy_password.is_some() && proxy_user.is_none() {
                return Err(ConfigError::key(
                    "proxyUserName",
                    "missing: `proxyPassword` is set, so `proxyUserName` must be too",
                ));
            }
            Some(ProxySpec {
                scheme: proxy_scheme,
                host,
                port,
                user_name: proxy_user,
                password: proxy_password,
            })
        }
        None => {
            for (key, set) in [
                ("proxyScheme", proxy_scheme_given.is_some()),
                ("proxyPort", proxy_port.is_some()),
                ("proxyUserName", proxy_user.is_some()),
                ("proxyPassword", proxy_password.is_some()),
            ] {
                if set {
                    return Err(ConfigError::key(key, "is set but `proxyHost` is not"));
                }
            }
            None
        }
    };

    let verify_ssl = o.boolean("verifySSL")?.unwrap_or(true);
    let ca_path = o.string("caPath")?.filter(|s| !s.is_empty());
    let ca_file = o.string("caFile")?.filter(|s| !s.is_empty());

    let defaults = TransportSpec::default();
    let max_retries = match o.integer("maxRetries")? {
        None => defaults.max_retries,
        Some(n) => u32::try_from(n).ok().filter(|n| *n <= 100).ok_or_else(|| {
            ConfigError::key("maxRetries", format!("must be between 0 and 100, not {n}"))
        })?,
    };
    let seconds =
        |key: &str, v: Option<i128>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n as u64)),
                Some(n) => Err(ConfigError::key(
                    key,
                    format!("must be between 1 and 86400 seconds, not {n}"),
                )),
            }
        };
    let connect_timeout = seconds(
        "connectTimeoutSeconds",
        o.integer("connectTimeoutSeconds")?,
        defaults.connect_timeout,
    )?;
    let request_timeout = seconds(
        "requestTimeoutSeconds",
        o.integer("requestTimeoutSeconds")?,
        defaults.request_timeout,
    )?;
    let checksum = match o
        .string("checksum")?
        .map(|c| c.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("crc64nvme") => UploadChecksum::Crc64Nvme,
        Some("none") => UploadChecksum::None,
        Some("sha256") => UploadChecksum::Sha256,
        Some(other) => {
            return Err(ConfigError::key(
                "checksum",
                format!("must be \"sha256\", \"crc64nvme\" or \"none\", not {other:?}"),
            ));
        }
    };
    let quirks = ServerQuirks {
        list_multipart_uploads: o.boolean("listMultipartUploads")?.unwrap_or(true),
        conditional_create: o.boolean("conditionalCreate")?.unwrap_or(true),
        etag_is_md5: o.boolean("etagIsMd5")?.unwrap_or(true),
    };

    Ok(S3Spec {
        path,
        bucket_name,
        region,
        scheme,
        endpoint,
        credentials,
        proxy,
        verify_ssl,
        ca_path,
        ca_file,
        transport: TransportSpec {
            max_retries,
            connect_timeout,
            request_timeout,
        },
        quirks,
        checksum,
        sign_payload: o.boolean("signPayload")?,
    })
}

fn validate_bucket_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::key(
            "bucketName",
            "missing; an S3 sandbox needs the name of an existing bucket",
        ));
    }
    // Today's rules (lower case, as a host name), or the legacy ones S3
    // still serves with path-style requests: capitals and `_` too, up to
    // 255 characters (JetStream's own example bucket is `sandboxBucket`).
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !(3..=255).contains(&name.len()) || !ok_chars {
        return Err(ConfigError::key(
            "bucketName",
            format!(
                "{name:?} is not a bucket name: use 3 to 63 lower-case letters, digits, `-` or `.` (legacy names may also hold capitals and `_`)"
            ),
        ));
    }
    Ok(())
}

/// Whether a bucket name is valid under today's rules, so that it can be
/// the first label of a host name (virtual-hosted-style requests); a legacy
/// name (capitals, `_`, over 63 characters) is reached path-style only.
pub fn bucket_name_is_dns_compatible(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

fn validate_proxy_host(host: &str) -> Result<(), ConfigError> {
    if host.contains('@') {
        // Never echoed: the part before `@` is likely a password.
        return Err(ConfigError::key(
            "proxyHost",
            "must not hold credentials; use `proxyUserName` and `proxyPassword`",
        ));
    }
    let is_ipv6 = host.starts_with('[') && host.ends_with(']');
    let bad = host.contains(['/', '?', '#', ' '])
        || (host.contains(':') && !is_ipv6)
        || host.chars().any(|c| c.is_ascii_control());
    if bad || Url::parse(&format!("http://{host}/")).is_err() {
        return Err(ConfigError::key(
            "proxyHost",
            format!(
                "{host:?} is not a host name or address; give the port in `proxyPort` and the scheme in `proxyScheme`"
            ),
        ));
    }
    Ok(())
}

/// Parses `endpointOverride`: a host, `host:port`, or a URL.
///
/// A URL's scheme must agree with `scheme` when `scheme` was written; when it
/// was not, the URL's scheme is used.
fn parse_endpoint(value: &str, scheme: Scheme, scheme_given: bool) -> Result<Url, ConfigError> {
    const KEY: &str = "endpointOverride";
    let value = value.trim();
    if value.contains('@') {
        // Checked first and never echoed: the part before `@` is likely a secret.
        return Err(ConfigError::key(
            KEY,
            "must not hold credentials; use `accessKeyId` and `secretKey`",
        ));
    }
    let url = if let Some((given, _)) = value.split_once("://") {
        let given_scheme = Scheme::parse(KEY, given).map_err(|_| {
            ConfigError::key(KEY, format!("{value:?} has the scheme {given:?}; use http:// or https://"))
        })?;
        if scheme_given && given_scheme != scheme {
            return Err(ConfigError::key(
                KEY,
                format!(
                    "{value:?} says {given_scheme} but `scheme` is {:?}; make them agree or drop one",
                    scheme.as_str()
                ),
            ));
        }
        Url::parse(value)
    } else {
        Url::parse(&format!("{scheme}://{value}"))
    }
    .map_err(|e| ConfigError::key(KEY, format!("{value:?} is not a host, host:port or URL ({e})")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::key(KEY, format!("{value:?} has no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(
            KEY,
            format!(
                "{value:?} must be only a scheme, host and port: the bucket goes in `bucketName` and the prefix in `path`"
            ),
        ));
    }
    Ok(url)
}

/// The keys of one spec, consumed as they are read; what remains is unknown.
struct Options {
    entries: Vec<(String, RawValue)>,
}

impl Options {
    fn take(&mut self, key: &str) -> Option<RawValue> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Str(s)) => Ok(Some(s)),
            Some(other) => Err(ConfigError::key(
                key,
                format!("must be a string, not {}", other.type_name()),
            )),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<i128>, ConfigError> {
        match self.take(key) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Int(n)) => Ok(Some(n)),
            // Written as a string by some tools: accept digits only.
            Some(RawValue::Str(s)) => {
                s.trim().parse::<i128>().map(Some).map_err(|_| {
                    ConfigError::key(key, format!("must be a whole number, not {s:?}"))
                })
            }
            Some(RawValue::Float(_)) => Err(ConfigError::key(
                key,
                "must be a whole number, not a fraction",
            )),
            Some(other) => Err(ConfigError::key(
                key,
                format!("must be a whole number, not {}", other.type_name()),
            )),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Bool(b)) => Ok(Some(b)),
            Some(RawValue::Str(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(RawValue::Str(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(ConfigError::key(
                key,
                format!("must be true or false, not {}", other.type_name()),
            )),
        }
    }

    /// Fails on the first key not in `valid`, with the closest valid key as a
    /// hint. Runs before any value is read, so a misspelt required key is
    /// reported as a typo rather than as missing.
    fn reject_unknown(&self, type_name: &str, valid: &[&str]) -> Result<(), ConfigError> {
        let Some(key) = self
            .entries
            .iter()
            .map(|(k, _)| k)
            .find(|k| !valid.contains(&k.as_str()))
        else {
            return Ok(());
        };
        let article = if type_name == "S3" { "an" } else { "a" };
        let mut message = format!("unknown key for {article} {type_name} sandbox");
        if let Some(hint) = closest(key, valid) {
            message.push_str(&format!("; did you mean `{hint}`?"));
        } else if type_name != "S3" && S3_KEYS.contains(&key.as_str()) {
            message.push_str("; it is an S3 option, and this sandbox's `type` is not \"S3\"");
        } else {
            message.push_str(&format!("; valid keys: {}", valid.join(", ")));
        }
        Err(ConfigError::key(key, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<SandboxSpec, ConfigError> {
        SandboxSpec::from_raw(serde_json::from_str::<RawSpec>(json).unwrap())
    }

    fn s3(json: &str) -> S3Spec {
        match spec(json).unwrap() {
            SandboxSpec::S3(s) => *s,
            other => panic!("not S3: {other:?}"),
        }
    }

    fn err(json: &str) -> String {
        spec(json).unwrap_err().to_string()
    }

    #[test]
    fn string_is_a_file_sandbox() {
        let s = spec(r#""/srv/%u""#).unwrap();
        assert_eq!(s.type_name(), "File");
        assert!(err(r#""""#).contains("non-empty"));
    }

    #[test]
    fn s3_defaults() {
        let legacy = s3(r#"{"type":"S3","bucketName":"sandboxBucket"}"#);
        assert_eq!(legacy.bucket_name, "sandboxBucket", "legacy names load");
        assert!(!bucket_name_is_dns_compatible("sandboxBucket"));
        assert!(!bucket_name_is_dns_compatible("my_bucket"));
        assert!(bucket_name_is_dns_compatible("my-bucket.example"));
        let s = s3(r#"{"type":"S3","bucketName":"bkt"}"#);
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.scheme, Scheme::Https);
        assert!(s.verify_ssl);
        assert!(s.proxy.is_none() && s.credentials.is_none() && s.endpoint.is_none());
        assert!(s.path.is_empty());
        assert_eq!(s.transport, TransportSpec::default());
        assert_eq!(s.quirks, ServerQuirks::default());
        let s = s3(
            r#"{"type":"S3","bucketName":"bkt","listMultipartUploads":false,"conditionalCreate":"false"}"#,
        );
        assert!(!s.quirks.list_multipart_uploads && !s.quirks.conditional_create);
    }

    #[test]
    fn all_options_read() {
        let s = s3(
            r#"{"type":"s3","path":"/u/%u","accessKeyId":"AK","secretKey":"SK",
            "sessionToken":"TOK","bucketName":"bkt","region":"eu-west-3","scheme":"HTTP",
            "endpointOverride":"127.0.0.1:9000","proxyScheme":"HTTPS","proxyHost":"proxy.local",
            "proxyUserName":"pu","proxyPassword":"pp","verifySSL":"false","caPath":"/etc/ca",
            "caFile":"/etc/ca.pem","maxRetries":0,"connectTimeoutSeconds":3,"requestTimeoutSeconds":"60"}"#,
        );
        assert_eq!(s.scheme, Scheme::Http);
        assert_eq!(s.endpoint.unwrap().as_str(), "http://127.0.0.1:9000/");
        let proxy = s.proxy.unwrap();
        assert_eq!((proxy.scheme, proxy.port), (Scheme::Https, 443));
        assert_eq!(proxy.password.unwrap().expose(), "pp");
        let creds = s.credentials.unwrap();
        assert_eq!(creds.secret_key.expose(), "SK");
        assert_eq!(creds.session_token.unwrap().expose(), "TOK");
        assert!(!s.verify_ssl);
        assert_eq!(s.ca_path.as_deref(), Some("/etc/ca"));
        assert_eq!(s.transport.max_retries, 0);
        assert_eq!(s.transport.request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn proxy_port_defaults_by_scheme() {
        let s = s3(r#"{"type":"S3","bucketName":"bkt","proxyHost":"p"}"#);
        assert_eq!(s.proxy.unwrap().port, 80);
        let s = s3(r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPort":3128}"#);
        assert_eq!(s.proxy.unwrap().port, 3128);
    }

    #[test]
    fn secrets_never_in_debug() {
        let s = spec(r#"{"type":"S3","bucketName":"bkt","accessKeyId":"AK","secretKey":"s3cr3t-sk",
            "sessionToken":"s3cr3t-tok","proxyHost":"p","proxyUserName":"u","proxyPassword":"s3cr3t-pp"}"#)
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("***"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"bucketName":"bkt"}"#, "`type`: missing"),
            (r#"{"type":"Ftp"}"#, "unknown sandbox type \"Ftp\""),
            (r#"{"type":"S3"}"#, "`bucketName`: missing"),
            (r#"{"type":"S3","bucketName":""}"#, "`bucketName`: missing"),
            (
                r#"{"type":"S3","bucketName":"Bad_Bucket!"}"#,
                "`bucketName`",
            ),
            (r#"{"type":"S3","bucketName":"ab"}"#, "`bucketName`"),
            (
                r#"{"type":"S3","bucketName":"bkt","scheme":"ftp"}"#,
                "`scheme`: must be \"http\" or \"https\"",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyScheme":"socks5","proxyHost":"p"}"#,
                "`proxyScheme`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPort":0}"#,
                "`proxyPort`: must be between 1 and 65535",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPort":70000}"#,
                "`proxyPort`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPort":"x"}"#,
                "`proxyPort`: must be a whole number",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyPort":8080}"#,
                "`proxyPort`: is set but `proxyHost` is not",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyUserName":"u"}"#,
                "`proxyUserName`: is set but `proxyHost`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyPassword":"p"}"#,
                "`proxyPassword`: is set but `proxyHost`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPassword":"x"}"#,
                "`proxyUserName`: missing",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"http://p:1"}"#,
                "`proxyHost`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","accessKeyId":"AK"}"#,
                "`secretKey`: missing",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","secretKey":"SK"}"#,
                "`accessKeyId`: missing",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","sessionToken":"T"}"#,
                "`sessionToken`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","endpointOverride":"ftp://h"}"#,
                "`endpointOverride`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","scheme":"https","endpointOverride":"http://h:9000"}"#,
                "`endpointOverride`: \"http://h:9000\" says http but `scheme` is \"https\"",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","endpointOverride":"http://h/bkt"}"#,
                "`endpointOverride`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","endpointOverride":"http://u:p@h"}"#,
                "must not hold credentials",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","verifySSL":"maybe"}"#,
                "`verifySSL`: must be true or false",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","region":7}"#,
                "`region`: must be a string",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","bucketname":"x"}"#,
                "`bucketname`: unknown key for an S3 sandbox; did you mean `bucketName`?",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","acessKeyId":"x"}"#,
                "did you mean `accessKeyId`?",
            ),
            (
                r#"{"type":"File","path":"/d","bucketName":"x"}"#,
                "it is an S3 option",
            ),
            (r#"{"type":"File"}"#, "`path`: a File sandbox needs"),
            (
                r#"{"type":"File","path":"/srv/a\u0000b"}"#,
                "`path`: a File sandbox's directory may not hold a control character ('\\0' found)",
            ),
            (
                r#""/srv/users/\u001b%u""#,
                "`path`: a File sandbox's directory may not hold a control character",
            ),
            (
                r#"{"type":"S3","bucketname":"bkt"}"#,
                "`bucketname`: unknown key for an S3 sandbox; did you mean `bucketName`?",
            ),
            (r#"{"type":"File","Path":"/x"}"#, "did you mean `path`?"),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p:8080"}"#,
                "`proxyHost`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyScheme":"https"}"#,
                "`proxyScheme`: is set but `proxyHost` is not",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","proxyHost":"p","proxyPort":80.5}"#,
                "not a fraction",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","path":"a/../b"}"#,
                "`path`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","path":"%x"}"#,
                "unknown placeholder `%x`",
            ),
            (
                r#"{"type":"S3","bucketName":"bkt","maxRetries":-1}"#,
                "`maxRetries`",
            ),
        ];
        for (json, expected) in cases {
            let e = err(json);
            assert!(
                e.contains(expected),
                "{json}\n  got: {e}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn endpoint_scheme_follows_the_url_when_scheme_is_not_written() {
        let s =
            s3(r#"{"type":"S3","bucketName":"bkt","endpointOverride":"http://127.0.0.1:9000"}"#);
        assert_eq!(s.scheme, Scheme::Http);
        let s = s3(r#"{"type":"S3","bucketName":"bkt","endpointOverride":"minio.local"}"#);
        assert_eq!(s.endpoint.unwrap().as_str(), "https://minio.local/");
    }

    #[test]
    fn empty_strings_mean_unset() {
        let s = s3(r#"{"type":"S3","bucketName":"bkt","region":"","scheme":"","proxyScheme":""}"#);
        assert_eq!((s.region.as_str(), s.scheme), ("us-east-1", Scheme::Https));
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echo() {
        for json in [
            r#"{"type":"S3","bucketName":"bkt","endpointOverride":"ftp://u:pa55word@h"}"#,
            r#"{"type":"S3","bucketName":"bkt","endpointOverride":"http://u:pa55word@h:9000"}"#,
            r#"{"type":"S3","bucketName":"bkt","proxyHost":"u:pa55word@proxy"}"#,
        ] {
            let e = err(json);
            assert!(e.contains("must not hold credentials"), "{e}");
            assert!(!e.contains("pa55word"), "{e}");
        }
    }

    #[test]
    fn bad_values_in_errors_never_show_secrets() {
        // A secret with the wrong type is named by key, its value never echoed.
        let e = err(r#"{"type":"S3","bucketName":"bkt","accessKeyId":"AK","secretKey":12345678}"#);
        assert!(
            e.contains("`secretKey`: must be a string, not a number"),
            "{e}"
        );
        assert!(!e.contains("12345678"));
    }
}
