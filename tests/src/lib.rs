//! End-to-end tests of the `grapevine` binary: each test under `tests/tests/` runs real
//! node processes on 127.0.0.1 with ephemeral ports and temporary homes.
//!
//! This library holds what those tests share: locating the binary, starting a node
//! (`dev` or `run`) and waiting for its RPC address, and a small JSON-RPC client.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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

/// A `grapevine` node process (`dev` or `run`); killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub rpc: String,
    /// The node's home directory.
    pub home: PathBuf,
}

impl NodeProcess {
    /// Starts `grapevine dev --home HOME --rpc-addr 127.0.0.1:0 EXTRA...` and waits (at
    /// most 60 s) for its banner to name the RPC address.
    pub fn start(home: &Path, extra: &[&str]) -> NodeProcess {
        let mut args: Vec<OsString> = vec!["dev".into(), "--home".into(), home.into()];
        args.extend(["--rpc-addr", "127.0.0.1:0"].map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        Self::spawn(home, &args)
    }

    /// Starts `grapevine run --home HOME` (a testnet node) and waits (at most 60 s) for
    /// its banner to name the RPC address.
    pub fn run(home: &Path) -> NodeProcess {
        Self::spawn(home, &["run".into(), "--home".into(), home.into()])
    }

    fn spawn(home: &Path, args: &[OsString]) -> NodeProcess {
        let mut child = Command::new(grapevine_bin())
            .args(args)
            .env("GRAPEVINE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("grapevine starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("RPC:") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let rpc = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(rpc) => rpc,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "grapevine {args:?} did not print its RPC URL within 60 s \
                     (exit: {status:?}; its stderr is above)"
                );
            }
        };
        NodeProcess {
            child: Some(child),
            rpc,
            home: home.to_path_buf(),
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit (at most 30 s); returns whether the exit
    /// status was success.
    pub fn stop(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls a JSON-RPC method; returns the whole response object.
    pub fn call(&self, method: &str, params: Value) -> Value {
        post_json(
            &self.rpc,
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
        )
        .1
        .expect("a response body")
    }

    /// The result of a call that must succeed.
    pub fn result(&self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// POSTs `body` to `url`; returns the HTTP status and the JSON body, if any.
pub fn post_json(url: &str, body: &str) -> (u16, Option<Value>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .expect("the node answers");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).ok())
}
