//! Searching the global index from an ordinary node: the node asks one of its super nodes,
//! which runs the search, and verifies every record it gets back itself.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::PresenceRecord;
use crate::crypto::{DeviceId, TrustedAuthorities, UnixTime, UserName};
use crate::wire::message::{Message, MAX_SEARCH_AT};

/// How a search ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchResult {
    /// The user's records, one per device, each verified.
    Found(Vec<PresenceRecord>),
    /// Definitely not in the index (enough replicas answered, none had a record).
    NotFound,
    /// Could not tell: too few replicas answered.
    Unavailable,
}

/// A finished search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchOutcome {
    /// Who was searched for.
    pub user: UserName,
    /// What was found.
    pub result: SearchResult,
    /// Overlay hops from the super node that ran it (0: its own store or cache).
    pub hops: u8,
    /// Messages it sent.
    pub messages: u32,
    /// How long it took.
    pub elapsed: Duration,
}

/// Keep the record with the highest sequence per device.
pub fn merge_record(merged: &mut BTreeMap<DeviceId, PresenceRecord>, r: PresenceRecord) {
    match merged.get(&r.device()) {
        Some(held) if !r.supersedes(held) => {}
        _ => {
            merged.insert(r.device(), r);
        }
    }
}

/// An ordinary node's side of searching: it asks its super node and collects the answer,
/// verifying every record itself.
///
/// With a memory ([`ClientSearches::with_memory`]) it also keeps the newest verified record of
/// each device of the last users it searched for, and never reports an older one, or "not
/// found", while a newer one it saw is still within the retention period: replicas that lie
/// with an old record or a "not found" cannot roll back what this node already knows.
#[derive(Debug)]
pub struct ClientSearches {
    trusted: TrustedAuthorities,
    retention: Duration,
    timeout: Duration,
    next_query: u32,
    pending: BTreeMap<u32, ClientSearch>,
    /// The newest records seen per user, for at most `memory` users (oldest forgotten first).
    known: BTreeMap<UserName, BTreeMap<DeviceId, PresenceRecord>>,
    known_order: VecDeque<UserName>,
    memory: usize,
}

#[derive(Debug)]
struct ClientSearch {
    user: UserName,
    started: Instant,
    deadline: Instant,
    records: BTreeMap<DeviceId, PresenceRecord>,
    total: Option<u8>,
    received: usize,
}

impl ClientSearches {
    /// Searches verified against `trusted`, given up after `timeout` (default use: 3 s).
    pub fn new(trusted: TrustedAuthorities, retention: Duration, timeout: Duration) -> Self {
        Self {
            trusted,
            retention,
            timeout,
            next_query: 0,
            pending: BTreeMap::new(),
            known: BTreeMap::new(),
            known_order: VecDeque::new(),
            memory: 0,
        }
    }

    /// Remember the newest records of the last `users` users searched for (see the type's
    /// documentation); 0 (the default) remembers nothing.
    pub fn with_memory(mut self, users: usize) -> Self {
        self.memory = users;
        self
    }

    /// Forget what this node knows of these revoked devices.
    pub fn revoke(&mut self, devices: &[DeviceId]) {
        for records in self.known.values_mut() {
            records.retain(|d, _| !devices.contains(d));
        }
    }

    /// What a search found, reconciled with what this node already knows of the user.
    fn reconcile(&mut self, wall: UnixTime, user: &UserName, result: SearchResult) -> SearchResult {
        if self.memory == 0 {
            return result;
        }
        let (trusted, retention) = (&self.trusted, self.retention);
        let mut merged: BTreeMap<DeviceId, PresenceRecord> = self
            .known
            .get(user)
            .map(|k| {
                k.values()
                    .filter(|r| r.verify(trusted, wall, retention, |_| false).is_ok())
                    .map(|r| (r.device(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if let SearchResult::Found(records) = &result {
            for r in records {
                merge_record(&mut merged, r.clone());
            }
        }
        if merged.is_empty() {
            if self.known.remove(user).is_some() {
                self.known_order.retain(|u| u != user);
            }
            return result;
        }
        if !self.known.contains_key(user) {
            if self.known_order.len() >= self.memory {
                if let Some(old) = self.known_order.pop_front() {
                    self.known.remove(&old);
                }
            }
            self.known_order.push_back(user.clone());
        }
        self.known.insert(user.clone(), merged.clone());
        SearchResult::Found(merged.into_values().collect())
    }

    /// Start a search: send the returned message to the super node; the query id identifies
    /// the outcome.
    pub fn start(&mut self, now: Instant, user: UserName) -> (u32, Message<'static>) {
        self.next_query = self.next_query.wrapping_add(1).max(1);
        let query = self.next_query;
        self.pending.insert(
            query,
            ClientSearch {
                user: user.clone(),
                started: now,
                deadline: now + self.timeout,
                records: BTreeMap::new(),
                total: None,
                received: 0,
            },
        );
        (
            query,
            Message::IndexSearch {
                query,
                full: true,
                user,
            },
        )
    }

    /// True when this node remembers records of `user` (with a memory).
    pub fn knows(&self, user: &UserName) -> bool {
        self.known.get(user).is_some_and(|k| !k.is_empty())
    }

    /// [`ClientSearches::start`] for a second try after "not found" or "could not tell": when
    /// this node remembers records of the user (with a memory), the search also asks the super
    /// nodes those name ([`Message::IndexSearchAt`]), which answer for their own clients when
    /// every replica says "not found".
    pub fn start_widened(&mut self, now: Instant, user: UserName) -> (u32, Message<'static>) {
        let mut at: Vec<SocketAddr> = Vec::new();
        for r in self.known.get(&user).into_iter().flat_map(|k| k.values()) {
            for a in &r.super_nodes {
                if !at.contains(a) && at.len() < MAX_SEARCH_AT {
                    at.push(*a);
                }
            }
        }
        let (query, message) = self.start(now, user.clone());
        if at.is_empty() {
            return (query, message);
        }
        (query, Message::IndexSearchAt { query, user, at })
    }

    /// An answer from the super node. Returns the finished search, if this ended one.
    pub fn handle_message(
        &mut self,
        now: Instant,
        wall: UnixTime,
        message: &Message<'_>,
    ) -> Option<(u32, SearchOutcome)> {
        let (query, hops, result) = match message {
            Message::IndexNotFound {
                query,
                hops,
                definite,
            } => {
                let s = self.pending.get(query)?;
                // "None" after some records: keep what verified.
                let result = if !s.records.is_empty() {
                    SearchResult::Found(s.records.values().cloned().collect())
                } else if *definite {
                    SearchResult::NotFound
                } else {
                    SearchResult::Unavailable
                };
                (*query, *hops, result)
            }
            Message::IndexResult {
                query,
                hops,
                total,
                record,
            } => {
                let s = self.pending.get_mut(query)?;
                let valid = record.user() == &s.user
                    && record
                        .verify(&self.trusted, wall, self.retention, |_| false)
                        .is_ok();
                if valid {
                    merge_record(&mut s.records, (**record).clone());
                }
                s.received += 1;
                // A changed or zero total ends the answer: it is broken.
                let broken = *total == 0 || s.total.is_some_and(|t| t != *total);
                s.total = Some(*total);
                if !broken && s.received < usize::from(*total) {
                    return None;
                }
                let result = if s.records.is_empty() {
                    SearchResult::Unavailable
                } else {
                    SearchResult::Found(s.records.values().cloned().collect())
                };
                (*query, *hops, result)
            }
            _ => return None,
        };
        let s = self.pending.remove(&query)?;
        let result = self.reconcile(wall, &s.user, result);
        Some((
            query,
            SearchOutcome {
                user: s.user,
                result,
                hops: hops.saturating_add(1),
                messages: 1,
                elapsed: now.saturating_duration_since(s.started),
            },
        ))
    }

    /// Searches that got no (complete) answer in time end as [`SearchResult::Unavailable`]
    /// (or with what this node already knows, with a memory; `wall` checks its age).
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixTime) -> Vec<(u32, SearchOutcome)> {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        late.into_iter()
            .filter_map(|q| {
                let s = self.pending.remove(&q)?;
                let result = if s.records.is_empty() {
                    SearchResult::Unavailable
                } else {
                    SearchResult::Found(s.records.into_values().collect())
                };
                let result = self.reconcile(wall, &s.user, result);
                Some((
                    q,
                    SearchOutcome {
                        user: s.user,
                        result,
                        hops: 2,
                        messages: 1,
                        elapsed: now.saturating_duration_since(s.started),
                    },
                ))
            })
            .collect()
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|s| s.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Capabilities;
    use crate::overlay::presence::DEFAULT_RETENTION;
    use crate::testkit::{TestNetwork, TEST_WALL};

    fn record(net: &TestNetwork, sequence: u64) -> PresenceRecord {
        let id = net.identity("alice");
        PresenceRecord::sign(
            &id.device,
            id.certificate,
            true,
            vec!["198.18.0.10:4000".parse().unwrap()],
            None,
            vec![],
            3,
            Capabilities::VOICE,
            sequence,
            TEST_WALL,
        )
    }

    /// One search for alice answered with `answer` (a record, or a definite "not found").
    fn search(
        c: &mut ClientSearches,
        now: Instant,
        answer: Option<PresenceRecord>,
    ) -> SearchResult {
        let (query, _) = c.start(now, UserName::parse("alice").unwrap());
        let msg = match answer {
            Some(r) => Message::IndexResult {
                query,
                hops: 1,
                total: 1,
                record: Box::new(r),
            },
            None => Message::IndexNotFound {
                query,
                hops: 1,
                definite: true,
            },
        };
        c.handle_message(now, TEST_WALL, &msg)
            .expect("ended")
            .1
            .result
    }

    #[test]
    fn a_second_try_also_asks_the_super_nodes_of_a_remembered_record() {
        let net = TestNetwork::new(1);
        let mut s = ClientSearches::new(
            net.trusted(),
            Duration::from_secs(3600),
            Duration::from_secs(3),
        )
        .with_memory(8);
        let alice = UserName::parse("alice").unwrap();
        let now = Instant::now();
        // Nothing known: a plain search.
        assert!(!s.knows(&alice));
        assert!(matches!(
            s.start_widened(now, alice.clone()).1,
            Message::IndexSearch { full: true, .. }
        ));
        // Once a record is known, its super nodes are asked too.
        let r = record(&net, 1);
        let (q, _) = s.start(now, alice.clone());
        let answer = Message::IndexResult {
            query: q,
            hops: 1,
            total: 1,
            record: Box::new(r.clone()),
        };
        assert!(s.handle_message(now, TEST_WALL, &answer).is_some());
        assert!(s.knows(&alice));
        match s.start_widened(now, alice.clone()).1 {
            Message::IndexSearchAt { user, at, .. } => {
                assert_eq!(user, alice);
                assert_eq!(at, r.super_nodes);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_newer_record_seen_is_never_rolled_back_by_an_old_one_or_not_found() {
        let net = TestNetwork::new(4);
        let now = Instant::now();
        let (old, new) = (record(&net, 1), record(&net, 2));
        let fresh = |memory| {
            ClientSearches::new(net.trusted(), DEFAULT_RETENTION, Duration::from_secs(3))
                .with_memory(memory)
        };
        let mut c = fresh(16);
        assert_eq!(
            search(&mut c, now, Some(new.clone())),
            SearchResult::Found(vec![new.clone()])
        );
        // Lying replicas: the old record, then "not found".
        assert_eq!(
            search(&mut c, now, Some(old.clone())),
            SearchResult::Found(vec![new.clone()])
        );
        assert_eq!(
            search(&mut c, now, None),
            SearchResult::Found(vec![new.clone()])
        );
        // A revoked device's record is forgotten.
        c.revoke(&[new.device()]);
        assert_eq!(search(&mut c, now, None), SearchResult::NotFound);
        // Without a memory (the simulator's many clients in one), answers pass as they are.
        let mut c = fresh(0);
        search(&mut c, now, Some(new));
        assert_eq!(
            search(&mut c, now, Some(old.clone())),
            SearchResult::Found(vec![old])
        );
        assert_eq!(search(&mut c, now, None), SearchResult::NotFound);
    }
}
