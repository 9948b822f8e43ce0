//! Calls on the node: dialling (search, relay, end-to-end session), signalling through the
//! [`CallMachine`], connectivity through a [`PathManager`] per call, and media frames.
//!
//! **Setting a call up.** [`Node::call`] searches the index for the callee's devices. For each
//! online device the node opens a session with one of the super nodes the device is attached
//! to (over UDP, or TCP when UDP is blocked here), asks it for a relay channel to the device
//! ([`Message::RelayAllocate`]), and runs an IK handshake with the device *through* the relay:
//! its static key is in its certificate. Signalling therefore never needs a direct path, and
//! the super node sees only ciphertext. Invites are queued per device until its session is up
//! (the call machine retransmits them anyway).
//!
//! **Answering.** A session that a peer opens to us through a relay is a call session; call
//! messages on it go to the call machine with the user and device the session proved. It
//! arrives over our link to the super node, a TCP stream: unless UDP is blocked here, the node
//! opens a UDP session with that super node at once and moves its leg of the relay channel
//! there ([`PathManager::set_relay`]; the relay sends to the session a party last used).
//!
//! **Media.** Once connected, a [`PathManager`] runs on the session: candidates, hole
//! punching, path choice and switching; [`Node::send_media`] seals frames on the session's
//! current path, and received frames arrive as [`NodeEvent::CallMedia`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_core::call::{CallConfig, CallError, CallEvent, CallMachine};
use natter_core::call::{PathAction, PathConfig, PathEvent, PathManager, SwitchReason};
use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::{ConnId, EndpointEvent, Path, SendError};
use natter_core::overlay::LinkTransport;
use natter_core::overlay::NatType;
use natter_core::overlay::PresenceRecord;
use natter_core::sansio::{Destination, StreamCommand, StreamId};
use natter_core::wire::message::{CallId, Candidate, CandidateKind, Message, MessageType};

use super::{Node, NodeEvent};
use natter_core::overlay::{SearchOutcome, SearchResult};

/// Streams this module opens are numbered from here (the attacher's start at 0).
const STREAM_BASE: u64 = 1 << 40;
/// A call's relay channels are given back this long after it ended: its last signalling (a
/// cancel while ringing, a decline) still crosses them, retransmissions included.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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

#[derive(Debug, Default)]
struct RelaySn {
    conn: Option<ConnId>,
    up: bool,
    /// Devices waiting for this super node's session to ask for a relay.
    waiting: Vec<DeviceId>,
    /// Call sessions (and their relay channel) waiting for this super node's UDP session to
    /// move our leg of the channel onto it.
    legs: Vec<(ConnId, u32)>,
}

/// The node's call state.
/// One attempt at a TCP stream to a super node for relays.
#[derive(Debug, Clone, Copy)]
struct RelayStream {
    sn: SocketAddr,
    /// The port being tried.
    transport: LinkTransport,
    /// The port tried first.
    first: LinkTransport,
}

#[derive(Debug)]
pub(super) struct Calls {
    machine: CallMachine,
    path_cfg: PathConfig,
    /// Searches run for dials: search id -> dial id.
    dials: HashMap<u64, u64>,
    /// The dial whose search is being started.
    pending_dial: Option<u64>,
    next_dial: u64,
    devices: HashMap<DeviceId, DeviceLink>,
    conn_device: HashMap<ConnId, DeviceId>,
    relay_requests: HashMap<u32, (DeviceId, SocketAddr)>,
    next_request: u32,
    relay_sns: HashMap<SocketAddr, RelaySn>,
    relay_sn_conns: HashMap<ConnId, SocketAddr>,
    /// Streams to super nodes for relays: the super node, the port being tried, and the one
    /// tried first (the ports are tried in turn from there, each once).
    relay_streams: HashMap<StreamId, RelayStream>,
    next_stream: u64,
    /// Our outgoing call (this side controls the path).
    outgoing: Option<CallId>,
    /// The session the last invite arrived on: an incoming call runs on it.
    invite_conn: Option<(CallId, ConnId)>,
    /// The session each call signals on with each device: an outgoing call on the session
    /// opened for it, an incoming one on the session its invite came by. A device may still
    /// hold an older session (an unanswered call's, whose relay channel is gone): signalling
    /// sent there would never arrive.
    call_sessions: HashMap<(CallId, DeviceId), ConnId>,
    /// Relay channels of ended calls, given back at these instants.
    releases: Vec<(Instant, (SocketAddr, u32))>,
    /// Our UDP leg of the relay channel of call sessions peers opened to us through a relay.
    udp_legs: HashMap<ConnId, Path>,
    /// The connected call's connectivity: call, device, session, manager.
    path: Option<(CallId, DeviceId, ConnId, PathManager)>,
}

impl Calls {
    pub(super) fn new(
        device: DeviceId,
        cfg: CallConfig,
        path_cfg: PathConfig,
        now: Instant,
    ) -> Self {
        Self {
            machine: CallMachine::new(device, cfg, now),
            path_cfg,
            dials: HashMap::new(),
            pending_dial: None,
            next_dial: 0,
            devices: HashMap::new(),
            conn_device: HashMap::new(),
            relay_requests: HashMap::new(),
            next_request: 0,
            relay_sns: HashMap::new(),
            relay_sn_conns: HashMap::new(),
            relay_streams: HashMap::new(),
            next_stream: STREAM_BASE,
            outgoing: None,
            invite_conn: None,
            call_sessions: HashMap::new(),
            releases: Vec::new(),
            udp_legs: HashMap::new(),
            path: None,
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.machine.poll_timeout(),
            self.path.as_ref().and_then(|(_, _, _, p)| p.poll_timeout()),
            self.releases.iter().map(|(at, _)| *at).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn owns_stream(&self, stream: StreamId) -> bool {
        self.relay_streams.contains_key(&stream)
    }
}

impl Node {
    /// Call `user`: search for their devices and invite every online one. The dial's outcome
    /// arrives as [`NodeEvent::Dial`] with the returned id; from then on the call is reported
    /// as [`NodeEvent::Call`], [`NodeEvent::CallPath`] and [`NodeEvent::CallQuality`].
    pub fn call(&mut self, now: Instant, user: UserName) -> u64 {
        self.calls.next_dial += 1;
        let dial = self.calls.next_dial;
        // A search can end inside `search` (not attached): `search_finished` then takes the
        // pending dial.
        self.calls.pending_dial = Some(dial);
        let search = self.search(now, user);
        if self.calls.pending_dial.take().is_some() {
            self.calls.dials.insert(search, dial);
        }
        dial
    }

    /// Answer the call ringing here.
    pub fn answer(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m| m.answer(now, call))
    }

    /// Decline the call ringing here (for every device of this user).
    pub fn decline(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m| m.decline(now, call))
    }

    /// Hang up (or cancel an outgoing call that has not been answered).
    pub fn hang_up(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m| m.hang_up(now, call))
    }

    /// Put the call on hold.
    pub fn hold(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m| m.hold(now, call))
    }

    /// Take the call off hold.
    pub fn resume(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m| m.resume(now, call))
    }

    /// Run a command of the call machine, then route what it produced.
    fn call_command(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut CallMachine) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let r = f(&mut self.calls.machine);
        self.pump(now);
        r
    }

    /// The call signalling machine (state of the current call, counters).
    pub fn calls(&self) -> &CallMachine {
        &self.calls.machine
    }

    /// Send one media frame (see `natter_media::frame`) on the connected call `call`.
    pub fn send_media(
        &mut self,
        now: Instant,
        call: CallId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        let conn = match &self.calls.path {
            Some((c, _, conn, _)) if *c == call => *conn,
            _ => return Err(SendError::UnknownConnection),
        };
        let r = self.endpoint.send_media(now, conn, frame);
        self.pump(now);
        r
    }

    /// The path the connected call uses, and its kind.
    pub fn call_path(&self, call: CallId) -> Option<(Path, natter_core::call::PathKind)> {
        match &self.calls.path {
            Some((c, _, _, p)) if *c == call => {
                let (path, kind) = p.active();
                Some((path.clone(), kind))
            }
            _ => None,
        }
    }

    /// A search ended: a dial's search starts the call, any other is reported.
    pub(super) fn search_finished(&mut self, now: Instant, id: u64, outcome: SearchOutcome) {
        let Some(dial) = self
            .calls
            .dials
            .remove(&id)
            .or_else(|| self.calls.pending_dial.take())
        else {
            self.events.push_back(NodeEvent::Search { id, outcome });
            return;
        };
        let result = match outcome.result {
            SearchResult::NotFound => Err(DialError::NotFound),
            SearchResult::Unavailable => Err(DialError::Unavailable),
            SearchResult::Found(records) => {
                let me = self.cfg.identity.device.device_id();
                let online: Vec<PresenceRecord> = records
                    .into_iter()
                    .filter(|r| r.online && r.certificate.device != me)
                    .collect();
                if online.is_empty() {
                    Err(DialError::Offline)
                } else {
                    self.place_call(now, outcome.user.clone(), online)
                }
            }
        };
        let outcome = match result {
            Ok(call) => DialOutcome::Calling(call),
            Err(e) => DialOutcome::Failed(e),
        };
        self.events.push_back(NodeEvent::Dial { dial, outcome });
    }

    fn place_call(
        &mut self,
        now: Instant,
        user: UserName,
        records: Vec<PresenceRecord>,
    ) -> Result<CallId, DialError> {
        let devices: Vec<DeviceId> = records.iter().map(|r| r.certificate.device).collect();
        let call = self
            .calls
            .machine
            .call(now, user.clone(), &devices)
            .map_err(DialError::Call)?;
        self.calls.outgoing = Some(call);
        for r in records {
            let device = r.certificate.device;
            // Sessions left from an earlier call with the device are not reused: their relay
            // channel was released, and they may sit on a direct path that has no relay
            // behind it any more. Every call gets a relay (and a session through it) of its
            // own.
            let old: Vec<ConnId> = self
                .calls
                .conn_device
                .iter()
                .filter(|(_, d)| **d == device)
                .map(|(c, _)| *c)
                .collect();
            for c in old {
                self.calls.conn_device.remove(&c);
                self.calls.udp_legs.remove(&c);
                self.endpoint.close(now, c);
            }
            self.calls.devices.insert(
                device,
                DeviceLink {
                    conn: None,
                    up: false,
                    record: Some(r.clone()),
                    queue: Vec::new(),
                    sns_left: r.super_nodes.iter().copied().collect(),
                    relay: None,
                },
            );
            self.dial_device(now, device);
        }
        Ok(call)
    }

    /// Ask the next super node of `device` for a relay to it.
    fn dial_device(&mut self, now: Instant, device: DeviceId) {
        let Some(sn) = self
            .calls
            .devices
            .get_mut(&device)
            .and_then(|l| l.sns_left.pop_front())
        else {
            // No super node of the device can relay to it: its invites stay queued and the
            // call machine ends the call as missed if no other device answers.
            return;
        };
        let entry = self.calls.relay_sns.entry(sn).or_default();
        if entry.up {
            let conn = entry.conn;
            if let Some(conn) = conn {
                self.ask_relay(now, conn, sn, device);
            }
            return;
        }
        entry.waiting.push(device);
        if entry.conn.is_some() || self.calls.relay_streams.values().any(|r| r.sn == sn) {
            return;
        }
        if self.udp_blocked_here() {
            // A link we already have to it carries the request; else a TCP stream of our own.
            let link = self
                .attacher
                .attached()
                .into_iter()
                .find(|(_, a)| *a == sn)
                .and_then(|(s, _)| self.stream_conn.get(&s).copied());
            if let Some(conn) = link {
                self.relay_sn_up(now, sn, conn);
                return;
            }
            // Start on the port our links got through (a firewall that passes only the TLS
            // port would make each port before it time out), then try the others.
            let first = self.attacher.link_transport().unwrap_or(LinkTransport::Tcp);
            self.open_relay_stream(RelayStream {
                sn,
                transport: first,
                first,
            });
        } else {
            match self.endpoint.connect(now, Destination::Udp(sn), None) {
                Ok(conn) => {
                    self.note_udp(sn);
                    let entry = self.calls.relay_sns.entry(sn).or_default();
                    entry.conn = Some(conn);
                    self.calls.relay_sn_conns.insert(conn, sn);
                }
                Err(_) => self.relay_sn_failed(now, sn),
            }
        }
    }

    /// A TCP stream to a super node for relays, on the port `attempt` names.
    fn open_relay_stream(&mut self, attempt: RelayStream) {
        let ports = self.cfg.attach.fallback_ports;
        let remote = attempt.transport.address(attempt.sn, ports);
        let stream = StreamId::local(self.calls.next_stream);
        self.calls.next_stream += 1;
        self.calls.relay_streams.insert(stream, attempt);
        self.commands.push_back(StreamCommand::Connect {
            stream,
            remote,
            tls: attempt.transport == LinkTransport::Tls,
        });
    }

    /// A stream this module asked for is connected: run the session with the super node on it.
    pub(super) fn call_stream_opened(&mut self, now: Instant, stream: StreamId) {
        let Some(sn) = self.calls.relay_streams.get(&stream).map(|r| r.sn) else {
            return;
        };
        match self
            .endpoint
            .connect(now, Destination::Stream(stream), None)
        {
            Ok(conn) => {
                let entry = self.calls.relay_sns.entry(sn).or_default();
                entry.conn = Some(conn);
                self.calls.relay_sn_conns.insert(conn, sn);
            }
            Err(_) => self.relay_sn_failed(now, sn),
        }
    }

    /// A stream of ours closed (or could not be opened).
    pub(super) fn call_stream_closed(&mut self, now: Instant, stream: StreamId) {
        if let Some(attempt) = self.calls.relay_streams.remove(&stream) {
            let sn = attempt.sn;
            let entry = self.calls.relay_sns.get(&sn);
            let up = entry.is_some_and(|e| e.up);
            let session = entry.and_then(|e| e.conn);
            let next = attempt.transport.cycle();
            if !up && session.is_none() && next != attempt.first {
                // Refused or timed out before any session ran: the next port.
                self.open_relay_stream(RelayStream {
                    transport: next,
                    ..attempt
                });
            } else if !up {
                self.relay_sn_failed(now, sn);
            } else {
                self.calls.relay_sns.remove(&sn);
            }
        }
    }

    fn relay_sn_up(&mut self, now: Instant, sn: SocketAddr, conn: ConnId) {
        let entry = self.calls.relay_sns.entry(sn).or_default();
        entry.conn = Some(conn);
        entry.up = true;
        let waiting = std::mem::take(&mut entry.waiting);
        let legs = std::mem::take(&mut entry.legs);
        self.calls.relay_sn_conns.insert(conn, sn);
        for device in waiting {
            self.ask_relay(now, conn, sn, device);
        }
        for (call_conn, channel) in legs {
            self.use_udp_leg(now, sn, conn, call_conn, channel);
        }
    }

    fn udp_blocked_here(&self) -> bool {
        self.attacher.udp_blocked()
            || self
                .nat_report
                .as_ref()
                .is_some_and(|r| r.nat == NatType::UdpBlocked)
    }

    /// A peer opened call session `call_conn` to us through relay channel `channel` over our
    /// link `stream` to a super node: unless UDP is blocked here, open a UDP session with that
    /// super node (or use the one we have) and move our leg of the channel onto it.
    fn open_udp_leg(&mut self, now: Instant, call_conn: ConnId, stream: StreamId, channel: u32) {
        if self.udp_blocked_here() {
            return;
        }
        let sn = self
            .attacher
            .attached()
            .into_iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, a)| a)
            .or_else(|| self.stream_remote.get(&stream).copied());
        let Some(sn) = sn else {
            return;
        };
        let entry = self.calls.relay_sns.entry(sn).or_default();
        if entry.up {
            if let Some(conn) = entry.conn {
                self.use_udp_leg(now, sn, conn, call_conn, channel);
            }
            return;
        }
        entry.legs.push((call_conn, channel));
        if entry.conn.is_some() {
            return;
        }
        match self.endpoint.connect(now, Destination::Udp(sn), None) {
            Ok(conn) => {
                self.note_udp(sn);
                let entry = self.calls.relay_sns.entry(sn).or_default();
                entry.conn = Some(conn);
                self.calls.relay_sn_conns.insert(conn, sn);
            }
            Err(_) => self.relay_sn_failed(now, sn),
        }
    }

    /// Our UDP session `conn` with super node `sn` is up: call session `call_conn` moves its
    /// leg of relay channel `channel` there (the relay sends to the session a party last sent
    /// from).
    fn use_udp_leg(
        &mut self,
        now: Instant,
        sn: SocketAddr,
        conn: ConnId,
        call_conn: ConnId,
        channel: u32,
    ) {
        if !matches!(
            self.endpoint.remote(conn),
            Some(Path::Direct(Destination::Udp(_)))
        ) || !self.calls.conn_device.contains_key(&call_conn)
        {
            return;
        }
        let leg = Path::Relayed {
            relay: Destination::Udp(sn),
            channel,
        };
        self.calls.udp_legs.insert(call_conn, leg.clone());
        match self.calls.path.as_mut() {
            Some((_, _, c, pm)) if *c == call_conn => pm.set_relay(now, leg),
            _ => {
                if is_other_leg(self.endpoint.remote(call_conn), &leg) {
                    self.endpoint.set_path(call_conn, leg);
                }
            }
        }
    }

    fn relay_sn_failed(&mut self, now: Instant, sn: SocketAddr) {
        if let Some(entry) = self.calls.relay_sns.remove(&sn) {
            if let Some(c) = entry.conn {
                self.calls.relay_sn_conns.remove(&c);
            }
            for device in entry.waiting {
                self.dial_device(now, device);
            }
        }
    }

    fn ask_relay(&mut self, now: Instant, conn: ConnId, sn: SocketAddr, device: DeviceId) {
        self.calls.next_request = self.calls.next_request.wrapping_add(1);
        let request = self.calls.next_request;
        self.calls.relay_requests.insert(request, (device, sn));
        let _ = self
            .endpoint
            .send_control(now, conn, &Message::RelayAllocate { request, device });
    }

    /// Endpoint events that concern calls; returns true when consumed.
    pub(super) fn on_call_endpoint_event(&mut self, now: Instant, e: &EndpointEvent) -> bool {
        match e {
            EndpointEvent::Connected {
                conn,
                peer,
                remote,
                initiator,
            } => {
                if let Some(sn) = self.calls.relay_sn_conns.get(conn).copied() {
                    self.relay_sn_up(now, sn, *conn);
                    return true;
                }
                if let Some(device) = self.calls.conn_device.get(conn).copied() {
                    if peer.certificate.device != device {
                        // IK bound the session to the key in the record; a certificate for
                        // another device with that key cannot happen, but never trust it.
                        self.endpoint.close(now, *conn);
                        return true;
                    }
                    if let Some(link) = self.calls.devices.get_mut(&device) {
                        link.up = true;
                        let queue = std::mem::take(&mut link.queue);
                        for m in queue {
                            let _ = self.endpoint.send_control(now, *conn, &m);
                        }
                    }
                    return true;
                }
                if !initiator && remote.is_relayed() {
                    // A peer reached us through a relay: a call session.
                    let device = peer.certificate.device;
                    self.calls.conn_device.insert(*conn, device);
                    let link = self.calls.devices.entry(device).or_insert(DeviceLink {
                        conn: None,
                        up: false,
                        record: None,
                        queue: Vec::new(),
                        sns_left: VecDeque::new(),
                        relay: None,
                    });
                    // Call messages are taken from every session with the device. In glare
                    // both sides opened one: each keeps sending on its own, and a call runs on
                    // the session its caller invited on (see `invite_conn`).
                    if !link.up || link.conn.is_none() {
                        link.conn = Some(*conn);
                        link.up = true;
                        let queue = std::mem::take(&mut link.queue);
                        for m in queue {
                            let _ = self.endpoint.send_control(now, *conn, &m);
                        }
                    }
                    if let Path::Relayed {
                        relay: Destination::Stream(stream),
                        channel,
                    } = remote
                    {
                        self.open_udp_leg(now, *conn, *stream, *channel);
                    }
                    return true;
                }
                false
            }
            EndpointEvent::ConnectFailed { conn, .. } | EndpointEvent::Closed { conn, .. } => {
                if let Some(sn) = self.calls.relay_sn_conns.get(conn).copied() {
                    let up = self.calls.relay_sns.get(&sn).is_some_and(|e| e.up);
                    self.calls.relay_sn_conns.remove(conn);
                    if up {
                        self.calls.relay_sns.remove(&sn);
                    } else {
                        self.relay_sn_failed(now, sn);
                    }
                    return true;
                }
                if let Some(device) = self.calls.conn_device.remove(conn) {
                    self.calls.udp_legs.remove(conn);
                    self.calls.call_sessions.retain(|_, c| c != conn);
                    let was_up = self
                        .calls
                        .devices
                        .get(&device)
                        .is_some_and(|l| l.up && l.conn == Some(*conn));
                    // Another session with the device, if there is one (glare left two).
                    let other = self
                        .calls
                        .conn_device
                        .iter()
                        .filter(|(_, d)| **d == device)
                        .map(|(c, _)| *c)
                        .min();
                    if let Some(link) = self.calls.devices.get_mut(&device) {
                        if link.conn == Some(*conn) {
                            link.conn = other;
                            link.up = other.is_some();
                            link.relay = None;
                        }
                    }
                    if matches!(&self.calls.path, Some((_, _, c, _)) if c == conn) {
                        self.calls.path = None;
                    }
                    if !was_up && matches!(e, EndpointEvent::ConnectFailed { .. }) {
                        // The handshake through this relay failed: try another super node.
                        self.dial_device(now, device);
                    }
                    return true;
                }
                false
            }
            EndpointEvent::Media { conn, path, data } => {
                let Some(device) = self.calls.conn_device.get(conn).copied() else {
                    return false;
                };
                self.calls.machine.handle_heard(now, device);
                if let Some((call, _, c, pm)) = self.calls.path.as_mut() {
                    if c == conn {
                        pm.media_received(now, path, data);
                        let call = *call;
                        self.events.push_back(NodeEvent::CallMedia {
                            call,
                            data: data.clone(),
                        });
                    }
                }
                true
            }
            EndpointEvent::ProbeAnswered {
                conn, path, rtt, ..
            } => {
                if let Some((_, _, c, pm)) = self.calls.path.as_mut() {
                    if c == conn {
                        pm.probe_answered(now, path, *rtt);
                    }
                }
                self.calls.conn_device.contains_key(conn)
            }
            EndpointEvent::ProbeReceived { conn, path } => {
                if let Some((_, _, c, pm)) = self.calls.path.as_mut() {
                    if c == conn {
                        pm.probe_received(now, path);
                    }
                }
                self.calls.conn_device.contains_key(conn)
            }
            EndpointEvent::PathChanged { conn, remote } => {
                match self.calls.path.as_mut() {
                    Some((_, _, c, pm)) if c == conn => pm.path_changed(now, remote),
                    _ => {
                        // Before the call connects, the session stays on our UDP leg too.
                        let leg = self.calls.udp_legs.get(conn).cloned();
                        if let Some(leg) = leg {
                            if is_other_leg(Some(remote), &leg) {
                                self.endpoint.set_path(*conn, leg);
                            }
                        }
                    }
                }
                self.calls.conn_device.contains_key(conn)
            }
            _ => false,
        }
    }

    /// Control messages for calls (from peer devices) and relay answers (from super nodes);
    /// returns true when consumed.
    pub(super) fn on_call_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: &Message<'_>,
    ) -> bool {
        let t = msg.message_type() as u8;
        if let Some(device) = self.calls.conn_device.get(&conn).copied() {
            let is_call = (MessageType::CallInvite as u8..=MessageType::CallKeepAlive as u8)
                .contains(&t)
                && !matches!(msg, Message::CallCandidates { .. });
            if is_call {
                if let Message::CallInvite { call, .. } = msg {
                    self.calls.invite_conn = Some((*call, conn));
                    self.calls.call_sessions.insert((*call, device), conn);
                }
                let user = self.endpoint.peer(conn).map(|p| p.certificate.user.clone());
                if let Some(user) = user {
                    self.calls.machine.handle_message(now, device, &user, msg);
                }
                return true;
            }
            if matches!(
                msg,
                Message::CallCandidates { .. } | Message::MediaReport { .. }
            ) {
                self.calls.machine.handle_heard(now, device);
                if let Some((_, _, c, pm)) = self.calls.path.as_mut() {
                    if *c == conn {
                        pm.handle_message(now, msg);
                    }
                }
                return true;
            }
            return false;
        }
        match msg {
            Message::RelayAllocated { request, channel } => {
                let Some((device, sn)) = self.calls.relay_requests.remove(request) else {
                    return true;
                };
                let via = self.endpoint.remote(conn).map(|p| p.transport().clone());
                let key = self
                    .calls
                    .devices
                    .get(&device)
                    .and_then(|l| l.record.as_ref())
                    .map(|r| r.certificate.dh_public);
                if let (Some(via), Some(key)) = (via, key) {
                    let path = Path::Relayed {
                        relay: via,
                        channel: *channel,
                    };
                    if let Ok(e2e) = self.endpoint.connect(now, path, Some(key)) {
                        self.calls.conn_device.insert(e2e, device);
                        if let Some(call) = self.calls.outgoing {
                            self.calls.call_sessions.insert((call, device), e2e);
                        }
                        if let Some(link) = self.calls.devices.get_mut(&device) {
                            link.conn = Some(e2e);
                            link.relay = Some((sn, *channel));
                        }
                    }
                }
                true
            }
            Message::RelayRefused { request, .. } => {
                if let Some((device, _)) = self.calls.relay_requests.remove(request) {
                    self.dial_device(now, device);
                }
                true
            }
            // A relay channel was opened to us: the peer's handshake follows on it.
            Message::RelayOffer { .. } => true,
            // A relay we use let a channel go (the call ends, or moves to another path).
            Message::RelayRelease { .. } if self.calls.relay_sn_conns.contains_key(&conn) => true,
            _ => false,
        }
    }

    /// This node's candidates for a direct path: its own addresses on the listen port and the
    /// address super nodes see; none when UDP is blocked. An address of its own that super
    /// nodes see it at, and that is no loopback, private or link-local one, is a public
    /// address rather than a LAN one: it goes out as reflexive, so a direct path between two
    /// public hosts is `direct`, not `direct-lan`.
    fn local_candidates(&self) -> Vec<Candidate> {
        if self.udp_blocked_here() {
            return Vec::new();
        }
        let reflexive = self
            .reflexive
            .or_else(|| self.nat_report.as_ref().and_then(|r| r.mapped));
        let port = self.cfg.listen.port();
        let mut out: Vec<Candidate> = self
            .cfg
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

    /// Drain the call machine and the path manager; returns true when anything moved.
    pub(super) fn drain_calls(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(t) = self.calls.machine.poll_transmit() {
            moved = true;
            // The call's own session, once up; else the device's current one.
            let bound = t
                .message
                .call_id()
                .and_then(|call| self.calls.call_sessions.get(&(call, t.device)).copied())
                .filter(|conn| self.endpoint.peer(*conn).is_some());
            if let Some(conn) = bound {
                let _ = self.endpoint.send_control(now, conn, &t.message);
                continue;
            }
            let link = self.calls.devices.get_mut(&t.device);
            match link {
                Some(l) if l.up => {
                    if let Some(conn) = l.conn {
                        let _ = self.endpoint.send_control(now, conn, &t.message);
                    }
                }
                // Queued until the session is up (a few; the machine retransmits anyway).
                Some(l) if l.queue.len() < 16 => l.queue.push(t.message),
                _ => {}
            }
        }
        while let Some(e) = self.calls.machine.poll_event() {
            moved = true;
            match &e {
                CallEvent::Connected { call, device, .. } => {
                    let outgoing = self.calls.outgoing == Some(*call);
                    // An outgoing call runs on the session we invited on, an incoming one on
                    // the session the invite came by: one session for both sides, also when
                    // glare left two.
                    let invited = self
                        .calls
                        .invite_conn
                        .filter(|(c, conn)| {
                            !outgoing
                                && c == call
                                && self.calls.conn_device.get(conn) == Some(device)
                        })
                        .map(|(_, conn)| conn);
                    let link = self.calls.devices.get_mut(device);
                    let mut replaced = None;
                    if let (Some(link), Some(conn)) = (link, invited) {
                        if link.conn != Some(conn) {
                            // Glare: our own (dropped) call's session with the device, and
                            // the relay channel we took for it, serve nothing any more.
                            replaced = Some((link.conn.take(), link.relay.take()));
                        }
                        link.conn = Some(conn);
                        link.up = true;
                    }
                    if let Some((old, relay)) = replaced {
                        self.drop_call_session(now, old, relay);
                    }
                    let conn = self.calls.devices.get(device).and_then(|l| l.conn);
                    let leg = conn.and_then(|c| self.calls.udp_legs.get(&c).cloned());
                    let remote = conn.and_then(|c| self.endpoint.remote(c).cloned());
                    // Our UDP leg of the relay, when we moved to one.
                    let relay = match (remote, leg) {
                        (Some(r), Some(leg)) if is_other_leg(Some(&r), &leg) => {
                            if let Some(c) = conn {
                                self.endpoint.set_path(c, leg.clone());
                            }
                            Some(leg)
                        }
                        (r, _) => r,
                    };
                    if let (Some(conn), Some(relay)) = (conn, relay) {
                        let controlling = outgoing;
                        let pm = PathManager::new(
                            self.calls.path_cfg.clone(),
                            *call,
                            controlling,
                            relay,
                            self.local_candidates(),
                            now,
                        );
                        self.calls.path = Some((*call, *device, conn, pm));
                    }
                }
                CallEvent::HoldChanged {
                    call,
                    local_hold,
                    remote_hold,
                } => {
                    if let Some((c, _, _, pm)) = self.calls.path.as_mut() {
                        if c == call {
                            pm.set_hold(*local_hold || *remote_hold);
                        }
                    }
                }
                CallEvent::Ended { call, .. } => {
                    if matches!(&self.calls.path, Some((c, _, _, _)) if c == call) {
                        self.calls.path = None;
                    }
                    if self.calls.outgoing == Some(*call) {
                        self.calls.outgoing = None;
                    }
                    // Give the relay channels back, once the call's last words (a cancel, a
                    // decline, a hang-up, and their retransmissions) had time to cross them.
                    let relays: Vec<(SocketAddr, u32)> = self
                        .calls
                        .devices
                        .values_mut()
                        .filter_map(|l| l.relay.take())
                        .collect();
                    let at = now + RELEASE_GRACE;
                    self.calls
                        .releases
                        .extend(relays.into_iter().map(|r| (at, r)));
                }
                _ => {}
            }
            self.events.push_back(NodeEvent::Call(e));
        }
        if let Some((call, _, conn, pm)) = self.calls.path.as_mut() {
            let (call, conn) = (*call, *conn);
            let mut actions = Vec::new();
            while let Some(a) = pm.poll_action() {
                actions.push(a);
            }
            for a in actions {
                moved = true;
                match a {
                    PathAction::Send(m) => {
                        let _ = self.endpoint.send_control(now, conn, &m);
                    }
                    PathAction::Probe { path, ttl } => {
                        if let Some(a) = path.udp() {
                            self.note_udp(a);
                        }
                        let _ = self.endpoint.probe(now, conn, path, ttl);
                    }
                    PathAction::UsePath(path) => {
                        self.endpoint.set_path(conn, path);
                    }
                    PathAction::Event(PathEvent::Switched { path, kind, reason }) => {
                        if reason == SwitchReason::Dead {
                            self.direct_path_died(now, &path);
                        }
                        self.events.push_back(NodeEvent::CallPath {
                            call,
                            path,
                            kind,
                            reason,
                        });
                    }
                    PathAction::Event(PathEvent::Stats(quality)) => {
                        self.events
                            .push_back(NodeEvent::CallQuality { call, quality });
                    }
                }
            }
        }
        moved
    }

    /// Closes a call session nothing uses any more and gives its relay channel back.
    fn drop_call_session(
        &mut self,
        now: Instant,
        conn: Option<ConnId>,
        relay: Option<(SocketAddr, u32)>,
    ) {
        if let Some(old) = conn {
            self.calls.conn_device.remove(&old);
            self.calls.udp_legs.remove(&old);
            self.endpoint.close(now, old);
        }
        if let Some(relay) = relay {
            self.release_relay(now, relay);
        }
    }

    /// Gives relay channel `channel` on super node `sn` back.
    fn release_relay(&mut self, now: Instant, (sn, channel): (SocketAddr, u32)) {
        if let Some(conn) = self.calls.relay_sns.get(&sn).and_then(|e| e.conn) {
            let _ = self
                .endpoint
                .send_control(now, conn, &Message::RelayRelease { channel });
        }
    }

    /// The call's direct path went silent and it fell back to `relay`. Perhaps our NAT
    /// rebound us to a new port: a packet on our session with the relay's super node lets it
    /// relay from and to our new address (relayed frames from an address it does not know are
    /// dropped), and our reflexive address is asked again at once (a new one is offered to the
    /// peer as a candidate).
    fn direct_path_died(&mut self, now: Instant, relay: &Path) {
        if let Path::Relayed {
            relay: Destination::Udp(sn),
            ..
        } = relay
        {
            if let Some(conn) = self.calls.relay_sns.get(sn).and_then(|e| e.conn) {
                let _ = self.endpoint.ping(now, conn);
            }
        }
        self.recheck_reflexive(now);
    }

    /// Our candidates may have changed (a new reflexive address, new local addresses): the
    /// connected call offers them to the peer when they did.
    pub(super) fn refresh_call_candidates(&mut self, now: Instant) {
        if self.calls.path.is_none() {
            return;
        }
        let local = self.local_candidates();
        if let Some((_, _, _, pm)) = self.calls.path.as_mut() {
            pm.update_local_candidates(now, local);
        }
    }

    /// Timers of calls.
    pub(super) fn calls_timeout(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.calls.releases)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.calls.releases = later;
        for (_, relay) in due {
            self.release_relay(now, relay);
        }
        self.calls.machine.handle_timeout(now);
        if let Some((_, _, _, pm)) = self.calls.path.as_mut() {
            pm.handle_timeout(now);
        }
    }
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
