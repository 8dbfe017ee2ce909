//! S3 sandbox settings on real components: credentials, missing bucket,
//! unreachable endpoint, a squid proxy with Basic auth (http and https) and
//! TLS with a throwaway CA (caFile, caPath, verifySSL). Tests that expect a
//! failure set `maxRetries` to 0.

use crate::common;

use bytes::Bytes;
use corral_adapters::s3_backend;
use corral_domain::config::S3Spec;
use corral_domain::port::{ListOptions, PutMode};
use corral_domain::{Capabilities, ErrorKind, ObjectKey, ObjectStorage};
use corral_fixtures::servers::{Pki, S3Server, Squid, free_port};
use futures::TryStreamExt;

/// Puts, reads back and lists one object; the first error, if any.
async fn round_trip(spec: &S3Spec) -> corral_domain::Result<()> {
    let backend = s3_backend(spec, Capabilities::s3())?;
    let key = ObjectKey::from_raw("probe/object");
    backend
        .put(&key, Bytes::from_static(b"hello"), PutMode::Overwrite)
        .await?;
    let got: Vec<Bytes> = backend.get(&key, None).await?.body.try_collect().await?;
    assert_eq!(got.concat(), b"hello");
    let listed: Vec<_> = backend
        .list(&ObjectKey::from_raw("probe/"), ListOptions::default())
        .try_collect()
        .await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    Ok(())
}

/// The first error of a request expected to fail.
async fn first_error(spec: &S3Spec) -> corral_domain::Error {
    let backend = s3_backend(spec, Capabilities::s3()).expect("backend");
    // A listing: a bucket-level request, so S3 can say NoSuchBucket in its body.
    backend
        .list(&ObjectKey::from_raw(""), ListOptions::default())
        .try_collect::<Vec<_>>()
        .await
        .expect_err("the request should fail")
}

fn string_json(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_bucket_and_endpoint_errors() {
    let server = S3Server::s3s_fs();
    server.create_bucket("bkt");
    round_trip(&common::s3_spec(&server, "bkt", ""))
        .await
        .expect("right credentials work");

    let wrong_secret = common::spec_from(&format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","endpointOverride":"{}","accessKeyId":"{}","secretKey":"not-the-secret","maxRetries":0}}}}}}"#,
        server.endpoint, server.access_key
    ));
    let e = first_error(&wrong_secret).await;
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("`secretKey`"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");

    let unknown_key = common::spec_from(&format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","endpointOverride":"{}","accessKeyId":"AKIAUNKNOWN","secretKey":"x","maxRetries":0}}}}}}"#,
        server.endpoint
    ));
    let e = first_error(&unknown_key).await;
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");

    let e = first_error(&common::s3_spec(
        &server,
        "no-such-bucket",
        r#""maxRetries":0"#,
    ))
    .await;
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string()
            .contains("bucket \"no-such-bucket\" does not exist")
            && e.to_string().contains("existing bucket"),
        "{e}"
    );

    let closed = free_port();
    let unreachable = common::spec_from(&format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"bkt","endpointOverride":"http://127.0.0.1:{closed}","accessKeyId":"a","secretKey":"b","maxRetries":0,"connectTimeoutSeconds":2}}}}}}"#
    ));
    let e = first_error(&unreachable).await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("cannot connect to http://127.0.0.1:{closed}")),
        "{e}"
    );
    // The port's data path (object_store) explains the same failure the same way.
    let backend = s3_backend(&unreachable, Capabilities::s3()).expect("backend");
    let e = backend.head(&ObjectKey::from_raw("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("connection refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_with_basic_auth_carries_every_request() {
    let pki = Pki::generate();
    let squid = Squid::start(&pki);
    let server = S3Server::s3s_fs();
    server.create_bucket("bkt");
    let ca = string_json(&pki.ca_file.display().to_string());

    // http proxy, plain http target: requests are forwarded in absolute form.
    let via_http = common::s3_spec(
        &server,
        "bkt",
        &format!(
            r#""proxyHost":"127.0.0.1","proxyPort":{},"proxyUserName":"{}","proxyPassword":"{}""#,
            squid.http_port, squid.user, squid.password
        ),
    );
    round_trip(&via_http).await.expect("through the http proxy");
    // squid strips query strings from its log: the listing shows as `/bkt/?`.
    let log = squid.wait_for_access_log(&format!(
        "GET http://127.0.0.1:{}/bkt/? {}",
        server.port, squid.user
    ));
    assert!(
        log.contains(&format!(
            "PUT http://127.0.0.1:{}/bkt/probe/object {}",
            server.port, squid.user
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "GET http://127.0.0.1:{}/bkt/probe/object {}",
            server.port, squid.user
        )),
        "{log}"
    );

    // https proxy (TLS to the proxy), trusted through caFile.
    let via_https = common::s3_spec(
        &server,
        "bkt",
        &format!(
            r#""proxyScheme":"https","proxyHost":"127.0.0.1","proxyPort":{},"proxyUserName":"{}","proxyPassword":"{}","caFile":{ca}"#,
            squid.https_port, squid.user, squid.password
        ),
    );
    let before = squid.access_log().lines().count();
    round_trip(&via_https)
        .await
        .expect("through the https proxy");
    let log = squid.wait_for_access_log("TCP_MISS");
    let new_lines: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains(&squid.user) && l.contains(&format!("127.0.0.1:{}", server.port))),
        "{new_lines:?}"
    );

    // Wrong password: the proxy's 407, explained.
    let wrong = common::s3_spec(
        &server,
        "bkt",
        &format!(
            r#""proxyHost":"127.0.0.1","proxyPort":{},"proxyUserName":"{}","proxyPassword":"wrong-pass","maxRetries":0"#,
            squid.http_port, squid.user
        ),
    );
    let e = first_error(&wrong).await;
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "proxy http://127.0.0.1:{} refused the credentials (407)",
            squid.http_port
        )),
        "{msg}"
    );
    assert!(
        msg.contains("`proxyPassword`") && !msg.contains("wrong-pass"),
        "{msg}"
    );
    assert!(
        squid
            .wait_for_access_log("TCP_DENIED/407")
            .contains("TCP_DENIED/407")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trust_settings() {
    let pki = Pki::generate();
    let server = S3Server::moto_tls(&pki);
    server.create_bucket("bkt");
    let ca_file = string_json(&pki.ca_file.display().to_string());
    let ca_dir = string_json(&pki.ca_dir.display().to_string());

    // The throwaway CA is not in the system store.
    let e = first_error(&common::s3_spec(&server, "bkt", r#""maxRetries":0"#)).await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        !e.is_temporary(),
        "a certificate failure is not worth retrying: {e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("TLS") && msg.contains("not trusted"), "{msg}");
    assert!(
        msg.contains("`caFile`") && msg.contains("`caPath`") && msg.contains("`verifySSL`"),
        "{msg}"
    );

    round_trip(&common::s3_spec(
        &server,
        "bkt",
        &format!(r#""caFile":{ca_file}"#),
    ))
    .await
    .expect("caFile");
    round_trip(&common::s3_spec(
        &server,
        "bkt",
        &format!(r#""caPath":{ca_dir}"#),
    ))
    .await
    .expect("caPath (a directory made by openssl rehash)");
    round_trip(&common::s3_spec(&server, "bkt", r#""verifySSL":false"#))
        .await
        .expect("verifySSL false");

    // Another CA does not vouch for this server: caFile replaces the system store, it does not add.
    let other = Pki::generate();
    let e = first_error(&common::s3_spec(
        &server,
        "bkt",
        &format!(
            r#""caFile":{},"maxRetries":0"#,
            string_json(&other.ca_file.display().to_string())
        ),
    ))
    .await;
    assert!(e.to_string().contains("not trusted"), "{e}");

    // A bad caFile is a configuration error naming the file.
    let junk = pki.dir.path().join("junk.pem");
    std::fs::write(&junk, "no certificate here").expect("write");
    let spec = common::s3_spec(
        &server,
        "bkt",
        &format!(r#""caFile":{}"#, string_json(&junk.display().to_string())),
    );
    let e = s3_backend(&spec, Capabilities::s3()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("junk.pem holds no PEM certificate"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_to_https_server_trusted_through_one_ca() {
    let pki = Pki::generate();
    let squid = Squid::start(&pki);
    let server = S3Server::moto_tls(&pki);
    server.create_bucket("bkt");
    let spec = common::s3_spec(
        &server,
        "bkt",
        &format!(
            r#""proxyScheme":"https","proxyHost":"127.0.0.1","proxyPort":{},"proxyUserName":"{}","proxyPassword":"{}","caFile":{}"#,
            squid.https_port,
            squid.user,
            squid.password,
            string_json(&pki.ca_file.display().to_string())
        ),
    );
    round_trip(&spec)
        .await
        .expect("TLS to the proxy, then a TLS tunnel to the server");
    // A tunnel is logged when it closes: the backend above is dropped, so wait for it.
    let log = squid.wait_for_access_log(&format!("CONNECT 127.0.0.1:{}", server.port));
    assert!(
        log.lines().any(|l| l.contains("TCP_TUNNEL/200")
            && l.contains(&format!("CONNECT 127.0.0.1:{} {}", server.port, squid.user))),
        "{log}"
    );
}

/// Collects the messages of WARN events (a minimal subscriber: no extra dependency).
#[derive(Default, Clone)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().expect("lock").push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn verify_ssl_false_warns_once_per_sandbox() {
    let spec = common::spec_from(
        r#"{"": {"": {"type":"S3","bucketName":"bkt","endpointOverride":"https://127.0.0.1:9","accessKeyId":"AK","secretKey":"s3cr3t-value","verifySSL":false}}}"#,
    );
    let warnings = Warnings::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let backends = corral_adapters::Backends::new();
        for _ in 0..3 {
            backends.s3(&spec).expect("backend");
        }
    });
    let got = warnings.0.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("verifySSL is false") && got[0].contains("bkt"),
        "{got:?}"
    );
    assert!(!got[0].contains("s3cr3t"), "{got:?}");
}
