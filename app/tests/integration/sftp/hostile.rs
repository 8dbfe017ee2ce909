//! Hostile SFTP clients (paramiko): traversal through every path field,
//! links refused, out-of-order and overlapping writes, a 10,000-entry
//! directory read with many READDIRs at once, half-close, the idle timeout,
//! and failed logins that say nothing about who exists.

use std::path::Path;

use super::{Server, ok, paramiko};

/// A server on File sandboxes `<root>/%u`, with a `/shared` mount.
fn server(root: &Path, users: &[&str], extra: &[&str]) -> Server {
    for u in users {
        std::fs::create_dir_all(root.join(u)).expect("mkdir");
    }
    std::fs::create_dir_all(root.join("shared")).expect("mkdir");
    let mappings = format!(
        r#"{{"": {{"": {}, "/shared": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.display())).expect("json"),
        serde_json::to_string(&root.join("shared").display().to_string()).expect("json"),
    );
    Server::start(&mappings, users, extra)
}

fn scenario(server: &Server, user: &str, name: &str, args: &[&str]) -> String {
    let mut all = vec![name];
    all.extend_from_slice(args);
    ok(&mut paramiko(server, user, "hostile.py", &all))
}

#[test]
fn no_path_field_leads_outside_and_links_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    // `al` is a prefix of `alice`: a boundary-unaware check would let al in.
    let server = server(root.path(), &["al", "alice"], &[]);
    std::fs::write(root.path().join("alice/secret.txt"), b"alice's secret").expect("plant");
    let out = scenario(&server, "al", "traversal", &["secret.txt", "alice"]);
    assert!(out.contains("ok"), "{out}");
    assert_eq!(
        std::fs::read(root.path().join("alice/secret.txt")).expect("read"),
        b"alice's secret"
    );
    // Nothing was made outside al's directory but what al was allowed to.
    let mut outside: Vec<_> = std::fs::read_dir(root.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, ["al", "alice", "shared"]);
    let mut alices: Vec<_> = std::fs::read_dir(root.path().join("alice"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    alices.sort();
    assert_eq!(alices, ["secret.txt"]);
    server.settled();
}

#[test]
fn out_of_order_and_overlapping_writes_land_where_they_were_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(
        root.path(),
        &["alice"],
        &["--max-cloud-cache-upload-size", "10MiB"],
    );
    assert!(scenario(&server, "alice", "writes", &[]).contains("ok"));
    server.settled();
}

#[test]
fn a_directory_of_10000_entries_lists_whole_under_concurrent_readdirs() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path(), &["alice"], &[]);
    let many = root.path().join("alice/many");
    std::fs::create_dir_all(&many).expect("mkdir");
    for i in 0..10_000 {
        std::fs::write(many.join(format!("entry-{i:05}")), b"").expect("write");
    }
    assert!(scenario(&server, "alice", "readdir", &["10000"]).contains("ok"));
    server.settled();
}

#[test]
fn a_half_closed_channel_gets_every_answer_then_eof_and_exit_status() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path(), &["alice"], &[]);
    assert!(scenario(&server, "alice", "half-close", &[]).contains("ok"));
    server.settled();
}

#[test]
fn an_idle_session_is_closed() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path(), &["alice"], &["--idle-timeout", "2s"]);
    assert!(scenario(&server, "alice", "idle", &["2"]).contains("ok"));
    assert!(server.log().contains("idle timeout"), "{}", server.log());
    server.settled();
}

#[test]
fn failed_logins_do_not_tell_who_exists_and_are_counted() {
    // It compares durations: not beside the load tests.
    let _alone = super::timing_group();
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path(), &["alice"], &[]);
    let out = scenario(&server, "alice", "logins", &[]);
    assert!(out.contains("ok"), "{out}");
    assert_eq!(server.metrics()["corral_logins_failed_total"], 6.0);
    // Passwords never reach the log.
    let log = server.log();
    assert!(
        !log.contains("wrong") && !log.contains(&super::password("alice")),
        "{log}"
    );
}
