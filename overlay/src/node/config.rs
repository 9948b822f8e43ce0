//! A node's configuration: identity, addresses, role policy and the settings of every part.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::call::PathConfig;
use natter_core::crypto::{LocalIdentity, UnixTime};
use natter_core::overlay::{AttachConfig, HostCache};
use natter_core::rng::Rng;

use crate::dht::DhtConfig;
use crate::stun::StunServer;

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

/// Configuration of a [`Node`](super::Node).
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
    /// A second IP and port for RFC 5780 tests, when this host has one. Port 0 means the
    /// listen port + 1 (so a node listening on port 0 can have one: it follows the port the
    /// driver got).
    pub stun_alternate: Option<SocketAddr>,
    /// Super-node policy.
    pub role: RolePolicy,
    /// Known super nodes (loaded from disk, seeded from the network file).
    pub host_cache: HostCache,
    /// Attach settings, among them the fallback port pair super nodes listen on (as a super
    /// node, this node listens there too: [`NodeConfig::tcp_listen_addresses`]).
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
    /// The application acknowledges every chat message it keeps
    /// ([`super::Node::chat_stored`]); only then does the node send the sender its receipt and
    /// let a mailbox drop it, so that nothing is reported delivered that the application
    /// failed to keep. `false` (the default): the node answers as soon as a message opens.
    pub chat_app_receipts: bool,
    /// Mailboxes an earlier run of this super node kept on disk ([`super::Node::save_mailboxes`]):
    /// taken back when the node takes the super-node role.
    pub mailboxes: Option<Vec<u8>>,
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
            chat_app_receipts: false,
            mailboxes: None,
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
    pub(crate) fn stun_server(&self) -> StunServer {
        let listen = self.listen;
        self.stun_alternate
            .map(|alt| match alt.port() {
                0 => SocketAddr::new(alt.ip(), listen.port().wrapping_add(1)),
                _ => alt,
            })
            .and_then(|alt| StunServer::new(listen, Some(alt)).ok())
            .unwrap_or_else(|| StunServer::single_address(listen, listen.port().wrapping_add(1)))
    }
}
