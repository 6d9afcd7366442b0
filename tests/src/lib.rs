//! End-to-end tests of the `grapevine` binary: each test under `tests/tests/` runs real
//! node processes on 127.0.0.1 with ephemeral ports and temporary homes.
//!
//! This library holds what those tests share: locating the release binary built by
//! `scripts/test.sh`.

use std::path::PathBuf;

/// Path of the `grapevine` binary of this build (the release profile under
/// `scripts/test.sh`), found next to the test executable's target directory.
pub fn grapevine_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/<profile>/deps/<test-binary> -> target/<profile>/grapevine
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    profile_dir.join("grapevine")
}
