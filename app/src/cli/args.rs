//! The command line: what each command takes, parsed by clap, with value
//! parsers for sizes and sandbox paths.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use corral::OverwriteMode;

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
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The command's options that mean nothing to a server: hidden from the
/// servers' help, and refused when given to a server.
const NOT_FOR_SERVERS: [&str; 5] = ["user", "domain", "full_name", "state_dir", "json"];

impl Cli {
    /// Parses the command line, or exits with clap's message. A server's
    /// help shows only what a server uses, and the command's options that
    /// mean nothing to a server are refused when given to one.
    pub(crate) fn parse_checked() -> Self {
        let mut cmd = Self::command();
        let matches = match cmd.try_get_matches_from_mut(std::env::args_os()) {
            Ok(m) => m,
            Err(e)
                if e.kind() == clap::error::ErrorKind::DisplayHelp && server_help().is_some() =>
            {
                // Hidden on a built copy, used for the help only (a built
                // command changed afterwards no longer parses right).
                let mut shown = Self::command();
                shown.build();
                let Some(name) = server_help() else { e.exit() };
                let shown = shown.mut_subcommand("serve", |serve| {
                    serve.mut_subcommand(name, |mut server| {
                        for id in NOT_FOR_SERVERS {
                            server = server.mut_arg(id, |a| a.hide(true));
                        }
                        server
                    })
                });
                if let Some(mut server) = shown
                    .find_subcommand("serve")
                    .and_then(|s| s.find_subcommand(name))
                    .cloned()
                {
                    let _ = server.print_help();
                    std::process::exit(0);
                }
                e.exit()
            }
            Err(e) => e.exit(),
        };
        if let Some(("serve", serve)) = matches.subcommand()
            && let Some((_, server)) = serve.subcommand()
            && let Some(id) = NOT_FOR_SERVERS
                .iter()
                .find(|id| server.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        {
            cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--{} means nothing to a server: it takes its users from --users (with their %d and %f values)",
                    id.replace('_', "-")
                ),
            )
            .exit();
        }
        match Self::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.format(&mut cmd).exit(),
        }
    }
}

/// The server whose help the command line asks for (`serve sftp`, `serve webdav`).
fn server_help() -> Option<&'static str> {
    let words: Vec<String> = std::env::args().collect();
    if !words.iter().any(|w| w == "serve") {
        return None;
    }
    ["sftp", "webdav"]
        .into_iter()
        .find(|name| words.iter().any(|w| w == name))
}

/// A size: bytes, or a number with a unit (64MiB, 1GiB, 500MB).
fn size(s: &str) -> Result<u64, String> {
    corral::cache::parse_size("size", s)
        .map_err(|e| e.message().trim_start_matches("size: ").to_owned())
}

/// A path that must be in the sandbox: `corral:/PATH`.
fn sandbox_path(s: &str) -> Result<String, String> {
    match s.strip_prefix("corral:") {
        Some(p) => Ok(p.to_owned()),
        None => Err(format!(
            "{s:?} is not a sandbox path: write sandbox paths as corral:/PATH"
        )),
    }
}

#[derive(Args, Debug)]
pub(crate) struct Global {
    /// The config file (JSON: "mappings" and an optional "cache" section, or
    /// the bare mappings object), or `s3://BUCKET/KEY` (with --source-options).
    #[arg(long, global = true, env = "CORRAL_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The S3 options (a JSON object, as a mapping's S3 spec: endpointOverride,
    /// accessKeyId, secretKey, region…) of a config or users file given as
    /// `s3://BUCKET/KEY`, shared by several servers.
    #[arg(
        long,
        global = true,
        env = "CORRAL_SOURCE_OPTIONS",
        value_name = "FILE"
    )]
    pub(crate) source_options: Option<PathBuf>,
    /// The user whose sandbox to use (default: the OS user).
    #[arg(long, global = true, env = "CORRAL_USER", value_name = "NAME")]
    pub(crate) user: Option<String>,
    /// The domain, for %d in sandbox paths.
    #[arg(long, global = true, value_name = "D")]
    pub(crate) domain: Option<String>,
    /// The full user name, for %f in sandbox paths.
    #[arg(long, global = true, value_name = "F")]
    pub(crate) full_name: Option<String>,
    #[command(flatten)]
    pub(crate) cache: CacheFlags,
    /// Where the journal of uploads in flight is kept (default ~/.local/state/corral).
    #[arg(long, global = true, env = "CORRAL_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Machine-readable output (JSON; one object per line for listings).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The transfer cache flags (they override the config file's `cache`).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct CacheFlags {
    /// Total transfer cache (e.g. 1GiB).
    #[arg(long, global = true, value_name = "SIZE", value_parser = size)]
    pub(crate) max_cloud_cache_size: Option<u64>,
    /// Cache for one upload at most (e.g. 64MiB).
    #[arg(long, global = true, value_name = "SIZE", value_parser = size)]
    pub(crate) max_cloud_cache_upload_size: Option<u64>,
    /// Cache for one download at most (e.g. 64MiB).
    #[arg(long, global = true, value_name = "SIZE", value_parser = size)]
    pub(crate) max_cloud_cache_download_size: Option<u64>,
    /// Stage transfers in this file (on fast local storage) instead of memory.
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) cloud_cache_file: Option<PathBuf>,
    /// The most one user holds of the cache at once (e.g. 256MiB; default:
    /// the whole cache for the command, a quarter of it for a server).
    #[arg(long, global = true, value_name = "SIZE", value_parser = size)]
    pub(crate) max_cloud_cache_per_user: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List a directory.
    Ls {
        /// Long format: type, size, modification time, name.
        #[arg(short = 'l')]
        long: bool,
        /// The directory (default corral:/).
        #[arg(value_parser = sandbox_path)]
        path: Option<String>,
    },
    /// Show a file or directory.
    Stat {
        #[arg(value_parser = sandbox_path)]
        path: String,
    },
    /// Print a file to standard output.
    Cat {
        #[arg(value_parser = sandbox_path)]
        path: String,
    },
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
        /// Files moved at once (the cache bounds the bytes in flight).
        #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
        transfers: u16,
        /// Sources, then the destination.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Multipart uploads left pending in the user's S3 prefixes, by any tool.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// Move or rename within the sandbox.
    Mv {
        #[arg(value_parser = sandbox_path)]
        from: String,
        #[arg(value_parser = sandbox_path)]
        to: String,
    },
    /// Remove files (and directories with -r).
    Rm {
        /// Remove directories and everything in them.
        #[arg(short = 'r', long)]
        recursive: bool,
        #[arg(required = true, value_parser = sandbox_path)]
        paths: Vec<String>,
    },
    /// Create directories.
    Mkdir {
        /// Create missing parents; no error if it exists.
        #[arg(short = 'p')]
        parents: bool,
        #[arg(required = true, value_parser = sandbox_path)]
        paths: Vec<String>,
    },
    /// Show the user's effective view: mounts and where they lead (secrets as ***).
    Mappings,
    /// Change the config file (`--config`) for every user: what servers
    /// reload on SIGHUP.
    #[command(subcommand)]
    Admin(AdminCommand),
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
    /// Serve users their sandboxes over a network protocol.
    #[cfg(feature = "serve")]
    #[command(subcommand)]
    Serve(ServeCommand),
    /// Print an argon2id hash of a password (read from standard input) for
    /// the users file of `corral serve sftp`.
    #[cfg(feature = "serve")]
    Passwd,
}

#[cfg(feature = "serve")]
#[derive(Subcommand, Debug)]
pub(crate) enum ServeCommand {
    /// An SFTP server: each login lands in its sandbox; all sessions share
    /// one transfer cache. SIGHUP reloads the users and the mappings.
    #[cfg(feature = "sftp")]
    Sftp(Box<SftpArgs>),
    /// A WebDAV server (HTTP Basic logins, TLS with --tls-cert): each user
    /// sees their sandbox; all requests share one transfer cache. SIGHUP
    /// reloads the users and the mappings.
    #[cfg(feature = "webdav")]
    Webdav(Box<WebdavArgs>),
}

#[cfg(feature = "webdav")]
#[derive(Args, Debug)]
pub(crate) struct WebdavArgs {
    #[command(flatten)]
    pub(crate) common: ServeCommon,
    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// The server's certificate chain (PEM): HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback: passwords then
    /// cross the network in the clear.
    #[arg(long)]
    pub(crate) allow_insecure: bool,
    /// Connections at once, in all.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) max_connections: usize,
    /// Close a connection after this long without a request.
    #[arg(long, value_name = "AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
}

/// What every server takes (`serve sftp`, `serve webdav`).
#[cfg(feature = "serve")]
#[derive(Args, Debug)]
pub(crate) struct ServeCommon {
    /// The users file (JSON: password hashes, authorized keys, %d and %f),
    /// or `s3://BUCKET/KEY` (see --source-options).
    #[arg(long, value_name = "FILE")]
    pub(crate) users: PathBuf,
    /// Serve Prometheus metrics here (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Sessions at once, per user.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub(crate) max_sessions_per_user: usize,
    /// How long a transfer waits for room when the cache is full.
    #[arg(long, value_name = "AGE", default_value = "120s", value_parser = humantime::parse_duration)]
    pub(crate) cache_wait: Duration,
    /// Multipart uploads pending under the mappings for longer than this
    /// (left by a killed process, this server's or another tool's) are
    /// aborted: at start, then every quarter of it (at most hourly).
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) partial_retention: Duration,
    /// How often the users and the mappings are looked at for a change
    /// (default: 30s when one is an `s3://` object; otherwise on SIGHUP only).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub(crate) reload_every: Option<Duration>,
    /// A TCP balancer's address (repeat, or separate with commas): its
    /// connections start with a PROXY protocol v2 header naming the client
    /// (HAProxy's `send-proxy-v2`), which logs, limits and the login lockout
    /// then see. Connections from elsewhere are taken as they come.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub(crate) proxy_protocol_from: Vec<std::net::IpAddr>,
    /// What the log shows (error, warn, info, debug, trace; or a RUST_LOG
    /// filter). Default: info, or RUST_LOG.
    #[arg(long, value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// What to do with SETSTAT requests.
#[cfg(feature = "sftp")]
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetStat {
    /// Accept them and change nothing (clients such as WinSCP fail otherwise).
    Ignore,
    /// Answer that they are not supported.
    Refuse,
}

#[cfg(feature = "sftp")]
#[derive(Args, Debug)]
pub(crate) struct SftpArgs {
    #[command(flatten)]
    pub(crate) common: ServeCommon,
    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2222")]
    pub(crate) listen: std::net::SocketAddr,
    /// A host key (made, with mode 0600, if missing: ECDSA P-256 if its
    /// name holds `ecdsa`, else ed25519). Repeatable; with one ed25519 key,
    /// an ECDSA key is kept beside it (`host_ed25519` → `host_ecdsa`).
    #[arg(long, value_name = "FILE", required = true)]
    pub(crate) host_key: Vec<PathBuf>,
    /// Close a session after this long without a request.
    #[arg(long, value_name = "AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Check that the client is there this often (3 unanswered checks end the session).
    #[arg(long, value_name = "AGE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) keepalive: Duration,
    /// Sessions at once, in all.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) max_sessions: usize,
    /// Channels per connection.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max_channels: usize,
    /// Open files and directories per session.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) max_handles: u64,
    /// The overwrite mode of uploads to File sandboxes (S3 always writes in place).
    #[arg(long, value_name = "MODE")]
    pub(crate) overwrite: Option<OverwriteMode>,
    /// SETSTAT and FSETSTAT requests.
    #[arg(long, value_enum, default_value = "ignore")]
    pub(crate) setstat: SetStat,
}

#[derive(Subcommand, Debug)]
pub(crate) enum UploadsCommand {
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

/// `corral admin`.
#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// A user's mappings, as JetStream's setSandboxMapping and
    /// deleteSandboxMapping (`corral --user U mappings` shows them).
    #[command(subcommand)]
    Mappings(AdminMappings),
    /// The servers' users file (a file, or `s3://BUCKET/KEY` shared by
    /// several instances): set or remove one user.
    #[cfg(feature = "serve")]
    #[command(subcommand)]
    Users(AdminUsers),
}

/// `corral admin users`.
#[cfg(feature = "serve")]
#[derive(Subcommand, Debug)]
pub(crate) enum AdminUsers {
    /// Set USER's entry: a JSON object, e.g. '{"password": "$argon2id$…"}'
    /// (from `corral passwd`) or '{"authorizedKeys": ["ssh-ed25519 …"]}'.
    Set {
        user: String,
        #[arg(value_name = "JSON")]
        entry: String,
        /// The users file, or `s3://BUCKET/KEY`.
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
    },
    /// Remove USER.
    Delete {
        user: String,
        /// The users file, or `s3://BUCKET/KEY`.
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
    },
}

/// `corral admin mappings`.
#[derive(Subcommand, Debug)]
pub(crate) enum AdminMappings {
    /// Set USER's mounts: a JSON object of mount points to specs, e.g.
    /// '{"": "/srv/files/%u"}'.
    Set {
        user: String,
        #[arg(value_name = "JSON")]
        mounts: String,
    },
    /// Remove USER's mappings.
    Delete { user: String },
}

#[cfg(feature = "serve")]
impl ServeCommand {
    /// The log level asked for on the command line.
    pub(crate) fn log_level(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "sftp")]
            Self::Sftp(a) => a.common.log_level.as_deref(),
            #[cfg(feature = "webdav")]
            Self::Webdav(a) => a.common.log_level.as_deref(),
        }
    }
}
