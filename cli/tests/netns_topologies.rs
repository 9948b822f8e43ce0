//! The call topologies the NAT tests need, built with the network-namespace harness
//! (`netns/mod.rs`), and what reaches what in each: UDP (and ICMP, when `ping` is installed)
//! from one side to the other side's public address, to a public server, and between two hosts
//! on one NAT's LAN; cutting the direct UDP path in the core mid-test and restoring it. No
//! `natter` process runs here: this checks the harness itself. Needs root, iproute2, nftables
//! and bash; skipped with a clear note otherwise, unless `NATTER_REQUIRE_NETNS` is set.

#![cfg(target_os = "linux")]

mod netns;

use std::net::Ipv4Addr;
use std::time::Duration;

use netns::{net_or_skip, Endpoint, Nat, Net, Place};

/// How long a probe that should arrive may take.
const ARRIVES: Duration = Duration::from_secs(2);
/// How long a probe that should not arrive is watched for.
const DROPPED: Duration = Duration::from_millis(200);

/// Where a datagram sent to `to`'s public address is seen: at a NAT's outside address, in the
/// NAT router's namespace.
fn receiver(to: &Endpoint) -> &str {
    to.site.as_ref().map_or(&to.ns, |s| &s.router)
}

/// UDP from namespace `from` to `to` arrives in namespace `at` from exactly `source`, or (with
/// `None`) does not arrive.
fn udp(net: &mut Net, from: &str, at: &str, to: Ipv4Addr, source: Option<Ipv4Addr>) {
    let within = if source.is_some() { ARRIVES } else { DROPPED };
    let seen = net.udp_probe(from, at, to, within).unwrap();
    assert_eq!(
        seen,
        source.into_iter().collect::<Vec<_>>(),
        "UDP {from} -> {to} seen in {at}"
    );
}

/// UDP from `a` to `b`'s public address: arrives from `a`'s public address, or is dropped.
fn udp_to(net: &mut Net, a: &Endpoint, b: &Endpoint, arrives: bool) {
    let at = receiver(b).to_string();
    udp(net, &a.ns, &at, b.public, arrives.then_some(a.public));
}

/// A network with a public server, and sides `a` and `b` at the given places.
fn pair(test: &str, a: Place, b: Place) -> Option<(Net, Endpoint, Endpoint, Endpoint)> {
    let mut net = net_or_skip(test)?;
    let server = net.endpoint("srv", Place::Public).unwrap();
    let a = net.endpoint("a", a).unwrap();
    let b = net.endpoint("b", b).unwrap();
    Some((net, server, a, b))
}

/// Each side reaches the other's public address and the server over UDP (unless `udp` is
/// false: then neither gets anything through), and by ping when it is installed.
fn both_ways(net: &mut Net, server: &Endpoint, a: &Endpoint, b: &Endpoint, udp: bool) {
    for (x, y) in [(a, b), (b, a)] {
        udp_to(net, x, y, udp);
        udp_to(net, x, server, udp);
        if Net::have_ping() {
            assert!(net.ping(&x.ns, y.public), "ping {} -> {}", x.ns, y.public);
            assert!(net.ping(&x.ns, server.public), "ping {} -> server", x.ns);
        }
    }
}

/// (1) Two public hosts.
#[test]
fn two_public_hosts() {
    let Some((mut net, server, a, b)) = pair("two_public_hosts", Place::Public, Place::Public)
    else {
        return;
    };
    both_ways(&mut net, &server, &a, &b, true);
    // Cut and restored in the core: UDP between them only.
    net.block_udp(a.public, b.public).unwrap();
    udp_to(&mut net, &a, &b, false);
    udp_to(&mut net, &b, &a, false);
    udp_to(&mut net, &a, &server, true);
    net.unblock_udp(a.public, b.public).unwrap();
    udp_to(&mut net, &a, &b, true);
}

/// (2) A public host and a host behind a port-restricted NAT: the NAT's outside address is
/// reachable, the host behind it is not (nothing unsolicited gets through). Cutting UDP
/// between the public host and the site leaves the site's path to the server.
#[test]
fn public_host_and_port_restricted_site() {
    let test = "public_host_and_port_restricted_site";
    let Some((mut net, server, a, b)) =
        pair(test, Place::Public, Place::Behind(Nat::PortRestricted))
    else {
        return;
    };
    both_ways(&mut net, &server, &a, &b, true);
    let site = b.site.clone().unwrap();
    udp(&mut net, &a.ns, &site.host, b.public, None);
    net.block_udp(a.public, site.public).unwrap();
    udp_to(&mut net, &a, &b, false);
    udp_to(&mut net, &b, &a, false);
    udp_to(&mut net, &b, &server, true);
    udp_to(&mut net, &a, &server, true);
    net.unblock_udp(a.public, site.public).unwrap();
    udp_to(&mut net, &b, &a, true);
}

/// (3) Two port-restricted sites whose firewalls drop UDP: no UDP leaves either, ICMP does.
#[test]
fn two_firewalled_port_restricted_sites() {
    let test = "two_firewalled_port_restricted_sites";
    let fw = Place::Firewalled(Nat::PortRestricted);
    let Some((mut net, server, a, b)) = pair(test, fw, fw) else {
        return;
    };
    both_ways(&mut net, &server, &a, &b, false);
}

/// (4) Two port-restricted sites without firewalls; the direct path between them cut and
/// restored mid-test while both keep reaching the server.
#[test]
fn two_port_restricted_sites_and_a_cut_direct_path() {
    let test = "two_port_restricted_sites_and_a_cut_direct_path";
    let pr = Place::Behind(Nat::PortRestricted);
    let Some((mut net, server, a, b)) = pair(test, pr, pr) else {
        return;
    };
    both_ways(&mut net, &server, &a, &b, true);
    let (sa, sb) = (a.site.clone().unwrap(), b.site.clone().unwrap());
    net.block_udp_between(&sa, &sb).unwrap();
    udp_to(&mut net, &a, &b, false);
    udp_to(&mut net, &b, &a, false);
    udp_to(&mut net, &a, &server, true);
    udp_to(&mut net, &b, &server, true);
    if Net::have_ping() {
        assert!(net.ping(&a.ns, b.public), "only UDP is cut");
    }
    net.unblock_udp_between(&sa, &sb).unwrap();
    udp_to(&mut net, &a, &b, true);
    udp_to(&mut net, &b, &a, true);
    assert!(
        net.unblock_udp_between(&sa, &sb).is_err(),
        "not blocked now"
    );
}

/// (5) Two symmetric sites.
#[test]
fn two_symmetric_sites() {
    let sym = Place::Behind(Nat::Symmetric);
    let Some((mut net, server, a, b)) = pair("two_symmetric_sites", sym, sym) else {
        return;
    };
    both_ways(&mut net, &server, &a, &b, true);
}

/// (6) Two hosts behind one port-restricted NAT, on its LAN: they reach each other directly
/// (from their private addresses), and the server through the NAT (from its outside address).
#[test]
fn two_hosts_behind_one_nat() {
    let Some(mut net) = net_or_skip("two_hosts_behind_one_nat") else {
        return;
    };
    let server = net.endpoint("srv", Place::Public).unwrap();
    let site = net.nat_site("lan", Nat::PortRestricted, false).unwrap();
    let (second, private) = net.add_host(&site, "lan2").unwrap();
    assert_eq!(private, Ipv4Addr::new(198, 19, site.private.octets()[2], 3));
    let a: Endpoint = site.clone().into();
    let b = Endpoint {
        ns: second,
        addr: private,
        public: site.public,
        site: Some(site.clone()),
    };
    for (x, y) in [(&a, &b), (&b, &a)] {
        udp(&mut net, &x.ns, &y.ns, y.addr, Some(x.addr));
        udp_to(&mut net, x, &server, true);
        if Net::have_ping() {
            assert!(net.ping(&x.ns, y.addr), "ping {} -> {}", x.ns, y.addr);
        }
    }
    // A third host, and the LAN still works with a firewalled NAT (the firewall is between
    // the LAN and the outside only).
    let (third, addr) = net.add_host(&site, "lan3").unwrap();
    udp(&mut net, &third, &a.ns, a.addr, Some(addr));
    let walled = net.nat_site("fw", Nat::PortRestricted, true).unwrap();
    let (next, next_addr) = net.add_host(&walled, "fw2").unwrap();
    udp(
        &mut net,
        &walled.host,
        &next,
        next_addr,
        Some(walled.private),
    );
    udp(&mut net, &next, &server.ns, server.public, None);
}
