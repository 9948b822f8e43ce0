//! The distributed global index: where presence records live among the super nodes, and how
//! a search finds them.
//!
//! **Design: a one-hop DHT with full membership** (Gupta, Liskov and Rodrigues, "One Hop
//! Lookups for Peer-to-Peer Overlays", HotOS 2003). Every super node knows every other one
//! (the [`Ring`]), so the super node that runs a search asks the replicas of the user's key
//! directly: one overlay hop, where Kademlia needs `log2(N)/b` sequential rounds. The numbers
//! that chose it (from the `index_scale` benchmark, `benches/`) are in ARCHITECTURE.md and
//! docs/measurements.md.
//!
//! * **Ids cannot be chosen**: a super node's ring position is [`Key::of_super_node`], a hash
//!   of its Noise static key (sessions prove it) and of the ring salt the login authority put
//!   in its certificate: a keyed hash of the key that only the authority can compute. A
//!   certified user cannot grind keys offline to land next to a victim's key; each try costs a
//!   certification, and the login server limits those per account and per address
//!   (ARCHITECTURE.md, threat model). A user's position is [`Key::of_user`], a hash of the
//!   user name.
//! * **Prefix caps**: the ring holds at most [`Ring::max_per_prefix`] super nodes per IPv4 /24
//!   or IPv6 /48, so one party cannot surround a key by running many super nodes side by side.
//! * **Replication**: a record lives on the [`DhtConfig::replicas`] super nodes that follow its
//!   key on the ring. When the ring changes (a super node left or joined), every holder
//!   re-computes the replica set of what it holds, pushes records to the super nodes that newly
//!   belong to it and drops what it is no longer responsible for ([`Dht::handle_timeout`]).
//!   Online users also publish a fresh record periodically.
//! * **Search** ([`Dht::search`]): ask every replica in parallel; when one does not answer in
//!   [`DhtConfig::query_timeout`] or answers with a record that does not verify, widen to the
//!   next super nodes on the ring. The search ends early once [`DhtConfig::quorum`] replicas
//!   gave the same records (never on agreeing empty answers), else when every asked super node
//!   answered or failed, and always by [`DhtConfig::deadline`]. Per device the highest sequence number wins, so a replica
//!   answering with a stale record loses to an honest one. "Not found" is definite only when
//!   [`DhtConfig::not_found_quorum`] replicas answered and none had a record; otherwise the
//!   answer is "unavailable", never a false "not found".
//! * **The user's own super nodes have the last word on freshness**: each super node keeps
//!   the latest record its own clients published through it and answers for them from it
//!   too. A search whose newest record says "online" but is older than
//!   [`DhtConfig::confirm_after`] (an online device refreshes every 30 minutes) asks the
//!   super nodes that record names before it answers, so replicas that all serve an old
//!   record, or leave out the newest, are overruled. A node that remembers a record of the
//!   user and was told "not found" asks again naming those super nodes
//!   ([`Dht::search_also`], [`Message::IndexSearchAt`]): the search widens past replicas
//!   that all say "not found" when the user's own super nodes know better.
//! * **Path cache**: the super node that ran a search keeps what it found for
//!   [`DhtConfig::cache_ttl`] and answers repeated searches from it, unless a cached record
//!   names a super node that has left the ring (its device has re-attached elsewhere).
//!
//! * **Watching** ([`Dht::watch`], [`Message::IndexWatch`]): a super node whose clients
//!   watch a user's presence asks some of the user's replicas to push it every newer record
//!   they store of that user that changes its presence (a new device, or a device going
//!   online or offline; not a refresh: [`Message::IndexNotify`]), and what they hold now. Watchers
//!   are kept per user (bounded) and dropped when they leave the ring; the watching super node
//!   moves its watches itself when the ring changes (`crate::watch`).
//!
//! Every record is verified by the replica that stores it, by the replica that answers with
//! it, by the super node that runs the search and by the node that asked.
//!
//! Like every machine here this one does no I/O: messages to other super nodes and answers to
//! clients come out of [`Dht::poll_output`], and the [`Ring`] is passed in (the node facade
//! keeps it from the membership; a simulator may share one).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use natter_core::crypto::{
    Certificate, DeviceId, TrustedAuthorities, UnixTime, UserName, RING_SALT_LEN,
};
use natter_core::overlay::{merge_record, SearchOutcome, SearchResult};
use natter_core::overlay::{PresenceRecord, DEFAULT_RETENTION};
use natter_core::wire::message::{HostEntry, Message};

use crate::index::IndexStore;

/// A position on the ring: 256 bits, compared as a big-endian number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    fn hash(domain: &[u8], data: &[u8]) -> Self {
        let mut h = Blake2s256::new();
        h.update(domain);
        h.update(data);
        Self(h.finalize().into())
    }

    /// A super node's position in the index ring: a hash of its certified Noise static key
    /// and the ring salt its certificate carries ([`Certificate::ring_salt`], the
    /// authority's choice), so a key cannot be ground offline to land next to a user's key.
    pub fn of_super_node(static_key: &[u8; 32], ring_salt: &[u8; RING_SALT_LEN]) -> Self {
        let mut data = [0u8; 32 + RING_SALT_LEN];
        data[..32].copy_from_slice(static_key);
        data[32..].copy_from_slice(ring_salt);
        Self::hash(b"natter-sn-id-v2", &data)
    }

    /// [`Key::of_super_node`] of the device a certificate certifies.
    pub fn of_certificate(certificate: &Certificate) -> Self {
        Self::of_super_node(&certificate.dh_public, &certificate.ring_salt)
    }

    /// A super node's name in the membership (its digest bucket and the order in which super
    /// nodes watch each other): a hash of its static key alone, known before its certificate
    /// is. Not its place in the index.
    pub fn of_static_key(static_key: &[u8; 32]) -> Self {
        Self::hash(b"natter-sn-id-v1", static_key)
    }

    /// A user's position: a hash of the (canonical) user name.
    pub fn of_user(user: &UserName) -> Self {
        Self::hash(b"natter-user-key-v1", user.as_str().as_bytes())
    }
}

/// The network prefix that caps apply to: a /24 for IPv4, a /48 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Prefix([u8; 6]);

impl Prefix {
    fn of(ip: IpAddr) -> Self {
        let mut p = [0u8; 6];
        match ip {
            IpAddr::V4(v4) => p[..3].copy_from_slice(&v4.octets()[..3]),
            IpAddr::V6(v6) => p.copy_from_slice(&v6.octets()[..6]),
        }
        Self(p)
    }
}

/// Every super node this one knows, ordered by [`Key`].
#[derive(Debug, Clone)]
pub struct Ring {
    members: BTreeMap<Key, HostEntry>,
    by_addr: BTreeMap<SocketAddr, Key>,
    per_prefix: BTreeMap<Prefix, usize>,
    max_per_prefix: usize,
    generation: u64,
    /// The keys that changed, by generation (the last [`CHANGE_LOG`]).
    changes: VecDeque<(u64, Key)>,
}

/// Devices whose last publication a super node remembers (to drop replays cheaply).
const PUBLISHED_MEMORY: usize = 100_000;
/// Searches one client may have running at a super node.
const MAX_CLIENT_SEARCHES: usize = 8;
/// Most super nodes watching one user here.
const MAX_WATCHERS_PER_USER: usize = 4096;
/// Most (user, watching super node) pairs held.
const MAX_WATCHERS: usize = 500_000;
/// Most users one super node may watch here: as many as it may watch at all (on a small
/// ring one replica can hold all of them).
const MAX_WATCHES_PER_WATCHER: usize = crate::watch::MAX_WATCHED;
/// Searches a super node runs at once.
const MAX_SEARCHES: usize = 10_000;
/// Super nodes a search asks to confirm an old-looking record.
const MAX_CONFIRMS: usize = 4;

/// Ring changes remembered for [`Ring::changed_since`].
const CHANGE_LOG: usize = 4096;

impl Ring {
    /// An empty ring allowing `max_per_prefix` super nodes per /24 (IPv4) or /48 (IPv6).
    pub fn new(max_per_prefix: usize) -> Self {
        Self {
            members: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            per_prefix: BTreeMap::new(),
            max_per_prefix,
            generation: 0,
            changes: VecDeque::new(),
        }
    }

    /// The prefix cap.
    pub fn max_per_prefix(&self) -> usize {
        self.max_per_prefix
    }

    /// How many super nodes.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Bumped by every change; holders re-check their replica sets when it moves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when a super node at `addr` is a member.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&addr)
    }

    /// The member at `addr`, if any.
    pub fn at(&self, addr: SocketAddr) -> Option<&HostEntry> {
        self.by_addr.get(&addr).and_then(|k| self.members.get(k))
    }

    /// Every member.
    pub fn entries(&self) -> impl Iterator<Item = &HostEntry> {
        self.members.values()
    }

    /// Add (or update) a super node at ring position `key` ([`Key::of_certificate`] of its
    /// certificate). False when its address prefix is full.
    pub fn insert(&mut self, key: Key, entry: HostEntry) -> bool {
        if self.by_addr.get(&entry.addr) == Some(&key) {
            return true;
        }
        // A new key at a known address replaces the old one.
        self.remove(entry.addr);
        let prefix = Prefix::of(entry.addr.ip());
        let n = self.per_prefix.entry(prefix).or_default();
        if *n >= self.max_per_prefix {
            return false;
        }
        if let Some(old) = self.members.insert(key, entry) {
            // The same key moved to another address.
            self.by_addr.remove(&old.addr);
            if let Some(c) = self.per_prefix.get_mut(&Prefix::of(old.addr.ip())) {
                *c -= 1;
            }
        }
        *self.per_prefix.entry(prefix).or_default() += 1;
        self.by_addr.insert(entry.addr, key);
        self.changed(key);
        true
    }

    /// Remove the super node at `addr`. False when it was not a member.
    pub fn remove(&mut self, addr: SocketAddr) -> bool {
        let Some(key) = self.by_addr.remove(&addr) else {
            return false;
        };
        self.members.remove(&key);
        let prefix = Prefix::of(addr.ip());
        if let Some(c) = self.per_prefix.get_mut(&prefix) {
            *c -= 1;
            if *c == 0 {
                self.per_prefix.remove(&prefix);
            }
        }
        self.changed(key);
        true
    }

    fn changed(&mut self, key: Key) {
        self.generation += 1;
        if self.changes.len() == CHANGE_LOG {
            self.changes.pop_front();
        }
        self.changes.push_back((self.generation, key));
    }

    /// The keys added or removed after `generation`, or `None` when that is too long ago to
    /// tell (then assume anything changed).
    pub fn changed_since(&self, generation: u64) -> Option<Vec<Key>> {
        if generation >= self.generation {
            return Some(Vec::new());
        }
        let oldest = self.changes.front().map_or(u64::MAX, |(g, _)| *g);
        if oldest > generation + 1 {
            return None;
        }
        Some(
            self.changes
                .iter()
                .filter(|(g, _)| *g > generation)
                .map(|(_, k)| *k)
                .collect(),
        )
    }

    /// The `n` members at or after `key`, clockwise (fewer when the ring is smaller).
    pub fn successors(&self, key: Key, n: usize) -> Vec<HostEntry> {
        self.successor_keys(key, n)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// [`Ring::successors`] with their keys.
    pub fn successor_keys(&self, key: Key, n: usize) -> Vec<(Key, HostEntry)> {
        self.members
            .range(key..)
            .chain(self.members.range(..key))
            .take(n)
            .map(|(k, e)| (*k, *e))
            .collect()
    }
}

/// Settings of the index.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Super nodes holding each record (default 7: a record survives the sudden loss of 30 %
    /// of the super nodes with probability 1 - 0.3^7 = 99.98 %).
    pub replicas: usize,
    /// Agreeing answers with records that end a search early (default 4).
    pub quorum: usize,
    /// Empty answers needed for a definite "not found" (default 3).
    pub not_found_quorum: usize,
    /// Super nodes past the replica set a search may widen to (default 4).
    pub widen: usize,
    /// How long a super node has to answer before the search widens (default 500 ms).
    pub query_timeout: Duration,
    /// A search ends by then, whatever happened (default 2 s).
    pub deadline: Duration,
    /// Found records stay cached where the search ran for this long (default 30 s).
    pub cache_ttl: Duration,
    /// Most cached users (default 10,000).
    pub cache_capacity: usize,
    /// After the ring changed, re-check replica sets this often (default 10 s).
    pub repair_interval: Duration,
    /// Records are findable this long after they were signed (default 72 hours).
    pub retention: Duration,
    /// Most records stored (default 1,000,000).
    pub capacity: usize,
    /// A search whose newest record says "online" but is older than this (default 33
    /// minutes: a little over the 30-minute refresh of online devices) asks the super nodes
    /// that record names, before it ends, whether the device published a newer one through
    /// them. Replicas that all serve an old record (or leave out a newer one) are overruled by
    /// the user's own super nodes.
    pub confirm_after: Duration,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            replicas: 7,
            quorum: 4,
            not_found_quorum: 3,
            widen: 4,
            query_timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            repair_interval: Duration::from_secs(10),
            retention: DEFAULT_RETENTION,
            capacity: 1_000_000,
            confirm_after: Duration::from_secs(33 * 60),
        }
    }
}

/// Who asked for a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A client of this super node: the facade's handle for its session, and its query id.
    Client {
        /// The facade's handle (a session id).
        client: u64,
        /// The client's query id, echoed in the answer.
        query: u32,
    },
    /// This node itself; the id comes back in [`DhtOutput::Done`].
    Local(u64),
}

/// What the index wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtOutput {
    /// Send `message` to the super node `to` (open a session if needed).
    Send {
        /// The super node.
        to: HostEntry,
        /// The message.
        message: Message<'static>,
    },
    /// Send `message` to the client behind the facade's handle `client`.
    Reply {
        /// The facade's handle.
        client: u64,
        /// The message.
        message: Message<'static>,
    },
    /// A user this node watches itself (as one of the user's replicas) has a newer record.
    Changed {
        /// The record (verified when stored).
        record: Box<PresenceRecord>,
    },
    /// A search this node asked for ended.
    Done {
        /// The id given to [`Dht::search`].
        id: u64,
        /// The outcome.
        outcome: SearchOutcome,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Records stored (new or fresher).
    pub stored: u64,
    /// Records refused (invalid, stale or not ours to hold).
    pub refused: u64,
    /// Answers from other super nodes with a record that did not verify.
    pub forged_answers: u64,
    /// Queries that timed out.
    pub timeouts: u64,
    /// Searches answered from the path cache.
    pub cache_hits: u64,
    /// Records pushed to new replicas after the ring changed.
    pub repaired: u64,
    /// Messages that matched nothing (late answers, unknown queries).
    pub unmatched: u64,
    /// Searches that asked the super nodes an old-looking record names
    /// ([`DhtConfig::confirm_after`]).
    pub confirms: u64,
    /// Records pushed to watching super nodes.
    pub notified: u64,
    /// Watches refused (from outside the ring, or past the bounds).
    pub watches_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskState {
    Pending,
    Answered,
    Failed,
}

#[derive(Debug)]
struct Ask {
    to: HostEntry,
    search: u64,
    replica: bool,
    deadline: Instant,
    total: Option<u8>,
    received: usize,
    records: Vec<PresenceRecord>,
    bad: bool,
    state: AskState,
}

#[derive(Debug)]
struct Search {
    origin: Origin,
    user: UserName,
    started: Instant,
    deadline: Instant,
    candidates: Vec<HostEntry>,
    /// How many of the candidates are replicas (the rest are for widening).
    replicas: usize,
    next: usize,
    asks: Vec<u32>,
    /// Answers as (from a replica, (device, sequence) set), in arrival order.
    answers: Vec<(bool, Vec<(DeviceId, u64)>)>,
    merged: BTreeMap<DeviceId, PresenceRecord>,
    /// Records already verified in this search (answers from several replicas repeat them).
    verified: Vec<PresenceRecord>,
    messages: u32,
    hops: u8,
    /// The super nodes its old-looking records name were looked for (see [`Dht::confirm`]).
    confirmed: bool,
    /// Some of them were asked: their answers are waited for.
    confirming: bool,
    /// A newer record of the user arrived here while this search ran: its outcome is not
    /// cached (it may be older than what was stored meanwhile).
    stale: bool,
}

#[derive(Debug)]
struct Placement {
    key: Key,
    set: Vec<Key>,
}

impl Placement {
    /// True when a change at `k` can alter this set: `k` lies on the arc from the user's key
    /// to the last member of the set (a new member there joins the set, a removed one was in
    /// it). A set shorter than wanted (a small ring) is affected by anything.
    fn affected_by(&self, k: &Key, replicas: usize) -> bool {
        let Some(end) = self.set.last() else {
            return true;
        };
        if self.set.len() < replicas {
            return true;
        }
        if self.key <= *end {
            self.key <= *k && *k <= *end
        } else {
            *k >= self.key || *k <= *end
        }
    }
}

/// A super node's part of the distributed index. See the [module documentation](self).
#[derive(Debug)]
pub struct Dht {
    cfg: DhtConfig,
    me: HostEntry,
    my_key: Key,
    trusted: TrustedAuthorities,
    store: IndexStore,
    revoked: BTreeSet<DeviceId>,
    searches: BTreeMap<u64, Search>,
    /// Searches running per client (bounded by [`MAX_CLIENT_SEARCHES`]).
    per_client: BTreeMap<u64, usize>,
    asks: BTreeMap<u32, Ask>,
    next_search: u64,
    next_query: u32,
    cache: BTreeMap<UserName, (Vec<PresenceRecord>, Instant)>,
    /// Per user held: its key and the replica set computed when stored or last repaired.
    placed: BTreeMap<UserName, Placement>,
    repaired_generation: u64,
    /// The last sequence published through this super node, per device (bounded).
    published: BTreeMap<DeviceId, u64>,
    /// The last record each device attached here published through this super node, per user
    /// (bounded with `published`): what it answers for its own clients, whatever the
    /// replicas say.
    attached: BTreeMap<UserName, Vec<PresenceRecord>>,
    next_repair: Option<Instant>,
    next_expiry: Option<Instant>,
    /// Per user: the super nodes watching its records here (this one included when it
    /// watches its own replica).
    watchers: BTreeMap<UserName, BTreeSet<HostEntry>>,
    /// Pairs in `watchers`.
    watcher_count: usize,
    /// Pairs in `watchers` per watching super node.
    per_watcher: BTreeMap<HostEntry, usize>,
    outputs: VecDeque<DhtOutput>,
    /// Searches waiting to ask the super nodes their newest record names (with when they
    /// started waiting: the next [`Dht::handle_timeout`] asks them).
    to_confirm: Vec<u64>,
    confirm_at: Option<Instant>,
    stats: DhtStats,
}

impl Dht {
    /// The index part of the super node `me` at ring position `my_key`
    /// ([`Key::of_certificate`] of its certificate), checking records against `trusted`.
    pub fn new(cfg: DhtConfig, me: HostEntry, my_key: Key, trusted: TrustedAuthorities) -> Self {
        let store = IndexStore::new(trusted.clone(), cfg.retention, cfg.capacity);
        Self {
            my_key,
            me,
            trusted,
            store,
            revoked: BTreeSet::new(),
            searches: BTreeMap::new(),
            per_client: BTreeMap::new(),
            asks: BTreeMap::new(),
            next_search: 1,
            next_query: 1,
            cache: BTreeMap::new(),
            placed: BTreeMap::new(),
            repaired_generation: 0,
            published: BTreeMap::new(),
            attached: BTreeMap::new(),
            next_repair: None,
            next_expiry: None,
            watchers: BTreeMap::new(),
            watcher_count: 0,
            per_watcher: BTreeMap::new(),
            outputs: VecDeque::new(),
            to_confirm: Vec::new(),
            confirm_at: None,
            stats: DhtStats::default(),
            cfg,
        }
    }

    /// This super node's ring position changed (its certificate was renewed under a new
    /// authority key, which salts positions anew): repair re-checks what it holds.
    pub fn set_key(&mut self, now: Instant, key: Key) {
        if key != self.my_key {
            self.my_key = key;
            self.repaired_generation = 0;
            self.ring_changed(now);
        }
    }

    /// The settings.
    pub fn config(&self) -> &DhtConfig {
        &self.cfg
    }

    /// This super node's ring position.
    pub fn key(&self) -> Key {
        self.my_key
    }

    /// The records held here.
    pub fn store(&self) -> &IndexStore {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> DhtStats {
        self.stats
    }

    /// Searches in progress.
    pub fn searches_in_progress(&self) -> usize {
        self.searches.len()
    }

    /// Devices whose records are refused from now on.
    pub fn revoke(&mut self, devices: impl IntoIterator<Item = DeviceId>) {
        self.revoked.extend(devices);
        let revoked = &self.revoked;
        self.cache
            .retain(|_, (records, _)| records.iter().all(|r| !revoked.contains(&r.device())));
    }

    /// The ring changed (a super node joined or left): re-check replica sets at the next
    /// repair round.
    pub fn ring_changed(&mut self, now: Instant) {
        if self.next_repair.is_none() {
            self.next_repair = Some(now + self.cfg.repair_interval);
        }
    }

    /// Hand on the next output.
    pub fn poll_output(&mut self) -> Option<DhtOutput> {
        self.outputs.pop_front()
    }

    /// The next instant [`Dht::handle_timeout`] has work at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.asks
            .values()
            .filter(|a| a.state == AskState::Pending)
            .map(|a| a.deadline)
            .chain(self.searches.values().map(|s| s.deadline))
            .chain(self.next_repair)
            .chain(self.next_expiry)
            .chain(self.confirm_at)
            .min()
    }

    fn replica_set(&self, ring: &Ring, user: &UserName, n: usize) -> Vec<HostEntry> {
        ring.successors(Key::of_user(user), n)
    }

    fn store_local(&mut self, ring: &Ring, record: PresenceRecord, wall: UnixTime) -> bool {
        let user = record.user().clone();
        let revoked = &self.revoked;
        // Watchers hear of a change of presence (a device new here, or one whose online
        // flag changed), not of a refresh that says the same: their traffic follows changes.
        let watched = (self.watchers.contains_key(&user)
            && self.store.online(&user, record.device()) != Some(record.online))
        .then(|| record.clone());
        match self.store.store(record, wall, |d| revoked.contains(&d)) {
            Ok(()) => {
                self.stats.stored += 1;
                if let Some(record) = watched {
                    let watchers: Vec<HostEntry> = self.watchers[&user].iter().copied().collect();
                    for to in watchers {
                        self.notify(to, record.clone());
                    }
                }
                self.forget_cached(&user);
                // The set it was placed on, for the next repair to compare with.
                if !self.placed.contains_key(&user) {
                    let key = Key::of_user(&user);
                    let set = ring
                        .successor_keys(key, self.cfg.replicas)
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    self.placed.insert(user, Placement { key, set });
                }
                true
            }
            Err(_) => {
                self.stats.refused += 1;
                false
            }
        }
    }

    /// Push `record` to the watching super node `to` (this one: [`DhtOutput::Changed`]).
    fn notify(&mut self, to: HostEntry, record: PresenceRecord) {
        self.stats.notified += 1;
        let record = Box::new(record);
        self.outputs
            .push_back(if to.static_key == self.me.static_key {
                DhtOutput::Changed { record }
            } else {
                DhtOutput::Send {
                    to,
                    message: Message::IndexNotify { record },
                }
            });
    }

    /// The super node `from` (this one, for its own clients) starts or stops watching
    /// `users` here. A watch is answered with the records held now, unless it is a `refresh`
    /// of one held already.
    pub fn watch(
        &mut self,
        wall: UnixTime,
        from: HostEntry,
        users: &[UserName],
        watch: bool,
        refresh: bool,
    ) {
        for user in users {
            if !watch {
                if let Some(set) = self.watchers.get_mut(user) {
                    if set.remove(&from) {
                        self.watcher_count -= 1;
                        Self::uncount(&mut self.per_watcher, &from, 1);
                    }
                    if set.is_empty() {
                        self.watchers.remove(user);
                    }
                }
                continue;
            }
            let set = self.watchers.entry(user.clone()).or_default();
            let held = set.contains(&from);
            if !held {
                let mine = self.per_watcher.get(&from).copied().unwrap_or(0);
                if set.len() >= MAX_WATCHERS_PER_USER
                    || self.watcher_count >= MAX_WATCHERS
                    || mine >= MAX_WATCHES_PER_WATCHER
                {
                    if set.is_empty() {
                        self.watchers.remove(user);
                    }
                    self.stats.watches_refused += 1;
                    continue;
                }
                set.insert(from);
                self.watcher_count += 1;
                *self.per_watcher.entry(from).or_default() += 1;
            }
            if !(held && refresh) {
                for r in self.local_answer(user, wall) {
                    self.notify(from, r);
                }
            }
        }
    }

    fn uncount(per_watcher: &mut BTreeMap<HostEntry, usize>, who: &HostEntry, n: usize) {
        if let Some(c) = per_watcher.get_mut(who) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                per_watcher.remove(who);
            }
        }
    }

    /// Super nodes watching `user` here.
    pub fn watchers(&self, user: &UserName) -> usize {
        self.watchers.get(user).map_or(0, BTreeSet::len)
    }

    /// True when `record` verifies here (certificate, signature, not revoked, not expired).
    pub fn verify_record(&self, record: &PresenceRecord, wall: UnixTime) -> bool {
        self.verify(record, wall)
    }

    fn verify(&self, record: &PresenceRecord, wall: UnixTime) -> bool {
        record
            .verify(&self.trusted, wall, self.cfg.retention, |d| {
                self.revoked.contains(&d)
            })
            .is_ok()
    }

    /// What this super node answers for `user` from what it holds: its store, and the
    /// records its own clients published through it (the newest per device).
    fn local_answer(&mut self, user: &UserName, wall: UnixTime) -> Vec<PresenceRecord> {
        let revoked = &self.revoked;
        let mut records = self.store.lookup(user, wall, |d| revoked.contains(&d));
        if let Some(mine) = self.attached.get(user) {
            let mut merged: BTreeMap<DeviceId, PresenceRecord> =
                records.drain(..).map(|r| (r.device(), r)).collect();
            for r in mine.iter().filter(|r| self.verify(r, wall)) {
                merge_record(&mut merged, r.clone());
            }
            records = merged.into_values().collect();
        }
        records
    }

    /// A client of this super node publishes its record: verify it and spread it to the
    /// replicas (storing it here when this node is one). False when it does not verify.
    pub fn publish(
        &mut self,
        now: Instant,
        wall: UnixTime,
        ring: &Ring,
        record: PresenceRecord,
    ) -> bool {
        // A replayed (or stale) publication costs no signature check and goes nowhere.
        if self
            .published
            .get(&record.device())
            .is_some_and(|seq| *seq >= record.sequence)
        {
            self.stats.refused += 1;
            return false;
        }
        if !self.verify(&record, wall) {
            self.stats.refused += 1;
            return false;
        }
        if self.published.len() >= PUBLISHED_MEMORY {
            self.published.clear();
            self.attached.clear();
        }
        self.published.insert(record.device(), record.sequence);
        // Answered for as this node's own client only while it says it is attached here.
        let mine = self.attached.entry(record.user().clone()).or_default();
        mine.retain(|r| r.device() != record.device());
        if record.super_nodes.contains(&self.me.addr) {
            mine.push(record.clone());
        }
        if mine.is_empty() {
            self.attached.remove(record.user());
        }
        self.arm_expiry(now);
        let user = record.user().clone();
        self.forget_cached(&user);
        for to in self.replica_set(ring, &user, self.cfg.replicas) {
            if to.static_key == self.me.static_key {
                self.store_local(ring, record.clone(), wall);
            } else {
                self.outputs.push_back(DhtOutput::Send {
                    to,
                    message: Message::IndexStore {
                        replicate: false,
                        record: Box::new(record.clone()),
                    },
                });
            }
        }
        true
    }

    /// A newer record of `user` arrived here (stored, published, or pushed to a watch of
    /// ours): the path cache forgets the user, and searches for them in progress will not
    /// cache what they find (their answers may predate it).
    pub fn forget_cached(&mut self, user: &UserName) {
        self.cache.remove(user);
        for search in self.searches.values_mut().filter(|s| &s.user == user) {
            search.stale = true;
        }
    }

    fn arm_expiry(&mut self, now: Instant) {
        if self.next_expiry.is_none() {
            self.next_expiry = Some(now + Duration::from_secs(60));
        }
    }

    /// Start a search for `user`, asked by `origin`. Returns the search's id (the same as
    /// `Origin::Local`'s when given one).
    pub fn search(
        &mut self,
        now: Instant,
        wall: UnixTime,
        ring: &Ring,
        origin: Origin,
        user: UserName,
    ) -> u64 {
        self.search_also(now, wall, ring, origin, user, Vec::new())
    }

    /// [`Dht::search`], also asking `extra` super nodes from the start (the user's own, from a
    /// record the asker knows: [`Message::IndexSearchAt`]) and waiting for their answers: the
    /// search widens past replicas that all say "not found" when the user's super nodes know
    /// better. The path cache is not used.
    pub fn search_also(
        &mut self,
        now: Instant,
        wall: UnixTime,
        ring: &Ring,
        origin: Origin,
        user: UserName,
        extra: Vec<HostEntry>,
    ) -> u64 {
        let id = match origin {
            Origin::Local(id) => id,
            Origin::Client { .. } => {
                self.next_search += 1;
                self.next_search | 1 << 63
            }
        };
        // Bounded work per client and in all: over the limit, "could not tell" at once.
        if let Origin::Client { client, query } = origin {
            let running = self.per_client.get(&client).copied().unwrap_or(0);
            if running >= MAX_CLIENT_SEARCHES || self.searches.len() >= MAX_SEARCHES {
                self.stats.refused += 1;
                self.outputs.push_back(DhtOutput::Reply {
                    client,
                    message: Message::IndexNotFound {
                        query,
                        hops: 0,
                        definite: false,
                    },
                });
                return id;
            }
        }
        let mut search = Search {
            origin,
            user: user.clone(),
            started: now,
            deadline: now + self.cfg.deadline,
            candidates: Vec::new(),
            replicas: 0,
            next: 0,
            asks: Vec::new(),
            answers: Vec::new(),
            merged: BTreeMap::new(),
            verified: Vec::new(),
            messages: 0,
            hops: 0,
            confirmed: false,
            confirming: false,
            stale: false,
        };
        // The path cache, unless a record in it names a super node that has left the ring:
        // its device has moved to another one since (and published again), so the replicas
        // know better.
        if let Some((records, expires)) = self.cache.get(&user).filter(|_| extra.is_empty()) {
            let current = records
                .iter()
                .all(|r| r.super_nodes.iter().all(|sn| ring.contains(*sn)));
            if *expires > now && current {
                let records: Vec<_> = records
                    .iter()
                    .filter(|r| self.verify(r, wall))
                    .cloned()
                    .collect();
                if !records.is_empty() {
                    self.stats.cache_hits += 1;
                    search.merged = records.into_iter().map(|r| (r.device(), r)).collect();
                    self.finish(now, id, search, true);
                    return id;
                }
            }
        }
        search.candidates = self.replica_set(ring, &user, self.cfg.replicas + self.cfg.widen);
        let first = self.cfg.replicas.min(search.candidates.len());
        search.replicas = first;
        if let Origin::Client { client, .. } = origin {
            *self.per_client.entry(client).or_default() += 1;
        }
        self.searches.insert(id, search);
        for _ in 0..first {
            self.ask_next(now, wall, id);
        }
        // The user's own super nodes, asked at once.
        self.ask_also(now, wall, id, extra);
        self.check_done(now, wall, id);
        id
    }

    /// Ask `targets` too, at once (a user's own super nodes): those not asked yet, at most
    /// [`MAX_CONFIRMS`], ahead of any widening candidate left. The search then waits for
    /// their answers rather than ending early.
    fn ask_also(&mut self, now: Instant, wall: UnixTime, id: u64, targets: Vec<HostEntry>) {
        let Some(search) = self.searches.get_mut(&id) else {
            return;
        };
        let mut new: Vec<HostEntry> = Vec::new();
        for e in targets {
            if !search.candidates[..search.next].contains(&e)
                && !new.contains(&e)
                && new.len() < MAX_CONFIRMS
            {
                new.push(e);
            }
        }
        if new.is_empty() {
            return;
        }
        search.confirmed = true;
        search.confirming = true;
        // Not asked yet, so all after `next`: dropping them later in the list keeps `next`.
        search.candidates.retain(|c| !new.contains(c));
        let (at, n) = (search.next, new.len());
        search.candidates.splice(at..at, new);
        for _ in 0..n {
            self.ask_next(now, wall, id);
        }
    }

    /// Ask the search's next candidate; false when none is left.
    fn ask_next(&mut self, now: Instant, wall: UnixTime, id: u64) -> bool {
        let Some(search) = self.searches.get_mut(&id) else {
            return false;
        };
        let Some(to) = search.candidates.get(search.next).copied() else {
            return false;
        };
        search.next += 1;
        if to.static_key == self.me.static_key {
            // This node is a replica: answer from its own store, no hop.
            let user = search.user.clone();
            let records = self.local_answer(&user, wall);
            let search = self.searches.get_mut(&id).expect("present");
            let replica = search.next <= search.replicas;
            search.answers.push((replica, summary_of(&records)));
            for r in records {
                search.verified.push(r.clone());
                merge_record(&mut search.merged, r);
            }
            return true;
        }
        self.next_query = self.next_query.wrapping_add(1).max(1);
        let query = self.next_query;
        search.asks.push(query);
        let replica = search.next <= search.replicas;
        search.messages += 1;
        let user = search.user.clone();
        self.asks.insert(
            query,
            Ask {
                to,
                search: id,
                replica,
                deadline: now + self.cfg.query_timeout,
                total: None,
                received: 0,
                records: Vec::new(),
                bad: false,
                state: AskState::Pending,
            },
        );
        self.outputs.push_back(DhtOutput::Send {
            to,
            message: Message::IndexSearch {
                query,
                full: false,
                user,
            },
        });
        true
    }

    /// An ask ended (answered or failed): widen on failure, then see whether the search is
    /// done.
    fn ask_ended(&mut self, now: Instant, wall: UnixTime, query: u32) {
        let Some(ask) = self.asks.get(&query) else {
            return;
        };
        let search_id = ask.search;
        if ask.state == AskState::Failed {
            self.ask_next(now, wall, search_id);
        } else if let Some(search) = self.searches.get_mut(&search_id) {
            let ask = &self.asks[&query];
            search.answers.push((ask.replica, summary_of(&ask.records)));
            search.hops = search.hops.max(1);
            for r in ask.records.clone() {
                merge_record(&mut search.merged, r);
            }
        }
        self.check_done(now, wall, search_id);
    }

    fn check_done(&mut self, now: Instant, wall: UnixTime, id: u64) {
        let Some(search) = self.searches.get(&id) else {
            return;
        };
        let pending = search
            .asks
            .iter()
            .filter(|q| {
                self.asks
                    .get(q)
                    .is_some_and(|a| a.state == AskState::Pending)
            })
            .count();
        let summary: Vec<(DeviceId, u64)> = search
            .merged
            .values()
            .map(|r| (r.device(), r.sequence))
            .collect();
        let agreeing = search.answers.iter().filter(|(_, a)| *a == summary).count();
        let consistent = agreeing == search.answers.len();
        let quorum = self.cfg.quorum.min(search.replicas).max(1);
        // Agreement ends a search early only when it found something: empty answers from a
        // few fast replicas (new ones not yet handed the record, or liars) must not outrun the
        // replicas that hold it.
        // Once the record's own super nodes are asked, their answers are waited for.
        let early = consistent && agreeing >= quorum && !summary.is_empty() && !search.confirming;
        let done = early || pending == 0 || now >= search.deadline;
        if now < search.deadline && self.to_confirm.contains(&id) {
            // Asks the record's super nodes at the next timer.
            return;
        }
        if done && !search.confirmed && now < search.deadline && self.looks_old(search, wall) {
            // Its newest record should have been refreshed by now: before answering, ask the
            // super nodes it names (the device's own) whether a newer one came through them.
            let search = self.searches.get_mut(&id).expect("present");
            search.confirmed = true;
            self.stats.confirms += 1;
            self.to_confirm.push(id);
            self.confirm_at = Some(self.confirm_at.map_or(now, |t| t.min(now)));
            return;
        }
        if done {
            let search = self.searches.remove(&id).expect("present");
            if let Origin::Client { client, .. } = search.origin {
                if let Some(n) = self.per_client.get_mut(&client) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_client.remove(&client);
                    }
                }
            }
            for q in &search.asks {
                self.asks.remove(q);
            }
            self.finish(now, id, search, false);
        }
    }

    /// True when a record a search found says "online" yet is older than
    /// [`DhtConfig::confirm_after`] (any device's: liars may pair an old record of one device
    /// with a fresh one of another).
    fn looks_old(&self, search: &Search, wall: UnixTime) -> bool {
        let after = self.cfg.confirm_after;
        search
            .merged
            .values()
            .any(|r| record_looks_old(r, wall, after))
    }

    /// Ask the super nodes named by the records of searches that found old-looking records
    /// (those in the ring and not asked yet), at once.
    fn confirm(&mut self, now: Instant, wall: UnixTime, ring: &Ring) {
        self.confirm_at = None;
        for id in std::mem::take(&mut self.to_confirm) {
            let Some(search) = self.searches.get(&id) else {
                continue;
            };
            let after = self.cfg.confirm_after;
            let targets: Vec<HostEntry> = search
                .merged
                .values()
                .filter(|r| record_looks_old(r, wall, after))
                .flat_map(|r| r.super_nodes.iter().filter_map(|a| ring.at(*a)).copied())
                .collect();
            self.ask_also(now, wall, id, targets);
            self.check_done(now, wall, id);
        }
    }

    fn finish(&mut self, now: Instant, id: u64, search: Search, cached: bool) {
        let records: Vec<PresenceRecord> = search.merged.into_values().collect();
        // Only replicas' empty answers count: a super node past the replica set may just not
        // have been handed the record.
        let empty_answers = search
            .answers
            .iter()
            .filter(|(replica, a)| *replica && a.is_empty())
            .count();
        let result = if !records.is_empty() {
            if !cached && !search.stale {
                if self.cache.len() >= self.cfg.cache_capacity {
                    self.cache.retain(|_, (_, expires)| *expires > now);
                    if self.cache.len() >= self.cfg.cache_capacity {
                        self.cache.clear();
                    }
                }
                self.cache.insert(
                    search.user.clone(),
                    (records.clone(), now + self.cfg.cache_ttl),
                );
            }
            SearchResult::Found(records)
        } else if empty_answers > 0
            && empty_answers >= self.cfg.not_found_quorum.min(search.replicas)
        {
            SearchResult::NotFound
        } else {
            SearchResult::Unavailable
        };
        match search.origin {
            Origin::Local(id) => self.outputs.push_back(DhtOutput::Done {
                id,
                outcome: SearchOutcome {
                    user: search.user,
                    result,
                    hops: search.hops,
                    messages: search.messages,
                    elapsed: now.saturating_duration_since(search.started),
                },
            }),
            Origin::Client { client, query } => {
                let hops = search.hops;
                match result {
                    SearchResult::Found(records) => {
                        let total = records.len().min(usize::from(u8::MAX)) as u8;
                        for r in records.into_iter().take(usize::from(total)) {
                            self.outputs.push_back(DhtOutput::Reply {
                                client,
                                message: Message::IndexResult {
                                    query,
                                    hops,
                                    total,
                                    record: Box::new(r),
                                },
                            });
                        }
                    }
                    other => self.outputs.push_back(DhtOutput::Reply {
                        client,
                        message: Message::IndexNotFound {
                            query,
                            hops,
                            definite: other == SearchResult::NotFound,
                        },
                    }),
                }
            }
        }
        let _ = id;
    }

    /// The session to super node `to` failed: its pending queries fail now rather than at
    /// their timeout.
    pub fn unreachable(&mut self, now: Instant, wall: UnixTime, to: SocketAddr) {
        let failed: Vec<u32> = self
            .asks
            .iter()
            .filter(|(_, a)| a.to.addr == to && a.state == AskState::Pending)
            .map(|(q, _)| *q)
            .collect();
        for q in failed {
            if let Some(a) = self.asks.get_mut(&q) {
                a.state = AskState::Failed;
            }
            self.ask_ended(now, wall, q);
        }
    }

    /// A message from the super node `from` (whose certified static key the session proved).
    /// Returns false when it is not an index message or was refused.
    pub fn handle_message(
        &mut self,
        now: Instant,
        wall: UnixTime,
        ring: &Ring,
        from: HostEntry,
        message: &Message<'_>,
    ) -> bool {
        match message {
            Message::IndexStore {
                replicate: false,
                record,
            } => {
                // Only super nodes in the ring hand records on, and only what is ours to hold
                // (as far as this node's ring tells).
                if !ring.contains(from.addr) {
                    self.stats.refused += 1;
                    return false;
                }
                let set = self.replica_set(ring, record.user(), self.cfg.replicas + self.cfg.widen);
                if !set.iter().any(|e| e.static_key == self.me.static_key) {
                    self.stats.refused += 1;
                    return false;
                }
                self.arm_expiry(now);
                self.store_local(ring, (**record).clone(), wall)
            }
            Message::IndexSearch {
                query,
                full: false,
                user,
            } => {
                let records = self.local_answer(user, wall);
                if records.is_empty() {
                    self.outputs.push_back(DhtOutput::Send {
                        to: from,
                        message: Message::IndexNotFound {
                            query: *query,
                            hops: 0,
                            definite: true,
                        },
                    });
                }
                let total = records.len().min(usize::from(u8::MAX)) as u8;
                for r in records.into_iter().take(usize::from(total)) {
                    self.outputs.push_back(DhtOutput::Send {
                        to: from,
                        message: Message::IndexResult {
                            query: *query,
                            hops: 0,
                            total,
                            record: Box::new(r),
                        },
                    });
                }
                true
            }
            Message::IndexWatch {
                full: false,
                watch,
                refresh,
                users,
            } => {
                // Only super nodes in the ring watch (a client watches through its own).
                if ring.at(from.addr) != Some(&from) {
                    self.stats.watches_refused += 1;
                    return false;
                }
                self.watch(wall, from, users, *watch, *refresh);
                true
            }
            Message::IndexResult {
                query,
                total,
                record,
                ..
            } => self.on_answer(now, wall, from, *query, Some((*total, record)), true),
            Message::IndexNotFound {
                query, definite, ..
            } => self.on_answer(now, wall, from, *query, None, *definite),
            _ => false,
        }
    }

    fn on_answer(
        &mut self,
        now: Instant,
        wall: UnixTime,
        from: HostEntry,
        query: u32,
        part: Option<(u8, &PresenceRecord)>,
        definite: bool,
    ) -> bool {
        let Some(ask) = self.asks.get(&query) else {
            self.stats.unmatched += 1;
            return false;
        };
        // Only the asked super node answers this query.
        if ask.to.static_key != from.static_key || ask.state != AskState::Pending {
            self.stats.unmatched += 1;
            return false;
        }
        let search_id = ask.search;
        let Some(search) = self.searches.get(&search_id) else {
            self.stats.unmatched += 1;
            return false;
        };
        let complete = match part {
            None => {
                // "Could not tell" is no answer, and "none" after records is a broken one:
                // either way the search widens instead of counting it.
                let ask = self.asks.get_mut(&query).expect("present");
                if !definite || ask.received > 0 {
                    ask.state = AskState::Failed;
                    self.ask_ended(now, wall, query);
                    return true;
                }
                true
            }
            Some((total, record)) => {
                let valid = record.user() == &search.user
                    && (search.verified.contains(record) || self.verify(record, wall));
                let ask = self.asks.get_mut(&query).expect("present");
                if total == 0 || ask.total.is_some_and(|t| t != total) {
                    ask.bad = true;
                }
                ask.total = Some(total);
                ask.received += 1;
                if valid {
                    ask.records.push(record.clone());
                    if let Some(s) = self.searches.get_mut(&search_id) {
                        if !s.verified.contains(record) {
                            s.verified.push(record.clone());
                        }
                    }
                } else {
                    ask.bad = true;
                }
                ask.bad || ask.received >= usize::from(total)
            }
        };
        if complete {
            let ask = self.asks.get_mut(&query).expect("present");
            if ask.bad {
                // What did verify is genuine (if perhaps stale) and kept; the answer counts
                // as failed, so the search widens.
                self.stats.forged_answers += 1;
                let records = std::mem::take(&mut ask.records);
                ask.state = AskState::Failed;
                if let Some(s) = self.searches.get_mut(&search_id) {
                    for r in records {
                        merge_record(&mut s.merged, r);
                    }
                }
            } else {
                ask.state = AskState::Answered;
            }
            self.ask_ended(now, wall, query);
        }
        true
    }

    /// Timers: query timeouts, search deadlines, repair after ring changes, expiry.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixTime, ring: &Ring) {
        if self.confirm_at.is_some_and(|t| t <= now) {
            self.confirm(now, wall, ring);
        }
        let timed_out: Vec<u32> = self
            .asks
            .iter()
            .filter(|(_, a)| a.state == AskState::Pending && a.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for q in timed_out {
            self.stats.timeouts += 1;
            if let Some(a) = self.asks.get_mut(&q) {
                a.state = AskState::Failed;
            }
            self.ask_ended(now, wall, q);
        }
        let overdue: Vec<u64> = self
            .searches
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.check_done(now, wall, id);
        }
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.next_expiry = None;
            self.store.expire(wall);
            let store = &self.store;
            self.placed.retain(|u, _| store.holds(u));
            if !self.store.is_empty() {
                self.arm_expiry(now);
            }
            self.cache.retain(|_, (_, expires)| *expires > now);
            let retention = self.cfg.retention.as_secs();
            self.attached.retain(|_, records| {
                records.retain(|r| wall.0.saturating_sub(r.timestamp.0) <= retention);
                !records.is_empty()
            });
        }
        if self.next_repair.is_some_and(|t| t <= now) {
            self.next_repair = None;
            if ring.generation() != self.repaired_generation {
                self.repair(ring);
            }
        }
    }

    /// Re-check the replica set of every record held after the ring changed: push records to
    /// super nodes that newly belong to their set, drop records this node no longer has to
    /// hold.
    fn repair(&mut self, ring: &Ring) {
        // Only users whose replica set a change can have touched (all when the ring's log
        // does not reach back to the last repair).
        let changed = ring.changed_since(self.repaired_generation);
        self.repaired_generation = ring.generation();
        // Watchers that left the ring watch nothing any more.
        let me = self.me.static_key;
        let gone: Vec<HostEntry> = self
            .per_watcher
            .keys()
            .filter(|w| w.static_key != me && ring.at(w.addr) != Some(*w))
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut dropped = 0;
            self.watchers.retain(|_, set| {
                let before = set.len();
                set.retain(|w| !gone.contains(w));
                dropped += before - set.len();
                !set.is_empty()
            });
            self.watcher_count -= dropped;
            for w in &gone {
                self.per_watcher.remove(w);
            }
        }
        let replicas = self.cfg.replicas;
        let mut users: Vec<UserName> = self
            .store
            .users()
            .filter(|u| match (&changed, self.placed.get(*u)) {
                (Some(keys), Some(p)) => keys.iter().any(|k| p.affected_by(k, replicas)),
                _ => true,
            })
            .cloned()
            .collect();
        // In a fixed order: runs with the same seed send the same messages.
        users.sort();
        for user in users {
            let key = self
                .placed
                .get(&user)
                .map_or_else(|| Key::of_user(&user), |p| p.key);
            let (keys, set): (Vec<Key>, Vec<HostEntry>) =
                ring.successor_keys(key, replicas).into_iter().unzip();
            let old = self.placed.remove(&user).map(|p| p.set).unwrap_or_default();
            if old == keys {
                self.placed.insert(user, Placement { key, set: keys });
                continue;
            }
            // Every holder pushes to the members its own view says are new: views differ
            // between super nodes, and a copy that arrives twice costs the receiver no
            // signature check (it is not newer than what it holds).
            let records = self.store.held(&user);
            for (entry, k) in set.iter().zip(&keys) {
                if *k == self.my_key || old.contains(k) {
                    continue;
                }
                for r in &records {
                    self.stats.repaired += 1;
                    self.outputs.push_back(DhtOutput::Send {
                        to: *entry,
                        message: Message::IndexStore {
                            replicate: false,
                            record: Box::new(r.clone()),
                        },
                    });
                }
            }
            let keep = keys.contains(&self.my_key)
                || ring
                    .successor_keys(key, replicas + self.cfg.widen)
                    .iter()
                    .any(|(k, _)| *k == self.my_key);
            if keep {
                self.placed.insert(user, Placement { key, set: keys });
            } else {
                self.store.remove_user(&user);
            }
        }
    }
}

/// True when `r` says "online", names super nodes, and is older than `after`: an online device
/// would have published a newer one.
fn record_looks_old(r: &PresenceRecord, wall: UnixTime, after: Duration) -> bool {
    r.online && !r.super_nodes.is_empty() && wall.0.saturating_sub(r.timestamp.0) > after.as_secs()
}

/// An answer as its (device, sequence) pairs, in device order, once each (highest sequence
/// per device), comparable with the merged result.
fn summary_of(records: &[PresenceRecord]) -> Vec<(DeviceId, u64)> {
    let mut m = BTreeMap::new();
    for r in records {
        merge_record(&mut m, r.clone());
    }
    m.values().map(|r| (r.device(), r.sequence)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring position for a test super node (its ring salt: zeros).
    pub(super) fn key_of(e: &HostEntry) -> Key {
        Key::of_super_node(&e.static_key, &[0; RING_SALT_LEN])
    }

    pub(super) fn put(ring: &mut Ring, e: HostEntry) -> bool {
        ring.insert(key_of(&e), e)
    }

    fn entry(addr: &str, key: u32) -> HostEntry {
        let mut static_key = [0x55; 32];
        static_key[..4].copy_from_slice(&key.to_be_bytes());
        HostEntry {
            addr: addr.parse().unwrap(),
            static_key,
        }
    }

    #[test]
    fn ring_orders_by_key_and_wraps() {
        let mut ring = Ring::new(4);
        for i in 0..10u32 {
            assert!(put(&mut ring, entry(&format!("198.18.{i}.1:4000"), i)));
        }
        assert_eq!(ring.len(), 10);
        let all = ring.successors(Key([0; 32]), 100);
        assert_eq!(all.len(), 10, "never more than the ring holds");
        let keys: Vec<Key> = all.iter().map(key_of).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        // Past the last key, the successors wrap around to the first.
        let last = *keys.last().unwrap();
        let after = ring.successors(last, 2);
        assert_eq!(key_of(&after[1]), keys[0]);
        // Re-inserting changes nothing; removing bumps the generation.
        let g = ring.generation();
        assert!(put(&mut ring, all[0]));
        assert_eq!(ring.generation(), g);
        assert!(ring.remove(all[0].addr));
        assert!(!ring.remove(all[0].addr));
        assert_eq!(ring.len(), 9);
        assert!(ring.generation() > g);
    }

    #[test]
    fn one_party_cannot_surround_a_key_from_one_prefix() {
        let mut ring = Ring::new(4);
        for i in 0..20u32 {
            put(&mut ring, entry(&format!("198.18.{i}.1:4000"), i));
        }
        // Mallory runs 200 super nodes in one /24 (and 200 in one IPv6 /48).
        let mut accepted = 0;
        for i in 0..200u32 {
            accepted += usize::from(put(
                &mut ring,
                entry(&format!("198.19.7.{i}:4000"), 1000 + i),
            ));
            let v6 = format!("[2001:db8:1:{i:x}::1]:4000");
            accepted += usize::from(put(&mut ring, entry(&v6, 2000 + i)));
        }
        assert_eq!(accepted, 8, "four per prefix");
        // However the keys fall, honest super nodes remain among any key's replicas.
        let user = UserName::parse("alice").unwrap();
        let replicas = ring.successors(Key::of_user(&user), 7);
        let hers = replicas
            .iter()
            .filter(|e| e.addr.ip().to_string().starts_with("198.19.7.") || e.addr.is_ipv6())
            .count();
        assert!(hers < 7, "honest replicas remain: {hers} of 7 are hers");
        // Leaving frees the slot.
        let first = ring
            .entries()
            .find(|e| e.addr.ip().to_string().starts_with("198.19.7."))
            .copied()
            .unwrap();
        assert!(ring.remove(first.addr));
        assert!(put(&mut ring, entry("198.19.7.250:4000", 250)));
    }

    #[test]
    fn the_change_log_tells_which_sets_moved() {
        let mut ring = Ring::new(4);
        for i in 0..10u32 {
            put(&mut ring, entry(&format!("198.18.{i}.1:4000"), i));
        }
        let g = ring.generation();
        assert_eq!(ring.changed_since(g), Some(vec![]));
        let e = entry("198.18.50.1:4000", 50);
        put(&mut ring, e);
        let k = key_of(&e);
        assert_eq!(ring.changed_since(g), Some(vec![k]));
        assert_eq!(ring.changed_since(0).map(|v| v.len()), Some(11));
        // A set is touched by a change between its key and its last member, not elsewhere.
        let user = Key::of_user(&UserName::parse("alice").unwrap());
        let set: Vec<Key> = ring
            .successor_keys(user, 3)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let p = Placement {
            key: user,
            set: set.clone(),
        };
        for k in &set {
            assert!(p.affected_by(k, 3));
        }
        let beyond = ring.successor_keys(user, 5)[4].0;
        assert!(!p.affected_by(&beyond, 3));
        // Past the log's reach: unknown.
        for i in 0..(CHANGE_LOG as u32 + 1) {
            ring.remove(e.addr);
            put(&mut ring, entry("198.18.50.1:4000", 1000 + i));
        }
        assert_eq!(ring.changed_since(g), None);
    }

    #[test]
    fn ids_come_from_keys_not_from_choice() {
        let a = entry("198.18.0.1:4000", 1);
        let b = HostEntry {
            addr: "198.18.0.2:4000".parse().unwrap(),
            ..a
        };
        // The same key at another address is the same ring position (it moved).
        let mut ring = Ring::new(4);
        put(&mut ring, a);
        put(&mut ring, b);
        assert_eq!(ring.len(), 1);
        assert!(ring.contains(b.addr) && !ring.contains(a.addr));
        assert_ne!(key_of(&a), Key::of_user(&UserName::parse("alice").unwrap()));
    }
}

#[cfg(test)]
mod search_tests {
    use super::*;
    use natter_core::crypto::{Capabilities, DeviceIdentity};
    use natter_core::testkit::{TestNetwork, TEST_WALL};
    use tests::{key_of, put};

    /// Three super nodes on one ring, delivering each other's messages at once.
    struct Net {
        ring: Ring,
        dhts: Vec<Dht>,
        replies: Vec<Message<'static>>,
        done: Vec<SearchOutcome>,
        /// Records pushed to watchers: (the watching super node, the record).
        notified: Vec<(usize, PresenceRecord)>,
        now: Instant,
    }

    impl Net {
        fn new(net: &TestNetwork, n: u8) -> Self {
            let mut ring = Ring::new(4);
            let mut dhts = Vec::new();
            for i in 0..n {
                let me = HostEntry {
                    addr: format!("198.18.{i}.1:4000").parse().unwrap(),
                    static_key: [i + 1; 32],
                };
                put(&mut ring, me);
                dhts.push(Dht::new(
                    DhtConfig::default(),
                    me,
                    key_of(&me),
                    net.trusted(),
                ));
            }
            Self {
                ring,
                dhts,
                replies: Vec::new(),
                done: Vec::new(),
                notified: Vec::new(),
                now: Instant::now(),
            }
        }

        /// The super nodes that are not among `user`'s replicas.
        fn outside_replicas(&self, user: &UserName) -> Vec<usize> {
            let replicas = self
                .ring
                .successors(Key::of_user(user), DhtConfig::default().replicas);
            (0..self.dhts.len())
                .filter(|i| !replicas.contains(&self.dhts[*i].me))
                .collect()
        }

        fn run(&mut self) {
            loop {
                let mut moved = false;
                for i in 0..self.dhts.len() {
                    while let Some(out) = self.dhts[i].poll_output() {
                        moved = true;
                        match out {
                            DhtOutput::Send { to, message } => {
                                let from = self.dhts[i].me;
                                let j = self
                                    .dhts
                                    .iter()
                                    .position(|d| d.me.static_key == to.static_key)
                                    .unwrap();
                                if let Message::IndexNotify { record } = message {
                                    self.notified.push((j, *record));
                                    continue;
                                }
                                let ring = self.ring.clone();
                                self.dhts[j]
                                    .handle_message(self.now, TEST_WALL, &ring, from, &message);
                            }
                            DhtOutput::Reply { message, .. } => self.replies.push(message),
                            DhtOutput::Done { outcome, .. } => self.done.push(outcome),
                            DhtOutput::Changed { record } => self.notified.push((i, *record)),
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }

    /// An online record of `dev` naming the super node `at`, signed `age` seconds ago.
    fn attached_record(
        dev: &DeviceIdentity,
        cert: &Certificate,
        at: SocketAddr,
        seq: u64,
        age: u64,
    ) -> PresenceRecord {
        PresenceRecord::sign(
            dev,
            cert.clone(),
            true,
            vec![at],
            None,
            vec![],
            1,
            Capabilities::VOICE,
            seq,
            UnixTime(TEST_WALL.0 - age),
        )
    }

    fn record(net: &TestNetwork, user: &str, seq: u64) -> PresenceRecord {
        let id = net.identity(user);
        PresenceRecord::sign(
            &id.device,
            id.certificate,
            true,
            vec![],
            None,
            vec![],
            1,
            Capabilities::VOICE,
            seq,
            TEST_WALL,
        )
    }

    #[test]
    fn replicas_push_new_records_to_watchers_until_they_stop_or_leave() {
        let tn = TestNetwork::new(1);
        let mut net = Net::new(&tn, 10);
        let ring = net.ring.clone();
        let now = net.now;
        let bob = UserName::parse("bob").unwrap();
        let replicas: Vec<usize> = ring
            .successors(Key::of_user(&bob), 2)
            .iter()
            .map(|e| net.dhts.iter().position(|d| d.me == *e).unwrap())
            .collect();
        let outside = net.outside_replicas(&bob);
        let (watcher, home) = (outside[0], outside[1]);
        let w = net.dhts[watcher].me;
        // Watching at a replica that holds nothing yet costs nothing back.
        for r in &replicas {
            let msg = Message::IndexWatch {
                full: false,
                watch: true,
                refresh: false,
                users: vec![bob.clone()],
            };
            assert!(net.dhts[*r].handle_message(now, TEST_WALL, &ring, w, &msg));
        }
        net.run();
        assert!(net.notified.is_empty());
        // A new record reaches the watcher from both replicas.
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, record(&tn, "bob", 5)));
        net.run();
        assert_eq!(net.notified.len(), 2);
        assert!(net
            .notified
            .iter()
            .all(|(to, r)| *to == watcher && r.sequence == 5));
        net.notified.clear();
        // A replayed one is not stored, so not pushed; nor is a refresh that says the same.
        assert!(!net.dhts[home].publish(now, TEST_WALL, &ring, record(&tn, "bob", 5)));
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, record(&tn, "bob", 6)));
        net.run();
        assert!(net.notified.is_empty());
        // A new watch is answered with what is held.
        let late = net.dhts[outside[2]].me;
        let msg = Message::IndexWatch {
            full: false,
            watch: true,
            refresh: false,
            users: vec![bob.clone()],
        };
        net.dhts[replicas[0]].handle_message(now, TEST_WALL, &ring, late, &msg);
        net.run();
        assert_eq!(net.notified.len(), 1);
        net.notified.clear();
        // Its periodic refresh costs nothing back.
        let refresh = Message::IndexWatch {
            full: false,
            watch: true,
            refresh: true,
            users: vec![bob.clone()],
        };
        net.dhts[replicas[0]].handle_message(now, TEST_WALL, &ring, late, &refresh);
        net.run();
        assert!(net.notified.is_empty());
        // Someone outside the ring cannot watch.
        let stranger = HostEntry {
            addr: "198.18.200.1:4000".parse().unwrap(),
            static_key: [0xEE; 32],
        };
        assert!(!net.dhts[replicas[0]].handle_message(now, TEST_WALL, &ring, stranger, &msg));
        assert_eq!(net.dhts[replicas[0]].stats().watches_refused, 1);
        // The first watcher stops at one replica, and leaves the ring (the other replica
        // drops it at its next repair).
        let stop = Message::IndexWatch {
            full: false,
            watch: false,
            refresh: false,
            users: vec![bob.clone()],
        };
        net.dhts[replicas[0]].handle_message(now, TEST_WALL, &ring, w, &stop);
        assert_eq!(net.dhts[replicas[0]].watchers(&bob), 1, "the late one");
        let mut smaller = ring.clone();
        smaller.remove(w.addr);
        net.dhts[replicas[1]].ring_changed(now);
        let later = now + DhtConfig::default().repair_interval;
        net.dhts[replicas[1]].handle_timeout(later, TEST_WALL, &smaller);
        assert_eq!(net.dhts[replicas[1]].watchers(&bob), 0);
    }

    #[test]
    fn replicas_serving_an_old_record_are_overruled_by_the_users_own_super_node() {
        let tn = TestNetwork::new(1);
        let mut net = Net::new(&tn, 10);
        let ring = net.ring.clone();
        let now = net.now;
        let alice = UserName::parse("alice").unwrap();
        let outside = net.outside_replicas(&alice);
        let (home, searcher) = (outside[0], outside[1]);
        let home_addr = net.dhts[home].me.addr;
        let id = tn.identity("alice");
        let signed = |seq, age| attached_record(&id.device, &id.certificate, home_addr, seq, age);
        // The replicas hold a record an hour old (an online device refreshes every 30
        // minutes); the newest went through its super node only (the replicas lost it, or
        // lie about it).
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, signed(1, 3600)));
        net.run();
        assert!(net.dhts[home].publish(now, TEST_WALL, &Ring::new(4), signed(2, 60)));
        net.run();
        net.dhts[searcher].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        net.run();
        assert!(
            net.done.is_empty(),
            "waits to ask the record's super node: {:?}",
            net.done
        );
        assert_eq!(net.dhts[searcher].poll_timeout(), Some(now));
        net.dhts[searcher].handle_timeout(now, TEST_WALL, &ring);
        net.run();
        let found = net.done.pop().unwrap();
        match found.result {
            SearchResult::Found(r) => assert_eq!(r[0].sequence, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(net.dhts[searcher].stats().confirms, 1);
        // A fresh record is answered as it is.
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, signed(3, 60)));
        net.run();
        let other = outside[2];
        net.dhts[other].search(now, TEST_WALL, &ring, Origin::Local(2), alice);
        net.run();
        assert!(
            matches!(net.done.pop().unwrap().result, SearchResult::Found(r) if r[0].sequence == 3)
        );
        assert_eq!(net.dhts[other].stats().confirms, 0);
    }

    #[test]
    fn an_old_record_of_one_device_is_confirmed_and_nobody_to_ask_costs_no_wait() {
        let tn = TestNetwork::new(2);
        let mut net = Net::new(&tn, 10);
        let ring = net.ring.clone();
        let now = net.now;
        let alice = UserName::parse("alice").unwrap();
        let outside = net.outside_replicas(&alice);
        let (home, searcher) = (outside[0], outside[1]);
        let home_addr = net.dhts[home].me.addr;
        // Alice's phone: a fresh record; her laptop: an hour-old one at the replicas, a fresh
        // one at its super node. Liars pairing the two must not pass the old one off.
        let phone = tn.identity("alice");
        let laptop = DeviceIdentity::generate(&mut natter_core::rng::Rng::from_seed(5));
        let laptop_cert = tn.authority().certify(
            &alice,
            laptop.dh_public(),
            laptop.signing_public(),
            phone.certificate.not_before,
            phone.certificate.not_after,
        );
        let sign = attached_record;
        let nowhere: SocketAddr = "198.18.99.1:4000".parse().unwrap();
        let fresh_phone = sign(&phone.device, &phone.certificate, nowhere, 1, 60);
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, fresh_phone));
        let old_laptop = sign(&laptop, &laptop_cert, home_addr, 1, 3600);
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, old_laptop));
        net.run();
        let new_laptop = sign(&laptop, &laptop_cert, home_addr, 2, 60);
        assert!(net.dhts[home].publish(now, TEST_WALL, &Ring::new(4), new_laptop));
        net.run();
        net.dhts[searcher].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        net.run();
        net.dhts[searcher].handle_timeout(now, TEST_WALL, &ring);
        net.run();
        match net.done.pop().map(|o| o.result) {
            Some(SearchResult::Found(r)) => {
                let laptop_seq = r.iter().find(|r| r.device() == laptop_cert.device);
                assert_eq!(laptop_seq.map(|r| r.sequence), Some(2));
            }
            other => panic!("{other:?}"),
        }
        // An old record naming a super node that is not in the ring: nobody to ask, and the
        // search ends at once with what it has.
        let mut net = Net::new(&tn, 10);
        let now = net.now;
        let gone = sign(&phone.device, &phone.certificate, nowhere, 5, 3600);
        assert!(net.dhts[home].publish(now, TEST_WALL, &ring, gone));
        net.run();
        net.dhts[searcher].search(now, TEST_WALL, &ring, Origin::Local(2), alice);
        net.run();
        assert!(net.done.is_empty());
        net.dhts[searcher].handle_timeout(now, TEST_WALL, &ring);
        net.run();
        match net.done.pop().map(|o| o.result) {
            Some(SearchResult::Found(r)) => assert_eq!(r[0].sequence, 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(net.dhts[searcher].stats().confirms, 1);
    }

    #[test]
    fn replicas_that_all_say_not_found_are_overruled_by_the_users_own_super_node() {
        let tn = TestNetwork::new(3);
        let mut net = Net::new(&tn, 10);
        let ring = net.ring.clone();
        let now = net.now;
        let alice = UserName::parse("alice").unwrap();
        let outside = net.outside_replicas(&alice);
        let (home, searcher) = (outside[0], outside[1]);
        let home_entry = net.dhts[home].me;
        let id = tn.identity("alice");
        let record = attached_record(&id.device, &id.certificate, home_entry.addr, 1, 0);
        // Every replica lost (or denies) the record; only alice's own super node has it.
        assert!(net.dhts[home].publish(now, TEST_WALL, &Ring::new(4), record));
        net.dhts[searcher].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        net.run();
        assert_eq!(net.done.pop().unwrap().result, SearchResult::NotFound);
        // Asked again with the super node a record the asker remembers names: found.
        net.dhts[searcher].search_also(
            now,
            TEST_WALL,
            &ring,
            Origin::Local(2),
            alice,
            vec![home_entry],
        );
        net.run();
        match net.done.pop().map(|o| o.result) {
            Some(SearchResult::Found(r)) => assert_eq!(r[0].sequence, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn found_cached_on_the_path_revoked_and_definitely_absent() {
        let tn = TestNetwork::new(1);
        let mut net = Net::new(&tn, 3);
        let ring = net.ring.clone();
        let now = net.now;
        assert!(net.dhts[0].publish(now, TEST_WALL, &ring, record(&tn, "alice", 1)));
        net.run();
        assert!(
            net.dhts.iter().all(|d| d.store().len() == 1),
            "every replica"
        );
        let alice = UserName::parse("alice").unwrap();
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        net.run();
        let first = net.done.pop().unwrap();
        assert!(matches!(first.result, SearchResult::Found(ref r) if r.len() == 1));
        // Again from the same super node: the path cache answers, no message sent.
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(2), alice.clone());
        net.run();
        let second = net.done.pop().unwrap();
        assert_eq!(second.result, first.result);
        assert_eq!((second.hops, second.messages), (0, 0));
        assert_eq!(net.dhts[1].stats().cache_hits, 1);
        // After the TTL the replicas are asked again.
        let later = now + Duration::from_secs(31);
        net.dhts[1].search(later, TEST_WALL, &ring, Origin::Local(3), alice.clone());
        net.now = later;
        net.run();
        assert!(net.done.pop().unwrap().messages > 0);
        // A client's search gets one IndexResult per record.
        net.dhts[2].search(
            later,
            TEST_WALL,
            &ring,
            Origin::Client {
                client: 9,
                query: 77,
            },
            alice.clone(),
        );
        net.run();
        assert!(matches!(
            net.replies.pop(),
            Some(Message::IndexResult {
                query: 77,
                total: 1,
                ..
            })
        ));
        // Revoked everywhere: not answered any more; a definite "not found".
        let device = tn.identity("alice").certificate.device;
        for d in &mut net.dhts {
            d.revoke([device]);
        }
        net.dhts[1].search(later, TEST_WALL, &ring, Origin::Local(4), alice);
        net.run();
        assert_eq!(net.done.pop().unwrap().result, SearchResult::NotFound);
        // A forged record is refused at publication.
        let mut forged = record(&tn, "bob", 1);
        forged.sequence = 5;
        assert!(!net.dhts[0].publish(later, TEST_WALL, &ring, forged));
    }

    #[test]
    fn a_search_that_raced_a_newer_record_is_not_cached() {
        let tn = TestNetwork::new(1);
        let mut net = Net::new(&tn, 3);
        let ring = net.ring.clone();
        let now = net.now;
        assert!(net.dhts[0].publish(now, TEST_WALL, &ring, record(&tn, "alice", 1)));
        net.run();
        let alice = UserName::parse("alice").unwrap();
        // dhts[1] searches; the other replicas' answers are held back...
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        let mut answers = Vec::new();
        while let Some(out) = net.dhts[1].poll_output() {
            if let DhtOutput::Send { to, message } = out {
                let j = net
                    .dhts
                    .iter()
                    .position(|d| d.me.static_key == to.static_key)
                    .unwrap();
                let from = net.dhts[1].me;
                net.dhts[j].handle_message(now, TEST_WALL, &ring, from, &message);
                while let Some(reply) = net.dhts[j].poll_output() {
                    answers.push((net.dhts[j].me, reply));
                }
            }
        }
        assert!(!answers.is_empty());
        // ...while a newer record is stored everywhere, then they arrive.
        assert!(net.dhts[0].publish(now, TEST_WALL, &ring, record(&tn, "alice", 2)));
        net.run();
        for (from, out) in answers {
            if let DhtOutput::Send { message, .. } = out {
                net.dhts[1].handle_message(now, TEST_WALL, &ring, from, &message);
            }
        }
        net.run();
        assert!(net.done.pop().is_some());
        // The next search asks again (no cached older record) and finds the newer one.
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(2), alice);
        net.run();
        let second = net.done.pop().unwrap();
        assert!(second.messages > 0, "not answered from the path cache");
        match second.result {
            SearchResult::Found(r) => assert_eq!(r[0].sequence, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(net.dhts[1].stats().cache_hits, 0);
    }

    #[test]
    fn the_path_cache_is_skipped_when_a_record_names_a_super_node_that_left() {
        let tn = TestNetwork::new(1);
        let mut net = Net::new(&tn, 3);
        let ring = net.ring.clone();
        let now = net.now;
        let home = net.dhts[0].me.addr;
        let id = tn.identity("alice");
        let rec = PresenceRecord::sign(
            &id.device,
            id.certificate,
            true,
            vec![home],
            None,
            vec![],
            1,
            Capabilities::VOICE,
            1,
            TEST_WALL,
        );
        assert!(net.dhts[0].publish(now, TEST_WALL, &ring, rec));
        net.run();
        let alice = UserName::parse("alice").unwrap();
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(1), alice.clone());
        net.run();
        assert!(net.done.pop().unwrap().messages > 0);
        // Cached: answered without a message while its super node is on the ring.
        net.dhts[1].search(now, TEST_WALL, &ring, Origin::Local(2), alice.clone());
        net.run();
        assert_eq!(net.done.pop().unwrap().messages, 0);
        // That super node left: the device is elsewhere now, the replicas are asked.
        let mut smaller = ring.clone();
        assert!(smaller.remove(home));
        net.dhts[1].search(now, TEST_WALL, &smaller, Origin::Local(3), alice);
        net.run();
        assert!(net.done.pop().unwrap().messages > 0);
    }

    #[test]
    fn an_empty_ring_cannot_tell() {
        let tn = TestNetwork::new(1);
        let me = HostEntry {
            addr: "198.18.0.1:4000".parse().unwrap(),
            static_key: [1; 32],
        };
        let mut dht = Dht::new(DhtConfig::default(), me, key_of(&me), tn.trusted());
        let ring = Ring::new(4);
        dht.search(
            Instant::now(),
            TEST_WALL,
            &ring,
            Origin::Local(1),
            UserName::parse("alice").unwrap(),
        );
        match dht.poll_output() {
            Some(DhtOutput::Done { outcome, .. }) => {
                assert_eq!(outcome.result, SearchResult::Unavailable)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;
    use natter_core::testkit::{TestNetwork, TEST_WALL};
    use tests::{key_of, put};

    /// This super node and two others; returns the outcome when both others answer `reply`.
    fn both_answer(definite: bool) -> SearchResult {
        let tn = TestNetwork::new(1);
        let entry = |i: u8| HostEntry {
            addr: format!("198.18.{i}.1:4000").parse().unwrap(),
            static_key: [i + 1; 32],
        };
        let mut ring = Ring::new(4);
        for i in 0..3 {
            put(&mut ring, entry(i));
        }
        let mut dht = Dht::new(
            DhtConfig::default(),
            entry(0),
            key_of(&entry(0)),
            tn.trusted(),
        );
        let now = Instant::now();
        let alice = UserName::parse("alice").unwrap();
        dht.search(now, TEST_WALL, &ring, Origin::Local(1), alice);
        let mut asked = Vec::new();
        while let Some(out) = dht.poll_output() {
            if let DhtOutput::Send {
                to,
                message: Message::IndexSearch { query, .. },
            } = out
            {
                asked.push((to, query));
            }
        }
        assert_eq!(asked.len(), 2);
        // A stranger's answer to a query it was not asked is ignored.
        let stranger = entry(9);
        assert!(!dht.handle_message(
            now,
            TEST_WALL,
            &ring,
            stranger,
            &Message::IndexNotFound {
                query: asked[0].1,
                hops: 0,
                definite: true,
            },
        ));
        for (to, query) in asked {
            dht.handle_message(
                now,
                TEST_WALL,
                &ring,
                to,
                &Message::IndexNotFound {
                    query,
                    hops: 0,
                    definite,
                },
            );
        }
        match dht.poll_output() {
            Some(DhtOutput::Done { outcome, .. }) => outcome.result,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_needs_definite_answers_from_replicas() {
        assert_eq!(both_answer(true), SearchResult::NotFound);
        // "Could not tell" is no answer: the search cannot say "not found".
        assert_eq!(both_answer(false), SearchResult::Unavailable);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use natter_core::testkit::{TestNetwork, TEST_WALL};
    use tests::{key_of, put};

    #[test]
    fn a_client_runs_at_most_eight_searches_at_once() {
        let tn = TestNetwork::new(1);
        let entry = |i: u8| HostEntry {
            addr: format!("198.18.{i}.1:4000").parse().unwrap(),
            static_key: [i + 1; 32],
        };
        let mut ring = Ring::new(4);
        put(&mut ring, entry(0));
        put(&mut ring, entry(1));
        let mut dht = Dht::new(
            DhtConfig::default(),
            entry(0),
            key_of(&entry(0)),
            tn.trusted(),
        );
        let now = Instant::now();
        let alice = UserName::parse("alice").unwrap();
        for query in 0..10 {
            let origin = Origin::Client { client: 7, query };
            dht.search(now, TEST_WALL, &ring, origin, alice.clone());
        }
        assert_eq!(dht.searches_in_progress(), MAX_CLIENT_SEARCHES);
        let refused: Vec<u32> = std::iter::from_fn(|| dht.poll_output())
            .filter_map(|o| match o {
                DhtOutput::Reply {
                    message:
                        Message::IndexNotFound {
                            query,
                            definite: false,
                            ..
                        },
                    ..
                } => Some(query),
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            vec![8, 9],
            "the ninth and tenth are told 'could not tell'"
        );
        // Another client is not held back; and once the first client's searches end (their
        // deadline), it may search again.
        dht.search(
            now,
            TEST_WALL,
            &ring,
            Origin::Client {
                client: 8,
                query: 1,
            },
            alice.clone(),
        );
        assert_eq!(dht.searches_in_progress(), MAX_CLIENT_SEARCHES + 1);
        let later = now + Duration::from_secs(3);
        dht.handle_timeout(later, TEST_WALL, &ring);
        assert_eq!(dht.searches_in_progress(), 0);
        assert!(dht.per_client.is_empty());
        dht.search(
            later,
            TEST_WALL,
            &ring,
            Origin::Client {
                client: 7,
                query: 11,
            },
            alice,
        );
        assert_eq!(dht.searches_in_progress(), 1);
    }
}
