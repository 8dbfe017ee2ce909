//! `corral serve sftp` with real clients: the server is the `corral`
//! binary, started on 127.0.0.1 with a users file and mappings; the clients
//! are OpenSSH `sftp` and `scp`, curl (libssh2), paramiko, rclone and lftp,
//! run as processes (installed by `scripts/install-test-deps.sh`; a missing
//! one fails its test).

mod behaviour;
mod clients;
mod fleet;
mod hostile;
mod load;
mod matrix;
mod options;
mod resume;
mod shared;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use argon2::PasswordHasher;
use corral_fixtures::servers::free_port;

/// The tools' home, as the install script has it.
fn tools() -> PathBuf {
    std::env::var_os("CORRAL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/corral-tools")
        })
}

/// The venv holding paramiko and rclone.
pub(crate) fn clients_venv() -> PathBuf {
    std::env::var_os("CORRAL_CLIENTS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools().join("clients-venv"))
}

/// Tests that assert on durations or peak memory take turns: none of them
/// runs beside another (the other tests still may). Hold the guard for the
/// whole test.
pub(crate) fn timing_group() -> std::sync::MutexGuard<'static, ()> {
    static GROUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GROUP.lock().unwrap_or_else(|p| p.into_inner())
}

/// The password of a test user.
pub(crate) fn password(user: &str) -> String {
    format!("pw-{user}-secret")
}

/// A users file with one password user per name (`password(name)`).
pub(crate) fn users_json(users: &[&str]) -> String {
    let entries: Vec<String> = users
        .iter()
        .map(|u| {
            let hash = argon2::Argon2::default()
                .hash_password(password(u).as_bytes())
                .expect("hash")
                .to_string();
            format!(r#""{u}": {{"password": "{hash}"}}"#)
        })
        .collect();
    format!(r#"{{"users": {{{}}}}}"#, entries.join(", "))
}

/// A running `corral serve sftp`; stopped when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    metrics_port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// Starts the server with `mappings` (JSON), one password user per
    /// name, and extra flags.
    pub(crate) fn start(mappings: &str, users: &[&str], extra: &[&str]) -> Self {
        Self::start_in(Self::files(mappings, users), extra)
    }

    /// `corral serve webdav` instead, on the same files.
    pub(crate) fn start_webdav(mappings: &str, users: &[&str], extra: &[&str]) -> Self {
        Self::launch(Self::files(mappings, users), &["webdav"], extra)
    }

    /// A folder with the users file (one password user per name) and `mappings`.
    fn files(mappings: &str, users: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("users.json"), users_json(users)).expect("users");
        std::fs::write(dir.path().join("mappings.json"), mappings).expect("mappings");
        dir
    }

    /// Starts the server on the files already in `dir`.
    pub(crate) fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let key = dir.path().join("host_key").display().to_string();
        Self::launch(dir, &["sftp", "--host-key", &key], extra)
    }

    /// Starts `corral serve <server…>` on the files in `dir`.
    fn launch(dir: tempfile::TempDir, server: &[&str], extra: &[&str]) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let log = dir.path().join("server.log");
        let p = |name: &str| dir.path().join(name).display().to_string();
        // CORRAL_TEST_SERVER_WRAPPER runs the server under a tool (a heap profiler).
        let mut cmd = match std::env::var("CORRAL_TEST_SERVER_WRAPPER") {
            Ok(w) => {
                let mut words = w.split_whitespace();
                let mut c = Command::new(words.next().expect("wrapper"));
                c.args(words).arg(env!("CARGO_BIN_EXE_corral"));
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_corral")),
        };
        // `--config` or `--users` among the extra flags replace the files'.
        let given = |flag: &str| extra.contains(&flag);
        if !given("--config") {
            cmd.args(["--config", &p("mappings.json")]);
        }
        cmd.arg("serve").args(server);
        if !given("--users") {
            cmd.args(["--users", &p("users.json")]);
        }
        let child = cmd
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_TEST_SERVER_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("CORRAL_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start corral serve");
        let server = Self {
            child,
            port,
            metrics_port,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not start:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM to the server; its exit status, which must come within `limit`.
    pub(crate) fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the server.
    /// The folder of its files (host keys, users, mappings, log).
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The metrics endpoint's values, by series.
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("answer");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// Waits until no transfer holds or waits for cache and no session is
    /// open; returns the metrics then.
    pub(crate) fn settled(&self) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.metrics();
            let zero = |k: &str| m.get(k).copied().unwrap_or(-1.0) == 0.0;
            if zero("corral_cache_reserved_bytes")
                && zero("corral_cache_holders")
                && zero("corral_cache_waiting_transfers")
                && zero("corral_sessions")
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not settle: {m:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's anonymous resident memory now (its heap and stacks, not
    /// the pages of its executable), in KiB.
    pub(crate) fn anon_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The server's peak resident memory, executable pages included, in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::env::var_os("CORRAL_TEST_SERVER_WRAPPER").is_some() {
            // Stop the server only (it exits cleanly on SIGTERM), so that
            // the wrapper and its helpers see it end and write their report.
            for pid in corral_processes() {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
            let _ = self.child.wait();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of every `corral` process (a profiling run, with a wrapper, runs
/// one test at a time).
fn corral_processes() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "corral")
        })
        .collect()
}

/// Runs a client; a client that does not end in `limit` is killed and fails the test.
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{shown}: {e} (scripts/install-test-deps.sh installs the clients)")
        });
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{shown} did not end within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Runs a client that must succeed.
#[track_caller]
pub(crate) fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The OpenSSH options every OpenSSH client here uses: a throwaway known
/// hosts file, passwords through sshpass.
pub(crate) fn openssh(program: &str, server: &Server, user: &str) -> Command {
    let mut c = Command::new("sshpass");
    c.args(["-p", &password(user), program])
        .args(["-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "PubkeyAuthentication=no"]);
    let _ = server;
    c
}

/// `sftp -b` with `requests` requests in flight.
pub(crate) fn sftp_batch(
    server: &Server,
    user: &str,
    requests: u32,
    batch: &str,
    cwd: &Path,
) -> Output {
    let file = cwd.join(format!("batch-{user}"));
    std::fs::write(&file, batch).expect("batch");
    let mut c = openssh("sftp", server, user);
    c.args([
        "-R",
        &requests.to_string(),
        "-P",
        &server.port.to_string(),
        "-b",
    ])
    .arg(&file)
    .arg(format!("{user}@127.0.0.1"))
    .current_dir(cwd);
    run(&mut c, Duration::from_secs(120))
}

/// A paramiko script from this folder, with its arguments after the port,
/// user and password.
pub(crate) fn paramiko(server: &Server, user: &str, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new(clients_venv().join("bin/python"));
    c.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/integration/sftp")
            .join(script),
    )
    .args([server.port.to_string(), user.to_owned(), password(user)])
    .args(args);
    c
}

/// rclone with an `S:` remote on the server.
pub(crate) fn rclone(server: &Server, user: &str) -> Command {
    let bin = clients_venv().join("bin/rclone");
    let obscured = ok(Command::new(&bin).args(["obscure", &password(user)]));
    let mut c = Command::new(bin);
    c.env("RCLONE_CONFIG_S_TYPE", "sftp")
        .env("RCLONE_CONFIG_S_HOST", "127.0.0.1")
        .env("RCLONE_CONFIG_S_PORT", server.port.to_string())
        .env("RCLONE_CONFIG_S_USER", user)
        .env("RCLONE_CONFIG_S_PASS", obscured.trim())
        .env("RCLONE_CONFIG_S_KNOWN_HOSTS_FILE", "")
        .env("RCLONE_CONFIG", "/dev/null")
        .args(["-q", "--retries", "1", "--low-level-retries", "1"]);
    c
}

/// HAProxy on `config` (its frontend on 127.0.0.1:`port`), listening;
/// stopped when dropped, whether the test passes or not.
pub(crate) struct HaProxy(Child);

impl HaProxy {
    pub(crate) fn start(config: &Path, port: u16) -> Self {
        let h = Self(
            Command::new("/usr/sbin/haproxy")
                .args(["-db", "-f"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("haproxy (scripts/install-test-deps.sh installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deterministic bytes, different for each seed.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    crate::common::pattern(len, seed)
}
