//! Searching the global index from an ordinary node: the node asks one of its super nodes,
//! which runs the search, and verifies every record it gets back itself.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::PresenceRecord;
use crate::crypto::{DeviceId, TrustedAuthorities, UnixTime, UserName};
use crate::wire::message::Message;

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
#[derive(Debug)]
pub struct ClientSearches {
    trusted: TrustedAuthorities,
    retention: Duration,
    timeout: Duration,
    next_query: u32,
    pending: HashMap<u32, ClientSearch>,
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
            pending: HashMap::new(),
        }
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

    /// Searches that got no (complete) answer in time end as [`SearchResult::Unavailable`].
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(u32, SearchOutcome)> {
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
