//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use natter_core::sansio::StreamId;
use natter_sim::toy::{ToyEvent, ToyMachine};
use natter_sim::{HostId, NatId, Sim, SimConfig};

/// The simulator type every test uses.
pub type S = Sim<ToyEvent>;

/// Parses a socket address.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A simulator with the given seed and default settings otherwise.
pub fn sim(seed: u64) -> S {
    Sim::new(SimConfig::with_seed(seed))
}

/// Adds a public toy host.
pub fn toy(sim: &mut S, name: &str, addr: &str) -> HostId {
    let a = sa(addr);
    sim.add_host(name, a, ToyMachine::new(a))
}

/// Adds a toy host behind `nat`.
pub fn toy_behind(sim: &mut S, nat: NatId, name: &str, addr: &str) -> HostId {
    let a = sa(addr);
    sim.add_host_behind(nat, name, a, ToyMachine::new(a))
}

/// Adds a toy host behind `nat` that does not answer pings.
pub fn quiet_behind(sim: &mut S, nat: NatId, name: &str, addr: &str) -> HostId {
    let a = sa(addr);
    sim.add_host_behind(nat, name, a, ToyMachine::new(a).with_echo(false))
}

/// Sends one ping from `host` (default address) to `to`.
pub fn ping(sim: &mut S, host: HostId, to: SocketAddr) {
    sim.with_machine(host, |m: &mut ToyMachine, now| m.send_ping(now, to));
}

/// Sends one ping from `host`'s address `from` to `to`.
pub fn ping_from(sim: &mut S, host: HostId, from: SocketAddr, to: SocketAddr) {
    sim.with_machine(host, |m: &mut ToyMachine, now| {
        m.send_ping_from(now, from, to)
    });
}

/// The `(sender, seq)` of every ping `host` received.
pub fn pings(sim: &S, host: HostId) -> Vec<(SocketAddr, u64)> {
    sim.events(host)
        .iter()
        .filter_map(|(_, e)| match e {
            ToyEvent::Ping { from, seq, .. } => Some((*from, *seq)),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of every pong `host` received.
pub fn pongs(sim: &S, host: HostId) -> Vec<u64> {
    sim.events(host)
        .iter()
        .filter_map(|(_, e)| match e {
            ToyEvent::Pong { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Asks `reflector` which address it sees `host` at, runs a second, and returns the answer.
pub fn reflect(sim: &mut S, host: HostId, reflector: SocketAddr) -> SocketAddr {
    let before = observed(sim, host).len();
    sim.with_machine(host, |m: &mut ToyMachine, now| {
        m.ask_reflection(now, reflector)
    });
    sim.run_for(Duration::from_secs(1));
    let all = observed(sim, host);
    assert_eq!(
        all.len(),
        before + 1,
        "no reflection answer:\n{}",
        sim.trace().dump()
    );
    *all.last().unwrap()
}

/// Every address reflected back to `host`.
pub fn observed(sim: &S, host: HostId) -> Vec<SocketAddr> {
    sim.events(host)
        .iter()
        .filter_map(|(_, e)| match e {
            ToyEvent::Observed { observed, .. } => Some(*observed),
            _ => None,
        })
        .collect()
}

/// The streams `host`'s machine saw opened from outside, with the remote address.
pub fn opened(sim: &S, host: HostId) -> Vec<(StreamId, SocketAddr)> {
    sim.events(host)
        .iter()
        .filter_map(|(_, e)| match e {
            ToyEvent::StreamOpened { stream, remote } => Some((*stream, *remote)),
            _ => None,
        })
        .collect()
}

/// Every byte `host` received on `stream`, concatenated.
pub fn stream_bytes(sim: &S, host: HostId, stream: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, e) in sim.events(host) {
        if let ToyEvent::StreamData {
            stream: s, data, ..
        } = e
        {
            if *s == stream {
                out.extend_from_slice(data);
            }
        }
    }
    out
}

/// Whether `host` was told that `stream` closed.
pub fn closed(sim: &S, host: HostId, stream: StreamId) -> bool {
    sim.events(host)
        .iter()
        .any(|(_, e)| *e == ToyEvent::StreamClosed { stream })
}
