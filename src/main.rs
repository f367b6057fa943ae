//! The `meridian` binary: parse the command line and run it (see `cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = meridian::cli::Cli::parse();
    match meridian::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::FAILURE
        }
    }
}
