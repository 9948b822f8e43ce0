//! Super-node membership: every super node knows every other, as the one-hop index needs.
//!
//! A sans-IO sub-machine of the super-node role. Three mechanisms, each cheap, together keep
//! each super node's view of the others complete and current at ten thousand super nodes:
//!
//! * **Failure detection on the ring.** Each super node probes its
//!   [`MembershipConfig::monitors`] nearest answering successors on the ring (ordered by the hash of
//!   each super node's certified static key, as the index ring is) every
//!   [`MembershipConfig::probe_interval`]; a successor that misses
//!   [`MembershipConfig::probe_misses`] probes in a row is declared gone. Every super node is
//!   watched by several predecessors, so one dying watcher does not hide a failure, and the
//!   probing costs each super node a constant few packets per second whatever the network's
//!   size.
//! * **Gossip of changes.** A join, a departure or a failure becomes an event
//!   ([`MemberEvent`]: alive or gone, at an incarnation). A super node that learns something new
//!   forwards it once to [`MembershipConfig::fanout`] random members (events batched per
//!   [`MembershipConfig::gossip_interval`]), so news reaches everyone in a few rounds, about
//!   `log(n) / log(fanout)`, and each super node receives each event about `fanout` times.
//! * **Anti-entropy.** Every [`MembershipConfig::sync_interval`] a super node sends a random
//!   member a digest of its view: 64 hashes, one per top bucket of the key space. The other
//!   answers with 64 sub-hashes for each bucket that differs, and the two then exchange the
//!   members of the sub-buckets that differ (alive ones and recent departures). This repairs
//!   whatever gossip missed and brings a new super node the whole view, in chunks. A super
//!   node learnt outside the membership (a link, a bootstrap entry) gets a digest at once, and
//!   in a super node's first 30 s a sync that changed its view, or any new member, is followed
//!   by another sync at gossip pace, so super nodes that start together mostly know each
//!   other within a fraction of a second rather than after one or more sync intervals.
//!
//! **Incarnations** order what is said about a super node: only the super node itself raises
//! its own (it starts at the wall-clock second it took the role, so a restart outranks what
//! was said of its previous run), and at equal incarnations "gone" beats "alive". A super node
//! that hears it was declared gone (wrongly: it is running) raises its incarnation and gossips
//! that it is alive, which outranks the report. A departure is remembered as a tombstone for
//! [`MembershipConfig::tombstone_ttl`] so that stale views cannot bring the member back.
//!
//! **Who may say what.** A super node signs what it says of itself (alive at an incarnation,
//! or leaving) with its certified Ed25519 key; a receiver checks the signature against the
//! super node's certificate (learnt from a session with it, or pulled from the member that
//! passed the event on, [`Message::MemberCertPull`]) and drops unsigned "alive" news. What a
//! super node says of *others* (a failure its probes found) is a hint: the receiver probes the
//! named super node itself and declares it gone only when its own probes go unanswered, and
//! passes the news on only then, so a liar's report reaches its direct recipients and costs
//! them one probe each. A key already live at one address never moves to another, and an
//! address live under one key never changes key, unless a probe answered on a session at the
//! new address with that key proves it (a signed "alive" is the key holder's word, not proof
//! of where it is). So a certified user running a super node can neither take another super
//! node out of the views nor rebind it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use natter_core::crypto::{verify_signature, Certificate, LocalIdentity, UnixTime};
use natter_core::rng::Rng;
use natter_core::wire::message::{
    HostEntry, MemberEvent, Message, DIGEST_BUCKETS, MAX_CERT_PULL, MAX_MEMBER_CERTS,
    MAX_MEMBER_EVENTS, MEMBER_CONTEXT,
};

use crate::dht::Key;

/// Settings of the membership.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Probe the watched successors this often (default 2 s).
    pub probe_interval: Duration,
    /// A successor missing this many probes in a row is declared gone (default 4: about 8 s).
    pub probe_misses: u32,
    /// Live successors each super node watches (default 3).
    pub monitors: usize,
    /// Send queued events this often (default 200 ms).
    pub gossip_interval: Duration,
    /// Random members each new event is forwarded to (default 6).
    pub fanout: usize,
    /// Exchange a digest with a random member this often (default 5 s).
    pub sync_interval: Duration,
    /// Remember a departed member this long (default 1 hour).
    pub tombstone_ttl: Duration,
    /// Most members (alive and departed) held (default 100,000).
    pub max_members: usize,
    /// Randomness for choosing gossip and sync partners.
    pub seed: [u8; 32],
}

impl MembershipConfig {
    /// Defaults with the given randomness.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            probe_interval: Duration::from_secs(2),
            probe_misses: 4,
            monitors: 3,
            gossip_interval: Duration::from_millis(200),
            fanout: 6,
            sync_interval: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(3600),
            max_members: 100_000,
            seed,
        }
    }
}

/// Counters of the membership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Events that changed this view.
    pub applied: u64,
    /// Events that told nothing new (duplicates, older incarnations).
    pub stale: u64,
    /// Successors this super node declared gone.
    pub declared_gone: u64,
    /// Reports of this super node's departure it refuted.
    pub refuted: u64,
    /// Messages that could not be used (malformed digests, over the member cap).
    pub dropped: u64,
    /// Messages sent.
    pub sent: u64,
    /// Events dropped for lack of the subject's signature ("alive" said by another).
    pub unsigned: u64,
    /// Events whose signature did not verify against the subject's certificate.
    pub bad_signature: u64,
    /// Reports of another super node's failure, checked by probing it.
    pub hints: u64,
    /// Signed events refused because they would move a live key to another address (or give
    /// a live address another key) without the member saying so over a session there.
    pub rebinds_refused: u64,
    /// Certificates learnt (from sessions or pulled).
    pub certificates: u64,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    entry: HostEntry,
    key: Key,
    incarnation: u32,
    alive: bool,
    changed: Instant,
    /// The member's own signature over this state, when it said so itself.
    signature: Option<[u8; 64]>,
    /// Learnt outside the membership (a bootstrap entry, a link) and not yet confirmed by the
    /// member's own word: yields to anything the membership says, is never sent on, and is
    /// not in the digest.
    provisional: bool,
}

impl Member {
    fn event(&self) -> MemberEvent {
        MemberEvent {
            alive: self.alive,
            incarnation: self.incarnation,
            entry: self.entry,
            signature: self.signature,
        }
    }

    /// Counted in the digest (and so compared with other views).
    fn in_digest(&self) -> bool {
        self.alive && !self.provisional
    }
}

/// Where a fact about a member comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The member signed it.
    Signed,
    /// The member's signed "alive", said by the member itself over a session at that
    /// address (the session proves the key is there).
    Proven,
    /// This super node's own probes went unanswered.
    OwnProbe,
    /// Learnt outside the membership ([`Membership::hint`]).
    Hint,
}

#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    /// The probe waiting for an answer, and the one before it (a late answer still counts).
    outstanding: Option<u32>,
    previous: Option<u32>,
    misses: u32,
}

/// A change in the set of live members, for the owner's own structures (the index ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberChange {
    /// Who.
    pub entry: HostEntry,
    /// True: now alive. False: gone.
    pub alive: bool,
}

/// Most unread [`MemberChange`]s kept; older ones are dropped (an owner that reads none still
/// has [`Membership::alive`]).
const MAX_CHANGES: usize = 4096;

/// How long to wait for a sync partner's answer before trying another.
const SYNC_ANSWER: Duration = Duration::from_secs(1);
/// Partners tried per anti-entropy round.
const SYNC_TRIES: u8 = 3;
/// How long after taking the role a super node syncs again soon whenever a sync changed its
/// view or it learnt of a new member (past that, joins are gossiped and the periodic sync
/// repairs the rest: the churn measurements in ARCHITECTURE.md hold).
const STARTUP: Duration = Duration::from_secs(30);

/// How far (seconds) an incarnation may run ahead of this super node's clock.
const MAX_INCARNATION_AHEAD: u64 = 24 * 3600;

/// Most members probed at once because of reports of their departure, and most rebindings
/// waiting for proof.
const MAX_CHECKS: usize = 64;
/// Unanswered probes that confirm another super node's report of a failure.
const CHECK_MISSES: u32 = 2;
/// Most signed events waiting for their subject's certificate, and how long they wait.
const MAX_PARKED: usize = 4096;
const PARKED_FOR: Duration = Duration::from_secs(10);
/// Live members a sync round asks for their own certificate.
const MAX_OWN_PULLS: usize = 32;
/// A key whose certificate was asked for is not asked for again for this long.
const PULL_AGAIN: Duration = Duration::from_secs(5);

/// The membership machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    rng: Rng,
    me: HostEntry,
    my_key: Key,
    incarnation: u32,
    /// The incarnation this super node started with (its wall-clock second then) and when:
    /// together, a clock to bound the incarnations others claim.
    started_incarnation: u32,
    started: Instant,
    members: BTreeMap<SocketAddr, Member>,
    /// Every member (alive and departed) by ring key, for bucket ranges.
    by_key: BTreeMap<Key, SocketAddr>,
    /// Live members other than this one, by ring key.
    ring: BTreeMap<Key, SocketAddr>,
    /// Digest of the live view (this super node included): XOR of member hashes per
    /// sub-bucket, and per top bucket.
    sub: Vec<[u64; DIGEST_BUCKETS]>,
    top: [u64; DIGEST_BUCKETS],
    rumors: VecDeque<MemberEvent>,
    watches: BTreeMap<SocketAddr, Watch>,
    /// Members another super node reported gone: probed here until they answer or are found
    /// gone (the report may be stale, wrong, or right).
    checks: BTreeMap<SocketAddr, Watch>,
    /// This super node's identity (to sign its own events) and the authorities it trusts.
    identity: LocalIdentity,
    /// Checked certificates of super nodes, by static key.
    certs: BTreeMap<[u8; 32], Certificate>,
    /// Signed events waiting for their subject's certificate: when they came, whether to
    /// spread them, the event.
    parked: VecDeque<(Instant, bool, MemberEvent)>,
    /// Keys whose certificate was asked for, and when.
    pulled: BTreeMap<[u8; 32], Instant>,
    next_nonce: u32,
    out: VecDeque<(HostEntry, Message<'static>)>,
    changes: VecDeque<MemberChange>,
    next_probe: Instant,
    /// Reported failures and claimed rebindings are probed twice as often as successors, so
    /// a real failure crosses each gossip hop (a check by every receiver) quickly.
    next_check: Instant,
    next_gossip: Instant,
    next_sync: Instant,
    /// The member our last digest went to, until when we wait for its answer, and how many
    /// partners this round has tried.
    sync_wait: Option<(SocketAddr, Instant, u8)>,
    /// When any member was last heard from: a super node that hears nobody is more likely cut
    /// off itself than surrounded by failures, and declares nobody gone.
    last_heard: Option<Instant>,
    stats: MembershipStats,
}

fn top_bucket(key: &Key) -> usize {
    usize::from(key.0[0] >> 2)
}

fn sub_bucket(key: &Key) -> usize {
    usize::from((key.0[0] & 3) << 4 | key.0[1] >> 4)
}

/// A member's contribution to the digest (FNV-1a over key, address and incarnation: stable
/// across builds, unlike the standard library's hasher).
fn member_hash(key: &Key, addr: &SocketAddr, incarnation: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&key.0);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => eat(&ip.octets()),
        std::net::IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_be_bytes());
    eat(&incarnation.to_be_bytes());
    h
}

impl Membership {
    /// Start as `me` (whose static key is `identity`'s) at `incarnation` (the wall-clock
    /// second the role was taken), knowing the super nodes in `known` (from the host cache and
    /// the network file; they count as alive until heard otherwise).
    pub fn new(
        cfg: MembershipConfig,
        identity: LocalIdentity,
        me: HostEntry,
        incarnation: u32,
        known: &[HostEntry],
        now: Instant,
    ) -> Self {
        let mut certs = BTreeMap::new();
        certs.insert(me.static_key, identity.certificate.clone());
        let mut m = Self {
            rng: Rng::from_seed_bytes(cfg.seed),
            me,
            my_key: Key::of_static_key(&me.static_key),
            incarnation,
            started_incarnation: incarnation,
            started: now,
            members: BTreeMap::new(),
            by_key: BTreeMap::new(),
            ring: BTreeMap::new(),
            sub: vec![[0; DIGEST_BUCKETS]; DIGEST_BUCKETS],
            top: [0; DIGEST_BUCKETS],
            rumors: VecDeque::new(),
            watches: BTreeMap::new(),
            checks: BTreeMap::new(),
            identity,
            certs,
            parked: VecDeque::new(),
            pulled: BTreeMap::new(),
            next_nonce: 1,
            out: VecDeque::new(),
            changes: VecDeque::new(),
            next_probe: now + cfg.probe_interval,
            next_check: now + cfg.probe_interval / 2,
            next_gossip: now,
            next_sync: now,
            sync_wait: None,
            last_heard: None,
            stats: MembershipStats::default(),
            cfg,
        };
        m.toggle_digest(m.my_key, me.addr, incarnation);
        for e in known {
            m.hint(now, *e);
        }
        m.rumors.push_back(m.my_event());
        m
    }

    /// This super node's entry.
    pub fn me(&self) -> HostEntry {
        self.me
    }

    /// This super node's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// Live super nodes other than this one.
    pub fn alive(&self) -> impl Iterator<Item = HostEntry> + '_ {
        self.ring.values().map(|a| self.members[a].entry)
    }

    /// Number of live super nodes other than this one.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when no other super node is known alive.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// True when `addr` is a live member.
    pub fn is_alive(&self, addr: SocketAddr) -> bool {
        self.members.get(&addr).is_some_and(|m| m.alive)
    }

    /// What this view holds about `addr`: alive or gone, at which incarnation.
    pub fn member(&self, addr: SocketAddr) -> Option<MemberEvent> {
        self.members.get(&addr).map(Member::event)
    }

    /// Counters.
    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    /// Up to `n` random live members.
    pub fn sample(&mut self, n: usize) -> Vec<HostEntry> {
        let mut picked: Vec<HostEntry> = Vec::with_capacity(n);
        if self.ring.len() <= n {
            return self.alive().collect();
        }
        let mut tries = 0;
        while picked.len() < n && tries < n * 8 {
            tries += 1;
            if let Some(e) = self.random_member() {
                if !picked.contains(&e) {
                    picked.push(e);
                }
            }
        }
        picked
    }

    fn random_member(&mut self) -> Option<HostEntry> {
        let mut k = [0u8; 32];
        self.rng.fill(&mut k);
        let key = Key(k);
        let addr = self
            .ring
            .range(key..)
            .next()
            .or_else(|| self.ring.iter().next())
            .map(|(_, a)| *a)?;
        Some(self.members[&addr].entry)
    }

    /// The wall clock, from the incarnation taken at start (a wall-clock second).
    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(
            u64::from(self.started_incarnation)
                + now.saturating_duration_since(self.started).as_secs(),
        )
    }

    /// Sign an event about this super node.
    fn sign(&self, mut ev: MemberEvent) -> MemberEvent {
        ev.signature = Some(
            self.identity
                .device
                .sign(MEMBER_CONTEXT, &ev.signed_bytes()),
        );
        ev
    }

    fn my_event(&self) -> MemberEvent {
        self.sign(MemberEvent {
            alive: true,
            incarnation: self.incarnation,
            entry: self.me,
            signature: None,
        })
    }

    /// The certificate known for the super node with `static_key` (from a session with it, or
    /// pulled); the membership asks live members whose certificate it lacks for theirs.
    pub fn certificate(&self, static_key: &[u8; 32]) -> Option<&Certificate> {
        self.certs.get(static_key)
    }

    /// This super node's certificate was renewed: others get the new one from now on.
    pub fn set_certificate(&mut self, certificate: &Certificate) {
        if self.identity.certificate != *certificate && certificate.dh_public == self.me.static_key
        {
            self.identity.certificate = certificate.clone();
            self.certs.insert(self.me.static_key, certificate.clone());
        }
    }

    /// The certificate a session with a super node proved (the handshake checked it): its
    /// membership events can be checked from now on.
    pub fn learn_certificate(&mut self, now: Instant, certificate: &Certificate) {
        let key = certificate.dh_public;
        if self.certs.get(&key) == Some(certificate) {
            return;
        }
        if self
            .certs
            .get(&key)
            .is_some_and(|c| c.not_after >= certificate.not_after)
        {
            return;
        }
        if !self.certs.contains_key(&key) && self.certs.len() > self.cfg.max_members {
            self.stats.dropped += 1;
            return;
        }
        if certificate
            .verify(&self.identity.trusted, self.wall(now))
            .is_err()
        {
            self.stats.bad_signature += 1;
            return;
        }
        self.stats.certificates += 1;
        self.certs.insert(key, certificate.clone());
        self.pulled.remove(&key);
        // Events that waited for it.
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .parked
            .drain(..)
            .partition(|(_, _, ev)| ev.entry.static_key == key);
        self.parked = waiting.into();
        for (_, spread, ev) in ready {
            self.signed_event(now, ev, spread, false);
        }
    }

    fn toggle_digest(&mut self, key: Key, addr: SocketAddr, incarnation: u32) {
        let h = member_hash(&key, &addr, incarnation);
        self.sub[top_bucket(&key)][sub_bucket(&key)] ^= h;
        self.top[top_bucket(&key)] ^= h;
    }

    /// A super node learnt outside the membership (a bootstrap entry, a super node that
    /// linked here): taken as alive, provisionally, when unknown, so anything the membership
    /// itself says outranks it.
    ///
    /// A digest exchange with it follows at once (or, when one is under way, at the next
    /// gossip round): a super node that just started knows only the few it linked to, and
    /// waiting for the periodic sync left views (and so the index ring) incomplete for up to
    /// [`MembershipConfig::sync_interval`].
    pub fn hint(&mut self, now: Instant, entry: HostEntry) {
        if entry.addr == self.me.addr || self.members.contains_key(&entry.addr) {
            return;
        }
        let added = self.apply(
            now,
            MemberEvent {
                alive: true,
                incarnation: 0,
                entry,
                signature: None,
            },
            Origin::Hint,
            false,
        );
        if added {
            if self.sync_wait.is_none() {
                // An extra exchange: no retry with another member when it goes unanswered.
                self.sync_wait = Some((entry.addr, now + SYNC_ANSWER, SYNC_TRIES));
                self.send(
                    entry,
                    Message::MemberDigest {
                        level: 0,
                        bucket: 0,
                        hashes: self.top.to_vec(),
                    },
                );
            } else {
                self.next_sync = self.next_sync.min(now + self.cfg.gossip_interval);
            }
        }
    }

    /// Would `ev` change what this view holds (before its signature is checked)?
    fn is_news(&self, ev: &MemberEvent) -> bool {
        if ev.entry.static_key == self.me.static_key || ev.entry.addr == self.me.addr {
            return ev.entry == self.me
                && ((!ev.alive && ev.incarnation >= self.incarnation)
                    || (ev.alive && ev.incarnation > self.incarnation));
        }
        match self.members.get(&ev.entry.addr) {
            None => true,
            Some(m) if m.provisional => ev.alive || m.entry.static_key == ev.entry.static_key,
            Some(m) if m.entry.static_key != ev.entry.static_key => ev.alive,
            Some(m) => {
                ev.incarnation > m.incarnation
                    || (ev.incarnation == m.incarnation && m.alive && !ev.alive)
                    || (ev.incarnation == m.incarnation
                        && !m.alive
                        && ev.alive
                        && m.signature.is_none())
            }
        }
    }

    /// A signed event: checked against its subject's certificate (pulled when unknown), then
    /// applied.
    /// `direct`: the member itself sent it, over a session at the event's address.
    fn signed_event(
        &mut self,
        now: Instant,
        ev: MemberEvent,
        spread: bool,
        direct: bool,
    ) -> Option<bool> {
        let Some(signature) = ev.signature else {
            return Some(false);
        };
        if !self.is_news(&ev) {
            self.stats.stale += 1;
            return Some(false);
        }
        let wall = self.wall(now);
        let Some(cert) = self
            .certs
            .get(&ev.entry.static_key)
            .filter(|c| c.not_after >= wall)
        else {
            if self.parked.len() >= MAX_PARKED {
                self.parked.pop_front();
                self.stats.dropped += 1;
            }
            self.parked.push_back((now, spread, ev));
            return None;
        };
        if !verify_signature(
            &cert.signing_public,
            MEMBER_CONTEXT,
            &ev.signed_bytes(),
            &signature,
        ) {
            self.stats.bad_signature += 1;
            return Some(false);
        }
        let origin = if direct {
            Origin::Proven
        } else {
            Origin::Signed
        };
        Some(self.apply(now, ev, origin, spread))
    }

    /// Another super node says `ev.entry` is gone, without its signature: see for ourselves.
    fn hint_gone(&mut self, now: Instant, ev: MemberEvent) {
        if ev.entry == self.me {
            // Refuting a report far in the future would push this incarnation past what
            // anyone accepts, for good.
            let ahead = u64::from(ev.incarnation) > self.wall(now).0 + MAX_INCARNATION_AHEAD;
            if ev.incarnation >= self.incarnation && !ahead {
                self.refute(ev.incarnation);
            } else {
                self.stats.stale += 1;
            }
            return;
        }
        match self.members.get(&ev.entry.addr) {
            Some(m)
                if m.alive
                    && m.entry.static_key == ev.entry.static_key
                    && ev.incarnation >= m.incarnation =>
            {
                if !self.checks.contains_key(&ev.entry.addr) && self.checks.len() < MAX_CHECKS {
                    self.stats.hints += 1;
                    self.checks.insert(ev.entry.addr, Watch::default());
                    if !self.watches.contains_key(&ev.entry.addr) {
                        self.probe_one(now, ev.entry.addr, false);
                    }
                }
            }
            _ => self.stats.stale += 1,
        }
    }

    /// Said to be gone while running (or a newer self we never were): outrank it.
    fn refute(&mut self, incarnation: u32) {
        self.toggle_digest(self.my_key, self.me.addr, self.incarnation);
        self.incarnation = incarnation.saturating_add(1);
        self.toggle_digest(self.my_key, self.me.addr, self.incarnation);
        self.stats.refuted += 1;
        self.rumor(self.my_event());
    }

    /// Apply a fact about a super node; true when it changed the view. `spread`: gossip it
    /// on.
    fn apply(&mut self, now: Instant, ev: MemberEvent, origin: Origin, spread: bool) -> bool {
        // Incarnations are wall-clock seconds plus a few refutations: one far in the future is a
        // lie that would outrank every later refutation (it is dropped).
        if u64::from(ev.incarnation) > self.wall(now).0 + MAX_INCARNATION_AHEAD {
            self.stats.dropped += 1;
            return false;
        }
        let addr = ev.entry.addr;
        if addr == self.me.addr || ev.entry.static_key == self.me.static_key {
            if ev.entry == self.me
                && ((!ev.alive && ev.incarnation >= self.incarnation)
                    || (ev.alive && ev.incarnation > self.incarnation))
            {
                self.refute(ev.incarnation);
            } else {
                self.stats.stale += 1;
            }
            return false;
        }
        let key = Key::of_static_key(&ev.entry.static_key);
        let old = self.members.get(&addr).copied();
        let same_key = old.is_some_and(|m| m.entry.static_key == ev.entry.static_key);
        // What is said of a key at another address than where it lives now is old news unless
        // it is newer than the live incarnation (a replayed event from a former address must
        // not move or remove it).
        let live_elsewhere = self
            .by_key
            .get(&key)
            .filter(|a| **a != addr)
            .and_then(|a| self.members.get(a))
            .filter(|m| m.alive && !m.provisional)
            .map(|m| m.incarnation);
        if live_elsewhere.is_some_and(|inc| !ev.alive || inc >= ev.incarnation) {
            self.stats.stale += 1;
            return false;
        }
        if ev.alive && origin != Origin::Proven {
            // One live binding per key and per address: moving either needs proof.
            let key_elsewhere = self
                .by_key
                .get(&key)
                .filter(|a| **a != addr)
                .and_then(|a| self.members.get(a))
                .is_some_and(|m| m.alive && !m.provisional);
            let address_taken = old.is_some_and(|m| m.alive && !m.provisional && !same_key);
            if key_elsewhere || address_taken {
                // Refused until the member says it over a session at the new address, or the
                // old binding is found gone.
                self.stats.rebinds_refused += 1;
                return false;
            }
        }
        if !ev.alive && old.is_some_and(|m| !same_key && !m.provisional) {
            // A departure of whoever held this address before: not the member there now.
            self.stats.stale += 1;
            return false;
        }
        let newer = match old {
            None => true,
            Some(m) if m.provisional || !same_key => origin != Origin::Hint,
            Some(m) => {
                ev.incarnation > m.incarnation
                    || (ev.incarnation == m.incarnation && m.alive && !ev.alive)
            }
        };
        if !newer {
            self.stats.stale += 1;
            if let Some(m) = old.filter(|m| {
                !m.alive
                    && m.signature.is_none()
                    && ev.alive
                    && ev.incarnation == m.incarnation
                    && origin == Origin::Signed
            }) {
                // Our probes found it gone, but it says it is alive at that incarnation: our
                // view may be the one cut off. Probe it again; an answer gets it our report,
                // which it then refutes.
                if self.checks.len() < MAX_CHECKS {
                    self.checks.entry(m.entry.addr).or_default();
                }
            }
            return false;
        }
        if old.is_none() && self.members.len() >= self.cfg.max_members {
            // Full: a live member outranks the oldest tombstone (invented members reported gone
            // must not keep real ones out); with no tombstone to give up, drop the news.
            let oldest = self
                .members
                .values()
                .filter(|m| !m.alive)
                .min_by_key(|m| (m.changed, m.entry.addr))
                .map(|m| (m.entry.addr, m.key));
            match oldest {
                Some((gone, key)) if ev.alive => {
                    self.members.remove(&gone);
                    if self.by_key.get(&key) == Some(&gone) {
                        self.by_key.remove(&key);
                    }
                }
                _ => {
                    self.stats.dropped += 1;
                    return false;
                }
            }
        }
        if ev.alive {
            // A proven move: the key's old address is forgotten.
            if let Some(a) = self.by_key.get(&key).copied().filter(|a| *a != addr) {
                if let Some(m) = self.members.remove(&a) {
                    if m.in_digest() {
                        self.toggle_digest(m.key, a, m.incarnation);
                    }
                    if m.alive {
                        self.ring.remove(&m.key);
                        self.watches.remove(&a);
                        self.checks.remove(&a);
                        self.change(m.entry, false);
                    }
                }
                self.by_key.remove(&key);
            }
        }
        if let Some(m) = old {
            if self.by_key.get(&m.key) == Some(&addr) {
                self.by_key.remove(&m.key);
            }
            if m.alive {
                self.ring.remove(&m.key);
            }
            if m.in_digest() {
                self.toggle_digest(m.key, addr, m.incarnation);
            }
        }
        let member = Member {
            entry: ev.entry,
            key,
            incarnation: ev.incarnation,
            alive: ev.alive,
            changed: now,
            signature: ev.signature,
            provisional: origin == Origin::Hint,
        };
        self.members.insert(addr, member);
        self.by_key.insert(key, addr);
        if ev.alive {
            self.ring.insert(key, addr);
        } else {
            self.watches.remove(&addr);
            self.checks.remove(&addr);
        }
        if member.in_digest() {
            self.toggle_digest(key, addr, ev.incarnation);
        }
        let key_changed = old.is_some_and(|m| m.key != key);
        if let Some(m) = old.filter(|m| m.alive && (!ev.alive || key_changed)) {
            self.change(m.entry, false);
        }
        if ev.alive && (old.is_none_or(|m| !m.alive) || key_changed) {
            self.change(ev.entry, true);
        }
        if old.is_none() && now < self.started + STARTUP {
            // Still learning who is there (members found through gossip are not gossiped on
            // by those that learnt them in a sync): sync again soon rather than in a whole
            // interval. Past start-up, joins are gossiped and this would only add traffic.
            self.next_sync = self.next_sync.min(now + self.cfg.gossip_interval);
        }
        self.stats.applied += 1;
        if spread && origin != Origin::Hint {
            self.rumor(member.event());
        }
        true
    }

    /// Queue news for gossip; past [`MAX_PARKED`] queued, the oldest is dropped (anti-entropy
    /// repairs what gossip misses).
    fn rumor(&mut self, ev: MemberEvent) {
        if self.rumors.len() >= MAX_PARKED {
            self.rumors.pop_front();
            self.stats.dropped += 1;
        }
        self.rumors.push_back(ev);
    }

    fn change(&mut self, entry: HostEntry, alive: bool) {
        if self.changes.len() == MAX_CHANGES {
            self.changes.pop_front();
        }
        self.changes.push_back(MemberChange { entry, alive });
    }

    /// The next change in the set of live members.
    pub fn poll_change(&mut self) -> Option<MemberChange> {
        self.changes.pop_front()
    }

    fn send(&mut self, to: HostEntry, message: Message<'static>) {
        self.stats.sent += 1;
        self.out.push_back((to, message));
    }

    /// True for the messages this machine handles.
    pub fn is_membership_message(msg: &Message<'_>) -> bool {
        matches!(
            msg,
            Message::MemberProbe { .. }
                | Message::MemberProbeAck { .. }
                | Message::MemberUpdate { .. }
                | Message::MemberDigest { .. }
                | Message::MemberPull { .. }
                | Message::MemberCertPull { .. }
                | Message::MemberCerts { .. }
        )
    }

    /// A membership message from the super node `from` (its address and the static key its
    /// session authenticated). False when the message is not a membership message.
    pub fn handle_message(&mut self, now: Instant, from: HostEntry, msg: &Message<'_>) -> bool {
        if !Self::is_membership_message(msg) {
            return false;
        }
        if self.sync_wait.is_some_and(|(a, _, _)| a == from.addr) {
            self.sync_wait = None;
        }
        self.last_heard = Some(now);
        match msg {
            Message::MemberProbe { nonce } => {
                self.send(from, Message::MemberProbeAck { nonce: *nonce });
                self.heard_from(from);
            }
            Message::MemberProbeAck { nonce } => {
                // Only an answer on a session with the member's own key counts.
                let answered =
                    |w: &Watch| w.outstanding == Some(*nonce) || w.previous == Some(*nonce);
                let holds = self
                    .members
                    .get(&from.addr)
                    .is_some_and(|m| m.entry.static_key == from.static_key);
                if holds {
                    if let Some(w) = self.watches.get_mut(&from.addr) {
                        if answered(w) {
                            w.outstanding = None;
                            w.misses = 0;
                        }
                    }
                    if self.checks.get(&from.addr).is_some_and(answered) {
                        self.checks.remove(&from.addr);
                    }
                }
                self.heard_from(from);
            }
            Message::MemberUpdate { sync, events } => {
                // Signed events speak for their subject, whoever passes them on; a report of
                // another's failure counts (as a hint to check) only from a member.
                let member = self
                    .members
                    .get(&from.addr)
                    .is_some_and(|m| m.alive && m.entry.static_key == from.static_key);
                let mut changed = false;
                let mut missing: Vec<[u8; 32]> = Vec::new();
                for ev in events {
                    match (ev.alive, ev.signature.is_some()) {
                        (_, true) => match self.signed_event(now, *ev, !*sync, ev.entry == from) {
                            Some(c) => changed |= c,
                            None => {
                                if !missing.contains(&ev.entry.static_key) {
                                    missing.push(ev.entry.static_key);
                                }
                            }
                        },
                        (false, false) if member => self.hint_gone(now, *ev),
                        (true, false) => self.stats.unsigned += 1,
                        (false, false) => self.stats.dropped += 1,
                    }
                }
                self.pull_certificates(now, from, missing);
                if changed && *sync && now < self.started + STARTUP {
                    // Anti-entropy found this young view behind: others may be too, or hold
                    // what this one still lacks. Sync again at gossip pace, not in a whole
                    // interval.
                    self.next_sync = self.next_sync.min(now + self.cfg.gossip_interval);
                }
                self.heard_from(from);
            }
            Message::MemberCertPull { keys } => {
                let certs: Vec<Certificate> = keys
                    .iter()
                    .take(MAX_CERT_PULL)
                    .filter_map(|k| self.certs.get(k).cloned())
                    .collect();
                for chunk in certs.chunks(MAX_MEMBER_CERTS) {
                    self.send(
                        from,
                        Message::MemberCerts {
                            certs: chunk.to_vec(),
                        },
                    );
                }
            }
            Message::MemberCerts { certs } => {
                for c in certs {
                    // Only what was asked for: a stranger cannot fill the cache.
                    if self.pulled.contains_key(&c.dh_public) {
                        self.learn_certificate(now, c);
                    }
                }
            }
            Message::MemberDigest {
                level,
                bucket,
                hashes,
            } => {
                if hashes.len() != DIGEST_BUCKETS {
                    self.stats.dropped += 1;
                    return true;
                }
                self.heard_from(from);
                if *level == 0 {
                    let differing: Vec<usize> = (0..DIGEST_BUCKETS)
                        .filter(|&b| self.top[b] != hashes[b])
                        .collect();
                    if differing.is_empty() {
                        // In sync: say so (an empty pull), or the sender would take our
                        // silence for absence and try someone else.
                        self.send(from, Message::MemberPull { bucket: 0, mask: 0 });
                    }
                    for b in differing {
                        {
                            self.send(
                                from,
                                Message::MemberDigest {
                                    level: 1,
                                    bucket: b as u8,
                                    hashes: self.sub[b].to_vec(),
                                },
                            );
                        }
                    }
                } else {
                    let b = usize::from(*bucket);
                    let mut mask = 0u64;
                    for (s, h) in hashes.iter().enumerate() {
                        if self.sub[b][s] != *h {
                            mask |= 1 << s;
                        }
                    }
                    if mask != 0 {
                        self.send_bucket(from, b, mask);
                        self.send(
                            from,
                            Message::MemberPull {
                                bucket: b as u8,
                                mask,
                            },
                        );
                    }
                }
            }
            Message::MemberPull { bucket, mask } => {
                self.send_bucket(from, usize::from(*bucket), *mask);
            }
            _ => return false,
        }
        true
    }

    /// Ask `from` (which passed on events signed by these keys) for their certificates.
    fn pull_certificates(&mut self, now: Instant, from: HostEntry, keys: Vec<[u8; 32]>) {
        let room = MAX_PARKED.saturating_sub(self.pulled.len());
        let keys: Vec<[u8; 32]> = keys
            .into_iter()
            .filter(|k| {
                self.pulled
                    .get(k)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= PULL_AGAIN)
            })
            .take(room)
            .collect();
        for k in &keys {
            self.pulled.insert(*k, now);
        }
        for chunk in keys.chunks(MAX_CERT_PULL) {
            self.send(
                from,
                Message::MemberCertPull {
                    keys: chunk.to_vec(),
                },
            );
        }
    }

    /// The sender is evidently running: if this view holds it as gone, tell it so it can
    /// refute.
    fn heard_from(&mut self, from: HostEntry) {
        match self.members.get(&from.addr) {
            // A stranger becomes a member by announcing itself (its own event), not by talking.
            None => {}
            Some(m) if !m.alive && m.entry.static_key == from.static_key => {
                let ev = m.event();
                self.send(
                    from,
                    Message::MemberUpdate {
                        sync: true,
                        events: vec![ev],
                    },
                );
            }
            _ => {}
        }
    }

    /// Send `to` what this view holds in the sub-buckets `mask` of top bucket `bucket`.
    fn send_bucket(&mut self, to: HostEntry, bucket: usize, mask: u64) {
        if bucket >= DIGEST_BUCKETS {
            return;
        }
        let mut lo = [0u8; 32];
        lo[0] = (bucket as u8) << 2;
        let hi = if bucket + 1 < DIGEST_BUCKETS {
            let mut hi = [0u8; 32];
            hi[0] = ((bucket + 1) as u8) << 2;
            Bound::Excluded(Key(hi))
        } else {
            Bound::Unbounded
        };
        let mut events: Vec<MemberEvent> = self
            .by_key
            .range((Bound::Included(Key(lo)), hi))
            .filter(|(k, _)| mask & (1 << sub_bucket(k)) != 0)
            .map(|(_, a)| self.members[a])
            .filter(|m| !m.provisional)
            .map(|m| m.event())
            .collect();
        if top_bucket(&self.my_key) == bucket && mask & (1 << sub_bucket(&self.my_key)) != 0 {
            events.push(self.my_event());
        }
        for chunk in events.chunks(MAX_MEMBER_EVENTS) {
            self.send(
                to,
                Message::MemberUpdate {
                    sync: true,
                    events: chunk.to_vec(),
                },
            );
        }
    }

    /// The successors this super node watches: the nearest ones until
    /// [`MembershipConfig::monitors`] of them answer, so that when several in a row have died
    /// at once the next live one is watched too (up to three times as many).
    fn watched(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        let mut answering = 0;
        for (_, a) in self
            .ring
            .range((Bound::Excluded(self.my_key), Bound::Unbounded))
            .chain(self.ring.range(..self.my_key))
        {
            if answering >= self.cfg.monitors || out.len() >= self.cfg.monitors * 3 {
                break;
            }
            out.push(*a);
            if self.watches.get(a).is_none_or(|w| w.misses == 0) {
                answering += 1;
            }
        }
        out
    }

    /// Timers: probes, gossip rounds, anti-entropy, tombstone expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_probe {
            self.next_probe = now + self.cfg.probe_interval;
            self.probe(now);
        }
        if now >= self.next_check {
            self.next_check = now + self.cfg.probe_interval / 2;
            self.check(now);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.cfg.gossip_interval;
            self.gossip();
        }
        if let Some((_, until, tries)) = self.sync_wait {
            if now >= until {
                // No answer: that member may be gone. Try another, a few times per round.
                self.sync_wait = None;
                if tries < SYNC_TRIES {
                    self.send_digest(now, tries + 1);
                }
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + self.cfg.sync_interval;
            self.send_digest(now, 1);
            let ttl = self.cfg.tombstone_ttl;
            let expired: Vec<(SocketAddr, Key)> = self
                .members
                .iter()
                .filter(|(_, m)| !m.alive && now.saturating_duration_since(m.changed) >= ttl)
                .map(|(a, m)| (*a, m.key))
                .collect();
            for (addr, key) in expired {
                self.members.remove(&addr);
                if self.by_key.get(&key) == Some(&addr) {
                    self.by_key.remove(&key);
                }
            }
            // Certificates only of members (alive or departed), keys asked for, and this one:
            // any session peer's certificate is learnt, and must not stay.
            let me = self.me.static_key;
            let (by_key, pulled) = (&self.by_key, &self.pulled);
            self.certs.retain(|k, _| {
                *k == me || pulled.contains_key(k) || by_key.contains_key(&Key::of_static_key(k))
            });
            // Live members whose certificate is not known yet (from the host cache, say): ask
            // them for it, a few a round; it places them in the index ring.
            let missing: Vec<HostEntry> = self
                .ring
                .values()
                .map(|a| self.members[a].entry)
                .filter(|e| {
                    !self.certs.contains_key(&e.static_key)
                        && self
                            .pulled
                            .get(&e.static_key)
                            .is_none_or(|at| now.saturating_duration_since(*at) >= PULL_AGAIN)
                })
                .take(MAX_OWN_PULLS)
                .collect();
            for e in missing {
                self.pull_certificates(now, e, vec![e.static_key]);
            }
        }
        while self
            .parked
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) >= PARKED_FOR)
        {
            self.parked.pop_front();
            self.stats.dropped += 1;
        }
        self.pulled
            .retain(|_, at| now.saturating_duration_since(*at) < PARKED_FOR);
    }

    fn send_digest(&mut self, now: Instant, tries: u8) {
        if let Some(peer) = self.random_member() {
            self.sync_wait = Some((peer.addr, now + SYNC_ANSWER, tries));
            self.send(
                peer,
                Message::MemberDigest {
                    level: 0,
                    bucket: 0,
                    hashes: self.top.to_vec(),
                },
            );
        }
    }

    fn probe(&mut self, now: Instant) {
        let watched = self.watched();
        self.watches.retain(|a, _| watched.contains(a));
        for addr in watched {
            self.probe_one(now, addr, true);
        }
    }

    /// Probe the members others reported gone, and the claimed rebindings.
    fn check(&mut self, now: Instant) {
        let mut checks: Vec<SocketAddr> = self
            .checks
            .keys()
            .filter(|a| !self.watches.contains_key(a))
            .copied()
            .collect();
        // In a fixed order: runs with the same seed behave the same.
        checks.sort();
        for addr in checks {
            self.probe_one(now, addr, false);
        }
    }

    /// Probe one watched successor (`watched`) or reported member; declare it gone after
    /// [`MembershipConfig::probe_misses`] unanswered probes in a row.
    fn probe_one(&mut self, now: Instant, addr: SocketAddr, watched: bool) {
        let Some(m) = self.members.get(&addr).copied() else {
            self.checks.remove(&addr);
            return;
        };
        let connected = self.last_heard.is_some_and(|t| {
            now.saturating_duration_since(t) <= self.cfg.probe_interval * self.cfg.probe_misses
        });
        let w = if watched {
            self.watches.entry(addr).or_default()
        } else {
            self.checks.entry(addr).or_default()
        };
        if w.outstanding.is_some() {
            w.misses += 1;
        }
        // A reported failure was seen by the reporter's own probes already: two misses here
        // (at twice the pace) confirm it.
        let misses = if watched {
            self.cfg.probe_misses
        } else {
            CHECK_MISSES.min(self.cfg.probe_misses)
        };
        if w.misses >= misses && connected {
            self.stats.declared_gone += 1;
            self.checks.remove(&addr);
            if m.alive {
                self.apply(
                    now,
                    MemberEvent {
                        alive: false,
                        incarnation: m.incarnation,
                        entry: m.entry,
                        signature: None,
                    },
                    Origin::OwnProbe,
                    true,
                );
            }
            return;
        }
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        w.previous = w.outstanding.or(w.previous);
        w.outstanding = Some(nonce);
        self.send(m.entry, Message::MemberProbe { nonce });
    }

    fn gossip(&mut self) {
        if self.rumors.is_empty() {
            return;
        }
        // A burst (many joins at once) drains a few batches per round.
        for _ in 0..4 {
            if self.rumors.is_empty() {
                break;
            }
            let n = self.rumors.len().min(MAX_MEMBER_EVENTS);
            let events: Vec<MemberEvent> = self.rumors.drain(..n).collect();
            for to in self.sample(self.cfg.fanout) {
                self.send(
                    to,
                    Message::MemberUpdate {
                        sync: false,
                        events: events.clone(),
                    },
                );
            }
        }
    }

    /// This super node leaves (shutdown, demotion): tell twice the usual number of members
    /// at once, since it will not be around to gossip further.
    pub fn leave(&mut self) {
        let ev = self.sign(MemberEvent {
            alive: false,
            incarnation: self.incarnation,
            entry: self.me,
            signature: None,
        });
        for to in self.sample(self.cfg.fanout * 2) {
            self.send(
                to,
                Message::MemberUpdate {
                    sync: false,
                    events: vec![ev],
                },
            );
        }
    }

    /// When [`Membership::handle_timeout`] wants calling next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_probe.min(self.next_sync);
        if !self.checks.is_empty() {
            t = t.min(self.next_check);
        }
        if let Some((_, until, _)) = self.sync_wait {
            t = t.min(until);
        }
        if !self.rumors.is_empty() {
            t = t.min(self.next_gossip);
        }
        t
    }

    /// The next message to send, and to whom.
    pub fn poll_output(&mut self) -> Option<(HostEntry, Message<'static>)> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::testkit::{TestNetwork, TEST_WALL};

    /// Every test starts at this wall-clock second (the test certificates are valid then).
    const INC: u32 = TEST_WALL.0 as u32;

    fn identity(i: u16) -> LocalIdentity {
        TestNetwork::new(1).identity(&format!("sn{i}"))
    }

    fn entry(i: u16) -> HostEntry {
        HostEntry {
            addr: SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4000)),
            static_key: identity(i).device.dh_public(),
        }
    }

    fn machine(i: u16, known: &[HostEntry], now: Instant) -> Membership {
        let mut seed = [7u8; 32];
        seed[..2].copy_from_slice(&i.to_be_bytes());
        Membership::new(
            MembershipConfig::new(seed),
            identity(i),
            entry(i),
            INC,
            known,
            now,
        )
    }

    /// What another says of super node `i` (unsigned).
    fn ev(alive: bool, incarnation: u32, i: u16) -> MemberEvent {
        MemberEvent {
            alive,
            incarnation,
            entry: entry(i),
            signature: None,
        }
    }

    /// What super node `i` says of itself (signed).
    fn signed(alive: bool, incarnation: u32, i: u16) -> MemberEvent {
        signed_by(i, ev(alive, incarnation, i))
    }

    /// `e` signed by super node `i` (whatever it says).
    fn signed_by(i: u16, e: MemberEvent) -> MemberEvent {
        MemberEvent {
            signature: Some(identity(i).device.sign(MEMBER_CONTEXT, &e.signed_bytes())),
            ..e
        }
    }

    /// Deliver every queued message between the machines (instantly, losing those to
    /// `down`) until nothing moves. Each receiver learns the sender's certificate, as a session
    /// with it would prove.
    fn settle(ms: &mut [Membership], now: Instant, down: &[u16]) {
        loop {
            let mut moved = false;
            for i in 0..ms.len() {
                while let Some((to, msg)) = ms[i].poll_output() {
                    moved = true;
                    let j = ms.iter().position(|m| m.me().addr == to.addr);
                    let Some(j) = j else { continue };
                    if down.contains(&(j as u16)) || down.contains(&(i as u16)) {
                        continue;
                    }
                    let from = ms[i].me();
                    let cert = ms[i].identity.certificate.clone();
                    ms[j].learn_certificate(now, &cert);
                    ms[j].handle_message(now, from, &msg);
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn update(events: Vec<MemberEvent>) -> Message<'static> {
        Message::MemberUpdate {
            sync: false,
            events,
        }
    }

    #[test]
    fn a_hinted_super_node_brings_its_whole_view_at_once() {
        let now = Instant::now();
        // Super node 0 knows nobody; 1 knows 2 to 5 (from their own signed word). Node 0 learns
        // of 1 by a link: one digest exchange (and a certificate pull), with no periodic sync
        // due, gives 0 the whole view.
        let mut ms = vec![machine(0, &[], now), machine(1, &[], now)];
        for i in 2..6 {
            ms[1].learn_certificate(now, &identity(i).certificate);
            assert!(ms[1].apply(now, signed(true, INC, i), Origin::Signed, false));
        }
        for m in ms.iter_mut() {
            // The start-up sync (to nobody, or to a member that is not in this test).
            m.handle_timeout(now);
            while m.poll_output().is_some() {}
        }
        let t = now + Duration::from_millis(100);
        ms[0].hint(t, entry(1));
        settle(&mut ms, t, &[]);
        let mut view: Vec<SocketAddr> = ms[0].alive().map(|e| e.addr).collect();
        view.sort();
        let mut want: Vec<SocketAddr> = (1..6).map(|i| entry(i).addr).collect();
        want.sort();
        assert_eq!(view, want);
        assert!(ms[0].stats().certificates >= 4, "{:?}", ms[0].stats());
    }

    #[test]
    fn incarnations_order_reports_and_gone_wins_ties() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        let s = Origin::Signed;
        assert!(m.apply(now, signed(true, 5, 1), s, true));
        assert!(!m.apply(now, signed(true, 5, 1), s, true), "duplicate");
        assert!(!m.apply(now, signed(true, 4, 1), s, true), "older");
        assert!(
            m.apply(now, signed(false, 5, 1), s, true),
            "gone beats alive at equal incarnation"
        );
        assert!(!m.is_alive(entry(1).addr));
        assert!(
            !m.apply(now, signed(true, 5, 1), s, true),
            "alive does not beat gone at equal"
        );
        assert!(
            m.apply(now, signed(true, 6, 1), s, true),
            "a newer incarnation comes back"
        );
        assert!(m.is_alive(entry(1).addr));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn only_the_subjects_signature_makes_news_and_others_reports_are_checked() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        for i in [1, 2] {
            m.learn_certificate(now, &identity(i).certificate);
            assert!(m.apply(now, signed(true, INC, i), Origin::Signed, false));
        }
        while m.poll_output().is_some() {}
        // Member 2 says 1 is gone, and that 3 (never seen) is alive: the first is checked,
        // the second dropped; 1 stays alive.
        m.handle_message(
            now,
            entry(2),
            &update(vec![ev(false, INC, 1), ev(true, INC, 3)]),
        );
        assert!(m.is_alive(entry(1).addr));
        assert!(!m.is_alive(entry(3).addr));
        assert_eq!(m.stats().hints, 1);
        assert_eq!(m.stats().unsigned, 1);
        // A forged signature: counted, ignored.
        let mut forged = signed(false, INC + 1, 1);
        forged.signature = Some([7; 64]);
        m.handle_message(now, entry(2), &update(vec![forged]));
        assert_eq!(m.stats().bad_signature, 1);
        assert!(m.is_alive(entry(1).addr));
        // 1 signs that it leaves: it is gone.
        m.handle_message(now, entry(2), &update(vec![signed(false, INC, 1)]));
        assert!(!m.is_alive(entry(1).addr));
        // A certificate learnt from a session with a non-member (a client) does not stay.
        m.learn_certificate(now, &identity(40).certificate);
        assert!(m.certs.contains_key(&entry(40).static_key));
        m.handle_timeout(now + Duration::from_secs(6));
        assert!(!m.certs.contains_key(&entry(40).static_key));
        assert!(
            m.certs.contains_key(&entry(1).static_key),
            "a departed member's stays"
        );
    }

    #[test]
    fn a_live_key_or_address_never_moves_without_proof() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        for i in [1, 2] {
            m.learn_certificate(now, &identity(i).certificate);
            assert!(m.apply(now, signed(true, INC, i), Origin::Signed, false));
        }
        while m.poll_output().is_some() {}
        let elsewhere: SocketAddr = "198.18.200.10:4000".parse().unwrap();
        // The attack, unsigned: 1's key at another address, then gone there.
        let moved = MemberEvent {
            entry: HostEntry {
                addr: elsewhere,
                ..entry(1)
            },
            ..ev(true, INC, 1)
        };
        let gone = MemberEvent {
            alive: false,
            ..moved
        };
        m.handle_message(now, entry(2), &update(vec![moved, gone]));
        assert!(m.is_alive(entry(1).addr));
        assert_eq!(m.alive().filter(|e| *e == entry(1)).count(), 1);
        // Signed by 2 itself: 2's key at 1's address, passed on by 2 from its own address:
        // refused (only a session at 1's address with 2's key could prove it).
        let hijack = MemberEvent {
            entry: HostEntry {
                addr: entry(1).addr,
                ..entry(2)
            },
            ..ev(true, INC + 1, 2)
        };
        let hijack = signed_by(2, hijack);
        m.handle_message(now, entry(2), &update(vec![hijack]));
        assert_eq!(m.stats().rebinds_refused, 1);
        assert_eq!(m.member(entry(1).addr).map(|e| e.entry), Some(entry(1)));
        assert!(m.is_alive(entry(2).addr));
        // A replay of 1's own old signed departure from a former address, and of its old
        // "alive" there: old news while it lives here at a newer incarnation.
        let former = HostEntry {
            addr: elsewhere,
            ..entry(1)
        };
        let old_gone = signed_by(
            1,
            MemberEvent {
                entry: former,
                ..ev(false, INC - 5, 1)
            },
        );
        let old_alive = signed_by(
            1,
            MemberEvent {
                entry: former,
                ..ev(true, INC - 3, 1)
            },
        );
        m.handle_message(now, entry(2), &update(vec![old_gone, old_alive]));
        assert_eq!(
            m.alive()
                .filter(|e| e.static_key == entry(1).static_key)
                .count(),
            1
        );
        assert!(m.is_alive(entry(1).addr));
        // A report of this node's own death far in the future is not refuted (it would push
        // the incarnation past what anyone accepts).
        let before = m.incarnation();
        m.handle_message(now, entry(2), &update(vec![ev(false, u32::MAX - 1, 0)]));
        assert_eq!(m.incarnation(), before);
    }

    #[test]
    fn a_proven_move_rebinds_the_key() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        m.learn_certificate(now, &identity(1).certificate);
        assert!(m.apply(now, signed(true, INC, 1), Origin::Signed, false));
        while m.poll_output().is_some() {}
        // 1 restarted at a new address and says so.
        let new = HostEntry {
            addr: "198.18.9.9:4000".parse().unwrap(),
            ..entry(1)
        };
        let said = MemberEvent {
            entry: new,
            ..ev(true, INC + 5, 1)
        };
        let said = signed_by(1, said);
        m.handle_message(now, entry(2), &update(vec![said]));
        assert!(m.is_alive(entry(1).addr), "not moved on another's word");
        // 1 itself says so, over a session at its new address: proof.
        m.handle_message(now, new, &update(vec![said]));
        assert!(!m.is_alive(entry(1).addr));
        assert!(m.is_alive(new.addr));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_super_node_refutes_its_own_death() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        let before = m.incarnation();
        // A stranger's report is not even a hint.
        m.handle_message(now, entry(2), &update(vec![ev(false, before, 0)]));
        assert_eq!(m.incarnation(), before);
        m.learn_certificate(now, &identity(2).certificate);
        m.apply(now, signed(true, INC, 2), Origin::Signed, false);
        while m.poll_output().is_some() {}
        // A member's is refuted.
        m.handle_message(now, entry(2), &update(vec![ev(false, before, 0)]));
        assert_eq!(m.incarnation(), before + 1);
        assert_eq!(m.stats().refuted, 1);
        // An older report changes nothing.
        m.handle_message(now, entry(2), &update(vec![ev(false, before, 0)]));
        assert_eq!(m.incarnation(), before + 1);
        // The refutation is gossiped to the members, signed.
        m.handle_timeout(now);
        let mut saw = false;
        while let Some((to, msg)) = m.poll_output() {
            if let Message::MemberUpdate { events, .. } = msg {
                assert_eq!(to, entry(2));
                saw |= events.contains(&signed(true, before + 1, 0));
            }
        }
        assert!(saw);
    }

    #[test]
    fn a_silent_successor_is_declared_gone_and_everyone_learns() {
        let mut now = Instant::now();
        let all: Vec<HostEntry> = (0..8).map(entry).collect();
        let mut ms: Vec<Membership> = (0..8).map(|i| machine(i, &all, now)).collect();
        // A few rounds: everyone gossips its own incarnation (the entries above are only
        // provisional).
        for _ in 0..6 {
            now += Duration::from_secs(1);
            for m in ms.iter_mut() {
                m.handle_timeout(now);
            }
            settle(&mut ms, now, &[]);
        }
        assert!(ms.iter().all(|m| m.len() == 7));
        assert!(ms.iter().all(|m| m
            .members
            .values()
            .all(|x| x.incarnation == INC && !x.provisional)));
        // Node 5 stops answering: its watchers find it gone, and every other node checks
        // their report with probes of its own before it believes it.
        for _ in 0..14 {
            now += Duration::from_secs(2);
            for m in ms.iter_mut() {
                m.handle_timeout(now);
            }
            settle(&mut ms, now, &[5]);
        }
        for (i, m) in ms.iter().enumerate() {
            if i != 5 {
                assert!(!m.is_alive(entry(5).addr), "node {i} still has 5");
                assert_eq!(m.len(), 6);
            }
        }
        let declared: u64 = ms.iter().map(|m| m.stats().declared_gone).sum();
        assert!(declared >= 1);
        // Cut off, node 5 heard nobody: it declared nobody gone.
        assert_eq!(ms[5].stats().declared_gone, 0);
        assert_eq!(ms[5].len(), 7);
        // Node 5 comes back: it hears it was declared gone, refutes, and is alive again.
        for _ in 0..4 {
            now += Duration::from_secs(5);
            for m in ms.iter_mut() {
                m.handle_timeout(now);
            }
            settle(&mut ms, now, &[]);
        }
        assert!(ms[5].stats().refuted >= 1);
        for m in &ms {
            assert_eq!(m.len(), 7);
        }
    }

    #[test]
    fn anti_entropy_gives_a_newcomer_the_whole_view() {
        let now = Instant::now();
        // A knows 300 super nodes (their signed word, their certificates); B knows only A.
        let mut a = machine(0, &[], now);
        for i in 2..302 {
            a.learn_certificate(now, &identity(i).certificate);
            a.apply(now, signed(true, INC, i), Origin::Signed, false);
        }
        let mut b = machine(1, &[entry(0)], now);
        a.learn_certificate(now, &identity(1).certificate);
        b.learn_certificate(now, &identity(0).certificate);
        while a.poll_output().is_some() {}
        // B's first sync goes to A (the only one it knows).
        b.handle_timeout(now);
        let mut to_a = Vec::new();
        let mut to_b = Vec::new();
        while let Some((to, msg)) = b.poll_output() {
            if to.addr == entry(0).addr {
                to_a.push(msg);
            }
        }
        for _ in 0..8 {
            for msg in to_a.drain(..) {
                a.handle_message(now, entry(1), &msg);
            }
            while let Some((to, msg)) = a.poll_output() {
                if to.addr == entry(1).addr {
                    to_b.push(msg);
                }
            }
            for msg in to_b.drain(..) {
                b.handle_message(now, entry(0), &msg);
            }
            while let Some((to, msg)) = b.poll_output() {
                if to.addr == entry(0).addr {
                    to_a.push(msg);
                }
            }
        }
        assert_eq!(b.len(), 301, "B knows A's 300 and A");
        assert_eq!(a.len(), 301, "A learnt B");
        assert_eq!(a.top, b.top, "the digests agree");
    }

    #[test]
    fn malformed_digests_and_the_member_cap_are_counted() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        m.cfg.max_members = 3;
        let s = Origin::Signed;
        for i in 1..10 {
            m.apply(now, signed(true, 1, i), s, true);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.stats().dropped, 6);
        // Full of tombstones and members: a new live member takes the oldest tombstone's place.
        m.apply(now, signed(false, 1, 1), s, true);
        assert_eq!(m.len(), 2);
        assert!(m.apply(now, signed(true, 1, 20), s, true));
        assert_eq!(m.len(), 3);
        assert!(m.member(entry(1).addr).is_none(), "the tombstone made room");
        assert!(m.handle_message(
            now,
            entry(1),
            &Message::MemberDigest {
                level: 0,
                bucket: 0,
                hashes: vec![1, 2, 3],
            },
        ));
        assert_eq!(m.stats().dropped, 7);
        assert!(!m.handle_message(now, entry(1), &Message::KeepAlive));
    }

    #[test]
    fn tombstones_expire_after_their_time() {
        let now = Instant::now();
        let mut m = machine(0, &[], now);
        m.apply(now, signed(false, 3, 1), Origin::Signed, true);
        assert_eq!(m.members.len(), 1);
        m.handle_timeout(now + Duration::from_secs(3599));
        assert_eq!(m.members.len(), 1);
        m.handle_timeout(now + Duration::from_secs(3605));
        assert!(m.members.is_empty());
        // Gone, an old "alive" could come back: incarnations are what stops it while the
        // tombstone lasts.
        assert!(m.apply(now, signed(true, 3, 1), Origin::Signed, true));
    }
}
