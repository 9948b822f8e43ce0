//! Deterministic discrete-event network simulator for Natter's sans-IO machines.
//!
//! `natter-sim` drives any [`natter_core::sansio::Machine`] over an in-memory network in
//! virtual time. Nothing touches a real socket, clock or thread: the same seed always gives
//! the same run, down to the nanosecond.
//!
//! # Model
//!
//! * **Virtual time.** The simulator captures one [`Instant`](std::time::Instant) when it is
//!   built and hands machines `start + offset`; all scheduling works on the offset. The
//!   event queue is ordered by `(time, insertion sequence)`, and [`Sim::run_until`] jumps
//!   straight from one event to the next.
//! * **Randomness.** One ChaCha20 generator seeded with [`SimConfig::seed`] makes every
//!   random decision: loss (and the loss chains' steps), jitter, reordering, duplication, NAT
//!   port allocation.
//! * **Networks and hosts.** There is one public [`Network::Internet`] plus a private
//!   [`Network::Lan`] behind every NAT box. A host lives on one network, is bound to one or
//!   more `SocketAddr`s ([`Sim::add_host`], [`Sim::add_host_behind`], [`Sim::bind`]) and
//!   runs one machine (all machines share the event type `E` of [`Sim<E>`]; wrap others in
//!   [`Mapped`]). Use 198.18.0.0/15 for public addresses and 10/8 or 192.168/16 for
//!   private ones; private ranges may repeat on different LANs.
//! * **Drain order.** After every input (datagram, stream bytes, stream close, timeout or an
//!   application command run through [`Sim::with_machine`]) the simulator drains the machine
//!   as `natter_core::sansio` prescribes: every transmit, then every event (stored, see
//!   [`Sim::events`]), then the timer, repeated until nothing new appears. Transmits never
//!   reach another machine synchronously; every delivery goes through the event queue.
//! * **Links.** Every hop across a network crosses a [`LinkConfig`] (latency, jitter,
//!   independent or burst loss, reordering, duplication): [`SimConfig::internet`] on the
//!   internet, [`NatConfig::lan_link`] on a LAN, unless [`Sim::set_link`] overrides a pair of
//!   nodes; [`Sim::set_access_link`] adds a per-node link on top. Burst loss is a
//!   Gilbert-Elliott chain per segment and direction; [`OneWayLink`] is one link on its own,
//!   for code with a virtual-time loop of its own (`natter-media`'s loopback).
//! * **NATs** ([`Sim::add_nat`], [`NatConfig`]) implement the RFC 4787 mapping and filtering
//!   behaviours, hairpinning, idle mapping timeouts and random, preserving or sequential
//!   port allocation. Hosts on the same LAN reach each other directly. NATs can be nested
//!   ([`Sim::add_nat_behind`]). TCP is outbound-only through a NAT.
//!   [`NatConfig::linux_masquerade`] adds the conntrack clash of Linux NATs
//!   ([`NatConfig::conntrack_clash`]): a packet from a peer that reaches the NAT before the
//!   host inside sent to that peer pushes the host's later mapping towards it onto a new port.
//! * **IP TTL.** Datagrams carry the TTL of their `Transmit` (64 when unset); every NAT box
//!   and the internet (one hop) is a router that decrements it, and a packet dies
//!   ([`DropReason::TtlExpired`]) at the router where it runs out, after the NATs it crossed
//!   mapped it. A TTL-2 packet from behind one NAT opens that NAT and dies before the far one.
//! * **Firewalls.** [`NatConfig::block_udp`] makes a NAT drop all UDP in both directions
//!   while TCP still goes out; [`Sim::set_udp_blocked`] does the same for one host.
//!   [`NatConfig::tcp_ports`] (see [`NatConfig::web_only_firewall`]) lets TCP out only to
//!   the given destination ports.
//! * **Streams** ([`Sim::connect_stream`]) are reliable, ordered byte streams: losses on the
//!   path become retransmission delays. The accepting machine learns about a new stream from
//!   an `Input::StreamOpened` with a new [`StreamId`](natter_core::sansio::StreamId), and the
//!   opener gets one when the handshake completes. Machines can open and close streams
//!   themselves with `StreamCommand`s (their own ids are translated per host).
//!   [`Sim::close_stream`] closes one end; both machines get `Input::StreamClosed`.
//! * **Sockets on demand.** A machine's `StreamCommand::BindUdp` adds an address on an
//!   ephemeral port of its host (answered with `Input::UdpBound` in the next event);
//!   `CloseUdp` removes it, as does a crash or restart of the host.
//! * **Observation.** Every send, translation, delivery and drop is appended to the
//!   [`Trace`], whose [`digest`](Trace::digest) (FNV-1a) and [`Counters`] make runs easy to
//!   compare. [`SimConfig::capture`] keeps every datagram's bytes ([`Sim::captured`]) for
//!   replay with [`Sim::inject_datagram`]; [`Sim::set_interceptor`] can drop or rewrite what
//!   machines send.
//!
//! # Example
//!
//! With the `toy` feature (a tiny ping/echo/reflector machine for tests and examples):
//!
//! ```
//! use std::time::Duration;
//! use natter_sim::toy::{ToyEvent, ToyMachine};
//! use natter_sim::{LinkConfig, NatConfig, Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig {
//!     seed: 7,
//!     internet: LinkConfig::with_latency(Duration::from_millis(20)),
//!     ..SimConfig::default()
//! });
//! let server_addr = "198.18.0.10:3478".parse().unwrap();
//! let server = sim.add_host("server", server_addr, ToyMachine::new(server_addr));
//! let nat = sim.add_nat("home", "198.18.0.1".parse().unwrap(), NatConfig::symmetric());
//! let alice_addr = "192.168.1.2:5000".parse().unwrap();
//! let alice = sim.add_host_behind(nat, "alice", alice_addr, ToyMachine::new(alice_addr));
//!
//! // An application command, followed by the contract's drain.
//! sim.with_machine(alice, |m: &mut ToyMachine, now| m.ask_reflection(now, server_addr));
//! sim.run_for(Duration::from_secs(1));
//!
//! // The server saw Alice's NAT, and told her so.
//! let observed = sim.events(alice).iter().find_map(|(_, e)| match e {
//!     ToyEvent::Observed { observed, .. } => Some(*observed),
//!     _ => None,
//! });
//! assert_eq!(observed.unwrap().ip(), sim.nat_external_ip(nat));
//! assert_eq!(sim.counters().delivered, 2);
//! assert!(sim.events(server).is_empty());
//! println!("trace digest {:016x}", sim.digest());
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bottleneck;
mod config;
mod link;
mod mapped;
mod nat;
mod rng;
mod sim;
mod stream;
#[cfg(feature = "toy")]
pub mod toy;
mod trace;

pub use bottleneck::Bottleneck;
pub use config::{SimConfig, StreamConfig};
pub use link::{LinkConfig, OneWayLink};
pub use mapped::Mapped;
pub use nat::{FilteringBehavior, MappingBehavior, MappingInfo, NatConfig, PortAllocation};
pub use sim::{Deadline, HostId, NatId, Network, Node, Sim};
pub use stream::{StreamInfo, StreamStatus};
pub use trace::{
    CapturePoint, Captured, Counters, DropReason, Trace, TraceEntry, TraceKind, Verdict,
};
