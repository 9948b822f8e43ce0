//! UDP-blocking firewalls.

mod common;

use std::time::Duration;

use common::*;
use natter_sim::{DropReason, NatConfig, TraceKind};

#[test]
fn udp_blocking_nat_drops_udp_but_lets_tcp_out() {
    let mut sim = sim(1);
    let fw = sim.add_nat(
        "corp",
        "198.18.0.1".parse().unwrap(),
        NatConfig::udp_blocking_firewall(),
    );
    let alice = toy_behind(&mut sim, fw, "alice", "10.1.0.2:5000");
    let server = toy(&mut sim, "server", "198.18.5.5:443");

    // UDP out: dropped.
    ping(&mut sim, alice, sa("198.18.5.5:443"));
    sim.run_for(Duration::from_secs(1));
    assert!(pings(&sim, server).is_empty());
    assert_eq!(sim.counters().dropped_firewall, 1);
    // UDP in: dropped.
    ping(&mut sim, server, sa("198.18.0.1:5000"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.counters().dropped_firewall, 2);
    assert!(sim.nat_mappings(fw).is_empty());

    // TCP out works, both ways once open.
    let stream = sim.connect_stream(alice, sa("198.18.5.5:443"));
    sim.with_machine(alice, |m: &mut natter_sim::toy::ToyMachine, now| {
        m.send_stream(now, stream, &b"hello"[..])
    });
    sim.run_for(Duration::from_secs(1));
    let accepted = opened(&sim, server);
    assert_eq!(accepted.len(), 1);
    let (server_end, remote) = accepted[0];
    assert_eq!(
        remote.ip().to_string(),
        "198.18.0.1",
        "the server sees the NAT"
    );
    assert_eq!(stream_bytes(&sim, server, server_end), b"hello");
    sim.with_machine(server, |m: &mut natter_sim::toy::ToyMachine, now| {
        m.send_stream(now, server_end, &b"welcome"[..])
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(stream_bytes(&sim, alice, stream), b"welcome");
    assert_eq!(sim.counters().dropped_firewall, 2);

    // TCP in is blocked by the NAT.
    let inbound = sim.connect_stream(server, sa("198.18.0.1:5000"));
    sim.run_for(Duration::from_secs(5));
    assert!(closed(&sim, server, inbound));
    assert!(opened(&sim, alice).is_empty());
    assert_eq!(sim.counters().streams_failed, 1);
}

#[test]
fn host_firewall() {
    let mut sim = sim(2);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b = toy(&mut sim, "b", "198.18.0.2:2000");
    sim.set_udp_blocked(b, true);
    ping(&mut sim, a, sa("198.18.0.2:2000"));
    ping(&mut sim, b, sa("198.18.0.1:1000"));
    sim.run_for(Duration::from_secs(1));
    assert!(pings(&sim, a).is_empty() && pings(&sim, b).is_empty());
    assert_eq!(
        sim.trace()
            .of_kind(TraceKind::Dropped(DropReason::Firewall))
            .count(),
        2
    );
    let s = sim.connect_stream(a, sa("198.18.0.2:2000"));
    sim.with_machine(a, |m: &mut natter_sim::toy::ToyMachine, now| {
        m.send_stream(now, s, &b"tcp"[..])
    });
    sim.run_for(Duration::from_secs(1));
    let (b_end, _) = opened(&sim, b)[0];
    assert_eq!(stream_bytes(&sim, b, b_end), b"tcp");

    sim.set_udp_blocked(b, false);
    ping(&mut sim, a, sa("198.18.0.2:2000"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, b).len(), 1);
}

#[test]
fn web_only_firewall_lets_tcp_out_to_its_ports_only() {
    let mut sim = sim(3);
    let fw = sim.add_nat(
        "corp",
        "198.18.0.1".parse().unwrap(),
        NatConfig::web_only_firewall(&[443]),
    );
    let alice = toy_behind(&mut sim, fw, "alice", "10.1.0.2:5000");
    let server = toy(&mut sim, "server", "198.18.5.5:443");
    sim.bind(server, sa("198.18.5.5:4000"));

    // To another port: dropped without a reset, so the attempt times out.
    let refused = sim.connect_stream(alice, sa("198.18.5.5:4000"));
    sim.run_for(Duration::from_secs(5));
    assert!(closed(&sim, alice, refused));
    assert!(opened(&sim, server).is_empty());
    assert_eq!(sim.counters().dropped_firewall, 1);
    assert_eq!(sim.counters().streams_failed, 1);

    // To the allowed port: through.
    let stream = sim.connect_stream(alice, sa("198.18.5.5:443"));
    sim.with_machine(alice, |m: &mut natter_sim::toy::ToyMachine, now| {
        m.send_stream(now, stream, &b"hello"[..])
    });
    sim.run_for(Duration::from_secs(1));
    let accepted = opened(&sim, server);
    assert_eq!(accepted.len(), 1);
    assert_eq!(stream_bytes(&sim, server, accepted[0].0), b"hello");
    // And UDP stays blocked.
    ping(&mut sim, alice, sa("198.18.5.5:443"));
    sim.run_for(Duration::from_secs(1));
    assert!(pings(&sim, server).is_empty());
    assert_eq!(sim.counters().dropped_firewall, 2);
}
