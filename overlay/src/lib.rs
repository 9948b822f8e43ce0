//! # natter-overlay
//!
//! The super-node (SN) role of Natter and the node that composes every role, sans-IO like
//! `natter-core`: the distributed global index, search routing, the membership of super
//! nodes, the media relay and the STUN server that SNs serve to ordinary nodes, and the
//! [`node::Node`] facade that runs any node (ordinary or super) behind one port. Any node can
//! take the SN role; promotion is measured, not configured.
//!
//! Layering: this crate depends on `natter-core` only and, like it, performs no I/O. A test in
//! the workspace (`transport/tests/layering.rs`) fails if it gains an I/O dependency.
//!
//! * [`node`]: the node facade, built from parts (the uplink, the index client, calls, the
//!   super-node role) with one session-ownership table, one routing table, one timer table.
//! * [`dht`]: the distributed index: ring, replication, search.
//! * [`index`]: a super node's share of the global index (verified presence records).
//! * [`membership`]: every super node knowing every other: ring probing, gossip, anti-entropy.
//! * [`relay`]: the media relay table: channels between two devices that cannot meet directly.
//! * [`stun`]: the STUN server (RFC 8489 Binding, RFC 5780 NAT-behaviour discovery).
//! * [`supernode`]: the super-node role's clients and membership links, and handover.
//! * [`watch`]: a super node's watches of presence for its clients.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dht;
pub mod index;
pub mod membership;
pub mod node;
pub mod relay;
pub mod stun;
pub mod supernode;
pub mod watch;

pub use natter_core::sansio::Machine;
