//! A running node's figures, for operators ([`Client::status`](crate::Client::status)).

use std::net::SocketAddr;
use std::time::Duration;

use natter_core::overlay::NatType;

/// What a running node does: role, clients served, index and relay figures, NAT, load.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The UDP address it listens on.
    pub listen: SocketAddr,
    /// Time since it started.
    pub uptime: Duration,
    /// True while it is a super node.
    pub super_node: bool,
    /// The super nodes it is attached to (as an ordinary node).
    pub attached_to: Vec<SocketAddr>,
    /// Clients attached to it (as a super node).
    pub clients: usize,
    /// Super nodes in its membership view (its index ring).
    pub super_nodes_known: usize,
    /// The last NAT classification.
    pub nat: Option<NatType>,
    /// Its address as a super node saw it in the last NAT probe.
    pub mapped_address: Option<SocketAddr>,
    /// Its share of the global index (super nodes).
    pub index: Option<IndexStatus>,
    /// Its relay service (super nodes).
    pub relay: Option<RelayStatus>,
    /// Its share of the chat mailboxes (super nodes): messages kept for offline devices.
    pub mailbox: Option<MailboxStatus>,
    /// Share of a core its event loop is busy (0 to 1), last second.
    pub cpu: f32,
    /// Bytes per second sent and received, last second.
    pub bytes_per_sec: u64,
}

/// The index part of [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexStatus {
    /// Presence records held.
    pub records: usize,
    /// Records stored since start (new or fresher).
    pub stored: u64,
    /// Records refused since start (invalid, stale or not this node's to hold).
    pub refused: u64,
    /// Searches in progress.
    pub searches: usize,
}

/// The mailbox part of [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxStatus {
    /// Sealed messages kept now for devices that are offline.
    pub messages: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Messages taken since start.
    pub stored: u64,
    /// Messages refused since start (a device's, a sender's or the node's bound reached).
    pub refused: u64,
}

/// The relay part of [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Open relay channels.
    pub channels: usize,
    /// Channels allocated since start.
    pub allocated: u64,
    /// Allocations refused since start (quota, full, unknown peer...).
    pub refused: u64,
    /// Packets relayed since start.
    pub relayed_packets: u64,
    /// Bytes relayed since start.
    pub relayed_bytes: u64,
    /// Frames dropped since start (malformed, unknown channel, not a party, over the rate).
    pub dropped: u64,
}
