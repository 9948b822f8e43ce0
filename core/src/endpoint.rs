//! The peer endpoint: every Noise session a device has, over UDP and streams, as one sans-IO
//! [`Machine`].
//!
//! An [`Endpoint`] owns one local port's worth of sessions. It
//! * answers and initiates handshakes (XX, or IK when the peer's static key is known),
//!   retransmitting with exponential back-off under loss;
//! * seals and opens data envelopes, on the control channel (keep-alive, ping/pong, close,
//!   application data) and the media channel;
//! * keeps paths alive (a keep-alive after [`EndpointConfig::keepalive_interval`] of silence)
//!   and declares a session dead after three silent intervals;
//! * follows a peer whose address changes (an authenticated packet from a new address moves the
//!   session there, which is how a call survives a NAT rebinding or a switch to a relay);
//! * drops everything else silently with a counter ([`EndpointStats`]): malformed packets,
//!   unknown sessions, replays, forgeries. Nothing a peer sends can make it panic, grow without
//!   bound, or stop serving other peers.
//!
//! Later sub-machines (login client, SN link, search, call, chat) sit on top of the sessions
//! this machine provides.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::crypto::UnixTime;
use crate::crypto::{
    Established, Handshake, HandshakeError, InitMessage, LocalIdentity, PeerInfo, Step,
};
use crate::crypto::{OpenError, SealError, Session};
use crate::rng::Rng;
use crate::sansio::{Destination, Input, Machine, StreamId, Transmit};
use crate::wire::frame::{self, FrameDecoder};
use crate::wire::message::{CloseReason, Message, MessageType, MAX_APP_DATA};
use crate::wire::packet::{Channel, Packet, Pattern, SessionIndex, DATA_HEADER_LEN, TAG_LEN};
use crate::wire::relay;
use crate::wire::{classify, Class, MAX_DATAGRAM};

/// A handle on one session, stable for its lifetime (our session index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Where a session's packets go: straight to the peer, or through a super node's relay.
///
/// A session moves between paths without renegotiation (the receiver index, not the address,
/// finds the session): that is how a call switches from a relay to a direct path and back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to the peer: a UDP address or a stream.
    Direct {
        /// The peer's UDP address, or the stream to it.
        to: Destination,
        /// The local UDP socket the path leaves from and arrives on: `None` for the driver's
        /// default sockets, or one the machine opened on demand
        /// ([`crate::sansio::StreamCommand::BindUdp`], announced with
        /// [`Endpoint::add_socket`]). The same peer address from two sockets is two paths:
        /// each crosses the NATs as a flow of its own.
        via: Option<SocketAddr>,
    },
    /// Through a relay (see [`crate::wire::relay`]): frames go to `relay` (the transport of
    /// our session with the super node) on `channel`.
    Relayed {
        /// Where the relay is: its UDP address or our stream to it.
        relay: Destination,
        /// The channel the relay allocated.
        channel: u32,
    },
}

impl Path {
    /// The transport packets on this path leave by.
    pub fn transport(&self) -> &Destination {
        match self {
            Path::Direct { to: d, .. } | Path::Relayed { relay: d, .. } => d,
        }
    }

    /// Straight to the peer's UDP address `to`, from the default socket.
    pub fn udp(to: SocketAddr) -> Path {
        Path::Direct {
            to: Destination::Udp(to),
            via: None,
        }
    }

    /// Straight to the peer's UDP address `to`, from the local socket `via` (`None`: the
    /// default one).
    pub fn udp_via(via: Option<SocketAddr>, to: SocketAddr) -> Path {
        Path::Direct {
            to: Destination::Udp(to),
            via,
        }
    }

    /// Straight to the peer on `stream`.
    pub fn stream(stream: StreamId) -> Path {
        Path::Direct {
            to: Destination::Stream(stream),
            via: None,
        }
    }

    /// The local socket a direct UDP path leaves from, when it is one opened on demand.
    pub fn via(&self) -> Option<SocketAddr> {
        match self {
            Path::Direct { via, .. } => *via,
            Path::Relayed { .. } => None,
        }
    }

    /// Through a relay.
    pub fn is_relayed(&self) -> bool {
        matches!(self, Path::Relayed { .. })
    }

    /// The peer's UDP address, for a direct UDP path.
    pub fn peer_udp(&self) -> Option<SocketAddr> {
        match self {
            Path::Direct {
                to: Destination::Udp(a),
                ..
            } => Some(*a),
            _ => None,
        }
    }
}

impl From<Destination> for Path {
    fn from(d: Destination) -> Self {
        Path::Direct { to: d, via: None }
    }
}

/// Configuration of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Our identity and trust anchors.
    pub identity: LocalIdentity,
    /// Seed for every random choice (session indices, ephemeral keys).
    pub seed: [u8; 32],
    /// Wall-clock time at `clock_anchor`, so certificates can be checked without reading a
    /// clock: wall time at `now` is `wall_anchor + (now - clock_anchor)`.
    pub wall_anchor: UnixTime,
    /// The instant matching `wall_anchor`.
    pub clock_anchor: Instant,
    /// Send a keep-alive after this long without sending (20 s, as the original network did).
    pub keepalive_interval: Duration,
    /// A session with no packet received for this long is dead (default: three intervals).
    pub idle_timeout: Duration,
    /// First handshake retransmission timeout; doubles on every retry up to 2 s.
    pub handshake_rto: Duration,
    /// Handshake attempts before giving up.
    pub handshake_attempts: u32,
    /// At most this many half-open responder handshakes at once (flood protection).
    pub max_pending_responses: usize,
    /// At most this many established sessions.
    pub max_sessions: usize,
    /// At most this many streams at once (a super node needs one per TCP client).
    pub max_streams: usize,
}

impl EndpointConfig {
    /// Defaults around an identity: 20 s keep-alive, 60 s idle timeout, handshake
    /// retransmission from 250 ms doubling to at most 2 s, 10 attempts (about 16 s in all: at
    /// 30 % loss each way a connect then fails 0.12 % of the time, at 20 % 0.004 %).
    pub fn new(identity: LocalIdentity, seed: [u8; 32], wall: UnixTime, now: Instant) -> Self {
        Self {
            identity,
            seed,
            wall_anchor: wall,
            clock_anchor: now,
            keepalive_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            handshake_rto: Duration::from_millis(250),
            handshake_attempts: 10,
            max_pending_responses: 1024,
            max_sessions: 4096,
            max_streams: 4096,
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// No answer after every retransmission.
    #[error("handshake timed out")]
    Timeout,
    /// The peer answered but the handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// We closed it.
    Local,
    /// The peer closed it.
    Remote(CloseReason),
    /// Nothing heard from the peer for the idle timeout.
    Timeout,
    /// The session's counters ran out.
    Exhausted,
    /// The peer restarted and no longer knows the session: it answered our data with a
    /// session reset carrying the token it gave in the handshake.
    Reset,
    /// The peer's certificate expired and no renewed one came on the session.
    CertificateExpired,
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No established session with that id.
    #[error("unknown or closed connection")]
    UnknownConnection,
    /// The payload does not fit in one datagram.
    #[error("payload too large: {0} > {max}", max = MAX_APP_DATA)]
    TooLarge(usize),
    /// The session must be re-established.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// What the endpoint tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A session is established.
    Connected {
        /// Its handle.
        conn: ConnId,
        /// The verified peer.
        peer: Box<PeerInfo>,
        /// Where the peer is.
        remote: Path,
        /// True when we initiated it.
        initiator: bool,
    },
    /// A connection we initiated failed.
    ConnectFailed {
        /// Its handle.
        conn: ConnId,
        /// Why.
        error: ConnectError,
    },
    /// Application data arrived on the control channel.
    Data {
        /// From which session.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// A control message for a layer above the session (overlay, index, calls, chat...):
    /// the encoded [`Message`], already checked to decode.
    Control {
        /// From which session.
        conn: ConnId,
        /// The encoded message (decode with [`Message::decode`]).
        message: Bytes,
    },
    /// A media frame arrived.
    Media {
        /// From which session.
        conn: ConnId,
        /// The path it came by (the session's path, unless it just moved).
        path: Path,
        /// The bytes.
        data: Bytes,
    },
    /// A ping we sent was answered.
    Pong {
        /// Which session.
        conn: ConnId,
        /// Measured round-trip time.
        rtt: Duration,
    },
    /// A relay frame addressed to this node's relay arrived (only while relaying is on:
    /// [`Endpoint::set_relaying`]); the relay decides whether and where to forward it.
    RelayFrame {
        /// Where it came from.
        from: Destination,
        /// The whole frame, relay header included.
        frame: Bytes,
    },
    /// The peer probed a path of this session (and was answered there): a path the peer can
    /// reach us by, possibly one we did not know (a peer-reflexive address).
    ProbeReceived {
        /// Which session.
        conn: ConnId,
        /// The path the probe came by.
        path: Path,
    },
    /// A path probe ([`Endpoint::probe`]) was answered: the path works both ways.
    ProbeAnswered {
        /// Which session.
        conn: ConnId,
        /// The probe's id.
        id: u32,
        /// The path the answer came by.
        path: Path,
        /// Round-trip time of the probe.
        rtt: Duration,
        /// Our UDP address as the peer saw the probe arrive (a peer-reflexive candidate).
        observed: Option<SocketAddr>,
    },
    /// The peer's address changed (roaming, NAT rebinding, relay switch).
    PathChanged {
        /// Which session.
        conn: ConnId,
        /// The new address.
        remote: Path,
    },
    /// A stream's framing broke (the peer sent garbage): the driver must close it.
    StreamBroken {
        /// Which stream.
        stream: StreamId,
    },
    /// A session ended.
    Closed {
        /// Which session.
        conn: ConnId,
        /// Why.
        cause: CloseCause,
    },
}

/// Silent drops and other counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams and frames received.
    pub packets_in: u64,
    /// Datagrams and frames sent.
    pub packets_out: u64,
    /// Dropped: not a Natter packet (unknown first byte).
    pub dropped_not_natter: u64,
    /// STUN messages seen (handled by the overlay layer, not here).
    pub stun_seen: u64,
    /// Dropped: could not be decoded.
    pub dropped_malformed: u64,
    /// Dropped: no session or handshake with that index.
    pub dropped_unknown_session: u64,
    /// Dropped: replayed or too old.
    pub dropped_replay: u64,
    /// Dropped: failed authentication or unknown key generation.
    pub dropped_auth: u64,
    /// Dropped: a control message this build does not implement or could not parse.
    pub dropped_message: u64,
    /// Handshakes that failed (bad certificate, forged message, low-order key, ...).
    pub handshake_failures: u64,
    /// Handshake initiations refused because too many were half open.
    pub handshake_flood_drops: u64,
    /// Replayed IK initiations refused.
    pub handshake_replays: u64,
    /// Handshakes refused because the peer's device is revoked.
    pub revoked_peers: u64,
    /// Data packets buffered while their handshake completed.
    pub early_data_buffered: u64,
    /// Stream connections closed because their framing broke.
    pub streams_failed: u64,
    /// Packets that arrived through a relay.
    pub relayed_in: u64,
    /// Path probes answered.
    pub probes_answered: u64,
    /// Session resets sent (data for a session this endpoint does not know).
    pub resets_sent: u64,
    /// Session resets accepted (a peer that restarted: the session closed at once).
    pub resets_accepted: u64,
    /// Dropped: session resets with a wrong token or for no session.
    pub dropped_reset: u64,
    /// Path challenges sent (a session's newer packets came from another address).
    pub path_challenges_sent: u64,
    /// Sessions moved to a validated new address.
    pub paths_validated: u64,
    /// Moves refused or abandoned: the new address never answered its challenges, or another
    /// device's session holds it.
    pub paths_refused: u64,
    /// Challenges not sent because they would exceed three times the bytes received from the
    /// unvalidated address (anti-amplification).
    pub path_challenges_limited: u64,
    /// Renewed certificates peers presented on their sessions.
    pub certificates_updated: u64,
    /// Renewed certificates refused (invalid, or another user, device or key).
    pub certificates_refused: u64,
    /// Sessions closed because the peer's certificate expired.
    pub certificates_expired: u64,
}

const EARLY_DATA_LIMIT: usize = 8;
/// A renewed certificate is sent again with this many keep-alives after the first copy.
const CERTIFICATE_RESENDS: u8 = 2;
/// A session outlives its peer's certificate by this much at most (clocks differ).
const CERTIFICATE_SKEW: Duration = Duration::from_secs(60);
/// At most this many session resets a second: a peer's stale session needs one, and a flood of
/// data for unknown sessions must not turn the endpoint into a reflector.
const RESETS_PER_SECOND: u32 = 64;
/// A path challenge unanswered for this long is sent again (while the amplification budget
/// allows), at most [`PATH_CHALLENGES`] times in all.
const PATH_CHALLENGE_RTO: Duration = Duration::from_millis(250);
/// Challenges sent to one unvalidated path before the move is abandoned.
const PATH_CHALLENGES: u32 = 4;
/// An unvalidated path receives at most this many times the bytes that came from it.
const AMPLIFICATION_LIMIT: usize = 3;
/// Pings and path probes awaiting an answer, per session.
const MAX_OUTSTANDING_PINGS: usize = 64;
const MAX_HANDSHAKE_RTO: Duration = Duration::from_secs(2);
const RESPONDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Timers are coalesced onto ticks of this length: with N sessions each wanting a keep-alive
/// every 20 s at its own moment, the endpoint scans its sessions at most 20 times a second
/// instead of N/20 times (an O(N) scan each: quadratic for a super node).
const TIMER_TICK: Duration = Duration::from_millis(50);
/// IK initiations older than this (by their wall-clock timestamp) are refused as replays.
const IK_MAX_AGE_SECS: u64 = 300;
const IK_SEEN_LIMIT: usize = 65_536;
/// Zero padding in an XX message 1 so it is at least as large as the answer it triggers: the
/// responder is no reflection amplifier (message 2 carries a certificate, about 322 bytes).
pub const XX_INIT_PADDING: usize = 300;
/// IK attempts whose Noise state is kept for a late answer.
const IK_ATTEMPTS_KEPT: usize = 4;
/// Half-open responder handshakes allowed per source address.
const MAX_PENDING_PER_SOURCE: usize = 16;

struct Initiation {
    /// The Noise states of the most recent attempts, newest last. An IK retry is a fresh
    /// initiation, and the answer to an earlier one may still arrive (the round trip can exceed
    /// the retransmission timeout), so each answer is tried against every state kept.
    handshakes: Vec<Handshake>,
    dest: Path,
    peer_static: Option<[u8; 32]>,
    packet: Bytes,
    attempts: u32,
    next_retry: Instant,
}

struct Responding {
    handshake: Handshake,
    /// The initiator's ephemeral key: a retransmitted message 1 is answered from this entry.
    ephemeral: [u8; 32],
    reply: Bytes,
    source: Path,
    expires: Instant,
    early: Vec<(Path, Vec<u8>)>,
}

struct Peer {
    session: Session,
    info: PeerInfo,
    dest: Path,
    /// Responder side of IK: the session exists but the initiator has not yet proved it holds
    /// it (by sending a packet on it). Until then it is not reported, not used, and expires
    /// silently: an IK answer may be lost and retried, and a replayed message 1 produces such
    /// a session too.
    tentative: Option<Instant>,
    last_sent: Instant,
    last_received: Instant,
    /// Initiator of XX: the final message is repeated until the responder is heard from.
    unconfirmed_final: Option<(Bytes, Instant, u32)>,
    /// Responder of XX: the final message accepted, so only an identical copy (a
    /// retransmission) is confirmed again.
    accepted_final: Option<Bytes>,
    /// The initiator's session index (to retire an IK session superseded by a retry).
    remote_index: SessionIndex,
    pings: VecDeque<(u32, Instant)>,
    /// This session's keep-alive interval and idle timeout, when they differ from the
    /// configuration's ([`Endpoint::set_session_timing`]).
    timing: Option<(Duration, Duration)>,
    /// A newer packet came from another UDP path: the session moves there once the peer
    /// answers a challenge sent there.
    validating: Option<Validation>,
    /// Our renewed certificate goes out this many more times, a keep-alive interval apart
    /// (it is not acknowledged: one lost copy must not end the session at the old expiry),
    /// next at this time.
    certificate_resends: (u8, Instant),
}

/// When the peer's certificate of a session runs out (with the clock-skew allowance).
fn certificate_deadline(cfg: &EndpointConfig, p: &Peer) -> Instant {
    let until = p
        .info
        .certificate
        .not_after
        .0
        .saturating_add(CERTIFICATE_SKEW.as_secs())
        .saturating_sub(cfg.wall_anchor.0);
    cfg.clock_anchor + Duration::from_secs(until.min(u64::from(u32::MAX)))
}

/// Path validation in progress (as QUIC's PATH_CHALLENGE): an authenticated packet from a new
/// address proves the peer sent it, not that the peer is there (the source may be spoofed).
struct Validation {
    path: Path,
    token: [u8; 8],
    /// Bytes received from `path` and sent to it: sent stays within
    /// [`AMPLIFICATION_LIMIT`] times received.
    received: usize,
    sent: usize,
    challenges: u32,
    /// When the challenge is sent again; `None` while the budget forbids it.
    retry_at: Option<Instant>,
}

impl Peer {
    fn keepalive(&self, cfg: &EndpointConfig) -> Duration {
        self.timing.map_or(cfg.keepalive_interval, |(k, _)| k)
    }

    fn idle_timeout(&self, cfg: &EndpointConfig) -> Duration {
        self.timing.map_or(cfg.idle_timeout, |(_, i)| i)
    }
}

/// The peer endpoint machine. See the [module documentation](self).
pub struct Endpoint {
    cfg: EndpointConfig,
    /// Frames for a relay are handed up instead of dropped.
    relaying: bool,
    /// UDP sockets opened on demand ([`Endpoint::add_socket`]): what arrives on them comes by
    /// a path `via` them.
    sockets: Vec<SocketAddr>,
    rng: Rng,
    initiations: BTreeMap<SessionIndex, Initiation>,
    responding: BTreeMap<SessionIndex, Responding>,
    peers: BTreeMap<SessionIndex, Peer>,
    /// Our sessions by the peer's index (a reset names the peer's index), so a reset costs
    /// one lookup, not a scan of every session. It may still list sessions gone since: a
    /// lookup checks them, and it is rebuilt when it outgrows `peers`.
    by_remote: BTreeMap<SessionIndex, Vec<SessionIndex>>,
    /// Highest IK timestamp accepted per initiator static key (IK replay protection).
    ik_seen: BTreeMap<[u8; 32], u64>,
    last_ik_timestamp: u64,
    streams: BTreeMap<StreamId, FrameDecoder>,
    broken_streams: std::collections::BTreeSet<StreamId>,
    /// Devices the login authority revoked: no session with them.
    revoked: std::collections::BTreeSet<crate::crypto::DeviceId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EndpointEvent>,
    stats: EndpointStats,
    scratch: Vec<u8>,
    next_ping: u32,
    /// Resets sent in the current one-second window, and when it began.
    resets: (Instant, u32),
    /// The earliest pending deadline, never later than the true one: lowered when a deadline
    /// is created, recomputed after each `handle_timeout`. Keeps `poll_timeout` O(1).
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sessions", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(mut cfg: EndpointConfig) -> Self {
        let cfg_now = cfg.clock_anchor;
        // This endpoint reads the short media envelope (and sends it to peers that do), and
        // media reports with loss runs.
        cfg.identity.capabilities = cfg
            .identity
            .capabilities
            .union(crate::crypto::Capabilities::SHORT_MEDIA)
            .union(crate::crypto::Capabilities::REPORT_EXT);
        Self {
            relaying: false,
            sockets: Vec::new(),
            rng: Rng::from_seed_bytes(cfg.seed),
            cfg,
            initiations: BTreeMap::new(),
            responding: BTreeMap::new(),
            peers: BTreeMap::new(),
            by_remote: BTreeMap::new(),
            ik_seen: BTreeMap::new(),
            last_ik_timestamp: 0,
            streams: BTreeMap::new(),
            broken_streams: std::collections::BTreeSet::new(),
            revoked: std::collections::BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            scratch: Vec::with_capacity(MAX_DATAGRAM),
            next_ping: 0,
            resets: (cfg_now, 0),
            deadline: None,
        }
    }

    /// A UDP socket opened on demand ([`crate::sansio::StreamCommand::BindUdp`]) at `local`:
    /// datagrams arriving on it come by paths [`Path::Direct`] `via` it, and the answers to
    /// them leave from it. Datagrams on any other socket come by paths with `via: None`.
    pub fn add_socket(&mut self, local: SocketAddr) {
        if !self.sockets.contains(&local) {
            self.sockets.push(local);
        }
    }

    /// The socket at `local` is closed ([`crate::sansio::StreamCommand::CloseUdp`]).
    /// Sessions still sent through it go from the default socket from now on (to the same
    /// peer address), and a path through it being validated is given up.
    pub fn remove_socket(&mut self, local: SocketAddr) {
        self.sockets.retain(|s| *s != local);
        let moved = |p: &mut Path| {
            if let Path::Direct { via, .. } = p {
                if *via == Some(local) {
                    *via = None;
                }
            }
        };
        for peer in self.peers.values_mut() {
            moved(&mut peer.dest);
            // A path through it can no longer be validated.
            if peer
                .validating
                .as_ref()
                .is_some_and(|v| v.path.via() == Some(local))
            {
                peer.validating = None;
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Refuse every session with these devices from now on, and close the ones open (from the
    /// login authority's signed revocation list).
    pub fn revoke(
        &mut self,
        now: Instant,
        devices: impl IntoIterator<Item = crate::crypto::DeviceId>,
    ) {
        self.revoked.extend(devices);
        let gone: Vec<SessionIndex> = self
            .peers
            .iter()
            .filter(|(_, p)| self.revoked.contains(&p.info.certificate.device))
            .map(|(i, _)| *i)
            .collect();
        for index in gone {
            self.close(now, ConnId(index.0));
        }
    }

    /// Use a renewed certificate for new handshakes (it must bind this device's keys; sessions
    /// already established keep going).
    ///
    /// Every established session gets it too ([`Message::CertificateUpdate`]): a peer closes
    /// a session whose certificate expired.
    pub fn update_certificate(&mut self, now: Instant, certificate: crate::crypto::Certificate) {
        self.cfg.identity.certificate = certificate.clone();
        let mut live: Vec<SessionIndex> = self
            .peers
            .iter()
            .filter(|(_, p)| p.tentative.is_none())
            .map(|(i, _)| *i)
            .collect();
        live.sort();
        for index in live {
            let next = self.peers.get_mut(&index).map(|p| {
                p.certificate_resends = (CERTIFICATE_RESENDS, now + p.keepalive(&self.cfg));
                p.certificate_resends.1
            });
            if let Some(at) = next {
                self.arm(at);
            }
            let msg = Message::CertificateUpdate {
                certificate: Box::new(certificate.clone()),
            };
            let _ = self.send_message(now, index, msg);
        }
    }

    fn certificate_deadline(&self, p: &Peer) -> Instant {
        certificate_deadline(&self.cfg, p)
    }

    /// The session statistics of a connection.
    pub fn session_stats(&self, conn: ConnId) -> Option<crate::crypto::SessionStats> {
        self.peers
            .get(&SessionIndex(conn.0))
            .map(|p| p.session.stats())
    }

    /// Established connections.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.tentative.is_none())
            .map(|(i, _)| ConnId(i.0))
    }

    /// The verified peer of a connection.
    pub fn peer(&self, conn: ConnId) -> Option<&PeerInfo> {
        self.peers
            .get(&SessionIndex(conn.0))
            .filter(|p| p.tentative.is_none())
            .map(|p| &p.info)
    }

    /// A deadline was created at `at`.
    fn arm(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    /// The true earliest deadline (an O(n) scan; after `handle_timeout` only).
    fn recompute_deadline(&mut self) {
        let inits = self.initiations.values().map(|i| i.next_retry);
        let resp = self.responding.values().map(|r| r.expires);
        let peers = self.peers.values().flat_map(|p| {
            if let Some(at) = p.tentative {
                return [Some(at + RESPONDER_TIMEOUT), None, None, None, None, None]
                    .into_iter()
                    .flatten();
            }
            [
                Some(p.last_sent + p.keepalive(&self.cfg)),
                Some(p.last_received + p.idle_timeout(&self.cfg)),
                p.unconfirmed_final.as_ref().map(|(_, at, _)| *at),
                p.validating.as_ref().and_then(|v| v.retry_at),
                Some(self.certificate_deadline(p)),
                (p.certificate_resends.0 > 0).then_some(p.certificate_resends.1),
            ]
            .into_iter()
            .flatten()
        });
        self.deadline = inits.chain(resp).chain(peers).min();
    }

    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(
            self.cfg.wall_anchor.0
                + now
                    .saturating_duration_since(self.cfg.clock_anchor)
                    .as_secs(),
        )
    }

    fn fresh_index(&mut self) -> SessionIndex {
        loop {
            let i = SessionIndex(self.rng.u32());
            if !self.peers.contains_key(&i)
                && !self.initiations.contains_key(&i)
                && !self.responding.contains_key(&i)
            {
                return i;
            }
        }
    }

    /// Start a session with the peer at `dest`. With `peer_static` (the peer's X25519 key, from
    /// the index) the one-round-trip IK pattern is used. The outcome arrives as
    /// [`EndpointEvent::Connected`] or [`EndpointEvent::ConnectFailed`] with the returned id.
    pub fn connect(
        &mut self,
        now: Instant,
        dest: impl Into<Path>,
        peer_static: Option<[u8; 32]>,
    ) -> Result<ConnId, HandshakeError> {
        let dest = dest.into();
        let index = self.fresh_index();
        let init = self.initiation(now, index, dest, peer_static, 1)?;
        self.arm(init.next_retry);
        self.send_raw(&init.dest, init.packet.clone());
        self.initiations.insert(index, init);
        Ok(ConnId(index.0))
    }

    fn initiation(
        &mut self,
        now: Instant,
        index: SessionIndex,
        dest: Path,
        peer_static: Option<[u8; 32]>,
        attempts: u32,
    ) -> Result<Initiation, HandshakeError> {
        // Strictly increasing and tied to wall time, so a replayed IK initiation is recognised.
        self.last_ik_timestamp = (self.wall(now).0 << 20).max(self.last_ik_timestamp + 1);
        let (handshake, packet) = Handshake::initiate(
            self.cfg.identity.clone(),
            peer_static,
            self.last_ik_timestamp,
            index,
            &mut self.rng,
        )?;
        Ok(Initiation {
            handshakes: vec![handshake],
            dest,
            peer_static,
            packet: Bytes::from(packet),
            attempts,
            next_retry: now + self.cfg.handshake_rto,
        })
    }

    /// Send application bytes on the control channel.
    pub fn send(&mut self, now: Instant, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        if data.len() > MAX_APP_DATA {
            return Err(SendError::TooLarge(data.len()));
        }
        let mut msg = BytesMut::with_capacity(data.len() + 1);
        Message::AppData(data).encode(&mut msg);
        self.seal_to(now, SessionIndex(conn.0), Channel::Control, &msg)
    }

    /// Send a control message for a layer above the session (overlay, index, calls, chat...).
    pub fn send_control(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: &Message<'_>,
    ) -> Result<(), SendError> {
        let mut buf = BytesMut::with_capacity(64);
        message.encode(&mut buf);
        if buf.len() > MAX_APP_DATA + 1 {
            return Err(SendError::TooLarge(buf.len()));
        }
        self.seal_to(now, SessionIndex(conn.0), Channel::Control, &buf)
    }

    /// Give one session its own keep-alive interval and idle timeout (for instance what the
    /// super node at the other end of a link asked for), instead of the configuration's.
    /// Returns false when there is no such session. Zero durations are raised to 1 ms.
    pub fn set_session_timing(
        &mut self,
        conn: ConnId,
        keepalive: Duration,
        idle_timeout: Duration,
    ) -> bool {
        // Bounded both ways: a peer's advertised interval (or a caller's mistake) can neither
        // spin the timer nor overflow `Instant` arithmetic; a keep-alive comes before the idle
        // timeout.
        let (floor, ceiling) = (Duration::from_millis(1), Duration::from_secs(24 * 3600));
        let idle_timeout = idle_timeout.clamp(floor, ceiling);
        let keepalive = keepalive.clamp(floor, idle_timeout);
        let Some(peer) = self.peers.get_mut(&SessionIndex(conn.0)) else {
            return false;
        };
        peer.timing = Some((keepalive, idle_timeout));
        let at = (peer.last_sent + keepalive).min(peer.last_received + idle_timeout);
        self.arm(at);
        true
    }

    /// Where a connection's peer currently is (it moves when the peer roams).
    pub fn remote(&self, conn: ConnId) -> Option<&Path> {
        self.peers
            .get(&SessionIndex(conn.0))
            .filter(|p| p.tentative.is_none())
            .map(|p| &p.dest)
    }

    /// Send a media frame on the media channel.
    pub fn send_media(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        if frame.len() > MAX_APP_DATA {
            return Err(SendError::TooLarge(frame.len()));
        }
        self.seal_to(now, SessionIndex(conn.0), Channel::Media, frame)
    }

    /// Measure the round-trip time; the answer comes as [`EndpointEvent::Pong`].
    pub fn ping(&mut self, now: Instant, conn: ConnId) -> Result<(), SendError> {
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        let peer = self
            .peers
            .get_mut(&SessionIndex(conn.0))
            .ok_or(SendError::UnknownConnection)?;
        if peer.pings.len() >= MAX_OUTSTANDING_PINGS {
            peer.pings.pop_front();
        }
        peer.pings.push_back((id, now));
        self.send_message(now, SessionIndex(conn.0), Message::Ping { id })
    }

    /// Check whether `path` works for session `conn`: send a [`Message::PathProbe`] there
    /// (with an IP TTL when given: a low TTL opens this side's NAT without reaching the peer).
    /// The peer answers on the path the probe arrived by; the answer arrives as
    /// [`EndpointEvent::ProbeAnswered`] with the returned id. Neither moves the session.
    pub fn probe(
        &mut self,
        now: Instant,
        conn: ConnId,
        path: Path,
        ttl: Option<u8>,
    ) -> Result<u32, SendError> {
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        let peer = self
            .peers
            .get_mut(&SessionIndex(conn.0))
            .filter(|p| p.tentative.is_none())
            .ok_or(SendError::UnknownConnection)?;
        if peer.pings.len() >= MAX_OUTSTANDING_PINGS {
            peer.pings.pop_front();
        }
        peer.pings.push_back((id, now));
        self.send_message_via(
            now,
            SessionIndex(conn.0),
            Message::PathProbe { id },
            Some(path),
            ttl,
        )?;
        Ok(id)
    }

    /// Send session `conn`'s packets on `path` from now on (the peer follows when our
    /// packets reach it there). Returns false when there is no such session.
    pub fn set_path(&mut self, conn: ConnId, path: Path) -> bool {
        match self
            .peers
            .get_mut(&SessionIndex(conn.0))
            .filter(|p| p.tentative.is_none())
        {
            Some(peer) => {
                peer.dest = path;
                peer.validating = None;
                true
            }
            None => false,
        }
    }

    /// Hand frames addressed to a relay ([`crate::wire::relay`], direction "to the relay") to
    /// the application as [`EndpointEvent::RelayFrame`] instead of dropping them: on while
    /// this node is a super node.
    pub fn set_relaying(&mut self, on: bool) {
        self.relaying = on;
    }

    /// Close a session, telling the peer.
    pub fn close(&mut self, now: Instant, conn: ConnId) {
        let index = SessionIndex(conn.0);
        let _ = self.send_message(
            now,
            index,
            Message::Close {
                reason: CloseReason::Normal,
            },
        );
        if self.peers.remove(&index).is_some() {
            self.events.push_back(EndpointEvent::Closed {
                conn,
                cause: CloseCause::Local,
            });
        }
        self.initiations.remove(&index);
    }

    fn send_message(
        &mut self,
        now: Instant,
        index: SessionIndex,
        msg: Message<'_>,
    ) -> Result<(), SendError> {
        self.send_message_via(now, index, msg, None, None)
    }

    /// Seal `msg` on the session and send it on `via` (default: the session's path) with an
    /// optional IP TTL.
    fn send_message_via(
        &mut self,
        now: Instant,
        index: SessionIndex,
        msg: Message<'_>,
        via: Option<Path>,
        ttl: Option<u8>,
    ) -> Result<(), SendError> {
        let mut buf = BytesMut::with_capacity(16);
        msg.encode(&mut buf);
        self.seal_via(now, index, Channel::Control, &buf, via, ttl)
    }

    fn seal_to(
        &mut self,
        now: Instant,
        index: SessionIndex,
        channel: Channel,
        plaintext: &[u8],
    ) -> Result<(), SendError> {
        self.seal_via(now, index, channel, plaintext, None, None)
    }

    fn seal_via(
        &mut self,
        now: Instant,
        index: SessionIndex,
        channel: Channel,
        plaintext: &[u8],
        via: Option<Path>,
        ttl: Option<u8>,
    ) -> Result<(), SendError> {
        let peer = self
            .peers
            .get_mut(&index)
            .filter(|p| p.tentative.is_none())
            .ok_or(SendError::UnknownConnection)?;
        let mut out = BytesMut::with_capacity(plaintext.len() + 32);
        if let Err(e) = peer.session.seal(now, channel, plaintext, &mut out) {
            self.peers.remove(&index);
            self.events.push_back(EndpointEvent::Closed {
                conn: ConnId(index.0),
                cause: CloseCause::Exhausted,
            });
            return Err(e.into());
        }
        let dest = match via {
            Some(p) => p,
            None => {
                // Only traffic on the session's own path keeps it alive.
                peer.last_sent = now;
                peer.dest.clone()
            }
        };
        self.send_raw_ttl(&dest, out.freeze(), ttl);
        Ok(())
    }

    fn send_raw(&mut self, dest: &Path, payload: Bytes) {
        self.send_raw_ttl(dest, payload, None);
    }

    fn send_raw_ttl(&mut self, dest: &Path, payload: Bytes, ttl: Option<u8>) {
        let (transport, payload) = match dest {
            Path::Direct { to: d, .. } => (d, payload),
            Path::Relayed { relay, channel } => {
                let mut b = BytesMut::with_capacity(payload.len() + relay::HEADER_LEN);
                relay::encode(*channel, false, &payload, &mut b);
                (relay, b.freeze())
            }
        };
        let payload = match transport {
            Destination::Udp(_) => payload,
            Destination::Stream(_) => {
                let mut framed = BytesMut::with_capacity(payload.len() + frame::PREFIX_LEN);
                if frame::encode(&payload, &mut framed).is_err() {
                    return;
                }
                framed.freeze()
            }
        };
        self.stats.packets_out += 1;
        self.transmits.push_back(Transmit {
            destination: transport.clone(),
            source: dest.via(),
            payload,
            ttl: if matches!(transport, Destination::Udp(_)) {
                ttl
            } else {
                None
            },
        });
    }

    fn receive(&mut self, now: Instant, from: Path, data: &[u8]) {
        self.stats.packets_in += 1;
        self.on_packet(now, from, data);
    }

    fn on_packet(&mut self, now: Instant, from: Path, data: &[u8]) {
        match classify(data) {
            Class::Stun => {
                self.stats.stun_seen += 1;
                return;
            }
            Class::Control { .. } | Class::Media { .. } => {}
            Class::Relay { .. } => {
                // A packet a relay forwarded to us: unwrap it once (a relayed packet is never
                // itself a relay frame) and remember the channel as its path.
                let Path::Direct { to: transport, .. } = from else {
                    self.stats.dropped_malformed += 1;
                    return;
                };
                match relay::decode(data) {
                    Ok((h, _)) if !h.to_party && self.relaying => {
                        // A frame for the relay this node runs (as a super node).
                        self.events.push_back(EndpointEvent::RelayFrame {
                            from: transport,
                            frame: Bytes::copy_from_slice(data),
                        });
                    }
                    Ok((h, inner))
                        if h.to_party && !matches!(classify(inner), Class::Relay { .. }) =>
                    {
                        self.stats.relayed_in += 1;
                        let from = Path::Relayed {
                            relay: transport,
                            channel: h.channel,
                        };
                        self.on_packet(now, from, inner);
                    }
                    _ => self.stats.dropped_malformed += 1,
                }
                return;
            }
            Class::Unknown => {
                self.stats.dropped_not_natter += 1;
                return;
            }
        }
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match packet {
            Packet::HandshakeInit {
                pattern,
                sender,
                noise,
            } => self.on_init(now, from, pattern, sender, noise),
            Packet::HandshakeResponse {
                sender,
                receiver,
                noise,
            } => self.on_response(now, sender, receiver, noise),
            Packet::HandshakeFinal { receiver, noise } => self.on_final(now, from, receiver, noise),
            Packet::Reset { index, token } => self.on_reset(index, &token),
            Packet::Data { header, ciphertext } => {
                let index = header.receiver;
                if let Some(r) = self.responding.get_mut(&index) {
                    if r.early.len() < EARLY_DATA_LIMIT {
                        r.early.push((from, data.to_vec()));
                        self.stats.early_data_buffered += 1;
                    } else {
                        self.stats.dropped_unknown_session += 1;
                    }
                    return;
                }
                let Some(peer) = self.peers.get_mut(&index) else {
                    self.stats.dropped_unknown_session += 1;
                    self.send_reset(now, &from, index);
                    return;
                };
                let mut plain = std::mem::take(&mut self.scratch);
                let result = peer.session.open(&header, ciphertext, &mut plain);
                match result {
                    Ok(crate::crypto::Opened { newest, .. }) => {
                        peer.last_received = now;
                        peer.unconfirmed_final = None;
                        // Only the newest packet moves the path: a delayed packet from the old
                        // address must not move it back. A path probe or its answer never
                        // moves it: checking a path is not choosing it.
                        let probe = header.channel == Channel::Control
                            && matches!(
                                plain.first(),
                                Some(&t) if t == MessageType::PathProbe as u8
                                    || t == MessageType::PathProbeAck as u8
                                    || t == MessageType::PathChallenge as u8
                                    || t == MessageType::PathResponse as u8
                            );
                        let mut resume = false;
                        if let Some(v) = peer.validating.as_mut().filter(|v| v.path == from) {
                            v.received = v.received.saturating_add(data.len());
                            // More bytes from the path: a challenge the budget held back may go.
                            resume = v.retry_at.is_none();
                        }
                        if newest && !probe && peer.dest == from {
                            // The peer is back where the session is: a late answer to a
                            // challenge elsewhere must not move it away.
                            peer.validating = None;
                        }
                        if newest && !probe && peer.dest != from {
                            if matches!(
                                from,
                                Path::Direct {
                                    to: Destination::Stream(_),
                                    ..
                                }
                            ) {
                                // A stream's peer completed a TCP handshake from there: it
                                // cannot be spoofed, so the session moves at once.
                                peer.dest = from.clone();
                                peer.validating = None;
                                self.events.push_back(EndpointEvent::PathChanged {
                                    conn: ConnId(index.0),
                                    remote: from.clone(),
                                });
                            } else if peer.validating.as_ref().is_none_or(|v| v.path != from) {
                                let mut token = [0u8; 8];
                                self.rng.fill(&mut token);
                                peer.validating = Some(Validation {
                                    path: from.clone(),
                                    token,
                                    received: data.len(),
                                    sent: 0,
                                    challenges: 0,
                                    retry_at: Some(now),
                                });
                                resume = true;
                            }
                        }
                        if resume {
                            self.challenge(now, index);
                        }
                        self.confirm_tentative(index);
                        self.on_plaintext(now, index, &from, header.channel, &plain);
                    }
                    Err(OpenError::Replay(_)) => self.stats.dropped_replay += 1,
                    Err(OpenError::Authentication | OpenError::Generation) => {
                        self.stats.dropped_auth += 1
                    }
                }
                self.scratch = plain;
            }
        }
    }

    /// Send (or send again) the challenge of session `index`'s path validation, within the
    /// amplification budget; give the move up after [`PATH_CHALLENGES`] unanswered ones.
    fn challenge(&mut self, now: Instant, index: SessionIndex) {
        let Some(v) = self
            .peers
            .get_mut(&index)
            .and_then(|p| p.validating.as_mut())
        else {
            return;
        };
        if v.challenges >= PATH_CHALLENGES {
            if let Some(p) = self.peers.get_mut(&index) {
                p.validating = None;
            }
            self.stats.paths_refused += 1;
            return;
        }
        let (path, token) = (v.path.clone(), v.token);
        // A sealed challenge's size: the data header, the message and the AEAD tag.
        let relay_header = if path.is_relayed() {
            relay::HEADER_LEN
        } else {
            0
        };
        let size = DATA_HEADER_LEN + 1 + token.len() + TAG_LEN + relay_header;
        if v.sent + size > AMPLIFICATION_LIMIT * v.received {
            v.retry_at = None;
            self.stats.path_challenges_limited += 1;
            return;
        }
        v.sent += size;
        v.challenges += 1;
        let at = now + PATH_CHALLENGE_RTO * v.challenges;
        v.retry_at = Some(at);
        self.arm(at);
        self.stats.path_challenges_sent += 1;
        let _ = self.send_message_via(
            now,
            index,
            Message::PathChallenge { token },
            Some(path),
            None,
        );
    }

    /// The answer to session `index`'s path challenge: the peer is at the new path, so the
    /// session moves there, unless another device's session is there already.
    fn path_validated(&mut self, index: SessionIndex, token: &[u8; 8]) {
        use subtle::ConstantTimeEq;
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        let Some(v) = peer
            .validating
            .take_if(|v| bool::from(v.token.ct_eq(token)))
        else {
            return;
        };
        let device = peer.info.certificate.device;
        let taken = self.peers.iter().any(|(i, p)| {
            *i != index
                && p.tentative.is_none()
                && p.dest == v.path
                && p.info.certificate.device != device
        });
        if taken {
            self.stats.paths_refused += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        peer.dest = v.path.clone();
        self.stats.paths_validated += 1;
        self.events.push_back(EndpointEvent::PathChanged {
            conn: ConnId(index.0),
            remote: v.path,
        });
    }

    /// Tell the sender of data for a session we do not know (we restarted) that it is gone,
    /// so it drops the session now instead of after its idle timeout.
    fn send_reset(&mut self, now: Instant, to: &Path, index: SessionIndex) {
        let (since, sent) = &mut self.resets;
        if now.saturating_duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *sent = 0;
        }
        if *sent >= RESETS_PER_SECOND {
            return;
        }
        *sent += 1;
        self.stats.resets_sent += 1;
        let token = crate::crypto::reset_token(&self.cfg.identity.device, index);
        let mut out = BytesMut::with_capacity(crate::wire::packet::RESET_LEN);
        Packet::Reset { index, token }.encode(&mut out);
        self.send_raw(to, out.freeze());
    }

    /// A peer says it no longer knows the session it chose `index` for: believe it only with
    /// the token it gave in that session's handshake.
    fn on_reset(&mut self, index: SessionIndex, token: &[u8; crate::crypto::RESET_TOKEN_LEN]) {
        use subtle::ConstantTimeEq;
        let found = self
            .by_remote
            .get(&index)
            .into_iter()
            .flatten()
            .copied()
            .find(|local| {
                self.peers.get(local).is_some_and(|p| {
                    p.remote_index == index
                        && p.info
                            .reset_token
                            .is_some_and(|t| bool::from(t.ct_eq(token)))
                })
            });
        let Some(local) = found else {
            self.stats.dropped_reset += 1;
            return;
        };
        self.stats.resets_accepted += 1;
        if let Some(peer) = self.peers.remove(&local) {
            if peer.tentative.is_none() {
                self.events.push_back(EndpointEvent::Closed {
                    conn: ConnId(local.0),
                    cause: CloseCause::Reset,
                });
            }
        }
    }

    fn on_plaintext(
        &mut self,
        now: Instant,
        index: SessionIndex,
        from: &Path,
        channel: Channel,
        plain: &[u8],
    ) {
        let conn = ConnId(index.0);
        if channel == Channel::Media {
            self.events.push_back(EndpointEvent::Media {
                conn,
                path: from.clone(),
                data: Bytes::copy_from_slice(plain),
            });
            return;
        }
        match Message::decode(plain) {
            Ok(Message::KeepAlive) => {}
            Ok(Message::CertificateUpdate { certificate }) => {
                let wall = self.wall(now);
                let trusted = &self.cfg.identity.trusted;
                let Some(peer) = self.peers.get_mut(&index) else {
                    return;
                };
                let old = &peer.info.certificate;
                let same = certificate.user == old.user
                    && certificate.device == old.device
                    && certificate.signing_public == old.signing_public
                    && certificate.dh_public == old.dh_public;
                if same && certificate.verify(trusted, wall).is_ok() {
                    if certificate.not_after > old.not_after {
                        peer.info.certificate = *certificate;
                        let at = self.certificate_deadline(&self.peers[&index]);
                        self.arm(at);
                    }
                    self.stats.certificates_updated += 1;
                } else {
                    self.stats.certificates_refused += 1;
                }
            }
            Ok(Message::Ping { id }) => {
                let _ = self.send_message(now, index, Message::Pong { id });
            }
            Ok(Message::Pong { id }) => {
                if let Some(peer) = self.peers.get_mut(&index) {
                    if let Some(pos) = peer.pings.iter().position(|(i, _)| *i == id) {
                        let (_, sent) = peer.pings.remove(pos).unwrap_or((id, now));
                        self.events.push_back(EndpointEvent::Pong {
                            conn,
                            rtt: now.saturating_duration_since(sent),
                        });
                    }
                }
            }
            Ok(Message::PathProbe { id }) => {
                // Answered on the path it came by (which may not be the session's): the
                // prober learns that this path works both ways.
                self.stats.probes_answered += 1;
                self.events.push_back(EndpointEvent::ProbeReceived {
                    conn,
                    path: from.clone(),
                });
                let ack = Message::PathProbeAck {
                    id,
                    observed: from.peer_udp(),
                };
                let _ = self.send_message_via(now, index, ack, Some(from.clone()), None);
            }
            Ok(Message::PathChallenge { token }) => {
                // Answered on the path it came by: that is the path being checked.
                let answer = Message::PathResponse { token };
                let _ = self.send_message_via(now, index, answer, Some(from.clone()), None);
            }
            Ok(Message::PathResponse { token }) => self.path_validated(index, &token),
            Ok(Message::PathProbeAck { id, observed }) => {
                if let Some(peer) = self.peers.get_mut(&index) {
                    if let Some(pos) = peer.pings.iter().position(|(i, _)| *i == id) {
                        let (_, sent) = peer.pings.remove(pos).unwrap_or((id, now));
                        self.events.push_back(EndpointEvent::ProbeAnswered {
                            conn,
                            id,
                            path: from.clone(),
                            rtt: now.saturating_duration_since(sent),
                            observed,
                        });
                    }
                }
            }
            Ok(Message::Close { reason }) => {
                self.peers.remove(&index);
                self.events.push_back(EndpointEvent::Closed {
                    conn,
                    cause: CloseCause::Remote(reason),
                });
            }
            Ok(Message::AppData(data)) => self.events.push_back(EndpointEvent::Data {
                conn,
                data: Bytes::copy_from_slice(data),
            }),
            Ok(_) => self.events.push_back(EndpointEvent::Control {
                conn,
                message: Bytes::copy_from_slice(plain),
            }),
            Err(_) => self.stats.dropped_message += 1,
        }
    }

    fn on_init(
        &mut self,
        now: Instant,
        from: Path,
        pattern: Pattern,
        sender: SessionIndex,
        noise: &[u8],
    ) {
        let Some(ephemeral) = noise.get(..32).and_then(|e| <[u8; 32]>::try_from(e).ok()) else {
            self.stats.handshake_failures += 1;
            return;
        };
        // A retransmitted message 1 whose answer was lost: answer again, no new state.
        if let Some(r) = self
            .responding
            .values()
            .find(|r| r.ephemeral == ephemeral && r.source == from)
        {
            let reply = r.reply.clone();
            self.send_raw(&from, reply);
            return;
        }
        // An XX message 1 must be padded to the size of our answer (no amplification).
        if pattern == Pattern::Xx && noise.len() < 32 + XX_INIT_PADDING {
            self.stats.handshake_failures += 1;
            return;
        }
        let per_source = self
            .responding
            .values()
            .filter(|r| r.source == from)
            .count();
        if self.responding.len() >= self.cfg.max_pending_responses
            || per_source >= MAX_PENDING_PER_SOURCE
            || self.peers.len() >= self.cfg.max_sessions
        {
            self.stats.handshake_flood_drops += 1;
            return;
        }
        let index = self.fresh_index();
        let wall = self.wall(now);
        let result = Handshake::respond(
            self.cfg.identity.clone(),
            InitMessage {
                pattern,
                sender,
                noise,
            },
            index,
            &mut self.rng,
            now,
            wall,
        );
        match result {
            Ok((handshake, Step::Send(reply))) => {
                let reply = Bytes::from(reply);
                self.send_raw(&from, reply.clone());
                self.arm(now + RESPONDER_TIMEOUT);
                self.responding.insert(
                    index,
                    Responding {
                        handshake,
                        ephemeral,
                        reply,
                        source: from,
                        expires: now + RESPONDER_TIMEOUT,
                        early: Vec::new(),
                    },
                );
            }
            Ok((_, Step::Done(reply, established))) => {
                // IK: refuse a replayed initiation: its timestamp must be newer than the last
                // one accepted from that key, and recent.
                let key = established.peer.certificate.dh_public;
                let ts = established.peer.timestamp;
                let stale = (ts >> 20).saturating_add(IK_MAX_AGE_SECS) < wall.0;
                if stale || self.ik_seen.get(&key).is_some_and(|&seen| ts <= seen) {
                    self.stats.handshake_replays += 1;
                    return;
                }
                if self.ik_seen.len() >= IK_SEEN_LIMIT {
                    self.ik_seen
                        .retain(|_, t| (*t >> 20).saturating_add(IK_MAX_AGE_SECS) >= wall.0);
                }
                self.ik_seen.insert(key, ts);
                if let Some(reply) = reply {
                    self.send_raw(&from, Bytes::from(reply));
                }
                self.establish_tentative(now, *established, from);
            }
            Err(_) => self.stats.handshake_failures += 1,
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        sender: SessionIndex,
        receiver: SessionIndex,
        noise: &[u8],
    ) {
        let Some(mut init) = self.initiations.remove(&receiver) else {
            self.stats.dropped_unknown_session += 1;
            return;
        };
        let wall = self.wall(now);
        // Try the newest attempt first. A failed Noise read leaves snow's state as it was, so a
        // forged or stale answer costs nothing: the initiation goes back unchanged.
        let mut outcome = Err(HandshakeError::Unexpected);
        for hs in init.handshakes.iter_mut().rev() {
            outcome = hs.read_response(sender, noise, now, wall);
            if !matches!(outcome, Err(HandshakeError::Noise(_))) {
                break;
            }
        }
        match outcome {
            Ok(Step::Done(final_msg, established)) => {
                let ik = final_msg.is_none();
                let confirm = final_msg.map(|m| {
                    let m = Bytes::from(m);
                    self.send_raw(&init.dest, m.clone());
                    (m, now + self.cfg.handshake_rto, 1)
                });
                self.establish(now, *established, init.dest, true, confirm);
                if ik {
                    // The responder's session is tentative until it hears from us.
                    let _ = self.send_message(now, receiver, Message::KeepAlive);
                }
            }
            Ok(Step::Send(_)) | Err(HandshakeError::Noise(_) | HandshakeError::LowOrderPoint) => {
                // Forged, corrupted or from an attempt we no longer hold: restore every state
                // the read may have touched and keep waiting for the genuine answer (the
                // retransmission timer still runs).
                self.stats.handshake_failures += 1;
                let mut restored = Vec::with_capacity(init.handshakes.len());
                for hs in &init.handshakes {
                    if let Ok(fresh) = hs.rebuild() {
                        restored.push(fresh);
                    }
                }
                init.handshakes = restored;
                self.initiations.insert(receiver, init);
            }
            Err(e) => {
                // The peer authenticated but is not acceptable (certificate, version).
                self.stats.handshake_failures += 1;
                self.events.push_back(EndpointEvent::ConnectFailed {
                    conn: ConnId(receiver.0),
                    error: ConnectError::Handshake(e),
                });
            }
        }
    }

    fn on_final(&mut self, now: Instant, from: Path, receiver: SessionIndex, noise: &[u8]) {
        let Some(mut r) = self.responding.remove(&receiver) else {
            // A retransmitted final whose session exists (our confirmation was lost): confirm
            // again, but only for an exact copy of the final we accepted.
            let retransmission = self
                .peers
                .get(&receiver)
                .and_then(|p| p.accepted_final.as_ref())
                .is_some_and(|f| f[..] == *noise);
            if retransmission {
                let _ = self.send_message(now, receiver, Message::KeepAlive);
            } else {
                self.stats.dropped_unknown_session += 1;
            }
            return;
        };
        let wall = self.wall(now);
        match r.handshake.read_final(noise, now, wall) {
            Ok(established) => {
                let early = std::mem::take(&mut r.early);
                self.establish(now, established, from, false, None);
                if let Some(p) = self.peers.get_mut(&receiver) {
                    p.accepted_final = Some(Bytes::copy_from_slice(noise));
                }
                // Confirm to the initiator so it stops repeating the final message.
                let _ = self.send_message(now, receiver, Message::KeepAlive);
                for (src, data) in early {
                    self.on_packet(now, src, &data);
                }
            }
            Err(HandshakeError::Noise(_) | HandshakeError::LowOrderPoint) => {
                // Forged or corrupted: restore the state and keep waiting for the genuine one.
                self.stats.handshake_failures += 1;
                if let Ok(fresh) = r.handshake.rebuild() {
                    r.handshake = fresh;
                    self.responding.insert(receiver, r);
                }
            }
            Err(_) => self.stats.handshake_failures += 1,
        }
    }

    fn establish(
        &mut self,
        now: Instant,
        est: Established,
        dest: Path,
        initiator: bool,
        unconfirmed_final: Option<(Bytes, Instant, u32)>,
    ) {
        let index = est.session.local_index();
        if self.revoked.contains(&est.peer.certificate.device) {
            self.stats.revoked_peers += 1;
            if initiator {
                self.events.push_back(EndpointEvent::ConnectFailed {
                    conn: ConnId(index.0),
                    error: ConnectError::Handshake(HandshakeError::Certificate(
                        crate::crypto::CertError::Revoked,
                    )),
                });
            }
            return;
        }
        self.events.push_back(EndpointEvent::Connected {
            conn: ConnId(index.0),
            peer: Box::new(est.peer.clone()),
            remote: dest.clone(),
            initiator,
        });
        let remote_index = est.session.remote_index();
        self.index_remote(remote_index, index);
        self.arm(now + self.cfg.keepalive_interval.min(self.cfg.idle_timeout));
        if let Some((_, at, _)) = &unconfirmed_final {
            self.arm(*at);
        }
        self.peers.insert(
            index,
            Peer {
                session: with_short_media(est.session, &est.peer),
                info: est.peer,
                dest,
                tentative: None,
                last_sent: now,
                last_received: now,
                unconfirmed_final,
                accepted_final: None,
                remote_index,
                pings: VecDeque::new(),
                timing: None,
                validating: None,
                certificate_resends: (0, now),
            },
        );
    }

    /// Records that our session `local` has the peer's index `remote` (see `by_remote`).
    fn index_remote(&mut self, remote: SessionIndex, local: SessionIndex) {
        if self.by_remote.len() > 2 * self.peers.len() + 64 {
            self.by_remote.clear();
            for (l, p) in &self.peers {
                self.by_remote.entry(p.remote_index).or_default().push(*l);
            }
        }
        let locals = self.by_remote.entry(remote).or_default();
        locals.retain(|l| self.peers.contains_key(l));
        locals.push(local);
    }

    fn establish_tentative(&mut self, now: Instant, est: Established, dest: Path) {
        if self.revoked.contains(&est.peer.certificate.device) {
            self.stats.revoked_peers += 1;
            return;
        }
        let index = est.session.local_index();
        let remote_index = est.session.remote_index();
        self.index_remote(remote_index, index);
        self.arm(now + RESPONDER_TIMEOUT);
        self.peers.insert(
            index,
            Peer {
                session: with_short_media(est.session, &est.peer),
                info: est.peer,
                dest,
                tentative: Some(now),
                last_sent: now,
                last_received: now,
                unconfirmed_final: None,
                accepted_final: None,
                remote_index,
                pings: VecDeque::new(),
                timing: None,
                validating: None,
                certificate_resends: (0, now),
            },
        );
    }

    /// The first authenticated packet on a tentative session: report it, and drop the other
    /// tentative sessions of the same connection attempt (same device, same initiator index).
    fn confirm_tentative(&mut self, index: SessionIndex) {
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        if peer.tentative.take().is_none() {
            return;
        }
        let (key, remote_index) = (peer.info.certificate.dh_public, peer.remote_index);
        self.events.push_back(EndpointEvent::Connected {
            conn: ConnId(index.0),
            peer: Box::new(peer.info.clone()),
            remote: peer.dest.clone(),
            initiator: false,
        });
        self.peers.retain(|i, p| {
            *i == index
                || p.tentative.is_none()
                || p.remote_index != remote_index
                || p.info.certificate.dh_public != key
        });
    }

    fn on_stream(&mut self, now: Instant, stream: StreamId, data: &[u8]) {
        if self.broken_streams.contains(&stream) {
            return;
        }
        if !self.streams.contains_key(&stream) && self.streams.len() >= self.cfg.max_streams {
            self.stats.streams_failed += 1;
            self.broken_streams.insert(stream);
            self.events
                .push_back(EndpointEvent::StreamBroken { stream });
            return;
        }
        let mut frames = Vec::new();
        let decoder = self.streams.entry(stream).or_default();
        decoder.push(data);
        let mut broken = false;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        for f in frames {
            self.receive(now, Path::stream(stream), &f);
        }
        if broken {
            // Framing is lost for good: ignore the rest and have the driver close it.
            self.stats.streams_failed += 1;
            self.streams.remove(&stream);
            self.broken_streams.insert(stream);
            self.events
                .push_back(EndpointEvent::StreamBroken { stream });
        }
    }
}

/// `session`, sealing media in the short envelope when the peer reads it.
fn with_short_media(
    mut session: crate::crypto::Session,
    peer: &crate::crypto::PeerInfo,
) -> crate::crypto::Session {
    session.set_short_media(
        peer.capabilities
            .contains(crate::crypto::Capabilities::SHORT_MEDIA),
    );
    session
}

/// Retransmission delay before attempt `attempt + 1`: `rto` doubling, at most 2 s.
fn backoff(rto: Duration, attempt: u32) -> Duration {
    rto.saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_HANDSHAKE_RTO.max(rto))
}

impl Machine for Endpoint {
    type Event = EndpointEvent;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                source,
                local,
                data,
            } => {
                let via = self.sockets.contains(&local).then_some(local);
                self.receive(now, Path::udp_via(via, source), data)
            }
            Input::Stream { stream, data, .. } => self.on_stream(now, stream, data),
            // Its owner opened the socket and announces it with `add_socket`.
            Input::StreamOpened { .. } | Input::UdpBound { .. } => {}
            Input::StreamClosed { stream } => {
                self.streams.remove(&stream);
                self.broken_streams.remove(&stream);
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        // Handshake retransmissions.
        let mut due: Vec<SessionIndex> = self
            .initiations
            .iter()
            .filter(|(_, i)| i.next_retry <= now)
            .map(|(k, _)| *k)
            .collect();
        // In a fixed order: runs with the same seed send the same packets.
        due.sort();
        for index in due {
            let Some(init) = self.initiations.get_mut(&index) else {
                continue;
            };
            if init.attempts >= self.cfg.handshake_attempts {
                self.initiations.remove(&index);
                self.events.push_back(EndpointEvent::ConnectFailed {
                    conn: ConnId(index.0),
                    error: ConnectError::Timeout,
                });
                continue;
            }
            init.attempts += 1;
            init.next_retry = now + backoff(self.cfg.handshake_rto, init.attempts);
            if init.peer_static.is_some() {
                // IK: the responder refuses a repeated message 1 as a replay, so every retry
                // is a fresh initiation (new ephemeral key, newer timestamp).
                let (attempts, next_retry) = (init.attempts, init.next_retry);
                let Some(old) = self.initiations.remove(&index) else {
                    continue;
                };
                match self.initiation(now, index, old.dest, old.peer_static, attempts) {
                    Ok(mut fresh) => {
                        fresh.next_retry = next_retry;
                        // Keep the last few attempts: an answer to one of them may still come.
                        let mut kept = old.handshakes;
                        kept.append(&mut fresh.handshakes);
                        let excess = kept.len().saturating_sub(IK_ATTEMPTS_KEPT);
                        kept.drain(..excess);
                        fresh.handshakes = kept;
                        self.send_raw(&fresh.dest, fresh.packet.clone());
                        self.initiations.insert(index, fresh);
                    }
                    Err(e) => self.events.push_back(EndpointEvent::ConnectFailed {
                        conn: ConnId(index.0),
                        error: ConnectError::Handshake(e),
                    }),
                }
                continue;
            }
            let (dest, packet) = (init.dest.clone(), init.packet.clone());
            self.send_raw(&dest, packet);
        }
        self.responding.retain(|_, r| r.expires > now);

        // Sessions: confirmation of XX finals, keep-alives, idle timeouts.
        let mut keepalive = Vec::new();
        let mut dead = Vec::new();
        let mut resend = Vec::new();
        let mut challenges = Vec::new();
        let mut expired = Vec::new();
        self.peers.retain(|_, p| {
            p.tentative
                .is_none_or(|at| now.saturating_duration_since(at) < RESPONDER_TIMEOUT)
        });
        for (index, peer) in &mut self.peers {
            if peer.tentative.is_some() {
                continue;
            }
            if now.saturating_duration_since(peer.last_received) >= peer.idle_timeout(&self.cfg) {
                dead.push(*index);
                continue;
            }
            if now >= certificate_deadline(&self.cfg, peer) {
                expired.push(*index);
                continue;
            }
            if let Some((msg, at, attempts)) = &mut peer.unconfirmed_final {
                if *at <= now {
                    if *attempts >= self.cfg.handshake_attempts {
                        peer.unconfirmed_final = None;
                    } else {
                        *attempts += 1;
                        *at = now + backoff(self.cfg.handshake_rto, *attempts);
                        resend.push((*index, peer.dest.clone(), msg.clone()));
                    }
                }
            }
            if now.saturating_duration_since(peer.last_sent) >= peer.keepalive(&self.cfg) {
                keepalive.push(*index);
            }
            if peer
                .validating
                .as_ref()
                .and_then(|v| v.retry_at)
                .is_some_and(|at| at <= now)
            {
                challenges.push(*index);
            }
        }
        // In a fixed order: runs with the same seed send the same packets.
        resend.sort_by_key(|(index, _, _)| *index);
        keepalive.sort();
        dead.sort();
        for (_, dest, msg) in resend {
            self.send_raw(&dest, msg);
        }
        for index in dead {
            self.peers.remove(&index);
            self.events.push_back(EndpointEvent::Closed {
                conn: ConnId(index.0),
                cause: CloseCause::Timeout,
            });
        }
        expired.sort();
        for index in expired {
            self.peers.remove(&index);
            self.stats.certificates_expired += 1;
            self.events.push_back(EndpointEvent::Closed {
                conn: ConnId(index.0),
                cause: CloseCause::CertificateExpired,
            });
        }
        for index in keepalive {
            let _ = self.send_message(now, index, Message::KeepAlive);
        }
        let mut resend: Vec<SessionIndex> = Vec::new();
        for (index, p) in &mut self.peers {
            let (left, at) = p.certificate_resends;
            if left > 0 && at <= now {
                p.certificate_resends = (left - 1, now + p.keepalive(&self.cfg));
                resend.push(*index);
            }
        }
        resend.sort();
        for index in resend {
            let msg = Message::CertificateUpdate {
                certificate: Box::new(self.cfg.identity.certificate.clone()),
            };
            let _ = self.send_message(now, index, msg);
        }
        challenges.sort();
        for index in challenges {
            self.challenge(now, index);
        }
        self.recompute_deadline();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Round up to the next tick after the anchor, so nearby deadlines share one wake-up.
        self.deadline.map(|d| {
            let since = d
                .saturating_duration_since(self.cfg.clock_anchor)
                .as_nanos();
            let tick = TIMER_TICK.as_nanos();
            let ticks = since.div_ceil(tick);
            let rounded = u64::try_from(ticks * tick).unwrap_or(u64::MAX);
            self.cfg.clock_anchor + Duration::from_nanos(rounded)
        })
    }
}
