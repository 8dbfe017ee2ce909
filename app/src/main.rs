//! The `corral` command: sandboxed file operations and transfers.
//!
//! A thin user of the library: every rule lives in `corral-domain`, every
//! operation in [`corral::UserSandbox`]; this file parses arguments, moves
//! bytes between local files and the sandbox, and prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use corral::cache::part_checksum;
use corral::cache::{CacheConfig, parse_size, wait_for_background_aborts};
use corral::config::{ConfigFile, DEFAULT_SANDBOX_DIR};
use corral::journal::{EntryGuard, Journal, JournalEntry, SourceId};
use corral::{Corral, UserSandbox};
use corral_domain::listing::{DirEntry, EntryKind};
use corral_domain::mapping::ResolvedSpec;
use corral_domain::parts::human;
use corral_domain::port::UploadId;
use corral_domain::{Error, ErrorKind, Identity, OverwriteMode};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

const AFTER_HELP: &str = "\
Paths: a sandbox path is written corral:/DIR/FILE (corral: then the path in
your sandbox, '/' being its root); anything else is a local path. Example:
  corral cp report.pdf corral:/reports/     corral ls -l corral:/reports

Without --config, every user gets a File sandbox in ./corral-data.

Exit codes: 0 success; 1 other failure; 2 usage or configuration error;
3 not found; 4 permission denied, authentication failed, or a path that
escapes the sandbox; 5 already exists or conflict (e.g. directory not empty).
Logs: RUST_LOG=info (or debug) on stderr.";

/// corral: per-user sandboxes on S3, local directories or memory, as a filesystem.
#[derive(Parser, Debug)]
#[command(name = "corral", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// The config file (JSON: "mappings" and an optional "cache" section).
    #[arg(long, global = true, env = "CORRAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The user whose sandbox to use (default: the OS user).
    #[arg(long, global = true, env = "CORRAL_USER", value_name = "NAME")]
    user: Option<String>,
    /// The domain, for %d in sandbox paths.
    #[arg(long, global = true, value_name = "D")]
    domain: Option<String>,
    /// The full user name, for %f in sandbox paths.
    #[arg(long, global = true, value_name = "F")]
    full_name: Option<String>,
    /// Total transfer cache (e.g. 1GiB).
    #[arg(long, global = true, value_name = "SIZE")]
    max_cloud_cache_size: Option<String>,
    /// Cache for one upload at most (e.g. 64MiB).
    #[arg(long, global = true, value_name = "SIZE")]
    max_cloud_cache_upload_size: Option<String>,
    /// Cache for one download at most (e.g. 64MiB).
    #[arg(long, global = true, value_name = "SIZE")]
    max_cloud_cache_download_size: Option<String>,
    /// Stage transfers in this file (on fast local storage) instead of memory.
    #[arg(long, global = true, value_name = "PATH")]
    cloud_cache_file: Option<PathBuf>,
    /// Where the journal of uploads in flight is kept (default ~/.local/state/corral).
    #[arg(long, global = true, env = "CORRAL_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Machine-readable output (JSON; one object per line for listings).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List a directory.
    Ls {
        /// Long format: type, size, modification time, name.
        #[arg(short = 'l')]
        long: bool,
        /// The directory (default corral:/).
        path: Option<String>,
    },
    /// Show a file or directory.
    Stat { path: String },
    /// Print a file to standard output.
    Cat { path: String },
    /// Copy files: local to sandbox, sandbox to local, or within the sandbox.
    Cp {
        /// Copy directories and everything in them.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Overwrite mode: 0-5 or its name (in-place-always, part-file-backup, ...).
        /// S3 sandboxes always write in place and say so.
        #[arg(long, value_name = "MODE")]
        overwrite: Option<OverwriteMode>,
        /// Read every copied file back and compare it with its source.
        #[arg(long)]
        verify: bool,
        /// Continue interrupted uploads of the same files where they stopped
        /// (after checking that the sources did not change).
        #[arg(long)]
        resume: bool,
        /// Abort interrupted uploads older than this (e.g. 24h, 30m, 0s).
        #[arg(long, value_name = "AGE", default_value = "24h", value_parser = humantime::parse_duration)]
        stale_after: Duration,
        /// Sources, then the destination.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Multipart uploads left pending in the user's S3 prefixes, by any tool.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// Move or rename within the sandbox.
    Mv { from: String, to: String },
    /// Remove files (and directories with -r).
    Rm {
        /// Remove directories and everything in them.
        #[arg(short = 'r', long)]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Create directories.
    Mkdir {
        /// Create missing parents; no error if it exists.
        #[arg(short = 'p')]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Show the user's effective view: mounts and where they lead (secrets as ***).
    Mappings,
    /// Run the conformance suite against a mount of the user's sandbox: what
    /// works on this endpoint, case by case (pass, fail, unsupported).
    Conformance {
        /// The mount to test (default: the root mount, or the first one).
        #[arg(long, value_name = "MOUNT")]
        mount: Option<String>,
    },
    /// Validate the config and connect to every mount of the user.
    Check {
        /// Also write, read back and delete a probe object in each mount.
        #[arg(long)]
        write: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UploadsCommand {
    /// List pending multipart uploads under the user's prefixes.
    List {
        /// Only those started longer ago than this (e.g. 24h).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Abort pending multipart uploads under the user's prefixes.
    Abort {
        /// Those started longer ago than this (e.g. 24h).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration, conflicts_with_all = ["all", "upload_id"])]
        older_than: Option<Duration>,
        /// All of them.
        #[arg(long, conflicts_with = "upload_id")]
        all: bool,
        /// One upload, by id.
        upload_id: Option<String>,
    },
    /// Install the bucket rule that aborts incomplete multipart uploads after N days.
    Lifecycle {
        /// Days after which an incomplete upload is aborted.
        #[arg(long)]
        days: u32,
        /// Replace the bucket's existing lifecycle rules.
        #[arg(long)]
        replace: bool,
    },
}

fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::EscapesSandbox => 4,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => 5,
        ErrorKind::InvalidInput => 2,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let r = tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::new(ErrorKind::Cancelled, "interrupted")),
        };
        // Uploads dropped unfinished (an error, Ctrl-C) abort in the background: wait for them.
        let late = wait_for_background_aborts(Duration::from_secs(10)).await;
        if late > 0 {
            eprintln!("corral: {late} multipart uploads could not be aborted in time; a bucket lifecycle rule for incomplete uploads removes them");
        }
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn identity(g: &Global) -> Identity {
    let user = g
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "user".to_owned());
    Identity {
        user,
        domain: g.domain.clone(),
        full_name: g.full_name.clone(),
    }
}

fn cache_config(g: &Global, config: &ConfigFile) -> Result<CacheConfig, Error> {
    let mut c = config.cache.apply(CacheConfig::default())?;
    if let Some(s) = &g.max_cloud_cache_size {
        c.total = parse_size("--max-cloud-cache-size", s)?;
    }
    if let Some(s) = &g.max_cloud_cache_upload_size {
        c.upload = parse_size("--max-cloud-cache-upload-size", s)?;
    }
    if let Some(s) = &g.max_cloud_cache_download_size {
        c.download = parse_size("--max-cloud-cache-download-size", s)?;
    }
    if let Some(f) = &g.cloud_cache_file {
        c.file = Some(f.clone());
    }
    Ok(c)
}

async fn run(cli: Cli) -> Result<(), Error> {
    let g = &cli.global;
    let config = match &g.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::embedded_default(Path::new(DEFAULT_SANDBOX_DIR))?,
    };
    let cache = cache_config(g, &config)?;
    let corral = Corral::new(config.mappings.clone(), cache)?;
    let id = identity(g);
    let sb = corral.sandbox(&id)?;
    let json = g.json;
    match cli.command {
        Command::Ls { long, path } => {
            ls(
                &sb,
                &sandbox_arg(path.as_deref().unwrap_or("corral:/"))?,
                long,
                json,
            )
            .await
        }
        Command::Stat { path } => stat(&sb, &sandbox_arg(&path)?, json).await,
        Command::Cat { path } => cat(&sb, &sandbox_arg(&path)?).await,
        Command::Cp {
            recursive,
            overwrite,
            verify,
            resume,
            stale_after,
            mut paths,
        } => {
            let dst = paths.pop().unwrap_or_default();
            let state = g.state_dir.clone().unwrap_or_else(Journal::default_dir);
            let journal = Resumable {
                journal: Journal::open(&state, &id.user)?,
                resume,
            };
            let options = CpOptions {
                recursive,
                mode: overwrite,
                json,
                journal: Some(&journal),
                stale_after,
                verify,
            };
            cp(&sb, &paths, &dst, &options).await
        }
        Command::Uploads(cmd) => uploads(&sb, cmd, json).await,
        Command::Mv { from, to } => {
            let moved = sb.rename(&sandbox_arg(&from)?, &sandbox_arg(&to)?).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"moved": from, "to": to, "files": moved.files, "bytes": moved.bytes})
                );
            }
            Ok(())
        }
        Command::Rm { recursive, paths } => {
            for p in paths {
                sb.remove(&sandbox_arg(&p)?, recursive).await?;
            }
            Ok(())
        }
        Command::Mkdir { parents, paths } => {
            for p in paths {
                sb.mkdir(&sandbox_arg(&p)?, parents).await?;
            }
            Ok(())
        }
        Command::Mappings => mappings(&sb, &id, json),
        Command::Check { write } => check(&sb, write, json).await,
        Command::Conformance { mount } => conformance(&sb, mount, json).await,
    }
}

/// A path that must be in the sandbox.
fn sandbox_arg(s: &str) -> Result<String, Error> {
    match s.strip_prefix("corral:") {
        Some("") => Ok("/".to_owned()),
        Some(p) => Ok(p.to_owned()),
        None => Err(Error::invalid_input(format!(
            "{s:?} is not a sandbox path: write sandbox paths as corral:/PATH"
        ))),
    }
}

fn time_text(t: Option<std::time::SystemTime>) -> String {
    t.map(|t| {
        chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
    .unwrap_or_else(|| "-".to_owned())
}

fn entry_json(
    name: &str,
    kind: EntryKind,
    size: u64,
    modified: Option<std::time::SystemTime>,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": if kind == EntryKind::Directory { "directory" } else { "file" },
        "size": size,
        "modified": modified.map(|_| time_text(modified)),
    })
}

async fn ls(sb: &UserSandbox, path: &str, long: bool, json: bool) -> Result<(), Error> {
    let mut entries = sb.list(path);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut any = false;
    while let Some(e) = entries.next().await {
        let e: DirEntry = e?;
        any = true;
        let line = if json {
            entry_json(&e.name, e.kind, e.size, e.modified).to_string()
        } else if long {
            let t = if e.is_dir() { 'd' } else { '-' };
            format!(
                "{t} {:>14} {:<20} {}{}",
                e.size,
                time_text(e.modified),
                e.name,
                if e.is_dir() { "/" } else { "" }
            )
        } else {
            format!("{}{}", e.name, if e.is_dir() { "/" } else { "" })
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    if !any {
        // An empty listing: say whether the directory exists at all.
        let entry = sb.stat(path).await?;
        if entry.kind == EntryKind::File {
            println!("{}", entry.path);
        }
    }
    Ok(())
}

async fn stat(sb: &UserSandbox, path: &str, json: bool) -> Result<(), Error> {
    let e = sb.stat(path).await?;
    if json {
        println!(
            "{}",
            entry_json(&e.path.to_string(), e.kind, e.size, e.modified)
        );
    } else {
        println!("path: {}", e.path);
        println!(
            "type: {}",
            if e.kind == EntryKind::Directory {
                "directory"
            } else {
                "file"
            }
        );
        if e.kind == EntryKind::File {
            println!("size: {} ({})", e.size, human(e.size));
            println!("modified: {}", time_text(e.modified));
        }
    }
    Ok(())
}

async fn cat(sb: &UserSandbox, path: &str) -> Result<(), Error> {
    let mut d = sb.open(path).await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = d.next_chunk().await? {
        if let Err(e) = stdout.write_all(&chunk) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Error::new(
                ErrorKind::Other,
                format!("writing to standard output: {e}"),
            ));
        }
    }
    let _ = stdout.flush();
    Ok(())
}

fn local_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("{what} {}: {e}", path.display()))
}

/// One file to move, and where.
enum Job {
    Upload(PathBuf, String),
    Download(String, PathBuf),
}

fn base_name(s: &str) -> String {
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn join_sandbox(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// How `cp` copies.
struct CpOptions<'a> {
    recursive: bool,
    mode: Option<OverwriteMode>,
    json: bool,
    journal: Option<&'a Resumable>,
    stale_after: Duration,
    verify: bool,
}

/// The CRC-64 of a local file and of a sandbox file must agree.
async fn verify_copy(sb: &UserSandbox, local: &Path, remote: &str) -> Result<(), Error> {
    let path = local.to_path_buf();
    let local_crc = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut f = std::fs::File::open(&path)?;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                return Ok(digest.finalize());
            }
            digest.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
    .map_err(|e| local_err(local, "cannot read", e))?;
    let mut d = sb.open(remote).await?;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    while let Some(chunk) = d.next_chunk().await? {
        digest.update(&chunk);
    }
    if digest.finalize() != local_crc {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            format!(
                "verification failed: {remote} does not match {} (CRC-64 differs)",
                local.display()
            ),
        ));
    }
    Ok(())
}

async fn cp(
    sb: &UserSandbox,
    sources: &[String],
    dst: &str,
    options: &CpOptions<'_>,
) -> Result<(), Error> {
    let CpOptions {
        recursive,
        mode,
        json,
        journal,
        stale_after,
        verify,
    } = *options;
    let started = Instant::now();
    if let Some(jr) = journal {
        sweep_stale(sb, &jr.journal, stale_after, jr.resume).await;
    }
    let dst_sandbox = dst
        .strip_prefix("corral:")
        .map(|p| if p.is_empty() { "/" } else { p });
    // Is the destination a directory to copy into?
    let dst_is_dir = match dst_sandbox {
        Some(p) => {
            p.ends_with('/')
                || sb
                    .stat(p)
                    .await
                    .map(|e| e.kind == EntryKind::Directory)
                    .unwrap_or(false)
        }
        None => dst.ends_with('/') || Path::new(dst).is_dir(),
    };
    if sources.len() > 1 && !dst_is_dir {
        return Err(Error::invalid_input(format!(
            "copying several sources needs a directory as destination; {dst} is not one"
        )));
    }
    let mut jobs = Vec::new();
    let mut within = corral::Copied::default();
    for src in sources {
        let name = base_name(src.strip_prefix("corral:").unwrap_or(src));
        match (src.strip_prefix("corral:"), dst_sandbox) {
            (None, None) => {
                return Err(Error::invalid_input(
                    "one side of cp must be a sandbox path (corral:/PATH)",
                ));
            }
            (Some(s), Some(d)) => {
                let s = if s.is_empty() { "/" } else { s };
                let target = if dst_is_dir {
                    join_sandbox(d, &name)
                } else {
                    d.to_owned()
                };
                let copied = sb.copy(s, &target, recursive).await?;
                within.files += copied.files;
                within.bytes += copied.bytes;
            }
            (None, Some(d)) => {
                let local = PathBuf::from(src);
                let target = if dst_is_dir {
                    join_sandbox(d, &name)
                } else {
                    d.to_owned()
                };
                let meta =
                    std::fs::metadata(&local).map_err(|e| local_err(&local, "cannot read", e))?;
                if meta.is_dir() {
                    if !recursive {
                        return Err(Error::invalid_input(format!(
                            "{src} is a directory (use -r)"
                        )));
                    }
                    walk_local(&local, &target, sb, &mut jobs).await?;
                } else {
                    jobs.push(Job::Upload(local, target));
                }
            }
            (Some(s), None) => {
                let s = if s.is_empty() { "/" } else { s };
                let target = if dst_is_dir {
                    Path::new(dst).join(&name)
                } else {
                    PathBuf::from(dst)
                };
                let entry = sb.stat(s).await?;
                if entry.kind == EntryKind::Directory {
                    if !recursive {
                        return Err(Error::invalid_input(format!(
                            "{src} is a directory (use -r)"
                        )));
                    }
                    walk_sandbox(sb, s, &target, &mut jobs).await?;
                } else {
                    jobs.push(Job::Download(s.to_owned(), target));
                }
            }
        }
    }
    let files = jobs.len() as u64 + within.files;
    let notices = std::sync::Mutex::new(Vec::<String>::new());
    let sent = std::sync::atomic::AtomicU64::new(0);
    // Several files at once; the cache's admission bounds the bytes in flight.
    let bytes: u64 = futures::stream::iter(jobs)
        .map(|job| {
            let (notices, sent) = (&notices, &sent);
            async move {
                match job {
                    Job::Upload(local, target) => {
                        let up = upload_file(sb, &local, &target, mode, journal).await?;
                        if verify {
                            verify_copy(sb, &local, &target).await?;
                        }
                        if let Some(msg) = up.notice {
                            notices.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
                        }
                        sent.fetch_add(up.sent, std::sync::atomic::Ordering::Relaxed);
                        Ok::<u64, Error>(up.size)
                    }
                    Job::Download(src, local) => {
                        let n = download_file(sb, &src, &local).await?;
                        if verify {
                            verify_copy(sb, &local, &src).await?;
                        }
                        Ok(n)
                    }
                }
            }
        })
        .buffer_unordered(8)
        .try_fold(within.bytes, |acc, n| async move { Ok(acc + n) })
        .await?;
    let mut notices = notices.into_inner().unwrap_or_default();
    notices.sort();
    notices.dedup();
    for n in &notices {
        eprintln!("corral: {n}");
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"files": files, "bytes": bytes, "bytes_sent": sent.load(std::sync::atomic::Ordering::Relaxed), "seconds": secs, "notices": notices})
        );
    } else if files > 0 && std::io::stderr().is_terminal() {
        eprintln!(
            "corral: copied {files} file(s), {} in {secs:.1} s ({}/s)",
            human(bytes),
            human((bytes as f64 / secs.max(1e-3)) as u64)
        );
    }
    Ok(())
}

async fn walk_local(
    dir: &Path,
    target: &str,
    sb: &UserSandbox,
    jobs: &mut Vec<Job>,
) -> Result<(), Error> {
    sb.mkdir(target, true).await?;
    let mut stack = vec![(dir.to_path_buf(), target.to_owned())];
    while let Some((d, t)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| local_err(&d, "cannot read directory", e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(path = %entry.path().display(), "skipping a file name that is not UTF-8");
                continue;
            };
            let path = entry.path();
            let child = join_sandbox(&t, &name);
            // Not followed: a link could lead anywhere, or back up the tree.
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| local_err(&path, "cannot read", e))?;
            if meta.is_dir() {
                sb.mkdir(&child, true).await?;
                stack.push((path, child));
            } else if meta.is_file() {
                jobs.push(Job::Upload(path, child));
            } else {
                tracing::warn!(path = %path.display(), "skipping a link or special file");
            }
        }
    }
    Ok(())
}

async fn walk_sandbox(
    sb: &UserSandbox,
    dir: &str,
    target: &Path,
    jobs: &mut Vec<Job>,
) -> Result<(), Error> {
    let mut stack = vec![(dir.to_owned(), target.to_path_buf())];
    while let Some((d, t)) = stack.pop() {
        std::fs::create_dir_all(&t).map_err(|e| local_err(&t, "cannot create directory", e))?;
        let entries: Vec<DirEntry> = sb.list(&d).try_collect().await?;
        for e in entries {
            let child = join_sandbox(&d, &e.name);
            if e.is_dir() {
                stack.push((child, t.join(&e.name)));
            } else {
                jobs.push(Job::Download(child, t.join(&e.name)));
            }
        }
    }
    Ok(())
}

/// A progress bar that appears only on a terminal and only after a second.
struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    shown: bool,
    terminal: bool,
}

impl Progress {
    fn new(len: u64, name: &str) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::hidden(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(name.to_owned());
        Self {
            bar,
            started: Instant::now(),
            shown: false,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.bar.inc(n);
        if !self.shown && self.terminal && self.started.elapsed() > Duration::from_secs(1) {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Aborts the uploads of entries whose process is gone and that are older
/// than `stale_after` or were abandoned (their abort failed; a `--resume` run
/// leaves those to the copy of their file), and removes the entries; says
/// what it did.
async fn sweep_stale(sb: &UserSandbox, journal: &Journal, stale_after: Duration, resume: bool) {
    for (path, entry) in journal.entries() {
        let alive =
            entry.pid != std::process::id() && Path::new(&format!("/proc/{}", entry.pid)).exists();
        let stale = entry.age_secs() >= stale_after.as_secs() || (entry.abandoned && !resume);
        if entry.upload_id.is_empty() || alive || !stale {
            continue;
        }
        match sb.object(&entry.path) {
            Ok((storage, key, _)) if key.as_str() == entry.key => {
                if !abort_entry(&storage, &entry).await {
                    continue; // kept for the next run
                }
                Journal::remove(&path);
                eprintln!(
                    "corral: aborted the interrupted upload of {} ({} of its parts were sent, {} s ago)",
                    entry.path,
                    entry.parts.len(),
                    entry.age_secs()
                );
            }
            _ => {
                tracing::warn!(path = %entry.path, "a journal entry no longer matches the mappings; left as is")
            }
        }
    }
}

/// The journal of a `cp` run: where entries go, and whether to resume.
struct Resumable {
    journal: Journal,
    resume: bool,
}

/// What one upload did.
struct Uploaded {
    size: u64,
    sent: u64,
    notice: Option<String>,
}

/// Aborts the upload of `entry`; false (having said why) if it is still pending.
async fn abort_entry(
    storage: &Arc<dyn corral_domain::ObjectStorage>,
    entry: &JournalEntry,
) -> bool {
    let key = corral_domain::ObjectKey::from_raw(entry.key.clone());
    match storage
        .abort_multipart(&key, &UploadId(entry.upload_id.clone()))
        .await
    {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) => {
            eprintln!(
                "corral: could not abort upload {} of {}: {e} (`corral uploads abort` removes it)",
                entry.upload_id, entry.path
            );
            false
        }
    }
}

/// Why a journal entry no longer matches its source, if it does not.
async fn verify_source(entry: &JournalEntry, now: &SourceId, local: &Path) -> Result<(), String> {
    if entry.source.size != now.size {
        return Err(format!(
            "the source's size changed ({} -> {} bytes)",
            entry.source.size, now.size
        ));
    }
    if entry.source.mtime_ns != now.mtime_ns {
        return Err("the source was modified since the upload started".to_owned());
    }
    let (local, parts, part_size) = (local.to_path_buf(), entry.parts.clone(), entry.part_size);
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&local).map_err(|e| format!("cannot read the source: {e}"))?;
        for p in parts {
            let start = (u64::from(p.number) - 1) * part_size;
            let len = part_size.min(now_size(&f)?.saturating_sub(start)) as usize;
            let mut buf = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, start)
                .map_err(|e| format!("cannot read the source: {e}"))?;
            if part_checksum(&buf) != p.crc64 {
                return Err(format!(
                    "part {} of the source no longer matches what was sent",
                    p.number
                ));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn now_size(f: &std::fs::File) -> Result<u64, String> {
    f.metadata().map(|m| m.len()).map_err(|e| e.to_string())
}

async fn upload_file(
    sb: &UserSandbox,
    local: &Path,
    target: &str,
    mode: Option<OverwriteMode>,
    journal: Option<&Resumable>,
) -> Result<Uploaded, Error> {
    let source = SourceId::of(local).map_err(|e| local_err(local, "cannot read", e))?;
    let size = source.size;
    let (storage, key, mount) = sb.object(target)?;
    let journal = journal.filter(|_| storage.capabilities().resume);
    let mut _guard = None;
    let (mut writer, notice) = match journal {
        None => {
            let w = sb.create(target, Some(size), mode).await?;
            let notice = w.decision().notice();
            (w, notice)
        }
        Some(jr) => {
            let path = jr
                .journal
                .path_for(&mount.to_string(), key.as_str(), &source.path);
            let mut resumed = None;
            if let Some(entry) = Journal::load(&path).filter(|e| !e.upload_id.is_empty()) {
                if jr.resume {
                    match verify_source(&entry, &source, local).await {
                        Ok(()) => resumed = Some(entry),
                        Err(why) => {
                            eprintln!("corral: {target}: restarting the upload from zero: {why}");
                            abort_entry(&storage, &entry).await;
                            Journal::remove(&path);
                        }
                    }
                } else {
                    abort_entry(&storage, &entry).await;
                    Journal::remove(&path);
                    eprintln!(
                        "corral: aborted the interrupted upload of {target} (cp --resume continues one)"
                    );
                }
            }
            let guard = _guard.insert(EntryGuard::new(path.clone()));
            match resumed {
                Some(mut entry) => {
                    // Being continued by this process, it is no longer
                    // abandoned, nor stale for a concurrent run's sweep.
                    entry.abandoned = false;
                    entry.pid = std::process::id();
                    Journal::write(&path, &entry)?;
                    eprintln!(
                        "corral: {target}: resuming the upload: {} of {} parts are on the server",
                        entry.parts.len(),
                        size.div_ceil(entry.part_size)
                    );
                    let mut w = sb
                        .resume(
                            target,
                            size,
                            entry.part_size,
                            UploadId(entry.upload_id.clone()),
                            entry.completed(),
                        )
                        .await?;
                    w.set_journal(Box::new(guard.writer(entry)));
                    (w, None)
                }
                None => {
                    let mut w = sb.create(target, Some(size), mode).await?;
                    let notice = w.decision().notice();
                    let entry = JournalEntry {
                        version: 1,
                        mount: mount.to_string(),
                        path: target.to_owned(),
                        key: key.as_str().to_owned(),
                        upload_id: String::new(),
                        part_size: w.part_size(),
                        source: source.clone(),
                        parts: Vec::new(),
                        started: 0,
                        pid: std::process::id(),
                        abandoned: false,
                    };
                    w.set_journal(Box::new(guard.writer(entry)));
                    (w, notice)
                }
            }
        }
    };
    let part = writer.part_size();
    let done: std::collections::BTreeSet<u64> = writer.parts_sent().into_iter().collect();
    let mut progress = Progress::new(size, &base_name(target));
    let mut sent = 0u64;
    let sending = async {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| local_err(local, "cannot read", e))?;
        // Reads of at most one default part: fewer trips through the blocking pool.
        let mut buf = vec![0u8; (8 << 20).min(size.max(1) as usize)];
        for n in 1..=size.div_ceil(part) {
            let (start, end) = ((n - 1) * part, (n * part).min(size));
            if done.contains(&n) {
                progress.advance(end - start);
                continue;
            }
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| local_err(local, "cannot read", e))?;
            let mut at = start;
            while at < end {
                let want = buf.len().min((end - at) as usize);
                let n = file
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| local_err(local, "cannot read", e))?;
                if n == 0 {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "{} changed size while it was read ({size} -> {at} bytes)",
                            local.display()
                        ),
                    ));
                }
                writer.write_at(at, &buf[..n]).await?;
                at += n as u64;
                sent += n as u64;
                progress.advance(n as u64);
            }
        }
        Ok(())
    };
    if let Err(e) = sending.await {
        return Err(writer.cancel(e).await);
    }
    writer.finish().await?;
    Ok(Uploaded { size, sent, notice })
}

async fn download_file(sb: &UserSandbox, src: &str, local: &Path) -> Result<u64, Error> {
    let size = sb.stat(src).await?.size;
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut progress = Progress::new(size, &name);
    sb.download_to_file(src, local, |n| progress.advance(n))
        .await
}

/// The user's mounts that can list pending uploads, with their backends.
fn upload_mounts(
    sb: &UserSandbox,
) -> Vec<(
    String,
    Arc<dyn corral_domain::ObjectStorage>,
    corral_domain::SandboxRoot,
)> {
    sb.view()
        .mounts()
        .iter()
        .filter_map(|m| {
            let point = m.point.to_string();
            let (storage, root) = sb.backend(&point).ok()?;
            storage
                .capabilities()
                .multipart
                .then_some((point, storage, root))
        })
        .collect()
}

async fn uploads(sb: &UserSandbox, cmd: UploadsCommand, json: bool) -> Result<(), Error> {
    let now = std::time::SystemTime::now();
    let age = |u: &corral_domain::port::PendingUpload| {
        u.initiated.and_then(|t| now.duration_since(t).ok())
    };
    match cmd {
        UploadsCommand::List { older_than } => {
            let mut rows = Vec::new();
            for (point, storage, root) in upload_mounts(sb) {
                let pending = storage
                    .list_pending_uploads(&corral_domain::ObjectKey::from_raw(root.prefix()))
                    .await?;
                for u in pending {
                    let Some(path) = root.entry_for(u.key.as_str()) else {
                        continue;
                    };
                    if older_than.is_some_and(|min| age(&u).is_none_or(|a| a < min)) {
                        continue;
                    }
                    let shown = if point == "/" {
                        path.to_string()
                    } else {
                        format!("{point}{path}")
                    };
                    rows.push((shown, u.upload_id.0.clone(), age(&u).map(|a| a.as_secs())));
                }
            }
            for (path, id, secs) in &rows {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"path": path, "upload_id": id, "age_seconds": secs})
                    );
                } else {
                    let age = secs
                        .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                        .unwrap_or_else(|| "?".into());
                    println!("{path}\t{id}\t{age}");
                }
            }
            Ok(())
        }
        UploadsCommand::Abort {
            older_than,
            all,
            upload_id,
        } => {
            if older_than.is_none() && !all && upload_id.is_none() {
                return Err(Error::invalid_input(
                    "say which uploads to abort: --older-than AGE, --all, or an UPLOAD_ID",
                ));
            }
            let mut aborted = 0;
            for (_, storage, root) in upload_mounts(sb) {
                let pending = storage
                    .list_pending_uploads(&corral_domain::ObjectKey::from_raw(root.prefix()))
                    .await?;
                for u in pending {
                    // Only what lies inside this user's sandbox.
                    if root.entry_for(u.key.as_str()).is_none() {
                        continue;
                    }
                    let chosen = all
                        || upload_id.as_deref() == Some(u.upload_id.0.as_str())
                        || older_than.is_some_and(|min| age(&u).is_some_and(|a| a >= min));
                    if chosen {
                        storage.abort_multipart(&u.key, &u.upload_id).await?;
                        aborted += 1;
                    }
                }
            }
            if let Some(id) = upload_id
                && aborted == 0
            {
                return Err(Error::not_found(format!(
                    "no pending upload {id} in your sandbox"
                )));
            }
            if json {
                println!("{}", serde_json::json!({"aborted": aborted}));
            } else {
                println!("aborted {aborted} upload(s)");
            }
            Ok(())
        }
        UploadsCommand::Lifecycle { days, replace } => {
            let mounts = upload_mounts(sb);
            if mounts.is_empty() {
                return Err(Error::unsupported("no mount of this user is on S3"));
            }
            for (point, storage, _) in mounts {
                storage.set_upload_expiry(days, replace).await?;
                println!(
                    "{point}: incomplete multipart uploads are aborted {days} day(s) after they start"
                );
            }
            Ok(())
        }
    }
}

async fn conformance(sb: &UserSandbox, mount: Option<String>, json: bool) -> Result<(), Error> {
    let mount = match mount {
        Some(m) => m,
        None => sb
            .view()
            .mounts()
            .first()
            .map(|m| m.point.to_string())
            .ok_or_else(|| Error::not_found("the user has no mount"))?,
    };
    let (storage, root) = sb.backend(&mount)?;
    let name = format!("{} mount {mount}", storage.capabilities().name);
    // The run works in a random directory below the user's prefix and removes it.
    let target = corral_conformance::Target::new(name, storage).with_base(root.prefix());
    let report = corral_conformance::run(&target).await;
    if json {
        let cases: Vec<_> = report
            .cases
            .iter()
            .map(|c| {
                let (result, detail) = match &c.outcome {
                    corral_conformance::Outcome::Pass => ("pass", String::new()),
                    corral_conformance::Outcome::Fail(d) => ("fail", d.clone()),
                    corral_conformance::Outcome::Unsupported(d) => ("unsupported", d.clone()),
                };
                serde_json::json!({"area": c.area.to_string(), "case": c.name, "result": result, "detail": detail, "ms": c.elapsed.as_millis() as u64})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"target": report.target, "cases": cases, "cleanup": report.cleanup})
        );
    } else {
        print!("{report}");
    }
    let failures = report.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Other,
            format!(
                "{} conformance case(s) failed: {}",
                failures.len(),
                failures.join("; ")
            ),
        ))
    }
}

fn mappings(sb: &UserSandbox, id: &Identity, json: bool) -> Result<(), Error> {
    let mut rows = Vec::new();
    for m in sb.view().mounts() {
        let row = match &m.spec {
            ResolvedSpec::File { dir } => {
                serde_json::json!({"mount": m.point.to_string(), "type": "File", "directory": dir})
            }
            ResolvedSpec::Memory { root } => {
                serde_json::json!({"mount": m.point.to_string(), "type": "Memory", "prefix": root.prefix()})
            }
            ResolvedSpec::S3 { spec, root } => serde_json::json!({
                "mount": m.point.to_string(),
                "type": "S3",
                "bucket": spec.bucket_name,
                "prefix": root.prefix(),
                "region": spec.region,
                "endpoint": spec.endpoint.as_ref().map(|u| u.as_str().trim_end_matches('/').to_owned()),
                "accessKeyId": spec.credentials.as_ref().map(|c| c.access_key_id.clone()),
                "secretKey": spec.credentials.as_ref().map(|c| c.secret_key.to_string()),
                "sessionToken": spec.credentials.as_ref().and_then(|c| c.session_token.as_ref().map(|t| t.to_string())),
                "proxy": spec.proxy.as_ref().map(|p| format!("{}://{}:{}", p.scheme, p.host, p.port)),
                "proxyUserName": spec.proxy.as_ref().and_then(|p| p.user_name.clone()),
                "proxyPassword": spec.proxy.as_ref().and_then(|p| p.password.as_ref().map(|s| s.to_string())),
                "verifySSL": spec.verify_ssl,
                "caFile": spec.ca_file,
                "caPath": spec.ca_path,
            }),
            _ => serde_json::json!({"mount": m.point.to_string(), "type": m.spec.type_name()}),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::json!({"user": id.user, "mounts": rows}));
    } else {
        println!("user {}:", id.user);
        if !sb.view().has_root_mount() {
            println!("  /  (read-only: lists the mounts)");
        }
        for r in rows {
            let fields: Vec<String> = r
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| *k != "mount" && !v.is_null())
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect();
            println!(
                "  {}  {}",
                r["mount"].as_str().unwrap_or("?"),
                fields.join(" ")
            );
        }
    }
    Ok(())
}

async fn check(sb: &UserSandbox, write: bool, json: bool) -> Result<(), Error> {
    let mut failed = None;
    let mut report = Vec::new();
    for m in sb.view().mounts() {
        let point = m.point.to_string();
        let result = async {
            // A listing reaches the bucket itself (a missing bucket, bad credentials).
            let mut entries = sb.list(&point);
            if let Some(Err(e)) = entries.next().await {
                return Err(e);
            }
            if write {
                let probe = join_sandbox(&point, &format!(".corral-check-{}", std::process::id()));
                sb.write(&probe, b"corral check", None).await?;
                let back = sb.read(&probe).await;
                sb.remove(&probe, false).await?;
                if back?.as_ref() != b"corral check" {
                    return Err(Error::new(
                        ErrorKind::InvalidResponse,
                        "the probe object read back differs",
                    ));
                }
            }
            Ok(())
        }
        .await;
        let status = match &result {
            Ok(()) => if write {
                "ok (read, write, delete)"
            } else {
                "ok"
            }
            .to_owned(),
            Err(e) => format!("FAILED: {e}"),
        };
        report.push(serde_json::json!({"mount": point, "type": m.spec.type_name(), "ok": result.is_ok(), "detail": status}));
        if !json {
            println!("{point:<20} {:<7} {status}", m.spec.type_name());
        }
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
    }
    if json {
        println!("{}", serde_json::json!({"mounts": report}));
    }
    match failed {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
