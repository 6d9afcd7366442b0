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
    if let Some(missing) = missing_cpu_features() {
        eprintln!(
            "error: this build of grapevine needs CPU features this machine lacks: {missing}. \
             Build it for this CPU: RUSTFLAGS='--cfg curve25519_dalek_backend=\"avx512\"' \
             cargo build --release (see .cargo/config.toml)"
        );
        return ExitCode::FAILURE;
    }
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

/// The x86-64 features `.cargo/config.toml` builds for that this CPU lacks: a clear
/// message instead of an illegal-instruction crash somewhere later.
#[cfg(target_arch = "x86_64")]
fn missing_cpu_features() -> Option<String> {
    let mut missing = Vec::new();
    macro_rules! need {
        ($($f:tt),*) => {$(
            if cfg!(target_feature = $f) && !std::arch::is_x86_feature_detected!($f) {
                missing.push($f);
            }
        )*};
    }
    need!("sse4.2", "popcnt", "pclmulqdq");
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(not(target_arch = "x86_64"))]
fn missing_cpu_features() -> Option<String> {
    None
}
