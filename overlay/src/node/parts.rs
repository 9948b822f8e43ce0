//! What the node's parts share: who owns each session and stream, the context a part is handed
//! with every input, the facts one part publishes for the others, the notices they send each
//! other, and the node's one timer table.
//!
//! A **part** is a struct with its own state (the overlay link [`super::uplink::Uplink`], the
//! index client [`super::lookup::Lookup`], [`super::calls::Calls`], the super-node role
//! [`super::super_node::SuperNode`]). Every part has the same shape:
//!
//! * inputs are methods that take a [`Cx`] (which carries `now`): the session events and
//!   messages the facade routes to it, the [`Notice`]s other parts send it, its timer;
//! * its outputs go into the [`Outbox`] of that context (datagrams it builds itself, stream
//!   commands, events for the application, notices for other parts); messages on sessions go
//!   out through [`Sessions`], the part's handle on the shared endpoint;
//! * `poll_timeout()` tells the facade's [`TimerTable`] when it next wants its timer.
//!
//! A part never reaches into another part's state: it reads the [`Facts`] the facade keeps and
//! sends [`Notice`]s. Which part gets which session event and which message is decided in one
//! place, [`super::route`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_core::crypto::{DeviceId, HandshakeError, UnixTime, UserName};
use natter_core::endpoint::{ConnId, Endpoint, Path, SendError};
use natter_core::overlay::{LinkTransport, NatReport, NatType, PresenceRecord, SearchOutcome};
use natter_core::sansio::{StreamCommand, StreamId, Transmit};
use natter_core::wire::message::Message;

use super::{NodeConfig, NodeEvent, NodeStats};

/// The parts of a node. Each owns the sessions it opened or claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PartId {
    /// The overlay client: links to super nodes, NAT detection, UDP keep-alives.
    Uplink,
    /// The index client: searches and our own presence record.
    Lookup,
    /// Calls: dialling, relays for calls, call sessions, paths, media.
    Calls,
    /// The super-node role: clients, membership, the index, the relay, the STUN server.
    SuperNode,
    /// Chat: sealing, sending until acknowledged, putting pieces together, opening.
    Chat,
}

/// Who owns each session and each stream a part opened. Sessions nobody owns (a peer's
/// application session) are the application's.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    sessions: BTreeMap<ConnId, PartId>,
    streams: BTreeMap<StreamId, PartId>,
}

impl Owners {
    /// The owner of session `conn`.
    pub fn session(&self, conn: ConnId) -> Option<PartId> {
        self.sessions.get(&conn).copied()
    }

    /// The part that opened stream `stream`.
    pub fn stream(&self, stream: StreamId) -> Option<PartId> {
        self.streams.get(&stream).copied()
    }

    /// `part` owns session `conn` from now on.
    pub fn set_session(&mut self, conn: ConnId, part: PartId) {
        self.sessions.insert(conn, part);
    }

    /// Session `conn` is gone.
    pub fn forget_session(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
    }

    /// Stream `stream` is gone.
    pub fn forget_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
    }
}

/// What a part produced, besides what it sent on sessions. The facade drains it after every
/// call into a part: transmits and stream commands to the driver, events to the application,
/// notices to the parts they name (in order).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Datagrams built outside the endpoint (STUN, relayed frames).
    pub transmits: VecDeque<Transmit>,
    /// Streams to open or close.
    pub commands: VecDeque<StreamCommand>,
    /// For the application.
    pub events: VecDeque<NodeEvent>,
    /// For other parts.
    pub notices: VecDeque<(PartId, Notice)>,
    /// Counters.
    pub stats: NodeStats,
}

impl Outbox {
    /// Tell `part` about `notice`.
    pub fn notify(&mut self, part: PartId, notice: Notice) {
        self.notices.push_back((part, notice));
    }
}

/// A part's handle on the sessions layer: the shared [`Endpoint`], with every session the part
/// opens or claims recorded as its own.
pub(crate) struct Sessions<'a> {
    endpoint: &'a mut Endpoint,
    owners: &'a mut Owners,
    part: PartId,
}

impl<'a> Sessions<'a> {
    pub fn new(endpoint: &'a mut Endpoint, owners: &'a mut Owners, part: PartId) -> Self {
        Self {
            endpoint,
            owners,
            part,
        }
    }

    /// Open a session (IK when `key` is known); this part owns it.
    pub fn connect(
        &mut self,
        now: Instant,
        dest: impl Into<Path>,
        key: Option<[u8; 32]>,
    ) -> Result<ConnId, HandshakeError> {
        let conn = self.endpoint.connect(now, dest, key)?;
        self.owners.set_session(conn, self.part);
        Ok(conn)
    }

    /// Send a control message on session `conn`.
    pub fn send(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: &Message<'_>,
    ) -> Result<(), SendError> {
        self.endpoint.send_control(now, conn, message)
    }

    /// Close session `conn`.
    pub fn close(&mut self, now: Instant, conn: ConnId) {
        self.endpoint.close(now, conn);
    }

    /// Ask the driver for a stream, known as `stream`; this part gets its open and close.
    pub fn open_stream(
        &mut self,
        out: &mut Outbox,
        stream: StreamId,
        remote: SocketAddr,
        tls: bool,
    ) {
        self.owners.streams.insert(stream, self.part);
        out.commands.push_back(StreamCommand::Connect {
            stream,
            remote,
            tls,
        });
    }

    /// The endpoint, for what the methods above do not cover (paths, probes, media, timing).
    pub fn endpoint(&mut self) -> &mut Endpoint {
        self.endpoint
    }

    /// The endpoint, read only.
    pub fn view(&self) -> &Endpoint {
        self.endpoint
    }
}

/// What the parts know of the node's place in the network, kept by the facade and published
/// by the part that learns it (the uplink): every other part reads it here.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Facts {
    /// Attached super nodes: the link's stream, the super node's address, the session on it.
    pub links: Vec<Link>,
    /// UDP seems blocked here (links run over TCP).
    pub udp_blocked: bool,
    /// The port the links got through (main, fallback or TLS).
    pub link_transport: Option<LinkTransport>,
    /// Our address as super nodes see it over UDP.
    pub reflexive: Option<SocketAddr>,
    /// The last NAT report.
    pub nat: Option<NatReport>,
    /// This host's own addresses.
    pub local_addresses: Vec<SocketAddr>,
    /// The node holds the super-node role.
    pub super_node: bool,
}

/// One attached super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    /// The link's stream.
    pub stream: StreamId,
    /// The super node's address.
    pub addr: SocketAddr,
    /// The session on the link.
    pub conn: ConnId,
}

impl Facts {
    /// UDP cannot be used here: the links fell back to TCP, or the NAT probe said so.
    pub fn udp_blocked_here(&self) -> bool {
        self.udp_blocked
            || self
                .nat
                .as_ref()
                .is_some_and(|r| r.nat == NatType::UdpBlocked)
    }

    /// The session of the link to `addr`.
    pub fn link_to(&self, addr: SocketAddr) -> Option<ConnId> {
        self.links.iter().find(|l| l.addr == addr).map(|l| l.conn)
    }

    /// The link on stream `stream`.
    pub fn link_on(&self, stream: StreamId) -> Option<&Link> {
        self.links.iter().find(|l| l.stream == stream)
    }

    /// The addresses of the attached super nodes.
    pub fn attached(&self) -> Vec<SocketAddr> {
        self.links.iter().map(|l| l.addr).collect()
    }

    /// The NAT type code presence records and attach messages carry.
    pub fn nat_code(&self) -> u8 {
        nat_code(self.nat.as_ref().map(|r| r.nat))
    }
}

/// The NAT type code presence records and attach messages carry.
pub(crate) fn nat_code(nat: Option<NatType>) -> u8 {
    match nat {
        None => 0,
        Some(NatType::Open) => 1,
        Some(NatType::PublicFiltered(_)) => 2,
        Some(NatType::EndpointIndependent(_)) => 3,
        Some(NatType::Symmetric) => 4,
        Some(NatType::UdpBlocked) => 5,
    }
}

/// What one part tells another.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    /// The facts changed: links, addresses, NAT (to the parts that act on them).
    FactsChanged,
    /// A link to a super node is up (to the super-node role: it is a membership link too).
    Linked(Link),
    /// A link to a super node ended (to the super-node role). `lost`: the stream broke under
    /// us, so the super node may be gone; otherwise we closed it or its session ended.
    Unlinked {
        /// The link.
        link: Link,
        /// The stream broke.
        lost: bool,
    },
    /// Run a search in our own index (to the super-node role): we are a super node.
    SearchHere {
        /// The search's id.
        id: u64,
        /// Who.
        user: UserName,
    },
    /// A search ended.
    SearchDone {
        /// The id it was asked with.
        id: u64,
        /// What was found.
        outcome: SearchOutcome,
    },
    /// Store our own presence record in our own index (to the super-node role).
    Publish(Box<PresenceRecord>),
    /// Our will, as a super node: deposit it with our ring successors, which publish it if
    /// we leave the ring (to the super-node role).
    Will(Box<PresenceRecord>),
    /// Poke our own client `device` (we are the super node it is attached to; to the
    /// super-node role).
    PokeHere {
        /// The device.
        device: DeviceId,
    },
    /// Search the index for `user` and tell `reply` how it ended (to the index client).
    SearchFor {
        /// Who.
        user: UserName,
        /// The part that hears [`Notice::SearchDone`].
        reply: PartId,
    },
    /// Send these encoded control messages to super node `sn` over a session with it (to
    /// calls, which keeps the node's sessions with other super nodes).
    PostVia {
        /// The super node.
        sn: SocketAddr,
        /// The encoded messages.
        messages: Vec<Vec<u8>>,
    },
    /// An encoded chat message of our own chat for the super-node role, as if a client sent
    /// it: a piece for one of our clients or a device with a session to us, a piece for a
    /// mailbox, an acknowledgement of a mailbox's messages.
    ChatHere(Vec<u8>),
    /// An encoded chat message for this device that reached the super-node role (to chat).
    ChatIn {
        /// The session it came on (answers go back on it); `None`: from our own role.
        conn: Option<ConnId>,
        /// The encoded piece.
        message: Vec<u8>,
    },
    /// Watch (or stop watching) these users' presence through our own index (to the
    /// super-node role).
    WatchHere {
        /// Who.
        users: Vec<UserName>,
        /// Start or stop.
        watch: bool,
    },
    /// A watched user's record, from our own index (to the index client).
    Presence(Box<PresenceRecord>),
    /// We sent UDP to this address (to the uplink: its filter towards us may be open, which
    /// the NAT probe must know).
    UdpContacted(SocketAddr),
    /// A call's direct path died (to the uplink): ask our reflexive address again now.
    RecheckReflexive,
}

/// The context of one input to a part.
pub(crate) struct Cx<'a> {
    /// The time of the input.
    pub now: Instant,
    /// Wall-clock time at `now` (certificate and record checks).
    pub wall: UnixTime,
    /// The node's configuration.
    pub cfg: &'a NodeConfig,
    /// What the node knows of its place in the network.
    pub facts: &'a Facts,
    /// The far end of every open stream, as the driver saw it.
    pub stream_remotes: &'a BTreeMap<StreamId, SocketAddr>,
    /// The part's handle on the sessions.
    pub sessions: Sessions<'a>,
    /// Where the part's other outputs go.
    pub out: &'a mut Outbox,
}

/// The node's timers: one deadline per part, and the facade's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    /// The endpoint (handshakes, keep-alives, idle sessions).
    Endpoint,
    /// A part's timer.
    Part(PartId),
    /// Accepted streams that carry no session in time.
    Streams,
    /// Promotion and overload (the facade's role decisions).
    Role,
}

const TIMERS: usize = 8;

impl Timer {
    fn index(self) -> usize {
        match self {
            Timer::Endpoint => 0,
            Timer::Part(PartId::Uplink) => 1,
            Timer::Part(PartId::Lookup) => 2,
            Timer::Part(PartId::Calls) => 3,
            Timer::Part(PartId::SuperNode) => 4,
            Timer::Streams => 5,
            Timer::Role => 6,
            Timer::Part(PartId::Chat) => 7,
        }
    }

    const ALL: [Timer; TIMERS] = [
        Timer::Endpoint,
        Timer::Part(PartId::Uplink),
        Timer::Part(PartId::Lookup),
        Timer::Part(PartId::Calls),
        Timer::Part(PartId::SuperNode),
        Timer::Streams,
        Timer::Role,
        Timer::Part(PartId::Chat),
    ];
}

/// One deadline per [`Timer`]; the node's own deadline is the earliest.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; TIMERS],
}

impl TimerTable {
    /// Set (or clear) `timer`.
    pub fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer.index()] = at;
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The timers due at `now`, in a fixed order.
    pub fn due(&self, now: Instant) -> Vec<Timer> {
        Timer::ALL
            .into_iter()
            .filter(|t| self.at[t.index()].is_some_and(|at| at <= now))
            .collect()
    }
}
