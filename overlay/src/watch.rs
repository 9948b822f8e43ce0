//! Watching presence: a super node's side of its clients' watch lists.
//!
//! A client tells its super node whose presence it watches ([`Message::IndexWatch`] with
//! `full`). The super node watches each such user once, however many of its clients watch
//! them, at [`WATCH_REPLICAS`] of the user's replicas (the first ones of the user's replica
//! set on its ring): they push it every newer record they store of the user, and the ones
//! they hold when the watch starts ([`crate::dht::Dht::watch`]). The super node keeps the
//! newest record per device, drops what it already has (two replicas push the same records),
//! verifies the rest and hands each to its watching clients.
//!
//! When the ring changes, the watch moves with the replica set: only users whose first
//! replicas changed cost a message. Watches are repeated every [`WATCH_REFRESH`] as one
//! message per 32 users per replica ([`Watches::refresh`]), which the replicas answer only
//! when they had lost the watch (a lost datagram, a replica that restarted or did not know
//! this super node yet); a replica pushing a user nobody here watches any more is told to
//! stop. Pushes of records therefore follow changes (of presence, of the ring, of watch
//! lists), never time.
//!
//! Sans-IO: what to send comes out of [`Watches::poll_output`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use natter_core::crypto::{DeviceId, UserName};
use natter_core::overlay::PresenceRecord;
use natter_core::wire::message::{HostEntry, Message, MAX_WATCH_USERS};

use crate::dht::{Key, Ring};

/// Replicas a super node watches each user at: one keeps pushing when the other fails, until
/// the ring change moves the watch.
pub const WATCH_REPLICAS: usize = 2;
/// Most users one client may watch.
pub const MAX_CLIENT_WATCHES: usize = 2_000;
/// Most users a super node watches for all its clients.
pub const MAX_WATCHED: usize = 200_000;
/// How often a super node repeats its watches to the replicas.
pub const WATCH_REFRESH: std::time::Duration = std::time::Duration::from_secs(600);

/// What the watch table wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutput {
    /// Send this [`Message::IndexWatch`] to the super node `to`.
    Send {
        /// A replica.
        to: HostEntry,
        /// The watch or unwatch.
        message: Message<'static>,
    },
    /// This super node is itself one of the replicas: watch (or stop) in its own index.
    Local {
        /// Start (true) or stop.
        watch: bool,
        /// A refresh (see [`Message::IndexWatch`]).
        refresh: bool,
        /// Who.
        users: Vec<UserName>,
    },
    /// Hand a record to a watching client.
    Deliver {
        /// The client's handle.
        client: u64,
        /// The record (verified).
        record: Box<PresenceRecord>,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Records handed to clients.
    pub delivered: u64,
    /// Records that were not newer than what was held (the other replica's copy).
    pub duplicates: u64,
    /// Records refused: not from a replica watched, of nobody watched, or not verifying; and
    /// watches past the bounds.
    pub refused: u64,
    /// Watches moved to another replica after the ring changed.
    pub moved: u64,
}

#[derive(Debug, Default)]
struct Watched {
    clients: BTreeSet<u64>,
    at: Vec<HostEntry>,
    records: BTreeMap<DeviceId, PresenceRecord>,
}

/// A super node's watches. See the [module documentation](self).
#[derive(Debug)]
pub struct Watches {
    me: HostEntry,
    users: BTreeMap<UserName, Watched>,
    clients: BTreeMap<u64, BTreeSet<UserName>>,
    generation: u64,
    /// Watches, unwatches and refreshes to send, batched per replica: (replica, watch,
    /// refresh).
    pending: BTreeMap<(HostEntry, bool, bool), Vec<UserName>>,
    outputs: VecDeque<WatchOutput>,
    stats: WatchStats,
}

impl Watches {
    /// The watch table of the super node `me`.
    pub fn new(me: HostEntry) -> Self {
        Self {
            me,
            users: BTreeMap::new(),
            clients: BTreeMap::new(),
            generation: 0,
            pending: BTreeMap::new(),
            outputs: VecDeque::new(),
            stats: WatchStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    /// Users watched.
    pub fn watched(&self) -> usize {
        self.users.len()
    }

    /// The replicas `user` is watched at (empty when nobody watches them).
    pub fn watched_at(&self, user: &UserName) -> &[HostEntry] {
        self.users.get(user).map_or(&[], |w| &w.at)
    }

    /// Hand on the next output.
    pub fn poll_output(&mut self) -> Option<WatchOutput> {
        self.outputs.pop_front()
    }

    /// The client `client` starts (`watch`) or stops watching `users`. A user already
    /// watched here is answered at once with the records held.
    pub fn client_watch(&mut self, ring: &Ring, client: u64, users: &[UserName], watch: bool) {
        for user in users {
            if watch {
                self.add(ring, client, user);
            } else {
                self.remove(client, user);
            }
        }
        self.flush();
    }

    fn add(&mut self, ring: &Ring, client: u64, user: &UserName) {
        let mine = self.clients.entry(client).or_default();
        if mine.contains(user) {
            return;
        }
        if mine.len() >= MAX_CLIENT_WATCHES
            || (!self.users.contains_key(user) && self.users.len() >= MAX_WATCHED)
        {
            self.stats.refused += 1;
            return;
        }
        mine.insert(user.clone());
        let w = self.users.entry(user.clone()).or_default();
        w.clients.insert(client);
        if w.clients.len() == 1 {
            w.at = ring.successors(Key::of_user(user), WATCH_REPLICAS);
            for to in w.at.clone() {
                self.pending
                    .entry((to, true, false))
                    .or_default()
                    .push(user.clone());
            }
        }
        let held: Vec<PresenceRecord> = self.users[user].records.values().cloned().collect();
        for record in held {
            self.stats.delivered += 1;
            self.outputs.push_back(WatchOutput::Deliver {
                client,
                record: Box::new(record),
            });
        }
    }

    fn remove(&mut self, client: u64, user: &UserName) {
        if let Some(mine) = self.clients.get_mut(&client) {
            mine.remove(user);
            if mine.is_empty() {
                self.clients.remove(&client);
            }
        }
        let Some(w) = self.users.get_mut(user) else {
            return;
        };
        w.clients.remove(&client);
        if w.clients.is_empty() {
            let w = self.users.remove(user).expect("present");
            for to in w.at {
                self.pending
                    .entry((to, false, false))
                    .or_default()
                    .push(user.clone());
            }
        }
    }

    /// The client `client` left: its watches end.
    pub fn client_gone(&mut self, client: u64) {
        let users: Vec<UserName> = self
            .clients
            .get(&client)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for user in &users {
            self.remove(client, user);
        }
        self.flush();
    }

    /// Repeat every watch to its replicas (every [`WATCH_REFRESH`]).
    pub fn refresh(&mut self) {
        for (user, w) in &self.users {
            for to in &w.at {
                self.pending
                    .entry((*to, true, true))
                    .or_default()
                    .push(user.clone());
            }
        }
        self.flush();
    }

    /// A record pushed by the replica `from` (this super node itself for its own index).
    /// `verify` checks a record that is new here. False when it was refused; a replica
    /// pushing a user not watched there (any more) is told to stop.
    pub fn on_notify(
        &mut self,
        from: &HostEntry,
        record: PresenceRecord,
        verify: impl FnOnce(&PresenceRecord) -> bool,
    ) -> bool {
        let watched_there = self
            .users
            .get(record.user())
            .is_some_and(|w| w.at.contains(from));
        if !watched_there {
            self.stats.refused += 1;
            if from.static_key != self.me.static_key {
                self.pending
                    .entry((*from, false, false))
                    .or_default()
                    .push(record.user().clone());
                self.flush();
            }
            return false;
        }
        let w = self.users.get_mut(record.user()).expect("watched");
        if w.records
            .get(&record.device())
            .is_some_and(|r| r.sequence >= record.sequence)
        {
            self.stats.duplicates += 1;
            return true;
        }
        if !verify(&record) {
            self.stats.refused += 1;
            return false;
        }
        w.records.insert(record.device(), record.clone());
        for client in &w.clients {
            self.stats.delivered += 1;
            self.outputs.push_back(WatchOutput::Deliver {
                client: *client,
                record: Box::new(record.clone()),
            });
        }
        true
    }

    /// Follow the ring: a user whose first replicas changed is watched at the new ones (which
    /// answer with what they hold) and no longer at those that left the set.
    pub fn ring_changed(&mut self, ring: &Ring) {
        if ring.generation() == self.generation {
            return;
        }
        self.generation = ring.generation();
        for (user, w) in &mut self.users {
            let at = ring.successors(Key::of_user(user), WATCH_REPLICAS);
            if at == w.at {
                continue;
            }
            for old in w.at.iter().filter(|e| !at.contains(e)) {
                // One that left the ring has dropped its watchers already.
                if ring.at(old.addr) == Some(old) {
                    self.pending
                        .entry((*old, false, false))
                        .or_default()
                        .push(user.clone());
                }
            }
            for new in at.iter().filter(|e| !w.at.contains(e)) {
                self.stats.moved += 1;
                self.pending
                    .entry((*new, true, false))
                    .or_default()
                    .push(user.clone());
            }
            w.at = at;
        }
        self.flush();
    }

    /// Turn the batched watches into messages.
    fn flush(&mut self) {
        for ((to, watch, refresh), users) in std::mem::take(&mut self.pending) {
            if to.static_key == self.me.static_key {
                self.outputs.push_back(WatchOutput::Local {
                    watch,
                    refresh,
                    users,
                });
                continue;
            }
            for chunk in users.chunks(MAX_WATCH_USERS) {
                self.outputs.push_back(WatchOutput::Send {
                    to,
                    message: Message::IndexWatch {
                        full: false,
                        watch,
                        refresh,
                        users: chunk.to_vec(),
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::crypto::{Capabilities, RING_SALT_LEN};
    use natter_core::testkit::{TestNetwork, TEST_WALL};
    use std::net::SocketAddr;

    fn entry(i: u8) -> HostEntry {
        HostEntry {
            addr: SocketAddr::from(([198, 18, i, 1], 4000)),
            static_key: [i; 32],
        }
    }

    fn ring(members: &[u8]) -> Ring {
        let mut ring = Ring::new(8);
        for i in members {
            let e = entry(*i);
            ring.insert(Key::of_super_node(&e.static_key, &[0; RING_SALT_LEN]), e);
        }
        ring
    }

    fn record(net: &TestNetwork, user: &str, seq: u64, online: bool) -> PresenceRecord {
        let id = net.identity(user);
        PresenceRecord::sign(
            &id.device,
            id.certificate,
            online,
            vec![],
            None,
            vec![],
            0,
            Capabilities::VOICE,
            seq,
            TEST_WALL,
        )
    }

    fn drain(w: &mut Watches) -> Vec<WatchOutput> {
        std::iter::from_fn(|| w.poll_output()).collect()
    }

    #[test]
    fn one_watch_per_user_at_two_replicas_and_duplicates_dropped() {
        let net = TestNetwork::new(3);
        let ring = ring(&[1, 2, 3, 4, 5]);
        let mut w = Watches::new(entry(9));
        let bob = UserName::parse("bob").unwrap();
        w.client_watch(&ring, 1, std::slice::from_ref(&bob), true);
        let out = drain(&mut w);
        assert_eq!(out.len(), WATCH_REPLICAS, "{out:?}");
        // A second client costs no message.
        w.client_watch(&ring, 2, std::slice::from_ref(&bob), true);
        assert!(drain(&mut w).is_empty());
        let at = w.watched_at(&bob).to_vec();
        let r = record(&net, "bob", 5, true);
        assert!(w.on_notify(&at[0], r.clone(), |_| true));
        assert_eq!(drain(&mut w).len(), 2, "both clients");
        // The other replica's copy, and an older one, go nowhere.
        assert!(w.on_notify(&at[1], r.clone(), |_| panic!("not verified twice")));
        assert!(w.on_notify(&at[1], record(&net, "bob", 4, true), |_| true));
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.stats().duplicates, 2);
        // Not verifying: refused. Not from a watched replica: refused, and that super node
        // is told to stop.
        assert!(!w.on_notify(&at[0], record(&net, "bob", 6, false), |_| false));
        assert!(!w.on_notify(&entry(7), record(&net, "bob", 6, false), |_| true));
        assert!(matches!(
            &drain(&mut w)[..],
            [WatchOutput::Send { to, message: Message::IndexWatch { watch: false, .. } }]
                if *to == entry(7)
        ));
        // A refresh repeats the watch at both replicas.
        w.refresh();
        assert!(drain(&mut w).iter().all(|o| matches!(
            o,
            WatchOutput::Send {
                message: Message::IndexWatch {
                    watch: true,
                    refresh: true,
                    ..
                },
                ..
            }
        )));
        // A client that starts watching later gets what is held at once.
        w.client_watch(&ring, 3, std::slice::from_ref(&bob), true);
        assert!(matches!(
            &drain(&mut w)[..],
            [WatchOutput::Deliver { client: 3, .. }]
        ));
        // The last client leaving ends the watch at both replicas.
        for c in [1, 2, 3] {
            w.client_gone(c);
        }
        let out = drain(&mut w);
        assert_eq!(out.len(), WATCH_REPLICAS);
        assert!(out.iter().all(|o| matches!(
            o,
            WatchOutput::Send {
                message: Message::IndexWatch { watch: false, .. },
                ..
            }
        )));
        assert_eq!(w.watched(), 0);
    }

    #[test]
    fn a_ring_change_moves_only_the_watches_it_touches() {
        let ring1 = ring(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut w = Watches::new(entry(9));
        let users: Vec<UserName> = (0..40)
            .map(|i| UserName::parse(&format!("user{i}")).unwrap())
            .collect();
        w.client_watch(&ring1, 1, &users, true);
        let first = drain(&mut w);
        // Batched: one message per replica, not per user.
        assert!(first.len() <= 8, "{}", first.len());
        let mut ring2 = ring1.clone();
        ring2.remove(entry(3).addr);
        w.ring_changed(&ring2);
        let moved = w.stats().moved as usize;
        let touched = users
            .iter()
            .filter(|u| {
                ring1
                    .successors(Key::of_user(u), WATCH_REPLICAS)
                    .contains(&entry(3))
            })
            .count();
        assert_eq!(moved, touched);
        for out in drain(&mut w) {
            match out {
                WatchOutput::Send {
                    to,
                    message: Message::IndexWatch { watch, .. },
                } => {
                    assert!(watch, "the one that left is not told");
                    assert_ne!(to, entry(3));
                }
                o => panic!("{o:?}"),
            }
        }
        // This node as a replica watches in its own index.
        let mut w = Watches::new(entry(1));
        w.client_watch(&ring(&[1]), 1, &users[..1], true);
        assert!(matches!(
            &drain(&mut w)[..],
            [WatchOutput::Local { watch: true, .. }]
        ));
    }
}
