//! The `corral` command: parses arguments, calls the library, prints. Every
//! rule and every operation is the library's ([`corral::UserSandbox`]); this
//! folder holds the arguments ([`args`]), the output ([`output`]) and one
//! file per command ([`commands`]).

mod args;
mod commands;
mod output;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use corral::cache::{CacheConfig, TransferCache};
use corral::config::{ConfigFile, DEFAULT_SANDBOX_DIR};
use corral::{Corral, Error, ErrorKind, Identity};

#[cfg(feature = "serve")]
use args::ServeCommand;
use args::{Cli, Command, Global};
use output::Failure;

/// The command's transfer cache, once opened: its background aborts are
/// waited for before the process exits.
static CACHE: std::sync::OnceLock<TransferCache> = std::sync::OnceLock::new();

/// The exit code of an error (see the help's list).
fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::EscapesSandbox => 4,
        ErrorKind::AlreadyExists | ErrorKind::Conflict | ErrorKind::DirectoryNotEmpty => 5,
        ErrorKind::InvalidInput | ErrorKind::IsADirectory | ErrorKind::NotADirectory => 2,
        _ => 1,
    }
}

/// The flag that sets a setting an error names, as advice.
fn advice(e: &Error) -> Option<&'static str> {
    Some(match e.setting()? {
        "maxCloudCacheSize" => "--max-cloud-cache-size",
        "maxCloudCacheUploadSize" => "--max-cloud-cache-upload-size",
        "maxCloudCacheDownloadSize" => "--max-cloud-cache-download-size",
        "cloudCacheFile" => "--cloud-cache-file",
        "maxCloudCachePerUser" => "--max-cloud-cache-per-user",
        "recursive" => "-r",
        "parents" => "-p",
        _ => return None,
    })
}

/// The command's entry point.
#[allow(clippy::print_stderr)] // Errors and notices go to stderr.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    // A server logs at info by default (where it listens, its host keys,
    // one line per transfer); the command warnings only.
    let filter = match &cli.command {
        #[cfg(feature = "serve")]
        Command::Serve(server) => match server.log_level() {
            Some(level) => tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
                eprintln!("corral: --log-level {level:?}: {e}; using info");
                tracing_subscriber::EnvFilter::new("info")
            }),
            None => tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        },
        _ => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            _ = tokio::signal::ctrl_c() => Err(Error::new(ErrorKind::Cancelled, "interrupted").into()),
        };
        // Uploads dropped unfinished (an error, Ctrl-C) abort in the background: wait for them.
        let late = match CACHE.get() {
            Some(cache) => cache.settle(Duration::from_secs(10)).await,
            None => 0,
        };
        if late > 0 {
            eprintln!("corral: {late} multipart uploads could not be aborted in time; a bucket lifecycle rule for incomplete uploads removes them");
        }
        r
    });
    match result {
        Ok(()) | Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(Failure::Corral(e)) => {
            match advice(&e) {
                Some(flag) => eprintln!("corral: {e} (on the command line: {flag})"),
                None => eprintln!("corral: {e}"),
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `corral serve sftp`: the server's options from the command line and the
/// config file, then the server until the process is stopped.
#[cfg(feature = "sftp")]
async fn serve_sftp(g: &Global, a: &args::SftpArgs) -> output::Outcome {
    let core = core_options(g, &a.common).await?;
    let options = crate::sftp::Options {
        core,
        listen: a.listen,
        host_keys: a.host_key.clone(),
        idle_timeout: a.idle_timeout,
        keepalive: a.keepalive,
        max_sessions: a.max_sessions,
        max_channels: a.max_channels,
        max_handles: a.max_handles,
        overwrite: a.overwrite,
        refuse_setstat: a.setstat == args::SetStat::Refuse,
    };
    Ok(crate::sftp::serve(options).await?)
}

/// The config: `--config` (a file, or an `s3://` object with
/// `--source-options`), or the embedded default.
async fn load_config(g: &Global) -> Result<ConfigFile, Error> {
    match &g.config {
        Some(path) => {
            let source = corral::source::Source::new(path, g.source_options.as_deref())?;
            match source.local_path() {
                Some(p) => ConfigFile::load(p),
                None => ConfigFile::parse(&source.read().await?.text, source.name()),
            }
        }
        None => ConfigFile::embedded_default(Path::new(DEFAULT_SANDBOX_DIR)),
    }
}

/// The serving core's options, from the command line and the config (a
/// file, or an `s3://` object read here for its cache section).
#[cfg(feature = "serve")]
async fn core_options(
    g: &Global,
    f: &args::ServeCommon,
) -> Result<crate::serve::CoreOptions, Failure> {
    let file = load_config(g).await?;
    let cache = cache_config(g, &file)?;
    // One user never holds the whole cache of a server.
    let per_user = cache
        .per_user
        .unwrap_or_else(|| cache.server_default_per_user());
    let shared = |p: &Path| p.to_string_lossy().starts_with("s3://");
    let polled = shared(&f.users) || g.config.as_deref().is_some_and(shared);
    Ok(crate::serve::CoreOptions {
        users: f.users.clone(),
        config: g.config.clone(),
        source_options: g.source_options.clone(),
        reload_every: f.reload_every.or(polled.then_some(Duration::from_secs(30))),
        cache: CacheConfig {
            wait: f.cache_wait,
            per_user: Some(per_user),
            ..cache
        },
        metrics: f.metrics,
        max_sessions_per_user: f.max_sessions_per_user,
        partial_retention: f.partial_retention,
        proxy_from: f.proxy_protocol_from.clone(),
    })
}

/// `corral serve webdav`.
#[cfg(feature = "webdav")]
async fn serve_webdav(g: &Global, a: &args::WebdavArgs) -> output::Outcome {
    let core = core_options(g, &a.common).await?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let options = crate::webdav::Options {
        core,
        listen: a.listen,
        tls,
        allow_insecure: a.allow_insecure,
        max_connections: a.max_connections,
        idle_timeout: a.idle_timeout,
    };
    Ok(crate::webdav::serve(options).await?)
}

/// `corral passwd`: a hash of the password read from standard input
/// (without echo on a terminal).
#[cfg(feature = "serve")]
#[allow(clippy::print_stdout, clippy::print_stderr)] // The hash is the output; the prompt goes to stderr.
fn passwd() -> output::Outcome {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal {
        eprint!("password: ");
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        }
        saved
    } else {
        None
    };
    let mut line = String::new();
    let mut again = String::new();
    let mut read = stdin.lock().read_line(&mut line);
    if terminal && read.is_ok() {
        // On a terminal, twice: a typo would lock the user out.
        eprint!("\nagain: ");
        read = stdin.lock().read_line(&mut again);
    }
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    read.map_err(|e| Error::new(ErrorKind::Other, format!("reading the password: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if terminal && again.trim_end_matches(['\r', '\n']) != password {
        return Err(Error::invalid_input("the two passwords differ; nothing was printed").into());
    }
    if password.is_empty() {
        return Err(Error::invalid_input("an empty password is refused").into());
    }
    let hash = crate::serve::users::hash_password(password)?;
    let mut out = output::Out::new();
    out.line(&hash)
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
    let f = &g.cache;
    if let Some(n) = f.max_cloud_cache_size {
        c.total = n;
    }
    if let Some(n) = f.max_cloud_cache_upload_size {
        c.upload = n;
    }
    if let Some(n) = f.max_cloud_cache_download_size {
        c.download = n;
    }
    if let Some(p) = &f.cloud_cache_file {
        c.file = Some(p.clone());
    }
    if let Some(n) = f.max_cloud_cache_per_user {
        c.per_user = Some(n);
    }
    Ok(c)
}

/// `corral admin mappings set|delete`: the config file edited in place.
async fn admin_mappings(g: &Global, m: &args::AdminMappings) -> output::Outcome {
    let Some(path) = &g.config else {
        return Err(Error::invalid_input(
            "say which config to change: --config FILE or s3://BUCKET/KEY (or CORRAL_CONFIG)",
        )
        .into());
    };
    let (user, mounts) = match m {
        args::AdminMappings::Set { user, mounts } => {
            let value: serde_json::Value = serde_json::from_str(mounts)
                .map_err(|e| Error::invalid_input(format!("the mappings of user {user:?}: {e}")))?;
            (user, Some(value))
        }
        args::AdminMappings::Delete { user } => (user, None),
    };
    let source = corral::source::Source::new(path, g.source_options.as_deref())?;
    source.edit_mappings(user, mounts).await?;
    Ok(())
}

/// `corral admin users set|delete`: the users file or object, changed whole
/// and checked as a server reads it.
#[cfg(feature = "serve")]
async fn admin_users(g: &Global, u: &args::AdminUsers) -> output::Outcome {
    let (user, entry, users) = match u {
        args::AdminUsers::Set { user, entry, users } => {
            let value: serde_json::Value = serde_json::from_str(entry)
                .map_err(|e| Error::invalid_input(format!("the entry of user {user:?}: {e}")))?;
            (user, Some(value), users)
        }
        args::AdminUsers::Delete { user, users } => (user, None, users),
    };
    let source = corral::source::Source::new(users, g.source_options.as_deref())?;
    let dir = source
        .local_path()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = source.name().to_owned();
    source
        .edit(|before| crate::serve::users::edited(before, &name, &dir, user, entry.clone()))
        .await?;
    Ok(())
}

async fn run(cli: Cli) -> output::Outcome {
    let g = &cli.global;
    match &cli.command {
        #[cfg(feature = "serve")]
        Command::Passwd => return passwd(),
        #[cfg(feature = "sftp")]
        Command::Serve(ServeCommand::Sftp(a)) => return serve_sftp(g, a).await,
        #[cfg(feature = "webdav")]
        Command::Serve(ServeCommand::Webdav(a)) => return serve_webdav(g, a).await,
        Command::Admin(args::AdminCommand::Mappings(m)) => return admin_mappings(g, m).await,
        #[cfg(feature = "serve")]
        Command::Admin(args::AdminCommand::Users(u)) => return admin_users(g, u).await,
        _ => {}
    }
    let config = load_config(g).await?;
    let corral = Corral::new(config.mappings.clone(), cache_config(g, &config)?)?;
    let _ = CACHE.set(corral.cache().clone());
    let sb = corral.sandbox(&identity(g))?;
    commands::run(&sb, g, cli.command).await
}
