//! `corral serve sftp` against `rclone serve sftp` over the same S3 server
//! (Garage, started here), and against `corral cp` straight to the bucket,
//! in one run: OpenSSH `sftp` puts and gets a 1 GiB file through each
//! server, alternating them, three rounds; medians. The corral server's peak
//! RSS is read at the end. With `CORRAL_BENCH_PROTOCOL=webdav`, the same
//! for `corral serve webdav` against `rclone serve webdav`, with curl.
//!
//! `scripts/bench-sftp.sh` and `scripts/bench-webdav.sh` install rclone,
//! build the release binary and run this; results are in docs/PERFORMANCE.md.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
use common::{corral_bin, median, write_random_file};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argon2::PasswordHasher;
use corral_fixtures::servers::{S3Server, free_port};

/// The file's size: 1 GiB, or `CORRAL_BENCH_MIB` MiB (the memory bound of
/// a 2 GiB upload: `CORRAL_BENCH_MIB=2048`).
fn size() -> usize {
    std::env::var("CORRAL_BENCH_MIB")
        .ok()
        .and_then(|m| m.parse::<usize>().ok())
        .map_or(1 << 30, |m| m << 20)
}
const ROUNDS: usize = 3;
const PASSWORD: &str = "bench-password";

fn rclone_bin() -> PathBuf {
    std::env::var_os("RCLONE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/corral-tools/clients-venv/bin/rclone")
        })
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `sftp -b` run of `batch`; its wall time.
fn sftp(port: u16, user: &str, batch: &str, dir: &Path) -> Duration {
    let file = dir.join("batch");
    std::fs::write(&file, batch).unwrap();
    let start = Instant::now();
    let out = Command::new("sshpass")
        .args([
            "-p",
            PASSWORD,
            "sftp",
            "-o",
            "BatchMode=no",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .args(match std::env::var("CORRAL_BENCH_CIPHER") {
            // One cipher for the client to insist on (the default is its own order).
            Ok(c) => vec!["-c".to_owned(), c],
            Err(_) => vec![],
        })
        .args(["-P", &port.to_string(), "-b"])
        .arg(&file)
        .arg(format!("{user}@127.0.0.1"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// One curl PUT (`put`: the local file) or GET (into `back.bin`) of `name`; its wall time.
fn curl(port: u16, user: &str, put: Option<&str>, name: &str, dir: &Path) -> Duration {
    let start = Instant::now();
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "-f", "-u", &format!("{user}:{PASSWORD}")]);
    match put {
        Some(local) => c.args(["-T", local]),
        None => c.args(["-o", "back.bin"]),
    };
    let out = c
        .arg(format!("http://127.0.0.1:{port}/{name}"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn mib_s(d: Duration) -> f64 {
    size() as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let webdav = std::env::var("CORRAL_BENCH_PROTOCOL").is_ok_and(|p| p == "webdav");
    let protocol = if webdav { "webdav" } else { "sftp" };
    let garage = S3Server::garage();
    garage.create_bucket("bench");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    write_random_file(&big, size() >> 20, 0x9E37_79B9_7F4A_7C15);
    let mappings = format!(
        r#"{{"mappings": {{"": {{"": {{"type":"S3","bucketName":"bench","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}}}"#,
        garage.endpoint, garage.access_key, garage.secret_key
    );
    let config = dir.path().join("corral.json");
    std::fs::write(&config, &mappings).unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes())
        .unwrap()
        .to_string();
    let users = dir.path().join("users.json");
    std::fs::write(
        &users,
        format!(r#"{{"users": {{"bench": {{"password": "{hash}"}}}}}}"#),
    )
    .unwrap();

    // corral serve sftp (or webdav): the default cache (1 GiB, 64 MiB per transfer).
    let corral_port = free_port();
    let host_key = dir.path().join("host_key").display().to_string();
    let server_args: &[&str] = if webdav {
        &["webdav"]
    } else {
        &["sftp", "--host-key", &host_key]
    };
    let server = Killed(
        Command::new(corral_bin())
            .args(["--config", config.to_str().unwrap(), "serve"])
            .args(server_args)
            .args(["--listen", &format!("127.0.0.1:{corral_port}")])
            .args(["--users", users.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("corral (cargo build --release -p corral)"),
    );
    wait_port(corral_port);

    // rclone serve sftp (or webdav) on the same bucket, under the same user's prefix.
    let rclone_port = free_port();
    let _rclone = Killed(
        Command::new(rclone_bin())
            .args([
                "serve",
                protocol,
                "S:bench/users/bench",
                "--addr",
                &format!("127.0.0.1:{rclone_port}"),
            ])
            .args(["--user", "bench", "--pass", PASSWORD])
            .env("RCLONE_CONFIG_S_TYPE", "s3")
            .env("RCLONE_CONFIG_S_PROVIDER", "Other")
            .env("RCLONE_CONFIG_S_ENDPOINT", &garage.endpoint)
            .env("RCLONE_CONFIG_S_ACCESS_KEY_ID", &garage.access_key)
            .env("RCLONE_CONFIG_S_SECRET_ACCESS_KEY", &garage.secret_key)
            .env("RCLONE_CONFIG_S_REGION", &garage.region)
            .env("RCLONE_CONFIG_S_FORCE_PATH_STYLE", "true")
            .env("RCLONE_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone (scripts/bench-sftp.sh installs it)"),
    );
    wait_port(rclone_port);

    let cp = |args: &[&str]| {
        let start = Instant::now();
        let out = Command::new(corral_bin())
            .args(["--config", config.to_str().unwrap(), "--user", "bench"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "corral cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };

    let (mut up, mut down) = (
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    );
    // Quick mode: CORRAL_BENCH_ROUNDS=1, CORRAL_BENCH_TOOLS=corral (the
    // server alone, no rclone and no corral cp).
    let rounds = std::env::var("CORRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let only_corral = std::env::var("CORRAL_BENCH_TOOLS").is_ok_and(|t| t == "corral");
    for round in 0..rounds {
        for (i, port) in [(0, corral_port), (1, rclone_port)] {
            if only_corral && i == 1 {
                up[i].push(Duration::from_secs(1));
                down[i].push(Duration::from_secs(1));
                continue;
            }
            let name = format!("big-{i}-{round}.bin");
            if webdav {
                up[i].push(curl(port, "bench", Some("big.bin"), &name, dir.path()));
                down[i].push(curl(port, "bench", None, &name, dir.path()));
            } else {
                up[i].push(sftp(
                    port,
                    "bench",
                    &format!("put big.bin {name}\n"),
                    dir.path(),
                ));
                down[i].push(sftp(
                    port,
                    "bench",
                    &format!("get {name} back.bin\n"),
                    dir.path(),
                ));
            }
            let _ = std::fs::remove_file(dir.path().join("back.bin"));
        }
        if only_corral {
            up[2].push(Duration::from_secs(1));
            down[2].push(Duration::from_secs(1));
            continue;
        }
        up[2].push(cp(&[
            "cp",
            "big.bin",
            &format!("corral:/direct-{round}.bin"),
        ]));
        down[2].push(cp(&[
            "cp",
            &format!("corral:/direct-{round}.bin"),
            "back.bin",
        ]));
        let _ = std::fs::remove_file(dir.path().join("back.bin"));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    let hwm = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    let (u, d): (Vec<Duration>, Vec<Duration>) = (
        up.iter().map(|v| median(v.clone())).collect(),
        down.iter().map(|v| median(v.clone())).collect(),
    );
    let client = if webdav { "curl" } else { "OpenSSH sftp" };
    let mib = size() >> 20;
    println!(
        "| {mib} MiB, {client} | corral serve {protocol} | rclone serve {protocol} | corral cp direct | corral / rclone | corral / corral cp |"
    );
    println!("|---|---|---|---|---|---|");
    for (what, t) in [("put", &u), ("get", &d)] {
        if only_corral {
            println!(
                "| {what} | {:.1} s ({:.0} MiB/s) | — | — | — | — |",
                t[0].as_secs_f64(),
                mib_s(t[0])
            );
            continue;
        }
        println!(
            "| {what} | {:.1} s ({:.0} MiB/s) | {:.1} s ({:.0} MiB/s) | {:.1} s ({:.0} MiB/s) | **{:.2}** | **{:.2}** |",
            t[0].as_secs_f64(),
            mib_s(t[0]),
            t[1].as_secs_f64(),
            mib_s(t[1]),
            t[2].as_secs_f64(),
            mib_s(t[2]),
            t[0].as_secs_f64() / t[1].as_secs_f64(),
            t[0].as_secs_f64() / t[2].as_secs_f64()
        );
    }
    println!(
        "\ncorral serve {protocol} peak RSS {} MiB (VmHWM), resident now {} MiB; cache 1 GiB in all, 64 MiB per transfer: goal RSS <= 64 + 48 MiB per transfer at once",
        hwm("VmHWM:"),
        hwm("VmRSS:")
    );
}
