//! One file per command; each parses nothing and decides nothing: it calls
//! the library and prints.

mod cat;
mod check;
mod conformance;
mod cp;
mod ls;
mod mappings;
mod simple;
mod stat;
mod uploads;

use corral::transfer::Location;
use corral::{SandboxPath, UserSandbox};

use crate::cli::args::{Command, Global};
use crate::cli::output::{Out, Outcome};

/// Runs `command` for the user of `sb`.
pub(crate) async fn run(sb: &UserSandbox, global: &Global, command: Command) -> Outcome {
    let mut out = Out::new();
    let json = global.json;
    // Paths are parsed here, once, by the library's strict rules: what the
    // commands below hand on are parsed paths.
    let parsed = |p: &str| p.to_virtual();
    let all = |ps: &[String]| {
        ps.iter()
            .map(|p| p.to_virtual())
            .collect::<Result<Vec<_>, _>>()
    };
    let r = match command {
        Command::Ls { long, path } => {
            ls::run(
                sb,
                &mut out,
                &parsed(path.as_deref().unwrap_or("/"))?,
                long,
                json,
            )
            .await
        }
        Command::Stat { path } => stat::run(sb, &mut out, &parsed(&path)?, json).await,
        Command::Cat { path } => cat::run(sb, &mut out, &parsed(&path)?).await,
        Command::Cp {
            recursive,
            overwrite,
            verify,
            resume,
            stale_after,
            transfers,
            paths,
        } => {
            let options = corral::transfer::CopyOptions {
                recursive,
                overwrite,
                verify,
                resume,
                stale_after,
                transfers: usize::from(transfers),
                journal_dir: Some(
                    global
                        .state_dir
                        .clone()
                        .unwrap_or_else(corral::journal::Journal::default_dir),
                ),
            };
            let paths = paths
                .iter()
                .map(|p| Location::parse(p))
                .collect::<Result<Vec<_>, _>>()?;
            cp::run(sb, &mut out, paths, &options, json).await
        }
        Command::Uploads(cmd) => uploads::run(sb, &mut out, cmd, json).await,
        Command::Mv { from, to } => {
            simple::mv(sb, &mut out, &parsed(&from)?, &parsed(&to)?, json).await
        }
        Command::Rm { recursive, paths } => simple::rm(sb, &all(&paths)?, recursive).await,
        Command::Mkdir { parents, paths } => simple::mkdir(sb, &all(&paths)?, parents).await,
        Command::Mappings => mappings::run(sb, &mut out, json),
        Command::Check { write } => check::run(sb, &mut out, write, json).await,
        Command::Conformance { mount } => conformance::run(sb, &mut out, mount, json).await,
        // Dispatched before a sandbox is opened.
        Command::Admin(_) => Ok(()),
        #[cfg(feature = "serve")]
        Command::Serve(_) => Ok(()),
        #[cfg(feature = "serve")]
        Command::Passwd => Ok(()),
    };
    r.and_then(|()| out.flush())
}
