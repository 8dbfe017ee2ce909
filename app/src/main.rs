//! The `corral` command.
//!
//! Until the command-line issue lands this binary only says so; the library
//! crates carry the sandbox rules and backends.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "corral: the command line is not built yet; the sandbox rules (corral-domain) and \
             backends (corral-adapters) are. See README.md."
        );
    }
    ExitCode::from(2)
}
