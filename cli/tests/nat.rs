//! Real NAT tests: real `natter` processes in network namespaces behind real NAT routers
//! (nftables masquerade) and firewalls (see `netns/mod.rs` for the topology). Needs root, iproute2
//! and nftables; skipped with a clear note otherwise, unless `NATTER_REQUIRE_NETNS` is set (as
//! `make test` does), which makes a missing capability a failure.

#![cfg(target_os = "linux")]

mod netns;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use netns::natter::{self, servers, WAIT};
use netns::{net_or_skip, Nat, Net, Proc};

/// Register `user` from namespace `ns` and start its node there, listening on `ip:4000`.
fn node(
    net: &mut Net,
    dir: &Path,
    network: &str,
    ns: &str,
    user: &str,
    ip: Ipv4Addr,
    extra: &[&str],
) -> Result<Proc, String> {
    natter::start(net, dir, network, ns, "node", user, ip, extra)
}

/// A node's attach line and NAT line, once both printed.
fn attach_and_nat(p: &mut Proc) -> Result<(String, String), String> {
    p.wait_for(&["attached to super node", "NAT: "], WAIT)?;
    Ok((
        p.line("attached to super node").unwrap().to_string(),
        p.line("NAT: ").unwrap().to_string(),
    ))
}

/// Ordinary nodes on a public host, behind a port-restricted NAT, behind a symmetric NAT, and
/// behind a NAT whose firewall drops UDP: each attaches to the super node (the last over TCP,
/// after finding UDP blocked) and classifies what sits between it and the Internet; a node
/// behind a NAT finds the others through the index.
#[test]
fn nodes_behind_real_nats_attach_classify_and_search() {
    let Some(mut net) = net_or_skip("nodes_behind_real_nats_attach_classify_and_search") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let network = servers(&mut net, dir.path()).unwrap();
    let (public, paddr) = net.public_host("public", 1).unwrap();
    let restricted = net.nat_site("prc", Nat::PortRestricted, false).unwrap();
    let symmetric = net.nat_site("sym", Nat::Symmetric, false).unwrap();
    let walled = net.nat_site("fw", Nat::PortRestricted, true).unwrap();
    let built = started.elapsed();
    let ordinary = ["--no-supernode"];
    let mut open = node(
        &mut net,
        dir.path(),
        &network,
        &public,
        "olive",
        paddr[0],
        &ordinary,
    )
    .unwrap();
    let mut sym = node(
        &mut net,
        dir.path(),
        &network,
        &symmetric.host,
        "simon",
        symmetric.private,
        &ordinary,
    )
    .unwrap();
    let mut fw = node(
        &mut net,
        dir.path(),
        &network,
        &walled.host,
        "fiona",
        walled.private,
        &ordinary,
    )
    .unwrap();

    // (a) A public address: attached over UDP, seen as itself, open.
    let (attach, nat) = attach_and_nat(&mut open).unwrap();
    assert!(
        attach.contains(&format!("seen as {}:", paddr[0])),
        "{attach}"
    );
    assert!(nat.contains("NAT: open"), "{nat}");
    assert!(
        nat.contains(&format!("mapped address {}:4000", paddr[0])),
        "{nat}"
    );
    // (c) Symmetric NAT: seen as the NAT's outside address, mapping depends on the destination.
    let (attach, nat) = attach_and_nat(&mut sym).unwrap();
    assert!(
        attach.contains(&format!("seen as {}:", symmetric.public)),
        "{attach}"
    );
    assert!(nat.contains("(symmetric)"), "{nat}");
    assert!(
        nat.contains(&format!("mapped address {}:", symmetric.public)),
        "{nat}"
    );
    // (d) NAT + firewall dropping UDP: UDP blocked found, attached over TCP.
    let (attach, nat) = attach_and_nat(&mut fw).unwrap();
    fw.wait_for(&["UDP seems blocked"], WAIT).unwrap();
    assert!(attach.contains("via Tcp"), "{attach}");
    assert!(
        attach.contains(&format!("seen as {}:", walled.public)),
        "{attach}"
    );
    assert!(nat.contains("NAT: UDP blocked"), "{nat}");

    // (b) Port-restricted NAT: started once the others are in the index, which it searches.
    let mut prc = node(
        &mut net,
        dir.path(),
        &network,
        &restricted.host,
        "paula",
        restricted.private,
        &[
            "--no-supernode",
            "--search",
            "olive",
            "--search",
            "simon",
            "--search",
            "fiona",
        ],
    )
    .unwrap();
    let (attach, nat) = attach_and_nat(&mut prc).unwrap();
    assert!(
        attach.contains(&format!("seen as {}:", restricted.public)),
        "{attach}"
    );
    assert!(
        nat.contains(&format!("mapped address {}:4000", restricted.public)),
        "{nat}"
    );
    assert!(
        nat.contains("endpoint-independent mapping, address-and-port-dependent filtering"),
        "{nat}"
    );
    prc.wait_for(
        &[
            "found olive: device",
            "found simon: device",
            "found fiona: device",
        ],
        WAIT,
    )
    .unwrap();
    for user in ["olive", "simon", "fiona"] {
        let found = prc.line(&format!("found {user}")).unwrap();
        assert!(found.contains("online"), "{found}");
    }
    for p in [&open, &sym, &fw, &prc] {
        for l in p
            .seen
            .iter()
            .filter(|l| l.contains("attached") || l.contains("NAT"))
        {
            eprintln!("{l}");
        }
    }
    eprintln!(
        "topology built in {:.1} s; whole test {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The harness leaves nothing behind: a test that panics with processes running in its
/// namespaces still has them killed and the namespaces deleted, and namespaces left by a run
/// that died without cleaning up (its process is gone) are deleted by the next run.
#[test]
fn the_harness_tears_down_after_a_panic_and_removes_stale_namespaces() {
    let test = "the_harness_tears_down_after_a_panic_and_removes_stale_namespaces";
    let Some(probe) = net_or_skip(test) else {
        return;
    };
    drop(probe);
    // A namespace as a crashed run leaves it: pid 999999999 cannot exist (above pid_max).
    let stale = "ntr999999999x0-core";
    netns::run("ip", &["netns", "add", stale]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let mut net = Net::new().unwrap();
        tx.send(net.prefix().to_string()).unwrap();
        let site = net.nat_site("boom", Nat::Symmetric, true).unwrap();
        let mut sleeper = net
            .spawn(
                &site.host,
                Path::new("sh"),
                &["-c", "echo up; sleep 60.4242"],
                &[],
            )
            .unwrap();
        sleeper.wait_for(&["up"], WAIT).unwrap();
        assert_eq!(Net::existing(net.prefix()).len(), 4, "core, hop, NAT, host");
        panic!("a test failing with its topology up");
    })
    .join();
    assert!(failed.is_err(), "the thread panicked");
    let prefix = rx.recv().unwrap();
    assert_eq!(Net::existing(&prefix), Vec::<String>::new());
    assert!(!Net::existing("ntr999999999x").contains(&stale.to_string()));
    // Neither the shell nor its `sleep` child survived (pgrep fails when nothing matches).
    let survivors = netns::run("pgrep", &["-f", "sleep 60.4242"]).unwrap_or_default();
    assert_eq!(survivors.trim(), "", "processes left in deleted namespaces");
}
