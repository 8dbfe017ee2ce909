//! The `corral` binary: its driving adapters, each in a folder of its own,
//! behind a cargo feature, and each a thin user of the `corral` library's
//! public API: the command line ([`cli`]), the serving core every server
//! shares ([`serve`]) and the SFTP server ([`sftp`]).

mod cli;
#[cfg(feature = "serve")]
mod serve;
#[cfg(feature = "sftp")]
mod sftp;

fn main() -> std::process::ExitCode {
    cli::main()
}
