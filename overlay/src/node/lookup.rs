//! The index client: searching the global index, and keeping our own presence record in it.
//!
//! An ordinary node asks one of its super nodes, which runs the search, and verifies every
//! record it gets back; when that super node cannot tell, or says "not found" (which cannot be
//! checked here), it asks once more through the other one. A super node runs searches in its
//! own index (the super-node role). Outcomes go to the part that asked (calls dial by user name)
//! or to the application.
//!
//! Our own record is signed here and published whenever what it says changes (the super nodes
//! we are attached to, our addresses, our NAT type, online or not) and every
//! [`NodeConfig::presence_refresh`](super::NodeConfig::presence_refresh). With each online
//! record goes a **will**: a signed "offline" record, one sequence number further, that the
//! super node publishes for us if our link dies without a word.
//!
//! **Watching**: the users set with [`Lookup::watch`] are watched through every link (or,
//! as a super node, through our own index): the super nodes push each new record of theirs,
//! which is verified here and reported as [`NodeEvent::Presence`] when the user's combined
//! presence (online when any device is) changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::chat::keys::PublishedKeys;
use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::ConnId;
use natter_core::overlay::{
    ClientSearches, PresenceRecord, SearchOutcome, SearchResult, DEFAULT_RETENTION,
};
use natter_core::wire::message::{Message, MAX_WATCH_USERS};

use super::parts::{Cx, Notice, PartId};
use super::NodeEvent;

/// Ids of searches a super node runs in its own index (apart from those it asks others for).
const LOCAL_SEARCH: u64 = 1 << 62;

/// What a presence record says, apart from its sequence number and time: a fresh record is
/// published whenever this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PresenceKey {
    /// The session the record goes through: a new one (a link re-opened to the same super
    /// node, which may have published our will meanwhile) publishes anew.
    via: Option<ConnId>,
    super_nodes: Vec<SocketAddr>,
    online: bool,
    reflexive: Option<SocketAddr>,
    local_addresses: Vec<SocketAddr>,
    nat: u8,
}

/// An ordinary node's search in flight.
#[derive(Debug)]
struct ClientSearchTry {
    id: u64,
    user: UserName,
    started: Instant,
    asked: ConnId,
    retried: bool,
    /// The first super node said "not found": kept if the second cannot tell.
    first: Option<SearchOutcome>,
}

/// The index client. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Lookup {
    searches: ClientSearches,
    /// Per query of ours: the id handed out, who was searched, when, the link asked, and
    /// whether this is already the second try.
    tries: BTreeMap<u32, ClientSearchTry>,
    /// Who wants each search's outcome (absent: the application).
    replies: BTreeMap<u64, PartId>,
    next_search: u64,
    presence_seq: u64,
    published: Option<PresenceKey>,
    next_presence: Option<Instant>,
    online: bool,
    /// Users whose presence we watch.
    watched: BTreeSet<UserName>,
    /// Links whose super node has the whole watch list.
    watch_links: BTreeSet<ConnId>,
    /// Our own super-node role has the whole watch list.
    watch_here: bool,
    /// Per watched user: the newest sequence number and online flag per device.
    presence: BTreeMap<UserName, BTreeMap<DeviceId, (u64, bool)>>,
    /// Per watched user: the combined presence last reported.
    shown: BTreeMap<UserName, bool>,
    /// Devices revoked by the login authority: their records are refused.
    revoked: BTreeSet<DeviceId>,
    /// Our chat keys, carried by every record we sign (wills too: a message can be sealed
    /// for a device while it is offline).
    chat_keys: Option<PublishedKeys>,
}

impl Lookup {
    /// An index client whose searches give up after `timeout`.
    pub fn new(searches: ClientSearches) -> Self {
        Self {
            searches,
            tries: BTreeMap::new(),
            replies: BTreeMap::new(),
            next_search: 0,
            presence_seq: 0,
            published: None,
            next_presence: None,
            online: true,
            watched: BTreeSet::new(),
            watch_links: BTreeSet::new(),
            watch_here: false,
            presence: BTreeMap::new(),
            shown: BTreeMap::new(),
            revoked: BTreeSet::new(),
            chat_keys: None,
        }
    }

    /// Our chat keys changed (new, or signed again with a renewed certificate): the records
    /// signed from now on carry them.
    pub fn set_chat_keys(&mut self, keys: PublishedKeys) {
        if self.chat_keys != Some(keys) {
            self.chat_keys = Some(keys);
            self.published = None;
        }
    }

    /// A record of ours carries our chat keys.
    fn with_chat_keys(&self, cx: &Cx<'_>, record: PresenceRecord) -> PresenceRecord {
        match self.chat_keys {
            Some(keys) => record.with_chat_keys(&cx.cfg.identity.device, keys),
            None => record,
        }
    }

    /// Watch exactly these users' presence from now on.
    pub fn watch(&mut self, cx: &mut Cx<'_>, users: BTreeSet<UserName>) {
        let added: Vec<UserName> = users.difference(&self.watched).cloned().collect();
        let removed: Vec<UserName> = self.watched.difference(&users).cloned().collect();
        self.watched = users;
        for u in &removed {
            self.presence.remove(u);
            self.shown.remove(u);
        }
        self.send_watch(cx, &removed, false);
        self.send_watch(cx, &added, true);
        self.sync_watch_links(cx);
    }

    /// Tell where we watch from that these users are (no longer) watched.
    fn send_watch(&mut self, cx: &mut Cx<'_>, users: &[UserName], watch: bool) {
        if users.is_empty() {
            return;
        }
        if self.watch_here {
            cx.out.notify(
                PartId::SuperNode,
                Notice::WatchHere {
                    users: users.to_vec(),
                    watch,
                },
            );
        }
        for conn in &self.watch_links {
            for chunk in users.chunks(MAX_WATCH_USERS) {
                let msg = Message::IndexWatch {
                    full: true,
                    watch,
                    refresh: false,
                    users: chunk.to_vec(),
                };
                let _ = cx.sessions.send(cx.now, *conn, &msg);
            }
        }
    }

    /// Give the whole watch list to every new link (or to our own role when we are a super
    /// node): it watches for us from then on.
    fn sync_watch_links(&mut self, cx: &mut Cx<'_>) {
        let all: Vec<UserName> = self.watched.iter().cloned().collect();
        if cx.facts.super_node {
            self.watch_links.clear();
            if !self.watch_here {
                self.watch_here = true;
                cx.out.notify(
                    PartId::SuperNode,
                    Notice::WatchHere {
                        users: all,
                        watch: true,
                    },
                );
            }
            return;
        }
        self.watch_here = false;
        let links: BTreeSet<ConnId> = cx.facts.links.iter().map(|l| l.conn).collect();
        self.watch_links.retain(|c| links.contains(c));
        for conn in links {
            if self.watch_links.insert(conn) {
                for chunk in all.chunks(MAX_WATCH_USERS) {
                    let msg = Message::IndexWatch {
                        full: true,
                        watch: true,
                        refresh: false,
                        users: chunk.to_vec(),
                    };
                    let _ = cx.sessions.send(cx.now, conn, &msg);
                }
            }
        }
    }

    /// A watched user's record (from a link's super node, or from our own index): verified,
    /// kept when newer, and reported when the user's combined presence changes.
    fn on_record(&mut self, cx: &mut Cx<'_>, record: &PresenceRecord) {
        let user = record.user();
        if !self.watched.contains(user) {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        let devices = self.presence.entry(user.clone()).or_default();
        if devices
            .get(&record.device())
            .is_some_and(|(seq, _)| *seq >= record.sequence)
        {
            return;
        }
        if record
            .verify(&cx.cfg.identity.trusted, cx.wall, DEFAULT_RETENTION, |d| {
                self.revoked.contains(&d)
            })
            .is_err()
        {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        devices.insert(record.device(), (record.sequence, record.online));
        let online = devices.values().any(|(_, online)| *online);
        if self.shown.insert(user.clone(), online) != Some(online) {
            cx.out.events.push_back(NodeEvent::Presence {
                user: user.clone(),
                online,
            });
        }
    }

    /// Search the index for `user`; the outcome goes to `reply`, or to the application as
    /// [`NodeEvent::Search`] with the returned id.
    pub fn search(&mut self, cx: &mut Cx<'_>, user: UserName, reply: Option<PartId>) -> u64 {
        self.next_search += 1;
        if cx.facts.super_node {
            let id = self.next_search | LOCAL_SEARCH;
            if let Some(part) = reply {
                self.replies.insert(id, part);
            }
            cx.out
                .notify(PartId::SuperNode, Notice::SearchHere { id, user });
            return id;
        }
        let id = self.next_search;
        if let Some(part) = reply {
            self.replies.insert(id, part);
        }
        let target = index_link(cx, None);
        let (query, message) = self.searches.start(cx.now, user.clone());
        let sent = target.is_some_and(|conn| cx.sessions.send(cx.now, conn, &message).is_ok());
        match target {
            Some(asked) if sent => {
                self.tries.insert(
                    query,
                    ClientSearchTry {
                        id,
                        user,
                        started: cx.now,
                        asked,
                        retried: false,
                        first: None,
                    },
                );
            }
            _ => {
                // Not attached: nobody to ask. Fail now rather than at the timeout.
                let outcome = self
                    .searches
                    .handle_message(cx.now, cx.wall, &not_found(query))
                    .map(|(_, o)| o)
                    .unwrap_or(SearchOutcome {
                        user,
                        result: SearchResult::Unavailable,
                        hops: 0,
                        messages: 0,
                        elapsed: Duration::ZERO,
                    });
                self.finished(cx, id, outcome);
            }
        }
        id
    }

    /// Set whether the user is online, publishing a fresh record when it changes.
    pub fn set_online(&mut self, cx: &mut Cx<'_>, online: bool) {
        if self.online != online {
            self.online = online;
            self.published = None;
            self.publish(cx);
        }
    }

    /// Forget the records of these revoked devices.
    pub fn revoke(&mut self, devices: &[natter_core::crypto::DeviceId]) {
        self.searches.revoke(devices);
        self.revoked.extend(devices.iter().copied());
        for records in self.presence.values_mut() {
            records.retain(|d, _| !devices.contains(d));
        }
    }

    /// An answer to one of our searches, from the super node asked.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        if let Message::IndexNotify { record } = msg {
            if cx.facts.links.iter().any(|l| l.conn == conn) {
                self.on_record(cx, record);
            } else {
                cx.out.stats.overlay_dropped += 1;
            }
            return;
        }
        let query = match msg {
            Message::IndexResult { query, .. } | Message::IndexNotFound { query, .. } => *query,
            _ => {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
        };
        if self.tries.get(&query).is_none_or(|t| t.asked != conn) {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        if let Some((query, outcome)) = self.searches.handle_message(cx.now, cx.wall, msg) {
            self.client_outcome(cx, query, outcome);
        }
    }

    /// A notice from another part.
    pub fn on_notice(&mut self, cx: &mut Cx<'_>, notice: Notice) {
        match notice {
            Notice::SearchDone { id, outcome } => self.finished(cx, id, outcome),
            Notice::FactsChanged => {
                self.publish(cx);
                self.sync_watch_links(cx);
            }
            Notice::Presence(record) => self.on_record(cx, &record),
            Notice::SearchFor { user, reply } => {
                self.search(cx, user, Some(reply));
            }
            _ => {}
        }
    }

    /// Search and publication timers.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        for (query, outcome) in self.searches.handle_timeout(cx.now, cx.wall) {
            self.client_outcome(cx, query, outcome);
        }
        if self.next_presence.is_some_and(|t| t <= cx.now) {
            self.publish(cx);
            if self.next_presence.is_some_and(|t| t <= cx.now) {
                // Could not publish (not attached): try again once attached.
                self.next_presence = None;
                self.published = None;
            }
        }
    }

    /// When the index client next wants its timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.searches.poll_timeout(), self.next_presence]
            .into_iter()
            .flatten()
            .min()
    }

    /// A search ended: to the part that asked, or to the application.
    fn finished(&mut self, cx: &mut Cx<'_>, id: u64, outcome: SearchOutcome) {
        match self.replies.remove(&id) {
            Some(part) => cx.out.notify(part, Notice::SearchDone { id, outcome }),
            None => cx.out.events.push_back(NodeEvent::Search { id, outcome }),
        }
    }

    /// A search of ours ended at the super node asked. When it could not tell (or did not
    /// answer), or said "not found" (which, unlike records, cannot be checked here), ask once
    /// more through the other attached super node (ours may have died or be lying), also asking
    /// the super nodes a record of the user we remember names: the replicas may all be lying.
    fn client_outcome(&mut self, cx: &mut Cx<'_>, query: u32, mut outcome: SearchOutcome) {
        let Some(attempt) = self.tries.remove(&query) else {
            return;
        };
        let doubt = matches!(
            outcome.result,
            SearchResult::Unavailable | SearchResult::NotFound
        );
        if doubt && !attempt.retried {
            // Through the other super node (ours may be lying or gone), else the same one;
            // either way also asking the user's own super nodes when we know a record of theirs.
            let link = index_link(cx, Some(attempt.asked))
                .or_else(|| self.searches.knows(&attempt.user).then_some(attempt.asked));
            if let Some(other) = link {
                let (q2, message) = self.searches.start_widened(cx.now, attempt.user.clone());
                if cx.sessions.send(cx.now, other, &message).is_ok() {
                    let first = (outcome.result == SearchResult::NotFound).then_some(outcome);
                    self.tries.insert(
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
                let _ = self
                    .searches
                    .handle_message(cx.now, cx.wall, &not_found(q2));
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
        outcome.elapsed = cx.now.saturating_duration_since(attempt.started);
        self.finished(cx, attempt.id, outcome);
    }

    /// What our record would say now, apart from its sequence number and time.
    fn key(&self, cx: &Cx<'_>) -> PresenceKey {
        PresenceKey {
            via: if cx.facts.super_node {
                None
            } else {
                index_link(cx, None)
            },
            super_nodes: if cx.facts.super_node {
                vec![cx.cfg.listen]
            } else {
                cx.facts.attached()
            },
            online: self.online,
            reflexive: cx.facts.reflexive,
            local_addresses: cx.facts.local_addresses.clone(),
            nat: cx.facts.nat_code(),
        }
    }

    /// Publish our record when anything it says changed, or when it is due.
    fn publish(&mut self, cx: &mut Cx<'_>) {
        let key = self.key(cx);
        let due = self.next_presence.is_some_and(|t| t <= cx.now);
        if key.super_nodes.is_empty() || (!due && self.published.as_ref() == Some(&key)) {
            return;
        }
        // Increasing across restarts without a stored counter: wall-clock seconds, with room
        // for 65,536 records a second.
        self.presence_seq = (cx.wall.0 << 16).max(self.presence_seq + 1);
        let record = PresenceRecord::sign(
            &cx.cfg.identity.device,
            cx.cfg.identity.certificate.clone(),
            self.online,
            key.super_nodes.clone(),
            key.reflexive,
            key.local_addresses.clone(),
            key.nat,
            cx.cfg.identity.capabilities,
            self.presence_seq,
            cx.wall,
        );
        let record = self.with_chat_keys(cx, record);
        let published = if cx.facts.super_node {
            cx.out
                .notify(PartId::SuperNode, Notice::Publish(Box::new(record)));
            if self.online {
                // Our will, for the super nodes after us on the ring to publish if we leave
                // it without a word (we hold no link whose super node could).
                self.presence_seq += 1;
                let will = self.will(cx, key.nat);
                cx.out
                    .notify(PartId::SuperNode, Notice::Will(Box::new(will)));
            }
            true
        } else if let Some(conn) = index_link(cx, None) {
            let msg = Message::IndexStore {
                replicate: true,
                record: Box::new(record),
            };
            let mut sent = cx.sessions.send(cx.now, conn, &msg).is_ok();
            if !self.online {
                // "Offline" goes through every link: it must not be lost with a super node
                // that died unnoticed (the replicas drop the second copy unverified).
                for link in cx.facts.links.iter().filter(|l| l.conn != conn) {
                    sent |= cx.sessions.send(cx.now, link.conn, &msg).is_ok();
                }
            }
            if sent && self.online {
                // Our will: "offline", one further, for the super node we publish through
                // to publish if our link dies without a word. The next record goes past
                // it. Our other super nodes hold it on standby: they publish it only if
                // that super node is gone as well (we lost power together with
                // it). (Not first-hand on every link: a live device that moved then showed
                // offline to whoever searched it meanwhile, which slowed calls that recover
                // by searching.)
                self.presence_seq += 1;
                let will = self.will(cx, key.nat);
                let record = Box::new(will);
                let first_hand = Message::IndexWill {
                    record: record.clone(),
                    standby: None,
                };
                let _ = cx.sessions.send(cx.now, conn, &first_hand);
                if let Some(holder) = cx.facts.links.iter().find(|l| l.conn == conn) {
                    let standby = Message::IndexWill {
                        record,
                        standby: Some(holder.addr),
                    };
                    for link in cx.facts.links.iter().filter(|l| l.conn != conn) {
                        let _ = cx.sessions.send(cx.now, link.conn, &standby);
                    }
                }
            }
            sent
        } else {
            false
        };
        if published {
            self.published = Some(key);
            self.next_presence = Some(cx.now + cx.cfg.presence_refresh);
        }
    }

    /// Our will: "offline", signed now with the current sequence number.
    fn will(&self, cx: &Cx<'_>, nat: u8) -> PresenceRecord {
        let will = PresenceRecord::sign(
            &cx.cfg.identity.device,
            cx.cfg.identity.certificate.clone(),
            false,
            Vec::new(),
            None,
            Vec::new(),
            nat,
            cx.cfg.identity.capabilities,
            self.presence_seq,
            cx.wall,
        );
        self.with_chat_keys(cx, will)
    }
}

/// The session to ask the index through: the first attached super node's (other than
/// `except`).
fn index_link(cx: &Cx<'_>, except: Option<ConnId>) -> Option<ConnId> {
    cx.facts
        .links
        .iter()
        .map(|l| l.conn)
        .find(|c| Some(*c) != except)
}

/// The answer a search that could not be asked ends with.
fn not_found(query: u32) -> Message<'static> {
    Message::IndexNotFound {
        query,
        hops: 0,
        definite: false,
    }
}
