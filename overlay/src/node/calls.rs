//! The calls part: dialling (search, relay, end-to-end session), signalling through the
//! [`CallMachine`], connectivity through a [`PathManager`] per call, and media frames.
//!
//! **Setting a call up.** [`Node::call`](super::Node::call) searches the index for the callee's
//! devices (through the index client). For each online device this part opens a session with
//! one of the super nodes the device is attached to (over UDP, or TCP when UDP is blocked
//! here), asks it for a relay channel to the device ([`Message::RelayAllocate`]), and runs an IK
//! handshake with the device *through* the relay: its static key is in its certificate.
//! Signalling therefore never needs a direct path, and the super node sees only ciphertext.
//! Invites are queued per device until its session is up (the call machine retransmits them
//! anyway). Each call signals on its own session with each device.
//!
//! **Answering.** A session that a peer opens to us through a relay is a call session (the
//! facade gives it to this part); call messages on it go to the call machine with the user and
//! device the session proved. It arrives over our link to the super node, a TCP stream: unless
//! UDP is blocked here, this part opens a UDP session with that super node at once and moves
//! its leg of the relay channel there ([`PathManager::set_relay`]; the relay sends to the
//! session a party last used).
//!
//! **Media.** Once connected, a [`PathManager`] runs on the session: candidates, hole
//! punching, path choice and switching; [`Calls::send_media`] seals frames on the session's
//! current path, and received frames arrive as [`NodeEvent::CallMedia`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::call::{
    CallConfig, CallError, CallEvent, CallMachine, PathAction, PathConfig, PathEvent, PathKind,
    PathManager, SwitchReason,
};
use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::{ConnId, EndpointEvent, Path, SendError};
use natter_core::overlay::{LinkTransport, PresenceRecord, SearchOutcome, SearchResult};
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, StreamCommand, StreamId, Transmit};
use natter_core::wire::message::{CallId, Candidate, CandidateKind, Message, MessageType};
use natter_core::wire::stun::{Message as StunMessage, TransactionId};

use super::parts::{Cx, Notice, PartId};
use super::NodeEvent;

/// Streams this part opens are numbered from here (the attacher's start at 0).
const STREAM_BASE: u64 = 1 << 40;
/// A call's relay channels are given back this long after it ended: its last signalling (a
/// cancel while ringing, a decline) still crosses them, retransmissions included.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// A silent relay whose super node does not answer a ping within this is replaced.
const RELAY_PING_TIMEOUT: Duration = Duration::from_millis(250);
/// A replacement relay not granted this long after it was asked for is given up (the next
/// quiet report tries another).
const REPLACE_TIMEOUT: Duration = Duration::from_secs(3);
/// While a call's fresh port asks a super node for its reflexive address, the request is
/// repeated this often...
const REBIND_STUN_EVERY: Duration = Duration::from_millis(200);
/// ...for at most this long (the NAT may still be down), then the rebind failed.
const REBIND_TIMEOUT: Duration = Duration::from_secs(3);
/// Most pokes searching at once ([`super::Node::poke`]); past it a poke is dropped (the
/// device syncs at its next pull anyway).
const MAX_POKES: usize = 256;
/// Most messages of other parts waiting for one super node's session ([`Notice::PostVia`]).
const MAX_POSTS: usize = 512;

/// Why a relay channel is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// To reach a device for a new call (the session runs through it).
    Dial,
    /// To replace the connected call's relay, which stopped working.
    Replace,
    /// No relay: to poke the device ([`Message::ContactPoke`]) over our session with its
    /// super node.
    Poke,
}

/// How a dial ended before the call machine took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutcome {
    /// The call is placed: its id (events about it follow as [`NodeEvent::Call`]).
    Calling(CallId),
    /// It could not be placed.
    Failed(DialError),
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The index has no such user.
    #[error("no such user")]
    NotFound,
    /// The user exists but no device of theirs is online.
    #[error("the user is offline")]
    Offline,
    /// The index could not be asked (not attached, too few replicas answered).
    #[error("the index could not be searched")]
    Unavailable,
    /// The call machine refused (already in a call, ...).
    #[error("{0}")]
    Call(CallError),
}

#[derive(Debug)]
struct DeviceLink {
    /// The end-to-end session, once asked for (it may still be handshaking).
    conn: Option<ConnId>,
    up: bool,
    record: Option<PresenceRecord>,
    /// Call messages waiting for the session.
    queue: Vec<Message<'static>>,
    /// Super nodes still to try for a relay.
    sns_left: VecDeque<SocketAddr>,
    /// The relay in use: super node and channel.
    relay: Option<(SocketAddr, u32)>,
}

impl DeviceLink {
    fn incoming() -> Self {
        Self {
            conn: None,
            up: false,
            record: None,
            queue: Vec::new(),
            sns_left: VecDeque::new(),
            relay: None,
        }
    }
}

#[derive(Debug, Default)]
struct RelaySn {
    conn: Option<ConnId>,
    up: bool,
    /// Devices waiting for this super node's session to ask for a relay, and why.
    waiting: Vec<(DeviceId, Purpose)>,
    /// Call sessions (and their relay channel) waiting for this super node's UDP session to
    /// move our leg of the channel onto it.
    legs: Vec<(ConnId, u32)>,
    /// Encoded messages of other parts (chat) waiting for the session, sent on it once up
    /// ([`Notice::PostVia`]); at most [`MAX_POSTS`], the oldest dropped first (their sender
    /// sends them again).
    posts: VecDeque<Vec<u8>>,
}

/// One attempt at a TCP stream to a super node for relays.
#[derive(Debug, Clone, Copy)]
struct RelayStream {
    sn: SocketAddr,
    /// The port being tried.
    transport: LinkTransport,
    /// The port tried first.
    first: LinkTransport,
}

/// The connected call's connectivity.
#[derive(Debug)]
struct Connected {
    call: CallId,
    device: DeviceId,
    conn: ConnId,
    paths: PathManager,
    /// This side chooses paths (and replaces a dead relay): the caller.
    controlling: bool,
    /// When the relay's super node was pinged, the relay being silent, and has not answered.
    relay_ping: Option<Instant>,
    /// A replacement relay asked for, and when.
    replacing: Option<Instant>,
    /// Super nodes tried for a replacement relay.
    tried: Vec<SocketAddr>,
    /// A fresh port being opened.
    rebind: Option<Rebind>,
    /// Ports the call left that its active path may still use (a direct path from one came
    /// back during a rebind): closed once it does not.
    retired: Vec<SocketAddr>,
}

/// A fresh port being opened for the connected call's direct paths ([`PathAction::Rebind`]):
/// the driver opens the socket, then a super node tells its reflexive address.
#[derive(Debug)]
struct Rebind {
    /// The name of the driver request.
    token: u64,
    /// The new socket, once open.
    local: Option<SocketAddr>,
    /// The super node asked.
    server: SocketAddr,
    /// The STUN request's transaction.
    transaction: TransactionId,
    /// When the request is repeated.
    next_send: Option<Instant>,
    /// When the rebind has failed.
    deadline: Instant,
}

impl Rebind {
    /// The STUN request asking the super node for the reflexive address of `local`.
    fn request(&self, local: SocketAddr) -> Transmit {
        Transmit {
            destination: Destination::Udp(self.server),
            source: Some(local),
            payload: StunMessage::binding_request(self.transaction)
                .encode()
                .into(),
            ttl: None,
        }
    }
}

/// The calls part. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Calls {
    machine: CallMachine,
    path_cfg: PathConfig,
    /// Searches run for dials: search id -> dial id.
    dials: BTreeMap<u64, u64>,
    /// Searches run for pokes.
    pokes: BTreeSet<u64>,
    next_dial: u64,
    devices: BTreeMap<DeviceId, DeviceLink>,
    conn_device: BTreeMap<ConnId, DeviceId>,
    relay_requests: BTreeMap<u32, (DeviceId, SocketAddr, Purpose)>,
    next_request: u32,
    relay_sns: BTreeMap<SocketAddr, RelaySn>,
    relay_sn_conns: BTreeMap<ConnId, SocketAddr>,
    /// Streams to super nodes for relays: the super node, the port being tried, and the one
    /// tried first (the ports are tried in turn from there, each once).
    relay_streams: BTreeMap<StreamId, RelayStream>,
    next_stream: u64,
    /// Our outgoing call (this side controls the path).
    outgoing: Option<CallId>,
    /// The session the last invite arrived on: an incoming call runs on it.
    invite_conn: Option<(CallId, ConnId)>,
    /// The session each call signals on with each device: an outgoing call on the session
    /// opened for it, an incoming one on the session its invite came by. A device may still
    /// hold an older session (an unanswered call's, whose relay channel is gone): signalling
    /// sent there would never arrive.
    call_sessions: BTreeMap<(CallId, DeviceId), ConnId>,
    /// Relay channels of ended calls, given back at these instants.
    releases: Vec<(Instant, (SocketAddr, u32))>,
    /// Ports of ended calls to close, and when: like relays, once the call's last words had
    /// time to cross them.
    socket_closes: Vec<(Instant, SocketAddr)>,
    /// Our UDP leg of the relay channel of call sessions peers opened to us through a relay.
    udp_legs: BTreeMap<ConnId, Path>,
    /// The connected call's connectivity.
    connected: Option<Connected>,
    /// Transaction ids of the STUN requests of fresh ports.
    rng: Rng,
    /// Names of driver requests ([`StreamCommand::BindUdp`]).
    next_token: u64,
    /// Users whose invites are dropped unanswered (the user blocked them).
    blocked: BTreeSet<UserName>,
}

impl Calls {
    /// The calls of device `device` (`seed`: this part's random draws).
    pub fn new(
        device: DeviceId,
        cfg: CallConfig,
        path_cfg: PathConfig,
        seed: [u8; 32],
        now: Instant,
    ) -> Self {
        Self {
            rng: Rng::from_seed_bytes(seed),
            next_token: 0,
            blocked: BTreeSet::new(),
            machine: CallMachine::new(device, cfg, now),
            path_cfg,
            dials: BTreeMap::new(),
            pokes: BTreeSet::new(),
            next_dial: 0,
            devices: BTreeMap::new(),
            conn_device: BTreeMap::new(),
            relay_requests: BTreeMap::new(),
            next_request: 0,
            relay_sns: BTreeMap::new(),
            relay_sn_conns: BTreeMap::new(),
            relay_streams: BTreeMap::new(),
            next_stream: STREAM_BASE,
            outgoing: None,
            invite_conn: None,
            call_sessions: BTreeMap::new(),
            releases: Vec::new(),
            socket_closes: Vec::new(),
            udp_legs: BTreeMap::new(),
            connected: None,
        }
    }

    /// The call signalling machine (state of the current call, counters).
    pub fn machine(&self) -> &CallMachine {
        &self.machine
    }

    /// A new dial's id.
    pub fn next_dial(&mut self) -> u64 {
        self.next_dial += 1;
        self.next_dial
    }

    /// Dial `dial` waits for search `search`.
    pub fn dialling(&mut self, search: u64, dial: u64) {
        self.dials.insert(search, dial);
    }

    /// Run a command of the call machine (answer, decline, hang up, hold, resume).
    pub fn command(
        &mut self,
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut CallMachine, Instant) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let r = f(&mut self.machine, cx.now);
        self.flush(cx);
        r
    }

    /// Send one media frame on the connected call `call`.
    pub fn send_media(
        &mut self,
        cx: &mut Cx<'_>,
        call: CallId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        let conn = match &self.connected {
            Some(c) if c.call == call => c.conn,
            _ => return Err(SendError::UnknownConnection),
        };
        cx.sessions.endpoint().send_media(cx.now, conn, frame)
    }

    /// The path the connected call uses, and its kind.
    pub fn call_path(&self, call: CallId) -> Option<(Path, PathKind)> {
        match &self.connected {
            Some(c) if c.call == call => {
                let (path, kind) = c.paths.active();
                Some((path.clone(), kind))
            }
            _ => None,
        }
    }

    /// A notice from another part.
    pub fn on_notice(&mut self, cx: &mut Cx<'_>, notice: Notice) {
        match notice {
            Notice::SearchDone { id, outcome } => self.search_done(cx, id, outcome),
            Notice::FactsChanged => self.refresh_candidates(cx),
            // A link we asked relays through (UDP blocked here) is gone.
            Notice::Unlinked { link, .. } if self.relay_sn_conns.contains_key(&link.conn) => {
                self.relay_sn_gone(cx, link.conn, false);
            }
            Notice::PostVia { sn, messages } => self.post_via(cx, sn, messages),
            _ => {}
        }
        self.flush(cx);
    }

    /// Send other parts' messages to super node `sn`, over our session with it (opened, over
    /// UDP or TCP as for relays, when there is none).
    fn post_via(&mut self, cx: &mut Cx<'_>, sn: SocketAddr, messages: Vec<Vec<u8>>) {
        let entry = self.relay_sns.entry(sn).or_default();
        if entry.up {
            if let Some(conn) = entry.conn {
                for m in &messages {
                    post_on(cx, conn, m);
                }
            }
            return;
        }
        for m in messages {
            if entry.posts.len() >= MAX_POSTS {
                entry.posts.pop_front();
                cx.out.stats.overlay_dropped += 1;
            }
            entry.posts.push_back(m);
        }
        if entry.conn.is_some() || self.relay_streams.values().any(|r| r.sn == sn) {
            return;
        }
        self.open_relay_session(cx, sn);
    }

    /// Room for another poke's search ([`MAX_POKES`]).
    pub fn may_poke(&self) -> bool {
        self.pokes.len() < MAX_POKES
    }

    /// The search `search` looks for a user to poke ([`super::Node::poke`]).
    pub fn poking(&mut self, search: u64) {
        if self.may_poke() {
            self.pokes.insert(search);
        }
    }

    /// Poke every online device the search found (but this one) through one of its super
    /// nodes: over our session with it (opened as for a relay), or in our own role when we
    /// are that super node.
    fn poke_found(&mut self, cx: &mut Cx<'_>, outcome: SearchOutcome) {
        let SearchResult::Found(records) = outcome.result else {
            return;
        };
        let me = cx.cfg.identity.device.device_id();
        for r in records
            .iter()
            .filter(|r| r.online && r.certificate.device != me)
        {
            let device = r.certificate.device;
            if cx.facts.super_node && r.super_nodes.contains(&cx.cfg.listen) {
                cx.out
                    .notify(PartId::SuperNode, Notice::PokeHere { device });
            } else if let Some(sn) = r.super_nodes.first() {
                self.relay_via(cx, *sn, device, Purpose::Poke);
            }
        }
    }

    /// Our super node forwards a poke: reported when it came over one of our links.
    fn poked(&mut self, cx: &mut Cx<'_>, conn: ConnId, from: &UserName) {
        if cx.facts.links.iter().any(|l| l.conn == conn) {
            cx.out
                .events
                .push_back(NodeEvent::Poked { from: from.clone() });
        } else {
            cx.out.stats.overlay_dropped += 1;
        }
    }

    /// A search ended: a poke's (poke the devices found), or a dial's (place the call, or
    /// say why not).
    fn search_done(&mut self, cx: &mut Cx<'_>, search: u64, outcome: SearchOutcome) {
        if self.pokes.remove(&search) {
            self.poke_found(cx, outcome);
            return;
        }
        let Some(dial) = self.dials.remove(&search) else {
            return;
        };
        let result = match outcome.result {
            SearchResult::NotFound => Err(DialError::NotFound),
            SearchResult::Unavailable => Err(DialError::Unavailable),
            SearchResult::Found(records) => {
                let me = cx.cfg.identity.device.device_id();
                let online: Vec<PresenceRecord> = records
                    .into_iter()
                    .filter(|r| r.online && r.certificate.device != me)
                    .collect();
                if online.is_empty() {
                    Err(DialError::Offline)
                } else {
                    self.place_call(cx, outcome.user.clone(), online)
                }
            }
        };
        let outcome = match result {
            Ok(call) => DialOutcome::Calling(call),
            Err(e) => DialOutcome::Failed(e),
        };
        cx.out.events.push_back(NodeEvent::Dial { dial, outcome });
    }

    fn place_call(
        &mut self,
        cx: &mut Cx<'_>,
        user: UserName,
        records: Vec<PresenceRecord>,
    ) -> Result<CallId, DialError> {
        let devices: Vec<DeviceId> = records.iter().map(|r| r.certificate.device).collect();
        let call = self
            .machine
            .call(cx.now, user, &devices)
            .map_err(DialError::Call)?;
        self.outgoing = Some(call);
        for r in records {
            let device = r.certificate.device;
            // Sessions left from an earlier call with the device are not reused: their relay
            // channel was released, and they may sit on a direct path that has no relay
            // behind it any more. Every call gets a relay (and a session through it) of its
            // own.
            let old: Vec<ConnId> = self
                .conn_device
                .iter()
                .filter(|(_, d)| **d == device)
                .map(|(c, _)| *c)
                .collect();
            for c in old {
                self.conn_device.remove(&c);
                self.udp_legs.remove(&c);
                cx.sessions.close(cx.now, c);
            }
            self.devices.insert(
                device,
                DeviceLink {
                    sns_left: r.super_nodes.iter().copied().collect(),
                    record: Some(r),
                    ..DeviceLink::incoming()
                },
            );
            self.dial_device(cx, device);
        }
        Ok(call)
    }

    /// Ask the next super node of `device` for a relay to it.
    fn dial_device(&mut self, cx: &mut Cx<'_>, device: DeviceId) {
        let Some(sn) = self
            .devices
            .get_mut(&device)
            .and_then(|l| l.sns_left.pop_front())
        else {
            // No super node of the device can relay to it: its invites stay queued and the
            // call machine ends the call as missed if no other device answers.
            return;
        };
        self.relay_via(cx, sn, device, Purpose::Dial);
    }

    /// Ask super node `sn` for a relay channel to `device`, over a session with it (opened
    /// first when there is none).
    fn relay_via(&mut self, cx: &mut Cx<'_>, sn: SocketAddr, device: DeviceId, purpose: Purpose) {
        let entry = self.relay_sns.entry(sn).or_default();
        if entry.up {
            if let Some(conn) = entry.conn {
                self.ask_relay(cx, conn, sn, device, purpose);
            }
            return;
        }
        entry.waiting.push((device, purpose));
        if entry.conn.is_some() || self.relay_streams.values().any(|r| r.sn == sn) {
            return;
        }
        self.open_relay_session(cx, sn);
    }

    /// A session with super node `sn` for relays: over UDP, or over TCP when UDP is blocked
    /// here (a link we have to it, else a stream of our own).
    fn open_relay_session(&mut self, cx: &mut Cx<'_>, sn: SocketAddr) {
        if cx.facts.udp_blocked_here() {
            if let Some(conn) = cx.facts.link_to(sn) {
                self.relay_sn_up(cx, sn, conn);
                return;
            }
            // Start on the port our links got through (a firewall that passes only the TLS
            // port would make each port before it time out), then try the others.
            let first = cx.facts.link_transport.unwrap_or(LinkTransport::Tcp);
            self.open_relay_stream(
                cx,
                RelayStream {
                    sn,
                    transport: first,
                    first,
                },
            );
        } else {
            self.open_udp_session(cx, sn);
        }
    }

    /// A UDP session with super node `sn`, for relays.
    fn open_udp_session(&mut self, cx: &mut Cx<'_>, sn: SocketAddr) {
        match cx.sessions.connect(cx.now, Destination::Udp(sn), None) {
            Ok(conn) => {
                cx.out.notify(PartId::Uplink, Notice::UdpContacted(sn));
                self.relay_sns.entry(sn).or_default().conn = Some(conn);
                self.relay_sn_conns.insert(conn, sn);
            }
            Err(_) => self.relay_sn_failed(cx, sn),
        }
    }

    /// A TCP stream to a super node for relays, on the port `attempt` names.
    fn open_relay_stream(&mut self, cx: &mut Cx<'_>, attempt: RelayStream) {
        let ports = cx.cfg.attach.fallback_ports;
        let remote = attempt.transport.address(attempt.sn, ports);
        let stream = StreamId::local(self.next_stream);
        self.next_stream += 1;
        self.relay_streams.insert(stream, attempt);
        let tls = attempt.transport == LinkTransport::Tls;
        cx.sessions.open_stream(cx.out, stream, remote, tls);
    }

    /// A stream this part asked for is connected: run the session with the super node on it.
    pub fn on_stream_opened(&mut self, cx: &mut Cx<'_>, stream: StreamId) {
        let Some(sn) = self.relay_streams.get(&stream).map(|r| r.sn) else {
            return;
        };
        match cx
            .sessions
            .connect(cx.now, Destination::Stream(stream), None)
        {
            Ok(conn) => {
                self.relay_sns.entry(sn).or_default().conn = Some(conn);
                self.relay_sn_conns.insert(conn, sn);
            }
            Err(_) => self.relay_sn_failed(cx, sn),
        }
        self.flush(cx);
    }

    /// A stream of ours closed (or could not be opened).
    pub fn on_stream_closed(&mut self, cx: &mut Cx<'_>, stream: StreamId) {
        if let Some(attempt) = self.relay_streams.remove(&stream) {
            let sn = attempt.sn;
            let entry = self.relay_sns.get(&sn);
            let up = entry.is_some_and(|e| e.up);
            let session = entry.and_then(|e| e.conn);
            let next = attempt.transport.cycle();
            if !up && session.is_none() && next != attempt.first {
                // Refused or timed out before any session ran: the next port.
                self.open_relay_stream(
                    cx,
                    RelayStream {
                        transport: next,
                        ..attempt
                    },
                );
            } else if !up {
                self.relay_sn_failed(cx, sn);
            } else {
                self.relay_sns.remove(&sn);
            }
        }
        self.flush(cx);
    }

    fn relay_sn_up(&mut self, cx: &mut Cx<'_>, sn: SocketAddr, conn: ConnId) {
        let entry = self.relay_sns.entry(sn).or_default();
        entry.conn = Some(conn);
        entry.up = true;
        let waiting = std::mem::take(&mut entry.waiting);
        let legs = std::mem::take(&mut entry.legs);
        let posts = std::mem::take(&mut entry.posts);
        self.relay_sn_conns.insert(conn, sn);
        for post in posts {
            post_on(cx, conn, &post);
        }
        for (device, purpose) in waiting {
            self.ask_relay(cx, conn, sn, device, purpose);
        }
        for (call_conn, channel) in legs {
            self.use_udp_leg(cx, sn, conn, call_conn, channel);
        }
    }

    /// A peer opened call session `call_conn` to us through relay channel `channel` over our
    /// link `stream` to a super node: unless UDP is blocked here, open a UDP session with that
    /// super node (or use the one we have) and move our leg of the channel onto it.
    fn open_udp_leg(&mut self, cx: &mut Cx<'_>, call_conn: ConnId, stream: StreamId, channel: u32) {
        if cx.facts.udp_blocked_here() {
            return;
        }
        let sn = cx
            .facts
            .link_on(stream)
            .map(|l| l.addr)
            .or_else(|| cx.stream_remotes.get(&stream).copied());
        let Some(sn) = sn else {
            return;
        };
        let entry = self.relay_sns.entry(sn).or_default();
        if entry.up {
            if let Some(conn) = entry.conn {
                self.use_udp_leg(cx, sn, conn, call_conn, channel);
            }
            return;
        }
        entry.legs.push((call_conn, channel));
        if entry.conn.is_none() {
            self.open_udp_session(cx, sn);
        }
    }

    /// Our UDP session `conn` with super node `sn` is up: call session `call_conn` moves its
    /// leg of relay channel `channel` there (the relay sends to the session a party last sent
    /// from).
    fn use_udp_leg(
        &mut self,
        cx: &mut Cx<'_>,
        sn: SocketAddr,
        conn: ConnId,
        call_conn: ConnId,
        channel: u32,
    ) {
        if !matches!(
            cx.sessions.view().remote(conn),
            Some(Path::Direct {
                to: Destination::Udp(_),
                ..
            })
        ) || !self.conn_device.contains_key(&call_conn)
        {
            return;
        }
        let leg = Path::Relayed {
            relay: Destination::Udp(sn),
            channel,
        };
        self.udp_legs.insert(call_conn, leg.clone());
        match self.connected.as_mut() {
            Some(c) if c.conn == call_conn => c.paths.set_relay(cx.now, leg),
            _ => {
                if is_other_leg(cx.sessions.view().remote(call_conn), &leg) {
                    cx.sessions.endpoint().set_path(call_conn, leg);
                }
            }
        }
    }

    fn relay_sn_failed(&mut self, cx: &mut Cx<'_>, sn: SocketAddr) {
        if let Some(entry) = self.relay_sns.remove(&sn) {
            if let Some(c) = entry.conn {
                self.relay_sn_conns.remove(&c);
            }
            for (device, purpose) in entry.waiting {
                match purpose {
                    Purpose::Dial => self.dial_device(cx, device),
                    // The next quiet report tries another super node.
                    Purpose::Replace => {
                        if let Some(c) = self.connected.as_mut() {
                            c.replacing = None;
                        }
                    }
                    // A hint only: the device syncs at its next pull anyway.
                    Purpose::Poke => {}
                }
            }
        }
    }

    /// Our session `conn` with a relaying super node ended (`failed`: it never came up).
    fn relay_sn_gone(&mut self, cx: &mut Cx<'_>, conn: ConnId, failed: bool) {
        let Some(sn) = self.relay_sn_conns.remove(&conn) else {
            return;
        };
        let up = self.relay_sns.get(&sn).is_some_and(|e| e.up);
        if up && !failed {
            self.relay_sns.remove(&sn);
        } else {
            self.relay_sn_failed(cx, sn);
        }
    }

    fn ask_relay(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        sn: SocketAddr,
        device: DeviceId,
        purpose: Purpose,
    ) {
        if purpose == Purpose::Poke {
            let _ = cx
                .sessions
                .send(cx.now, conn, &Message::ContactPoke { device });
            return;
        }
        self.next_request = self.next_request.wrapping_add(1);
        let request = self.next_request;
        self.relay_requests.insert(request, (device, sn, purpose));
        let _ = cx
            .sessions
            .send(cx.now, conn, &Message::RelayAllocate { request, device });
    }

    /// An event of a session this part owns. Returns false when the event is not about a
    /// call (the application hears it then).
    pub fn on_session(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let consumed = self.session_event(cx, e);
        self.flush(cx);
        consumed
    }

    fn session_event(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let now = cx.now;
        match e {
            EndpointEvent::Connected {
                conn,
                peer,
                remote,
                initiator,
            } => self.connected(cx, *conn, peer.certificate.device, remote, *initiator),
            EndpointEvent::ConnectFailed { conn, .. } => self.session_ended(cx, *conn, true),
            EndpointEvent::Closed { conn, .. } => self.session_ended(cx, *conn, false),
            EndpointEvent::Media { conn, path, data } => {
                let Some(device) = self.conn_device.get(conn).copied() else {
                    return false;
                };
                self.machine.handle_heard(now, device);
                if let Some(c) = self.connected.as_mut().filter(|c| c.conn == *conn) {
                    c.relay_ping = None;
                    c.paths.media_received(now, path, data);
                    cx.out.events.push_back(NodeEvent::CallMedia {
                        call: c.call,
                        data: data.clone(),
                    });
                }
                true
            }
            EndpointEvent::Pong { conn, .. } if self.relay_sn_conns.contains_key(conn) => {
                // A relay's super node answered: it is alive (and knows where we are now).
                let relay = self.connected.as_ref().map(|c| c.paths.relay().clone());
                if relay.is_some_and(|r| self.relay_session_of(cx, &r) == Some(*conn)) {
                    if let Some(c) = self.connected.as_mut() {
                        c.relay_ping = None;
                    }
                }
                true
            }
            EndpointEvent::ProbeAnswered {
                conn, path, rtt, ..
            } => {
                if let Some(c) = self.connected.as_mut().filter(|c| c.conn == *conn) {
                    c.paths.probe_answered(now, path, *rtt);
                }
                self.conn_device.contains_key(conn)
            }
            EndpointEvent::ProbeReceived { conn, path } => {
                if let Some(c) = self.connected.as_mut().filter(|c| c.conn == *conn) {
                    c.paths.probe_received(now, path);
                }
                self.conn_device.contains_key(conn)
            }
            EndpointEvent::PathChanged { conn, remote } => {
                match self.connected.as_mut() {
                    Some(c) if c.conn == *conn => c.paths.path_changed(now, remote),
                    _ => {
                        // Before the call connects, the session stays on our UDP leg too.
                        if let Some(leg) = self.udp_legs.get(conn).cloned() {
                            if is_other_leg(Some(remote), &leg) {
                                cx.sessions.endpoint().set_path(*conn, leg);
                            }
                        }
                    }
                }
                self.conn_device.contains_key(conn)
            }
            _ => false,
        }
    }

    /// A session is up: one with a relaying super node, one we opened to a callee device, or
    /// one a peer opened to us through a relay (an incoming call session).
    fn connected(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        proven: DeviceId,
        remote: &Path,
        initiator: bool,
    ) -> bool {
        if let Some(sn) = self.relay_sn_conns.get(&conn).copied() {
            self.relay_sn_up(cx, sn, conn);
            return true;
        }
        if let Some(device) = self.conn_device.get(&conn).copied() {
            if proven != device {
                // IK bound the session to the key in the record; a certificate for another
                // device with that key cannot happen, but never trust it.
                cx.sessions.close(cx.now, conn);
                return true;
            }
            if let Some(link) = self.devices.get_mut(&device) {
                link.up = true;
                for m in std::mem::take(&mut link.queue) {
                    let _ = cx.sessions.send(cx.now, conn, &m);
                }
            }
            return true;
        }
        if initiator || !remote.is_relayed() {
            return false;
        }
        // A peer reached us through a relay: a call session.
        self.conn_device.insert(conn, proven);
        let link = self
            .devices
            .entry(proven)
            .or_insert_with(DeviceLink::incoming);
        // Call messages are taken from every session with the device. In glare both sides
        // opened one: each keeps sending on its own, and a call runs on the session its caller
        // invited on (see `invite_conn`).
        if !link.up || link.conn.is_none() {
            link.conn = Some(conn);
            link.up = true;
            for m in std::mem::take(&mut link.queue) {
                let _ = cx.sessions.send(cx.now, conn, &m);
            }
        }
        if let Path::Relayed {
            relay: Destination::Stream(stream),
            channel,
        } = remote
        {
            self.open_udp_leg(cx, conn, *stream, *channel);
        }
        true
    }

    /// A session of ours ended (`failed`: it never came up).
    fn session_ended(&mut self, cx: &mut Cx<'_>, conn: ConnId, failed: bool) -> bool {
        if self.relay_sn_conns.contains_key(&conn) {
            self.relay_sn_gone(cx, conn, failed);
            return true;
        }
        let Some(device) = self.conn_device.remove(&conn) else {
            return false;
        };
        self.udp_legs.remove(&conn);
        self.call_sessions.retain(|_, c| *c != conn);
        let was_up = self
            .devices
            .get(&device)
            .is_some_and(|l| l.up && l.conn == Some(conn));
        // Another session with the device, if there is one (glare left two).
        let other = self
            .conn_device
            .iter()
            .filter(|(_, d)| **d == device)
            .map(|(c, _)| *c)
            .min();
        if let Some(link) = self.devices.get_mut(&device) {
            if link.conn == Some(conn) {
                link.conn = other;
                link.up = other.is_some();
                link.relay = None;
            }
        }
        if self.connected.as_ref().is_some_and(|c| c.conn == conn) {
            self.disconnect(cx);
        }
        if !was_up && failed {
            // The handshake through this relay failed: try another super node.
            self.dial_device(cx, device);
        }
        true
    }

    /// Refuse invites with Busy (do not disturb), or ring again.
    pub fn set_do_not_disturb(&mut self, on: bool) {
        self.machine.set_do_not_disturb(on);
    }

    /// Drop the invites of `users` from now on (calls already ringing go on).
    pub fn set_blocked(&mut self, users: BTreeSet<UserName>) {
        self.blocked = users;
    }

    /// A call message from a peer device, a media report, or a relay's answer.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        self.message(cx, conn, msg);
        self.flush(cx);
    }

    fn message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        let now = cx.now;
        if let Message::ContactPoked { from } = msg {
            if self.blocked.contains(from) {
                // Nothing of theirs is wanted: not even a sync for it.
                cx.out.stats.overlay_dropped += 1;
            } else {
                self.poked(cx, conn, from);
            }
            return;
        }
        if let Some(device) = self.conn_device.get(&conn).copied() {
            let t = msg.message_type() as u8;
            let is_call = (MessageType::CallInvite as u8..=MessageType::CallKeepAlive as u8)
                .contains(&t)
                && !matches!(msg, Message::CallCandidates { .. });
            if is_call {
                let user = cx
                    .sessions
                    .view()
                    .peer(conn)
                    .map(|p| p.certificate.user.clone());
                if let Message::CallInvite { call, .. } = msg {
                    if user.as_ref().is_some_and(|u| self.blocked.contains(u)) {
                        // Never rings, never answered: the caller hears no answer.
                        cx.out.stats.calls_blocked += 1;
                        return;
                    }
                    self.invite_conn = Some((*call, conn));
                    self.call_sessions.insert((*call, device), conn);
                }
                if let Some(user) = user {
                    self.machine.handle_message(now, device, &user, msg);
                }
            } else if matches!(
                msg,
                Message::CallCandidates { .. } | Message::MediaReport { .. }
            ) {
                self.machine.handle_heard(now, device);
                if let Some(c) = self.connected.as_mut().filter(|c| c.conn == conn) {
                    c.paths.handle_message(now, msg);
                }
            } else {
                cx.out.stats.overlay_dropped += 1;
            }
            return;
        }
        match msg {
            Message::RelayAllocated { request, channel } => {
                let Some((device, sn, purpose)) = self.relay_requests.remove(request) else {
                    return;
                };
                let Some(via) = cx
                    .sessions
                    .view()
                    .remote(conn)
                    .map(|p| p.transport().clone())
                else {
                    return;
                };
                let path = Path::Relayed {
                    relay: via,
                    channel: *channel,
                };
                match purpose {
                    Purpose::Dial => self.dial_through(cx, device, sn, *channel, path),
                    Purpose::Replace => self.relay_replaced(cx, device, sn, *channel, path),
                    // Never asked for a channel.
                    Purpose::Poke => cx.out.stats.overlay_dropped += 1,
                }
            }
            Message::RelayRefused { request, .. } => match self.relay_requests.remove(request) {
                Some((device, _, Purpose::Dial)) => self.dial_device(cx, device),
                Some((_, _, Purpose::Replace)) => {
                    if let Some(c) = self.connected.as_mut() {
                        c.replacing = None;
                    }
                }
                Some((_, _, Purpose::Poke)) | None => {}
            },
            // A relay channel was opened to us: for a new call the peer's handshake follows on
            // it; for the connected call it replaces a relay that died.
            Message::RelayOffer { channel, device } => {
                self.relay_offered(cx, conn, *channel, *device)
            }
            // A relay we use let a channel go (the call ends, or moves to another path).
            Message::RelayRelease { .. } => {}
            _ => cx.out.stats.overlay_dropped += 1,
        }
    }

    /// A relay channel to `device` for a new call: open the end-to-end session through it.
    fn dial_through(
        &mut self,
        cx: &mut Cx<'_>,
        device: DeviceId,
        sn: SocketAddr,
        channel: u32,
        path: Path,
    ) {
        let key = self
            .devices
            .get(&device)
            .and_then(|l| l.record.as_ref())
            .map(|r| r.certificate.dh_public);
        let Some(key) = key else {
            return;
        };
        if let Ok(e2e) = cx.sessions.connect(cx.now, path, Some(key)) {
            self.conn_device.insert(e2e, device);
            if let Some(call) = self.outgoing {
                self.call_sessions.insert((call, device), e2e);
            }
            if let Some(link) = self.devices.get_mut(&device) {
                link.conn = Some(e2e);
                link.relay = Some((sn, channel));
            }
        }
    }

    /// A replacement relay channel for the connected call was granted: the call moves there
    /// (the peer follows when our first packet arrives through it, and the super node offered
    /// it the channel), and the old channel is given back.
    fn relay_replaced(
        &mut self,
        cx: &mut Cx<'_>,
        device: DeviceId,
        sn: SocketAddr,
        channel: u32,
        path: Path,
    ) {
        let Some(c) = self.connected.as_mut().filter(|c| c.device == device) else {
            // The call ended meanwhile.
            self.release_relay(cx, (sn, channel));
            return;
        };
        c.replacing = None;
        c.relay_ping = None;
        c.paths.replace_relay(cx.now, path, SwitchReason::Dead);
        let old = self
            .devices
            .get_mut(&device)
            .and_then(|l| l.relay.replace((sn, channel)));
        if let Some(old) = old.filter(|o| *o != (sn, channel)) {
            self.release_relay(cx, old);
        }
    }

    /// A super node offers us a relay channel to `device`, on our session `conn` with it.
    /// While a call with that device is connected and its relay is another super node's, the
    /// peer replaced a relay that died: this side's leg is the new channel, over UDP when it
    /// can be.
    fn relay_offered(&mut self, cx: &mut Cx<'_>, conn: ConnId, channel: u32, device: DeviceId) {
        let Some(c) = self.connected.as_mut().filter(|c| c.device == device) else {
            return;
        };
        let Some(via) = cx
            .sessions
            .view()
            .remote(conn)
            .map(|p| p.transport().clone())
        else {
            return;
        };
        let same_relay =
            matches!(c.paths.relay(), Path::Relayed { channel: ch, .. } if *ch == channel);
        if same_relay {
            return;
        }
        let leg = Path::Relayed {
            relay: via.clone(),
            channel,
        };
        c.relay_ping = None;
        c.paths.replace_relay(cx.now, leg, SwitchReason::Peer);
        let call_conn = c.conn;
        if let Destination::Stream(stream) = via {
            self.open_udp_leg(cx, call_conn, stream, channel);
        }
    }

    /// The connected call's relay is in use and silent: make sure its super node still knows
    /// our address (a ping on our session with it moves the session, and the relay with it,
    /// to the address our NAT gives us now), ask our reflexive address again, and on the
    /// controlling side watch for the ping's answer: a super node that does not answer is
    /// replaced.
    fn relay_quiet(&mut self, cx: &mut Cx<'_>) {
        let Some(relay) = self.connected.as_ref().map(|c| c.paths.relay().clone()) else {
            return;
        };
        if let Some(conn) = self.relay_session_of(cx, &relay) {
            let _ = cx.sessions.endpoint().ping(cx.now, conn);
        }
        cx.out.notify(PartId::Uplink, Notice::RecheckReflexive);
        if let Some(c) = self.connected.as_mut().filter(|c| c.controlling) {
            c.relay_ping.get_or_insert(cx.now);
        }
    }

    /// Our session with the super node that relays on `relay`.
    fn relay_session_of(&self, cx: &Cx<'_>, relay: &Path) -> Option<ConnId> {
        match relay {
            Path::Relayed {
                relay: Destination::Udp(sn),
                ..
            } => self.relay_sns.get(sn).and_then(|e| e.conn),
            Path::Relayed {
                relay: Destination::Stream(stream),
                ..
            } => cx.facts.link_on(*stream).map(|l| l.conn).or_else(|| {
                self.relay_sn_conns
                    .keys()
                    .copied()
                    .find(|c| cx.sessions.view().remote(*c) == Some(&Path::stream(*stream)))
            }),
            Path::Direct { .. } => None,
        }
    }

    /// Ask another super node of the peer for a relay channel to replace the connected call's.
    fn replace_relay(&mut self, cx: &mut Cx<'_>) {
        let Some(c) = self.connected.as_mut() else {
            return;
        };
        let device = c.device;
        let current = self.devices.get(&device).and_then(|l| l.relay).map(|r| r.0);
        let known: Vec<SocketAddr> = self
            .devices
            .get(&device)
            .and_then(|l| l.record.as_ref())
            .map(|r| r.super_nodes.clone())
            .unwrap_or_default();
        let untried =
            |c: &Connected, sn: &SocketAddr| Some(*sn) != current && !c.tried.contains(sn);
        let mut next = known.iter().find(|sn| untried(c, sn)).copied();
        if next.is_none() {
            // Every one tried: start over (a super node that was down may be back).
            c.tried.clear();
            next = known.iter().find(|sn| Some(**sn) != current).copied();
        }
        let Some(sn) = next else {
            return;
        };
        c.tried.push(sn);
        c.replacing = Some(cx.now);
        c.relay_ping = None;
        self.relay_via(cx, sn, device, Purpose::Replace);
    }

    /// A session with the next super node that could relay the connected call, opened ahead
    /// of need: a relay that dies is then replaced in one round trip.
    fn prepare_standby(&mut self, cx: &mut Cx<'_>, device: DeviceId, current: Option<SocketAddr>) {
        let standby = self
            .devices
            .get(&device)
            .and_then(|l| l.record.as_ref())
            .and_then(|r| {
                r.super_nodes
                    .iter()
                    .copied()
                    .find(|sn| Some(*sn) != current)
            });
        if let Some(sn) = standby {
            if !self.relay_sns.contains_key(&sn) && !cx.facts.udp_blocked_here() {
                self.relay_sns.entry(sn).or_default();
                self.open_udp_session(cx, sn);
            }
        }
    }

    /// This node's candidates for a direct path: its own addresses on the listen port and the
    /// address super nodes see; none when UDP is blocked. An address of its own that super
    /// nodes see it at, and that is no loopback, private or link-local one, is a public
    /// address rather than a LAN one: it goes out as reflexive, so a direct path between two
    /// public hosts is `direct`, not `direct-lan`.
    fn local_candidates(cx: &Cx<'_>) -> Vec<Candidate> {
        if cx.facts.udp_blocked_here() {
            return Vec::new();
        }
        let reflexive = cx
            .facts
            .reflexive
            .or_else(|| cx.facts.nat.as_ref().and_then(|r| r.mapped));
        Self::candidates(cx, cx.cfg.listen.port(), reflexive)
    }

    /// Candidates of a socket on `port` whose address super nodes see is `reflexive`.
    fn candidates(cx: &Cx<'_>, port: u16, reflexive: Option<SocketAddr>) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = cx
            .facts
            .local_addresses
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .filter(|a| !a.ip().is_unspecified())
            .map(|addr| Candidate {
                kind: CandidateKind::Host,
                addr,
            })
            .collect();
        if let Some(r) = reflexive {
            if !out.iter().any(|c| c.addr == r) {
                out.push(Candidate {
                    kind: CandidateKind::Reflexive,
                    addr: r,
                });
            } else if !is_lan_address(r.ip()) {
                // Our own public address, as the super nodes see it (no NAT here): reachable
                // from anywhere, not a same-LAN shortcut (the peer would call the path
                // DirectLan). A private or loopback one (super nodes on the same LAN or host)
                // stays a host candidate.
                for c in out.iter_mut().filter(|c| c.addr == r) {
                    c.kind = CandidateKind::Reflexive;
                }
            }
        }
        out
    }

    /// Send what the call machine and the path manager produced, and report their events.
    fn flush(&mut self, cx: &mut Cx<'_>) {
        loop {
            let mut moved = false;
            while let Some(t) = self.machine.poll_transmit() {
                moved = true;
                self.transmit(cx, t.device, t.message);
            }
            while let Some(e) = self.machine.poll_event() {
                moved = true;
                self.call_event(cx, &e);
                cx.out.events.push_back(NodeEvent::Call(e));
            }
            if let Some(c) = self.connected.as_mut() {
                let mut actions = Vec::new();
                while let Some(a) = c.paths.poll_action() {
                    actions.push(a);
                }
                let (call, conn) = (c.call, c.conn);
                for a in actions {
                    moved = true;
                    self.path_action(cx, call, conn, a);
                }
            }
            if !moved {
                break;
            }
        }
        self.close_retired(cx);
    }

    /// Send a call message to `device`: on the call's own session once up, else on the
    /// device's current one, else queued until it is up.
    fn transmit(&mut self, cx: &mut Cx<'_>, device: DeviceId, message: Message<'static>) {
        let bound = message
            .call_id()
            .and_then(|call| self.call_sessions.get(&(call, device)).copied())
            .filter(|conn| cx.sessions.view().peer(*conn).is_some());
        if let Some(conn) = bound {
            let _ = cx.sessions.send(cx.now, conn, &message);
            return;
        }
        match self.devices.get_mut(&device) {
            Some(l) if l.up => {
                if let Some(conn) = l.conn {
                    let _ = cx.sessions.send(cx.now, conn, &message);
                }
            }
            // Queued until the session is up (a few; the machine retransmits anyway).
            Some(l) if l.queue.len() < 16 => l.queue.push(message),
            _ => {}
        }
    }

    fn call_event(&mut self, cx: &mut Cx<'_>, e: &CallEvent) {
        let now = cx.now;
        match e {
            CallEvent::Connected { call, device, .. } => {
                let outgoing = self.outgoing == Some(*call);
                // An outgoing call runs on the session we invited on, an incoming one on the
                // session the invite came by: one session for both sides, also when glare
                // left two.
                let invited = self
                    .invite_conn
                    .filter(|(c, conn)| {
                        !outgoing && c == call && self.conn_device.get(conn) == Some(device)
                    })
                    .map(|(_, conn)| conn);
                let mut replaced = None;
                if let (Some(link), Some(conn)) = (self.devices.get_mut(device), invited) {
                    if link.conn != Some(conn) {
                        // Glare: our own (dropped) call's session with the device, and the
                        // relay channel we took for it, serve nothing any more.
                        replaced = Some((link.conn.take(), link.relay.take()));
                    }
                    link.conn = Some(conn);
                    link.up = true;
                }
                if let Some((old, relay)) = replaced {
                    self.drop_call_session(cx, old, relay);
                }
                let conn = self.devices.get(device).and_then(|l| l.conn);
                let leg = conn.and_then(|c| self.udp_legs.get(&c).cloned());
                let remote = conn.and_then(|c| cx.sessions.view().remote(c).cloned());
                // Our UDP leg of the relay, when we moved to one.
                let relay = match (remote, leg) {
                    (Some(r), Some(leg)) if is_other_leg(Some(&r), &leg) => {
                        if let Some(c) = conn {
                            cx.sessions.endpoint().set_path(c, leg.clone());
                        }
                        Some(leg)
                    }
                    (r, _) => r,
                };
                if let (Some(conn), Some(relay)) = (conn, relay) {
                    let mut paths = PathManager::new(
                        self.path_cfg.clone(),
                        *call,
                        outgoing,
                        relay,
                        Self::local_candidates(cx),
                        now,
                    );
                    let caps = cx
                        .sessions
                        .view()
                        .peer(conn)
                        .map(|p| p.capabilities)
                        .unwrap_or_default();
                    paths.set_peer_fresh_ports(
                        caps.contains(natter_core::crypto::Capabilities::FRESH_PORTS),
                    );
                    paths.set_peer_report_ext(
                        caps.contains(natter_core::crypto::Capabilities::REPORT_EXT),
                    );
                    // (One connected call at a time: a previous one's ports are let go.)
                    self.disconnect(cx);
                    self.connected = Some(Connected {
                        call: *call,
                        device: *device,
                        conn,
                        paths,
                        controlling: outgoing,
                        relay_ping: None,
                        replacing: None,
                        tried: Vec::new(),
                        rebind: None,
                        retired: Vec::new(),
                    });
                    if outgoing {
                        let current = self.devices.get(device).and_then(|l| l.relay).map(|r| r.0);
                        self.prepare_standby(cx, *device, current);
                    }
                }
            }
            CallEvent::HoldChanged {
                call,
                local_hold,
                remote_hold,
            } => {
                if let Some(c) = self.connected.as_mut().filter(|c| c.call == *call) {
                    c.paths.set_hold(*local_hold || *remote_hold);
                }
            }
            CallEvent::Ended { call, .. } => {
                if self.connected.as_ref().is_some_and(|c| c.call == *call) {
                    self.disconnect(cx);
                }
                if self.outgoing == Some(*call) {
                    self.outgoing = None;
                }
                // Give the relay channels back, once the call's last words (a cancel, a
                // decline, a hang-up, and their retransmissions) had time to cross them.
                let at = now + RELEASE_GRACE;
                let relays: Vec<(SocketAddr, u32)> = self
                    .devices
                    .values_mut()
                    .filter_map(|l| l.relay.take())
                    .collect();
                self.releases.extend(relays.into_iter().map(|r| (at, r)));
            }
            _ => {}
        }
    }

    fn path_action(&mut self, cx: &mut Cx<'_>, call: CallId, conn: ConnId, a: PathAction) {
        match a {
            PathAction::Send(m) => {
                let _ = cx.sessions.send(cx.now, conn, &m);
            }
            PathAction::Probe { path, ttl } => {
                // (What the uplink's NAT probe needs: addresses our default socket sent to.)
                if let (Some(a), None) = (path.peer_udp(), path.via()) {
                    cx.out.notify(PartId::Uplink, Notice::UdpContacted(a));
                }
                let _ = cx.sessions.endpoint().probe(cx.now, conn, path, ttl);
            }
            PathAction::UsePath(path) => {
                cx.sessions.endpoint().set_path(conn, path);
            }
            PathAction::RelayQuiet => self.relay_quiet(cx),
            PathAction::Rebind => self.start_rebind(cx),
            PathAction::Event(PathEvent::Switched { path, kind, reason }) => {
                if reason == SwitchReason::Dead {
                    self.direct_path_died(cx, &path);
                }
                cx.out.events.push_back(NodeEvent::CallPath {
                    call,
                    path,
                    kind,
                    reason,
                });
            }
            PathAction::Event(PathEvent::Stats(quality)) => {
                cx.out
                    .events
                    .push_back(NodeEvent::CallQuality { call, quality });
            }
        }
    }

    /// Closes a call session nothing uses any more and gives its relay channel back.
    fn drop_call_session(
        &mut self,
        cx: &mut Cx<'_>,
        conn: Option<ConnId>,
        relay: Option<(SocketAddr, u32)>,
    ) {
        if let Some(old) = conn {
            self.conn_device.remove(&old);
            self.udp_legs.remove(&old);
            cx.sessions.close(cx.now, old);
        }
        if let Some(relay) = relay {
            self.release_relay(cx, relay);
        }
    }

    /// Gives relay channel `channel` on super node `sn` back.
    fn release_relay(&mut self, cx: &mut Cx<'_>, (sn, channel): (SocketAddr, u32)) {
        if let Some(conn) = self.relay_sns.get(&sn).and_then(|e| e.conn) {
            let _ = cx
                .sessions
                .send(cx.now, conn, &Message::RelayRelease { channel });
        }
    }

    /// The call's direct path went silent and it fell back to `relay`. Perhaps our NAT
    /// rebound us to a new port: a packet on our session with the relay's super node lets it
    /// relay from and to our new address (relayed frames from an address it does not know are
    /// dropped), and our reflexive address is asked again at once (a new one is offered to the
    /// peer as a candidate).
    fn direct_path_died(&mut self, cx: &mut Cx<'_>, relay: &Path) {
        if let Path::Relayed {
            relay: Destination::Udp(sn),
            ..
        } = relay
        {
            if let Some(conn) = self.relay_sns.get(sn).and_then(|e| e.conn) {
                let _ = cx.sessions.endpoint().ping(cx.now, conn);
            }
        }
        cx.out.notify(PartId::Uplink, Notice::RecheckReflexive);
    }

    /// The connected call ended: its ports of its own are closed once its last words
    /// (a hang-up and its retransmissions, perhaps on a direct path from one) had time to
    /// cross them.
    fn disconnect(&mut self, cx: &mut Cx<'_>) {
        let Some(c) = self.connected.take() else {
            return;
        };
        let rebinding = c.rebind.and_then(|r| r.local);
        let at = cx.now + RELEASE_GRACE;
        // The port of its own the call's direct paths moved to, if any, is the paths' `via`.
        for local in c.paths.via().into_iter().chain(rebinding).chain(c.retired) {
            self.socket_closes.push((at, local));
        }
    }

    /// Closes the ports the connected call left once its active path no longer uses them.
    fn close_retired(&mut self, cx: &mut Cx<'_>) {
        let Some(c) = self.connected.as_mut() else {
            return;
        };
        let in_use = c.paths.active().0.via();
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut c.retired)
            .into_iter()
            .partition(|l| Some(*l) == in_use);
        c.retired = keep;
        for local in gone {
            close_socket(cx, local);
        }
    }

    /// The path manager asks for a fresh port ([`PathAction::Rebind`]): the driver opens one
    /// next to our socket, and a super node will tell its reflexive address: the one relaying
    /// the call over UDP (it answers now: the call runs through it), else one we are attached
    /// to (our links may be re-attaching after our NAT moved).
    fn start_rebind(&mut self, cx: &mut Cx<'_>) {
        let relay = self.connected.as_ref().and_then(|c| match c.paths.relay() {
            Path::Relayed {
                relay: Destination::Udp(sn),
                ..
            } => Some(*sn),
            _ => None,
        });
        let server = relay.or_else(|| {
            (!cx.facts.udp_blocked_here())
                .then(|| cx.facts.links.first().map(|l| l.addr))
                .flatten()
        });
        let token = self.next_token;
        let mut transaction = [0u8; 12];
        self.rng.fill(&mut transaction);
        let Some(c) = self.connected.as_mut() else {
            return;
        };
        let Some(server) = server else {
            c.paths.rebind_failed(cx.now);
            return;
        };
        self.next_token += 1;
        if let Some(old) = c.rebind.take().and_then(|r| r.local) {
            close_socket(cx, old);
        }
        c.rebind = Some(Rebind {
            token,
            local: None,
            server,
            transaction: TransactionId(transaction),
            next_send: None,
            deadline: cx.now + REBIND_TIMEOUT,
        });
        cx.out.commands.push_back(StreamCommand::BindUdp {
            token,
            near: cx.cfg.listen,
        });
    }

    /// The driver answered [`StreamCommand::BindUdp`] `token`. False when it was none of
    /// ours (the caller closes a socket nobody wants).
    pub fn on_udp_bound(&mut self, cx: &mut Cx<'_>, token: u64, local: Option<SocketAddr>) -> bool {
        let Some(c) = self
            .connected
            .as_mut()
            .filter(|c| c.rebind.as_ref().is_some_and(|r| r.token == token))
        else {
            return false;
        };
        let r = c.rebind.as_mut().expect("checked");
        match local {
            Some(local) => {
                cx.sessions.endpoint().add_socket(local);
                r.local = Some(local);
                r.next_send = Some(cx.now + REBIND_STUN_EVERY);
                cx.out.transmits.push_back(r.request(local));
            }
            None => {
                c.rebind = None;
                c.paths.rebind_failed(cx.now);
            }
        }
        self.flush(cx);
        true
    }

    /// Whether `local` is a port of the connected call's own (STUN answers arriving on it are
    /// for [`Calls::on_stun_answer`]).
    pub fn owns_socket(&self, local: SocketAddr) -> bool {
        self.connected.as_ref().is_some_and(|c| {
            c.paths.via() == Some(local)
                || c.rebind.as_ref().is_some_and(|r| r.local == Some(local))
        })
    }

    /// A STUN answer arrived on `local`, a port of the call's own: the reflexive address of a
    /// fresh port. Returns false when it matched nothing.
    pub fn on_stun_answer(
        &mut self,
        cx: &mut Cx<'_>,
        msg: &StunMessage,
        local: SocketAddr,
    ) -> bool {
        let Some(c) = self.connected.as_mut() else {
            return false;
        };
        let ours = c
            .rebind
            .as_ref()
            .is_some_and(|r| r.local == Some(local) && r.transaction == msg.transaction);
        if !ours {
            return false;
        }
        let Some(mapped) = msg.mapped_address() else {
            // An error answer: this super node will not tell; the rebind failed.
            c.rebind = None;
            close_socket(cx, local);
            c.paths.rebind_failed(cx.now);
            self.flush(cx);
            return true;
        };
        let candidates = Self::candidates(cx, local.port(), Some(mapped));
        let c = self.connected.as_mut().expect("checked");
        c.rebind = None;
        if let Some(old) = c.paths.via() {
            c.retired.push(old);
        }
        c.paths.rebound(cx.now, local, candidates);
        self.flush(cx);
        true
    }

    /// Repeats the STUN request of a fresh port, and gives the rebind up at its deadline.
    fn rebind_timeout(&mut self, cx: &mut Cx<'_>) {
        let Some(c) = self.connected.as_mut() else {
            return;
        };
        let Some(r) = c.rebind.as_mut() else {
            return;
        };
        if cx.now >= r.deadline {
            let local = r.local;
            c.rebind = None;
            if let Some(local) = local {
                close_socket(cx, local);
            }
            c.paths.rebind_failed(cx.now);
            return;
        }
        if let (Some(local), Some(at)) = (r.local, r.next_send) {
            if cx.now >= at {
                r.next_send = Some(cx.now + REBIND_STUN_EVERY);
                cx.out.transmits.push_back(r.request(local));
            }
        }
    }

    /// Our candidates may have changed (a new reflexive address, new local addresses): the
    /// connected call offers them to the peer when they did.
    fn refresh_candidates(&mut self, cx: &mut Cx<'_>) {
        if self.connected.is_none() {
            return;
        }
        let local = Self::local_candidates(cx);
        if let Some(c) = self.connected.as_mut() {
            c.paths.update_local_candidates(cx.now, local);
        }
    }

    /// Timers of calls: the call machine, the connected call's paths, relays to give back.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.releases)
            .into_iter()
            .partition(|(at, _)| *at <= cx.now);
        self.releases = later;
        for (_, relay) in due {
            self.release_relay(cx, relay);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.socket_closes)
            .into_iter()
            .partition(|(at, _)| *at <= cx.now);
        self.socket_closes = later;
        for (_, local) in due {
            close_socket(cx, local);
        }
        self.rebind_timeout(cx);
        if let Some(c) = self.connected.as_mut() {
            if c.replacing.is_some_and(|t| cx.now >= t + REPLACE_TIMEOUT) {
                c.replacing = None;
            }
            if c.replacing.is_none()
                && c.relay_ping
                    .is_some_and(|t| cx.now >= t + RELAY_PING_TIMEOUT)
            {
                self.replace_relay(cx);
            }
        }
        self.machine.handle_timeout(cx.now);
        if let Some(c) = self.connected.as_mut() {
            c.paths.handle_timeout(cx.now);
        }
        self.flush(cx);
    }

    /// When calls next want their timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.machine.poll_timeout(),
            self.connected.as_ref().and_then(|c| c.paths.poll_timeout()),
            self.connected.as_ref().and_then(|c| {
                let replace = c.replacing.map(|t| t + REPLACE_TIMEOUT);
                let ping = c
                    .relay_ping
                    .filter(|_| c.replacing.is_none())
                    .map(|t| t + RELAY_PING_TIMEOUT);
                let rebind = c
                    .rebind
                    .as_ref()
                    .map(|r| r.next_send.map_or(r.deadline, |t| t.min(r.deadline)));
                replace.into_iter().chain(ping).chain(rebind).min()
            }),
            self.releases.iter().map(|(at, _)| *at).min(),
            self.socket_closes.iter().map(|(at, _)| *at).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Closes a port of a call's own: the endpoint forgets it and the driver closes it.
fn close_socket(cx: &mut Cx<'_>, local: SocketAddr) {
    cx.sessions.endpoint().remove_socket(local);
    cx.out.commands.push_back(StreamCommand::CloseUdp { local });
}

/// Whether `path` is relay channel `leg`'s channel reached by another leg than `leg`.
fn is_other_leg(path: Option<&Path>, leg: &Path) -> bool {
    match (path, leg) {
        (Some(p @ Path::Relayed { channel: a, .. }), Path::Relayed { channel: b, .. }) => {
            a == b && p != leg
        }
        _ => false,
    }
}

/// Whether `ip` can only be reached on a LAN or this host: loopback, private (RFC 1918, unique
/// local), shared (carrier-grade NAT) and link-local addresses.
fn is_lan_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Send an encoded control message (another part's, [`Notice::PostVia`]) on session `conn`.
fn post_on(cx: &mut Cx<'_>, conn: ConnId, encoded: &[u8]) {
    match Message::decode(encoded) {
        Ok(m) => {
            let _ = cx.sessions.send(cx.now, conn, &m);
        }
        Err(_) => cx.out.stats.overlay_dropped += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::is_lan_address;

    #[test]
    fn lan_addresses() {
        for lan in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.2",
            "169.254.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_lan_address(lan.parse().unwrap()), "{lan}");
        }
        for public in ["198.18.0.1", "8.8.8.8", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_lan_address(public.parse().unwrap()), "{public}");
        }
    }
}
