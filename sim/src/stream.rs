//! Reliable stream bookkeeping.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use natter_core::sansio::StreamId;

use crate::sim::Traversal;
use crate::{HostId, NatId};

/// The lifecycle stage of one stream end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStatus {
    /// Opened with [`Sim::connect_stream`](crate::Sim::connect_stream), not yet accepted.
    /// Writes are buffered until the stream opens.
    Connecting,
    /// Bytes flow both ways.
    Open,
    /// Closed, refused or reset. Writes are dropped.
    Closed,
}

/// A snapshot of one stream end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The host owning this end.
    pub host: HostId,
    /// This end's address as its host sees it.
    pub local: SocketAddr,
    /// The far end's address as this host sees it (after NAT translation for the accepting
    /// side).
    pub remote: SocketAddr,
    /// The id of the far end, once known.
    pub peer: Option<StreamId>,
    /// Lifecycle stage.
    pub status: StreamStatus,
}

/// One end of a simulated stream.
pub(crate) struct StreamEnd {
    pub(crate) host: HostId,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) peer: Option<StreamId>,
    pub(crate) status: StreamStatus,
    /// Whether the owning machine has been told the stream is closed.
    pub(crate) notified: bool,
    /// Writes made while connecting.
    pub(crate) pending: Vec<Bytes>,
    /// The network crossings between the two ends. Segments cross the links these
    /// currently have, so link changes affect open streams.
    pub(crate) route: Vec<Traversal>,
    /// Arrival time of the last segment sent from this end, to keep bytes in order.
    pub(crate) last_delivery: Duration,
    /// External TCP ports this connection holds on NATs along its path.
    pub(crate) nat_ports: Vec<(NatId, u16)>,
}

impl StreamEnd {
    pub(crate) fn info(&self) -> StreamInfo {
        StreamInfo {
            host: self.host,
            local: self.local,
            remote: self.remote,
            peer: self.peer,
            status: self.status,
        }
    }
}
