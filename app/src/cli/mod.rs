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

use clap::Parser;
use corral::cache::{CacheConfig, wait_for_background_aborts};
use corral::config::{ConfigFile, DEFAULT_SANDBOX_DIR};
use corral::{Corral, Error, ErrorKind, Identity};

use args::{Cli, Global};
use output::Failure;

/// The exit code of an error (see the help's list).
fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::EscapesSandbox => 4,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => 5,
        ErrorKind::InvalidInput => 2,
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
        "recursive" => "-r",
        "parents" => "-p",
        _ => return None,
    })
}

/// The command's entry point.
#[allow(clippy::print_stderr)] // Errors and notices go to stderr.
pub(crate) fn main() -> ExitCode {
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
            _ = tokio::signal::ctrl_c() => Err(Error::new(ErrorKind::Cancelled, "interrupted").into()),
        };
        // Uploads dropped unfinished (an error, Ctrl-C) abort in the background: wait for them.
        let late = wait_for_background_aborts(Duration::from_secs(10)).await;
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
    Ok(c)
}

async fn run(cli: Cli) -> output::Outcome {
    let g = &cli.global;
    let config = match &g.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::embedded_default(Path::new(DEFAULT_SANDBOX_DIR))?,
    };
    let corral = Corral::new(config.mappings.clone(), cache_config(g, &config)?)?;
    let sb = corral.sandbox(&identity(g))?;
    commands::run(&sb, g, cli.command).await
}
