//! The `grapevine` binary: parses the command line and hands over to the command.

use std::process::ExitCode;

use clap::Parser;

mod bench_ledger;
mod cli;
#[allow(dead_code)] // the driver that runs it between processes is not written yet
mod consensus;
mod dev;
mod keyfile;
mod mempool;
mod node;
mod producer;
mod recent;
mod runtime;
mod wallet;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, not a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
