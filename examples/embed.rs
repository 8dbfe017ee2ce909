//! Embedding corral in a service: two users served from one bucket, each
//! confined to `users/<name>/` by a `%u` prefix.
//!
//! Runs against the S3 endpoint in `CORRAL_S3_ENDPOINT` (with
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `CORRAL_S3_BUCKET`, an
//! existing bucket), or, without it, against an s3s-fs server it starts on
//! 127.0.0.1 (`scripts/install-test-deps.sh` installs it):
//!
//! ```sh
//! cargo run -p corral --example embed
//! ```
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use corral::Corral;
use corral::cache::CacheConfig;
use corral::{ErrorKind, Identity};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), corral::Error> {
    // An S3 endpoint: the caller's, or a local s3s-fs for the demonstration.
    let local;
    let (endpoint, bucket, key, secret) = match std::env::var("CORRAL_S3_ENDPOINT") {
        Ok(endpoint) => (
            endpoint,
            std::env::var("CORRAL_S3_BUCKET").expect("CORRAL_S3_BUCKET"),
            std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
        ),
        Err(_) => {
            local = corral_fixtures::servers::S3Server::s3s_fs();
            local.create_bucket("transfers");
            (
                local.endpoint.clone(),
                "transfers".to_owned(),
                local.access_key.clone(),
                local.secret_key.clone(),
            )
        }
    };

    // Built once per process: mappings (JetStream-compatible JSON) and cache settings.
    let mappings = format!(
        r#"{{"": {{"": {{"type": "S3", "bucketName": "{bucket}", "path": "users/%u",
                 "endpointOverride": "{endpoint}", "accessKeyId": "{key}", "secretKey": "{secret}"}}}}}}"#
    );
    let corral = Corral::from_json(&mappings, CacheConfig::default())?;

    // One handle per user; every path is inside that user's prefix.
    let alice = corral.sandbox(&Identity::user("alice"))?;
    let bob = corral.sandbox(&Identity::user("bob"))?;

    let decision = alice
        .write("/reports/q3.csv", b"region,total\nnorth,42\n", None)
        .await?;
    println!("alice wrote /reports/q3.csv ({})", decision.effective);
    bob.mkdir("/inbox", corral::MkdirOptions::default()).await?;
    bob.write("/inbox/hello.txt", b"hi bob", None).await?;

    // Listings are streams.
    let entries: Vec<_> = alice.list("/reports").try_collect().await?;
    println!(
        "alice's /reports: {:?}",
        entries.iter().map(|e| &e.name).collect::<Vec<_>>()
    );

    // Neither sees the other's files, whatever the path.
    let err = bob.read("/reports/q3.csv").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = bob.read("/../alice/reports/q3.csv").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::EscapesSandbox);
    println!("bob cannot reach alice's files: {err}");

    // Reads: whole, a range, or an AsyncRead.
    let head = alice.read_range("/reports/q3.csv", 0, 6).await?;
    assert_eq!(&head[..], b"region");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut alice.reader("/reports/q3.csv").await?, &mut text)
        .await
        .expect("read");
    println!("alice's report:\n{text}");

    alice
        .remove(
            "/reports",
            corral::RemoveOptions {
                recursive: true,
                only: None,
            },
        )
        .await?;
    bob.remove(
        "/inbox",
        corral::RemoveOptions {
            recursive: true,
            only: None,
        },
    )
    .await?;
    assert_eq!(corral.cache().metrics().reserved, 0);
    println!("done; cache metrics: {:?}", corral.cache().metrics());
    Ok(())
}
