//! The binary's command line, run as a user would.

use std::process::Command;

use grapevine_tests::{grapevine_bin, grapevine_ok};

#[test]
fn help_lists_the_commands() {
    let out = Command::new(grapevine_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("keygen") && text.contains("bench"), "{text}");
}

#[test]
fn keygen_writes_a_private_key_file_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.json");
    let printed = grapevine_ok(["keygen", "--out", path.to_str().unwrap()]);
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(file["address"].as_str().unwrap(), printed.trim());
    let addr: grapevine_ledger::Address = printed.trim().parse().unwrap();
    assert_eq!(file["publicKey"].as_str().unwrap(), addr.public_key_hex());
    let kp =
        grapevine_ledger::Keypair::from_secret_hex(file["secretKey"].as_str().unwrap()).unwrap();
    assert_eq!(kp.address(), addr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let again = Command::new(grapevine_bin())
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8(again.stderr).unwrap();
    assert!(
        err.starts_with("error:") && err.contains("refusing to overwrite"),
        "{err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "one clear line, not a backtrace: {err}"
    );
}
