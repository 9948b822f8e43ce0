//! Link behaviour: latency, independent and bursty loss, jitter, reordering, duplication,
//! overrides.

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

/// The sequence numbers `b` did not receive out of `n`, as (long-run loss, mean burst length).
fn loss_and_burst(received: &[u64], n: u64) -> (f64, f64) {
    let mut got = vec![false; n as usize];
    for s in received {
        got[*s as usize] = true;
    }
    let lost = got.iter().filter(|g| !**g).count();
    let bursts = got.windows(2).filter(|w| w[0] && !w[1]).count() + usize::from(!got[0]);
    (lost as f64 / n as f64, lost as f64 / bursts.max(1) as f64)
}

#[test]
fn bursty_loss_hits_its_long_run_rate_and_mean_burst() {
    let n = 40_000u64;
    for (loss, burst, seed) in [(0.2, 3.0, 21), (0.05, 4.0, 22)] {
        let (mut sim, a, b) = pair(LinkConfig::default().loss(loss).burst(burst), seed);
        start(&mut sim, a, Duration::from_millis(1), n);
        sim.run_for(Duration::from_secs(41));
        let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
        let (got_loss, got_burst) = loss_and_burst(&seqs, n);
        eprintln!("loss {loss} burst {burst}: measured {got_loss:.4}, mean burst {got_burst:.3}");
        assert!(
            (got_loss - loss).abs() < loss * 0.1,
            "loss {got_loss}, target {loss}"
        );
        assert!(
            (got_burst - burst).abs() < burst * 0.1,
            "mean burst {got_burst}, target {burst}"
        );
        let c = sim.counters();
        assert_eq!(c.delivered + c.dropped_loss, n);
    }
    // The same long-run loss without bursts: runs of about 1 / (1 - loss).
    let (mut sim, a, b) = pair(LinkConfig::default().loss(0.2), 21);
    start(&mut sim, a, Duration::from_millis(1), n);
    sim.run_for(Duration::from_secs(41));
    let seqs: Vec<u64> = pings(&sim, b).into_iter().map(|(_, s)| s).collect();
    let (got_loss, got_burst) = loss_and_burst(&seqs, n);
    assert!((got_loss - 0.2).abs() < 0.02, "{got_loss}");
    assert!((got_burst - 1.25).abs() < 0.1, "{got_burst}");
}

#[test]
fn seeded_bursty_runs_repeat() {
    let run = |seed| {
        let link = LinkConfig::default()
            .loss(0.3)
            .burst(5.0)
            .jitter(Duration::from_millis(3));
        let (mut sim, a, b) = pair(link, seed);
        start(&mut sim, a, Duration::from_millis(2), 2000);
        sim.run_for(Duration::from_secs(5));
        (sim.digest(), pings(&sim, b))
    };
    let (digest, received) = run(9);
    assert_eq!((digest, received.clone()), run(9));
    let (other, other_received) = run(10);
    assert_ne!(digest, other);
    assert_ne!(received, other_received);
}

/// Each direction of a segment has its own chain: a burst on the path from Alice to Carol
/// does not touch Bob's datagrams to Carol; an access link's chain is shared by everything
/// crossing it, so Carol's bursty downlink loses runs of the interleaved stream.
#[test]
fn every_segment_and_direction_has_its_own_chain() {
    let n = 20_000u64;
    let run = |bursty_downlink: bool| {
        let mut sim = sim(31);
        let alice = toy(&mut sim, "alice", "198.18.0.1:1000");
        let bob = toy(&mut sim, "bob", "198.18.0.2:1000");
        let carol_addr = sa("198.18.0.3:3000");
        let carol = sim.add_host(
            "carol",
            carol_addr,
            ToyMachine::new(carol_addr).with_echo(false),
        );
        let bursty = LinkConfig::IDEAL.loss(0.2).burst(6.0);
        if bursty_downlink {
            sim.set_access_link(carol, bursty);
        } else {
            let path = LinkConfig::with_latency(Duration::from_millis(25))
                .loss(0.2)
                .burst(6.0);
            sim.set_link(alice, carol, path);
            sim.set_link(bob, carol, path);
        }
        // Alice and Bob interleave: Alice at 0, 2, 4 ms, Bob at 1, 3, 5 ms.
        sim.with_machine(alice, |m: &mut ToyMachine, now| {
            m.start_pinging(now, carol_addr, Duration::from_millis(2), n / 2)
        });
        sim.run_for(Duration::from_millis(1));
        sim.with_machine(bob, |m: &mut ToyMachine, now| {
            m.start_pinging(now, carol_addr, Duration::from_millis(2), n / 2)
        });
        sim.run_for(Duration::from_secs(30));
        // The merged stream in sending order: Alice's seq s is slot 2s, Bob's 2s + 1.
        let alice_addr = sa("198.18.0.1:1000");
        let slots: Vec<u64> = pings(&sim, carol)
            .into_iter()
            .map(|(from, s)| 2 * s + u64::from(from != alice_addr))
            .collect();
        loss_and_burst(&slots, n)
    };
    // One shared chain: runs of 6 in the merged stream.
    let (loss, burst) = run(true);
    eprintln!("shared downlink chain: loss {loss:.4}, mean burst {burst:.3}");
    assert!((loss - 0.2).abs() < 0.03, "{loss}");
    assert!((burst - 6.0).abs() < 0.9, "{burst}");
    // Two independent chains, interleaved: each run of the merged stream is broken up by the
    // other sender's datagrams, mostly delivered, so runs are short.
    let (loss, burst) = run(false);
    eprintln!("two path chains, interleaved: loss {loss:.4}, mean burst {burst:.3}");
    assert!((loss - 0.2).abs() < 0.03, "{loss}");
    assert!(burst < 1.6, "{burst}");
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
