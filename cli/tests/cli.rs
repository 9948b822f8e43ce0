//! The `natter` binary end to end: the demo, and an operator running a login server with users
//! registering and logging in from the command line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn natter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_natter"))
}

#[test]
fn demo_passes_and_reports() {
    let out = natter().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Login time (alice)",
        "Renewal without password",
        "Attach time (alice)",
        "Fail-over after a super node died",
        "XX handshake",
        "RESULT: all steps passed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // Summary rows: the label and its value on one line (column widths vary).
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{stdout}"))
            .to_string()
    };
    assert!(row("Frames delivered both ways").ends_with("1000/1000"));
    assert!(row("Replays accepted").contains(" 0 of "));
}

#[test]
fn login_server_register_and_login_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = natter()
        .args(["login-server", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the network file announcement.
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut network = None;
    while network.is_none() && Instant::now() < deadline {
        if let Some(Ok(line)) = lines.next() {
            if let Some(p) = line.strip_prefix("network file: ") {
                network = Some(p.split(" (").next().unwrap().to_string());
            }
        }
    }
    let network = network.expect("login server announced its network file");
    let device = dir.path().join("device");
    let run = |args: &[&str], password: &str| {
        natter()
            .args(args)
            .args(["--network", &network, "--data"])
            .arg(&device)
            .env("NATTER_PASSWORD", password)
            .output()
            .unwrap()
    };
    let ok = run(&["register", "--user", "Ivan"], "ivan's passphrase");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("registered Ivan"));
    let taken = run(&["register", "--user", "ivan"], "ivan's passphrase");
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("is taken"));
    // The stored certificate renews without a password.
    let renew = run(&["login", "--user", "ivan"], "");
    assert!(
        String::from_utf8_lossy(&renew.stdout).contains("renewed without password"),
        "{renew:?}"
    );
    // A fresh device with the wrong password.
    let other = dir.path().join("other");
    let wrong = natter()
        .args(["login", "--user", "ivan", "--network", &network, "--data"])
        .arg(&other)
        .env("NATTER_PASSWORD", "not ivan's")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong password"));
    let _ = server.kill();
    let _ = server.wait();
}
