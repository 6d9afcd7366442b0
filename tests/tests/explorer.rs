//! The block explorer in a real browser (headless Chromium): a transfer found by search
//! and shown finalized with its amount and sender, the account page listing it, and
//! markup in the URL or search box shown as text, never run. Screenshots of each page go
//! to `target/<profile>/explorer-screenshots/`.
//!
//! Without Chromium (Debian: `apt-get install chromium`, which scripts/test.sh does when
//! it can) the test prints that it was skipped and why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use grapevine_tests::NodeProcess;
use serde_json::json;

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("explorer-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `url` in headless Chromium, lets its scripts run, and returns the DOM; also
/// saves a phone-sized screenshot as `shot` when given.
fn browse(chrome: &Path, profile: &Path, url: &str, shot: Option<&str>) -> String {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=8000",
    ];
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let out = bounded(
        Command::new(chrome)
            .args(base)
            .arg(&profile_arg)
            .arg("--dump-dom")
            .arg(url),
    );
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(name) = shot {
        let path = screenshot_dir().join(name);
        let status = bounded(
            Command::new(chrome)
                .args(base)
                .arg(&profile_arg)
                .arg("--window-size=375,900")
                .arg(format!("--screenshot={}", path.display()))
                .arg(url),
        );
        assert!(
            status.status.success() && path.exists(),
            "screenshot {name} saved"
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a browser command, killing it if it takes more than 90 s.
fn bounded(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut stdout = stdout;
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: Vec::new(),
    }
}

fn title(dom: &str) -> &str {
    dom.split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("")
}

#[test]
fn explorer_shows_a_transfer_and_never_runs_markup() {
    let Some(chrome) = chromium() else {
        println!(
            "SKIPPED explorer browser test: Chromium is not installed (apt-get install -y chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("home"), &["--accounts", "2"]);
    let accounts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.home.join("dev-accounts.json")).unwrap())
            .unwrap();
    let sender = accounts[0]["address"].as_str().unwrap().to_string();
    let recipient = accounts[1]["address"].as_str().unwrap().to_string();
    let key = node.home.join("keys").join("dev-0.json");
    let printed = grapevine_tests::grapevine_ok([
        "transfer",
        "--rpc",
        &node.rpc,
        "--key",
        key.to_str().unwrap(),
        "--to",
        &recipient,
        "--amount",
        "1234567",
        "--wait",
    ]);
    let hash = printed.lines().next().unwrap().to_string();
    let profile = dir.path().join("chromium");
    let base = format!("{}/explorer", node.rpc);

    // Overview, live.
    let dom = browse(&chrome, &profile, &base, Some("overview.png"));
    assert!(title(&dom).starts_with("Overview"), "{}", title(&dom));
    assert!(dom.contains("Recent blocks") && dom.contains("1337"));

    // Search the transaction hash: finalized, right amount and sender.
    let dom = browse(
        &chrome,
        &profile,
        &format!("{base}#/search/{hash}"),
        Some("transaction.png"),
    );
    assert!(title(&dom).starts_with("Transaction"), "{}", title(&dom));
    assert!(
        dom.contains("status finalized\">finalized<"),
        "shows finalized"
    );
    assert!(dom.contains(">1,234,567<"), "shows the amount, formatted");
    assert!(dom.contains(&sender), "shows the sender");

    // The account page lists it.
    let dom = browse(
        &chrome,
        &profile,
        &format!("{base}#/account/{sender}"),
        Some("account.png"),
    );
    assert!(title(&dom).starts_with("Account"));
    assert!(
        dom.contains(&hash),
        "the account's transactions include the transfer"
    );

    // The block page shows the header and the transaction.
    let info = node.result("getTransaction", json!([hash]));
    let height = info["height"].as_str().unwrap();
    let dom = browse(
        &chrome,
        &profile,
        &format!("{base}#/block/{height}"),
        Some("block.png"),
    );
    assert!(title(&dom).starts_with(&format!("Block {height}")));
    assert!(dom.contains(&hash) && dom.contains("State root"));

    // Markup in the URL is shown as text and never runs.
    let attack = "%3Cscript%3Edocument.title%3D%22pwned%22%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3D%22document.title%3D'pwned'%22%3E";
    let start = Instant::now();
    let dom = browse(
        &chrome,
        &profile,
        &format!("{base}#/search/{attack}"),
        Some("markup.png"),
    );
    assert!(start.elapsed() < Duration::from_secs(120));
    assert!(
        !title(&dom).contains("pwned"),
        "injected script ran: {}",
        title(&dom)
    );
    assert!(
        dom.contains("&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;"),
        "shown as text"
    );
    assert!(
        !dom.contains("<img src=\"x\""),
        "no element was created from the URL"
    );
    let dom = browse(&chrome, &profile, &format!("{base}#/tx/{attack}"), None);
    assert!(!title(&dom).contains("pwned"));
}
