//! Account key files: JSON `{"address", "publicKey", "secretKey"}`, mode 0600.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use grapevine_ledger::Keypair;
use serde::{Deserialize, Serialize};

/// The key file's JSON shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyFile {
    address: String,
    public_key: String,
    secret_key: String,
}

fn to_json(kp: &Keypair) -> String {
    let kf = KeyFile {
        address: kp.address().to_string(),
        public_key: kp.address().public_key_hex(),
        secret_key: kp.secret_hex().to_string(),
    };
    serde_json::to_string_pretty(&kf).expect("strings always serialize") + "\n"
}

/// Writes a key file for `kp` at `path`, created with mode 0600. Fails if the file
/// exists: a key file is never overwritten.
pub fn write(path: &Path, kp: &Keypair) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| {
        if path.exists() {
            format!(
                "{} already exists; refusing to overwrite a key file",
                path.display()
            )
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    f.write_all(to_json(kp).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a key file and checks that its address matches its secret key.
pub fn read(path: &Path) -> anyhow::Result<Keypair> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        meta.len() < 64 * 1024,
        "{} is too large to be a key file",
        path.display()
    );
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let kf: KeyFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a key file", path.display()))?;
    let kp = Keypair::from_secret_hex(&kf.secret_key)
        .with_context(|| format!("{}: secretKey is not 64 hex digits", path.display()))?;
    anyhow::ensure!(
        kp.address().to_string() == kf.address,
        "{}: the address does not belong to the secret key",
        path.display()
    );
    Ok(kp)
}

/// `grapevine keygen`: a new key, written to `out` or printed.
pub fn keygen(out: Option<&Path>) -> anyhow::Result<()> {
    let kp = Keypair::generate().context("the operating system's random source failed")?;
    match out {
        Some(path) => {
            write(path, &kp)?;
            println!("{}", kp.address());
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", to_json(&kp)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        let kp = Keypair::from_seed(&[4; 32]);
        write(&p, &kp).unwrap();
        assert_eq!(read(&p).unwrap().address(), kp.address());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = Keypair::from_seed(&[5; 32]);
        let err = write(&p, &other).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(read(&p).unwrap().address(), kp.address());
    }

    #[test]
    fn a_key_file_with_a_foreign_address_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        let a = Keypair::from_seed(&[4; 32]);
        let b = Keypair::from_seed(&[5; 32]);
        let json = to_json(&a).replace(&a.address().to_string(), &b.address().to_string());
        std::fs::write(&p, json).unwrap();
        assert!(read(&p).is_err());
    }
}
