//! The sandbox service on Memory mounts: mounts in the view, directory rules,
//! and what a listing shows of objects written beside corral.

use corral::Corral;
use corral::cache::CacheConfig;
use corral_domain::listing::EntryKind;
use corral_domain::{ErrorKind, Identity, Mappings};
use futures::TryStreamExt;

fn corral(json: &str) -> Corral {
    let m: Mappings = serde_json::from_str(json).expect("mappings");
    Corral::new(m, CacheConfig::default()).expect("corral")
}

async fn names(sb: &corral::UserSandbox, path: &str) -> Vec<String> {
    let entries: Vec<_> = sb.list(path).try_collect().await.expect("list");
    entries
        .into_iter()
        .map(|e| format!("{}{}", e.name, if e.is_dir() { "/" } else { "" }))
        .collect()
}

#[tokio::test]
async fn mounts_directories_and_planted_objects() {
    let c = corral(
        r#"{"": {"": {"type":"Memory","path":"home/%u"}, "a/b": {"type":"Memory","path":"shared"}}}"#,
    );
    let sb = c.sandbox(&Identity::user("alice")).expect("sandbox");
    // A path holding a mount point is a directory, even with nothing of its own.
    assert_eq!(
        sb.stat("/a").await.expect("stat").kind,
        EntryKind::Directory
    );
    assert_eq!(names(&sb, "/").await, ["a/"]);
    assert_eq!(names(&sb, "/a").await, ["b/"]);
    let e = sb.remove("/a", true).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // Files land in the right mount, under the user's prefix.
    sb.write("/notes.txt", b"mine", None).await.expect("write");
    sb.write("/a/b/common.txt", b"shared", None)
        .await
        .expect("write");
    let bob = c.sandbox(&Identity::user("bob")).expect("bob");
    assert_eq!(
        names(&bob, "/").await,
        ["a/"],
        "bob does not see alice's files"
    );
    assert_eq!(
        &bob.read("/a/b/common.txt").await.expect("read")[..],
        b"shared"
    );

    // A file and a directory of the same name: the directory wins.
    sb.write("/dup", b"file", None).await.expect("file dup");
    sb.write("/dup/inside", b"x", None).await.expect("dir dup");
    assert_eq!(names(&sb, "/").await, ["a/", "dup/", "notes.txt"]);
    assert_eq!(
        sb.stat("/dup").await.expect("stat").kind,
        EntryKind::Directory
    );

    // mkdir: an empty directory exists through its marker and can be removed.
    sb.mkdir("/empty", false).await.expect("mkdir");
    assert_eq!(
        sb.stat("/empty").await.expect("stat").kind,
        EntryKind::Directory
    );
    assert!(names(&sb, "/empty").await.is_empty());
    sb.remove("/empty", false).await.expect("rmdir");
    assert_eq!(
        sb.stat("/empty").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
