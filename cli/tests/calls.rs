//! Calls between `natter client` processes on loopback: dial by user name, ring, answer, media
//! both ways on the best path, hang up.

mod common;

use std::time::Duration;

use common::{network_with_a_super_node, output_lines, start_as, wait_in, Children};

#[test]
fn two_clients_call_each_other_with_media_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children(Vec::new());
    let network = network_with_a_super_node(dir.path(), &mut children);
    let mut alice = start_as(
        "client",
        &network,
        &dir.path().join("alice"),
        "alice",
        "alice's password",
        0,
        &["--auto-answer"],
    );
    let alice_out = output_lines(&mut alice);
    wait_in(&alice_out, &["attached to super node"]);
    children.0.push(alice);
    let mut bob = start_as(
        "client",
        &network,
        &dir.path().join("bob"),
        "bob",
        "bob's password",
        0,
        &[
            "--call",
            "alice",
            "--hangup-after",
            "3",
            "--exit-after-call",
            "--timeout",
            "20",
        ],
    );
    let bob_out = output_lines(&mut bob);
    let seen = wait_in(
        &bob_out,
        &[
            "calling (call",
            "call connected",
            "call path direct-lan",
            "first media received",
            "call ended: hung up",
        ],
    );
    let status = bob.wait_timeout_or_kill(Duration::from_secs(10));
    assert_eq!(
        status,
        Some(0),
        "bob's client exits 0 after a connected call"
    );
    let ended = seen.iter().find(|l| l.contains("call ended")).unwrap();
    let frames: u64 = ended
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // About 3 s of 50 frames a second, less the setup.
    assert!(frames > 50, "{ended}");
    let alice_seen = wait_in(
        &alice_out,
        &[
            "incoming call from bob",
            "call connected",
            "first media received",
            "call ended: the peer hung up",
        ],
    );
    let line = alice_seen
        .iter()
        .find(|l| l.contains("call ended"))
        .unwrap();
    assert!(!line.contains("(0 media"), "{line}");
    for l in seen
        .iter()
        .filter(|l| l.contains("first media") || l.contains("connected"))
    {
        eprintln!("bob: {l}");
    }
}

trait WaitTimeout {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> Option<i32>;
}

impl WaitTimeout for std::process::Child {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + d;
        loop {
            if let Ok(Some(s)) = self.try_wait() {
                return s.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
