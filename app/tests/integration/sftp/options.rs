//! The server's flags and documented answers, each through a client:
//! `--max-handles`, `--max-channels`, `--max-sessions`,
//! `--max-sessions-per-user`, `--setstat`, `--overwrite`; OPEN with `EXCL`,
//! `APPEND` and `READ|WRITE`; RENAME onto a file; a reload on SIGHUP that
//! keeps sessions; the lockout after ten failed logins; a login with a key
//! (OpenSSH) and none with another key.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use argon2::PasswordHasher;

use super::{Server, ok, paramiko, password};

const MEMORY: &str = r#"{"": {"": {"type": "Memory", "path": "users/%u"}}}"#;

fn scenario(server: &Server, user: &str, name: &str, args: &[&str]) -> String {
    let mut all = vec![name];
    all.extend_from_slice(args);
    ok(&mut paramiko(server, user, "options.py", &all))
}

fn file_mappings(root: &Path, users: &[&str]) -> String {
    for u in users {
        std::fs::create_dir_all(root.join(u)).expect("mkdir");
    }
    format!(
        r#"{{"": {{"": {}}}}}"#,
        serde_json::to_string(&format!("{}/%u", root.display())).expect("json")
    )
}

fn hash(pw: &str) -> String {
    argon2::Argon2::default()
        .hash_password(pw.as_bytes())
        .expect("hash")
        .to_string()
}

#[test]
fn max_handles_refuses_one_more_and_a_closed_one_makes_room() {
    let server = Server::start(MEMORY, &["alice"], &["--max-handles", "5"]);
    assert!(scenario(&server, "alice", "handles", &["5"]).contains("ok"));
    server.settled();
}

#[test]
fn max_channels_refuses_one_more_channel_on_a_connection() {
    let server = Server::start(MEMORY, &["alice"], &["--max-channels", "3"]);
    assert!(scenario(&server, "alice", "channels", &["3"]).contains("ok"));
    server.settled();
}

#[test]
fn max_sessions_in_all_and_per_user() {
    let server = Server::start(
        MEMORY,
        &["alice", "bob"],
        &["--max-sessions", "5", "--max-sessions-per-user", "3"],
    );
    let out = scenario(
        &server,
        "alice",
        "sessions",
        &["5", "3", "bob", &password("bob")],
    );
    assert!(out.contains("ok"), "{out}");
    let log = server.log();
    assert!(
        log.contains("too many sessions for this user")
            && log.contains("the server has its maximum of sessions"),
        "{log}"
    );
    server.settled();
}

#[test]
fn setstat_refuse_answers_op_unsupported_and_ignore_keeps_times() {
    let root = tempfile::tempdir().expect("tempdir");
    let mappings = file_mappings(root.path(), &["alice"]);
    let refusing = Server::start(&mappings, &["alice"], &["--setstat", "refuse"]);
    assert!(scenario(&refusing, "alice", "setstat-refuse", &[]).contains("ok"));
    drop(refusing);
    let ignoring = Server::start(&mappings, &["alice"], &[]);
    assert!(scenario(&ignoring, "alice", "setstat-ignore", &[]).contains("ok"));
    let mtime = std::fs::metadata(root.path().join("alice/f"))
        .expect("stat")
        .modified()
        .expect("mtime");
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        "the File sandbox's file keeps the time set"
    );
}

#[test]
fn overwrite_modes_apply_to_uploads_on_file() {
    for (mode, want) in [("0", "refuse"), ("5", "backup")] {
        let root = tempfile::tempdir().expect("tempdir");
        let mappings = file_mappings(root.path(), &["alice"]);
        let server = Server::start(&mappings, &["alice"], &["--overwrite", mode]);
        assert!(
            scenario(&server, "alice", "overwrite", &[want]).contains("ok"),
            "--overwrite {mode}"
        );
        server.settled();
    }
}

#[test]
fn exclusive_append_read_write_and_rename_as_documented() {
    let root = tempfile::tempdir().expect("tempdir");
    let file = Server::start(&file_mappings(root.path(), &["alice"]), &["alice"], &[]);
    assert!(scenario(&file, "alice", "opens", &[]).contains("ok"));
    file.settled();
    let memory = Server::start(MEMORY, &["alice"], &[]);
    assert!(scenario(&memory, "alice", "opens", &[]).contains("ok"));
    memory.settled();
}

#[test]
fn a_reload_keeps_sessions_and_admits_new_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = |names: &[&str]| {
        let entries: Vec<String> = names
            .iter()
            .map(|u| format!(r#""{u}": {{"password": "{}"}}"#, hash(&password(u))))
            .collect();
        format!(r#"{{"users": {{{}}}}}"#, entries.join(", "))
    };
    std::fs::write(dir.path().join("users.json"), users(&["alice"])).expect("users");
    std::fs::write(dir.path().join("mappings.json"), MEMORY).expect("mappings");
    let users_file = dir.path().join("users.json");
    let server = Server::start_in(dir, &[]);
    let mut client = paramiko(&server, "alice", "options.py", &["reload", "bob"])
        .arg(password("bob"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("paramiko");
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready", "{line}");
    std::fs::write(&users_file, users(&["alice", "bob"])).expect("users");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.pid() as i32).expect("pid"),
        rustix::process::Signal::HUP,
    )
    .expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("reloaded the users and the mappings") {
        assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("output");
    let status = client.wait().expect("wait");
    assert!(status.success() && rest.contains("ok"), "{rest}");
    assert_eq!(server.metrics()["corral_sessions_total"], 2.0);
}

#[test]
fn ten_failed_logins_lock_the_address_out() {
    let server = Server::start(MEMORY, &["alice"], &[]);
    // The right password works before.
    assert!(scenario(&server, "alice", "login", &[]).contains("ok"));
    assert!(scenario(&server, "alice", "lockout", &["10"]).contains("ok"));
    // Ten failures, and the refused right password.
    assert_eq!(server.metrics()["corral_logins_failed_total"], 11.0);
    let log = server.log();
    assert_eq!(
        log.matches("the address is locked out after 10 failed logins in 60 s")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn a_key_logs_in_with_openssh_and_another_key_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    for name in ["good", "other"] {
        ok(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(keys.path().join(name)));
    }
    let public = std::fs::read_to_string(keys.path().join("good.pub")).expect("pub");
    std::fs::write(
        dir.path().join("users.json"),
        serde_json::json!({"users": {"alice": {"authorizedKeys": [public.trim()]}}}).to_string(),
    )
    .expect("users");
    std::fs::write(dir.path().join("mappings.json"), MEMORY).expect("mappings");
    let server = Server::start_in(dir, &[]);
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("up.txt"), b"by key").expect("local");
    let sftp = |key: &str| {
        let mut c = Command::new("sftp");
        c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args([
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg("-i")
            .arg(keys.path().join(key))
            .args(["-P", &server.port.to_string(), "-b", "-"])
            .arg("alice@127.0.0.1")
            .current_dir(work.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("sftp");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"put up.txt /up.txt\nget /up.txt back.txt\n")
            .expect("batch");
        child.wait_with_output().expect("sftp")
    };
    let refused = sftp("other");
    assert!(!refused.status.success(), "another key logged in");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let done = sftp("good");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        std::fs::read(work.path().join("back.txt")).expect("back"),
        b"by key"
    );
    server.settled();
}

/// Behind HAProxy (TCP mode, `send-proxy-v2`), the server sees the client's
/// own address: a client bound to 127.0.0.7 is logged as 127.0.0.7, not as
/// the balancer. A connection from the trusted address without a header is
/// refused; one from elsewhere is taken as it comes.
#[test]
fn behind_haproxy_the_client_address_is_the_clients() {
    let server = Server::start(MEMORY, &["alice"], &["--proxy-protocol-from", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = corral_fixtures::servers::free_port();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend sftp\n  bind 127.0.0.1:{port}\n  default_backend corral\nbackend corral\n  server one 127.0.0.1:{} send-proxy-v2\n",
            server.port
        ),
    )
    .expect("config");
    let haproxy = super::HaProxy::start(&config, port);
    let sftp = |to: u16, from: &str| {
        let batch = dir.path().join("batch");
        std::fs::write(&batch, "ls /\n").expect("batch");
        let mut c = super::openssh("sftp", &server, "alice");
        c.args(["-o", &format!("BindAddress={from}")])
            .args(["-P", &to.to_string(), "-b"])
            .arg(&batch)
            .arg("alice@127.0.0.1");
        super::run(&mut c, Duration::from_secs(60))
    };
    // Through the balancer, from 127.0.0.7.
    let out = sftp(port, "127.0.0.7");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Straight from the trusted address: no header, refused.
    let out = sftp(server.port, "127.0.0.1");
    assert!(!out.status.success(), "a headerless connection was served");
    // Straight from an untrusted one: served as it comes.
    let out = sftp(server.port, "127.0.0.8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(haproxy);
    let log = server.log();
    let logins: Vec<&str> = log.lines().filter(|l| l.contains("logged in")).collect();
    assert_eq!(logins.len(), 2, "{log}");
    assert!(logins[0].contains("peer=Some(127.0.0.7:"), "{log}");
    assert!(logins[1].contains("peer=Some(127.0.0.8:"), "{log}");
    assert!(
        log.contains("connection refused: no PROXY protocol header from the balancer"),
        "{log}"
    );
}
