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

/// A port p with UDP and TCP p, p+1, p+2 free on 127.0.0.1.
fn free_port_block(seed: u16) -> u16 {
    for i in 0..2000u16 {
        let p = 21_000 + (seed.wrapping_mul(61).wrapping_add(i * 5)) % 28_000;
        let ok = (0..3).all(|k| {
            std::net::UdpSocket::bind(("127.0.0.1", p + k)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok()
        });
        if ok {
            return p;
        }
    }
    panic!("no free ports");
}

/// Kills the child processes when the test ends, however it ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Read `child`'s standard output until a line contains every one of `want` (or 30 s pass).
fn wait_for_lines(child: &mut std::process::Child, want: &[&str]) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !want
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("waited for {want:?}; saw {seen:#?}"),
        }
    }
    seen
}

#[test]
fn nodes_join_and_search_the_index_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let mut server = natter()
        .args(["login-server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("server"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = wait_for_lines(&mut server, &["network file: "]);
    children.0.push(server);
    let network = lines
        .iter()
        .find_map(|l| l.strip_prefix("network file: "))
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .to_string();
    let sn_port = free_port_block(std::process::id() as u16);
    let mut file = std::fs::read_to_string(&network).unwrap();
    file.push_str(&format!(
        "\n[[bootstrap]]\naddress = \"127.0.0.1:{sn_port}\"\n"
    ));
    std::fs::write(&network, file).unwrap();
    let node = |user: &str, port: u16, extra: &[&str]| {
        let data = dir.path().join(user);
        let ok = natter()
            .args(["register", "--user", user, "--network", &network, "--data"])
            .arg(data.join("device").parent().unwrap())
            .env("NATTER_PASSWORD", "a passphrase for the index")
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        natter()
            .args(["node", "--user", user, "--network", &network, "--data"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("NATTER_PASSWORD", "a passphrase for the index")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut sn = node("snode", sn_port, &["--supernode"]);
    wait_for_lines(&mut sn, &["node listening"]);
    children.0.push(sn);
    let mut bob = node("bob", free_port_block(7), &["--no-supernode"]);
    wait_for_lines(&mut bob, &["attached to super node"]);
    children.0.push(bob);
    let mut alice = node(
        "alice",
        free_port_block(11),
        &["--no-supernode", "--search", "bob", "--search", "nobody"],
    );
    let seen = wait_for_lines(&mut alice, &["found bob: device", "nobody not found"]);
    children.0.push(alice);
    let found = seen.iter().find(|l| l.contains("found bob")).unwrap();
    assert!(
        found.contains("online") && found.contains("hops"),
        "{found}"
    );
}
