//! The `grapevine` binary: parses the command line and hands over to the command.

use std::process::ExitCode;

use clap::Parser;

mod bench_ledger;
mod bench_rpc;
mod cli;
mod consensus;
mod dev;
mod keyfile;
mod mempool;
mod node;
mod producer;
mod rebuild;
mod recent;
mod run;
mod runtime;
#[cfg(test)]
mod test_support;
mod testnet;
mod wallet;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if args.runs_a_node() {
        cli::limit_malloc_arenas();
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, not a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
