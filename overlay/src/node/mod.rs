//! The node facade: one sans-IO machine per Natter node, whatever its role.
//!
//! [`Node`] composes the sub-machines behind one UDP port and the node's TCP streams:
//!
//! * the [`Endpoint`] (every Noise session, over UDP and over streams);
//! * the [`Attacher`] (finding super nodes, keeping two links to them);
//! * the [`NatProbe`] (RFC 5780 classification against an attached super node);
//! * when the node is a super node: the [`StunServer`] and the [`SuperNodeRole`].
//!
//! Datagrams are demultiplexed by their first byte: STUN requests go to the STUN server,
//! STUN answers to the attacher's probes or the NAT probe, Natter packets to the endpoint.
//! Endpoint events that concern the overlay (links, attach answers, membership, handovers)
//! are consumed here; the rest is handed to the application as [`NodeEvent::Session`].
//!
//! **Promotion is measured, not configured**: with [`RolePolicy::Auto`] a node becomes a super
//! node once its NAT probe says it is open (a public address that an unsolicited packet from
//! another address reached) and it has been up for [`NodeConfig::promotion_uptime`]. A super
//! node whose periodic re-check finds it no longer open demotes itself and hands its clients
//! over. Operators can force or forbid the role.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_core::call::{CallConfig, CallEvent};
use natter_core::call::{CallQuality, PathConfig, PathKind, SwitchReason};
use natter_core::crypto::UnixTime;
use natter_core::crypto::{Capabilities, LocalIdentity};
use natter_core::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent, Path};
use natter_core::overlay::HostCache;
use natter_core::overlay::{AttachAction, AttachConfig, AttachEvent, Attacher};
use natter_core::overlay::{NatEvent, NatProbe, NatProbeConfig, NatReport, NatType};
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, Input, Machine, StreamCommand, StreamId, Transmit};
use natter_core::wire::message::CallId;
use natter_core::wire::message::{HostEntry, Message};
use natter_core::wire::stun::{Class, Message as StunMessage, TransactionId};
use natter_core::wire::{classify, Class as WireClass};

use crate::dht::{Dht, DhtConfig, Ring};
use crate::stun::StunServer;
use crate::supernode::{SuperNodeConfig, SuperNodeEvent, SuperNodeRole};
use natter_core::overlay::{ClientSearches, SearchOutcome};

mod calls;
mod index;
mod relaying;
pub use calls::{DialError, DialOutcome};
use index::ClientSearchTry;

/// What a presence record says, apart from its sequence number and time: a fresh record is
/// published whenever this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PresenceKey {
    super_nodes: Vec<SocketAddr>,
    online: bool,
    reflexive: Option<SocketAddr>,
    local_addresses: Vec<SocketAddr>,
    nat: u8,
}

/// Sessions a super node may hold with other super nodes, beyond its clients.
const MAX_PEER_SESSIONS: usize = 16_384;

/// Whether a node may be a super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolePolicy {
    /// Become one when measured suitable.
    Auto,
    /// Always be one (bootstrap super nodes run by operators).
    Force,
    /// Never be one.
    Forbid,
}

/// Configuration of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Our identity (from the login server).
    pub identity: LocalIdentity,
    /// Randomness for everything.
    pub seed: [u8; 32],
    /// Wall-clock time at `clock_anchor`.
    pub wall_anchor: UnixTime,
    /// The instant matching `wall_anchor`.
    pub clock_anchor: Instant,
    /// The node's UDP and TCP address (what others use when it is a super node).
    pub listen: SocketAddr,
    /// This host's own addresses (NAT detection; same-LAN shortcuts).
    pub local_addresses: Vec<SocketAddr>,
    /// A second IP and port for RFC 5780 tests, when this host has one.
    pub stun_alternate: Option<SocketAddr>,
    /// Super-node policy.
    pub role: RolePolicy,
    /// Known super nodes (loaded from disk, seeded from the network file).
    pub host_cache: HostCache,
    /// Attach settings, among them the fallback port pair super nodes listen on (as a super
    /// node, this node listens there too: [`Node::tcp_listen_addresses`]).
    pub attach: AttachConfig,
    /// Uptime before an open node promotes itself (default 2 minutes).
    pub promotion_uptime: Duration,
    /// NAT re-check interval (default 5 minutes).
    pub nat_recheck: Duration,
    /// Send a keep-alive on a session (TCP links included) after this long without sending
    /// (default 20 s). On a link to a super node the node uses the shorter of this and the
    /// interval the super node asks for in its attach answer; as a super node, this is the
    /// interval it asks its clients for.
    pub keepalive: Duration,
    /// A session with nothing received for this long is dead (default 60 s: three missed
    /// keep-alives). On a link to a super node: three of the super node's intervals, at most
    /// this.
    pub idle_timeout: Duration,
    /// An accepted TCP stream that carries no session this long after it opened is closed
    /// (default 10 s): a peer that connects and stays silent, or never completes a handshake,
    /// does not keep a socket and a stream slot.
    pub stream_claim_timeout: Duration,
    /// Keep the UDP NAT binding towards the super nodes alive this often with a STUN Binding
    /// (default 20 s, as the original network did); the answer also tells whether the mapped
    /// address changed.
    pub udp_keepalive: Duration,
    /// Most clients as a super node.
    pub max_clients: usize,
    /// Promote only while the node's load is at most this (busy fraction of its event loop,
    /// default 0.5): a super node needs spare CPU.
    pub max_promotion_load: f32,
    /// A super node whose load stays above this (default 0.9) for `overload_for` (default
    /// 30 s) gives the role up and hands its clients over.
    pub overload: f32,
    /// See `overload`.
    pub overload_for: Duration,
    /// The node's uplink capacity in bytes per second, when the operator knows it: promotion
    /// then also needs half of it spare.
    pub uplink_bytes_per_sec: Option<u64>,
    /// Global-index settings, as a super node.
    pub index: DhtConfig,
    /// Super nodes per /24 (IPv4) or /48 (IPv6) in the index ring (default 4; tests on one
    /// loopback address raise it).
    pub ring_prefix_cap: usize,
    /// Publish a fresh presence record this often while online (default 30 minutes), and
    /// whenever what it says changes (the super nodes this node is attached to, its addresses,
    /// its NAT type).
    pub presence_refresh: Duration,
    /// Give a search up after this long (default 3 s).
    pub search_timeout: Duration,
    /// Connectivity checks and path switching of calls.
    pub call_paths: PathConfig,
    /// The media relay, as a super node (quotas, idle timeout; the seed is drawn by the node).
    pub relay: crate::relay::RelayConfig,
}

/// How busy a node is, measured by its runtime.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// Fraction of the time its event loop was busy (0 to 1).
    pub cpu: f32,
    /// Bytes per second it sent and received.
    pub bytes_per_sec: u64,
}

impl NodeConfig {
    /// Defaults around an identity and address.
    pub fn new(
        identity: LocalIdentity,
        seed: [u8; 32],
        wall: UnixTime,
        now: Instant,
        listen: SocketAddr,
    ) -> Self {
        let mut rng = Rng::from_seed_bytes(seed);
        Self {
            identity,
            seed: rng.bytes32(),
            wall_anchor: wall,
            clock_anchor: now,
            listen,
            local_addresses: vec![listen],
            stun_alternate: None,
            role: RolePolicy::Auto,
            host_cache: HostCache::new(),
            attach: AttachConfig::new(rng.bytes32()),
            promotion_uptime: Duration::from_secs(120),
            nat_recheck: Duration::from_secs(300),
            keepalive: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            stream_claim_timeout: Duration::from_secs(10),
            udp_keepalive: Duration::from_secs(20),
            max_clients: 2000,
            max_promotion_load: 0.5,
            overload: 0.9,
            overload_for: Duration::from_secs(30),
            uplink_bytes_per_sec: None,
            index: DhtConfig::default(),
            ring_prefix_cap: 4,
            presence_refresh: Duration::from_secs(1800),
            search_timeout: Duration::from_secs(3),
            call_paths: PathConfig::default(),
            relay: crate::relay::RelayConfig::new([0; 32]),
        }
    }

    /// The UDP addresses a driver binds for a node with this configuration: the listen
    /// address and, when the node may be a super node, the other RFC 5780 combinations of its
    /// STUN server (a second port, and with [`NodeConfig::stun_alternate`] a second IP). The
    /// first is the listen address.
    pub fn bind_addresses(&self) -> Vec<SocketAddr> {
        if self.role == RolePolicy::Forbid {
            return vec![self.listen];
        }
        self.stun_server().local_addresses()
    }

    /// The TCP addresses a driver listens on, with whether each is TLS-wrapped: none for a
    /// node that may never be a super node; else the listen address and the fallback port pair
    /// of [`AttachConfig::fallback_ports`] (plain, then TLS) on its IP.
    pub fn tcp_listen_addresses(&self) -> Vec<(SocketAddr, bool)> {
        if self.role == RolePolicy::Forbid {
            return Vec::new();
        }
        let l = self.listen;
        let ports = self.attach.fallback_ports;
        vec![(l, false), (ports.plain(l), false), (ports.tls(l), true)]
    }

    /// The STUN server a super node with this configuration runs: with a second IP when it
    /// has one, else on its one IP with a second port and a partner super node for IP changes.
    fn stun_server(&self) -> StunServer {
        let listen = self.listen;
        self.stun_alternate
            .and_then(|alt| StunServer::new(listen, Some(alt)).ok())
            .unwrap_or_else(|| StunServer::single_address(listen, listen.port().wrapping_add(1)))
    }
}

/// What a node reports.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// Joining progress: connecting, UDP blocked, attached, detached, no super node.
    Attach(AttachEvent),
    /// The NAT type was (re)detected.
    Nat(NatReport),
    /// This node became a super node.
    Promoted,
    /// This node gave the super-node role up.
    Demoted,
    /// Super-node events (clients attaching and leaving).
    SuperNode(SuperNodeEvent),
    /// A session event for the application (peer sessions, data, media).
    Session(EndpointEvent),
    /// A dial started with [`Node::call`] placed its call or failed.
    Dial {
        /// The id [`Node::call`] returned.
        dial: u64,
        /// What happened.
        outcome: DialOutcome,
    },
    /// Call signalling: ringing, connected, hold, ended...
    Call(CallEvent),
    /// The connected call's path changed (the first one included).
    CallPath {
        /// Which call.
        call: CallId,
        /// The path.
        path: Path,
        /// Its kind.
        kind: PathKind,
        /// Why.
        reason: SwitchReason,
    },
    /// Quality of the connected call, about once a second.
    CallQuality {
        /// Which call.
        call: CallId,
        /// RTT, loss both ways, jitter, path.
        quality: CallQuality,
    },
    /// A media frame of the connected call arrived.
    CallMedia {
        /// Which call.
        call: CallId,
        /// The frame (see `natter_media::frame`).
        data: Bytes,
    },
    /// A search started with [`Node::search`] ended.
    Search {
        /// The id [`Node::search`] returned.
        id: u64,
        /// What was found, verified by this node.
        outcome: SearchOutcome,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// STUN requests answered (as a super node).
    pub stun_answered: u64,
    /// STUN messages that matched nothing.
    pub stun_unmatched: u64,
    /// Overlay messages that could not be used.
    pub overlay_dropped: u64,
    /// Accepted streams closed because no session was run over them in time.
    pub streams_unclaimed: u64,
}

/// The node facade. See the [module documentation](self).
pub struct Node {
    cfg: NodeConfig,
    rng: Rng,
    endpoint: Endpoint,
    attacher: Attacher,
    nat: Option<NatProbe>,
    nat_report: Option<NatReport>,
    next_nat_check: Option<Instant>,
    next_udp_keepalive: Option<Instant>,
    /// IPs this node sent UDP to (probes, keep-alives), for the NAT probe: their filters
    /// may be open. Bounded.
    udp_contacted: Vec<std::net::IpAddr>,
    load: Option<Load>,
    overloaded_since: Option<Instant>,
    /// Transaction of the last UDP keep-alive, and the mapped address it last reported.
    keepalive_probe: Option<TransactionId>,
    reflexive: Option<SocketAddr>,
    stun: Option<StunServer>,
    supernode: Option<SuperNodeRole>,
    started: Instant,
    /// Streams opened for links, and their sessions.
    stream_conn: HashMap<StreamId, ConnId>,
    conn_stream: HashMap<ConnId, StreamId>,
    /// Sessions that others opened over streams they connected to us (a super node's
    /// clients), and those streams: a stream is closed when its last session ends.
    incoming: HashMap<ConnId, StreamId>,
    /// The far end of every open stream, as the driver saw it (a client's public, NATed
    /// address on a stream it connected to us): the reflexive address of sessions over it.
    stream_remote: HashMap<StreamId, SocketAddr>,
    /// Accepted streams no session has claimed yet, and when they are closed if none does.
    unclaimed: HashMap<StreamId, Instant>,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<StreamCommand>,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
    /// The global index, as a super node.
    dht: Option<Dht>,
    /// Every super node this one knows, for the index.
    ring: Ring,
    next_ring_sync: Option<Instant>,
    /// The incarnation of this node's latest turn as a super node.
    last_incarnation: u32,
    /// Sessions with super nodes for index traffic, and those being opened (with what waits).
    index_sessions: HashMap<SocketAddr, ConnId>,
    index_connecting: HashMap<ConnId, (HostEntry, Vec<Message<'static>>)>,
    /// Super nodes a session could not be opened with: out of the ring until then.
    index_suspects: HashMap<SocketAddr, Instant>,
    /// Searches this node asked its super node for.
    client_searches: ClientSearches,
    /// Per query of ours: the id handed out, who was searched, when, the link asked, and
    /// whether this is already the second try (through the other super node).
    client_search_ids: HashMap<u32, ClientSearchTry>,
    next_search: u64,
    /// Presence: the last sequence number used, the super nodes named in the last record,
    /// when to publish again, and whether the user is online.
    presence_seq: u64,
    presence_published: Option<PresenceKey>,
    next_presence: Option<Instant>,
    online: bool,
    /// Calls: signalling, sessions with peer devices, connectivity.
    calls: calls::Calls,
    /// The media relay, as a super node.
    relaying: Option<relaying::Relaying>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("listen", &self.cfg.listen)
            .field("super_node", &self.supernode.is_some())
            .field("attached", &self.attacher.attached())
            .finish_non_exhaustive()
    }
}

fn nat_code(nat: Option<NatType>) -> u8 {
    match nat {
        None => 0,
        Some(NatType::Open) => 1,
        Some(NatType::PublicFiltered(_)) => 2,
        Some(NatType::EndpointIndependent(_)) => 3,
        Some(NatType::Symmetric) => 4,
        Some(NatType::UdpBlocked) => 5,
    }
}

impl Node {
    /// A node, starting to join at `now`.
    pub fn new(mut cfg: NodeConfig, now: Instant) -> Self {
        let mut rng = Rng::from_seed_bytes(cfg.seed);
        if cfg.role != RolePolicy::Forbid {
            cfg.identity.capabilities = cfg.identity.capabilities.union(Capabilities::SUPER_NODE);
        }
        let mut ep_cfg = EndpointConfig::new(
            cfg.identity.clone(),
            rng.bytes32(),
            cfg.wall_anchor,
            cfg.clock_anchor,
        );
        ep_cfg.keepalive_interval = cfg.keepalive;
        ep_cfg.idle_timeout = cfg.idle_timeout;
        // Clients, plus the super nodes a super node talks to for the membership and the
        // index: random gossip and sync partners and replicas reach most of them in time, and
        // keep-alives hold those sessions open (about 3 KB each: 30 MB for 10,000 peers).
        ep_cfg.max_sessions = cfg.max_clients + 64 + MAX_PEER_SESSIONS;
        // A super node holds one TCP stream per client.
        ep_cfg.max_streams = cfg.max_clients + 64;
        let endpoint = Endpoint::new(ep_cfg);
        let mut cache = std::mem::take(&mut cfg.host_cache);
        cache.remove(cfg.listen);
        let attacher = Attacher::new(cfg.attach.clone(), cache);
        let mut node = Self {
            rng,
            endpoint,
            attacher,
            nat: None,
            nat_report: None,
            next_nat_check: None,
            next_udp_keepalive: None,
            udp_contacted: Vec::new(),
            load: None,
            overloaded_since: None,
            keepalive_probe: None,
            reflexive: None,
            stun: None,
            supernode: None,
            started: now,
            stream_conn: HashMap::new(),
            conn_stream: HashMap::new(),
            incoming: HashMap::new(),
            stream_remote: HashMap::new(),
            unclaimed: HashMap::new(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            dht: None,
            ring: Ring::new(cfg.ring_prefix_cap),
            next_ring_sync: None,
            last_incarnation: 0,
            index_sessions: HashMap::new(),
            index_connecting: HashMap::new(),
            index_suspects: HashMap::new(),
            client_searches: ClientSearches::new(
                cfg.identity.trusted.clone(),
                cfg.index.retention,
                cfg.search_timeout,
            ),
            client_search_ids: HashMap::new(),
            next_search: 0,
            presence_seq: 0,
            presence_published: None,
            next_presence: None,
            online: true,
            relaying: None,
            calls: {
                // A stream of its own, so adding calls changed no other draw of the node's.
                let mut seed = cfg.seed;
                seed[0] ^= 0xCA;
                seed[31] ^= 0x11;
                let mut call_rng = Rng::from_seed_bytes(seed);
                calls::Calls::new(
                    cfg.identity.device.device_id(),
                    CallConfig::new(call_rng.bytes32(), cfg.wall_anchor),
                    cfg.call_paths.clone(),
                    now,
                )
            },
            cfg,
        };
        if node.cfg.role == RolePolicy::Force {
            node.promote(now);
        }
        let wall = node.wall(now);
        node.attacher.start(now, wall);
        node.pump(now);
        node
    }

    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(
            self.cfg.wall_anchor.0
                + now
                    .saturating_duration_since(self.cfg.clock_anchor)
                    .as_secs(),
        )
    }

    /// True when this node is a super node.
    pub fn is_super_node(&self) -> bool {
        self.supernode.is_some()
    }

    /// The super-node role, when held.
    pub fn super_node(&self) -> Option<&SuperNodeRole> {
        self.supernode.as_ref()
    }

    /// Super nodes this node is attached to.
    pub fn attached(&self) -> Vec<SocketAddr> {
        self.attacher
            .attached()
            .into_iter()
            .map(|(_, a)| a)
            .collect()
    }

    /// The last NAT report.
    pub fn nat(&self) -> Option<&NatReport> {
        self.nat_report.as_ref()
    }

    /// A one-line description of how this node is joined (for status output).
    pub fn describe_attach(&self, now: Instant) -> String {
        self.attacher.describe(now)
    }

    /// The host cache (to persist it).
    pub fn host_cache(&self) -> &HostCache {
        self.attacher.cache()
    }

    /// The endpoint, for application sessions.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// The runtime's measurement of how busy this node is: promotion needs spare capacity, and
    /// a super node that stays overloaded gives the role up.
    pub fn report_load(&mut self, now: Instant, load: Load) {
        self.load = Some(load);
        if load.cpu > self.cfg.overload {
            self.overloaded_since.get_or_insert(now);
        } else {
            self.overloaded_since = None;
        }
        self.check_overload(now);
        self.pump(now);
    }

    fn check_overload(&mut self, now: Instant) {
        let sustained = self
            .overloaded_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.overload_for);
        if sustained && self.supernode.is_some() && self.cfg.role == RolePolicy::Auto {
            self.overloaded_since = None;
            self.demote_inner(now);
        }
    }

    fn has_spare_capacity(&self) -> bool {
        let Some(load) = self.load else {
            return true;
        };
        let bandwidth_ok = self
            .cfg
            .uplink_bytes_per_sec
            .is_none_or(|cap| load.bytes_per_sec <= cap / 2);
        load.cpu <= self.cfg.max_promotion_load && bandwidth_ok
    }

    /// Refuse sessions with these revoked devices and close the open ones (the runtime fetches
    /// the authority's signed revocation list).
    pub fn revoke(&mut self, now: Instant, devices: Vec<natter_core::crypto::DeviceId>) {
        if let Some(dht) = self.dht.as_mut() {
            dht.revoke(devices.iter().copied());
        }
        self.endpoint.revoke(now, devices);
        self.pump(now);
    }

    /// Use a renewed certificate from now on.
    pub fn update_certificate(&mut self, certificate: natter_core::crypto::Certificate) {
        self.cfg.identity.certificate = certificate.clone();
        self.endpoint.update_certificate(certificate);
    }

    /// The addresses the driver must bind (UDP and TCP): see [`NodeConfig::bind_addresses`].
    pub fn bind_addresses(&self) -> Vec<SocketAddr> {
        self.cfg.bind_addresses()
    }

    /// The TCP addresses the driver must listen on: see [`NodeConfig::tcp_listen_addresses`].
    pub fn tcp_listen_addresses(&self) -> Vec<(SocketAddr, bool)> {
        self.cfg.tcp_listen_addresses()
    }

    fn new_stun_server(&self) -> StunServer {
        self.cfg.stun_server()
    }

    /// This host's addresses changed (a new network, a new lease): re-detect and re-attach.
    pub fn set_local_addresses(&mut self, now: Instant, addresses: Vec<SocketAddr>) {
        if addresses == self.cfg.local_addresses {
            return;
        }
        self.cfg.local_addresses = addresses;
        // What we knew about our NAT is stale: the next attachment probes it again.
        self.nat_report = None;
        self.reflexive = None;
        self.refresh_call_candidates(now);
        self.nat = None;
        self.next_nat_check = None;
        let links: Vec<StreamId> = self
            .attacher
            .attached()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for s in links {
            self.close_link(now, s);
        }
        let wall = self.wall(now);
        self.attacher.start(now, wall);
        self.pump(now);
    }

    /// Ask a super node for our reflexive address now rather than at the next UDP keep-alive
    /// (a call's direct path died: perhaps our NAT rebound us).
    fn recheck_reflexive(&mut self, now: Instant) {
        if self.next_udp_keepalive.is_some() {
            self.next_udp_keepalive = Some(now);
        }
    }

    /// Give the super-node role up now (operator request or overload): clients are told
    /// where to go instead.
    pub fn demote(&mut self, now: Instant) {
        self.demote_inner(now);
        self.pump(now);
    }

    fn demote_inner(&mut self, now: Instant) {
        if let Some(mut role) = self.supernode.take() {
            for r in role.handover() {
                let _ = self.endpoint.send_control(now, r.conn, &r.message);
            }
            // Tell the other super nodes this one leaves.
            while let Some((to, message)) = role.membership_mut().poll_output() {
                self.send_to_super_node(now, to, message);
            }
            self.stun = None;
            self.dht = None;
            self.stop_relaying(now);
            self.ring = Ring::new(self.cfg.ring_prefix_cap);
            self.presence_published = None;
            self.events.push_back(NodeEvent::Demoted);
        }
    }

    fn me(&self) -> HostEntry {
        HostEntry {
            addr: self.cfg.listen,
            static_key: self.cfg.identity.device.dh_public(),
        }
    }

    fn promote(&mut self, now: Instant) {
        if self.supernode.is_some() || self.cfg.role == RolePolicy::Forbid {
            return;
        }
        self.stun = Some(self.new_stun_server().with_software("natter"));
        let known = self.attacher.cache().share(64, self.wall(now));
        // Later than any earlier run's: a restarted super node outranks what was said of it.
        let incarnation = (self.wall(now).0 as u32).max(self.last_incarnation.saturating_add(1));
        self.last_incarnation = incarnation;
        let mut sn_cfg = SuperNodeConfig::new(self.me(), self.rng.bytes32(), incarnation);
        sn_cfg.max_clients = self.cfg.max_clients;
        sn_cfg.keepalive = self.cfg.keepalive;
        let mut role = SuperNodeRole::new(sn_cfg, &known, now);
        // Links this node already has to super nodes become membership links.
        for (stream, addr) in self.attacher.attached() {
            if let Some(conn) = self.stream_conn.get(&stream).copied() {
                if let Some(peer) = self.endpoint.peer(conn) {
                    let entry = HostEntry {
                        addr,
                        static_key: peer.certificate.dh_public,
                    };
                    let r = role.peer_connected(now, conn, entry);
                    let _ = self.endpoint.send_control(now, r.conn, &r.message);
                }
            }
        }
        self.supernode = Some(role);
        self.dht = Some(Dht::new(
            self.cfg.index.clone(),
            self.me(),
            self.cfg.identity.trusted.clone(),
        ));
        self.sync_ring(now);
        self.start_relaying();
        // Our own record now names us.
        self.presence_published = None;
        self.events.push_back(NodeEvent::Promoted);
    }

    /// Close an incoming stream that no session uses any more.
    fn close_if_unused(&mut self, stream: Option<StreamId>) {
        if let Some(stream) = stream {
            if !self.incoming.values().any(|s| *s == stream) {
                self.commands.push_back(StreamCommand::Close { stream });
            }
        }
    }

    fn close_link(&mut self, now: Instant, stream: StreamId) {
        if let Some(conn) = self.stream_conn.remove(&stream) {
            self.conn_stream.remove(&conn);
            self.endpoint.close(now, conn);
        }
        self.commands.push_back(StreamCommand::Close { stream });
    }

    fn note_udp(&mut self, to: SocketAddr) {
        if !self.udp_contacted.contains(&to.ip()) {
            if self.udp_contacted.len() >= 64 {
                self.udp_contacted.remove(0);
            }
            self.udp_contacted.push(to.ip());
        }
    }

    fn start_nat_probe(&mut self, now: Instant, server: SocketAddr) {
        let mut cfg =
            NatProbeConfig::new(server, self.cfg.local_addresses.clone(), self.rng.bytes32());
        cfg.contacted = self
            .udp_contacted
            .iter()
            .copied()
            .filter(|ip| *ip != server.ip())
            .collect();
        self.nat = Some(NatProbe::new(cfg, now));
        self.next_nat_check = Some(now + self.cfg.nat_recheck);
    }

    fn on_stun(&mut self, now: Instant, source: SocketAddr, local: SocketAddr, data: &[u8]) {
        let Ok(msg) = StunMessage::decode(data) else {
            self.stats.stun_unmatched += 1;
            return;
        };
        match msg.class {
            Class::Request => {
                if let Some(stun) = self.stun.as_mut() {
                    stun.handle_input(
                        now,
                        Input::Datagram {
                            source,
                            local,
                            data,
                        },
                    );
                    self.stats.stun_answered += 1;
                } else {
                    self.stats.stun_unmatched += 1;
                }
            }
            Class::Success | Class::Error => {
                if self.attacher.probe_answered(now, msg.transaction) {
                    // The first address a super node sees us at over UDP: a call placed or
                    // answered before the NAT report (about a second after attaching) or the
                    // first keep-alive needs it as its reflexive candidate.
                    if self.reflexive.is_none() {
                        self.reflexive = msg.mapped_address();
                        self.refresh_call_candidates(now);
                    }
                    return;
                }
                if self.keepalive_probe == Some(msg.transaction) {
                    self.keepalive_probe = None;
                    let mapped = msg.mapped_address();
                    if self.reflexive.is_some() && mapped != self.reflexive {
                        // The NAT gave us a new mapping (rebinding): re-detect it.
                        self.next_nat_check = Some(now);
                    }
                    self.reflexive = mapped.or(self.reflexive);
                    // A call offers the new address to its peer.
                    self.refresh_call_candidates(now);
                    return;
                }
                if let Some(probe) = self.nat.as_mut() {
                    probe.handle_input(
                        now,
                        Input::Datagram {
                            source,
                            local,
                            data,
                        },
                    );
                } else {
                    self.stats.stun_unmatched += 1;
                }
            }
            Class::Indication => {}
        }
    }

    fn run_attach_actions(&mut self, now: Instant, actions: Vec<AttachAction>) {
        for action in actions {
            match action {
                AttachAction::Probe { addr, transaction } => {
                    self.note_udp(addr);
                    self.transmits.push_back(Transmit {
                        destination: Destination::Udp(addr),
                        source: None,
                        payload: Bytes::from(probe_request(transaction)),
                        ttl: None,
                    });
                }
                AttachAction::OpenStream {
                    stream,
                    remote,
                    tls,
                } => self.commands.push_back(StreamCommand::Connect {
                    stream,
                    remote,
                    tls,
                }),
                AttachAction::StartSession { stream, static_key } => {
                    match self
                        .endpoint
                        .connect(now, Destination::Stream(stream), static_key)
                    {
                        Ok(conn) => {
                            self.stream_conn.insert(stream, conn);
                            self.conn_stream.insert(conn, stream);
                        }
                        Err(_) => self.attacher.stream_closed(now, stream),
                    }
                }
                AttachAction::SendAttach { stream } => {
                    if let Some(conn) = self.stream_conn.get(&stream).copied() {
                        let msg = Message::OverlayAttach {
                            nat: nat_code(self.nat_report.as_ref().map(|r| r.nat)),
                            local_addresses: self.cfg.local_addresses.clone(),
                        };
                        let _ = self.endpoint.send_control(now, conn, &msg);
                    }
                }
                AttachAction::RequestHostCache { stream } => {
                    if let Some(conn) = self.stream_conn.get(&stream).copied() {
                        let msg = Message::OverlayHostCache { entries: vec![] };
                        let _ = self.endpoint.send_control(now, conn, &msg);
                    }
                }
                AttachAction::CloseStream { stream } => self.close_link(now, stream),
            }
        }
    }

    fn on_attach_events(&mut self, now: Instant, events: Vec<AttachEvent>) {
        for e in events {
            if let AttachEvent::Attached { super_node, .. } = &e {
                // First attachment: learn what sits between us and the Internet, and keep the
                // UDP binding towards the super nodes alive from now on.
                if self.nat.is_none() && self.nat_report.is_none() {
                    self.start_nat_probe(now, *super_node);
                }
                if self.next_udp_keepalive.is_none() {
                    self.next_udp_keepalive = Some(now + self.cfg.udp_keepalive);
                }
                // As a super node, the link is a membership link too.
                if let Some(role) = self.supernode.as_mut() {
                    let link = self
                        .attacher
                        .attached()
                        .into_iter()
                        .find(|(_, a)| a == super_node);
                    if let Some(conn) = link.and_then(|(s, _)| self.stream_conn.get(&s).copied()) {
                        if let Some(peer) = self.endpoint.peer(conn) {
                            let entry = HostEntry {
                                addr: *super_node,
                                static_key: peer.certificate.dh_public,
                            };
                            let r = role.peer_connected(now, conn, entry);
                            let _ = self.endpoint.send_control(now, r.conn, &r.message);
                        }
                    }
                }
            }
            self.events.push_back(NodeEvent::Attach(e));
        }
    }

    fn on_endpoint_event(&mut self, now: Instant, e: EndpointEvent) {
        if self.relay_endpoint_event(now, &e) {
            return;
        }
        match &e {
            EndpointEvent::Connected {
                conn,
                remote: Path::Direct(Destination::Stream(stream)),
                initiator: false,
                ..
            } => {
                self.incoming.insert(*conn, *stream);
                self.unclaimed.remove(stream);
            }
            EndpointEvent::PathChanged { conn, remote } if self.incoming.contains_key(conn) => {
                match remote {
                    Path::Direct(Destination::Stream(stream)) => {
                        let old = self.incoming.insert(*conn, *stream);
                        self.close_if_unused(old);
                    }
                    _ => {
                        let old = self.incoming.remove(conn);
                        self.close_if_unused(old);
                    }
                }
            }
            EndpointEvent::Closed { conn, .. } | EndpointEvent::ConnectFailed { conn, .. } => {
                // A client that left, went silent (idle timeout) or was refused: its stream
                // goes too, or silent clients would hold sockets and stream slots forever.
                let old = self.incoming.remove(conn);
                self.close_if_unused(old);
            }
            _ => {}
        }
        if self.on_call_endpoint_event(now, &e) {
            return;
        }
        {
            match e {
                EndpointEvent::Connected { conn, ref peer, .. }
                    if self.conn_stream.contains_key(&conn) =>
                {
                    let stream = self.conn_stream[&conn];
                    self.attacher
                        .session_established(now, stream, peer.certificate.dh_public);
                }
                EndpointEvent::ConnectFailed { conn, .. } | EndpointEvent::Closed { conn, .. }
                    if self.conn_stream.contains_key(&conn) =>
                {
                    let stream = self.conn_stream.remove(&conn).expect("checked");
                    self.stream_conn.remove(&stream);
                    self.attacher.stream_closed(now, stream);
                    self.commands.push_back(StreamCommand::Close { stream });
                    if let Some(role) = self.supernode.as_mut() {
                        role.session_closed(conn);
                    }
                }
                EndpointEvent::Closed { conn, .. } => {
                    self.index_sessions.retain(|_, c| *c != conn);
                    if let Some(ev) = self.supernode.as_mut().and_then(|r| r.session_closed(conn)) {
                        self.events.push_back(NodeEvent::SuperNode(ev));
                    }
                    self.events.push_back(NodeEvent::Session(e));
                }
                EndpointEvent::StreamBroken { stream } => {
                    self.commands.push_back(StreamCommand::Close { stream });
                }
                EndpointEvent::Control { conn, ref message } => {
                    self.on_control(now, conn, message);
                }
                EndpointEvent::Connected { conn, ref peer, .. }
                    if self.index_connecting.contains_key(&conn) =>
                {
                    let _ = peer;
                    self.index_connected(now, conn);
                }
                EndpointEvent::ConnectFailed { conn, .. }
                    if self.index_connecting.contains_key(&conn) =>
                {
                    self.index_connect_failed(now, conn);
                }
                other => self.events.push_back(NodeEvent::Session(other)),
            }
        }
    }

    fn on_control(&mut self, now: Instant, conn: ConnId, raw: &[u8]) {
        let Ok(msg) = Message::decode(raw) else {
            self.stats.overlay_dropped += 1;
            return;
        };
        if self.on_call_message(now, conn, &msg) || self.on_relay_message(now, conn, &msg) {
            return;
        }
        let wall = self.wall(now);
        if let Some(stream) = self.conn_stream.get(&conn).copied() {
            match &msg {
                Message::OverlayAttachAck {
                    accepted,
                    reflexive,
                    super_nodes,
                    keepalive_secs,
                } => {
                    if *accepted && *keepalive_secs > 0 {
                        // The super node sends its keep-alives this often: three of them
                        // missed means the link is dead (at most our own idle timeout); ours
                        // go out at least as often as it asks.
                        let theirs = Duration::from_secs(u64::from(*keepalive_secs));
                        let keepalive = self.cfg.keepalive.min(theirs);
                        let idle = (theirs * 3).min(self.cfg.idle_timeout);
                        self.endpoint.set_session_timing(conn, keepalive, idle);
                    }
                    self.attacher.attach_answered(
                        now,
                        wall,
                        stream,
                        *accepted,
                        *reflexive,
                        super_nodes,
                    );
                    return;
                }
                Message::OverlayHostCache { entries } if !entries.is_empty() => {
                    self.attacher.host_cache_received(wall, entries);
                    return;
                }
                Message::OverlayHandover { entries } => {
                    self.attacher.handover(now, wall, stream, entries);
                    return;
                }
                Message::OverlayMembership { entries } => {
                    self.attacher.host_cache_received(wall, entries);
                }
                _ => {}
            }
        }
        if let Message::OverlayStunForward {
            client,
            transaction,
        } = &msg
        {
            let from = self
                .supernode
                .as_ref()
                .and_then(|r| r.peer_links().into_iter().find(|(c, _)| *c == conn))
                .map(|(_, a)| a);
            match (self.stun.as_mut(), from) {
                (Some(stun), Some(forwarded_by)) => {
                    stun.answer_for_partner(*client, TransactionId(*transaction), forwarded_by)
                }
                _ => self.stats.overlay_dropped += 1,
            }
            return;
        }
        if self.on_membership_message(now, conn, &msg) {
            return;
        }
        if self.on_index_message(now, conn, &msg) {
            return;
        }
        let Some(role) = self.supernode.as_mut() else {
            self.stats.overlay_dropped += 1;
            return;
        };
        let Some(peer) = self.endpoint.peer(conn).cloned() else {
            return;
        };
        // Where the client is seen from: its UDP address, or the far end of the stream its
        // session runs over (clients behind a UDP-blocking firewall attach over TCP).
        // (Every stream is announced with its far end before data arrives on it, so the
        // fallback is never used for a live session.)
        let remote = match self.endpoint.remote(conn) {
            Some(Path::Direct(Destination::Udp(a))) => Some(*a),
            Some(Path::Direct(Destination::Stream(s))) => self.stream_remote.get(s).copied(),
            Some(Path::Relayed { .. }) => None,
            None => None,
        }
        .unwrap_or(self.cfg.listen);
        let (replies, events) = role.handle_message(
            now,
            conn,
            &peer.certificate.user,
            peer.certificate.device,
            remote,
            &msg,
        );
        for r in replies {
            let _ = self.endpoint.send_control(now, r.conn, &r.message);
        }
        self.events
            .extend(events.into_iter().map(NodeEvent::SuperNode));
        if matches!(msg, Message::OverlayMembership { .. }) {
            self.sync_ring(now);
        }
    }

    fn check_promotion(&mut self, now: Instant) -> bool {
        if self.cfg.role != RolePolicy::Auto || self.supernode.is_some() {
            return false;
        }
        let open = self
            .nat_report
            .as_ref()
            .is_some_and(|r| r.nat == NatType::Open);
        if open
            && self.has_spare_capacity()
            && now.saturating_duration_since(self.started) >= self.cfg.promotion_uptime
        {
            self.promote(now);
            return true;
        }
        false
    }

    /// Drain every sub-machine and route their outputs, until none produces anything more.
    fn pump(&mut self, now: Instant) {
        // Each pass can only be caused by the previous one's outputs; 64 passes is far more
        // than any real chain (attach answer -> NAT probe -> promotion -> membership).
        for _ in 0..64 {
            let mut progressed = false;
            let actions = self.attacher.drain_actions();
            if !actions.is_empty() {
                progressed = true;
                self.run_attach_actions(now, actions);
            }
            let events = self.attacher.drain_events();
            if !events.is_empty() {
                progressed = true;
                self.on_attach_events(now, events);
            }
            while let Some(e) = self.endpoint.poll_event() {
                progressed = true;
                self.on_endpoint_event(now, e);
            }
            if let Some(probe) = self.nat.as_mut() {
                while let Some(t) = probe.poll_transmit() {
                    self.transmits.push_back(t);
                }
                let mut reports = Vec::new();
                while let Some(e) = probe.poll_event() {
                    if let NatEvent::Classified(report) = e {
                        reports.push(report);
                    }
                    // NatEvent::Failed: the super node offers no RFC 5780 tests; nothing learnt.
                }
                if probe.is_done() {
                    self.nat = None;
                }
                for report in reports {
                    progressed = true;
                    self.nat_report = Some(report.clone());
                    self.events.push_back(NodeEvent::Nat(report));
                    self.refresh_call_candidates(now);
                    // A re-check demotes a super node that is no longer open.
                    if self.supernode.is_some()
                        && self.cfg.role == RolePolicy::Auto
                        && self
                            .nat_report
                            .as_ref()
                            .is_some_and(|r| r.nat != NatType::Open)
                    {
                        self.demote_inner(now);
                    }
                }
            }
            if let (Some(stun), Some(role)) = (self.stun.as_mut(), self.supernode.as_ref()) {
                // A single-address super node pairs with a peer super node on another IP.
                if stun.other().is_none() {
                    let links = role.peer_links();
                    let want = links
                        .iter()
                        .map(|(_, a)| *a)
                        .find(|a| a.ip() != self.cfg.listen.ip());
                    if stun.partner() != want {
                        stun.set_partner(want);
                    }
                    while let Some(f) = stun.poll_forward() {
                        if let Some((conn, _)) = links.iter().find(|(_, a)| *a == f.partner) {
                            let msg = Message::OverlayStunForward {
                                client: f.client,
                                transaction: f.transaction.0,
                            };
                            let _ = self.endpoint.send_control(now, *conn, &msg);
                        }
                    }
                }
            }
            if let Some(stun) = self.stun.as_mut() {
                while let Some(t) = stun.poll_transmit() {
                    self.transmits.push_back(t);
                }
            }
            if self.check_promotion(now) {
                progressed = true;
            }
            if self.drain_membership(now) {
                progressed = true;
            }
            if self.drain_index(now) {
                progressed = true;
            }
            if self.drain_calls(now) {
                progressed = true;
            }
            while let Some(t) = self.endpoint.poll_transmit() {
                self.transmits.push_back(t);
            }
            if !progressed {
                break;
            }
        }
    }
}

fn probe_request(transaction: TransactionId) -> Vec<u8> {
    StunMessage::binding_request(transaction).encode()
}

impl Machine for Node {
    type Event = NodeEvent;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                source,
                local,
                data,
            } => match classify(data) {
                WireClass::Stun => self.on_stun(now, source, local, data),
                // A frame for our relay is forwarded at once, with no pump: nothing else moved.
                WireClass::Relay { .. } if self.relay_datagram(now, source, data) => return,
                _ => self.endpoint.handle_input(now, input),
            },
            Input::StreamOpened { stream, remote } => {
                self.stream_remote.insert(stream, remote);
                if self.calls.owns_stream(stream) {
                    self.endpoint.handle_input(now, input);
                    self.call_stream_opened(now, stream);
                    self.pump(now);
                    return;
                } else if stream.is_local() {
                    self.attacher.stream_opened(now, stream);
                } else {
                    self.unclaimed
                        .insert(stream, now + self.cfg.stream_claim_timeout);
                }
                self.endpoint.handle_input(now, input);
            }
            Input::Stream { .. } => self.endpoint.handle_input(now, input),
            Input::StreamClosed { stream } => {
                self.stream_remote.remove(&stream);
                self.unclaimed.remove(&stream);
                self.endpoint.handle_input(now, input);
                // A super node whose link just broke may be gone: keep index traffic off it
                // for a while.
                let lost = self
                    .attacher
                    .attached()
                    .into_iter()
                    .find(|(s, _)| *s == stream)
                    .map(|(_, a)| a);
                if let (Some(addr), true) = (lost, self.dht.is_some()) {
                    self.super_node_unreachable(now, addr);
                }
                if let Some(conn) = self.stream_conn.remove(&stream) {
                    self.conn_stream.remove(&conn);
                    self.endpoint.close(now, conn);
                    if let Some(role) = self.supernode.as_mut() {
                        role.session_closed(conn);
                    }
                }
                // Sessions others ran over this stream end with it (a client that went away
                // is detached now, not after the idle timeout).
                let orphans: Vec<ConnId> = self
                    .incoming
                    .iter()
                    .filter(|(_, s)| **s == stream)
                    .map(|(c, _)| *c)
                    .collect();
                for conn in orphans {
                    self.incoming.remove(&conn);
                    self.endpoint.close(now, conn);
                }
                self.attacher.stream_closed(now, stream);
                self.call_stream_closed(now, stream);
            }
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let wall = self.wall(now);
        // Accepted streams nobody ran a session over: close them (in a fixed order).
        let mut unclaimed: Vec<StreamId> = self
            .unclaimed
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(s, _)| *s)
            .collect();
        unclaimed.sort();
        for stream in unclaimed {
            self.unclaimed.remove(&stream);
            self.stats.streams_unclaimed += 1;
            self.commands.push_back(StreamCommand::Close { stream });
        }
        self.endpoint.handle_timeout(now);
        self.attacher.handle_timeout(now, wall);
        if let Some(p) = self.nat.as_mut() {
            p.handle_timeout(now);
        }
        if self.next_nat_check.is_some_and(|t| t <= now) && self.nat.is_none() {
            if let Some(sn) = self.attached().first().copied() {
                self.start_nat_probe(now, sn);
            } else {
                // Not attached right now: the next attachment starts a probe anyway.
                self.next_nat_check = None;
                self.nat_report = None;
            }
        }
        if let Some(role) = self.supernode.as_mut() {
            role.handle_timeout(now);
        }
        self.check_overload(now);
        self.index_timeout(now);
        self.calls_timeout(now);
        self.relay_timeout(now);
        if self.next_udp_keepalive.is_some_and(|t| t <= now) {
            self.next_udp_keepalive = Some(now + self.cfg.udp_keepalive);
            // No UDP binding to keep when UDP is blocked.
            let target = (!self.attacher.udp_blocked())
                .then(|| self.attached().first().copied())
                .flatten();
            if let Some(sn) = target {
                let mut id = [0u8; 12];
                self.rng.fill(&mut id);
                let transaction = TransactionId(id);
                self.keepalive_probe = Some(transaction);
                self.transmits.push_back(Transmit {
                    destination: Destination::Udp(sn),
                    source: None,
                    payload: Bytes::from(probe_request(transaction)),
                    ttl: None,
                });
            }
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Only while promotion is actually possible: without spare capacity the deadline would
        // stay in the past and the timer would spin (a new load report re-evaluates it).
        let promotion = (self.cfg.role == RolePolicy::Auto
            && self.supernode.is_none()
            && self.has_spare_capacity()
            && self
                .nat_report
                .as_ref()
                .is_some_and(|r| r.nat == NatType::Open))
        .then_some(self.started + self.cfg.promotion_uptime);
        [
            self.endpoint.poll_timeout(),
            self.attacher.poll_timeout(),
            self.nat.as_ref().and_then(|p| p.poll_timeout()),
            self.next_nat_check,
            self.next_udp_keepalive,
            self.overloaded_since
                .filter(|_| self.supernode.is_some())
                .map(|t| t + self.cfg.overload_for),
            self.supernode.as_ref().map(|r| r.poll_timeout()),
            promotion,
            self.dht.as_ref().and_then(|d| d.poll_timeout()),
            self.client_searches.poll_timeout(),
            self.next_presence,
            self.next_ring_sync,
            self.unclaimed.values().min().copied(),
            self.calls.poll_timeout(),
            self.relaying.as_ref().and_then(|r| r.relay.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_stream_command(&mut self) -> Option<StreamCommand> {
        let command = self.commands.pop_front();
        if let Some(StreamCommand::Close { stream }) = &command {
            self.stream_remote.remove(stream);
        }
        command
    }
}
