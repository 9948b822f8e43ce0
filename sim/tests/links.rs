//! Link behaviour: latency, loss, jitter, reordering, duplication, overrides.

mod common;

use std::time::Duration;

use common::*;
use natter_sim::toy::ToyMachine;
use natter_sim::{DropReason, LinkConfig, NatConfig, Sim, SimConfig, TraceKind};

fn pair(internet: LinkConfig, seed: u64) -> (S, natter_sim::HostId, natter_sim::HostId) {
    let mut sim = Sim::new(SimConfig {
        seed,
        internet,
        ..SimConfig::default()
    });
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b_addr = sa("198.18.0.2:2000");
    let b = sim.add_host("b", b_addr, ToyMachine::new(b_addr).with_echo(false));
    (sim, a, b)
}

fn start(sim: &mut S, a: natter_sim::HostId, interval: Duration, count: u64) {
    sim.with_machine(a, |m: &mut ToyMachine, now| {
        m.start_pinging(now, sa("198.18.0.2:2000"), interval, count)
    });
}

fn inversions(seqs: &[u64]) -> usize {
    seqs.windows(2).filter(|w| w[1] < w[0]).count()
}

#[test]
fn fixed_latency_is_exact_and_in_order() {
    let (mut sim, a, b) = pair(LinkConfig::with_latency(Duration::from_millis(25)), 1);
    start(&mut sim, a, Duration::from_millis(20), 5);
    assert!(sim.run_until_idle(1000));
    let times: Vec<Duration> = sim.events(b).iter().map(|(t, _)| *t).collect();
    let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(25 + 20 * i)).collect();
    assert_eq!(times, expected);
    let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(sim.elapsed(), Duration::from_millis(105));
}

#[test]
fn loss_rate_matches_configuration() {
    let loss = 0.1;
    let n = 10_000u64;
    let (mut sim, a, b) = pair(LinkConfig::default().loss(loss), 1234);
    start(&mut sim, a, Duration::from_millis(1), n);
    sim.run_for(Duration::from_secs(11));
    let got = pings(&sim, b).len() as f64;
    let expected = n as f64 * (1.0 - loss);
    // Standard deviation is 30 packets; allow five of them.
    assert!(
        (got - expected).abs() < 150.0,
        "delivered {got}, expected about {expected}"
    );
    let c = sim.counters();
    assert_eq!(c.sent, n);
    assert_eq!(c.delivered + c.dropped_loss, n);
    assert_eq!(c.delivered as f64, got);
}

#[test]
fn jitter_reorders_and_no_jitter_does_not() {
    let (mut sim, a, b) = pair(LinkConfig::default().jitter(Duration::from_millis(20)), 5);
    start(&mut sim, a, Duration::from_millis(1), 1000);
    sim.run_for(Duration::from_secs(2));
    let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs.len(), 1000, "jitter alone loses nothing");
    assert!(
        inversions(&seqs) > 50,
        "only {} inversions",
        inversions(&seqs)
    );
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());

    let (mut sim, a, b) = pair(LinkConfig::default(), 5);
    start(&mut sim, a, Duration::from_millis(1), 1000);
    sim.run_for(Duration::from_secs(2));
    let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
    assert_eq!(inversions(&seqs), 0);
}

#[test]
fn explicit_reordering_probability() {
    let (mut sim, a, b) = pair(
        LinkConfig::default().reorder(0.1, Duration::from_millis(50)),
        6,
    );
    start(&mut sim, a, Duration::from_millis(5), 1000);
    sim.run_for(Duration::from_secs(6));
    let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs.len(), 1000);
    // About 100 late packets, each overtaken by the next 9 or 10.
    let late = inversions(&seqs);
    assert!((50..150).contains(&late), "{late} late packets");
}

#[test]
fn duplication() {
    let (mut sim, a, b) = pair(LinkConfig::default().duplicate(0.2), 7);
    start(&mut sim, a, Duration::from_millis(1), 1000);
    sim.run_for(Duration::from_secs(2));
    let got = pings(&sim, b).len() as u64;
    let dups = sim.counters().duplicated;
    assert_eq!(got, 1000 + dups);
    assert!((150..250).contains(&dups), "{dups} duplicates");
}

#[test]
fn pair_and_access_overrides() {
    let mut sim = sim(3);
    let nat1 = sim.add_nat("n1", "198.18.1.1".parse().unwrap(), NatConfig::full_cone());
    let nat2 = sim.add_nat("n2", "198.18.2.1".parse().unwrap(), NatConfig::full_cone());
    let alice = toy_behind(&mut sim, nat1, "alice", "10.0.0.2:1000");
    let bob = toy(&mut sim, "bob", "198.18.3.3:3000");
    let carol = toy(&mut sim, "carol", "198.18.4.4:4000");
    let dave = toy_behind(&mut sim, nat2, "dave", "10.0.0.2:1000");
    let erin = toy_behind(&mut sim, nat1, "erin", "10.0.0.3:1000");

    // Alice (behind nat1) <-> Bob: the override applies between nat1 and Bob.
    sim.set_link(
        alice,
        bob,
        LinkConfig::with_latency(Duration::from_millis(100)),
    );
    // Carol gets a slow access link on top of the 25 ms internet.
    sim.set_access_link(carol, LinkConfig::with_latency(Duration::from_millis(40)));
    // Alice <-> Erin share a LAN: direct link override.
    sim.set_link(
        alice,
        erin,
        LinkConfig::with_latency(Duration::from_millis(7)),
    );
    // Dave's gateway link.
    sim.set_link(
        dave,
        nat2,
        LinkConfig::with_latency(Duration::from_millis(3)),
    );

    let arrival = |sim: &mut S, from, to: &str, dst| {
        let t0 = sim.elapsed();
        let before = pings(sim, dst).len();
        ping(sim, from, sa(to));
        assert!(sim.run_until_cond(Duration::from_secs(2), |s| pings(s, dst).len() > before));
        sim.elapsed() - t0
    };
    let ms = Duration::from_millis;
    // 1 ms LAN + 100 ms override.
    assert_eq!(arrival(&mut sim, alice, "198.18.3.3:3000", bob), ms(101));
    // Bob -> Carol: 25 + 40.
    assert_eq!(arrival(&mut sim, bob, "198.18.4.4:4000", carol), ms(65));
    assert_eq!(arrival(&mut sim, alice, "10.0.0.3:1000", erin), ms(7));
    // Dave -> Bob: 3 ms to the gateway, 25 ms across the internet.
    assert_eq!(arrival(&mut sim, dave, "198.18.3.3:3000", bob), ms(28));
    sim.clear_link(alice, bob);
    assert_eq!(arrival(&mut sim, alice, "198.18.3.3:3000", bob), ms(26));
}

#[test]
fn unknown_destinations_are_traced() {
    let (mut sim, a, b) = pair(LinkConfig::default(), 1);
    ping(&mut sim, a, sa("198.18.9.9:1"));
    ping(&mut sim, a, sa("198.18.0.2:2001"));
    sim.run_for(Duration::from_secs(1));
    assert!(pings(&sim, b).is_empty());
    let drops: Vec<TraceKind> = sim
        .trace()
        .entries()
        .iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, TraceKind::Dropped(_)))
        .collect();
    assert_eq!(
        drops,
        vec![
            TraceKind::Dropped(DropReason::NoRoute),
            TraceKind::Dropped(DropReason::NoSocket)
        ]
    );
    assert_eq!(sim.counters().dropped_other, 2);
}
