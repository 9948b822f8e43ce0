//! The address watcher against a real kernel: in a network namespace of its own (so nothing on
//! the host changes), an interface gains an address, loses one, and [`NetWatch`] reports
//! each change within two polling intervals. Needs root (creating a namespace); skipped with a
//! note otherwise, unless `NATTER_REQUIRE_NETNS` is set (as `make test` does).

#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use natter_transport::netwatch::{local_addresses, NetWatch};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

/// Runs in a thread moved into a new network namespace: the watcher's thread and the `ip`
/// commands it starts inherit it.
fn in_own_namespace() -> Result<Vec<Vec<SocketAddr>>, String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    // The namespace's own loopback interface carries the test addresses (no dummy or veth
    // driver needed; addresses outside 127/8 count as the host's, wherever they sit).
    ip(&["link", "set", "lo", "up"])?;
    ip(&["addr", "add", "198.18.200.1/24", "dev", "lo"])?;
    let bound = sa("0.0.0.0:4000");
    if local_addresses(bound) != vec![sa("198.18.200.1:4000")] {
        return Err(format!("unexpected start: {:?}", local_addresses(bound)));
    }
    let (tx, rx) = mpsc::channel();
    let _watch = NetWatch::spawn(bound, move |addrs| {
        let _ = tx.send(addrs);
    });
    let within = NetWatch::INTERVAL * 2 + Duration::from_millis(500);
    let mut seen = Vec::new();
    // A new lease on another network appears, right after the watcher started (the baseline
    // must already be taken, whether or not its thread has run yet).
    ip(&["addr", "add", "198.18.201.7/24", "dev", "lo"])?;
    seen.push(
        rx.recv_timeout(within)
            .map_err(|e| format!("no change seen: {e}"))?,
    );
    // The old one goes away.
    ip(&["addr", "del", "198.18.200.1/24", "dev", "lo"])?;
    seen.push(
        rx.recv_timeout(within)
            .map_err(|e| format!("no change seen: {e}"))?,
    );
    Ok(seen)
}

#[test]
fn address_changes_in_a_network_namespace_are_reported() {
    let required = std::env::var_os("NATTER_REQUIRE_NETNS").is_some();
    let result = std::thread::spawn(in_own_namespace)
        .join()
        .expect("namespace thread");
    match result {
        Ok(seen) => assert_eq!(
            seen,
            vec![
                vec![sa("198.18.200.1:4000"), sa("198.18.201.7:4000")],
                vec![sa("198.18.201.7:4000")],
            ]
        ),
        Err(e) if !required => eprintln!("skipped (needs root and iproute2): {e}"),
        Err(e) => panic!("{e}"),
    }
}
