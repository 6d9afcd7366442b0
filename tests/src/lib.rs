//! End-to-end tests of the `grapevine` binary: each test under `tests/tests/` runs real
//! node processes on 127.0.0.1 with ephemeral ports and temporary homes.
//!
//! This library holds what those tests share: locating the binary, starting a node
//! (`dev` or `run`) and waiting for its RPC address, and a small JSON-RPC client; and
//! [`adversary`], a peer and Byzantine validator that sends crafted traffic.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use grapevine_ledger::Keypair;
use grapevine_rpc::client::Client;

pub mod adversary;
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
        Self::start_with_env(home, extra, &[])
    }

    /// [`NodeProcess::start`] with `env` changed for the process: `(name, Some(value))`
    /// sets a variable, `(name, None)` removes it.
    pub fn start_with_env(
        home: &Path,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> NodeProcess {
        let mut args: Vec<OsString> = vec!["dev".into(), "--home".into(), home.into()];
        args.extend(["--rpc-addr", "127.0.0.1:0"].map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        let mut cmd = grapevine(&args);
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        Self::spawn_command(home, cmd, &args)
    }

    /// The process id of the process started (the node itself: it never forks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `grapevine run --home HOME` (a testnet node) and waits (at most 60 s) for
    /// its banner to name the RPC address.
    pub fn run(home: &Path) -> NodeProcess {
        Self::spawn(home, &["run".into(), "--home".into(), home.into()])
    }

    fn spawn(home: &Path, args: &[OsString]) -> NodeProcess {
        Self::spawn_command(home, grapevine(args), args)
    }

    fn spawn_command(home: &Path, mut cmd: Command, args: &[OsString]) -> NodeProcess {
        let mut child = cmd
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

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &c.id().to_string()])
                .status();
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
        Client::new(&self.rpc, Duration::from_secs(30))
            .request(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
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
    post_within(url, body, Duration::from_secs(30)).expect("the node answers")
}

/// POSTs `body` to `url` with `limit` for the whole exchange; returns the HTTP status
/// and the JSON body, if any, or `None` if the node does not answer in time.
pub fn post_within(url: &str, body: &str, limit: Duration) -> Option<(u16, Option<Value>)> {
    Client::new(url, limit).post(body).ok()
}

/// GETs `url` with `limit` for the whole exchange; returns the HTTP status and the body
/// as text, or `None` if the node does not answer in time (e.g. `/health`, `/metrics`).
pub fn get_within(url: &str, limit: Duration) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limit))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Some((status, text))
}

/// A base port with `ports` free ports after it (checked by binding each). Below
/// Linux's ephemeral range (32768 and up), so outgoing connections of this or other
/// tests cannot take a port between this check and the node's bind.
pub fn free_base_port(ports: u16) -> u16 {
    let seed = u64::from(std::process::id());
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed * 7919 + attempt * 104_729) % 12_000) as u16;
        if (0..ports).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of {ports} ports on 127.0.0.1");
}

/// Runs `grapevine testnet` into `out` on free ports; returns the node names
/// (`validator0`.., then `full0`..).
pub fn generate_testnet(
    out: &Path,
    validators: u16,
    full_nodes: u16,
    accounts: u16,
) -> Vec<String> {
    generate_testnet_with(out, validators, full_nodes, accounts, &[])
}

/// [`generate_testnet`] with more flags (e.g. `--fault-proxy`, whose routes take
/// `validators x (validators + full_nodes)` more ports).
pub fn generate_testnet_with(
    out: &Path,
    validators: u16,
    full_nodes: u16,
    accounts: u16,
    extra: &[&str],
) -> Vec<String> {
    let nodes = validators + full_nodes;
    let base = free_base_port(2 * nodes + validators * nodes);
    let mut args: Vec<OsString> = vec!["testnet".into()];
    args.extend(extra.iter().map(OsString::from));
    for (flag, n) in [
        ("--validators", validators),
        ("--full-nodes", full_nodes),
        ("--accounts", accounts),
        ("--base-port", base),
    ] {
        args.extend([flag.into(), n.to_string().into()]);
    }
    args.extend(["--out".into(), out.as_os_str().to_owned()]);
    grapevine_ok(args);
    (0..validators)
        .map(|i| format!("validator{i}"))
        .chain((0..full_nodes).map(|i| format!("full{i}")))
        .collect()
}

/// The peer-to-peer address node `name` of the testnet in `out` listens on, from the
/// `nodes.tsv` that `grapevine testnet` writes (name, RPC address, peer address, home).
pub fn p2p_address(out: &Path, name: &str) -> std::net::SocketAddr {
    let table = std::fs::read_to_string(out.join("nodes.tsv")).expect("nodes.tsv");
    table
        .lines()
        .map(|l| l.split('\t').collect::<Vec<&str>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
        .unwrap_or_else(|| panic!("nodes.tsv names no peer address for {name}: {table}"))
}

/// In every home of `names` under `out`, replaces `key = …` in config.toml's
/// `[consensus]` section (e.g. shorter timeouts for a test).
pub fn set_consensus_option(out: &Path, names: &[String], key: &str, value: u64) {
    for n in names {
        let path = out.join(n).join("config.toml");
        let text = std::fs::read_to_string(&path).expect("config.toml");
        let replaced: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} =")) {
                    format!("{key} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&path, replaced.join("\n") + "\n").expect("config.toml written");
    }
}

/// The funded accounts' keys of a testnet (`accounts.json`).
pub fn account_keys(dir: &Path) -> Vec<Keypair> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("accounts.json")).unwrap())
        .expect("accounts.json is JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|a| Keypair::from_secret_hex(a["secretKey"].as_str().unwrap()).unwrap())
        .collect()
}

/// Polls until `f` holds, at most `limit`; returns whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

impl NodeProcess {
    /// The node's final height (`getStatus`).
    pub fn height(&self) -> u64 {
        self.result("getStatus", json!([]))["height"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .expect("height is a decimal string")
    }

    /// The block at `height` (`getBlock`, without transactions).
    pub fn block(&self, height: u64) -> Value {
        self.result("getBlock", json!([height.to_string(), false]))
    }
}

/// `gv-proxy` over a testnet generated with `--fault-proxy`; killed when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    child: Child,
    control: PathBuf,
    routes: Vec<(String, String)>,
}

impl FaultProxy {
    /// Starts it on `out/proxies.tsv` and waits until it listens.
    pub fn start(out: &Path) -> FaultProxy {
        let routes_file = out.join("proxies.tsv");
        let routes = std::fs::read_to_string(&routes_file)
            .expect("proxies.tsv")
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter_map(|name| name.split_once('>'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let control = out.join("faults.txt");
        let mut child = Command::new(grapevine_bin().with_file_name("gv-proxy"))
            .arg(&routes_file)
            .arg(&control)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gv-proxy starts");
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("gv-proxy says it is ready");
        assert_eq!(line.trim(), "gv-proxy ready");
        FaultProxy {
            child,
            control,
            routes,
        }
    }

    /// Cuts every route between nodes of different groups (a node in no group is
    /// cut off from all).
    pub fn partition(&self, groups: &[&[&str]]) {
        let group = |n: &str| groups.iter().position(|g| g.contains(&n));
        let cut: Vec<String> = self
            .routes
            .iter()
            .filter(|(a, b)| group(a) != group(b))
            .map(|(a, b)| format!("{a}>{b}"))
            .collect();
        assert!(!cut.is_empty());
        std::fs::write(&self.control, cut.join("\n") + "\n").unwrap();
    }

    /// Restores every route.
    pub fn heal(&self) {
        std::fs::write(&self.control, "").unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` to `url` with a 2 s limit; `None` if the node does not answer (killed,
/// paused, partitioned): for tests that inject faults.
pub fn try_post_json(url: &str, body: &str) -> Option<(u16, Option<Value>)> {
    post_within(url, body, Duration::from_secs(2))
}

/// Runs `grapevine ARGS` to its end and returns its standard output; fails the test,
/// showing the command's standard error, if it does not succeed.
pub fn grapevine_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(grapevine_bin())
        .args(&args)
        .output()
        .expect("grapevine runs");
    assert!(
        out.status.success(),
        "grapevine {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The command `grapevine ARGS`, logging at warn.
fn grapevine<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(grapevine_bin());
    c.args(args).env("GRAPEVINE_LOG", "warn");
    c
}

/// Runs `grapevine ARGS` (logging at warn) for at most `limit`. Returns whether it exited
/// by itself, and its output; one still running at `limit` is killed.
pub fn run_at_most<I, S>(args: I, limit: Duration) -> (bool, Output)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = grapevine(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grapevine starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = child.try_wait().expect("wait").is_some();
    if !exited {
        let _ = child.kill();
    }
    (exited, child.wait_with_output().expect("output"))
}
