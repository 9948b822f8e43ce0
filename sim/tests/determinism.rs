//! Same seed, same run; different seed, different run.

mod common;

use std::time::Duration;

use common::*;
use natter_sim::toy::{ToyEvent, ToyMachine};
use natter_sim::{LinkConfig, NatConfig, Sim, SimConfig};

type Run = (u64, Vec<(Duration, ToyEvent)>, Vec<(Duration, ToyEvent)>);

fn scenario(seed: u64) -> Run {
    let mut sim = Sim::new(SimConfig {
        seed,
        internet: LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(15))
            .loss(0.05)
            .reorder(0.02, Duration::from_millis(40))
            .duplicate(0.01),
        ..SimConfig::default()
    });
    let nat = sim.add_nat(
        "home",
        "198.18.0.1".parse().unwrap(),
        NatConfig::symmetric(),
    );
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.1.2:5000");
    let bob = toy(&mut sim, "bob", "198.18.7.7:7000");
    let bob_addr = sa("198.18.7.7:7000");
    sim.with_machine(alice, |m: &mut ToyMachine, now| {
        m.start_pinging(now, bob_addr, Duration::from_millis(5), 400)
    });
    let stream = sim.connect_stream(alice, bob_addr);
    for i in 0..20u8 {
        sim.with_machine(alice, |m: &mut ToyMachine, now| {
            m.send_stream(now, stream, vec![i; 100])
        });
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(5));
    (
        sim.digest(),
        sim.events(alice).to_vec(),
        sim.events(bob).to_vec(),
    )
}

#[test]
fn same_seed_gives_identical_trace_and_events() {
    let a = scenario(42);
    let b = scenario(42);
    assert_eq!(a.0, b.0, "digests differ");
    assert_eq!(a.1, b.1, "alice's events differ");
    assert_eq!(a.2, b.2, "bob's events differ");
    assert!(!a.1.is_empty() && !a.2.is_empty());
}

#[test]
fn different_seed_gives_different_trace() {
    let a = scenario(1);
    let b = scenario(2);
    assert_ne!(a.0, b.0);
    assert_ne!(a.2, b.2);
}

#[test]
fn start_instant_does_not_matter() {
    // Traces are built from offsets, so two simulators started at different real instants
    // produce the same digest.
    let run = |start| {
        let mut sim = Sim::with_start(SimConfig::with_seed(9), start);
        let a = toy(&mut sim, "a", "198.18.0.1:1");
        let _b = toy(&mut sim, "b", "198.18.0.2:2");
        sim.with_machine(a, |m: &mut ToyMachine, now| {
            m.start_pinging(now, sa("198.18.0.2:2"), Duration::from_millis(10), 10)
        });
        sim.run_for(Duration::from_secs(1));
        sim.digest()
    };
    let t0 = std::time::Instant::now();
    assert_eq!(run(t0), run(t0 + Duration::from_secs(3600)));
}
