//! Joining the overlay in the simulator: super nodes, ordinary nodes behind every NAT
//! behaviour and a UDP-blocking firewall, NAT detection, the connection path (UDP probes then
//! TCP links; TCP only when UDP is blocked), promotion of public nodes only, and failover when a
//! super node dies.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use natter_core::overlay::AttachEvent;
use natter_core::overlay::HostCache;
use natter_core::overlay::{Filtering, NatType};
use natter_core::sansio::StreamId;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_overlay::node::{Load, Node, NodeConfig, NodeEvent, RolePolicy};
use natter_overlay::supernode::SuperNodeEvent;
use natter_sim::{
    FilteringBehavior, HostId, LinkConfig, NatConfig, PortAllocation, Sim, SimConfig, StreamStatus,
};

const SUPER_NODES: u8 = 3;

fn sn_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 10 + i], 4000))
}

fn sn_alt(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 100, 10 + i], 4001))
}

struct World {
    sim: Sim<NodeEvent>,
    net: TestNetwork,
    sns: Vec<HostId>,
    bootstrap: HostCache,
}

fn world(seed: u64) -> World {
    world_with(seed, true)
}

/// `alternates`: each super node has a second IP; without, they pair up for RFC 5780.
fn world_with(seed: u64, alternates: bool) -> World {
    world_tweaked(seed, alternates, |_| {})
}

/// [`world_with`], with `tweak` applied to every super node's configuration.
fn world_tweaked(seed: u64, alternates: bool, tweak: impl Fn(&mut NodeConfig)) -> World {
    let mut sim: Sim<NodeEvent> = Sim::new(SimConfig {
        seed,
        internet: LinkConfig::with_latency(Duration::from_millis(20))
            .jitter(Duration::from_millis(5)),
        ..SimConfig::default()
    });
    let net = TestNetwork::new(seed);
    let mut bootstrap = HostCache::new();
    for i in 0..SUPER_NODES {
        bootstrap.insert(sn_addr(i), None, TEST_WALL);
    }
    let mut sns = Vec::new();
    for i in 0..SUPER_NODES {
        sns.push(common::sim::add_super_node_with(
            &mut sim,
            &format!("sn{i}"),
            net.identity(&format!("sn{i}")),
            [i; 32],
            sn_addr(i),
            alternates.then(|| sn_alt(i)),
            &bootstrap,
            &tweak,
        ));
    }
    World {
        sim,
        net,
        sns,
        bootstrap,
    }
}

fn add_node(
    w: &mut World,
    name: &str,
    nat: Option<NatConfig>,
    index: u8,
    role: RolePolicy,
) -> HostId {
    let cache = w.bootstrap.clone();
    add_node_with(w, name, nat, index, role, cache)
}

fn add_node_with(
    w: &mut World,
    name: &str,
    nat: Option<NatConfig>,
    index: u8,
    role: RolePolicy,
    cache: HostCache,
) -> HostId {
    let start = w.sim.now();
    let (addr, network_nat) = match nat {
        Some(cfg) => {
            let n = w.sim.add_nat(
                &format!("nat-{name}"),
                SocketAddr::from(([198, 18, 50, index], 0)).ip(),
                cfg,
            );
            (SocketAddr::from(([10, 0, 0, 2], 5000)), Some(n))
        }
        None => (SocketAddr::from(([198, 18, 60, index], 5000)), None),
    };
    let mut cfg = NodeConfig::new(
        w.net.identity(name),
        [100 + index; 32],
        TEST_WALL,
        start,
        addr,
    );
    cfg.role = role;
    cfg.host_cache = cache;
    cfg.promotion_uptime = Duration::from_secs(3);
    cfg.nat_recheck = Duration::from_secs(10);
    let node = Node::new(cfg, start);
    match network_nat {
        Some(n) => w.sim.add_host_behind(n, name, addr, node),
        None => w.sim.add_host(name, addr, node),
    }
}

fn events(w: &World, h: HostId) -> Vec<NodeEvent> {
    w.sim.events(h).iter().map(|(_, e)| e.clone()).collect()
}

fn nat_of(w: &World, h: HostId) -> Option<NatType> {
    events(w, h).iter().rev().find_map(|e| match e {
        NodeEvent::Nat(r) => Some(r.nat),
        _ => None,
    })
}

#[test]
fn nodes_behind_every_nat_attach_detect_and_only_public_ones_promote() {
    let mut w = world(1);
    let cases: Vec<(&str, Option<NatConfig>, Option<NatType>)> = vec![
        ("public", None, Some(NatType::Open)),
        (
            "fullcone",
            Some(NatConfig::full_cone()),
            Some(NatType::EndpointIndependent(Filtering::EndpointIndependent)),
        ),
        (
            "restricted",
            Some(NatConfig::restricted_cone()),
            Some(NatType::EndpointIndependent(Filtering::AddressDependent)),
        ),
        (
            "portrestricted",
            Some(NatConfig::port_restricted_cone()),
            Some(NatType::EndpointIndependent(
                Filtering::AddressAndPortDependent,
            )),
        ),
        (
            "symmetric",
            Some(NatConfig::symmetric()),
            Some(NatType::Symmetric),
        ),
        (
            "firewalled",
            Some(NatConfig::udp_blocking_firewall()),
            Some(NatType::UdpBlocked),
        ),
    ];
    let mut hosts = BTreeMap::new();
    for (i, (name, nat, _)) in cases.iter().enumerate() {
        hosts.insert(
            *name,
            add_node(&mut w, name, nat.clone(), i as u8 + 1, RolePolicy::Auto),
        );
    }
    w.sim.run_for(Duration::from_secs(8));
    for (name, _, expected) in &cases {
        let h = hosts[name];
        let node = w.sim.machine::<Node>(h);
        assert_eq!(
            node.attached().len(),
            2,
            "{name} keeps two super-node links: {:?}",
            events(&w, h)
        );
        assert_eq!(nat_of(&w, h), *expected, "{name}");
        let udp_blocked = events(&w, h)
            .iter()
            .any(|e| matches!(e, NodeEvent::Attach(AttachEvent::UdpBlocked)));
        assert_eq!(
            udp_blocked,
            *name == "firewalled",
            "{name}: straight to TCP only when UDP is blocked"
        );
        let promoted = events(&w, h).contains(&NodeEvent::Promoted);
        assert_eq!(
            promoted,
            *name == "public",
            "{name}: only the public node promotes"
        );
    }
    // The super nodes know each other and their clients.
    let total: usize = w
        .sns
        .iter()
        .map(|h| {
            w.sim
                .machine::<Node>(*h)
                .super_node()
                .unwrap()
                .client_count()
        })
        .sum();
    assert!(total >= 2 * cases.len(), "{total}");
    for h in &w.sns {
        let role = w.sim.machine::<Node>(*h).super_node().unwrap();
        assert!(
            role.members().len() >= 2,
            "membership: {:?}",
            role.members()
        );
    }
    // The promoted node is now in the others' host caches, learnt by gossip.
    w.sim.run_for(Duration::from_secs(60));
    let public_addr = SocketAddr::from(([198, 18, 60, 1], 5000));
    let learnt = w.sns.iter().any(|h| {
        w.sim
            .machine::<Node>(*h)
            .super_node()
            .unwrap()
            .members()
            .iter()
            .any(|e| e.addr == public_addr)
    });
    assert!(learnt, "the new super node joined the membership");
}

/// Every link to a super node is a TCP stream; the attach answer tells the node its address
/// as the super node sees it: the far end of that stream. Behind a UDP-blocking firewall (a
/// NAT too) that is the NAT's public address, not the super node's own (as it once was).
#[test]
fn a_node_attached_over_tcp_is_told_its_public_address() {
    let mut w = world(5);
    let firewalled = add_node(
        &mut w,
        "firewalled",
        Some(NatConfig::udp_blocking_firewall()),
        7,
        RolePolicy::Forbid,
    );
    let public = add_node(&mut w, "public", None, 8, RolePolicy::Forbid);
    w.sim.run_for(Duration::from_secs(8));
    let nat_ip = SocketAddr::from(([198, 18, 50, 7], 0)).ip();
    let public_ip = SocketAddr::from(([198, 18, 60, 8], 0)).ip();
    let sn_addrs: Vec<SocketAddr> = (0..SUPER_NODES)
        .flat_map(|i| [sn_addr(i), sn_alt(i)])
        .collect();
    for (h, ip, name) in [
        (firewalled, nat_ip, "firewalled"),
        (public, public_ip, "public"),
    ] {
        let attached: Vec<(SocketAddr, SocketAddr)> = events(&w, h)
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Attach(AttachEvent::Attached {
                    super_node,
                    reflexive,
                    ..
                }) => Some((*super_node, *reflexive)),
                _ => None,
            })
            .collect();
        assert_eq!(attached.len(), 2, "{name}: {:?}", events(&w, h));
        for (sn, reflexive) in &attached {
            assert!(
                !sn_addrs.contains(reflexive),
                "{name} told {reflexive} by {sn}"
            );
            assert_eq!(reflexive.ip(), ip, "{name}, attached to {sn}");
            assert_ne!(reflexive.port(), 0);
            // The super node keeps the same address in its client record.
            let sn_host = w.sns[(0..SUPER_NODES).position(|i| sn_addr(i) == *sn).unwrap()];
            let recorded: Vec<SocketAddr> = w
                .sim
                .machine::<Node>(sn_host)
                .super_node()
                .unwrap()
                .clients()
                .map(|(_, c)| c.reflexive)
                .collect();
            assert!(recorded.contains(reflexive), "{name} at {sn}: {recorded:?}");
        }
    }
    assert!(events(&w, firewalled)
        .iter()
        .any(|e| matches!(e, NodeEvent::Attach(AttachEvent::UdpBlocked))));
}

#[test]
fn a_dead_super_node_is_replaced_within_two_seconds() {
    let mut w = world(2);
    let mut nodes = Vec::new();
    for i in 0..6u8 {
        let nat = if i % 2 == 0 {
            Some(NatConfig::port_restricted_cone())
        } else {
            Some(NatConfig::udp_blocking_firewall())
        };
        nodes.push(add_node(
            &mut w,
            &format!("user{i}"),
            nat,
            i + 1,
            RolePolicy::Forbid,
        ));
    }
    w.sim.run_for(Duration::from_secs(5));
    for h in &nodes {
        assert_eq!(w.sim.machine::<Node>(*h).attached().len(), 2);
    }
    // Kill the super node with the most clients.
    let victim = *w
        .sns
        .iter()
        .max_by_key(|h| {
            w.sim
                .machine::<Node>(**h)
                .super_node()
                .unwrap()
                .client_count()
        })
        .unwrap();
    let victim_addr = w.sim.host_addrs(victim)[0];
    let affected: Vec<HostId> = nodes
        .iter()
        .copied()
        .filter(|h| w.sim.machine::<Node>(*h).attached().contains(&victim_addr))
        .collect();
    assert!(!affected.is_empty());
    w.sim.crash(victim);
    w.sim.run_for(Duration::from_secs(2));
    for h in &affected {
        let node = w.sim.machine::<Node>(*h);
        let attached = node.attached();
        assert!(
            !attached.contains(&victim_addr),
            "the dead super node is gone"
        );
        assert!(!attached.is_empty(), "never left without a super node");
    }
    // With only two super nodes left, every node is back to two links.
    w.sim.run_for(Duration::from_secs(3));
    for h in &affected {
        assert_eq!(
            w.sim.machine::<Node>(*h).attached().len(),
            2,
            "{:?}",
            events(&w, *h)
        );
    }
}

#[test]
fn a_super_node_that_loses_reachability_demotes_itself_and_hands_clients_over() {
    let mut w = world(3);
    let p = add_node(&mut w, "promoted", None, 1, RolePolicy::Auto);
    w.sim.run_for(Duration::from_secs(5));
    assert!(events(&w, p).contains(&NodeEvent::Promoted));
    let p_addr = w.sim.host_addrs(p)[0];
    // Clients that know only the new super node and one other attach to both.
    let mut cache = HostCache::new();
    cache.insert(p_addr, None, TEST_WALL);
    cache.insert(sn_addr(0), None, TEST_WALL);
    let clients: Vec<HostId> = (0..3u8)
        .map(|i| {
            add_node_with(
                &mut w,
                &format!("client{i}"),
                Some(NatConfig::port_restricted_cone()),
                10 + i,
                RolePolicy::Forbid,
                cache.clone(),
            )
        })
        .collect();
    w.sim.run_for(Duration::from_secs(3));
    for c in &clients {
        assert!(
            w.sim.machine::<Node>(*c).attached().contains(&p_addr),
            "{:?}",
            events(&w, *c)
        );
    }
    // The super node's UDP is cut (a firewall appears): its next NAT re-check demotes it.
    w.sim.set_udp_blocked(p, true);
    w.sim.run_for(Duration::from_secs(15));
    assert!(
        events(&w, p).contains(&NodeEvent::Demoted),
        "{:?}",
        events(&w, p)
    );
    assert!(!w.sim.machine::<Node>(p).is_super_node());
    for c in &clients {
        let attached = w.sim.machine::<Node>(*c).attached();
        assert!(!attached.contains(&p_addr), "handed over");
        assert_eq!(
            attached.len(),
            2,
            "re-attached to super nodes learnt from the others: {:?}",
            events(&w, *c)
        );
    }
}

#[test]
fn single_address_super_nodes_pair_up_for_nat_detection() {
    let mut w = world_with(4, false);
    let cases: Vec<(&str, Option<NatConfig>, NatType)> = vec![
        ("public", None, NatType::Open),
        (
            "fullcone",
            Some(NatConfig::full_cone()),
            NatType::EndpointIndependent(Filtering::EndpointIndependent),
        ),
        (
            "restricted",
            Some(NatConfig::restricted_cone()),
            NatType::EndpointIndependent(Filtering::AddressDependent),
        ),
        (
            "portrestricted",
            Some(NatConfig::port_restricted_cone()),
            NatType::EndpointIndependent(Filtering::AddressAndPortDependent),
        ),
        (
            "symmetric",
            Some(NatConfig::symmetric()),
            NatType::Symmetric,
        ),
    ];
    // Let the super nodes link up and pick partners first.
    w.sim.run_for(Duration::from_secs(3));
    let mut hosts = Vec::new();
    for (i, (name, nat, _)) in cases.iter().enumerate() {
        hosts.push(add_node(
            &mut w,
            name,
            nat.clone(),
            i as u8 + 1,
            RolePolicy::Forbid,
        ));
    }
    w.sim.run_for(Duration::from_secs(8));
    for ((name, _, expected), h) in cases.iter().zip(&hosts) {
        let report = events(&w, *h)
            .iter()
            .rev()
            .find_map(|e| match e {
                NodeEvent::Nat(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no NAT report"));
        // The partner's IP was probed while joining, so its answer cannot tell an
        // endpoint-independent filter from an address-dependent one: the report says
        // address-dependent and flags it; every other result is exact.
        let conservative = NatType::EndpointIndependent(Filtering::AddressDependent);
        match expected {
            NatType::EndpointIndependent(Filtering::EndpointIndependent)
                if !report.filtering_certain =>
            {
                assert_eq!(report.nat, conservative, "{name}")
            }
            // On a public address the answer came from a port never sent to: nothing filters
            // by port, so "open" (flagged uncertain), and the node can be promoted.
            NatType::Open => assert_eq!(report.nat, NatType::Open, "{name}: {report:?}"),
            _ => assert_eq!(report.nat, *expected, "{name}: {report:?}"),
        }
    }
}

#[test]
fn promotion_needs_spare_capacity_and_overload_demotes() {
    let mut w = world(5);
    let busy = add_node(&mut w, "busy", None, 1, RolePolicy::Auto);
    let idle = add_node(&mut w, "idle", None, 2, RolePolicy::Auto);
    w.sim.with_machine(busy, |n: &mut Node, now| {
        n.report_load(
            now,
            Load {
                cpu: 0.8,
                bytes_per_sec: 0,
            },
        )
    });
    w.sim.with_machine(idle, |n: &mut Node, now| {
        n.report_load(
            now,
            Load {
                cpu: 0.1,
                bytes_per_sec: 0,
            },
        )
    });
    w.sim.run_for(Duration::from_secs(6));
    assert!(
        !events(&w, busy).contains(&NodeEvent::Promoted),
        "no spare CPU, no promotion"
    );
    assert!(events(&w, idle).contains(&NodeEvent::Promoted));
    // The new super node becomes overloaded and stays so: it gives the role up.
    w.sim.with_machine(idle, |n: &mut Node, now| {
        n.report_load(
            now,
            Load {
                cpu: 0.97,
                bytes_per_sec: 0,
            },
        )
    });
    w.sim.run_for(Duration::from_secs(10));
    assert!(
        w.sim.machine::<Node>(idle).is_super_node(),
        "a short spike is tolerated"
    );
    w.sim.run_for(Duration::from_secs(25));
    assert!(events(&w, idle).contains(&NodeEvent::Demoted));
    assert!(!w.sim.machine::<Node>(idle).is_super_node());
}

#[test]
fn a_network_change_re_detects_and_re_attaches() {
    let mut w = world(6);
    let n = add_node(
        &mut w,
        "roamer",
        Some(NatConfig::port_restricted_cone()),
        1,
        RolePolicy::Forbid,
    );
    w.sim.run_for(Duration::from_secs(3));
    assert_eq!(w.sim.machine::<Node>(n).attached().len(), 2);
    let before = events(&w, n)
        .iter()
        .filter(|e| matches!(e, NodeEvent::Nat(_)))
        .count();
    // A new address (Wi-Fi to cable): the node drops its links, re-attaches, re-detects.
    let t = w.sim.elapsed();
    w.sim.with_machine(n, |m: &mut Node, now| {
        m.set_local_addresses(
            now,
            vec![
                "10.0.0.2:5000".parse().unwrap(),
                "10.0.1.2:5000".parse().unwrap(),
            ],
        )
    });
    w.sim.run_for(Duration::from_secs(2));
    let after: Vec<(Duration, NodeEvent)> = w
        .sim
        .events(n)
        .iter()
        .filter(|(at, _)| *at >= t)
        .cloned()
        .collect();
    let reattached = after
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Attach(AttachEvent::Attached { .. })))
        .count();
    assert!(reattached >= 2, "re-attached within 2 s: {after:?}");
    assert_eq!(w.sim.machine::<Node>(n).attached().len(), 2);
    let nat_after = events(&w, n)
        .iter()
        .filter(|e| matches!(e, NodeEvent::Nat(_)))
        .count();
    assert!(nat_after > before, "NAT re-detected");
}

/// The super-node end of every stream `client` opened to `sn_addr`.
fn sn_ends(w: &World, client: HostId, sn_addr: SocketAddr) -> Vec<StreamId> {
    w.sim
        .streams_of(client)
        .into_iter()
        .filter_map(|s| w.sim.stream_info(s))
        .filter(|i| i.remote == sn_addr && i.status == StreamStatus::Open)
        .filter_map(|i| i.peer)
        .collect()
}

fn stream_open(w: &World, s: StreamId) -> bool {
    w.sim
        .stream_info(s)
        .is_some_and(|i| i.status == StreamStatus::Open)
}

#[test]
fn a_silent_client_is_dropped_and_its_stream_closed() {
    let mut w = world(7);
    let c = add_node(
        &mut w,
        "silent",
        Some(NatConfig::port_restricted_cone()),
        1,
        RolePolicy::Forbid,
    );
    w.sim.run_for(Duration::from_secs(5));
    let user = w.net.identity("silent").certificate.user.clone();
    let attached = w.sim.machine::<Node>(c).attached();
    assert_eq!(attached.len(), 2);
    let holds = |w: &World, sn: HostId| {
        w.sim
            .machine::<Node>(sn)
            .super_node()
            .unwrap()
            .clients()
            .any(|(_, cl)| cl.user == user)
    };
    let mut watched = Vec::new();
    for addr in &attached {
        let sn = *w
            .sns
            .iter()
            .find(|h| w.sim.host_addrs(**h)[0] == *addr)
            .unwrap();
        assert!(holds(&w, sn));
        let ends = sn_ends(&w, c, *addr);
        assert_eq!(ends.len(), 1, "one link to {addr}");
        assert!(stream_open(&w, ends[0]));
        watched.push((sn, ends[0]));
    }
    // The client goes silent: no FIN, no reset, nothing more from it.
    w.sim.power_off(c);
    // Still held a while later (it may only be slow)...
    w.sim.run_for(Duration::from_secs(30));
    for (sn, end) in &watched {
        assert!(holds(&w, *sn) && stream_open(&w, *end));
    }
    // ...and gone, stream closed, within the idle timeout (60 s) and a margin.
    w.sim.run_for(Duration::from_secs(31));
    for (sn, end) in &watched {
        assert!(!holds(&w, *sn), "the silent client is dropped");
        assert!(!stream_open(&w, *end), "and its stream closed");
        assert!(events(&w, *sn).iter().any(|e| matches!(
            e,
            NodeEvent::SuperNode(SuperNodeEvent::ClientDetached { user: u, .. }) if *u == user
        )));
    }
}

#[test]
fn a_silently_dead_super_node_is_detected_by_keepalives_and_replaced() {
    // The super nodes ask for a keep-alive every 2 s; the client's own setting is the 20 s
    // default, so detecting within 3 x 2 s shows it honours theirs.
    let mut w = world_tweaked(8, true, |cfg| {
        cfg.keepalive = Duration::from_secs(2);
        cfg.idle_timeout = Duration::from_secs(6);
    });
    let c = add_node(
        &mut w,
        "client",
        Some(NatConfig::port_restricted_cone()),
        1,
        RolePolicy::Forbid,
    );
    w.sim.run_for(Duration::from_secs(5));
    let before = w.sim.machine::<Node>(c).attached();
    assert_eq!(before.len(), 2);
    // Idle for a while: the client keeps up with the super nodes' 6 s idle timeout.
    w.sim.run_for(Duration::from_secs(20));
    assert_eq!(w.sim.machine::<Node>(c).attached(), before);
    assert!(!events(&w, c)
        .iter()
        .any(|e| matches!(e, NodeEvent::Attach(AttachEvent::Detached { .. }))));
    // One of its super nodes loses power: its TCP connections are never reset.
    let dead = before[0];
    let victim = *w
        .sns
        .iter()
        .find(|h| w.sim.host_addrs(**h)[0] == dead)
        .unwrap();
    w.sim.power_off(victim);
    let t0 = w.sim.elapsed();
    let detected = w.sim.run_until_cond(Duration::from_secs(10), |sim| {
        !sim.machine::<Node>(c).attached().contains(&dead)
    });
    assert!(detected, "{:?}", events(&w, c));
    let took = w.sim.elapsed() - t0;
    assert!(
        took <= Duration::from_millis(6_200),
        "detected within three missed keep-alives: {took:?}"
    );
    // Attached to the two live super nodes again.
    w.sim.run_for(Duration::from_secs(5));
    let after = w.sim.machine::<Node>(c).attached();
    assert_eq!(after.len(), 2, "{:?}", events(&w, c));
    assert!(!after.contains(&dead));
}

#[test]
fn a_public_node_behind_a_filtering_firewall_does_not_promote() {
    let mut w = world(9);
    // A stateful firewall in front of a public address: a NAT that keeps the port, with the
    // node's own address being the external one (so its mapped address is its own).
    let cases = [
        (
            "fw-restricted",
            FilteringBehavior::AddressDependent,
            Filtering::AddressDependent,
        ),
        (
            "fw-portrestricted",
            FilteringBehavior::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
    ];
    let mut hosts = Vec::new();
    for (i, (name, filtering, _)) in cases.iter().enumerate() {
        let external = SocketAddr::from(([198, 18, 70, i as u8 + 1], 5000));
        let nat = w.sim.add_nat(
            &format!("fw-{name}"),
            external.ip(),
            NatConfig {
                filtering: *filtering,
                port_allocation: PortAllocation::Preserve,
                ..NatConfig::full_cone()
            },
        );
        let inside = SocketAddr::from(([10, 0, 0, 2], 5000));
        let start = w.sim.now();
        let mut cfg = NodeConfig::new(
            w.net.identity(name),
            [150 + i as u8; 32],
            TEST_WALL,
            start,
            inside,
        );
        cfg.local_addresses = vec![external];
        cfg.host_cache = w.bootstrap.clone();
        cfg.promotion_uptime = Duration::from_secs(3);
        cfg.nat_recheck = Duration::from_secs(10);
        let node = Node::new(cfg, start);
        hosts.push(w.sim.add_host_behind(nat, name, inside, node));
    }
    // Well past the promotion uptime and a NAT re-check.
    w.sim.run_for(Duration::from_secs(15));
    for ((name, _, filtering), h) in cases.iter().zip(&hosts) {
        assert_eq!(
            nat_of(&w, *h),
            Some(NatType::PublicFiltered(*filtering)),
            "{name}: {:?}",
            events(&w, *h)
        );
        assert!(!events(&w, *h).contains(&NodeEvent::Promoted), "{name}");
        assert!(!w.sim.machine::<Node>(*h).is_super_node(), "{name}");
        assert_eq!(w.sim.machine::<Node>(*h).attached().len(), 2, "{name}");
    }
}

/// Times (since the start) at which `h` began attach rounds.
fn round_starts(w: &World, h: HostId) -> Vec<Duration> {
    w.sim
        .events(h)
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Attach(AttachEvent::Connecting { .. })))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn with_every_super_node_down_rounds_back_off_with_jitter_until_one_comes_back() {
    // The bootstrap super nodes are all down: no host answers at their addresses (probes
    // vanish, TCP connections to the main, fallback and TLS ports time out).
    let sim: Sim<NodeEvent> = Sim::new(SimConfig {
        seed: 12,
        internet: LinkConfig::with_latency(Duration::from_millis(20))
            .jitter(Duration::from_millis(5)),
        ..SimConfig::default()
    });
    let net = TestNetwork::new(12);
    let mut bootstrap = HostCache::new();
    for i in 0..2 {
        bootstrap.insert(sn_addr(i), None, TEST_WALL);
    }
    let mut w = World {
        sim,
        net,
        sns: Vec::new(),
        bootstrap,
    };
    // Two nodes, differently seeded.
    let a = add_node(&mut w, "alice", None, 1, RolePolicy::Forbid);
    let b = add_node(&mut w, "bob", None, 2, RolePolicy::Forbid);
    // Long enough for the back-off to reach its cap, and for more failed rounds than the host
    // cache tolerates before it prunes an entry.
    let down_for = Duration::from_secs(300);
    w.sim.run_for(down_for);
    let mut gaps_of = Vec::new();
    for h in [a, b] {
        assert!(w.sim.machine::<Node>(h).attached().is_empty());
        let starts = round_starts(&w, h);
        let empty = w
            .sim
            .events(h)
            .iter()
            .filter(|(_, e)| matches!(e, NodeEvent::Attach(AttachEvent::NoSuperNode)))
            .count();
        // Cut off: said once, not at every round (the rounds below had candidates: more
        // failed rounds than the host cache keeps a failing entry through, 8, and the
        // bootstrap entries are put back rather than leaving the node with nobody to try).
        assert_eq!(empty, 1, "reported once");
        let gaps: Vec<Duration> = starts.windows(2).map(|p| p[1] - p[0]).collect();
        eprintln!(
            "{}: {} rounds; gaps between them {:?}",
            w.sim.host_name(h),
            starts.len(),
            gaps
        );
        assert!(gaps.len() >= 10, "kept trying: {gaps:?}");
        // Each round takes the same time here (the probe window, then connection timeouts);
        // the delay after it doubles from 0.5 s, jittered within its upper half, so each gap
        // is longer than the one before until the 30 s cap.
        for i in 0..5 {
            assert!(gaps[i + 1] > gaps[i], "the back-off grows: {gaps:?}");
        }
        assert!(
            gaps[5] >= gaps[0] + Duration::from_secs(4),
            "and grows a lot: {gaps:?}"
        );
        // Capped: never more than 30 s of waiting on top of a round (about 9.3 s here).
        let longest = *gaps.iter().max().unwrap();
        assert!(longest <= Duration::from_secs(42), "capped: {gaps:?}");
        assert!(
            longest >= Duration::from_secs(24),
            "reaches the cap: {gaps:?}"
        );
        gaps_of.push(gaps);
    }
    // Jittered: the two nodes do not retry in step.
    let n = gaps_of[0].len().min(gaps_of[1].len());
    let differing = (0..n)
        .filter(|i| gaps_of[0][*i].abs_diff(gaps_of[1][*i]) > Duration::from_millis(50))
        .count();
    assert!(
        differing >= n / 2,
        "the nodes' retry delays differ: {:?} vs {:?}",
        gaps_of[0],
        gaps_of[1]
    );
    // A super node comes back: both attach to it within one capped back-off and a round.
    let bootstrap = w.bootstrap.clone();
    common::sim::add_super_node(
        &mut w.sim,
        "sn0",
        w.net.identity("sn0"),
        [0; 32],
        sn_addr(0),
        Some(sn_alt(0)),
        &bootstrap,
    );
    let back = w.sim.elapsed();
    let attached = w.sim.run_until_cond(Duration::from_secs(45), |sim| {
        [a, b]
            .iter()
            .all(|h| sim.machine::<Node>(*h).attached() == [sn_addr(0)])
    });
    assert!(
        attached,
        "attached once a super node is back: {:?} / {:?}",
        w.sim.machine::<Node>(a).describe_attach(w.sim.now()),
        w.sim.machine::<Node>(b).describe_attach(w.sim.now())
    );
    eprintln!(
        "attached {:?} after the super node came back",
        w.sim.elapsed() - back
    );
}
