//! Helpers shared by the real-server tests.
#![allow(dead_code, unreachable_pub)]

use corral_domain::config::S3Spec;
use corral_domain::{Mappings, SandboxSpec};
use corral_fixtures::servers::S3Server;

/// An S3 spec for `server`'s `bucket`, with extra JSON options (`"key": value, …`).
pub fn s3_spec(server: &S3Server, bucket: &str, extra: &str) -> S3Spec {
    s3_spec_at(
        &server.endpoint,
        &server.access_key,
        &server.secret_key,
        bucket,
        extra,
    )
}

/// An S3 spec for any endpoint and keys.
pub fn s3_spec_at(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    bucket: &str,
    extra: &str,
) -> S3Spec {
    let sep = if extra.is_empty() { "" } else { "," };
    let json = format!(
        r#"{{"": {{"": {{"type":"S3","bucketName":"{bucket}","endpointOverride":"{endpoint}",
            "accessKeyId":"{access_key}","secretKey":"{secret_key}","region":"us-east-1"{sep}{extra}}}}}}}"#
    );
    spec_from(&json)
}

/// The S3 spec of a one-entry mapping.
pub fn spec_from(json: &str) -> S3Spec {
    let m: Mappings = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    match m.entries().next().expect("one entry").2 {
        SandboxSpec::S3(s) => (**s).clone(),
        other => panic!("not S3: {other:?}"),
    }
}
