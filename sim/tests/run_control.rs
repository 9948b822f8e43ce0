//! Clock, timers and run control.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use natter_core::sansio::{Input, Machine, Transmit};
use natter_sim::toy::ToyMachine;
use natter_sim::{Sim, SimConfig};

#[test]
fn run_until_accepts_instants_and_durations() {
    let mut sim = sim(1);
    let start = sim.now();
    assert_eq!(sim.start(), start);
    sim.run_until(Duration::from_millis(5));
    assert_eq!(sim.now(), start + Duration::from_millis(5));
    sim.run_until(start + Duration::from_secs(2));
    assert_eq!(sim.elapsed(), Duration::from_secs(2));
    // The past is a no-op.
    sim.run_until(Duration::from_secs(1));
    assert_eq!(sim.elapsed(), Duration::from_secs(2));
    sim.run_for(Duration::from_millis(1));
    assert_eq!(sim.now(), sim.instant(Duration::from_millis(2001)));
}

#[test]
fn step_and_idle() {
    let mut sim = sim(2);
    let a = toy(&mut sim, "a", "198.18.0.1:1");
    toy(&mut sim, "b", "198.18.0.2:2");
    assert!(!sim.step());
    assert!(sim.run_until_idle(10));
    sim.with_machine(a, |m: &mut ToyMachine, now| {
        m.start_pinging(now, sa("198.18.0.2:2"), Duration::from_millis(100), 3)
    });
    // Timer + packet in flight.
    assert_eq!(
        sim.next_event_time(),
        Some(sim.instant(Duration::from_millis(25)))
    );
    assert!(sim.step());
    assert_eq!(sim.elapsed(), Duration::from_millis(25));
    assert!(!sim.run_until_idle(3), "not idle after 3 more steps");
    assert!(sim.run_until_idle(1000));
    assert_eq!(pongs(&sim, a), vec![0, 1, 2]);
    assert_eq!(sim.elapsed(), Duration::from_millis(250));
    assert!(sim.run_until_cond(Duration::from_secs(1), |s| pongs(s, a).len() == 3));
    assert!(!sim.run_until_cond(Duration::from_secs(1), |s| pongs(s, a).len() == 4));
    assert_eq!(sim.elapsed(), Duration::from_millis(1250));
}

/// Counts timeouts and re-arms every 10 ms.
struct Ticker {
    next: Option<Instant>,
    ticks: Rc<Cell<u32>>,
}

impl Machine for Ticker {
    type Event = natter_sim::toy::ToyEvent;
    fn handle_input(&mut self, _now: Instant, _input: Input<'_>) {}
    fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_some_and(|t| t <= now) {
            self.ticks.set(self.ticks.get() + 1);
            self.next = Some(now + Duration::from_millis(10));
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
}

#[test]
fn timers_fire_at_their_deadline_and_rearming_supersedes() {
    let mut sim: S = Sim::new(SimConfig::default());
    let ticks = Rc::new(Cell::new(0));
    let t = sim.add_host(
        "t",
        sa("198.18.0.1:1"),
        Ticker {
            next: None,
            ticks: ticks.clone(),
        },
    );
    sim.with_machine(t, |m: &mut Ticker, now| {
        m.next = Some(now + Duration::from_secs(1))
    });
    // Re-arm earlier: the old deadline must not fire on its own.
    sim.with_machine(t, |m: &mut Ticker, now| {
        m.next = Some(now + Duration::from_millis(10))
    });
    sim.run_for(Duration::from_millis(95));
    assert_eq!(ticks.get(), 9);
    sim.with_machine(t, |m: &mut Ticker, _| m.next = None);
    assert!(sim.run_until_idle(10));
    assert_eq!(ticks.get(), 9);
    assert_eq!(sim.machine::<Ticker>(t).next, None);
}

/// Always wants a timeout in the past.
struct Spinner;

impl Machine for Spinner {
    type Event = natter_sim::toy::ToyEvent;
    fn handle_input(&mut self, _now: Instant, _input: Input<'_>) {}
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(Instant::now() - Duration::from_secs(3600))
    }
}

#[test]
#[should_panic(expected = "livelock")]
fn livelock_is_detected() {
    let mut sim: S = Sim::new(SimConfig {
        max_steps_per_instant: 1000,
        ..SimConfig::default()
    });
    sim.add_host("spin", sa("198.18.0.1:1"), Spinner);
    sim.run_for(Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "does not run a")]
fn wrong_machine_type_panics() {
    let mut sim = sim(3);
    let a = toy(&mut sim, "a", "198.18.0.1:1");
    sim.with_machine(a, |_: &mut Ticker, _| ());
}

#[test]
#[should_panic(expected = "already used")]
fn duplicate_addresses_panic() {
    let mut sim = sim(4);
    toy(&mut sim, "a", "198.18.0.1:1");
    toy(&mut sim, "b", "198.18.0.1:2");
}

#[test]
fn names_and_lookups() {
    let mut sim = sim(5);
    let a = toy(&mut sim, "alice", "198.18.0.1:1");
    sim.bind(a, sa("198.18.0.1:2"));
    sim.bind(a, sa("198.18.0.9:3"));
    assert_eq!(sim.host_by_name("alice"), Some(a));
    assert_eq!(sim.host_by_name("bob"), None);
    assert_eq!(sim.host_name(a), "alice");
    assert_eq!(sim.host_addrs(a).len(), 3);
    assert_eq!(sim.hosts().collect::<Vec<_>>(), vec![a]);
    assert!(format!("{sim:?}").contains("hosts: 1"));
    // A second IP works as a source and destination.
    let b = toy(&mut sim, "b", "198.18.0.2:2");
    ping_from(&mut sim, a, sa("198.18.0.9:3"), sa("198.18.0.2:2"));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(pings(&sim, b), vec![(sa("198.18.0.9:3"), 0)]);
    assert_eq!(pongs(&sim, a), vec![0]);
}
