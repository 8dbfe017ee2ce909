//! The `corral` binary: its driving adapters, each in a folder of its own,
//! behind a cargo feature, and each a thin user of the `corral` library's
//! public API: the command line ([`cli`]), the serving core every server
//! shares ([`serve`]), the SFTP server ([`sftp`]) and the WebDAV server
//! ([`webdav`]).

mod cli;
#[cfg(feature = "serve")]
mod serve;
#[cfg(feature = "sftp")]
mod sftp;
#[cfg(feature = "webdav")]
mod webdav;

fn main() -> std::process::ExitCode {
    cli::main()
}
