//! The `meridian` binary: parse the command line and run it (see `cli`).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: after a big zone is compiled (or replaced by a
/// reload) the freed memory goes back to the OS instead of staying in a fragmented heap, and
/// the many small allocations of compiling a zone are cheaper (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
