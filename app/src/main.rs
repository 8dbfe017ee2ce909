//! The `corral` binary: its driving adapters, each in a folder of its own
//! and each a thin user of the `corral` library's public API: the command
//! line ([`cli`]).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
