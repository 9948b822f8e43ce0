//! The node facade: one sans-IO machine per Natter node, whatever its role, built from parts.
//!
//! ```text
//!            handle_input / handle_timeout / commands
//!                              |
//!                            Node ---- route (message type -> part, session -> owner)
//!          +----------+--------+--------+-------------+
//!        Uplink     Lookup   Calls   SuperNode (while the role is held)
//!       (links,    (search, (dial,   (clients, membership, index,
//!        NAT,       own      relays,  relay, STUN server)
//!        keep-      record)  paths,
//!        alive)              media)
//!          +----------+--------+--------+-------------+
//!                     Endpoint (every Noise session, one port)
//! ```
//!
//! * The [`Endpoint`] holds every session, over UDP and over streams. Each session has one
//!   owning part (`parts::Owners`): the part that opened it, or the one a peer's session is
//!   given to by the path it came on (`route::claim`).
//! * Control messages go to parts by type (`route::message`); session events to the owner;
//!   the super-node role's relay sees every session first.
//! * Parts never touch each other's state: they read the `parts::Facts` the uplink publishes
//!   (links, addresses, NAT type) and send each other `parts::Notice`s, which the facade
//!   delivers in order until none is left (no pass limit: every notice is delivered).
//! * One `parts::TimerTable`: a deadline per part and the facade's own; `poll_timeout` is
//!   the earliest, and `handle_timeout` runs only the parts whose deadline passed.
//!
//! Datagrams are demultiplexed by their first byte: STUN requests go to the super-node role's
//! STUN server, STUN answers to the uplink, relayed frames for our relay straight to it,
//! Natter packets to the endpoint.
//!
//! **Promotion is measured, not configured**: with [`RolePolicy::Auto`] a node becomes a super
//! node once its NAT probe says it is open (a public address that an unsolicited packet from
//! another address reached) and it has been up for [`NodeConfig::promotion_uptime`]. A super
//! node whose periodic re-check finds it no longer open demotes itself and hands its clients
//! over. Operators can force or forbid the role.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use natter_core::call::{
    CallConfig, CallError, CallEvent, CallMachine, CallQuality, PathKind, SwitchReason,
};
use natter_core::crypto::{Capabilities, Certificate, DeviceId, UnixTime, UserName};
use natter_core::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent, Path, SendError};
use natter_core::overlay::{
    AttachEvent, ClientSearches, HostCache, NatReport, NatType, SearchOutcome,
};
use natter_core::rng::Rng;
use natter_core::sansio::{Input, Machine, StreamCommand, Transmit};
use natter_core::wire::message::{CallId, HostEntry, Message};
use natter_core::wire::stun::{Class, Message as StunMessage};
use natter_core::wire::{classify, Class as WireClass};

use crate::dht::Dht;
use crate::supernode::{SuperNodeEvent, SuperNodeRole};

mod calls;
mod chat;
mod config;
mod lookup;
mod parts;
mod route;
mod streams;
mod super_node;
mod uplink;

pub use calls::{DialError, DialOutcome};
pub use chat::{ChatEvent, ChatStats, MAX_OUTBOX, MAX_PARTIALS, MAX_UNACKED, PARTIAL_TIMEOUT};
pub use config::{Load, NodeConfig, RolePolicy};
pub use super_node::MailboxStats;

use calls::Calls;
use chat::Chat;
use lookup::Lookup;
use parts::{Cx, Facts, Notice, Outbox, Owners, PartId, Sessions, Timer, TimerTable};
use route::Route;
use streams::Streams;
use super_node::{Promotion, SuperNode};
use uplink::Uplink;

/// Sessions a super node may hold with other super nodes, beyond its clients.
const MAX_PEER_SESSIONS: usize = 16_384;

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
    /// A user watched with [`Node::watch_presence`] came online (one of their devices did) or
    /// went offline (the last one did, or vanished: its super node published the "offline"
    /// record it left). Also reported once when a watched user's presence is first known.
    Presence {
        /// Who.
        user: UserName,
        /// Online now.
        online: bool,
    },
    /// The user `from` poked this device ([`Node::poke`]): something of theirs waits for it
    /// at the login server (a contact request, an answer to one, a buddy-list edit of our
    /// own user). Only a hint, to sync now rather than at the next periodic pull; `from` is
    /// the user the poking session proved to our super node.
    Poked {
        /// Who poked.
        from: UserName,
    },
    /// Chat: a message received, a receipt, typing, a message sent or refused
    /// ([`Node::send_chat`]).
    Chat(ChatEvent),
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
    /// Call invites dropped because the user blocked the caller.
    pub calls_blocked: u64,
}

/// The node facade. See the [module documentation](self).
pub struct Node {
    cfg: NodeConfig,
    rng: Rng,
    started: Instant,
    endpoint: Endpoint,
    owners: Owners,
    streams: Streams,
    facts: Facts,
    out: Outbox,
    timers: TimerTable,
    uplink: Uplink,
    lookup: Lookup,
    calls: Calls,
    chat: Chat,
    super_node: Option<SuperNode>,
    /// The runtime's last measurement of how busy the node is.
    load: Option<Load>,
    overloaded_since: Option<Instant>,
    /// The incarnation of this node's latest turn as a super node.
    last_incarnation: u32,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("listen", &self.cfg.listen)
            .field("super_node", &self.super_node.is_some())
            .field("attached", &self.facts.links.len())
            .finish_non_exhaustive()
    }
}

/// The context of an input to part `$part` at `$now`: borrows the facade's shared state next
/// to (never together with) the part itself.
macro_rules! cx {
    ($node:ident, $now:expr, $part:expr) => {
        Cx {
            now: $now,
            wall: wall_at(&$node.cfg, $now),
            cfg: &$node.cfg,
            facts: &$node.facts,
            stream_remotes: &$node.streams.remotes,
            sessions: Sessions::new(&mut $node.endpoint, &mut $node.owners, $part),
            out: &mut $node.out,
        }
    };
}

/// Wall-clock time at `now`.
fn wall_at(cfg: &NodeConfig, now: Instant) -> UnixTime {
    UnixTime(cfg.wall_anchor.0 + now.saturating_duration_since(cfg.clock_anchor).as_secs())
}

/// The session an endpoint event is about.
fn event_conn(e: &EndpointEvent) -> Option<ConnId> {
    match e {
        EndpointEvent::Connected { conn, .. }
        | EndpointEvent::ConnectFailed { conn, .. }
        | EndpointEvent::Data { conn, .. }
        | EndpointEvent::Control { conn, .. }
        | EndpointEvent::Media { conn, .. }
        | EndpointEvent::Pong { conn, .. }
        | EndpointEvent::ProbeReceived { conn, .. }
        | EndpointEvent::ProbeAnswered { conn, .. }
        | EndpointEvent::PathChanged { conn, .. }
        | EndpointEvent::Closed { conn, .. } => Some(*conn),
        _ => None,
    }
}

impl Node {
    /// A node, starting to join at `now`.
    pub fn new(mut cfg: NodeConfig, now: Instant) -> Self {
        let mut rng = Rng::from_seed_bytes(cfg.seed);
        // The calls part moves direct paths to fresh ports, and follows a peer that does.
        cfg.identity.capabilities = cfg.identity.capabilities.union(Capabilities::FRESH_PORTS);
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
        let uplink = Uplink::new(
            rng.bytes32(),
            cfg.attach.clone(),
            cache,
            cfg.local_addresses.clone(),
        );
        // The newest records of the last 1,024 users searched for: lying replicas cannot roll
        // back what this node already saw.
        let lookup = Lookup::new(
            ClientSearches::new(
                cfg.identity.trusted.clone(),
                cfg.index.retention,
                cfg.search_timeout,
            )
            .with_memory(1024),
        );
        let calls = {
            // A stream of its own, so adding calls changed no other draw of the node's.
            let mut seed = cfg.seed;
            seed[0] ^= 0xCA;
            seed[31] ^= 0x11;
            let mut call_rng = Rng::from_seed_bytes(seed);
            let machine = CallConfig::new(call_rng.bytes32(), cfg.wall_anchor);
            Calls::new(
                cfg.identity.device.device_id(),
                machine,
                cfg.call_paths.clone(),
                call_rng.bytes32(),
                now,
            )
        };
        let mut lookup = lookup;
        let chat = {
            let mut seed = cfg.seed;
            seed[0] ^= 0xC4;
            seed[31] ^= 0x7A;
            Chat::new(&cfg, seed, wall_at(&cfg, now))
        };
        lookup.set_chat_keys(chat.keys().published());
        let facts = uplink.facts(false);
        let mut node = Self {
            rng,
            started: now,
            endpoint,
            owners: Owners::default(),
            streams: Streams::default(),
            facts,
            out: Outbox::default(),
            timers: TimerTable::default(),
            uplink,
            lookup,
            calls,
            chat,
            super_node: None,
            load: None,
            overloaded_since: None,
            last_incarnation: 0,
            cfg,
        };
        if node.cfg.role == RolePolicy::Force {
            node.promote(now);
        }
        let mut cx = cx!(node, now, PartId::Uplink);
        node.uplink.start(&mut cx);
        node.sync_facts();
        node.drive(now);
        node
    }

    fn wall(&self, now: Instant) -> UnixTime {
        wall_at(&self.cfg, now)
    }

    // ---------------------------------------------------------------------------------------
    // Getters
    // ---------------------------------------------------------------------------------------

    /// True when this node is a super node.
    pub fn is_super_node(&self) -> bool {
        self.super_node.is_some()
    }

    /// The super-node role, when held.
    pub fn super_node(&self) -> Option<&SuperNodeRole> {
        self.super_node.as_ref().map(|s| s.role())
    }

    /// Super nodes this node is attached to.
    pub fn attached(&self) -> Vec<SocketAddr> {
        self.facts.attached()
    }

    /// The last NAT report.
    pub fn nat(&self) -> Option<&NatReport> {
        self.facts.nat.as_ref()
    }

    /// A one-line description of how this node is joined (for status output).
    pub fn describe_attach(&self, now: Instant) -> String {
        self.uplink.describe(now)
    }

    /// The host cache (to persist it).
    pub fn host_cache(&self) -> &HostCache {
        self.uplink.cache()
    }

    /// The endpoint, for application sessions.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.out.stats
    }

    /// The index as a super node (records held, counters).
    pub fn index(&self) -> Option<&Dht> {
        self.super_node.as_ref().map(|s| s.dht())
    }

    /// Super nodes in this node's index ring (as a super node; 0 otherwise).
    pub fn ring_len(&self) -> usize {
        self.super_node.as_ref().map_or(0, |s| s.ring().len())
    }

    /// The presence watches of this super node's clients (as a super node).
    pub fn watches(&self) -> Option<&crate::watch::Watches> {
        self.super_node.as_ref().map(|s| s.watches())
    }

    /// The relay counters, as a super node.
    pub fn relay(&self) -> Option<&crate::relay::Relay> {
        self.super_node.as_ref().map(|s| s.relay())
    }

    /// The call signalling machine (state of the current call, counters).
    pub fn calls(&self) -> &CallMachine {
        self.calls.machine()
    }

    /// The path the connected call uses, and its kind.
    pub fn call_path(&self, call: CallId) -> Option<(Path, PathKind)> {
        self.calls.call_path(call)
    }

    // ---------------------------------------------------------------------------------------
    // Commands
    // ---------------------------------------------------------------------------------------

    /// Search the global index for `user`. The outcome arrives as [`NodeEvent::Search`] with
    /// the returned id: the user's records (one per device, each verified here), a definite
    /// "not found", or "unavailable" when too few super nodes answered. An ordinary node asks
    /// its super node, which runs the search; a super node runs it itself.
    pub fn search(&mut self, now: Instant, user: UserName) -> u64 {
        let mut cx = cx!(self, now, PartId::Lookup);
        let id = self.lookup.search(&mut cx, user, None);
        self.drive(now);
        id
    }

    /// The user logs out: publish a record saying so (found as offline, with this time as
    /// last seen, for the retention period). [`Node::set_online`] undoes it.
    pub fn go_offline(&mut self, now: Instant) {
        self.set_online(now, false);
    }

    /// Set whether the user is online, publishing a fresh record when it changes.
    pub fn set_online(&mut self, now: Instant, online: bool) {
        let mut cx = cx!(self, now, PartId::Lookup);
        self.lookup.set_online(&mut cx, online);
        self.drive(now);
    }

    /// Poke every online device of `user` (our own other devices when it is our own name):
    /// each hears [`NodeEvent::Poked`] through its super node. Best effort: a device that
    /// is offline, or a poke that is lost, syncs at its next periodic pull anyway.
    pub fn poke(&mut self, now: Instant, user: UserName) {
        if !self.calls.may_poke() {
            return;
        }
        let mut cx = cx!(self, now, PartId::Lookup);
        let search = self.lookup.search(&mut cx, user, Some(PartId::Calls));
        self.calls.poking(search);
        self.drive(now);
    }

    /// Watch exactly these users' presence from now on (replacing the previous set): changes
    /// arrive as [`NodeEvent::Presence`], pushed by the super nodes (nothing is polled).
    pub fn watch_presence(&mut self, now: Instant, users: BTreeSet<UserName>) {
        let mut cx = cx!(self, now, PartId::Lookup);
        self.lookup.watch(&mut cx, users);
        self.drive(now);
    }

    /// Call `user`: search for their devices and invite every online one. The dial's outcome
    /// arrives as [`NodeEvent::Dial`] with the returned id; from then on the call is reported
    /// as [`NodeEvent::Call`], [`NodeEvent::CallPath`] and [`NodeEvent::CallQuality`].
    pub fn call(&mut self, now: Instant, user: UserName) -> u64 {
        let dial = self.calls.next_dial();
        let mut cx = cx!(self, now, PartId::Lookup);
        let search = self.lookup.search(&mut cx, user, Some(PartId::Calls));
        self.calls.dialling(search, dial);
        self.drive(now);
        dial
    }

    /// Answer the call ringing here.
    pub fn answer(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m, now| m.answer(now, call))
    }

    /// Decline the call ringing here (for every device of this user).
    pub fn decline(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m, now| m.decline(now, call))
    }

    /// Hang up (or cancel an outgoing call that has not been answered).
    pub fn hang_up(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m, now| m.hang_up(now, call))
    }

    /// Put the call on hold.
    pub fn hold(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m, now| m.hold(now, call))
    }

    /// Take the call off hold.
    pub fn resume(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.call_command(now, |m, now| m.resume(now, call))
    }

    fn call_command(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut CallMachine, Instant) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let mut cx = cx!(self, now, PartId::Calls);
        let r = self.calls.command(&mut cx, f);
        self.drive(now);
        r
    }

    /// Send one media frame (see `natter_media::frame`) on the connected call `call`.
    pub fn send_media(
        &mut self,
        now: Instant,
        call: CallId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        let mut cx = cx!(self, now, PartId::Calls);
        let r = self.calls.send_media(&mut cx, call, frame);
        self.drive(now);
        r
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
        self.drive(now);
    }

    /// Refuse sessions with these revoked devices and close the open ones (the runtime fetches
    /// the authority's signed revocation list).
    pub fn revoke(&mut self, now: Instant, devices: Vec<DeviceId>) {
        if let Some(sn) = self.super_node.as_mut() {
            sn.revoke(&devices);
        }
        self.lookup.revoke(&devices);
        self.chat.revoke(&devices);
        self.endpoint.revoke(now, devices);
        self.drive(now);
    }

    /// Drop the call invites of `users` (the user's blocked list) unanswered from now on:
    /// they never ring, and the caller is not told why.
    pub fn set_blocked(&mut self, users: std::collections::BTreeSet<UserName>) {
        self.chat.set_blocked(users.clone());
        self.calls.set_blocked(users);
    }

    /// Do not disturb: from now on invites are refused with Busy, as during a call (the
    /// caller's call ends Busy, and this node reports each as a missed call). `false` rings
    /// again.
    pub fn set_do_not_disturb(&mut self, on: bool) {
        self.calls.set_do_not_disturb(on);
    }

    /// Use a renewed certificate from now on.
    pub fn update_certificate(&mut self, now: Instant, certificate: Certificate) {
        self.cfg.identity.certificate = certificate.clone();
        self.endpoint.update_certificate(now, certificate);
        // Our chat keys are signed with the certificate: sign them again, and publish.
        let wall = self.wall(now);
        self.chat.renew(&self.cfg, wall);
        self.lookup.set_chat_keys(self.chat.keys().published());
        self.out.notify(PartId::Lookup, Notice::FactsChanged);
        self.drive(now);
    }

    // ---------------------------------------------------------------------------------------
    // Chat
    // ---------------------------------------------------------------------------------------

    /// Send a chat message to every device of `users`, and to our own other devices (see the
    /// chat part's documentation for how it travels): what happens to it is reported as
    /// [`NodeEvent::Chat`] events, [`ChatEvent::Sent`] then one [`ChatEvent::Delivered`] per
    /// device that holds it. Receipts and typing go once, to `users` only.
    pub fn send_chat(
        &mut self,
        now: Instant,
        users: BTreeSet<UserName>,
        item: natter_core::chat::Item,
    ) {
        let mut cx = cx!(self, now, PartId::Chat);
        self.chat.send(&mut cx, users, item);
        self.drive(now);
    }

    /// The application keeps these chat messages now (with
    /// [`NodeConfig::chat_app_receipts`]): their senders get their receipts, and mailboxes let
    /// them go. Until then a copy that arrives again is reported again.
    pub fn chat_stored(&mut self, now: Instant, ids: Vec<natter_core::chat::MessageId>) {
        let mut cx = cx!(self, now, PartId::Chat);
        self.chat.stored(&mut cx, &ids);
        self.drive(now);
    }

    /// A fresh random message id (from the node's seeded randomness).
    pub fn new_message_id(&mut self) -> natter_core::chat::MessageId {
        self.chat.next_id()
    }

    /// This device's signed chat keys (as its presence records publish them).
    pub fn chat_keys(&self) -> &natter_core::chat::DeviceKeys {
        self.chat.keys()
    }

    /// The chat channels (Olm sessions), encrypted under `key`, to keep across restarts.
    pub fn save_chat(&self, key: &[u8; 32]) -> Vec<u8> {
        self.chat.save(key)
    }

    /// Take chat channels saved by [`Node::save_chat`] back: right after [`Node::new`],
    /// before the node publishes its keys.
    pub fn restore_chat(
        &mut self,
        saved: &[u8],
        key: &[u8; 32],
    ) -> Result<(), natter_core::chat::ChatError> {
        self.chat.restore(&self.cfg, saved, key)?;
        let wall = self.wall(self.started);
        self.chat.renew(&self.cfg, wall);
        self.lookup.set_chat_keys(self.chat.keys().published());
        Ok(())
    }

    /// Chat's counters.
    pub fn chat_stats(&self) -> ChatStats {
        self.chat.stats()
    }

    /// What this super node's mailboxes hold (`None`: not a super node).
    pub fn mailbox_stats(&self) -> Option<MailboxStats> {
        self.super_node.as_ref().map(|s| s.mailbox_stats())
    }

    /// A number that changes whenever this super node's mailboxes keep or let go a message
    /// (`None`: not a super node): save them ([`Node::save_mailboxes`]) when it changed.
    pub fn mailbox_generation(&self) -> Option<u64> {
        self.super_node.as_ref().map(|s| s.mailbox_generation())
    }

    /// This super node's mailboxes, encoded to keep on disk (`None`: not a super node); a
    /// later run takes them back through [`NodeConfig::mailboxes`]. With their generation.
    pub fn save_mailboxes(&self, now: Instant) -> Option<(u64, Vec<u8>)> {
        let wall = self.wall(now);
        self.super_node
            .as_ref()
            .map(|s| s.save_mailboxes(now, wall))
    }

    /// The addresses the driver must bind (UDP and TCP): see [`NodeConfig::bind_addresses`].
    pub fn bind_addresses(&self) -> Vec<SocketAddr> {
        self.cfg.bind_addresses()
    }

    /// The TCP addresses the driver must listen on: see [`NodeConfig::tcp_listen_addresses`].
    pub fn tcp_listen_addresses(&self) -> Vec<(SocketAddr, bool)> {
        self.cfg.tcp_listen_addresses()
    }

    /// This host's addresses changed (a new network, a new lease): re-detect and re-attach.
    pub fn set_local_addresses(&mut self, now: Instant, addresses: Vec<SocketAddr>) {
        if addresses == self.facts.local_addresses {
            return;
        }
        let mut cx = cx!(self, now, PartId::Uplink);
        self.uplink.set_local_addresses(&mut cx, addresses);
        self.sync_facts();
        self.drive(now);
    }

    /// Give the super-node role up now (operator request or overload): clients are told
    /// where to go instead.
    pub fn demote(&mut self, now: Instant) {
        self.demote_inner(now);
        self.drive(now);
    }

    // ---------------------------------------------------------------------------------------
    // The role
    // ---------------------------------------------------------------------------------------

    fn me(&self) -> HostEntry {
        HostEntry {
            addr: self.cfg.listen,
            static_key: self.cfg.identity.device.dh_public(),
        }
    }

    fn promote(&mut self, now: Instant) {
        if self.super_node.is_some() || self.cfg.role == RolePolicy::Forbid {
            return;
        }
        let wall = self.wall(now);
        let known = self.uplink.cache().share(64, wall);
        // Later than any earlier run's: a restarted super node outranks what was said of it.
        let incarnation = (wall.0 as u32).max(self.last_incarnation.saturating_add(1));
        self.last_incarnation = incarnation;
        let promotion = Promotion {
            me: self.me(),
            seeds: [self.rng.bytes32(), self.rng.bytes32()],
            incarnation,
            known,
            stun: self.cfg.stun_server().with_software("natter"),
            relay: self.cfg.relay.clone(),
            mailboxes: self.cfg.mailboxes.take(),
        };
        self.endpoint.set_relaying(true);
        self.facts.super_node = true;
        let mut cx = cx!(self, now, PartId::SuperNode);
        self.super_node = Some(SuperNode::new(&mut cx, promotion));
        self.sync_facts();
        self.notify_facts();
        self.out.events.push_back(NodeEvent::Promoted);
    }

    fn demote_inner(&mut self, now: Instant) {
        if let Some(sn) = self.super_node.take() {
            // What its mailboxes hold waits for the next promotion (and the runtime's file).
            let wall = self.wall(now);
            self.cfg.mailboxes = Some(sn.save_mailboxes(now, wall).1);
            self.facts.super_node = false;
            let mut cx = cx!(self, now, PartId::SuperNode);
            sn.leave(&mut cx);
            self.sync_facts();
            self.notify_facts();
            self.out.events.push_back(NodeEvent::Demoted);
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

    fn nat_open(&self) -> Option<bool> {
        self.facts.nat.as_ref().map(|r| r.nat == NatType::Open)
    }

    /// When the node may promote itself (only while promotion is actually possible: without
    /// spare capacity the deadline would stay in the past and the timer would spin; a new load
    /// report re-evaluates it).
    fn promotion_time(&self) -> Option<Instant> {
        (self.cfg.role == RolePolicy::Auto
            && self.super_node.is_none()
            && self.has_spare_capacity()
            && self.nat_open() == Some(true))
        .then_some(self.started + self.cfg.promotion_uptime)
    }

    /// Promote a node measured suitable, demote a super node whose NAT re-check found it no
    /// longer open. True when the role changed.
    fn check_role(&mut self, now: Instant) -> bool {
        if self.promotion_time().is_some_and(|t| t <= now) {
            self.promote(now);
            return true;
        }
        if self.super_node.is_some()
            && self.cfg.role == RolePolicy::Auto
            && self.nat_open() == Some(false)
        {
            self.demote_inner(now);
            return true;
        }
        false
    }

    fn check_overload(&mut self, now: Instant) {
        let sustained = self
            .overloaded_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.overload_for);
        if sustained && self.super_node.is_some() && self.cfg.role == RolePolicy::Auto {
            self.overloaded_since = None;
            self.demote_inner(now);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Routing
    // ---------------------------------------------------------------------------------------

    /// Republish the uplink's facts; the parts that act on them hear of a change.
    fn sync_facts(&mut self) {
        let facts = self.uplink.facts(self.super_node.is_some());
        if facts != self.facts {
            self.facts = facts;
            self.notify_facts();
        }
    }

    fn notify_facts(&mut self) {
        self.out.notify(PartId::Calls, Notice::FactsChanged);
        self.out.notify(PartId::Lookup, Notice::FactsChanged);
        self.out.notify(PartId::Chat, Notice::FactsChanged);
    }

    /// Deliver what is pending (endpoint events, notices between parts, role changes) until
    /// nothing is, then collect the endpoint's datagrams and re-arm the timers.
    fn drive(&mut self, now: Instant) {
        loop {
            if let Some(e) = self.endpoint.poll_event() {
                self.on_endpoint_event(now, e);
            } else if let Some((part, notice)) = self.out.notices.pop_front() {
                self.deliver(now, part, notice);
            } else if !self.check_role(now) {
                break;
            }
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            self.out.transmits.push_back(t);
        }
        self.timers
            .set(Timer::Endpoint, self.endpoint.poll_timeout());
        self.timers
            .set(Timer::Part(PartId::Uplink), self.uplink.poll_timeout());
        self.timers
            .set(Timer::Part(PartId::Lookup), self.lookup.poll_timeout());
        self.timers
            .set(Timer::Part(PartId::Calls), self.calls.poll_timeout());
        self.timers
            .set(Timer::Part(PartId::Chat), self.chat.poll_timeout());
        self.timers.set(
            Timer::Part(PartId::SuperNode),
            self.super_node.as_ref().and_then(|s| s.poll_timeout()),
        );
        self.timers.set(Timer::Streams, self.streams.poll_timeout());
        let overload = self
            .overloaded_since
            .filter(|_| self.super_node.is_some())
            .map(|t| t + self.cfg.overload_for);
        let role = [self.promotion_time(), overload]
            .into_iter()
            .flatten()
            .min();
        self.timers.set(Timer::Role, role);
    }

    /// A notice from one part to another.
    fn deliver(&mut self, now: Instant, part: PartId, notice: Notice) {
        let mut cx = cx!(self, now, part);
        match part {
            PartId::Uplink => self.uplink.on_notice(&mut cx, notice),
            PartId::Lookup => self.lookup.on_notice(&mut cx, notice),
            PartId::Calls => self.calls.on_notice(&mut cx, notice),
            PartId::Chat => self.chat.on_notice(&mut cx, notice),
            PartId::SuperNode => {
                if let Some(sn) = self.super_node.as_mut() {
                    sn.on_notice(&mut cx, notice);
                }
            }
        }
    }

    fn on_endpoint_event(&mut self, now: Instant, e: EndpointEvent) {
        // The relay sees every session (and forwards the frames relayed over streams).
        if let Some(sn) = self.super_node.as_mut() {
            let mut cx = cx!(self, now, PartId::SuperNode);
            if sn.observe(&mut cx, &e) {
                return;
            }
        }
        self.streams.observe(&e, &mut self.out.commands);
        let conn = match e {
            EndpointEvent::Control { conn, message } => {
                self.on_control(now, conn, &message);
                return;
            }
            EndpointEvent::StreamBroken { stream } => {
                self.out.commands.push_back(StreamCommand::Close { stream });
                return;
            }
            ref other => event_conn(other),
        };
        let owner = conn
            .and_then(|c| self.owners.session(c))
            .or_else(|| match &e {
                // A session a peer opened to us: its part, by the path it came on (a super node's
                // sessions only while the role is held).
                EndpointEvent::Connected {
                    conn,
                    remote,
                    initiator: false,
                    ..
                } => {
                    let part = route::claim(remote);
                    let held = part != PartId::SuperNode || self.super_node.is_some();
                    held.then(|| {
                        self.owners.set_session(*conn, part);
                        part
                    })
                }
                _ => None,
            });
        let consumed = owner.is_some_and(|part| self.session_event(now, part, &e));
        if let (Some(conn), EndpointEvent::Closed { .. } | EndpointEvent::ConnectFailed { .. }) =
            (conn, &e)
        {
            self.owners.forget_session(conn);
        }
        if !consumed {
            self.out.events.push_back(NodeEvent::Session(e));
        }
    }

    /// An event of a session `part` owns; false when the application should hear it.
    fn session_event(&mut self, now: Instant, part: PartId, e: &EndpointEvent) -> bool {
        let mut cx = cx!(self, now, part);
        match part {
            PartId::Uplink => {
                let consumed = self.uplink.on_session(&mut cx, e);
                self.sync_facts();
                consumed
            }
            PartId::Calls => self.calls.on_session(&mut cx, e),
            PartId::SuperNode => self
                .super_node
                .as_mut()
                .is_some_and(|sn| sn.on_session(&mut cx, e)),
            PartId::Lookup | PartId::Chat => false,
        }
    }

    fn on_control(&mut self, now: Instant, conn: ConnId, raw: &[u8]) {
        let Ok(msg) = Message::decode(raw) else {
            self.out.stats.overlay_dropped += 1;
            return;
        };
        let owner = self.owners.session(conn);
        match route::message(&msg, owner, self.super_node.is_some()) {
            Route::To(part) => self.part_message(now, part, conn, &msg),
            Route::Both(first, second) => {
                self.part_message(now, first, conn, &msg);
                self.part_message(now, second, conn, &msg);
            }
            Route::Drop => self.out.stats.overlay_dropped += 1,
        }
    }

    fn part_message(&mut self, now: Instant, part: PartId, conn: ConnId, msg: &Message<'_>) {
        let mut cx = cx!(self, now, part);
        match part {
            PartId::Uplink => {
                self.uplink.on_message(&mut cx, conn, msg);
                self.sync_facts();
            }
            PartId::Lookup => self.lookup.on_message(&mut cx, conn, msg),
            PartId::Calls => self.calls.on_message(&mut cx, conn, msg),
            PartId::Chat => self.chat.on_message(&mut cx, conn, msg),
            PartId::SuperNode => match self.super_node.as_mut() {
                Some(sn) => sn.on_message(&mut cx, conn, msg),
                None => super_node::not_a_super_node(&mut cx, conn, msg),
            },
        }
    }

    fn on_stun(&mut self, now: Instant, source: SocketAddr, local: SocketAddr, data: &[u8]) {
        let Ok(msg) = StunMessage::decode(data) else {
            self.out.stats.stun_unmatched += 1;
            return;
        };
        let input = Input::Datagram {
            source,
            local,
            data,
        };
        match msg.class {
            Class::Request => match self.super_node.as_mut() {
                Some(sn) => {
                    let mut cx = cx!(self, now, PartId::SuperNode);
                    sn.on_stun_request(&mut cx, input);
                }
                None => self.out.stats.stun_unmatched += 1,
            },
            Class::Success | Class::Error if self.calls.owns_socket(local) => {
                // The reflexive address of a call's fresh port.
                let mut cx = cx!(self, now, PartId::Calls);
                if !self.calls.on_stun_answer(&mut cx, &msg, local) {
                    self.out.stats.stun_unmatched += 1;
                }
            }
            Class::Success | Class::Error => {
                let mut cx = cx!(self, now, PartId::Uplink);
                if !self.uplink.on_stun_answer(&mut cx, &msg, input) {
                    self.out.stats.stun_unmatched += 1;
                }
                self.sync_facts();
            }
            Class::Indication => {}
        }
    }

    fn part_timeout(&mut self, now: Instant, part: PartId) {
        let mut cx = cx!(self, now, part);
        match part {
            PartId::Uplink => {
                self.uplink.handle_timeout(&mut cx);
                self.sync_facts();
            }
            PartId::Lookup => self.lookup.handle_timeout(&mut cx),
            PartId::Calls => self.calls.handle_timeout(&mut cx),
            PartId::Chat => self.chat.handle_timeout(&mut cx),
            PartId::SuperNode => {
                if let Some(sn) = self.super_node.as_mut() {
                    sn.handle_timeout(&mut cx);
                }
            }
        }
    }
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
                WireClass::Relay { .. } if self.super_node.is_some() => {
                    let mut cx = cx!(self, now, PartId::SuperNode);
                    let sn = self.super_node.as_mut().expect("checked");
                    // A frame for our relay is forwarded at once: nothing else moved.
                    if sn.relay_datagram(&mut cx, source, data) {
                        return;
                    }
                    self.endpoint.handle_input(now, input);
                }
                _ => self.endpoint.handle_input(now, input),
            },
            Input::StreamOpened { stream, remote } => {
                self.streams
                    .opened(stream, remote, now + self.cfg.stream_claim_timeout);
                self.endpoint.handle_input(now, input);
                match self.owners.stream(stream) {
                    Some(PartId::Uplink) => {
                        let mut cx = cx!(self, now, PartId::Uplink);
                        self.uplink.on_stream_opened(&mut cx, stream);
                        self.sync_facts();
                    }
                    Some(PartId::Calls) => {
                        let mut cx = cx!(self, now, PartId::Calls);
                        self.calls.on_stream_opened(&mut cx, stream);
                    }
                    _ => {}
                }
            }
            Input::Stream { .. } => self.endpoint.handle_input(now, input),
            Input::UdpBound { token, local } => {
                let mut cx = cx!(self, now, PartId::Calls);
                if !self.calls.on_udp_bound(&mut cx, token, local) {
                    // Its call ended meanwhile.
                    if let Some(local) = local {
                        self.out
                            .commands
                            .push_back(StreamCommand::CloseUdp { local });
                    }
                }
            }
            Input::StreamClosed { stream } => {
                let orphans = self.streams.closed(stream);
                self.endpoint.handle_input(now, input);
                match self.owners.stream(stream) {
                    Some(PartId::Uplink) => {
                        let mut cx = cx!(self, now, PartId::Uplink);
                        self.uplink.on_stream_closed(&mut cx, stream);
                        self.sync_facts();
                    }
                    Some(PartId::Calls) => {
                        let mut cx = cx!(self, now, PartId::Calls);
                        self.calls.on_stream_closed(&mut cx, stream);
                    }
                    _ => {}
                }
                self.owners.forget_stream(stream);
                // Sessions others ran over this stream end with it (a client that went away
                // is detached now, not after the idle timeout).
                for conn in orphans {
                    self.endpoint.close(now, conn);
                }
            }
        }
        self.drive(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.due(now) {
            match timer {
                Timer::Endpoint => self.endpoint.handle_timeout(now),
                Timer::Part(part) => self.part_timeout(now, part),
                Timer::Streams => {
                    // Accepted streams nobody ran a session over: close them.
                    for stream in self.streams.expired(now) {
                        self.out.stats.streams_unclaimed += 1;
                        self.out.commands.push_back(StreamCommand::Close { stream });
                    }
                }
                Timer::Role => self.check_overload(now),
            }
        }
        self.drive(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        self.out.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn poll_stream_command(&mut self) -> Option<StreamCommand> {
        let command = self.out.commands.pop_front();
        if let Some(StreamCommand::Close { stream }) = &command {
            self.streams.closing(*stream);
            self.owners.forget_stream(*stream);
        }
        command
    }
}
