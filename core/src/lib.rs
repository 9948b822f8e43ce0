//! # natter-core
//!
//! The sans-IO heart of Natter, a peer-to-peer voice and messaging SDK: the wire format,
//! device identities and certificates, Noise sessions with replay protection, and the protocol
//! state machines. This crate performs no I/O: it never opens a socket, spawns a thread, reads
//! a clock or draws OS randomness (one documented exception: the Olm ratchet keys in [`chat`]). Time comes in as an argument, output goes out as values.
//!
//! ## The sans-IO contract
//!
//! Every machine has one shape ([`sansio::Machine`]):
//!
//! * `handle_input(now, Input)`: a datagram or stream bytes, with their addresses;
//! * `handle_timeout(now)`: the deadline from `poll_timeout` has passed;
//! * application commands: inherent methods that take `now` (e.g. [`endpoint::Endpoint::connect`]);
//! * `poll_transmit()`, `poll_stream_command()`, `poll_event()`, `poll_timeout()`: outputs,
//!   drained in that order after every input (the first three until empty, the deadline read
//!   once).
//!
//! Sub-machines that only a facade calls (the overlay's super-node role, membership and index
//! inside its `Node`) keep the same rules with narrower shapes: `now` comes in, outputs are
//! returned as values or drained with a `poll_*` method.
//!
//! Randomness is seeded through configuration ([`rng::Rng`]), wall-clock time for certificate
//! checks is derived from an anchor given in configuration. The runtime crate
//! (`natter-transport`) drives machines over real sockets; the simulator (`natter-sim`) drives
//! the same machines in virtual time.
//!
//! ## Modules, by role
//!
//! * [`sansio`]: the machine contract; [`rng`]: seeded randomness.
//! * [`wire`]: first-byte demultiplexing, packets, messages, stream framing, relay headers,
//!   STUN.
//! * [`crypto`]: device keys, user names, the login authority and certificates; Noise XX / IK
//!   through `snow`; the ChaCha20-Poly1305 data plane with its replay window and key update.
//! * [`endpoint`]: the peer endpoint machine (sessions, keep-alives, retransmission, roaming).
//! * [`login`]: the login protocol and the client's machine (the server is `natter-server`).
//! * [`overlay`]: the overlay client: host cache, attaching to super nodes, NAT detection,
//!   signed presence records, searching the global index.
//! * [`call`]: call signalling (invite, ring, answer, hold, hang-up; multi-device, glare) and
//!   a connected call's paths (candidates, hole punching, switching, quality).
//! * [`contacts`]: the buddy list as a state that merges across a user's devices.
//! * [`chat`]: end-to-end encrypted messages (Olm channels between devices), conversations in
//!   the same causal order on every device, exactly once. The one place OS randomness is drawn
//!   (inside `vodozemac`, which cannot be seeded; see [`chat::channel`]).
//! * `testkit` (feature `testkit`): a test authority and identities, a pump for two endpoints.
//!
//! ## Example: two endpoints in a hand-driven loop
//!
//! ```
//! use std::time::Instant;
//! use natter_core::endpoint::Endpoint;
//! use natter_core::testkit::TestNetwork;
//!
//! let now = Instant::now();
//! let net = TestNetwork::new(1);
//! let (mut a, mut b) = (net.endpoint("alice", now), net.endpoint("bob", now));
//! let bob_addr = "198.18.0.2:4000".parse().unwrap();
//! let alice_addr = "198.18.0.1:4000".parse().unwrap();
//! let conn = a.connect(now, natter_core::sansio::Destination::Udp(bob_addr), None).unwrap();
//! natter_core::testkit::pump(&mut a, alice_addr, &mut b, bob_addr, now);
//! a.send(now, conn, b"hi").unwrap();
//! natter_core::testkit::pump(&mut a, alice_addr, &mut b, bob_addr, now);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod call;
pub mod chat;
pub mod contacts;
pub mod crypto;
pub mod endpoint;
pub mod login;
pub mod overlay;
pub mod rng;
pub mod sansio;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wire;
