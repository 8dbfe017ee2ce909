//! Turning client errors into the domain's [`Error`], with a message a user can act on.
//!
//! object_store's top-level messages are generic ("error sending request");
//! the useful cause sits deep in the `source()` chain (`invalid peer
//! certificate: UnknownIssuer`, `tunnel error: proxy authorization required`,
//! an S3 `<Code>NoSuchBucket</Code>` body). [`classify`] reads the whole chain
//! once and picks the most specific explanation. Messages are built only from
//! the chain and from [`Context`], which holds no secret: an endpoint or proxy
//! is shown without credentials.

use corral_domain::{Error, ErrorKind, Operation};
use object_store::client::{HttpError, HttpErrorKind};

/// What an error message may say about the connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    /// `S3`, `File` or `Memory`.
    pub(crate) backend: &'static str,
    /// The endpoint URL, without credentials.
    pub(crate) endpoint: Option<String>,
    /// The bucket.
    pub(crate) bucket: Option<String>,
    /// The region configured.
    pub(crate) region: Option<String>,
    /// The proxy URL, without credentials.
    pub(crate) proxy: Option<String>,
}

/// The error's whole chain as one string, each cause after ": ".
pub(crate) fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    // object_store's "Generic S3 error: " says nothing a user can use.
    for store in ["S3", "InMemory", "LocalFileSystem"] {
        text = text.replace(&format!("Generic {store} error: "), "");
    }
    redact_userinfo(&text)
}

/// Masks the credentials of any `scheme://user:password@host` in `text`: a
/// proxy URL carries them, and a cause deep in a client's error chain might
/// print it. Messages never hold a secret, whatever the chain says.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | ')'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

/// The kind object_store's HTTP client gave a transport failure, if the
/// chain holds one (it does not for an answer with an error status).
fn http_kind(err: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        cur = e.source();
    }
    None
}

/// A transport failure told by its typed kind (the texts above only refine
/// a connect failure: a proxy's refusal, a certificate).
fn by_transport(
    err: &(dyn std::error::Error + 'static),
    text: &str,
    ctx: &Context,
) -> Option<(ErrorKind, String)> {
    let endpoint = ctx.endpoint.as_deref().unwrap_or("the S3 endpoint");
    let via = via_proxy(ctx);
    Some(match http_kind(err)? {
        HttpErrorKind::Connect => match io_kind(err) {
            Some(std::io::ErrorKind::ConnectionRefused) => refused(endpoint, &via),
            _ if is_dns(&text.to_ascii_lowercase()) => dns_failure(endpoint),
            _ => (
                ErrorKind::Unavailable,
                format!("cannot connect to {endpoint}{via}{}", cause_suffix(text)),
            ),
        },
        HttpErrorKind::Timeout => (
            ErrorKind::Unavailable,
            format!("request to {endpoint} timed out{}", cause_suffix(text)),
        ),
        HttpErrorKind::Interrupted | HttpErrorKind::Request => (
            ErrorKind::Unavailable,
            format!(
                "connection to {endpoint} was interrupted{}",
                cause_suffix(text)
            ),
        ),
        HttpErrorKind::Decode => (
            ErrorKind::InvalidResponse,
            format!(
                "the server at {endpoint} sent an answer that cannot be read{}",
                cause_suffix(text)
            ),
        ),
        // Unknown, and kinds added later: the texts below decide.
        _ => return None,
    })
}

/// `" (via proxy …)"` when a proxy is configured.
fn via_proxy(ctx: &Context) -> String {
    ctx.proxy
        .as_deref()
        .map(|p| format!(" (via proxy {p})"))
        .unwrap_or_default()
}

fn refused(endpoint: &str, via: &str) -> (ErrorKind, String) {
    (
        ErrorKind::Unavailable,
        format!(
            "cannot connect to {endpoint}{via}: connection refused; check `endpointOverride`, `scheme` and the proxy settings"
        ),
    )
}

fn is_dns(lower: &str) -> bool {
    lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
}

fn dns_failure(endpoint: &str) -> (ErrorKind, String) {
    (
        ErrorKind::Unavailable,
        format!("cannot resolve the host of {endpoint}: check `endpointOverride` (or `proxyHost`)"),
    )
}

/// The `<Code>` of an S3 error body, if the text holds one.
pub(crate) fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// Maps an object_store error.
pub(crate) fn from_object_store(
    err: object_store::Error,
    op: Operation,
    key: &str,
    ctx: &Context,
) -> Error {
    use object_store::Error as E;
    let base = match &err {
        E::NotFound { .. } => Some((ErrorKind::NotFound, "no such object".to_owned())),
        E::AlreadyExists { .. } => Some((
            ErrorKind::AlreadyExists,
            "the object already exists".to_owned(),
        )),
        E::Precondition { .. } => Some((ErrorKind::Conflict, "a precondition failed".to_owned())),
        E::NotImplemented { .. } | E::NotSupported { .. } => Some((
            ErrorKind::Unsupported,
            format!(
                "not supported by the {} backend: {}",
                ctx.backend,
                chain_text(&err)
            ),
        )),
        E::InvalidPath { .. } => Some((ErrorKind::InvalidInput, chain_text(&err))),
        _ => None,
    };
    // A NotFound of S3 may really be a missing bucket: look at the body first.
    let text = chain_text(&err);
    let classified = match (classify(&err, &text, ctx), base) {
        (Some(c), _) => c,
        (None, Some(b)) => Classified::from(b),
        (None, None) => Classified::from((ErrorKind::Other, text)),
    };
    classified
        .into_error()
        .with_operation(op)
        .with_key(key.to_owned())
        .with_source(err)
}

/// A recognised cause.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// Worth retrying: false for TLS and authentication failures even when
    /// their kind is usually temporary.
    pub(crate) temporary: bool,
}

impl Classified {
    pub(crate) fn into_error(self) -> Error {
        Error::new(self.kind, self.message).with_temporary(self.temporary)
    }
}

impl From<(ErrorKind, String)> for Classified {
    fn from((kind, message): (ErrorKind, String)) -> Self {
        let temporary = kind.is_temporary_by_default() && !message.starts_with("TLS");
        Self {
            kind,
            message,
            temporary,
        }
    }
}

/// The most specific explanation of an error chain, if one is recognised.
pub(crate) fn classify(
    err: &(dyn std::error::Error + 'static),
    text: &str,
    ctx: &Context,
) -> Option<Classified> {
    classify_inner(err, text, ctx).map(Classified::from)
}

fn classify_inner(
    err: &(dyn std::error::Error + 'static),
    text: &str,
    ctx: &Context,
) -> Option<(ErrorKind, String)> {
    let lower = text.to_ascii_lowercase();
    let endpoint = ctx.endpoint.as_deref().unwrap_or("the S3 endpoint");
    let bucket = ctx.bucket.as_deref().unwrap_or("?");
    let region = ctx.region.as_deref().unwrap_or("us-east-1");

    if let Some(code) = s3_code(text) {
        let hit = match code {
            "NoSuchBucket" => Some((
                ErrorKind::NotFound,
                format!(
                    "bucket {bucket:?} does not exist at {endpoint}; an S3 sandbox needs an existing bucket"
                ),
            )),
            "NoSuchKey" => Some((ErrorKind::NotFound, "no such object".to_owned())),
            "NoSuchUpload" => Some((
                ErrorKind::NotFound,
                "no such multipart upload (completed or aborted already)".to_owned(),
            )),
            "AccessDenied" | "AllAccessDisabled" => Some((
                ErrorKind::PermissionDenied,
                format!(
                    "access denied to bucket {bucket:?}: the credentials are valid but lack this permission"
                ),
            )),
            "InvalidAccessKeyId" => Some((
                ErrorKind::Unauthenticated,
                format!(
                    "the server does not know this access key: check `accessKeyId` (endpoint {endpoint})"
                ),
            )),
            "BadDigest"
            | "InvalidDigest"
            | "XAmzContentSHA256Mismatch"
            | "XAmzContentChecksumMismatch"
            | "InvalidChecksum" => Some((
                ErrorKind::Unavailable,
                format!(
                    "the server refused the data: its checksum does not match what was sent (corrupted on the way?) ({code})"
                ),
            )),
            "NotSignedUp" => Some((
                ErrorKind::Unauthenticated,
                format!(
                    "the server does not accept these credentials: check `accessKeyId` and `secretKey` (endpoint {endpoint})"
                ),
            )),
            "SignatureDoesNotMatch" => Some((
                ErrorKind::Unauthenticated,
                "the request signature was refused: check `secretKey` (and `sessionToken`)"
                    .to_owned(),
            )),
            "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => Some((
                ErrorKind::Unauthenticated,
                "the session token is expired or invalid: renew `sessionToken`".to_owned(),
            )),
            "AuthorizationHeaderMalformed"
            | "PermanentRedirect"
            | "IllegalLocationConstraintException" => Some((
                ErrorKind::InvalidInput,
                format!(
                    "bucket {bucket:?} is not in region {region:?}: set `region` to the bucket's region, or `endpointOverride` to its endpoint ({})",
                    s3_message(text).unwrap_or(code)
                ),
            )),
            "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => Some((
                ErrorKind::Unavailable,
                format!("the server is busy or failing ({code}); try again later"),
            )),
            "NotImplemented" => Some((
                ErrorKind::Unsupported,
                format!("the server at {endpoint} does not implement this S3 operation"),
            )),
            "PreconditionFailed" => Some((ErrorKind::Conflict, "a precondition failed".to_owned())),
            "EntityTooLarge" => Some((
                ErrorKind::TooLarge,
                "the server refused the object as too large".to_owned(),
            )),
            _ => None,
        };
        if hit.is_some() {
            return hit;
        }
    }

    if lower.contains("proxy authorization required")
        || lower.contains("status code: 407")
        || lower.contains("407 proxy authentication required")
    {
        let proxy = ctx.proxy.as_deref().unwrap_or("the proxy");
        return Some((
            ErrorKind::Unauthenticated,
            format!(
                "proxy {proxy} refused the credentials (407): check `proxyUserName` and `proxyPassword`"
            ),
        ));
    }
    if lower.contains("tunnel error") || lower.contains("unsuccessful tunnel") {
        let proxy = ctx.proxy.as_deref().unwrap_or("the proxy");
        return Some((
            ErrorKind::Unavailable,
            format!(
                "proxy {proxy} refused to open a tunnel to {endpoint}: {}",
                last_cause(text)
            ),
        ));
    }
    for (needle, what) in [
        (
            "unknownissuer",
            "is signed by an authority that is not trusted",
        ),
        ("invalid peer certificate: expired", "has expired"),
        ("certificate expired", "has expired"),
        ("notvalidforname", "is not valid for this host name"),
        ("not valid for name", "is not valid for this host name"),
        ("invalid peer certificate", "was refused"),
        ("certificate verify failed", "was refused"),
    ] {
        if lower.contains(needle) {
            let target = if lower.contains("proxy") {
                "the proxy's"
            } else {
                "the server's"
            };
            return Some((
                ErrorKind::Unavailable,
                format!(
                    "TLS: {target} certificate {what} ({endpoint}): give the CA with `caFile` or `caPath`, or (for tests only) set `verifySSL` to false"
                ),
            ));
        }
    }
    if text.contains("Requested ") && text.contains(", got ") {
        return Some((
            ErrorKind::InvalidResponse,
            format!(
                "the server at {endpoint} sent another byte range than the one asked for ({})",
                last_cause(text)
            ),
        ));
    }
    if lower.contains("invalid http version parsed") || lower.contains("invalid content-length") {
        return Some((
            ErrorKind::InvalidResponse,
            format!(
                "the server at {endpoint} answered with invalid HTTP; check `scheme` (http or https) and the port"
            ),
        ));
    }
    if lower.contains("record overflow")
        || lower.contains("wrong version number")
        || lower.contains("corrupt message")
        || lower.contains("invalidcontenttype")
    {
        return Some((
            ErrorKind::Unavailable,
            format!("TLS handshake with {endpoint} failed: is it an http endpoint? check `scheme`"),
        ));
    }
    if let Some(hit) = by_transport(err, text, ctx) {
        return Some(hit);
    }
    match io_kind(err) {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            return Some(refused(endpoint, &via_proxy(ctx)));
        }
        Some(std::io::ErrorKind::TimedOut) => {
            return Some((ErrorKind::Unavailable, format!("{endpoint} timed out")));
        }
        _ => {}
    }
    if lower.contains("connection refused") {
        return Some(refused(endpoint, ""));
    }
    if is_dns(&lower) {
        return Some(dns_failure(endpoint));
    }
    // object_store's summary of retries ("…, retry_timeout: 180s - <last
    // error>") names a timeout whatever the last error was.
    let without_summary = lower.replace("retry_timeout", "");
    if without_summary.contains("timed out") || without_summary.contains("timeout") {
        return Some((
            ErrorKind::Unavailable,
            format!("request to {endpoint} timed out{}", cause_suffix(text)),
        ));
    }
    if lower.contains("connection reset")
        || lower.contains("broken pipe")
        || lower.contains("connection closed")
        || lower.contains("incomplete message")
        || lower.contains("end of file before message length reached")
    {
        return Some((
            ErrorKind::Unavailable,
            format!(
                "connection to {endpoint} was interrupted{}",
                cause_suffix(text)
            ),
        ));
    }
    for (status, kind, advice) in [
        (
            "status code: 500",
            ErrorKind::Unavailable,
            "; try again later",
        ),
        (
            "status code: 502",
            ErrorKind::Unavailable,
            "; try again later",
        ),
        (
            "status code: 503",
            ErrorKind::Unavailable,
            "; try again later",
        ),
        (
            "status code: 504",
            ErrorKind::Unavailable,
            "; try again later",
        ),
        (
            "status code: 403",
            ErrorKind::PermissionDenied,
            ": the credentials lack this permission",
        ),
        (
            "status code: 401",
            ErrorKind::Unauthenticated,
            ": check `accessKeyId` and `secretKey`",
        ),
        ("status code: 404", ErrorKind::NotFound, ""),
    ] {
        if lower.contains(status) {
            let phrase = status_phrase(text).unwrap_or(&status["status code: ".len()..]);
            let cause = cause_suffix(text);
            let cause = if cause.contains(phrase) {
                String::new()
            } else {
                cause
            };
            return Some((
                kind,
                format!("the server at {endpoint} answered {phrase}{cause}{advice}"),
            ));
        }
    }
    None
}

fn s3_message(text: &str) -> Option<&str> {
    let start = text.find("<Message>")? + "<Message>".len();
    let len = text[start..].find("</Message>")?;
    Some(&text[start..start + len])
}

fn last_cause(text: &str) -> &str {
    text.rsplit(": ").next().unwrap_or(text)
}

/// `": <last cause>"`, or nothing when the chain ends empty (a HEAD's
/// error has no body).
fn cause_suffix(text: &str) -> String {
    match last_cause(text).trim() {
        "" => String::new(),
        cause => format!(": {cause}"),
    }
}

/// `500 Internal Server Error` from `…status code: 500 Internal Server Error: …`.
fn status_phrase(text: &str) -> Option<&str> {
    let at = text.find("status code: ")? + "status code: ".len();
    let rest = &text[at..];
    Some(rest[..rest.find(':').unwrap_or(rest.len())].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            backend: "S3",
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: Some("bkt".into()),
            region: Some("us-east-1".into()),
            proxy: Some("http://127.0.0.1:3128".into()),
        }
    }

    fn kind_of(text: &str) -> (ErrorKind, String) {
        let e = std::io::Error::other(text.to_owned());
        let c = classify(&e, text, &ctx()).expect(text);
        (c.kind, c.message)
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        let text = "error sending request for url (http://127.0.0.1:9/b): proxy http://corral:s3cr3t@127.0.0.1:3128 refused";
        let red = redact_userinfo(text);
        assert!(!red.contains("s3cr3t") && !red.contains("corral:"), "{red}");
        assert!(
            red.contains("http://***@127.0.0.1:3128") && red.contains("http://127.0.0.1:9/b"),
            "{red}"
        );
        let e = std::io::Error::other("via https://u:p%40ss@proxy:443");
        assert_eq!(chain_text(&e), "via https://***@proxy:443");
    }

    #[test]
    fn s3_codes() {
        let (k, m) = kind_of(
            "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>",
        );
        assert_eq!(k, ErrorKind::NotFound);
        assert!(m.contains("bucket \"bkt\" does not exist"), "{m}");
        assert_eq!(
            kind_of("<Code>SignatureDoesNotMatch</Code>").0,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            kind_of("<Code>InvalidAccessKeyId</Code>").0,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            kind_of("<Code>AccessDenied</Code>").0,
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind_of("<Code>SlowDown</Code>").0, ErrorKind::Unavailable);
        let (k, m) = kind_of(
            "<Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; expecting 'eu-west-3'</Message>",
        );
        assert_eq!(k, ErrorKind::InvalidInput);
        assert!(
            m.contains("`region`") && m.contains("expecting 'eu-west-3'"),
            "{m}"
        );
    }

    #[test]
    fn a_status_without_a_body_still_says_something() {
        for (text, kind, want) in [
            (
                "Error performing HEAD http://127.0.0.1:9/b/k in 1ms, after 1 retries, max_retries: 1, retry_timeout: 180s  - Server returned non-2xx status code: 500 Internal Server Error: ",
                ErrorKind::Unavailable,
                "the server at http://127.0.0.1:9 answered 500 Internal Server Error; try again later",
            ),
            (
                "Server returned non-2xx status code: 403 Forbidden: ",
                ErrorKind::PermissionDenied,
                "answered 403 Forbidden: the credentials lack this permission",
            ),
            (
                "request to x timed out: ",
                ErrorKind::Unavailable,
                "request to http://127.0.0.1:9 timed out",
            ),
        ] {
            let (k, m) = kind_of(text);
            assert_eq!(k, kind, "{text}");
            assert!(m.contains(want), "{m}");
            assert!(!m.trim_end().ends_with(':'), "{m}");
        }
    }

    #[test]
    fn a_retried_not_found_is_not_a_timeout() {
        let source = std::io::Error::other(
            "Error performing HEAD http://127.0.0.1:9/b/k in 2.1s, after 1 retries, max_retries: 4, retry_timeout: 180s  - Server returned non-2xx status code: 404 Not Found: ",
        );
        let e = from_object_store(
            object_store::Error::NotFound {
                path: "k".to_owned(),
                source: Box::new(source),
            },
            Operation::Head,
            "k",
            &ctx(),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(
            kind_of("after 1 retries, max_retries: 4, retry_timeout: 180s  - operation timed out")
                .0,
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn transport_failures_are_told_by_their_kind_not_their_words() {
        let wrap =
            |kind, cause: &str| HttpError::new(kind, std::io::Error::other(cause.to_owned()));
        for (kind, cause, want_kind, want) in [
            (
                HttpErrorKind::Timeout,
                "deadline passed",
                ErrorKind::Unavailable,
                "request to http://127.0.0.1:9 timed out: deadline passed",
            ),
            (
                HttpErrorKind::Interrupted,
                "peer went away",
                ErrorKind::Unavailable,
                "connection to http://127.0.0.1:9 was interrupted: peer went away",
            ),
            (
                HttpErrorKind::Decode,
                "bad chunk",
                ErrorKind::InvalidResponse,
                "cannot be read: bad chunk",
            ),
            (
                HttpErrorKind::Connect,
                "no route",
                ErrorKind::Unavailable,
                "cannot connect to http://127.0.0.1:9 (via proxy http://127.0.0.1:3128): no route",
            ),
        ] {
            let e = wrap(kind, cause);
            let c = classify(&e, &chain_text(&e), &ctx()).expect(cause);
            assert_eq!(c.kind, want_kind, "{cause}");
            assert!(c.message.contains(want), "{}", c.message);
        }
        // A certificate refused while connecting keeps its advice.
        let e = wrap(
            HttpErrorKind::Connect,
            "invalid peer certificate: UnknownIssuer",
        );
        let c = classify(&e, &chain_text(&e), &ctx()).expect("tls");
        assert!(c.message.contains("`caFile`"), "{}", c.message);
        // Unknown: the words decide.
        let e = wrap(HttpErrorKind::Unknown, "something else");
        assert!(classify(&e, &chain_text(&e), &ctx()).is_none());
    }

    #[test]
    fn transport_causes() {
        let (k, m) = kind_of(
            "error sending request: client error (Connect): tunnel error: proxy authorization required",
        );
        assert_eq!(k, ErrorKind::Unauthenticated);
        assert!(m.contains("`proxyUserName`"), "{m}");
        let (k, m) = kind_of("error sending request: invalid peer certificate: UnknownIssuer");
        assert_eq!(k, ErrorKind::Unavailable);
        let e = std::io::Error::other("x");
        assert!(
            !classify(&e, "invalid peer certificate: UnknownIssuer", &ctx())
                .unwrap()
                .temporary
        );
        assert!(
            classify(&e, "<Code>SlowDown</Code>", &ctx())
                .unwrap()
                .temporary
        );
        assert!(m.contains("`caFile`") && m.contains("`verifySSL`"), "{m}");
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let c = classify(&e, "error sending request", &ctx()).unwrap();
        let (k, m) = (c.kind, c.message);
        assert_eq!(k, ErrorKind::Unavailable);
        assert!(
            m.contains("http://127.0.0.1:9") && m.contains("connection refused"),
            "{m}"
        );
    }
}
