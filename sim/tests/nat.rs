//! RFC 4787 NAT behaviours.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use natter_sim::toy::ToyMachine;
use natter_sim::{
    DropReason, FilteringBehavior, HostId, MappingBehavior, NatConfig, NatId, PortAllocation,
    TraceKind,
};

/// Alice behind a NAT, and three public vantage points: S1 on two ports of one IP, and S2.
struct World {
    sim: S,
    nat: NatId,
    alice: HostId,
    s1: HostId,
    s2: HostId,
}

const S1: &str = "198.18.1.1:3478";
const S1B: &str = "198.18.1.1:3479";
const S2: &str = "198.18.2.1:3478";

fn world(config: NatConfig, seed: u64) -> World {
    let mut sim = sim(seed);
    let nat = sim.add_nat("nat", "198.18.0.1".parse().unwrap(), config);
    let alice = quiet_behind(&mut sim, nat, "alice", "192.168.1.2:5000");
    let s1 = toy(&mut sim, "s1", S1);
    sim.bind(s1, sa(S1B));
    let s2 = toy(&mut sim, "s2", S2);
    World {
        sim,
        nat,
        alice,
        s1,
        s2,
    }
}

impl World {
    /// Sends a ping from `host`'s `from` to `to`; returns whether Alice got it.
    fn reaches_alice(&mut self, host: HostId, from: &str, to: SocketAddr) -> bool {
        let before = pings(&self.sim, self.alice).len();
        ping_from(&mut self.sim, host, sa(from), to);
        self.sim.run_for(Duration::from_secs(1));
        let after = pings(&self.sim, self.alice);
        match after.len() - before {
            0 => false,
            1 => {
                assert_eq!(after.last().unwrap().0.to_string(), from);
                true
            }
            n => panic!("{n} pings"),
        }
    }

    fn last_drop(&self) -> Option<DropReason> {
        last_drop(&self.sim)
    }
}

/// Why the last dropped packet was dropped.
fn last_drop(sim: &S) -> Option<DropReason> {
    sim.trace()
        .entries()
        .iter()
        .rev()
        .find_map(|e| match e.kind {
            TraceKind::Dropped(r) => Some(r),
            _ => None,
        })
}

#[test]
fn endpoint_independent_filtering_admits_anyone() {
    let mut w = world(NatConfig::full_cone(), 1);
    let mapped = reflect(&mut w.sim, w.alice, sa(S1));
    assert_eq!(mapped.ip(), w.sim.nat_external_ip(w.nat));
    let s2 = w.s2;
    let s1 = w.s1;
    assert!(w.reaches_alice(s2, S2, mapped));
    assert!(w.reaches_alice(s1, S1B, mapped));
    // Inject from an address that never existed.
    w.sim
        .inject_datagram(sa("198.18.99.99:9"), mapped, &b"hello"[..]);
    w.sim.run_for(Duration::from_secs(1));
    assert!(w.sim.events(w.alice).iter().any(|(_, e)| matches!(
        e,
        natter_sim::toy::ToyEvent::Datagram { from, .. } if *from == sa("198.18.99.99:9")
    )));
    // But without a mapping, nothing gets in.
    let other_port = SocketAddr::new(mapped.ip(), mapped.port().wrapping_add(1).max(1024));
    assert!(!w.reaches_alice(s2, S2, other_port));
    assert_eq!(w.last_drop(), Some(DropReason::NatNoMapping));
}

#[test]
fn address_dependent_filtering_admits_only_contacted_ips() {
    let mut w = world(NatConfig::restricted_cone(), 2);
    let mapped = reflect(&mut w.sim, w.alice, sa(S1));
    let (s1, s2) = (w.s1, w.s2);
    assert!(w.reaches_alice(s1, S1B, mapped), "same IP, other port");
    assert!(!w.reaches_alice(s2, S2, mapped));
    assert_eq!(w.last_drop(), Some(DropReason::NatFiltered));
    assert_eq!(w.sim.counters().dropped_nat, 1);
}

#[test]
fn address_and_port_dependent_filtering_admits_only_contacted_endpoints() {
    let mut w = world(NatConfig::port_restricted_cone(), 3);
    let mapped = reflect(&mut w.sim, w.alice, sa(S1));
    let (s1, s2) = (w.s1, w.s2);
    assert!(!w.reaches_alice(s1, S1B, mapped));
    assert_eq!(w.last_drop(), Some(DropReason::NatFiltered));
    assert!(!w.reaches_alice(s2, S2, mapped));
    assert!(w.reaches_alice(s1, S1, mapped));
}

#[test]
fn endpoint_independent_mapping_keeps_one_port() {
    let mut w = world(NatConfig::port_restricted_cone(), 4);
    let a = reflect(&mut w.sim, w.alice, sa(S1));
    let b = reflect(&mut w.sim, w.alice, sa(S1B));
    let c = reflect(&mut w.sim, w.alice, sa(S2));
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(w.sim.nat_mappings(w.nat).len(), 1);
}

#[test]
fn symmetric_mapping_gives_a_port_per_destination() {
    let mut w = world(NatConfig::symmetric(), 5);
    let a = reflect(&mut w.sim, w.alice, sa(S1));
    let b = reflect(&mut w.sim, w.alice, sa(S1B));
    let c = reflect(&mut w.sim, w.alice, sa(S2));
    let ext = w.sim.nat_external_ip(w.nat);
    assert!(a.ip() == ext && b.ip() == ext && c.ip() == ext);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.port(), c.port());
    assert_ne!(b.port(), c.port());
    // Asking again reuses the mapping.
    assert_eq!(reflect(&mut w.sim, w.alice, sa(S1)), a);
    assert_eq!(w.sim.nat_mappings(w.nat).len(), 3);
    // The mapping made for S1 only admits S1.
    let s2 = w.s2;
    assert!(!w.reaches_alice(s2, S2, a));
}

#[test]
fn address_dependent_mapping_splits_by_ip() {
    let mut w = world(
        NatConfig {
            mapping: MappingBehavior::AddressDependent,
            filtering: FilteringBehavior::EndpointIndependent,
            ..NatConfig::full_cone()
        },
        6,
    );
    let a = reflect(&mut w.sim, w.alice, sa(S1));
    let b = reflect(&mut w.sim, w.alice, sa(S1B));
    let c = reflect(&mut w.sim, w.alice, sa(S2));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn port_allocation_policies() {
    let mut w = world(
        NatConfig {
            port_allocation: PortAllocation::Preserve,
            ..NatConfig::symmetric()
        },
        7,
    );
    assert_eq!(reflect(&mut w.sim, w.alice, sa(S1)).port(), 5000);
    assert_ne!(reflect(&mut w.sim, w.alice, sa(S2)).port(), 5000);

    let mut w = world(
        NatConfig {
            port_allocation: PortAllocation::Sequential,
            port_range: 20000..=29999,
            ..NatConfig::symmetric()
        },
        7,
    );
    let ports: Vec<u16> = [S1, S1B, S2]
        .iter()
        .map(|s| reflect(&mut w.sim, w.alice, sa(s)).port())
        .collect();
    assert_eq!(ports, vec![20000, 20001, 20002]);

    // Random allocation depends on the seed only.
    let port_for = |seed| {
        let mut w = world(NatConfig::full_cone(), seed);
        reflect(&mut w.sim, w.alice, sa(S1)).port()
    };
    assert_eq!(port_for(11), port_for(11));
    let ports: std::collections::BTreeSet<u16> = (0..8).map(port_for).collect();
    assert!(ports.len() > 4, "{ports:?}");
    assert!(ports.iter().all(|p| *p >= 1024));
}

#[test]
fn mappings_expire_after_idle_timeout() {
    let mut w = world(NatConfig::full_cone(), 8);
    assert_eq!(
        w.sim.nat_config(w.nat).mapping_timeout,
        Duration::from_secs(30)
    );
    let mapped = reflect(&mut w.sim, w.alice, sa(S1)); // mapping refreshed at ~1 ms
    let s2 = w.s2;
    w.sim.run_until(Duration::from_secs(20));
    // Inbound traffic does not refresh by default...
    assert!(w.reaches_alice(s2, S2, mapped));
    w.sim.run_until(Duration::from_secs(31));
    assert!(w.sim.nat_mappings(w.nat).is_empty());
    assert!(!w.reaches_alice(s2, S2, mapped));
    assert_eq!(w.last_drop(), Some(DropReason::NatNoMapping));

    // ...outbound traffic does.
    let mapped = reflect(&mut w.sim, w.alice, sa(S1));
    for _ in 0..4 {
        w.sim.run_for(Duration::from_secs(20));
        reflect(&mut w.sim, w.alice, sa(S1));
    }
    assert!(w.reaches_alice(s2, S2, mapped));
}

#[test]
fn inbound_refresh_when_configured() {
    let mut w = world(
        NatConfig {
            refresh_on_inbound: true,
            mapping_timeout: Duration::from_secs(10),
            ..NatConfig::full_cone()
        },
        9,
    );
    let mapped = reflect(&mut w.sim, w.alice, sa(S1));
    let s2 = w.s2;
    for _ in 0..5 {
        w.sim.run_for(Duration::from_secs(8));
        assert!(w.reaches_alice(s2, S2, mapped));
    }
}

fn hairpin_world(hairpinning: bool) -> (S, HostId, HostId, SocketAddr) {
    let mut sim = sim(10);
    let nat = sim.add_nat(
        "nat",
        "198.18.0.1".parse().unwrap(),
        NatConfig {
            hairpinning,
            ..NatConfig::full_cone()
        },
    );
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.1.2:5000");
    let bob = quiet_behind(&mut sim, nat, "bob", "192.168.1.3:6000");
    toy(&mut sim, "s1", S1);
    let bob_public = reflect(&mut sim, bob, sa(S1));
    (sim, alice, bob, bob_public)
}

#[test]
fn hairpinning_on() {
    let (mut sim, alice, bob, bob_public) = hairpin_world(true);
    ping(&mut sim, alice, bob_public);
    sim.run_for(Duration::from_secs(1));
    let got = pings(&sim, bob);
    assert_eq!(got.len(), 1);
    // Bob sees Alice's external mapping, not her private address.
    assert_eq!(
        got[0].0.ip(),
        "198.18.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    let alice_public = reflect(&mut sim, alice, sa(S1));
    assert_eq!(got[0].0, alice_public);
}

#[test]
fn hairpinning_off() {
    let (mut sim, alice, bob, bob_public) = hairpin_world(false);
    ping(&mut sim, alice, bob_public);
    sim.run_for(Duration::from_secs(1));
    assert!(pings(&sim, bob).is_empty());
    assert!(sim
        .trace()
        .of_kind(TraceKind::Dropped(DropReason::NatHairpinDisabled))
        .next()
        .is_some());
}

#[test]
fn hosts_behind_one_nat_talk_directly() {
    let mut sim = sim(11);
    let nat = sim.add_nat("nat", "198.18.0.1".parse().unwrap(), NatConfig::symmetric());
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.1.2:5000");
    let bob = toy_behind(&mut sim, nat, "bob", "192.168.1.3:6000");
    ping(&mut sim, alice, sa("192.168.1.3:6000"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, bob), vec![(sa("192.168.1.2:5000"), 0)]);
    assert_eq!(pongs(&sim, alice), vec![0]);
    assert!(sim.trace().of_kind(TraceKind::Translated).next().is_none());
    assert!(sim.nat_mappings(nat).is_empty());
    // 1 ms LAN each way.
    assert_eq!(sim.events(alice)[0].0, Duration::from_millis(2));
}

#[test]
fn same_private_addresses_on_different_lans() {
    let mut sim = sim(12);
    let n1 = sim.add_nat("n1", "198.18.0.1".parse().unwrap(), NatConfig::full_cone());
    let n2 = sim.add_nat("n2", "198.18.0.2".parse().unwrap(), NatConfig::full_cone());
    let a = toy_behind(&mut sim, n1, "a", "10.0.0.2:5000");
    let b = toy_behind(&mut sim, n2, "b", "10.0.0.2:5000");
    toy(&mut sim, "s1", S1);
    let a_pub = reflect(&mut sim, a, sa(S1));
    let b_pub = reflect(&mut sim, b, sa(S1));
    assert_eq!(a_pub.ip().to_string(), "198.18.0.1");
    assert_eq!(b_pub.ip().to_string(), "198.18.0.2");
    // Full cone both ways: they can reach each other on their public mappings.
    ping(&mut sim, a, b_pub);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, b), vec![(a_pub, 0)]);
    assert_eq!(pongs(&sim, a), vec![0]);
}

#[test]
fn hole_punching_through_port_restricted_nats() {
    // The first packets are dropped by the far NAT, later ones pass once the far side's own
    // outbound packet has opened its filter.
    let mut sim = sim(13);
    let n1 = sim.add_nat(
        "n1",
        "198.18.0.1".parse().unwrap(),
        NatConfig::port_restricted_cone(),
    );
    let n2 = sim.add_nat(
        "n2",
        "198.18.0.2".parse().unwrap(),
        NatConfig::port_restricted_cone(),
    );
    let a = toy_behind(&mut sim, n1, "a", "10.0.0.2:5000");
    let b = toy_behind(&mut sim, n2, "b", "10.0.0.3:6000");
    toy(&mut sim, "s1", S1);
    let a_pub = reflect(&mut sim, a, sa(S1));
    let b_pub = reflect(&mut sim, b, sa(S1));
    sim.with_machine(a, |m: &mut ToyMachine, now| {
        m.start_pinging(now, b_pub, Duration::from_millis(20), 10)
    });
    // B starts 100 ms later: A's pings reaching B's NAT before B's first ping went out
    // (at +26, +46, +66 and +86 ms) are filtered, the rest get through.
    sim.run_for(Duration::from_millis(100));
    sim.with_machine(b, |m: &mut ToyMachine, now| {
        m.start_pinging(now, a_pub, Duration::from_millis(20), 10)
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.counters().dropped_nat, 4, "{}", sim.trace().dump());
    assert_eq!(pings(&sim, b).len(), 6);
    assert_eq!(pings(&sim, a).len(), 10);
    assert_eq!(pongs(&sim, a).len(), 6);
    assert_eq!(pongs(&sim, b).len(), 10);
}

#[test]
fn nested_nats() {
    let mut sim = sim(14);
    let cgnat = sim.add_nat(
        "cgnat",
        "198.18.0.1".parse().unwrap(),
        NatConfig::symmetric(),
    );
    let home = sim.add_nat_behind(
        cgnat,
        "home",
        "100.64.0.2".parse().unwrap(),
        NatConfig::full_cone(),
    );
    let alice = toy_behind(&mut sim, home, "alice", "192.168.1.2:5000");
    toy(&mut sim, "s1", S1);
    let seen = reflect(&mut sim, alice, sa(S1));
    assert_eq!(seen.ip().to_string(), "198.18.0.1");
    assert_eq!(
        sim.nat_mappings(home)[0].external.ip().to_string(),
        "100.64.0.2"
    );
    assert_eq!(
        sim.nat_mappings(cgnat)[0].internal.ip().to_string(),
        "100.64.0.2"
    );
    // Two translations each way.
    assert_eq!(sim.trace().of_kind(TraceKind::Translated).count(), 4);
}

/// Sends one ping with IP TTL `ttl` from `host` to `to`.
fn ping_ttl(sim: &mut S, host: HostId, to: SocketAddr, ttl: u8) {
    sim.with_machine(host, |m: &mut ToyMachine, now| {
        m.send_ping_with_ttl(now, to, ttl)
    });
}

fn ttl_drops(sim: &S) -> usize {
    sim.trace()
        .of_kind(TraceKind::Dropped(DropReason::TtlExpired))
        .count()
}

#[test]
fn the_ttl_counts_nat_boxes_and_the_internet_as_routers() {
    let mut sim = sim(15);
    let n1 = sim.add_nat(
        "n1",
        "198.18.0.1".parse().unwrap(),
        NatConfig::linux_masquerade(),
    );
    let n2 = sim.add_nat(
        "n2",
        "198.18.0.2".parse().unwrap(),
        NatConfig::linux_masquerade(),
    );
    let a = quiet_behind(&mut sim, n1, "a", "10.0.0.2:5000");
    let b = quiet_behind(&mut sim, n2, "b", "10.0.0.3:6000");
    let s1 = toy(&mut sim, "s1", S1);
    let b_pub = reflect(&mut sim, b, sa(S1));
    assert_eq!(b_pub, sa("198.18.0.2:6000"), "the source port is kept");

    // TTL 1 dies at Alice's own NAT, before it maps anything.
    ping_ttl(&mut sim, a, sa(S1), 1);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(ttl_drops(&sim), 1);
    assert!(sim.nat_mappings(n1).is_empty());
    // TTL 2 crosses it (the mapping is made) and dies in the internet.
    ping_ttl(&mut sim, a, sa(S1), 2);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(ttl_drops(&sim), 2);
    assert!(pings(&sim, s1).is_empty());
    let m = sim.nat_mappings(n1);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].contacted, vec![sa(S1)]);
    // TTL 3 reaches a public host.
    ping_ttl(&mut sim, a, sa(S1), 3);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, s1), vec![(sa("198.18.0.1:5000"), 2)]);

    // To a host behind another NAT, TTL 3 dies at the far NAT without leaving anything there:
    // Bob's later packet to Alice still leaves from his usual port, and gets in (Alice's NAT
    // was opened towards it).
    ping_ttl(&mut sim, a, b_pub, 3);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(ttl_drops(&sim), 3);
    assert!(pings(&sim, b).is_empty());
    ping(&mut sim, b, sa("198.18.0.1:5000"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, a), vec![(b_pub, 0)]);
    // And TTL 4 gets there.
    ping_ttl(&mut sim, a, b_pub, 4);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, b).len(), 1);
}

/// Two hosts behind Linux-like NATs (with the conntrack clash) who know each other's public
/// address; Alice starts 100 ms before Bob, as signalling through a server makes it.
/// `openers`: each first sends one TTL-2 packet, and both start pinging only once both did.
/// Returns the pings each received.
fn punch(config: NatConfig, openers: bool) -> (usize, usize) {
    let mut sim = sim(16);
    let n1 = sim.add_nat("n1", "198.18.0.1".parse().unwrap(), config.clone());
    let n2 = sim.add_nat("n2", "198.18.0.2".parse().unwrap(), config);
    let a = toy_behind(&mut sim, n1, "a", "10.0.0.2:5000");
    let b = toy_behind(&mut sim, n2, "b", "10.0.0.3:6000");
    toy(&mut sim, "s1", S1);
    let a_pub = reflect(&mut sim, a, sa(S1));
    let b_pub = reflect(&mut sim, b, sa(S1));
    let start = |sim: &mut S, h: HostId, to: SocketAddr| {
        sim.with_machine(h, |m: &mut ToyMachine, now| {
            m.start_pinging(now, to, Duration::from_millis(20), 10)
        })
    };
    if openers {
        ping_ttl(&mut sim, a, b_pub, 2);
        sim.run_for(Duration::from_millis(100));
        ping_ttl(&mut sim, b, a_pub, 2);
        sim.run_for(Duration::from_millis(50));
        start(&mut sim, a, b_pub);
        start(&mut sim, b, a_pub);
    } else {
        start(&mut sim, a, b_pub);
        sim.run_for(Duration::from_millis(100));
        start(&mut sim, b, a_pub);
    }
    sim.run_for(Duration::from_secs(1));
    (pings(&sim, a).len(), pings(&sim, b).len())
}

#[test]
fn naive_punching_fails_through_linux_nats_and_ttl_2_openers_succeed() {
    // Without the clash (the RFC model) the naive way works once Bob sent...
    let rfc = NatConfig {
        conntrack_clash: false,
        ..NatConfig::linux_masquerade()
    };
    assert_eq!(punch(rfc, false), (10, 6));
    // ...with it, Alice's early packets took (Alice, Bob's port) at Bob's NAT, Bob's packets
    // leave from a new port Alice's NAT never opened for, and nothing ever gets through.
    assert_eq!(punch(NatConfig::linux_masquerade(), false), (0, 0));
    // Openers that die before the far NAT open both NATs first: everything gets through.
    assert_eq!(punch(NatConfig::linux_masquerade(), true), (10, 10));
}

#[test]
fn a_socket_opened_on_demand_gets_a_mapping_of_its_own_and_is_gone_once_closed() {
    use natter_sim::toy::ToyEvent;
    let mut sim = sim(9);
    let nat = sim.add_nat(
        "nat",
        "198.18.0.1".parse().unwrap(),
        NatConfig::port_restricted_cone(),
    );
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.1.2:5000");
    let s1 = toy(&mut sim, "s1", S1);
    let main = reflect(&mut sim, alice, sa(S1));
    sim.with_machine(alice, |m: &mut ToyMachine, _| m.bind_udp(3));
    sim.run_for(Duration::from_millis(10));
    let fresh = sim
        .events(alice)
        .iter()
        .find_map(|(_, e)| match e {
            ToyEvent::UdpBound {
                token: 3,
                local: Some(l),
            } => Some(*l),
            _ => None,
        })
        .expect("a socket");
    assert_eq!(fresh.ip(), sa("192.168.1.2:5000").ip());
    assert_ne!(fresh.port(), 5000);
    // It sends from itself, through a mapping of its own, and hears the answer.
    ping_from(&mut sim, alice, fresh, sa(S1));
    sim.run_for(Duration::from_secs(1));
    let (from, _) = *pings(&sim, s1).last().unwrap();
    assert_eq!(from.ip(), main.ip());
    assert_ne!(from, main, "a new flow through the NAT");
    assert_eq!(pongs(&sim, alice).len(), 1);
    // Closed: the NAT still forwards, but no socket takes it.
    sim.with_machine(alice, |m: &mut ToyMachine, _| m.close_udp(fresh));
    sim.run_for(Duration::from_millis(10));
    ping_from(&mut sim, s1, sa(S1), from);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, alice).len(), 0);
    assert_eq!(last_drop(&sim), Some(DropReason::NoSocket));
}
