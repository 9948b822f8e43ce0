//! The uplink: this node's side of the overlay. It finds super nodes and keeps links to two of
//! them ([`Attacher`]: UDP probes, then TCP, the fallback and TLS ports), classifies the NAT in
//! front of it ([`NatProbe`], RFC 5780, against an attached super node), keeps the UDP binding
//! towards the super nodes alive every 20 s with a STUN Binding whose answer also tells when the
//! NAT gave us a new mapping, and follows the host's addresses.
//!
//! It owns the link streams and their sessions. What it learns (the links, our reflexive
//! address, the NAT type, whether UDP works) it publishes as [`Facts`] for the other parts; it
//! tells the super-node role when a link comes up or breaks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_core::endpoint::{ConnId, EndpointEvent};
use natter_core::overlay::{
    AttachAction, AttachEvent, Attacher, HostCache, NatEvent, NatProbe, NatProbeConfig, NatReport,
};
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, Input, Machine, StreamCommand, StreamId, Transmit};
use natter_core::wire::message::Message;
use natter_core::wire::stun::{Message as StunMessage, TransactionId};

use super::parts::{Cx, Facts, Link, Notice, PartId};
use super::NodeEvent;

/// UDP destinations remembered for the NAT probe.
const MAX_CONTACTED: usize = 64;
/// How soon a NAT probe that could not classify (the super node had no second address or
/// partner yet) is tried again.
const NAT_RETRY: Duration = Duration::from_secs(15);
/// While our reflexive address is asked again, an unanswered keep-alive is repeated this often.
const RECHECK_EVERY: Duration = Duration::from_millis(500);
/// ... for at most this long.
const RECHECK_FOR: Duration = Duration::from_secs(10);

/// The uplink part. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Uplink {
    rng: Rng,
    attacher: Attacher,
    /// Link streams and the sessions on them.
    stream_conn: BTreeMap<StreamId, ConnId>,
    conn_stream: BTreeMap<ConnId, StreamId>,
    nat: Option<NatProbe>,
    nat_report: Option<NatReport>,
    next_nat_check: Option<Instant>,
    next_udp_keepalive: Option<Instant>,
    /// The transaction of the last UDP keep-alive.
    keepalive_probe: Option<TransactionId>,
    /// Our reflexive address is asked again (a call's path died): keep asking every
    /// [`RECHECK_EVERY`] until an answer comes, or until then.
    recheck_until: Option<Instant>,
    /// Our address as super nodes see it over UDP.
    reflexive: Option<SocketAddr>,
    /// Addresses this node sent UDP to (probes, keep-alives, calls), for the NAT probe:
    /// filters may be open for them. Bounded.
    udp_contacted: Vec<SocketAddr>,
    local_addresses: Vec<SocketAddr>,
}

impl Uplink {
    /// An uplink that starts attaching with `cache` at the first [`Uplink::start`].
    pub fn new(
        seed: [u8; 32],
        attach: natter_core::overlay::AttachConfig,
        cache: HostCache,
        local_addresses: Vec<SocketAddr>,
    ) -> Self {
        Self {
            rng: Rng::from_seed_bytes(seed),
            attacher: Attacher::new(attach, cache),
            stream_conn: BTreeMap::new(),
            conn_stream: BTreeMap::new(),
            nat: None,
            nat_report: None,
            next_nat_check: None,
            next_udp_keepalive: None,
            keepalive_probe: None,
            recheck_until: None,
            reflexive: None,
            udp_contacted: Vec::new(),
            local_addresses,
        }
    }

    /// What this part knows, for the others (the role flag is the facade's).
    pub fn facts(&self, super_node: bool) -> Facts {
        Facts {
            links: self
                .attacher
                .attached()
                .into_iter()
                .filter_map(|(stream, addr)| {
                    let conn = self.stream_conn.get(&stream)?;
                    Some(Link {
                        stream,
                        addr,
                        conn: *conn,
                    })
                })
                .collect(),
            udp_blocked: self.attacher.udp_blocked(),
            link_transport: self.attacher.link_transport(),
            reflexive: self.reflexive,
            nat: self.nat_report.clone(),
            local_addresses: self.local_addresses.clone(),
            super_node,
        }
    }

    /// The host cache (to persist it, and to seed a new super node's membership).
    pub fn cache(&self) -> &HostCache {
        self.attacher.cache()
    }

    /// A one-line description of how this node is joined.
    pub fn describe(&self, now: Instant) -> String {
        self.attacher.describe(now)
    }

    /// Start (or restart) attaching.
    pub fn start(&mut self, cx: &mut Cx<'_>) {
        self.attacher.start(cx.now, cx.wall);
        self.flush(cx);
    }

    /// The host's addresses changed (a new network, a new lease): what we knew about our NAT
    /// is stale, the links are closed and attaching starts again.
    pub fn set_local_addresses(&mut self, cx: &mut Cx<'_>, addresses: Vec<SocketAddr>) {
        self.local_addresses = addresses;
        self.nat_report = None;
        self.reflexive = None;
        self.nat = None;
        self.next_nat_check = None;
        let links: Vec<StreamId> = self
            .attacher
            .attached()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for stream in links {
            self.close_link(cx, stream);
        }
        self.start(cx);
    }

    /// A STUN answer (success or error) arrived: one of our probes, a keep-alive or the NAT
    /// probe's. Returns false when it matched nothing.
    pub fn on_stun_answer(&mut self, cx: &mut Cx<'_>, msg: &StunMessage, input: Input<'_>) -> bool {
        let matched = if self.attacher.probe_answered(cx.now, msg.transaction) {
            // The first address a super node sees us at over UDP: a call placed or answered
            // before the NAT report (about a second after attaching) or the first keep-alive
            // needs it as its reflexive candidate.
            // A probe answered from a new public IP (the NAT moved to a new address, and the
            // links broke with it) replaces the stale one at once: calls offer it to the peer.
            let mapped = msg.mapped_address();
            let moved = matches!((self.reflexive, mapped), (Some(r), Some(m)) if r.ip() != m.ip());
            if self.reflexive.is_none() || moved {
                self.reflexive = mapped;
            }
            if moved {
                self.next_nat_check = Some(cx.now);
            }
            true
        } else if self.keepalive_probe == Some(msg.transaction) {
            self.keepalive_probe = None;
            if self.recheck_until.take().is_some() {
                self.next_udp_keepalive = Some(cx.now + cx.cfg.udp_keepalive);
            }
            let mapped = msg.mapped_address();
            if self.reflexive.is_some() && mapped != self.reflexive {
                // The NAT gave us a new mapping (rebinding): re-detect it.
                self.next_nat_check = Some(cx.now);
            }
            self.reflexive = mapped.or(self.reflexive);
            true
        } else if let Some(probe) = self.nat.as_mut() {
            probe.handle_input(cx.now, input);
            true
        } else {
            false
        };
        self.flush(cx);
        matched
    }

    /// An event of a link session. False when the application should hear it (anything but
    /// the session coming up or going).
    pub fn on_session(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let consumed = matches!(
            e,
            EndpointEvent::Connected { .. }
                | EndpointEvent::ConnectFailed { .. }
                | EndpointEvent::Closed { .. }
        );
        match e {
            EndpointEvent::Connected { conn, peer, .. } => {
                if let Some(&stream) = self.conn_stream.get(conn) {
                    self.attacher
                        .session_established(cx.now, stream, peer.certificate.dh_public);
                }
            }
            EndpointEvent::ConnectFailed { conn, .. } | EndpointEvent::Closed { conn, .. } => {
                if let Some(stream) = self.conn_stream.remove(conn) {
                    self.stream_conn.remove(&stream);
                    let link = self.link(stream, *conn);
                    self.attacher.stream_closed(cx.now, stream);
                    cx.out.commands.push_back(StreamCommand::Close { stream });
                    if let Some(link) = link {
                        unlinked(cx, link, false);
                    }
                }
            }
            _ => {}
        }
        self.flush(cx);
        consumed
    }

    /// An overlay message on a link session.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        let Some(stream) = self.conn_stream.get(&conn).copied() else {
            cx.out.stats.overlay_dropped += 1;
            return;
        };
        match msg {
            Message::OverlayAttachAck {
                accepted,
                reflexive,
                super_nodes,
                keepalive_secs,
            } => {
                if *accepted && *keepalive_secs > 0 {
                    // The super node sends its keep-alives this often: three of them missed
                    // means the link is dead (at most our own idle timeout); ours go out at
                    // least as often as it asks.
                    let theirs = Duration::from_secs(u64::from(*keepalive_secs));
                    let keepalive = cx.cfg.keepalive.min(theirs);
                    let idle = (theirs * 3).min(cx.cfg.idle_timeout);
                    cx.sessions
                        .endpoint()
                        .set_session_timing(conn, keepalive, idle);
                }
                self.attacher.attach_answered(
                    cx.now,
                    cx.wall,
                    stream,
                    *accepted,
                    *reflexive,
                    super_nodes,
                );
            }
            Message::OverlayHostCache { entries } | Message::OverlayMembership { entries } => {
                self.attacher.host_cache_received(cx.wall, entries);
            }
            Message::OverlayHandover { entries } => {
                self.attacher.handover(cx.now, cx.wall, stream, entries);
            }
            _ => cx.out.stats.overlay_dropped += 1,
        }
        self.flush(cx);
    }

    /// A link stream is connected.
    pub fn on_stream_opened(&mut self, cx: &mut Cx<'_>, stream: StreamId) {
        self.attacher.stream_opened(cx.now, stream);
        self.flush(cx);
    }

    /// A link stream closed (or could not be opened): its session ends with it, and the super
    /// node it led to may be gone.
    pub fn on_stream_closed(&mut self, cx: &mut Cx<'_>, stream: StreamId) {
        if let Some(conn) = self.stream_conn.remove(&stream) {
            let link = self.link(stream, conn);
            self.conn_stream.remove(&conn);
            cx.sessions.close(cx.now, conn);
            if let Some(link) = link {
                unlinked(cx, link, true);
            }
        }
        self.attacher.stream_closed(cx.now, stream);
        self.flush(cx);
    }

    /// The attached link on `stream`, whose session is `conn`.
    fn link(&self, stream: StreamId, conn: ConnId) -> Option<Link> {
        self.attacher
            .attached()
            .into_iter()
            .find(|(s, _)| *s == stream)
            .map(|(stream, addr)| Link { stream, addr, conn })
    }

    /// A notice from another part.
    pub fn on_notice(&mut self, cx: &mut Cx<'_>, notice: Notice) {
        match notice {
            Notice::UdpContacted(addr) => self.note_udp(addr),
            // Ask a super node for our reflexive address now rather than at the next UDP
            // keep-alive (a call's path died: perhaps our NAT rebound us), and again until it
            // answers (the NAT may still be down).
            Notice::RecheckReflexive if self.next_udp_keepalive.is_some() => {
                if self.recheck_until.is_none() {
                    self.next_udp_keepalive = Some(cx.now);
                }
                self.recheck_until = Some(cx.now + RECHECK_FOR);
            }
            _ => {}
        }
    }

    /// The uplink's timers.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        self.attacher.handle_timeout(now, cx.wall);
        if let Some(p) = self.nat.as_mut() {
            p.handle_timeout(now);
        }
        if self.next_nat_check.is_some_and(|t| t <= now) && self.nat.is_none() {
            match cx.facts.links.first() {
                Some(link) => self.start_nat_probe(cx, link.addr),
                None => {
                    // Not attached right now: the next attachment starts a probe anyway.
                    self.next_nat_check = None;
                    self.nat_report = None;
                }
            }
        }
        if self.recheck_until.is_some_and(|t| t <= now) {
            self.recheck_until = None;
        }
        if self.next_udp_keepalive.is_some_and(|t| t <= now) {
            let every = if self.recheck_until.is_some() {
                RECHECK_EVERY
            } else {
                cx.cfg.udp_keepalive
            };
            self.next_udp_keepalive = Some(now + every);
            // No UDP binding to keep when UDP is blocked.
            let target = (!self.attacher.udp_blocked())
                .then(|| cx.facts.links.first().map(|l| l.addr))
                .flatten();
            if let Some(sn) = target {
                let mut id = [0u8; 12];
                self.rng.fill(&mut id);
                let transaction = TransactionId(id);
                self.keepalive_probe = Some(transaction);
                cx.out.transmits.push_back(binding_request(sn, transaction));
            }
        }
        self.flush(cx);
    }

    /// When the uplink next wants its timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.attacher.poll_timeout(),
            self.nat.as_ref().and_then(|p| p.poll_timeout()),
            self.next_nat_check,
            self.next_udp_keepalive,
            self.recheck_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Run what the attacher and the NAT probe asked for, and report what they said.
    fn flush(&mut self, cx: &mut Cx<'_>) {
        loop {
            let actions = self.attacher.drain_actions();
            let events = self.attacher.drain_events();
            if actions.is_empty() && events.is_empty() {
                break;
            }
            for action in actions {
                self.run_action(cx, action);
            }
            for e in events {
                self.on_attach_event(cx, e);
            }
        }
        if let Some(probe) = self.nat.as_mut() {
            while let Some(t) = probe.poll_transmit() {
                cx.out.transmits.push_back(t);
            }
            let mut reports = Vec::new();
            let mut failed = false;
            while let Some(e) = probe.poll_event() {
                match e {
                    NatEvent::Classified(report) => reports.push(report),
                    // The super node offers no RFC 5780 tests yet (one address and no partner
                    // so far): nothing learnt; try again soon rather than at the next recheck.
                    NatEvent::Failed { .. } => failed = true,
                }
            }
            if failed {
                let soon = cx.now + NAT_RETRY.min(cx.cfg.nat_recheck);
                self.next_nat_check = Some(self.next_nat_check.map_or(soon, |t| t.min(soon)));
            }
            if probe.is_done() {
                self.nat = None;
            }
            for report in reports {
                self.nat_report = Some(report.clone());
                cx.out.events.push_back(NodeEvent::Nat(report));
            }
        }
    }

    fn run_action(&mut self, cx: &mut Cx<'_>, action: AttachAction) {
        let now = cx.now;
        match action {
            AttachAction::Probe { addr, transaction } => {
                self.note_udp(addr);
                cx.out
                    .transmits
                    .push_back(binding_request(addr, transaction));
            }
            AttachAction::OpenStream {
                stream,
                remote,
                tls,
            } => cx.sessions.open_stream(cx.out, stream, remote, tls),
            AttachAction::StartSession { stream, static_key } => {
                match cx
                    .sessions
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
                        nat: super::parts::nat_code(self.nat_report.as_ref().map(|r| r.nat)),
                        local_addresses: self.local_addresses.clone(),
                    };
                    let _ = cx.sessions.send(now, conn, &msg);
                }
            }
            AttachAction::RequestHostCache { stream } => {
                if let Some(conn) = self.stream_conn.get(&stream).copied() {
                    let msg = Message::OverlayHostCache { entries: vec![] };
                    let _ = cx.sessions.send(now, conn, &msg);
                }
            }
            AttachAction::CloseStream { stream } => self.close_link(cx, stream),
        }
    }

    fn on_attach_event(&mut self, cx: &mut Cx<'_>, e: AttachEvent) {
        if let AttachEvent::Attached { super_node, .. } = &e {
            // First attachment: learn what sits between us and the Internet, and keep the UDP
            // binding towards the super nodes alive from now on.
            if self.nat.is_none() && self.nat_report.is_none() {
                self.start_nat_probe(cx, *super_node);
            }
            if self.next_udp_keepalive.is_none() {
                self.next_udp_keepalive = Some(cx.now + cx.cfg.udp_keepalive);
            }
            let link = self
                .attacher
                .attached()
                .into_iter()
                .find(|(_, a)| a == super_node)
                .and_then(|(stream, addr)| {
                    self.stream_conn
                        .get(&stream)
                        .map(|&conn| Link { stream, addr, conn })
                });
            if let Some(link) = link {
                // As a super node, the link is a membership link too.
                cx.out.notify(PartId::SuperNode, Notice::Linked(link));
            }
        }
        cx.out.events.push_back(NodeEvent::Attach(e));
    }

    /// Close a link: its session ends (the attacher hears of it when the endpoint reports the
    /// session closed), then its stream.
    fn close_link(&mut self, cx: &mut Cx<'_>, stream: StreamId) {
        if let Some(conn) = self.stream_conn.remove(&stream) {
            cx.sessions.close(cx.now, conn);
        }
        cx.out.commands.push_back(StreamCommand::Close { stream });
    }

    fn note_udp(&mut self, to: SocketAddr) {
        if !self.udp_contacted.contains(&to) {
            if self.udp_contacted.len() >= MAX_CONTACTED {
                self.udp_contacted.remove(0);
            }
            self.udp_contacted.push(to);
        }
    }

    fn start_nat_probe(&mut self, cx: &mut Cx<'_>, server: SocketAddr) {
        let mut cfg = NatProbeConfig::new(server, self.local_addresses.clone(), self.rng.bytes32());
        cfg.contacted = self
            .udp_contacted
            .iter()
            .copied()
            .filter(|a| a.ip() != server.ip())
            .collect();
        self.nat = Some(NatProbe::new(cfg, cx.now));
        self.next_nat_check = Some(cx.now + cx.cfg.nat_recheck);
    }
}

/// Tell the parts that use links that `link` ended (`lost`: its stream broke).
fn unlinked(cx: &mut Cx<'_>, link: Link, lost: bool) {
    for part in [PartId::SuperNode, PartId::Calls] {
        cx.out.notify(part, Notice::Unlinked { link, lost });
    }
}

/// A STUN Binding request to `to`.
fn binding_request(to: SocketAddr, transaction: TransactionId) -> Transmit {
    Transmit {
        destination: Destination::Udp(to),
        source: None,
        payload: Bytes::from(StunMessage::binding_request(transaction).encode()),
        ttl: None,
    }
}
