//! The node's side of the global index: publishing its own presence record, searching, and
//! (as a super node) carrying the [`Dht`]'s messages over sessions with other super nodes.

use std::time::{Duration, Instant};

use natter_core::crypto::UserName;
use natter_core::endpoint::{ConnId, Path};
use natter_core::overlay::PresenceRecord;
use natter_core::sansio::Destination;
use natter_core::wire::message::{HostEntry, Message};

use super::{nat_code, Node, PresenceKey};
use crate::dht::{DhtOutput, Origin};
use natter_core::overlay::{SearchOutcome, SearchResult};

/// How often a super node re-reads its membership into the index ring.
const RING_SYNC: Duration = Duration::from_secs(2);
/// A super node no session could be opened with stays out of the ring this long (the
/// membership's own probes then tell whether it is gone for good).
const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Messages waiting for a session with a super node to open.
const MAX_QUEUED: usize = 64;

/// An ordinary node's search in flight (see [`Node::search`]).
#[derive(Debug)]
pub(super) struct ClientSearchTry {
    id: u64,
    user: UserName,
    started: Instant,
    asked: ConnId,
    retried: bool,
    /// The first super node said "not found": kept if the second cannot tell.
    first: Option<SearchOutcome>,
}

impl Node {
    /// Search the global index for `user`. The outcome arrives as [`NodeEvent::Search`](super::NodeEvent::Search) with
    /// the returned id: the user's records (one per device, each verified here), a definite
    /// "not found", or "unavailable" when too few super nodes answered. An ordinary node asks
    /// its super node, which runs the search; a super node runs it itself.
    pub fn search(&mut self, now: Instant, user: UserName) -> u64 {
        let wall = self.wall(now);
        if let Some(dht) = self.dht.as_mut() {
            self.next_search += 1;
            let id = self.next_search | 1 << 62;
            dht.search(now, wall, &self.ring, Origin::Local(id), user);
            self.pump(now);
            return id;
        }
        self.next_search += 1;
        let id = self.next_search;
        let target = self.index_link(None);
        let (query, message) = self.client_searches.start(now, user.clone());
        let sent =
            target.is_some_and(|conn| self.endpoint.send_control(now, conn, &message).is_ok());
        if let (true, Some(asked)) = (sent, target) {
            self.client_search_ids.insert(
                query,
                ClientSearchTry {
                    id,
                    user,
                    started: now,
                    asked,
                    retried: false,
                    first: None,
                },
            );
        } else {
            // Not attached: nobody to ask. Fail now rather than at the timeout.
            let outcome = self
                .client_searches
                .handle_message(
                    now,
                    wall,
                    &Message::IndexNotFound {
                        query,
                        hops: 0,
                        definite: false,
                    },
                )
                .map(|(_, o)| o)
                .unwrap_or(SearchOutcome {
                    user,
                    result: SearchResult::Unavailable,
                    hops: 0,
                    messages: 0,
                    elapsed: Duration::ZERO,
                });
            self.search_finished(now, id, outcome);
        }
        self.pump(now);
        id
    }

    /// The user logs out: publish a record saying so (found as offline, with this time as
    /// last seen, for the retention period). [`Node::set_online`] undoes it.
    pub fn go_offline(&mut self, now: Instant) {
        self.set_online(now, false);
    }

    /// Set whether the user is online, publishing a fresh record when it changes.
    pub fn set_online(&mut self, now: Instant, online: bool) {
        if self.online != online {
            self.online = online;
            self.presence_published = None;
            self.publish_presence(now);
            self.pump(now);
        }
    }

    /// The index as a super node (records held, counters).
    pub fn index(&self) -> Option<&crate::dht::Dht> {
        self.dht.as_ref()
    }

    /// Super nodes in this node's index ring (as a super node).
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// The session to ask the index through: the first attached super node's (other than
    /// `except`).
    fn index_link(&self, except: Option<ConnId>) -> Option<ConnId> {
        self.attacher
            .attached()
            .into_iter()
            .filter_map(|(stream, _)| self.stream_conn.get(&stream).copied())
            .find(|c| Some(*c) != except)
    }

    /// A search of ours ended at the super node asked. When it could not tell (or did not
    /// answer), or said "not found" (which, unlike records, cannot be checked here), ask once
    /// more through the other attached super node: ours may have died or be lying.
    fn client_outcome(&mut self, now: Instant, query: u32, mut outcome: SearchOutcome) {
        let Some(attempt) = self.client_search_ids.remove(&query) else {
            return;
        };
        let doubt = matches!(
            outcome.result,
            SearchResult::Unavailable | SearchResult::NotFound
        );
        if doubt && !attempt.retried {
            if let Some(other) = self.index_link(Some(attempt.asked)) {
                let (q2, message) = self.client_searches.start(now, attempt.user.clone());
                if self.endpoint.send_control(now, other, &message).is_ok() {
                    let first = (outcome.result == SearchResult::NotFound).then_some(outcome);
                    self.client_search_ids.insert(
                        q2,
                        ClientSearchTry {
                            asked: other,
                            retried: true,
                            first,
                            ..attempt
                        },
                    );
                    return;
                }
                // Could not send: drop the second try's bookkeeping and report below.
                let wall = self.wall(now);
                let _ = self.client_searches.handle_message(
                    now,
                    wall,
                    &Message::IndexNotFound {
                        query: q2,
                        hops: 0,
                        definite: false,
                    },
                );
            }
        }
        if let Some(first) = attempt.first {
            // Both answers count; a second "could not tell" does not undo a first "not found".
            outcome.messages += first.messages;
            if outcome.result == SearchResult::Unavailable {
                outcome.result = SearchResult::NotFound;
                outcome.hops = first.hops;
            }
        }
        outcome.elapsed = now.saturating_duration_since(attempt.started);
        self.search_finished(now, attempt.id, outcome);
    }

    /// Our own record, signed now.
    fn own_record(&mut self, now: Instant) -> PresenceRecord {
        let wall = self.wall(now);
        // Increasing across restarts without a stored counter: wall-clock seconds, with room
        // for 65,536 records a second.
        self.presence_seq = (wall.0 << 16).max(self.presence_seq + 1);
        let super_nodes = if self.dht.is_some() {
            vec![self.cfg.listen]
        } else {
            self.attached()
        };
        PresenceRecord::sign(
            &self.cfg.identity.device,
            self.cfg.identity.certificate.clone(),
            self.online,
            super_nodes,
            self.reflexive,
            self.cfg.local_addresses.clone(),
            nat_code(self.nat_report.as_ref().map(|r| r.nat)),
            self.cfg.identity.capabilities,
            self.presence_seq,
            wall,
        )
    }

    /// What our record would say now, apart from its sequence number and time.
    fn presence_key(&self) -> PresenceKey {
        PresenceKey {
            super_nodes: if self.dht.is_some() {
                vec![self.cfg.listen]
            } else {
                self.attached()
            },
            online: self.online,
            reflexive: self.reflexive,
            local_addresses: self.cfg.local_addresses.clone(),
            nat: nat_code(self.nat_report.as_ref().map(|r| r.nat)),
        }
    }

    /// Publish our record when anything it says changed (the super nodes we are attached to,
    /// our addresses, our NAT type), or when it is due.
    fn publish_presence(&mut self, now: Instant) {
        let key = self.presence_key();
        let due = self.next_presence.is_some_and(|t| t <= now);
        if key.super_nodes.is_empty() || (!due && self.presence_published.as_ref() == Some(&key)) {
            return;
        }
        let record = self.own_record(now);
        let wall = self.wall(now);
        let published = if let Some(dht) = self.dht.as_mut() {
            dht.publish(now, wall, &self.ring, record)
        } else if let Some(conn) = self.index_link(None) {
            let msg = Message::IndexStore {
                replicate: true,
                record: Box::new(record),
            };
            self.endpoint.send_control(now, conn, &msg).is_ok()
        } else {
            false
        };
        if published {
            self.presence_published = Some(key);
            self.next_presence = Some(now + self.cfg.presence_refresh);
        }
    }

    /// Make the ring follow the super-node membership.
    pub(super) fn sync_ring(&mut self, now: Instant) {
        let Some(role) = self.supernode.as_ref() else {
            return;
        };
        self.index_suspects.retain(|_, until| *until > now);
        let mut members: std::collections::HashSet<HostEntry> = role
            .membership()
            .alive()
            .filter(|m| !self.index_suspects.contains_key(&m.addr))
            .collect();
        members.insert(self.me());
        let before = self.ring.generation();
        let stale: Vec<_> = self
            .ring
            .entries()
            .filter(|e| !members.contains(e))
            .map(|e| e.addr)
            .collect();
        for addr in stale {
            self.ring.remove(addr);
        }
        // In address order: which of several super nodes in one prefix get past the cap must
        // not depend on a hash map's order.
        let mut members: Vec<HostEntry> = members.into_iter().collect();
        members.sort_by_key(|e| e.addr);
        for m in members {
            self.ring.insert(m);
        }
        if self.ring.generation() != before {
            if let Some(dht) = self.dht.as_mut() {
                dht.ring_changed(now);
            }
        }
        self.next_ring_sync = Some(now + RING_SYNC);
    }

    pub(super) fn index_timeout(&mut self, now: Instant) {
        let wall = self.wall(now);
        if self.next_ring_sync.is_some_and(|t| t <= now) {
            self.next_ring_sync = None;
            self.sync_ring(now);
        }
        if let Some(dht) = self.dht.as_mut() {
            dht.handle_timeout(now, wall, &self.ring);
        }
        for (query, outcome) in self.client_searches.handle_timeout(now) {
            self.client_outcome(now, query, outcome);
        }
        if self.next_presence.is_some_and(|t| t <= now) {
            self.publish_presence(now);
            if self.next_presence.is_some_and(|t| t <= now) {
                // Could not publish (not attached): try again once attached.
                self.next_presence = None;
                self.presence_published = None;
            }
        }
    }

    /// Send the membership's messages; follow its changes in the index ring. True when
    /// anything moved.
    pub(super) fn drain_membership(&mut self, now: Instant) -> bool {
        let Some(role) = self.supernode.as_mut() else {
            return false;
        };
        let mut out = Vec::new();
        let mut changed = false;
        let m = role.membership_mut();
        while let Some(o) = m.poll_output() {
            out.push(o);
        }
        while m.poll_change().is_some() {
            changed = true;
        }
        let moved = changed || !out.is_empty();
        for (to, message) in out {
            self.send_to_super_node(now, to, message);
        }
        if changed {
            self.sync_ring(now);
        }
        moved
    }

    /// A membership message on session `conn`. True when it was one (handled or dropped).
    pub(super) fn on_membership_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: &Message<'_>,
    ) -> bool {
        if !crate::membership::Membership::is_membership_message(msg) {
            return false;
        }
        // Super nodes talk membership over UDP sessions, from their listening address.
        let from = match (self.endpoint.remote(conn), self.endpoint.peer(conn)) {
            (Some(Path::Direct(Destination::Udp(addr))), Some(peer))
                if *addr != self.cfg.listen =>
            {
                HostEntry {
                    addr: *addr,
                    static_key: peer.certificate.dh_public,
                }
            }
            _ => {
                self.stats.overlay_dropped += 1;
                return true;
            }
        };
        self.super_node_heard(now, from.addr);
        match self.supernode.as_mut() {
            Some(role) => {
                self.index_sessions.entry(from.addr).or_insert(conn);
                role.membership_mut().handle_message(now, from, msg);
            }
            // Not a super node: say nothing, and the sender's probes find this node gone.
            None => self.stats.overlay_dropped += 1,
        }
        true
    }

    /// Route the index's outputs and publish our record if needed. True when anything moved.
    pub(super) fn drain_index(&mut self, now: Instant) -> bool {
        self.publish_presence(now);
        let mut moved = false;
        while let Some(out) = self.dht.as_mut().and_then(|d| d.poll_output()) {
            moved = true;
            match out {
                DhtOutput::Send { to, message } => self.send_to_super_node(now, to, message),
                DhtOutput::Reply { client, message } => {
                    let _ = self
                        .endpoint
                        .send_control(now, ConnId(client as u32), &message);
                }
                DhtOutput::Done { id, outcome } => {
                    self.search_finished(now, id, outcome);
                }
            }
        }
        moved
    }

    pub(super) fn send_to_super_node(
        &mut self,
        now: Instant,
        to: HostEntry,
        message: Message<'static>,
    ) {
        if to.addr == self.cfg.listen {
            return;
        }
        if let Some(conn) = self.index_sessions.get(&to.addr).copied() {
            if self.endpoint.send_control(now, conn, &message).is_ok() {
                return;
            }
            self.index_sessions.remove(&to.addr);
        }
        // An existing session with that super node (a membership link, or one it opened).
        // Both super nodes may have opened one: take the oldest, the same one on every run.
        let existing = self
            .endpoint
            .connections()
            .filter(|&c| {
                self.endpoint.remote(c) == Some(&Path::Direct(Destination::Udp(to.addr)))
                    && self
                        .endpoint
                        .peer(c)
                        .is_some_and(|p| p.certificate.dh_public == to.static_key)
            })
            .min();
        if let Some(conn) = existing {
            self.index_sessions.insert(to.addr, conn);
            if self.endpoint.send_control(now, conn, &message).is_ok() {
                return;
            }
        }
        if let Some((_, queue)) = self
            .index_connecting
            .values_mut()
            .find(|(e, _)| e.addr == to.addr)
        {
            // Bounded: past this, the super node is too slow to answer anyway.
            if queue.len() < MAX_QUEUED {
                queue.push(message);
            }
            return;
        }
        match self
            .endpoint
            .connect(now, Destination::Udp(to.addr), Some(to.static_key))
        {
            Ok(conn) => {
                self.index_connecting.insert(conn, (to, vec![message]));
            }
            Err(_) => self.super_node_unreachable(now, to.addr),
        }
    }

    pub(super) fn index_connected(&mut self, now: Instant, conn: ConnId) {
        if let Some((to, queue)) = self.index_connecting.remove(&conn) {
            self.super_node_heard(now, to.addr);
            self.index_sessions.insert(to.addr, conn);
            for m in queue {
                let _ = self.endpoint.send_control(now, conn, &m);
            }
        }
    }

    pub(super) fn index_connect_failed(&mut self, now: Instant, conn: ConnId) {
        if let Some((to, _)) = self.index_connecting.remove(&conn) {
            self.super_node_unreachable(now, to.addr);
        }
    }

    /// A super node we had taken out of the ring as unreachable answered after all (at start,
    /// a session to one that was not up yet fails): back into the ring at the next sync, now.
    fn super_node_heard(&mut self, now: Instant, addr: std::net::SocketAddr) {
        if self.index_suspects.remove(&addr).is_some() {
            self.next_ring_sync = Some(now);
        }
    }

    /// No session with the super node at `addr`: fail what waits for it and take it out of
    /// the ring for a while (until it is heard from again), so searches and replicas go to
    /// live ones.
    pub(super) fn super_node_unreachable(&mut self, now: Instant, addr: std::net::SocketAddr) {
        if addr == self.cfg.listen {
            return;
        }
        let wall = self.wall(now);
        self.index_suspects.insert(addr, now + SUSPECT_FOR);
        if self.ring.remove(addr) {
            if let Some(dht) = self.dht.as_mut() {
                dht.ring_changed(now);
            }
        }
        if let Some(dht) = self.dht.as_mut() {
            dht.unreachable(now, wall, addr);
        }
    }

    /// An index message on session `conn`. True when it was one (handled or dropped).
    pub(super) fn on_index_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: &Message<'_>,
    ) -> bool {
        let wall = self.wall(now);
        let is_index = matches!(
            msg,
            Message::IndexStore { .. }
                | Message::IndexSearch { .. }
                | Message::IndexResult { .. }
                | Message::IndexNotFound { .. }
        );
        if !is_index {
            return false;
        }
        let udp = match self.endpoint.remote(conn) {
            Some(Path::Direct(Destination::Udp(a))) => Some(*a),
            _ => None,
        };
        let Some(peer_key) = self.endpoint.peer(conn).map(|p| p.certificate.dh_public) else {
            self.stats.overlay_dropped += 1;
            return true;
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
        ) || (self.dht.is_some()
            && matches!(
                msg,
                Message::IndexResult { .. } | Message::IndexNotFound { .. }
            ));
        if from_super_node {
            match from {
                Some(f) if f.addr != self.cfg.listen => {
                    self.super_node_heard(now, f.addr);
                    self.index_sessions.entry(f.addr).or_insert(conn);
                }
                _ => {
                    self.stats.overlay_dropped += 1;
                    return true;
                }
            }
        }
        let from = from.unwrap_or(HostEntry {
            addr: self.cfg.listen,
            static_key: peer_key,
        });
        match (self.dht.as_mut(), msg) {
            // A client publishes its record or asks for a search.
            (
                Some(dht),
                Message::IndexStore {
                    replicate: true,
                    record,
                },
            ) => {
                if !dht.publish(now, wall, &self.ring, (**record).clone()) {
                    self.stats.overlay_dropped += 1;
                }
            }
            (
                Some(dht),
                Message::IndexSearch {
                    query,
                    full: true,
                    user,
                },
            ) => {
                dht.search(
                    now,
                    wall,
                    &self.ring,
                    Origin::Client {
                        client: u64::from(conn.0),
                        query: *query,
                    },
                    user.clone(),
                );
            }
            // Another super node stores, asks, or answers.
            (Some(dht), m) => {
                if !dht.handle_message(now, wall, &self.ring, from, m) {
                    self.stats.overlay_dropped += 1;
                }
            }
            // An ordinary node: answers to its own searches, from the super node it asked.
            (None, Message::IndexResult { query, .. } | Message::IndexNotFound { query, .. }) => {
                if self
                    .client_search_ids
                    .get(query)
                    .is_none_or(|t| t.asked != conn)
                {
                    self.stats.overlay_dropped += 1;
                    return true;
                }
                if let Some((query, outcome)) = self.client_searches.handle_message(now, wall, msg)
                {
                    self.client_outcome(now, query, outcome);
                }
            }
            (None, Message::IndexSearch { query, .. }) => {
                // Not a super node (any more): say so rather than leave the asker waiting.
                let _ = self.endpoint.send_control(
                    now,
                    conn,
                    &Message::IndexNotFound {
                        query: *query,
                        hops: 0,
                        definite: false,
                    },
                );
            }
            (None, _) => self.stats.overlay_dropped += 1,
        }
        true
    }
}
