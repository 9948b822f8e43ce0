//! A super node killed and started again (same data, same port) while clients keep searching:
//! the searches stay as fast as before. The other super nodes' sessions with its earlier run
//! lead nowhere; before session resets, a search that asked it over one waited for the query
//! timeout (501 ms on every search, until that session's idle timeout a minute later). Now the
//! restarted node answers such a session's next packet with a reset and the search goes on.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{is, login_server, output_lines, start_as, start_super_node, Children, JsonClient};

#[test]
fn searches_stay_fast_after_a_super_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = login_server(dir.path(), &mut children);
    let password = "a restart passphrase";
    let mut sns = Vec::new();
    for i in 0..3 {
        let (sn, addr, _) = start_super_node(
            &network,
            &dir.path().join(format!("sn{i}")),
            &format!("sn{i}"),
            password,
            &[],
        );
        sns.push((sn, addr));
    }
    let mut start = |user: &'static str| {
        let mut child = start_as(
            "client",
            &network,
            &dir.path().join(user),
            user,
            password,
            0,
            &["--json", "--no-devices"],
        );
        let lines = output_lines(&mut child);
        let stdin = child.stdin.take().unwrap();
        children.0.push(child);
        let mut c = JsonClient {
            lines,
            stdin,
            seen: Vec::new(),
            who: user,
        };
        c.wait(is("attached"));
        c
    };
    let _bob = start("bob");
    let mut alice = start("alice");
    let search = |alice: &mut JsonClient| {
        alice.send(serde_json::json!({"cmd": "search", "user": "bob"}));
        let found = alice.wait(is("search_result"));
        (found["result"] == "found", found["ms"].as_f64().unwrap())
    };
    // Until bob's record is in the index (he publishes once attached).
    let until = Instant::now() + Duration::from_secs(10);
    let before = loop {
        match search(&mut alice) {
            (true, ms) => break ms,
            _ if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            (false, _) => panic!("bob never found"),
        }
    };

    // Kill the second super node and start it again on its port, with its data.
    let (mut victim, addr) = sns.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let mut again = Command::new(env!("CARGO_BIN_EXE_natter"));
    again
        .args(["node", "--user", "sn1", "--network", &network, "--data"])
        .arg(dir.path().join("sn1"))
        .args(["--listen", &addr.to_string(), "--supernode"])
        .env("NATTER_PASSWORD", password)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut restarted = again.spawn().unwrap();
    let out = output_lines(&mut restarted);
    children.0.push(restarted);
    common::wait_in(&out, &["node listening on "]);
    let mut after = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let (found, ms) = search(&mut alice);
        assert!(found, "bob not found after the restart");
        after.push(ms);
        std::thread::sleep(Duration::from_millis(500));
    }
    for (sn, _) in sns {
        children.0.push(sn);
    }
    eprintln!("SN RESTART (processes): search before {before:.1} ms, after {after:?} ms");
    let slowest = after.iter().copied().fold(0.0, f64::max);
    assert!(
        slowest < 300.0,
        "a search waited for a session with the super node's earlier run: {after:?} ms"
    );
}
