//! The consensus crate holds only pure code: none of its source files names the async
//! runtime, the network crate, the database, files or sockets. Such code belongs in the
//! node's driver.

#[test]
fn the_consensus_crate_does_no_io() {
    // Read when the test runs (cargo sets it), not built in: a binary built in another
    // clone of the repository may be reused from a shared target directory.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let dir = std::path::Path::new(&crate_dir).join("src");
    let banned = ["tokio", "grapevine_net", "rocksdb", "std::fs", "std::net"];
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("the source folder") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a source file");
        files += 1;
        for word in banned {
            assert!(
                !text.contains(word),
                "{} names {word}: IO belongs in node/src/driver",
                path.display()
            );
        }
    }
    assert!(files >= 5, "read the whole folder ({files} files)");
}
