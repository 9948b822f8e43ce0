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
//! messages on it go to the call machine with the user and device the session proved.
//!
//! **Media.** Once connected, a [`PathManager`] runs on the session: candidates, hole
//! punching, path choice and switching; [`Node::send_media`] seals frames on the session's
//! current path, and received frames arrive as [`NodeEvent::CallMedia`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_core::call::{CallConfig, CallError, CallEvent, CallMachine};
use natter_core::callpath::{PathAction, PathConfig, PathEvent, PathManager};
use natter_core::endpoint::{ConnId, EndpointEvent, Path, SendError};
use natter_core::identity::{DeviceId, UserName};
use natter_core::nat::NatType;
use natter_core::presence::PresenceRecord;
use natter_core::sansio::{Destination, StreamCommand, StreamId};
use natter_core::wire::message::{CallId, Candidate, CandidateKind, Message, MessageType};

use super::{Node, NodeEvent};
use crate::dht::{SearchOutcome, SearchResult};

/// Streams this module opens are numbered from here (the attacher's start at 0).
const STREAM_BASE: u64 = 1 << 40;

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
}

/// The node's call state.
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
    relay_streams: HashMap<StreamId, SocketAddr>,
    next_stream: u64,
    /// Our outgoing call (this side controls the path).
    outgoing: Option<CallId>,
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
            path: None,
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.machine.poll_timeout(),
            self.path.as_ref().and_then(|(_, _, _, p)| p.poll_timeout()),
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
        let r = self.calls.machine.answer(now, call);
        self.pump(now);
        r
    }

    /// Decline the call ringing here (for every device of this user).
    pub fn decline(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let r = self.calls.machine.decline(now, call);
        self.pump(now);
        r
    }

    /// Hang up (or cancel an outgoing call that has not been answered).
    pub fn hang_up(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let r = self.calls.machine.hang_up(now, call);
        self.pump(now);
        r
    }

    /// Put the call on hold.
    pub fn hold(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let r = self.calls.machine.hold(now, call);
        self.pump(now);
        r
    }

    /// Take the call off hold.
    pub fn resume(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let r = self.calls.machine.resume(now, call);
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
    pub fn call_path(&self, call: CallId) -> Option<(Path, natter_core::callpath::PathKind)> {
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
            let link = self.calls.devices.entry(device).or_insert(DeviceLink {
                conn: None,
                up: false,
                record: None,
                queue: Vec::new(),
                sns_left: VecDeque::new(),
                relay: None,
            });
            if link.conn.is_none() {
                link.sns_left = r.super_nodes.iter().copied().collect();
                link.record = Some(r);
                self.dial_device(now, device);
            }
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
        if entry.conn.is_some() || self.calls.relay_streams.values().any(|a| *a == sn) {
            return;
        }
        let udp_blocked = self.attacher.udp_blocked()
            || self
                .nat_report
                .as_ref()
                .is_some_and(|r| r.nat == NatType::UdpBlocked);
        if udp_blocked {
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
            let stream = StreamId::local(self.calls.next_stream);
            self.calls.next_stream += 1;
            self.calls.relay_streams.insert(stream, sn);
            self.commands.push_back(StreamCommand::Connect {
                stream,
                remote: sn,
                tls: false,
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

    /// A stream this module asked for is connected: run the session with the super node on it.
    pub(super) fn call_stream_opened(&mut self, now: Instant, stream: StreamId) {
        let Some(sn) = self.calls.relay_streams.get(&stream).copied() else {
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
        if let Some(sn) = self.calls.relay_streams.remove(&stream) {
            let up = self.calls.relay_sns.get(&sn).is_some_and(|e| e.up);
            if !up {
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
        self.calls.relay_sn_conns.insert(conn, sn);
        for device in waiting {
            self.ask_relay(now, conn, sn, device);
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
                    if let Some(old) = link.conn.replace(*conn) {
                        if old != *conn {
                            self.calls.conn_device.remove(&old);
                        }
                    }
                    link.up = true;
                    let queue = std::mem::take(&mut link.queue);
                    for m in queue {
                        let _ = self.endpoint.send_control(now, *conn, &m);
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
                    let was_up = self
                        .calls
                        .devices
                        .get(&device)
                        .is_some_and(|l| l.up && l.conn == Some(*conn));
                    if let Some(link) = self.calls.devices.get_mut(&device) {
                        if link.conn == Some(*conn) {
                            link.conn = None;
                            link.up = false;
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
            EndpointEvent::Media { conn, data } => {
                let Some(device) = self.calls.conn_device.get(conn).copied() else {
                    return false;
                };
                self.calls.machine.handle_heard(now, device);
                if let Some((call, _, c, pm)) = self.calls.path.as_mut() {
                    if c == conn {
                        pm.media_received(now, data);
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
                if let Some((_, _, c, pm)) = self.calls.path.as_mut() {
                    if c == conn {
                        pm.path_changed(now, remote);
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
        if self.attacher.udp_blocked()
            || self
                .nat_report
                .as_ref()
                .is_some_and(|r| r.nat == NatType::UdpBlocked)
        {
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
                kind: if reflexive == Some(addr) && !lan_only(addr.ip()) {
                    CandidateKind::Reflexive
                } else {
                    CandidateKind::Host
                },
                addr,
            })
            .collect();
        if let Some(r) = reflexive {
            if !out.iter().any(|c| c.addr == r) {
                out.push(Candidate {
                    kind: CandidateKind::Reflexive,
                    addr: r,
                });
            }
        }
        out
    }

    /// Drain the call machine and the path manager; returns true when anything moved.
    pub(super) fn drain_calls(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(t) = self.calls.machine.poll_transmit() {
            moved = true;
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
                    let conn = self.calls.devices.get(device).and_then(|l| l.conn);
                    let relay = conn.and_then(|c| self.endpoint.remote(c).cloned());
                    if let (Some(conn), Some(relay)) = (conn, relay) {
                        let controlling = self.calls.outgoing == Some(*call);
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
                    // Give the relay channels back.
                    let relays: Vec<(SocketAddr, u32)> = self
                        .calls
                        .devices
                        .values_mut()
                        .filter_map(|l| l.relay)
                        .collect();
                    for (sn, channel) in relays {
                        if let Some(conn) = self.calls.relay_sns.get(&sn).and_then(|e| e.conn) {
                            let _ = self.endpoint.send_control(
                                now,
                                conn,
                                &Message::RelayRelease { channel },
                            );
                        }
                    }
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

    /// Timers of calls.
    pub(super) fn calls_timeout(&mut self, now: Instant) {
        self.calls.machine.handle_timeout(now);
        if let Some((_, _, _, pm)) = self.calls.path.as_mut() {
            pm.handle_timeout(now);
        }
    }
}

/// Whether `ip` is an address only its own host or LAN can reach (loopback, private,
/// link-local, unique local).
fn lan_only(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        std::net::IpAddr::V6(a) => {
            a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local()
        }
    }
}
