//! The `corral` binary: its driving adapters, each in a folder of its own
//! and each a thin user of the `corral` library's public API: the command
//! line ([`cli`]) and the SFTP server ([`sftp`]).

mod cli;
mod sftp;

fn main() -> std::process::ExitCode {
    cli::main()
}
