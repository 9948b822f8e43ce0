//! # natter-overlay
//!
//! The super-node (SN) role of Natter, sans-IO like `natter-core`: the distributed global
//! index, search routing, the media relay and NAT-behaviour probing that SNs serve to ordinary
//! nodes. Any node can take this role; promotion is measured, not configured.
//!
//! Layering: this crate depends on `natter-core` only and, like it, performs no I/O. A test in
//! the workspace (`transport/tests/layering.rs`) fails if it gains an I/O dependency.
//!
//! The SN machines land with the overlay, index and relay issues; the
//! [`natter_core::sansio::Machine`] contract they implement is already fixed.
//!
//! * [`dht`]: the distributed index: ring, replication, search.
//! * [`index`]: a super node's share of the global index (verified presence records).
//! * [`membership`]: every super node knowing every other: ring probing, gossip, anti-entropy.
//! * [`node`]: the node facade composing every sub-machine behind one port, any role.
//! * [`relay`]: the media relay table: channels between two devices that cannot meet directly.
//! * [`stun`]: the STUN server (RFC 8489 Binding, RFC 5780 NAT-behaviour discovery).
//! * [`supernode`]: the super-node role: attached clients, membership gossip, handover.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dht;
pub mod index;
pub mod membership;
pub mod node;
pub mod relay;
pub mod stun;
pub mod supernode;

pub use natter_core::sansio::Machine;
