//! The super-node part: everything a node does only while it holds the super-node role.
//!
//! * the clients attached to it and the membership of every super node
//!   ([`SuperNodeRole`], [`crate::membership`]);
//! * the STUN server (RFC 8489 Binding and RFC 5780 tests; a single-address super node pairs
//!   with a peer super node on another IP for change-IP requests);
//! * its share of the global index and the ring it routes on ([`index`]);
//! * the media relay ([`relay`]): channels between two devices that cannot meet directly.
//!
//! The facade creates this part on promotion and drops it on demotion (after
//! [`SuperNode::leave`] told the clients and the other super nodes). It owns the sessions
//! clients and other super nodes open to it and those it opens to other super nodes; the relay
//! also watches every other session (a relay channel joins two sessions' addresses).

mod chat;
mod index;
mod mailbox;

pub use mailbox::MailboxStats;
mod relay;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::{ConnId, EndpointEvent, Path};
use natter_core::sansio::{Destination, Input, Machine};
use natter_core::wire::message::{HostEntry, Message};
use natter_core::wire::stun::TransactionId;

use super::parts::{Cx, Link, Notice};
use super::NodeEvent;
use crate::dht::{Dht, Ring};
use crate::relay::RelayConfig;
use crate::stun::StunServer;
use crate::supernode::{SuperNodeConfig, SuperNodeRole};

pub(crate) use index::IndexPart;
pub(crate) use relay::Relaying;

/// What a new super node starts from.
pub(crate) struct Promotion {
    /// This super node's entry.
    pub me: HostEntry,
    /// Seeds for the membership and the relay.
    pub seeds: [[u8; 32]; 2],
    /// The wall-clock second it takes the role (its incarnation).
    pub incarnation: u32,
    /// Super nodes it already knows (from its host cache).
    pub known: Vec<HostEntry>,
    /// The STUN server it runs.
    pub stun: StunServer,
    /// The relay's settings.
    pub relay: RelayConfig,
    /// Mailboxes kept on disk by an earlier run ([`mailbox::Mailboxes::save`]).
    pub mailboxes: Option<Vec<u8>>,
}

/// The super-node part. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct SuperNode {
    role: SuperNodeRole,
    stun: StunServer,
    index: IndexPart,
    relay: Relaying,
    /// Pokes forwarded per poking device (its static key) in the current minute, and when
    /// that minute began.
    pokes: BTreeMap<[u8; 32], (Instant, u32)>,
    /// Chat pieces forwarded to clients and senders.
    chat: chat::ChatForwarding,
    /// Messages kept for offline devices.
    mailboxes: mailbox::Mailboxes,
}

/// The address a session runs to, when it runs straight over UDP.
fn udp_remote(cx: &Cx<'_>, conn: ConnId) -> Option<SocketAddr> {
    match cx.sessions.view().remote(conn) {
        Some(Path::Direct {
            to: Destination::Udp(a),
            ..
        }) => Some(*a),
        _ => None,
    }
}

/// Pokes one device may have forwarded in a minute (however many sessions it opens); past
/// it they are dropped.
const POKES_PER_MINUTE: u32 = 30;
/// Pokers remembered before those whose minute is over are forgotten.
const POKERS_HELD: usize = 4096;

impl SuperNode {
    /// Take the role at `cx.now`. Links the node already has to super nodes become membership
    /// links.
    pub fn new(cx: &mut Cx<'_>, p: Promotion) -> Self {
        let mut sn_cfg =
            SuperNodeConfig::new(p.me, cx.cfg.identity.clone(), p.seeds[0], p.incarnation);
        sn_cfg.max_clients = cx.cfg.max_clients;
        sn_cfg.keepalive = cx.cfg.keepalive;
        let role = SuperNodeRole::new(sn_cfg, &p.known, cx.now);
        let mut relay_cfg = p.relay;
        relay_cfg.seed = p.seeds[1];
        let mut sn = Self {
            role,
            stun: p.stun,
            index: IndexPart::new(cx, p.me),
            relay: Relaying::new(relay_cfg, cx.sessions.view()),
            pokes: BTreeMap::new(),
            chat: chat::ChatForwarding::default(),
            mailboxes: match p.mailboxes.as_deref() {
                None => mailbox::Mailboxes::default(),
                Some(saved) => mailbox::Mailboxes::restore(saved, cx.now, cx.wall)
                    .unwrap_or_else(|_| mailbox::Mailboxes::unreadable()),
            },
        };
        for link in cx.facts.links.clone() {
            sn.linked(cx, link);
        }
        sn.index.sync_ring(cx, &sn.role);
        sn.flush(cx);
        sn
    }

    /// The role's state (clients, membership).
    pub fn role(&self) -> &SuperNodeRole {
        &self.role
    }

    /// The index, as a super node.
    pub fn dht(&self) -> &Dht {
        self.index.dht()
    }

    /// The ring the index routes on.
    pub fn ring(&self) -> &Ring {
        self.index.ring()
    }

    /// The presence watches of our clients.
    pub fn watches(&self) -> &crate::watch::Watches {
        self.index.watches()
    }

    /// The relay.
    pub fn relay(&self) -> &crate::relay::Relay {
        self.relay.relay()
    }

    /// Give the role up: tell every client where to go instead and the other super nodes that
    /// this one leaves, and release every relay channel.
    pub fn leave(mut self, cx: &mut Cx<'_>) {
        for r in self.role.handover() {
            let _ = cx.sessions.send(cx.now, r.conn, &r.message);
        }
        while let Some((to, message)) = self.role.membership_mut().poll_output() {
            self.index.send_to_super_node(cx, to, message);
        }
        self.relay.stop(cx);
    }

    /// Refuse records of these revoked devices.
    pub fn revoke(&mut self, devices: &[DeviceId]) {
        self.index.revoke(devices);
    }

    /// A STUN request on one of our addresses.
    pub fn on_stun_request(&mut self, cx: &mut Cx<'_>, input: Input<'_>) {
        self.stun.handle_input(cx.now, input);
        cx.out.stats.stun_answered += 1;
        self.flush(cx);
    }

    /// A datagram that may be a frame for our relay: forwarded at once (the per-packet path
    /// of a busy relay). Returns false when it is not one (the endpoint takes it then).
    pub fn relay_datagram(&mut self, cx: &mut Cx<'_>, source: SocketAddr, data: &[u8]) -> bool {
        self.relay.datagram(cx, source, data)
    }

    /// Every session's events go by here first: the relay registers every session's address.
    /// Returns true when the event was a relayed frame (consumed).
    pub fn observe(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let consumed = self.relay.observe(cx, e);
        self.flush(cx);
        consumed
    }

    /// An event of a session this part owns. Returns false when the application should hear
    /// it (clients and peers coming and going are reported as session events too).
    pub fn on_session(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let consumed = match e {
            EndpointEvent::Connected { conn, .. } => self.index.connected(cx, *conn),
            EndpointEvent::ConnectFailed { conn, .. } => self.index.connect_failed(cx, *conn),
            EndpointEvent::Closed { conn, cause } => {
                self.index.session_closed(cx, *conn, *cause);
                if let Some(ev) = self.role.session_closed(*conn) {
                    cx.out.events.push_back(NodeEvent::SuperNode(ev));
                }
                false
            }
            _ => false,
        };
        self.flush(cx);
        consumed
    }

    /// A poke for our client `device` from the session `conn` (at most
    /// [`POKES_PER_MINUTE`] a poking device), forwarded in the name of the user the session
    /// proved.
    fn poke(&mut self, cx: &mut Cx<'_>, conn: ConnId, device: DeviceId) {
        let Some((from, key)) = cx
            .sessions
            .view()
            .peer(conn)
            .map(|p| (p.certificate.user.clone(), p.certificate.dh_public))
        else {
            cx.out.stats.overlay_dropped += 1;
            return;
        };
        let now = cx.now;
        if self.pokes.len() >= POKERS_HELD && !self.pokes.contains_key(&key) {
            self.pokes
                .retain(|_, (since, _)| now < *since + Duration::from_secs(60));
            if self.pokes.len() >= POKERS_HELD {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
        }
        let (since, count) = self.pokes.entry(key).or_insert((now, 0));
        if cx.now >= *since + Duration::from_secs(60) {
            (*since, *count) = (cx.now, 0);
        }
        if *count >= POKES_PER_MINUTE {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        *count += 1;
        self.forward_poke(cx, device, from);
    }

    /// Tell our client `device` (or ourselves) that `from` poked it.
    fn forward_poke(&mut self, cx: &mut Cx<'_>, device: DeviceId, from: UserName) {
        if device == cx.cfg.identity.device.device_id() {
            cx.out.events.push_back(NodeEvent::Poked { from });
            return;
        }
        let client = self.role.client_of(device);
        match client {
            Some(conn) => {
                let _ = cx
                    .sessions
                    .send(cx.now, conn, &Message::ContactPoked { from });
            }
            None => cx.out.stats.overlay_dropped += 1,
        }
    }

    /// An overlay, membership, index or relay message for the role.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        match msg {
            Message::ContactPoke { device } => self.poke(cx, conn, *device),
            Message::ChatChunk { .. } => self.chat.chunk(cx, &self.role, Some(conn), msg),
            Message::MailboxPut { .. } => {
                self.mailboxes
                    .put(cx, &mut self.index, &self.role, Some(conn), msg)
            }
            Message::MailboxAck { .. } => {
                self.mailboxes
                    .ack(cx, &mut self.index, &self.role, Some(conn), msg)
            }
            Message::MailboxDeliver { .. } => self.mailboxes.deliver(cx, &self.role, conn, msg),
            Message::OverlayStunForward {
                client,
                transaction,
            } => {
                let from = self
                    .role
                    .peer_links()
                    .into_iter()
                    .find(|(c, _)| *c == conn)
                    .map(|(_, a)| a);
                match from {
                    Some(forwarded_by) => self.stun.answer_for_partner(
                        *client,
                        TransactionId(*transaction),
                        forwarded_by,
                    ),
                    None => cx.out.stats.overlay_dropped += 1,
                }
            }
            Message::RelayAllocate { .. } | Message::RelayRelease { .. } => {
                self.relay.on_message(cx, conn, msg)
            }
            m if crate::membership::Membership::is_membership_message(m) => {
                self.index.membership_message(cx, &mut self.role, conn, m)
            }
            // A super node deposits its own will with those after it on the ring, over its
            // UDP session from its own address (whether it is attached here as a client too
            // does not matter).
            Message::IndexWill {
                record,
                standby: Some(holder),
            } if udp_remote(cx, conn) == Some(*holder) => {
                self.index
                    .deposited_will(cx, conn, record, *holder, self.role.membership())
            }
            // Only attached clients watch and leave wills here.
            Message::IndexWatch { full: true, .. } | Message::IndexWill { .. }
                if !self.role.is_client(conn) =>
            {
                cx.out.stats.overlay_dropped += 1
            }
            Message::IndexStore { record, .. } => {
                // A device that publishes "online" gets what waits for it here.
                if record.online && self.index.dht().verify_record(record, cx.wall) {
                    self.mailboxes
                        .record(cx, &mut self.index, &self.role, record);
                }
                self.index.on_message(cx, conn, msg)
            }
            Message::IndexSearch { .. }
            | Message::IndexSearchAt { .. }
            | Message::IndexResult { .. }
            | Message::IndexNotFound { .. }
            | Message::IndexWatch { .. }
            | Message::IndexNotify { .. }
            | Message::IndexWill { .. } => self.index.on_message(cx, conn, msg),
            _ => self.role_message(cx, conn, msg),
        }
        self.flush(cx);
    }

    /// Attach requests, host-cache requests and membership hellos.
    fn role_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        let Some(peer) = cx.sessions.view().peer(conn).cloned() else {
            return;
        };
        // Where the client is seen from: its UDP address, or the far end of the stream its
        // session runs over (clients behind a UDP-blocking firewall attach over TCP).
        // (Every stream is announced with its far end before data arrives on it, so the
        // fallback is never used for a live session.)
        let remote = match cx.sessions.view().remote(conn) {
            Some(Path::Direct {
                to: Destination::Udp(a),
                ..
            }) => Some(*a),
            Some(Path::Direct {
                to: Destination::Stream(s),
                ..
            }) => cx.stream_remotes.get(s).copied(),
            Some(Path::Relayed { .. }) | None => None,
        }
        .unwrap_or(cx.cfg.listen);
        let (replies, events) = self.role.handle_message(
            cx.now,
            conn,
            &peer.certificate.user,
            peer.certificate.device,
            remote,
            msg,
        );
        for r in replies {
            let _ = cx.sessions.send(cx.now, r.conn, &r.message);
        }
        if matches!(msg, Message::OverlayAttach { .. }) && self.role.is_client(conn) {
            // A client that vanishes is noticed after two and a half of its keep-alive
            // intervals (50 s by default), so its contacts see it offline within a minute.
            let idle = (cx.cfg.keepalive * 5 / 2).min(cx.cfg.idle_timeout);
            cx.sessions
                .endpoint()
                .set_session_timing(conn, cx.cfg.keepalive, idle);
        }
        cx.out
            .events
            .extend(events.into_iter().map(NodeEvent::SuperNode));
        if matches!(msg, Message::OverlayMembership { .. }) {
            self.index.sync_ring(cx, &self.role);
        }
    }

    /// A notice from another part.
    pub fn on_notice(&mut self, cx: &mut Cx<'_>, notice: Notice) {
        match notice {
            Notice::Linked(link) => self.linked(cx, link),
            Notice::Unlinked { link, lost } => {
                self.role.session_closed(link.conn);
                // A super node whose link just broke may be gone: keep index traffic off it
                // for a while.
                if lost {
                    self.index.unreachable(cx, link.addr);
                }
            }
            Notice::SearchHere { id, user } => self.index.search_here(cx, id, user),
            Notice::Publish(record) => {
                // Our own device's messages may wait here too.
                self.mailboxes
                    .record(cx, &mut self.index, &self.role, &record);
                self.index.publish(cx, *record)
            }
            Notice::Will(record) => self.index.deposit_own_will(cx, *record),
            Notice::PokeHere { device } => {
                let me = cx.cfg.identity.certificate.user.clone();
                self.forward_poke(cx, device, me);
            }
            Notice::WatchHere { users, watch } => self.index.watch_here(&users, watch),
            Notice::ChatHere(encoded) => match Message::decode(&encoded) {
                Ok(msg @ Message::ChatChunk { .. }) => self.chat.chunk(cx, &self.role, None, &msg),
                Ok(msg @ Message::MailboxPut { .. }) => {
                    self.mailboxes
                        .put(cx, &mut self.index, &self.role, None, &msg)
                }
                Ok(msg @ Message::MailboxAck { .. }) => {
                    self.mailboxes
                        .ack(cx, &mut self.index, &self.role, None, &msg)
                }
                _ => cx.out.stats.overlay_dropped += 1,
            },
            _ => {}
        }
        self.flush(cx);
    }

    /// A link to a super node is a membership link too.
    fn linked(&mut self, cx: &mut Cx<'_>, link: Link) {
        if let Some(peer) = cx.sessions.view().peer(link.conn) {
            let entry = HostEntry {
                addr: link.addr,
                static_key: peer.certificate.dh_public,
            };
            let r = self.role.peer_connected(cx.now, link.conn, entry);
            let _ = cx.sessions.send(cx.now, r.conn, &r.message);
        }
    }

    /// The role's timers: membership, ring, index, relay.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        self.role.handle_timeout(cx.now);
        self.index.handle_timeout(cx, &self.role);
        self.relay.handle_timeout(cx);
        self.mailboxes.handle_timeout(cx.now);
        self.mailboxes.redeliver(cx, &mut self.index, &self.role);
        self.flush(cx);
    }

    /// What the role's mailboxes hold.
    pub fn mailbox_stats(&self) -> MailboxStats {
        self.mailboxes.stats()
    }

    /// The mailboxes, encoded to keep on disk, and their generation.
    pub fn save_mailboxes(
        &self,
        now: Instant,
        wall: natter_core::crypto::UnixTime,
    ) -> (u64, Vec<u8>) {
        (self.mailboxes.generation(), self.mailboxes.save(now, wall))
    }

    /// Changes whenever a message is kept or let go.
    pub fn mailbox_generation(&self) -> u64 {
        self.mailboxes.generation()
    }

    /// When the role next wants its timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            Some(self.role.poll_timeout()),
            self.index.poll_timeout(),
            self.relay.poll_timeout(),
            self.mailboxes.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Send what the membership, the index and the STUN server produced.
    fn flush(&mut self, cx: &mut Cx<'_>) {
        self.index.flush(cx, &mut self.role);
        // A single-address super node pairs with a peer super node on another IP.
        if self.stun.other().is_none() {
            let links = self.role.peer_links();
            let want = links
                .iter()
                .map(|(_, a)| *a)
                .find(|a| a.ip() != cx.cfg.listen.ip());
            if self.stun.partner() != want {
                self.stun.set_partner(want);
            }
            while let Some(f) = self.stun.poll_forward() {
                if let Some((conn, _)) = links.iter().find(|(_, a)| *a == f.partner) {
                    let msg = Message::OverlayStunForward {
                        client: f.client,
                        transaction: f.transaction.0,
                    };
                    let _ = cx.sessions.send(cx.now, *conn, &msg);
                }
            }
        }
        while let Some(t) = self.stun.poll_transmit() {
            cx.out.transmits.push_back(t);
        }
    }
}

/// What a node that is not a super node does with a message for the role: an index search is
/// answered "could not tell" (so the asker does not wait), anything else is dropped.
pub(crate) fn not_a_super_node(cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
    match msg {
        Message::IndexSearch { query, .. } | Message::IndexSearchAt { query, .. } => {
            let _ = cx.sessions.send(
                cx.now,
                conn,
                &Message::IndexNotFound {
                    query: *query,
                    hops: 0,
                    definite: false,
                },
            );
        }
        _ => cx.out.stats.overlay_dropped += 1,
    }
}
