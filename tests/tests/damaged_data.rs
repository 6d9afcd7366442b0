//! A damaged data directory is refused at start with an error naming the damage: never
//! a panic, never a silent new chain. Each case damages a copy of a stopped dev node's
//! data the way a disk or an operator might.

use std::path::{Path, PathBuf};
use std::time::Duration;

use grapevine_tests::{NodeProcess, grapevine_ok, run_at_most};
use serde_json::json;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    v.sort();
    v
}

/// Runs `grapevine dev --home HOME` and returns (exited with failure, stderr); a node
/// that starts anyway is stopped after 10 s and reported as a success.
fn start_dev(home: &Path) -> (bool, String) {
    let args = [
        "dev",
        "--rpc-addr",
        "127.0.0.1:0",
        "--home",
        home.to_str().unwrap(),
    ];
    let (exited, out) = run_at_most(args, Duration::from_secs(10));
    (
        exited && !out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn damaged_data_is_refused_with_an_error_naming_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let node = NodeProcess::start(&good, &[]);
    let accounts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("dev-accounts.json")).unwrap()).unwrap();
    let to = accounts[1]["address"].as_str().unwrap();
    let key = good.join("keys").join("dev-0.json");
    grapevine_ok([
        "transfer",
        "--rpc",
        &node.rpc,
        "--to",
        to,
        "--amount",
        "5",
        "--wait",
        "--key",
        key.to_str().unwrap(),
    ]);
    let height = node.result("getStatus", json!([]))["height"].clone();
    assert!(node.stop(), "clean stop");

    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 5] = [
        (
            "a truncated table file",
            |d| {
                for f in files_with(d, |n| n.ends_with(".sst")) {
                    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                    file.set_len(file.metadata().unwrap().len() / 2).unwrap();
                }
            },
            "Corruption",
        ),
        (
            "bytes changed in a table file",
            |d| {
                for f in files_with(d, |n| n.ends_with(".sst")) {
                    let mut b = std::fs::read(&f).unwrap();
                    for x in b.iter_mut().take(200).skip(40) {
                        *x ^= 0x5a;
                    }
                    std::fs::write(&f, b).unwrap();
                }
            },
            "Corruption",
        ),
        (
            "a deleted table file",
            |d| {
                for f in files_with(d, |n| n.ends_with(".sst")) {
                    std::fs::remove_file(f).unwrap();
                }
            },
            ".sst",
        ),
        (
            "a garbled MANIFEST",
            |d| {
                for f in files_with(d, |n| n.starts_with("MANIFEST")) {
                    let len = std::fs::metadata(&f).unwrap().len() as usize;
                    std::fs::write(&f, vec![0xa5u8; len]).unwrap();
                }
            },
            "MANIFEST",
        ),
        (
            "a missing CURRENT file",
            |d| {
                std::fs::remove_file(d.join("CURRENT")).unwrap();
            },
            "CURRENT file is missing",
        ),
    ];
    for (i, (what, damage, expect)) in cases.iter().enumerate() {
        let home = dir.path().join(format!("case{i}"));
        copy_dir(&good, &home);
        damage(&home.join("data"));
        let (failed, err) = start_dev(&home);
        assert!(
            failed,
            "{what}: the node must not start on damaged data ({err})"
        );
        assert!(
            err.contains(expect) && !err.contains("panicked"),
            "{what}: the error names the damage ({expect}): {err}"
        );
    }
    // The undamaged copy still starts at the same height.
    let node = NodeProcess::start(&good, &[]);
    assert_eq!(node.result("getStatus", json!([]))["height"], height);
    assert!(node.stop());
}
