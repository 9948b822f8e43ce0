//! Presence between real `natter client` processes behind two different NATs (a
//! port-restricted cone and a symmetric NAT), in network namespaces (see `netns/mod.rs`): a
//! login server and one super node on a public host. alice asks bob to be her contact, he
//! accepts, and each sees the other's changes (invisible, then online again), pushed through
//! the super node, within 2 s. Needs root, iproute2 and nftables; skipped with a clear note
//! otherwise, unless `NATTER_REQUIRE_NETNS` is set.

#![cfg(target_os = "linux")]

mod netns;

use std::time::{Duration, Instant};

use netns::natter::{servers, start_client_with_input, WAIT};
use netns::{net_or_skip, Nat, Place, Proc};

/// What each change may take to reach the other side (the bound; on these links it
/// takes milliseconds).
const WITHIN: Duration = Duration::from_secs(2);

/// Type `command` into `p` until it prints `want` (each try waits 2 s): for what depends on
/// the other side's background sync having run.
fn until_printed(p: &mut Proc, command: &str, want: &str) {
    for _ in 0..10 {
        let mark = p.mark();
        p.send(command).unwrap();
        if p.wait_after(mark, want, Duration::from_secs(2)).is_ok() {
            return;
        }
    }
    panic!("{want:?} never printed after {command:?}: {:#?}", p.seen);
}

/// Type `command` into `from`; how long until `watcher` printed `want`.
fn change_seen(from: &mut Proc, command: &str, watcher: &mut Proc, want: &str) -> Duration {
    let mark = watcher.mark();
    let sent = Instant::now();
    from.send(command).unwrap();
    let (i, _) = watcher
        .wait_after(mark, want, WAIT)
        .unwrap_or_else(|e| panic!("after {command:?}: {e}"));
    watcher.seen_at[i].saturating_duration_since(sent)
}

#[test]
fn two_users_behind_different_nats_see_each_others_changes_within_two_seconds() {
    let test = "two_users_behind_different_nats_see_each_others_changes_within_two_seconds";
    let Some(mut net) = net_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let network = servers(&mut net, dir.path()).unwrap();
    let a = net
        .endpoint("a", Place::Behind(Nat::PortRestricted))
        .unwrap();
    let b = net.endpoint("b", Place::Behind(Nat::Symmetric)).unwrap();
    let start = |net: &mut netns::Net, ns: &str, user: &str, addr| {
        start_client_with_input(net, dir.path(), &network, ns, user, addr).unwrap()
    };
    let mut alice = start(&mut net, &a.ns, "alice", a.addr);
    let mut bob = start(&mut net, &b.ns, "bob", b.addr);
    alice.wait_for(&["attached to super node"], WAIT).unwrap();
    bob.wait_for(&["attached to super node"], WAIT).unwrap();

    // alice asks bob (her node watches him from then on); his sync finds the request and he
    // accepts (his node watches her).
    alice.send("add bob hi, it's alice").unwrap();
    alice.wait_for(&["bob is online"], WAIT).unwrap();
    until_printed(&mut bob, "sync", "alice asks to be your contact");
    bob.send("accept alice").unwrap();
    bob.wait_for(&["alice is online"], WAIT).unwrap();
    until_printed(&mut alice, "sync", "bob accepted");

    let took = [
        change_seen(&mut bob, "status invisible", &mut alice, "bob is offline"),
        change_seen(&mut bob, "status online", &mut alice, "bob is online"),
        change_seen(&mut alice, "status invisible", &mut bob, "alice is offline"),
        change_seen(&mut alice, "status online", &mut bob, "alice is online"),
    ];
    eprintln!("NETNS PRESENCE: bob invisible / online seen by alice, alice invisible / online seen by bob: {took:?}");
    for t in took {
        assert!(t < WITHIN, "a change took {t:?}: {took:?}");
    }
}
