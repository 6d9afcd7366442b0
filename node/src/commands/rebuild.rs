//! `grapevine rebuild`: sets a damaged data directory aside so the node syncs its chain
//! from peers again. A validator's safety state lives outside the data directory
//! (`consensus-safety.bin`), so it is kept as it is.

use std::path::PathBuf;

use anyhow::Context;

use super::run::{Config, resolve};

/// Flags of `grapevine rebuild`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's home directory (as for `grapevine run`); the node must be stopped.
    #[arg(long, env = "GRAPEVINE_HOME")]
    home: PathBuf,
}

/// Runs `grapevine rebuild`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let home = &args.home;
    let cfg = Config::load(home)?;
    let data = resolve(home, &cfg.data_dir);
    anyhow::ensure!(
        data.exists(),
        "nothing to rebuild: {} does not exist (start the node: it syncs the chain from peers)",
        data.display()
    );
    // A running node holds RocksDB's lock: moving its data away under it would lose
    // what it writes next.
    if let Err(grapevine_ledger::StoreError::Open { reason, .. }) =
        grapevine_ledger::RocksStore::open(&data)
        && reason.to_lowercase().contains("lock")
    {
        anyhow::bail!(
            "{} is in use: stop the node first ({reason})",
            data.display()
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = data
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let aside = data.with_file_name(format!("{name}.damaged-{stamp}"));
    std::fs::rename(&data, &aside).with_context(|| {
        format!(
            "cannot move {} aside to {}",
            data.display(),
            aside.display()
        )
    })?;
    println!("moved the damaged data to {}", aside.display());
    if cfg.validator_key.is_some() {
        let safety = resolve(home, &cfg.safety_state);
        println!(
            "kept the validator's safety state in {}{}",
            safety.display(),
            if safety.exists() {
                ""
            } else {
                " (none was written yet)"
            }
        );
    }
    println!(
        "the next `grapevine run --home {}` syncs the chain from peers; delete {} once it has",
        home.display(),
        aside.display()
    );
    Ok(())
}
