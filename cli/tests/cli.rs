//! The `natter` binary end to end: the demo, and an operator running a login server with users
//! registering and logging in from the command line.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{natter, output_lines, start_node, wait_for_lines, wait_in, Children};

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
        "bytes of credentials, renewed in",
        "Speaker switch mid-call",
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
    // A call between alice and bob, 3 s of Opus tone both ways, on loopback's direct path.
    assert!(row("Call path (alice's choice)").ends_with("direct-lan"));
    // carol keeps her address private: her call stays on a super node's relay.
    assert!(row("Relayed call path (carol's choice)").ends_with("relay-udp"));
    let frames = row("Call media frames (bob->alice / alice->bob)");
    for n in frames.rsplit("  ").next().unwrap().split(" / ") {
        let n: u32 = n.trim().parse().unwrap();
        assert!(n >= 100, "{frames}");
    }
    // Each user's attach path and NAT type (loopback: no NAT).
    for user in ["alice", "bob", "carol"] {
        let line = row(&format!("{user}: attached to "));
        assert!(line.contains(" via Tcp"), "{line}");
        assert!(line.contains("NAT: open"), "{line}");
    }
}

/// Start `natter login-server` on loopback with its data in `data` and `extra` options; return
/// the process and the network file it announced.
fn login_server(data: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut server = natter()
        .args(["login-server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
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
    (server, network)
}

#[test]
fn login_server_register_and_login_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (mut server, network) = login_server(&data, &[]);
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

#[test]
fn login_asks_for_the_password_when_the_certificate_can_no_longer_be_renewed() {
    use natter_core::crypto::{Authority, UnixTime, UserName};
    use natter_transport::login::client::DeviceStore;
    use natter_transport::login::files::read_key;
    use natter_transport::login::network::NetworkFile;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (server, network) = login_server(
        &data,
        &[
            "--renewal-grace-days",
            "2",
            "--bootstrap",
            "198.18.0.10:4000,198.18.0.11:4000",
            "--bootstrap",
            "198.18.0.12:4000",
        ],
    );
    let _server = Children(vec![server]);
    let bootstrap: Vec<String> = NetworkFile::load(std::path::Path::new(&network))
        .unwrap()
        .bootstrap
        .into_iter()
        .map(|b| b.address)
        .collect();
    assert_eq!(
        bootstrap,
        ["198.18.0.10:4000", "198.18.0.11:4000", "198.18.0.12:4000"]
    );

    let device = dir.path().join("device");
    let password = "olga's passphrase";
    let login = |stdin: &str| {
        let mut child = natter()
            .args(["login", "--user", "olga", "--password-stdin", "--network"])
            .arg(&network)
            .arg("--data")
            .arg(&device)
            .env_remove("NATTER_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Dropping the pipe after writing closes standard input. A login that needs no
        // password may exit before reading it: a broken pipe is fine.
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let registered = natter()
        .args([
            "register",
            "--user",
            "olga",
            "--network",
            &network,
            "--data",
        ])
        .arg(&device)
        .env("NATTER_PASSWORD", password)
        .output()
        .unwrap();
    assert!(registered.status.success(), "{registered:?}");

    // Give the device a certificate (signed with the server's own authority key) that expired
    // `days_ago` days ago, as if it had been switched off that long.
    let authority = Authority::from_secret_bytes(read_key(&data.join("authority.key")).unwrap());
    let store = DeviceStore::open(device.join("device")).unwrap();
    let (id, _) = store.identity().unwrap();
    let expired = |days_ago: u64| {
        let now = natter_transport::wall_clock().0;
        let cert = authority.certify(
            &UserName::parse("olga").unwrap(),
            id.dh_public(),
            id.signing_public(),
            UnixTime(now - (days_ago + 1) * 86_400),
            UnixTime(now - days_ago * 86_400),
        );
        store.save_certificate(&cert).unwrap();
    };

    // Expired a day ago: inside the 2-day grace, renewed without the password.
    expired(1);
    let (ok, stdout, stderr) = login("");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("renewed without password"), "{stdout}");

    // Expired 3 days ago, and no password at hand: a clear message, not "invalid proof".
    expired(3);
    let (ok, _, stderr) = login("");
    assert!(!ok);
    assert!(
        stderr.contains("expired too long ago") && stderr.contains("password is needed"),
        "{stderr}"
    );
    assert!(!stderr.contains("invalid device proof"), "{stderr}");

    // With the password at hand, it logs in with it.
    let (ok, stdout, stderr) = login(&format!("{password}\n"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("(password)"), "{stdout}");
    assert!(!stderr.contains(password) && !stdout.contains(password));
}

#[test]
fn nodes_join_and_search_the_index_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = common::login_server(dir.path(), &mut children);
    let node = |user: &str, extra: &[&str]| {
        let data = dir.path().join(user);
        start_node(
            &network,
            &data,
            user,
            "a passphrase for the index",
            0,
            extra,
        )
    };
    // The super node's address goes into the network file as its bootstrap entry.
    let (sn, _, _) = common::start_super_node(
        &network,
        &dir.path().join("snode"),
        "snode",
        "a passphrase for the index",
        &[],
    );
    children.0.push(sn);
    let mut bob = node("bob", &["--no-supernode"]);
    wait_for_lines(&mut bob, &["attached to super node"]);
    children.0.push(bob);
    let mut alice = node(
        "alice",
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

/// A node stopped by SIGTERM (or Ctrl-C) after a few seconds, long before the periodic save,
/// still leaves its host cache behind, with the super node it attached to.
#[cfg(unix)]
#[test]
fn a_node_saves_its_host_cache_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let (server, network) = login_server(&dir.path().join("server"), &[]);
    children.0.push(server);
    let (sn, sn_addr, _) = common::start_super_node(
        &network,
        &dir.path().join("snode"),
        "snode",
        "a passphrase for the cache",
        &[],
    );
    children.0.push(sn);
    let data = dir.path().join("carol");
    let mut carol = start_node(
        &network,
        &data,
        "carol",
        "a passphrase for the cache",
        0,
        &["--no-supernode"],
    );
    let cache = data.join("hostcache.bin");
    // Keep reading its output: a closed pipe would make its last words fail.
    let lines = output_lines(&mut carol);
    wait_in(&lines, &["attached to super node"]);
    assert!(
        !cache.exists(),
        "not saved yet: the periodic save is every minute"
    );
    let term = Command::new("kill")
        .args(["-TERM", &carol.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = carol.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean stop: {status:?}");
    wait_in(&lines, &["stopping: host cache saved"]);
    let saved = natter_core::overlay::HostCache::decode(&std::fs::read(&cache).unwrap()).unwrap();
    let entry = saved
        .entries()
        .iter()
        .find(|e| e.addr == sn_addr)
        .expect("the super node is in the saved cache");
    assert!(
        entry.successes >= 1 && entry.static_key.is_some(),
        "with its attach recorded: {entry:?}"
    );
}

/// The network file sets the super nodes' fallback ports (`[overlay]`); `--fallback-ports`
/// overrides them for one node, which then listens there; a malformed value is refused.
#[test]
fn a_super_node_listens_on_the_fallback_ports_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let (server, network) = login_server(&dir.path().join("server"), &[]);
    children.0.push(server);
    let mut file = std::fs::read_to_string(&network).unwrap();
    file.push_str("\n[overlay]\nfallback_ports = [80, 443]\n");
    std::fs::write(&network, file).unwrap();
    let data = dir.path().join("fbsn");
    let ok = natter()
        .args([
            "register",
            "--user",
            "fbsn",
            "--network",
            &network,
            "--data",
        ])
        .arg(&data)
        .env("NATTER_PASSWORD", "a passphrase for the ports")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let node = |ports: &str| {
        natter()
            .args(["node", "--user", "fbsn", "--network", &network, "--data"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--supernode"])
            .args(["--fallback-ports", ports])
            .env("NATTER_PASSWORD", "a passphrase for the ports")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Ports 80 and 443 need privileges: the operator overrides them with offsets, swapped
    // here to show they are used as given (plain at +2, TLS at +1).
    let mut sn = node("+2,+1");
    let lines = wait_for_lines(&mut sn, &["node listening"]);
    children.0.push(sn);
    let line = lines.iter().find(|l| l.contains("node listening")).unwrap();
    assert!(line.contains("fallback TCP ports +2,+1"), "{line}");
    let port = common::listening_address(&lines).port();
    for p in [port, port + 1, port + 2] {
        std::net::TcpStream::connect(("127.0.0.1", p))
            .unwrap_or_else(|e| panic!("TCP port {p} listens: {e}"));
    }
    let bad = node("80").wait_with_output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("PLAIN,TLS"), "{stderr}");
}
