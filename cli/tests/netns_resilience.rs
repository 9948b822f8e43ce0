//! Calls and nodes that survive what real networks do to them, with real `natter` processes
//! in network namespaces behind real NAT routers (see `netns/mod.rs`): a login server and
//! three super nodes on public hosts. Needs root, iproute2 and nftables; skipped with a clear
//! note otherwise, unless `NATTER_REQUIRE_NETNS` is set.

#![cfg(target_os = "linux")]

mod netns;

use netns::natter::{self, servers_with, WAIT};
use netns::{net_or_skip, Nat, Proc};

/// A node's NAT line, once printed.
fn nat_line(p: &mut Proc) -> String {
    p.wait_for(&["NAT: "], WAIT).unwrap();
    p.line("NAT: ").unwrap().to_string()
}

/// Super nodes with one address each: a node classifies its NAT through a partner super node
/// (the one it attached to asks another to answer "change IP" tests): a public host is open, a
/// port-restricted NAT is port-restricted, a symmetric NAT symmetric.
#[test]
fn nodes_classify_their_nat_with_single_address_super_nodes() {
    let test = "nodes_classify_their_nat_with_single_address_super_nodes";
    let Some(mut net) = net_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = servers_with(&mut net, dir.path(), 3, false).unwrap();
    let network = servers.network.clone();
    let (public, paddr) = net.public_host("public", 1).unwrap();
    let restricted = net.nat_site("prc", Nat::PortRestricted, false).unwrap();
    let symmetric = net.nat_site("sym", Nat::Symmetric, false).unwrap();
    let ordinary = ["--no-supernode"];
    let d = dir.path();
    let mut open = natter::start(
        &mut net, d, &network, &public, "node", "olive", paddr[0], &ordinary,
    )
    .unwrap();
    let mut prc = natter::start(
        &mut net,
        d,
        &network,
        &restricted.host,
        "node",
        "pia",
        restricted.private,
        &ordinary,
    )
    .unwrap();
    let mut sym = natter::start(
        &mut net,
        d,
        &network,
        &symmetric.host,
        "node",
        "simon",
        symmetric.private,
        &ordinary,
    )
    .unwrap();
    let (o, p, s) = (nat_line(&mut open), nat_line(&mut prc), nat_line(&mut sym));
    println!("public host: {o}\nport-restricted: {p}\nsymmetric: {s}");
    assert!(o.contains("open (public address"), "{o}");
    assert!(p.contains("(port-restricted)"), "{p}");
    assert!(s.contains("(symmetric)"), "{s}");
}
