//! A super node's side of the global index: the [`Dht`], the [`Ring`] it routes on (kept in
//! step with the membership), the presence watches of its clients ([`Watches`]) and their
//! wills, and the sessions with other super nodes that carry the index's and the membership's
//! messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::{CloseCause, ConnId, Path};
use natter_core::overlay::PresenceRecord;
use natter_core::sansio::Destination;
use natter_core::wire::message::{HostEntry, Message};

use super::super::parts::{Cx, Notice, PartId};
use crate::dht::{Dht, DhtOutput, Key, Origin, Ring};
use crate::membership::Membership;
use crate::supernode::SuperNodeRole;
use crate::watch::{WatchOutput, Watches, WATCH_REFRESH};

/// The client handle of this node's own watches (the node is a super node and watches its
/// user's contacts through its own part).
pub(crate) const SELF_CLIENT: u64 = u64::MAX;

/// How often a super node re-reads its membership into the index ring.
const RING_SYNC: Duration = Duration::from_secs(2);
/// A super node no session could be opened with stays out of the ring this long (the
/// membership's own probes then tell whether it is gone for good).
const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Messages waiting for a session with a super node to open.
const MAX_QUEUED: usize = 64;
/// A client whose session ended without a goodbye but not by silence (its TCP stream closed:
/// a killed process, or a NAT that moved under a live one) has this long to publish anew
/// before its will is: a live device's newer record makes the will stale.
const WILL_GRACE: Duration = Duration::from_secs(10);
/// Most wills waiting for their grace to end; past it a will is published at once.
const MAX_PARKED_WILLS: usize = 10_000;
/// A will held on standby stays this long after its client's session died, in case the
/// super node holding it first-hand is gone from the membership (it failed with the device) meanwhile.
const STANDBY_FOR: Duration = Duration::from_secs(60);
/// Most standby wills kept after their clients' sessions died (past it the oldest go).
const MAX_STANDBY_WILLS: usize = 10_000;

/// Ring successors a super node deposits its own will with.
const WILL_DEPOSITS: usize = 2;
/// Most wills of other super nodes held (each deposits with its two successors); past it
/// the oldest deposit goes.
const MAX_DEPOSITED: usize = 256;
/// A deposited will is published once its super node has been gone from the membership
/// this long (one wrongly declared gone refutes it within seconds).
const DEPOSIT_GRACE: Duration = Duration::from_secs(10);
/// A deposit not renewed for this long is dropped (a super node re-deposits with every
/// refresh of its record, every 30 minutes by default).
const DEPOSIT_KEEP: Duration = Duration::from_secs(2 * 3600);

/// A will another super node deposited here.
#[derive(Debug)]
struct Deposit {
    record: PresenceRecord,
    /// When it was deposited (dropped [`DEPOSIT_KEEP`] later).
    at: Instant,
    /// Since when the membership holds its super node gone.
    gone_since: Option<Instant>,
}

/// Our own will goes to our successors again this long after it was deposited (a successor
/// that did not know us alive yet refused it), then every [`REDEPOSIT_EVERY`].
const REDEPOSIT_FIRST: Duration = Duration::from_secs(30);
/// See [`REDEPOSIT_FIRST`].
const REDEPOSIT_EVERY: Duration = Duration::from_secs(300);

/// A will held on standby whose client's session died: published if the super node that
/// holds it first-hand is gone from the membership before `until`.
#[derive(Debug)]
struct StandbyWill {
    /// The super node holding it first-hand.
    holder: SocketAddr,
    /// Not before this (a stream that closed gets [`WILL_GRACE`], as first-hand).
    from: Instant,
    /// Dropped then.
    until: Instant,
    /// When it next needs a look without a ring change: `from`, then `until`.
    next: Instant,
    record: PresenceRecord,
}

/// The index as a super node holds it. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct IndexPart {
    me: HostEntry,
    dht: Dht,
    ring: Ring,
    next_ring_sync: Option<Instant>,
    /// Sessions with super nodes for index and membership traffic, and those being opened
    /// (with what waits for them).
    sessions: BTreeMap<SocketAddr, ConnId>,
    connecting: BTreeMap<ConnId, (HostEntry, Vec<Message<'static>>)>,
    /// Super nodes a session could not be opened with: out of the ring until then.
    suspects: BTreeMap<SocketAddr, Instant>,
    /// Presence watches for our clients (and ourselves).
    watches: Watches,
    /// Per client session: the signed "offline" record to publish if it dies without a word,
    /// and, for a will held on standby, the super node holding it first-hand.
    wills: BTreeMap<ConnId, (PresenceRecord, Option<SocketAddr>)>,
    /// When the watches are next repeated to the replicas.
    next_watch_refresh: Instant,
    /// Wills to publish at the end of their grace ([`WILL_GRACE`]).
    parked_wills: Vec<(Instant, PresenceRecord)>,
    /// Standby wills of clients whose sessions died, oldest first.
    standby_wills: VecDeque<StandbyWill>,
    /// Our own will (we are a device too) and the super nodes it is deposited with.
    own_will: Option<(PresenceRecord, Vec<HostEntry>)>,
    /// When our will goes to our successors again (unacknowledged, it may have been refused).
    next_deposit: Option<Instant>,
    /// Wills other super nodes deposited here, by their address: published once the
    /// membership has held them gone for [`DEPOSIT_GRACE`].
    deposited: BTreeMap<SocketAddr, Deposit>,
    /// When a standby or deposited will next needs a look without a membership change (the
    /// earliest `next` and deposit deadline; [`IndexPart::check_standby`] sets it).
    standby_due: Option<Instant>,
    /// Holders of the wills held here (standby or deposited) that the membership knows as
    /// gone (left or failed): asked of the membership, not of the ring, from which a super
    /// node we merely failed to reach is kept out for a while, and never of an address the
    /// membership does not know (a holder reached under another address stays "not gone").
    departed: BTreeSet<SocketAddr>,
}

impl IndexPart {
    pub fn new(cx: &Cx<'_>, me: HostEntry) -> Self {
        Self {
            me,
            dht: Dht::new(
                cx.cfg.index.clone(),
                me,
                Key::of_certificate(&cx.cfg.identity.certificate),
                cx.cfg.identity.trusted.clone(),
            ),
            ring: Ring::new(cx.cfg.ring_prefix_cap),
            next_ring_sync: None,
            sessions: BTreeMap::new(),
            connecting: BTreeMap::new(),
            suspects: BTreeMap::new(),
            watches: Watches::new(me),
            wills: BTreeMap::new(),
            next_watch_refresh: cx.now + WATCH_REFRESH,
            parked_wills: Vec::new(),
            standby_wills: VecDeque::new(),
            own_will: None,
            next_deposit: None,
            deposited: BTreeMap::new(),
            standby_due: None,
            departed: BTreeSet::new(),
        }
    }

    /// The presence watches.
    pub fn watches(&self) -> &Watches {
        &self.watches
    }

    /// This node's own watches (it is a super node).
    pub fn watch_here(&mut self, users: &[UserName], watch: bool) {
        self.watches
            .client_watch(&self.ring, SELF_CLIENT, users, watch);
    }

    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn revoke(&mut self, devices: &[DeviceId]) {
        self.dht.revoke(devices.iter().copied());
    }

    /// Run a search of our own in our index.
    pub fn search_here(&mut self, cx: &mut Cx<'_>, id: u64, user: UserName) {
        self.dht
            .search(cx.now, cx.wall, &self.ring, Origin::Local(id), user);
    }

    /// Store our own presence record.
    pub fn publish(&mut self, cx: &mut Cx<'_>, record: PresenceRecord) {
        self.dht.publish(cx.now, cx.wall, &self.ring, record);
    }

    /// Make the ring follow the super-node membership. A member takes its place once its
    /// certificate is known (its ring salt is in it; the membership asks the member for it).
    pub fn sync_ring(&mut self, cx: &mut Cx<'_>, role: &SuperNodeRole) {
        let now = cx.now;
        self.suspects.retain(|_, until| *until > now);
        let membership = role.membership();
        let holders: BTreeSet<SocketAddr> = self
            .wills
            .values()
            .filter_map(|(_, standby)| *standby)
            .chain(self.standby_wills.iter().map(|w| w.holder))
            .chain(self.deposited.keys().copied())
            .collect();
        let departed: BTreeSet<SocketAddr> = holders
            .into_iter()
            .filter(|h| membership.member(*h).is_some_and(|m| !m.alive))
            .collect();
        let departed_changed = departed != self.departed;
        self.departed = departed;
        let mut members: BTreeMap<HostEntry, Key> = membership
            .alive()
            .filter(|m| !self.suspects.contains_key(&m.addr))
            .filter_map(|m| {
                let cert = membership.certificate(&m.static_key)?;
                Some((m, Key::of_certificate(cert)))
            })
            .collect();
        let my_key = Key::of_certificate(&cx.cfg.identity.certificate);
        self.dht.set_key(now, my_key);
        members.insert(self.me, my_key);
        let before = self.ring.generation();
        let stale: Vec<_> = self
            .ring
            .entries()
            .filter(|e| !members.contains_key(e))
            .map(|e| e.addr)
            .collect();
        for addr in stale {
            self.ring.remove(addr);
        }
        // In address order: which of several super nodes in one prefix get past the cap must
        // not depend on a hash map's order.
        let mut members: Vec<(HostEntry, Key)> = members.into_iter().collect();
        members.sort_by_key(|(e, _)| e.addr);
        for (m, key) in members {
            self.ring.insert(key, m);
        }
        if self.ring.generation() != before {
            self.dht.ring_changed(now);
            self.redeposit(cx);
        }
        if departed_changed {
            self.check_standby(cx);
        }
        self.next_ring_sync = Some(now + RING_SYNC);
    }

    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>, role: &SuperNodeRole) {
        if self.next_watch_refresh <= cx.now {
            self.next_watch_refresh = cx.now + WATCH_REFRESH;
            self.watches.refresh();
        }
        let now = cx.now;
        let (due, parked): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked_wills)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.parked_wills = parked;
        for (_, will) in due {
            self.dht.publish(cx.now, cx.wall, &self.ring, will);
        }
        if self.standby_due.is_some_and(|t| t <= cx.now) {
            self.check_standby(cx);
        }
        if self.next_deposit.is_some_and(|t| t <= cx.now) {
            self.next_deposit = Some(cx.now + REDEPOSIT_EVERY);
            if let Some((_, at)) = self.own_will.as_mut() {
                at.clear();
            }
            self.redeposit(cx);
        }
        if self.next_ring_sync.is_some_and(|t| t <= cx.now) {
            self.next_ring_sync = None;
            self.sync_ring(cx, role);
        }
        self.dht.handle_timeout(cx.now, cx.wall, &self.ring);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.dht.poll_timeout(),
            self.next_ring_sync,
            Some(self.next_watch_refresh),
            self.parked_wills.iter().map(|(at, _)| *at).min(),
            self.standby_due,
            self.next_deposit,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Send the membership's and the index's messages; follow membership changes in the ring.
    pub fn flush(&mut self, cx: &mut Cx<'_>, role: &mut SuperNodeRole) {
        loop {
            let mut moved = false;
            let mut changed = false;
            let m = role.membership_mut();
            let mut out = Vec::new();
            while let Some(o) = m.poll_output() {
                out.push(o);
            }
            while m.poll_change().is_some() {
                changed = true;
            }
            for (to, message) in out {
                moved = true;
                self.send_to_super_node(cx, to, message);
            }
            if changed {
                moved = true;
                self.sync_ring(cx, role);
            }
            self.watches.ring_changed(&self.ring);
            while let Some(out) = self.watches.poll_output() {
                moved = true;
                match out {
                    WatchOutput::Send { to, message } => self.send_to_super_node(cx, to, message),
                    WatchOutput::Local {
                        watch,
                        refresh,
                        users,
                    } => self.dht.watch(cx.wall, self.me, &users, watch, refresh),
                    WatchOutput::Deliver { client, record } if client == SELF_CLIENT => {
                        cx.out.notify(PartId::Lookup, Notice::Presence(record));
                    }
                    WatchOutput::Deliver { client, record } => {
                        let message = Message::IndexNotify { record };
                        let _ = cx.sessions.send(cx.now, ConnId(client as u32), &message);
                    }
                }
            }
            while let Some(out) = self.dht.poll_output() {
                moved = true;
                match out {
                    DhtOutput::Send { to, message } => self.send_to_super_node(cx, to, message),
                    DhtOutput::Reply { client, message } => {
                        let _ = cx.sessions.send(cx.now, ConnId(client as u32), &message);
                    }
                    DhtOutput::Changed { record } => {
                        // Verified when our index stored it.
                        let me = self.me;
                        self.watches.on_notify(&me, *record, |_| true);
                    }
                    DhtOutput::Done { id, outcome } => {
                        cx.out
                            .notify(PartId::Lookup, Notice::SearchDone { id, outcome });
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// A client's search, also asking the super nodes `at` (only those of the ring: nobody is
    /// sent queries through us).
    fn client_search(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        query: u32,
        user: &UserName,
        at: &[SocketAddr],
    ) {
        let extra: Vec<HostEntry> = at
            .iter()
            .filter_map(|a| self.ring.at(*a))
            .copied()
            .collect();
        let origin = Origin::Client {
            client: u64::from(conn.0),
            query,
        };
        self.dht
            .search_also(cx.now, cx.wall, &self.ring, origin, user.clone(), extra);
    }

    /// A membership message on session `conn`.
    pub fn membership_message(
        &mut self,
        cx: &mut Cx<'_>,
        role: &mut SuperNodeRole,
        conn: ConnId,
        msg: &Message<'_>,
    ) {
        // Super nodes talk membership over UDP sessions, from their listening address.
        let (from, certificate) = match (
            cx.sessions.view().remote(conn),
            cx.sessions.view().peer(conn),
        ) {
            (
                Some(Path::Direct {
                    to: Destination::Udp(addr),
                    ..
                }),
                Some(peer),
            ) if *addr != cx.cfg.listen => (
                HostEntry {
                    addr: *addr,
                    static_key: peer.certificate.dh_public,
                },
                peer.certificate.clone(),
            ),
            _ => {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
        };
        self.heard(cx, from.addr);
        self.sessions.entry(from.addr).or_insert(conn);
        let membership = role.membership_mut();
        // Its certificate (the handshake checked it) checks what it signs; ours may have been
        // renewed since the role was taken.
        membership.set_certificate(&cx.cfg.identity.certificate);
        membership.learn_certificate(cx.now, &certificate);
        membership.handle_message(cx.now, from, msg);
    }

    /// An index message on session `conn`.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        let (now, wall) = (cx.now, cx.wall);
        let udp = match cx.sessions.view().remote(conn) {
            Some(Path::Direct {
                to: Destination::Udp(a),
                ..
            }) => Some(*a),
            _ => None,
        };
        let Some(peer_key) = cx
            .sessions
            .view()
            .peer(conn)
            .map(|p| p.certificate.dh_public)
        else {
            cx.out.stats.overlay_dropped += 1;
            return;
        };
        // Super nodes talk index over UDP sessions (answers go back on the same session);
        // what a stream peer (a client) may send is a publication or a full search.
        let from = udp.map(|addr| HostEntry {
            addr,
            static_key: peer_key,
        });
        let from_super_node = matches!(
            msg,
            Message::IndexStore {
                replicate: false,
                ..
            } | Message::IndexSearch { full: false, .. }
                | Message::IndexResult { .. }
                | Message::IndexNotFound { .. }
                | Message::IndexWatch { full: false, .. }
                | Message::IndexNotify { .. }
        );
        if from_super_node {
            match from {
                Some(f) if f.addr != cx.cfg.listen => {
                    self.heard(cx, f.addr);
                    self.sessions.entry(f.addr).or_insert(conn);
                }
                _ => {
                    cx.out.stats.overlay_dropped += 1;
                    return;
                }
            }
        }
        let from = from.unwrap_or(HostEntry {
            addr: cx.cfg.listen,
            static_key: peer_key,
        });
        match msg {
            // A client publishes its record or asks for a search.
            Message::IndexStore {
                replicate: true,
                record,
            } => {
                // A client publishes its own record only (the super node keeps the latest
                // of each of its clients and answers for them).
                if record.certificate.dh_public != peer_key
                    || !self.dht.publish(now, wall, &self.ring, (**record).clone())
                {
                    cx.out.stats.overlay_dropped += 1;
                }
            }
            Message::IndexSearch {
                query,
                full: true,
                user,
            } => self.client_search(cx, conn, *query, user, &[]),
            Message::IndexSearchAt { query, user, at } => {
                self.client_search(cx, conn, *query, user, at)
            }
            // A client watches users' presence, or leaves its will.
            Message::IndexWatch {
                full: true,
                watch,
                users,
                ..
            } => self
                .watches
                .client_watch(&self.ring, u64::from(conn.0), users, *watch),
            Message::IndexWill { record, standby } => {
                // Its own, saying offline, newer than the one held.
                let fits = record.certificate.dh_public == peer_key
                    && !record.online
                    && self
                        .wills
                        .get(&conn)
                        .is_none_or(|(w, _)| w.sequence < record.sequence);
                if fits {
                    self.wills.insert(conn, ((**record).clone(), *standby));
                } else {
                    cx.out.stats.overlay_dropped += 1;
                }
            }
            // A replica pushes a watched user's record.
            Message::IndexNotify { record } => {
                let dht = &self.dht;
                if self
                    .watches
                    .on_notify(&from, (**record).clone(), |r| dht.verify_record(r, wall))
                {
                    // Searches here must not answer from an older cached record.
                    self.dht.forget_cached(record.user());
                } else {
                    cx.out.stats.overlay_dropped += 1;
                }
            }
            // Another super node stores, asks, or answers.
            m => {
                if !self.dht.handle_message(now, wall, &self.ring, from, m) {
                    cx.out.stats.overlay_dropped += 1;
                }
            }
        }
    }

    /// Send `message` to super node `to` over a session with it (opened if needed).
    pub fn send_to_super_node(
        &mut self,
        cx: &mut Cx<'_>,
        to: HostEntry,
        message: Message<'static>,
    ) {
        if to.addr == cx.cfg.listen {
            return;
        }
        if let Some(conn) = self.sessions.get(&to.addr).copied() {
            let key = cx
                .sessions
                .view()
                .peer(conn)
                .map(|p| p.certificate.dh_public);
            if key.is_some_and(|k| k != to.static_key) {
                // Another key holds that address here: a message for `to` (a probe checking a
                // claimed rebinding) must not be answered by whoever is there. It waits until
                // that session is gone.
                return;
            }
            if cx.sessions.send(cx.now, conn, &message).is_ok() {
                return;
            }
            self.sessions.remove(&to.addr);
        }
        // An existing session with that super node (a membership link, or one it opened).
        // Both super nodes may have opened one: take the oldest, the same one on every run.
        let existing = {
            let ep = cx.sessions.view();
            ep.connections()
                .filter(|&c| {
                    ep.remote(c) == Some(&Path::udp(to.addr))
                        && ep
                            .peer(c)
                            .is_some_and(|p| p.certificate.dh_public == to.static_key)
                })
                .min()
        };
        if let Some(conn) = existing {
            self.sessions.insert(to.addr, conn);
            if cx.sessions.send(cx.now, conn, &message).is_ok() {
                return;
            }
        }
        if let Some((_, queue)) = self
            .connecting
            .values_mut()
            .find(|(e, _)| e.addr == to.addr)
        {
            // Bounded: past this, the super node is too slow to answer anyway.
            if queue.len() < MAX_QUEUED {
                queue.push(message);
            }
            return;
        }
        match cx
            .sessions
            .connect(cx.now, Destination::Udp(to.addr), Some(to.static_key))
        {
            Ok(conn) => {
                self.connecting.insert(conn, (to, vec![message]));
            }
            Err(_) => self.failed(cx, to),
        }
    }

    /// A session we opened to a super node is up: what waited for it goes.
    pub fn connected(&mut self, cx: &mut Cx<'_>, conn: ConnId) -> bool {
        let Some((to, queue)) = self.connecting.remove(&conn) else {
            return false;
        };
        self.heard(cx, to.addr);
        self.sessions.insert(to.addr, conn);
        for m in queue {
            let _ = cx.sessions.send(cx.now, conn, &m);
        }
        true
    }

    /// A session we opened to a super node could not be opened.
    pub fn connect_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId) -> bool {
        let Some((to, _)) = self.connecting.remove(&conn) else {
            return false;
        };
        self.failed(cx, to);
        true
    }

    /// No session could be opened with `to`. When the ring has another key at that address
    /// (the attempt checked a claimed rebinding), the super node there is not suspected: a
    /// lie about it must not take it out of the ring.
    fn failed(&mut self, cx: &mut Cx<'_>, to: HostEntry) {
        if self.ring.at(to.addr).is_none_or(|e| *e == to) {
            self.unreachable(cx, to.addr);
        }
    }

    /// A session ended: no index traffic on it any more. A client's watches end with it, and
    /// a client that went without saying goodbye is published offline with the will it
    /// left: at once when its session went silent for the idle timeout, after
    /// [`WILL_GRACE`] otherwise (its stream closed under it, it restarted). A will that
    /// comes after the client published anew is stale and goes nowhere. A will held on
    /// standby is kept for [`STANDBY_FOR`], and published only if the super node holding it
    /// first-hand is gone from the membership (or goes meanwhile).
    pub fn session_closed(&mut self, cx: &mut Cx<'_>, conn: ConnId, cause: CloseCause) {
        self.watches.client_gone(u64::from(conn.0));
        if let Some((will, standby)) = self.wills.remove(&conn) {
            match (cause, standby) {
                (CloseCause::Remote(_), _) => {}
                (cause, Some(holder)) => {
                    if self.standby_wills.len() >= MAX_STANDBY_WILLS {
                        self.standby_wills.pop_front();
                    }
                    let grace = if cause == CloseCause::Timeout {
                        Duration::ZERO
                    } else {
                        WILL_GRACE
                    };
                    self.standby_wills.push_back(StandbyWill {
                        holder,
                        from: cx.now + grace,
                        until: cx.now + STANDBY_FOR,
                        next: cx.now + grace,
                        record: will,
                    });
                    self.check_standby(cx);
                }
                (CloseCause::Timeout, None) => {
                    self.dht.publish(cx.now, cx.wall, &self.ring, will);
                }
                _ if self.parked_wills.len() >= MAX_PARKED_WILLS => {
                    self.dht.publish(cx.now, cx.wall, &self.ring, will);
                }
                _ => self.parked_wills.push((cx.now + WILL_GRACE, will)),
            }
        }
        let gone: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, c)| **c == conn)
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            self.sessions.remove(&addr);
            // What was asked on it will not be answered (a super node that restarted resets
            // the session at our next packet; its store is empty anyway): the searches go on
            // without it now instead of at their timeout. The node stays in the ring.
            self.dht.unreachable(cx.now, cx.wall, addr);
        }
    }

    /// Our own will (as a device): deposit it with the super nodes after us on the ring.
    pub fn deposit_own_will(&mut self, cx: &mut Cx<'_>, will: PresenceRecord) {
        self.own_will = Some((will, Vec::new()));
        self.next_deposit = Some(cx.now + REDEPOSIT_FIRST);
        self.redeposit(cx);
    }

    /// Hand our will to those of our ring successors that do not hold it yet.
    fn redeposit(&mut self, cx: &mut Cx<'_>) {
        let Some((will, at)) = &self.own_will else {
            return;
        };
        let key = Key::of_certificate(&cx.cfg.identity.certificate);
        let successors: Vec<HostEntry> = self
            .ring
            .successors(key, WILL_DEPOSITS + 1)
            .into_iter()
            .filter(|e| *e != self.me)
            .take(WILL_DEPOSITS)
            .collect();
        let new: Vec<HostEntry> = successors
            .iter()
            .filter(|e| !at.contains(e))
            .copied()
            .collect();
        let message = Message::IndexWill {
            record: Box::new(will.clone()),
            standby: Some(self.me.addr),
        };
        self.own_will = Some((will.clone(), successors));
        for to in new {
            self.send_to_super_node(cx, to, message.clone());
        }
    }

    /// A super node deposits its own will here: kept (the newest per super node) and
    /// published once `membership` has held it gone for [`DEPOSIT_GRACE`].
    pub fn deposited_will(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        will: &PresenceRecord,
        holder: SocketAddr,
        membership: &Membership,
    ) {
        let ep = cx.sessions.view();
        let peer_key = ep.peer(conn).map(|p| p.certificate.dh_public);
        let from_holder = matches!(
            ep.remote(conn),
            Some(Path::Direct { to: Destination::Udp(a), .. }) if *a == holder
        );
        // From a live member of the membership, over its own address, about itself.
        let fits = from_holder
            && peer_key == Some(will.certificate.dh_public)
            && membership
                .member(holder)
                .is_some_and(|m| m.alive && Some(m.entry.static_key) == peer_key)
            && !will.online
            && self
                .deposited
                .get(&holder)
                .is_none_or(|d| d.record.sequence < will.sequence);
        if !fits {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        if self.deposited.len() >= MAX_DEPOSITED && !self.deposited.contains_key(&holder) {
            let oldest = self
                .deposited
                .iter()
                .min_by_key(|(_, d)| d.at)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.deposited.remove(&a);
            }
        }
        self.deposited.insert(
            holder,
            Deposit {
                record: will.clone(),
                at: cx.now,
                gone_since: None,
            },
        );
        let keep = cx.now + DEPOSIT_KEEP;
        self.standby_due = Some(self.standby_due.map_or(keep, |t| t.min(keep)));
    }

    /// Publish the standby wills whose first-hand holder has left the membership; drop those
    /// kept long enough. The same for the wills super nodes deposited here.
    fn check_standby(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let departed = &self.departed;
        let mut publish = Vec::new();
        self.deposited.retain(|holder, d| {
            if now >= d.at + DEPOSIT_KEEP {
                return false;
            }
            if !departed.contains(holder) {
                d.gone_since = None;
                return true;
            }
            let since = *d.gone_since.get_or_insert(now);
            if now >= since + DEPOSIT_GRACE {
                publish.push(d.record.clone());
                return false;
            }
            true
        });
        self.standby_wills.retain_mut(|w| {
            if w.until <= now {
                return false;
            }
            if w.from <= now {
                if departed.contains(&w.holder) {
                    publish.push(w.record.clone());
                    return false;
                }
                w.next = w.until;
            }
            true
        });
        self.standby_due = self
            .standby_wills
            .iter()
            .map(|w| w.next)
            .chain(self.deposited.values().map(|d| {
                d.gone_since
                    .map_or(d.at + DEPOSIT_KEEP, |t| t + DEPOSIT_GRACE)
            }))
            .min();
        for will in publish {
            self.dht.publish(now, cx.wall, &self.ring, will);
        }
    }

    /// A super node we had taken out of the ring as unreachable answered after all (at start,
    /// a session to one that was not up yet fails): back into the ring at the next sync, now.
    fn heard(&mut self, cx: &Cx<'_>, addr: SocketAddr) {
        if self.suspects.remove(&addr).is_some() {
            self.next_ring_sync = Some(cx.now);
        }
    }

    /// No session with the super node at `addr`: fail what waits for it and take it out of
    /// the ring for a while (until it is heard from again), so searches and replicas go to
    /// live ones.
    pub fn unreachable(&mut self, cx: &mut Cx<'_>, addr: SocketAddr) {
        if addr == cx.cfg.listen {
            return;
        }
        self.suspects.insert(addr, cx.now + SUSPECT_FOR);
        if self.ring.remove(addr) {
            self.dht.ring_changed(cx.now);
        }
        self.dht.unreachable(cx.now, cx.wall, addr);
    }
}
