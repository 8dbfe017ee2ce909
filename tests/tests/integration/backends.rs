//! Every port operation on every backend: Memory, File, and real S3 servers
//! (s3s-fs, moto) on 127.0.0.1, through the conformance suite.

use crate::common;

use std::sync::Arc;

use corral_adapters::{ObjectStoreBackend, file_backend, s3_backend};
use corral_conformance::{Outcome, Report, Target, run, run_cases};
use corral_domain::{Capabilities, ErrorKind, ObjectKey, ObjectStorage};
use corral_fixtures::servers::S3Server;

fn assert_passes(report: &Report, unsupported: &[&str]) {
    println!("{report}");
    assert!(report.failures().is_empty(), "{report}");
    for c in &report.cases {
        let expect_unsupported = unsupported.contains(&c.name);
        assert_eq!(
            matches!(c.outcome, Outcome::Unsupported(_)),
            expect_unsupported,
            "{}: {}",
            c.name,
            c.outcome
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let store = Arc::new(object_store::memory::InMemory::new());
    let target = Target::new("memory", Arc::new(ObjectStoreBackend::memory(store)));
    assert_passes(&run(&target).await, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend: Arc<dyn ObjectStorage> = Arc::new(file_backend(dir.path()).expect("file backend"));
    let target = Target::new("file", Arc::clone(&backend));
    assert_passes(&run(&target).await, &[]);
    // The run cleaned up after itself, staged parts included.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn file_sandbox_directory_must_exist() {
    let e = file_backend(std::path::Path::new("/nonexistent/corral-sandbox")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("does not exist; create it first"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs() {
    let server = S3Server::s3s_fs();
    server.create_bucket("conformance");
    let spec = common::s3_spec(&server, "conformance", "");
    // s3s-fs has no ListMultipartUploads: described as a capability, not special-cased.
    let mut caps = Capabilities::s3();
    caps.list_pending_uploads = false;
    let backend: Arc<dyn ObjectStorage> = Arc::new(s3_backend(&spec, caps).expect("backend"));
    let target = Target::new("s3s-fs", Arc::clone(&backend))
        .with_known_failure(
            "longest_key",
            "s3s-fs stores objects as files and cannot store a 1,024-byte key",
            &["put \"", "(InternalError)"],
        )
        .with_known_failure(
            "directory_marker",
            "s3s-fs stores a `d/` object as a directory: HEAD and listings do not show it",
            &["head marker: ", "500 Internal Server Error"],
        )
        .with_known_failure(
            "directory_emulation",
            "s3s-fs stores objects as files: a file and a directory of one name cannot coexist",
            &["put: put ", "/dup/inside: ", "(InternalError)"],
        );
    assert_passes(
        &run(&target).await,
        &[
            "list_pending_uploads",
            "continue_upload",
            "longest_key",
            "directory_marker",
            "directory_emulation",
        ],
    );
    // A declared case that fails otherwise than declared is a failure.
    let misdeclared = Target::new("s3s-fs", Arc::clone(&backend)).with_known_failure(
        "longest_key",
        "declared with another answer than the server gives",
        &["(NoSuchKey)"],
    );
    let report = run_cases(&misdeclared, &["longest_key"]).await;
    match report.outcome("longest_key") {
        Some(Outcome::Fail(why)) => {
            assert!(
                why.contains("declared to fail with [\"(NoSuchKey)\"] only"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Asked anyway, the server's refusal is explained.
    let mut all = Capabilities::s3();
    all.list_pending_uploads = true;
    let raw = s3_backend(&spec, all).expect("backend");
    let e = raw
        .list_pending_uploads(&ObjectKey::from_raw(""))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("does not implement"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto() {
    let server = S3Server::moto();
    server.create_bucket("conformance");
    let spec = common::s3_spec(&server, "conformance", "");
    let backend = Arc::new(s3_backend(&spec, Capabilities::s3()).expect("backend"));
    let target = Target::new("moto", backend);
    assert_passes(&run(&target).await, &[]);
}
