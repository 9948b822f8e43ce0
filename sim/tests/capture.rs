//! Capture, replay, injection and interception.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use natter_sim::toy::{ToyEvent, ToyMachine};
use natter_sim::{
    CapturePoint, DropReason, NatConfig, Network, Sim, SimConfig, TraceKind, Verdict,
};

#[test]
fn captured_datagrams_can_be_replayed() {
    let mut sim: S = Sim::new(SimConfig {
        capture: true,
        ..SimConfig::with_seed(1)
    });
    let nat = sim.add_nat("nat", "198.18.0.1".parse().unwrap(), NatConfig::full_cone());
    let alice = toy_behind(&mut sim, nat, "alice", "10.0.0.2:5000");
    let bob_addr = sa("198.18.0.2:2000");
    let bob = sim.add_host("bob", bob_addr, ToyMachine::new(bob_addr).with_echo(false));
    sim.with_machine(alice, |m: &mut ToyMachine, now| {
        m.start_pinging(now, bob_addr, Duration::from_millis(10), 3)
    });
    sim.run_for(Duration::from_secs(1));
    let first = pings(&sim, bob);
    assert_eq!(first.len(), 3);

    let log = sim.take_captured();
    let sent: Vec<_> = log
        .iter()
        .filter(|c| c.point == CapturePoint::Sent)
        .collect();
    let delivered: Vec<_> = log
        .iter()
        .filter(|c| c.point == CapturePoint::Delivered)
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(delivered.len(), 3);
    assert_eq!(sent[0].src, sa("10.0.0.2:5000"), "captured before the NAT");
    assert_eq!(sent[0].host, Some(alice));
    assert_eq!(delivered[0].src, first[0].0, "captured after the NAT");
    assert_eq!(delivered[0].host, Some(bob));
    assert_eq!(sent[0].payload, delivered[0].payload);

    // Replay what Alice sent, through her NAT, as if she sent it again.
    for c in &sent {
        sim.inject_datagram(c.src, c.dst, c.payload.clone());
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, bob), [first.clone(), first].concat());
    assert_eq!(sim.counters().injected, 3);
    assert_eq!(sim.counters().sent, 3);
    assert_eq!(sim.captured().len(), 6);
}

#[test]
fn injection_can_spoof_and_duplicate() {
    let mut sim = sim(2);
    let nat = sim.add_nat("nat", "198.18.0.1".parse().unwrap(), NatConfig::full_cone());
    let alice = toy_behind(&mut sim, nat, "alice", "10.0.0.2:5000");
    let bob = toy(&mut sim, "bob", "198.18.0.2:2000");
    // A spoofed public source.
    sim.inject_datagram(sa("198.18.66.6:666"), sa("198.18.0.2:2000"), &b"boo"[..]);
    // Straight onto Alice's LAN, from an address nobody has.
    sim.inject_datagram_in(
        Network::Lan(nat),
        sa("10.0.0.99:1"),
        sa("10.0.0.2:5000"),
        &b"psst"[..],
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.events(bob)[0].1,
        ToyEvent::Datagram {
            from: sa("198.18.66.6:666"),
            local: sa("198.18.0.2:2000"),
            data: Bytes::from_static(b"boo"),
        }
    );
    assert_eq!(sim.events(bob)[0].0, Duration::from_millis(25));
    assert_eq!(
        sim.events(alice)[0].1,
        ToyEvent::Datagram {
            from: sa("10.0.0.99:1"),
            local: sa("10.0.0.2:5000"),
            data: Bytes::from_static(b"psst"),
        }
    );
    assert_eq!(sim.events(alice)[0].0, Duration::from_millis(1));
}

#[test]
fn interceptor_drops_and_rewrites() {
    let mut sim = sim(3);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b_addr = sa("198.18.0.2:2000");
    let b = sim.add_host("b", b_addr, ToyMachine::new(b_addr).with_echo(false));
    let mut seen = 0;
    sim.set_interceptor(move |c| {
        assert_eq!(c.point, CapturePoint::Sent);
        seen += 1;
        match seen {
            1 => Verdict::Drop,
            2 => Verdict::Replace(Bytes::from_static(b"rewritten")),
            _ => Verdict::Pass,
        }
    });
    sim.with_machine(a, |m: &mut ToyMachine, now| {
        m.start_pinging(now, b_addr, Duration::from_millis(10), 3)
    });
    sim.run_for(Duration::from_secs(1));
    let got: Vec<&ToyEvent> = sim.events(b).iter().map(|(_, e)| e).collect();
    assert_eq!(got.len(), 2);
    assert!(matches!(got[0], ToyEvent::Datagram { data, .. } if &data[..] == b"rewritten"));
    assert!(matches!(got[1], ToyEvent::Ping { seq: 2, .. }));
    assert_eq!(
        sim.trace()
            .of_kind(TraceKind::Dropped(DropReason::Intercepted))
            .count(),
        1
    );
    sim.clear_interceptor();
}
