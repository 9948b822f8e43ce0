//! A message-level simulator of the global index at scale.
//!
//! [`IndexSim`] runs one real [`Dht`] per super node (tens of thousands of them) and hands
//! their messages to each other through a virtual-time event queue, with latencies from a
//! two-dimensional coordinate model (every pair 20 to 200 ms of round-trip time). Records are
//! real signed [`PresenceRecord`]s, verified on every store and answer as in production. What
//! it leaves out, to reach 10,000 super nodes and 100,000 users on one core:
//!
//! * **Sessions**: messages go straight from one `Dht` to another, without the Noise session
//!   that carries them in production (measured separately: `benches/crypto`). Bytes are
//!   counted with the session's framing (14-byte header, 16-byte tag, 28 bytes of UDP/IP).
//! * **Membership**: every super node shares one [`Ring`], in which a super node that fails
//!   stays for [`IndexSimConfig::detection_delay`] (its ring neighbours miss its pings, then
//!   gossip spreads the news) and a new one appears after [`IndexSimConfig::join_delay`]. The
//!   cost of that gossip is added to the maintenance bytes from a model
//!   ([`IndexReport::membership_bytes_per_sn_sec`]).
//!
//! Super nodes can be made to lie ([`Behaviour`]). Searches start at honest super nodes (a
//! node attaches to the fastest of five probed); see `benches/benches/index_scale.rs` for the
//! benchmark and `sim/tests/index.rs` for the adversarial tests.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_core::handshake::Capabilities;
use natter_core::identity::{
    Authority, Certificate, DeviceId, DeviceIdentity, TrustedAuthorities, UnixTime, UserName,
};
use natter_core::presence::PresenceRecord;
use natter_core::rng::Rng;
use natter_core::wire::message::{HostEntry, Message};
use natter_overlay::dht::{ClientSearches, Dht, DhtConfig, DhtOutput, Origin, Ring, SearchResult};

/// Bytes a message costs on the wire beyond its encoding: data header, AEAD tag, UDP/IPv4.
pub const FRAMING_BYTES: usize = 14 + 16 + 28;

/// The latency model: hosts sit in a unit square; the round-trip time between two grows
/// linearly with their distance from 20 ms (same spot) to 200 ms (opposite corners). This
/// returns the one-way delay.
pub fn one_way(a: (f64, f64), b: (f64, f64)) -> Duration {
    let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() / std::f64::consts::SQRT_2;
    Duration::from_secs_f64((0.020 + 0.180 * d) / 2.0)
}

/// How a super node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Answers searches with a record whose content it changed (the signature no longer
    /// verifies).
    Forge,
    /// Answers searches with the first record it ever got for the user (stale once the user
    /// published a newer one), or "not found".
    Stale,
    /// Ignores searches.
    Drop,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct IndexSimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Super nodes at the start (churn replaces those that leave).
    pub super_nodes: usize,
    /// Users, each with one device and a record.
    pub users: usize,
    /// Fraction of users online (the others logged out within the retention period and are
    /// found as offline).
    pub online: f64,
    /// The index settings of every super node.
    pub dht: DhtConfig,
    /// Super nodes per /48 in the ring.
    pub max_per_prefix: usize,
    /// How long a failed super node stays in everyone's ring.
    pub detection_delay: Duration,
    /// How long a new super node takes to appear in everyone's ring.
    pub join_delay: Duration,
    /// Median super-node session (Pareto, shape [`IndexSimConfig::session_shape`]); `None`:
    /// no churn.
    pub median_session: Option<Duration>,
    /// Pareto shape of session lengths (1.5: heavy-tailed).
    pub session_shape: f64,
    /// Online users publish a fresh record this often.
    pub refresh: Duration,
    /// Fraction of super nodes that lie, and how (spread evenly over the behaviours given).
    pub adversaries: f64,
    /// The lying behaviours.
    pub adversary_behaviours: Vec<Behaviour>,
    /// Clients give a search up after this long.
    pub client_timeout: Duration,
}

impl IndexSimConfig {
    /// Defaults for `super_nodes` and `users`: 30 % online, 4 h median sessions, 30 s to
    /// detect a failure, 5 s to spread a join, refresh every 30 minutes, no adversaries.
    pub fn new(seed: u64, super_nodes: usize, users: usize) -> Self {
        Self {
            seed,
            super_nodes,
            users,
            online: 0.3,
            dht: DhtConfig::default(),
            max_per_prefix: 4,
            detection_delay: Duration::from_secs(30),
            join_delay: Duration::from_secs(5),
            median_session: Some(Duration::from_secs(4 * 3600)),
            session_shape: 1.5,
            refresh: Duration::from_secs(1800),
            adversaries: 0.0,
            adversary_behaviours: vec![Behaviour::Forge, Behaviour::Stale, Behaviour::Drop],
            client_timeout: Duration::from_secs(3),
        }
    }
}

/// What the lookups of one phase measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseReport {
    /// Lookups of existing users.
    pub lookups: u64,
    /// ... that found the user's latest record.
    pub found: u64,
    /// ... that found only an older record.
    pub stale: u64,
    /// ... answered "not found" (false "not found").
    pub false_not_found: u64,
    /// ... answered "unavailable".
    pub unavailable: u64,
    /// Lookups of names nobody has.
    pub absent_lookups: u64,
    /// ... answered "not found".
    pub absent_not_found: u64,
    /// Latencies of successful lookups, ms: p50, p99, max.
    pub latency_ms: [f64; 3],
    /// Hops of successful lookups (client to its super node counts one): p50, p99.
    pub hops: [u8; 2],
}

impl PhaseReport {
    /// Found fraction of lookups of existing users.
    pub fn success(&self) -> f64 {
        if self.lookups == 0 {
            return 1.0;
        }
        self.found as f64 / self.lookups as f64
    }
}

/// A whole run's results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexReport {
    /// Phases by name, in order.
    pub phases: Vec<(String, PhaseReport)>,
    /// Search messages (queries and answers, client legs included) per lookup.
    pub messages_per_lookup: f64,
    /// Bytes per super node per second for storing, refreshing and repairing records.
    pub store_bytes_per_sn_sec: f64,
    /// Modelled membership-maintenance bytes per super node per second.
    pub membership_bytes_per_sn_sec: f64,
    /// Estimated memory per super node, bytes (records, ring, cache).
    pub memory_per_sn: f64,
    /// Super nodes that left (churn and mass failure) and joined.
    pub left: u64,
    /// See `left`.
    pub joined: u64,
    /// Answers refused because a record did not verify.
    pub forged_refused: u64,
    /// Virtual seconds simulated.
    pub virtual_secs: f64,
}

#[derive(Debug)]
struct Sn {
    dht: Dht,
    entry: HostEntry,
    pos: (f64, f64),
    alive: bool,
    behaviour: Behaviour,
    first_seen: HashMap<UserName, PresenceRecord>,
    timer_at: Option<Duration>,
}

#[derive(Debug)]
struct User {
    device: DeviceIdentity,
    certificate: Certificate,
    latest: PresenceRecord,
    /// When `latest` was published, and the sequence before it: a lookup that starts while
    /// a new record is still on its way may rightly find the previous one.
    published: Duration,
    previous: u64,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        message: Message<'static>,
    },
    Search {
        sn: usize,
        query: u32,
        user: UserName,
    },
    Reply {
        message: Message<'static>,
    },
    Timer {
        sn: usize,
    },
    ClientTimer,
    Leave {
        sn: usize,
    },
    RingRemove {
        sn: usize,
    },
    RingAdd {
        sn: usize,
    },
    Refresh {
        user: usize,
    },
    Lookup {
        user: Option<usize>,
        phase: usize,
    },
}

#[derive(Debug)]
struct Pending {
    phase: usize,
    expect: Option<(DeviceId, u64)>,
}

/// The simulator. See the [module documentation](self).
pub struct IndexSim {
    cfg: IndexSimConfig,
    rng: Rng,
    start: Instant,
    wall0: UnixTime,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Ev>,
    ring: Ring,
    sns: Vec<Sn>,
    by_key: HashMap<[u8; 32], usize>,
    users: Vec<User>,
    authority: Authority,
    trusted: TrustedAuthorities,
    clients: ClientSearches,
    pending: HashMap<u32, Pending>,
    phases: Vec<(String, PhaseReport, Vec<f64>, Vec<u8>)>,
    search_messages: u64,
    lookups: u64,
    store_bytes: u64,
    left: u64,
    joined: u64,
}

impl std::fmt::Debug for IndexSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSim")
            .field("super_nodes", &self.sns.len())
            .field("users", &self.users.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn message_bytes(m: &Message<'_>) -> usize {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    b.len() + FRAMING_BYTES
}

impl IndexSim {
    /// A network of `cfg.super_nodes` super nodes and `cfg.users` users, every user's record
    /// published through its super node (call [`IndexSim::run_until`] to let them settle).
    pub fn new(cfg: IndexSimConfig) -> Self {
        let mut rng = Rng::from_seed(cfg.seed);
        let authority = Authority::generate(&mut rng);
        let trusted = TrustedAuthorities::new([authority.public()]);
        let wall0 = UnixTime(1_800_000_000);
        let clients = ClientSearches::new(trusted.clone(), cfg.dht.retention, cfg.client_timeout);
        let mut sim = Self {
            ring: Ring::new(cfg.max_per_prefix),
            rng,
            start: Instant::now(),
            wall0,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            sns: Vec::new(),
            by_key: HashMap::new(),
            users: Vec::new(),
            authority,
            trusted,
            clients,
            pending: HashMap::new(),
            phases: Vec::new(),
            search_messages: 0,
            lookups: 0,
            store_bytes: 0,
            left: 0,
            joined: 0,
            cfg,
        };
        let adversaries = (sim.cfg.super_nodes as f64 * sim.cfg.adversaries).round() as usize;
        for i in 0..sim.cfg.super_nodes {
            let behaviour = if i < adversaries && !sim.cfg.adversary_behaviours.is_empty() {
                sim.cfg.adversary_behaviours[i % sim.cfg.adversary_behaviours.len()]
            } else {
                Behaviour::Honest
            };
            let sn = sim.new_sn(behaviour);
            sim.ring.insert(sim.sns[sn].entry);
            sim.schedule_leave(sn, true);
        }
        for u in 0..sim.cfg.users {
            sim.new_user(u);
        }
        sim
    }

    fn new_sn(&mut self, behaviour: Behaviour) -> usize {
        let i = self.sns.len();
        let mut static_key = self.rng.bytes32();
        static_key[0] = 0x40;
        // One /48 each (the ring caps super nodes per /48).
        let addr = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0x0db8 + (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                0,
                1,
            )),
            4000,
        );
        let entry = HostEntry { addr, static_key };
        let dht = Dht::new(self.cfg.dht.clone(), entry, self.trusted.clone());
        let pos = (self.rng.unit(), self.rng.unit());
        self.by_key.insert(static_key, i);
        self.sns.push(Sn {
            dht,
            entry,
            pos,
            alive: true,
            behaviour,
            first_seen: HashMap::new(),
            timer_at: None,
        });
        i
    }

    /// The name of user `i` (also for users that do not exist: any `i`).
    pub fn user_name(i: usize) -> UserName {
        UserName::parse(&format!("user{i}")).expect("valid")
    }

    fn new_user(&mut self, i: usize) {
        let device = DeviceIdentity::generate(&mut self.rng);
        let name = Self::user_name(i);
        let retention = self.cfg.dht.retention.as_secs();
        let certificate = self.authority.certify(
            &name,
            device.dh_public(),
            device.signing_public(),
            UnixTime(self.wall0.0 - retention - 86_400),
            UnixTime(self.wall0.0 + 30 * 86_400),
        );
        let online = self.rng.unit() < self.cfg.online;
        // Offline users logged out at some time within the retention period.
        let signed = if online {
            self.wall0
        } else {
            UnixTime(self.wall0.0 - (self.rng.unit() * (retention as f64 * 0.9)) as u64)
        };
        let latest = Self::sign(&device, &certificate, online, 1, signed);
        self.users.push(User {
            device,
            certificate,
            latest,
            published: self.now,
            previous: 1,
        });
        self.publish(i);
        if online {
            let first = self.cfg.refresh.mul_f64(self.rng.unit());
            self.schedule(first, Ev::Refresh { user: i });
        }
    }

    fn sign(
        device: &DeviceIdentity,
        certificate: &Certificate,
        online: bool,
        sequence: u64,
        at: UnixTime,
    ) -> PresenceRecord {
        PresenceRecord::sign(
            device,
            certificate.clone(),
            online,
            vec![],
            None,
            vec![],
            3,
            Capabilities::VOICE,
            sequence,
            at,
        )
    }

    fn wall(&self) -> UnixTime {
        UnixTime(self.wall0.0 + self.now.as_secs())
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn one_way(a: (f64, f64), b: (f64, f64)) -> Duration {
        one_way(a, b)
    }

    /// Schedule the end of `sn`'s session. A super node present at the start has been up for
    /// a while already: it gets the residual of a session (a uniform fraction of one).
    fn schedule_leave(&mut self, sn: usize, residual: bool) {
        let Some(median) = self.cfg.median_session else {
            return;
        };
        // Pareto: median = scale * 2^(1/shape).
        let shape = self.cfg.session_shape;
        let scale = median.as_secs_f64() / 2f64.powf(1.0 / shape);
        let u = 1.0 - self.rng.unit();
        let mut session = scale / u.powf(1.0 / shape);
        if residual {
            session *= self.rng.unit();
        }
        self.schedule(Duration::from_secs_f64(session), Ev::Leave { sn });
    }

    /// A client attached to super nodes: the fastest of five random live, honest ones (an
    /// ordinary node attaches to the fastest it probes).
    fn attach(&mut self) -> ((f64, f64), usize) {
        let pos = (self.rng.unit(), self.rng.unit());
        let mut best: Option<(Duration, usize)> = None;
        let mut tries = 0;
        for _ in 0..100_000 {
            if tries == 5 {
                break;
            }
            let i = (self.rng.u64() % self.sns.len() as u64) as usize;
            let s = &self.sns[i];
            if !s.alive || s.behaviour != Behaviour::Honest || !self.ring.contains(s.entry.addr) {
                continue;
            }
            tries += 1;
            let d = Self::one_way(pos, s.pos);
            if best.is_none_or(|(b, _)| d < b) {
                best = Some((d, i));
            }
        }
        (pos, best.expect("some live super node").1)
    }

    fn publish(&mut self, user: usize) {
        let (pos, sn) = self.attach();
        let delay = Self::one_way(pos, self.sns[sn].pos);
        let record = self.users[user].latest.clone();
        let message = Message::IndexStore {
            replicate: true,
            record: Box::new(record),
        };
        self.store_bytes += message_bytes(&message) as u64;
        self.schedule(
            delay,
            Ev::Deliver {
                to: sn,
                from: usize::MAX,
                message,
            },
        );
    }

    /// Start a lookup of user `user` (`None`: a name nobody has) counted in phase `phase`,
    /// after `after`.
    pub fn lookup_at(&mut self, after: Duration, user: Option<usize>, phase: usize) {
        self.schedule(after, Ev::Lookup { user, phase });
    }

    /// Add a measuring phase; returns its index for [`IndexSim::lookup_at`].
    pub fn phase(&mut self, name: &str) -> usize {
        self.phases.push((
            name.to_string(),
            PhaseReport::default(),
            Vec::new(),
            Vec::new(),
        ));
        self.phases.len() - 1
    }

    /// Fail `fraction` of the live super nodes at once, now.
    pub fn mass_failure(&mut self, fraction: f64) {
        let live: Vec<usize> = (0..self.sns.len()).filter(|&i| self.sns[i].alive).collect();
        let n = (live.len() as f64 * fraction).round() as usize;
        let mut chosen = live;
        for k in 0..n {
            let j = k + (self.rng.u64() % (chosen.len() - k) as u64) as usize;
            chosen.swap(k, j);
        }
        for &sn in &chosen[..n] {
            self.fail(sn, false);
        }
    }

    fn fail(&mut self, sn: usize, replace: bool) {
        if !self.sns[sn].alive {
            return;
        }
        self.sns[sn].alive = false;
        self.left += 1;
        let delay = self.cfg.detection_delay;
        self.schedule(delay, Ev::RingRemove { sn });
        if replace {
            let behaviour = self.sns[sn].behaviour;
            let new = self.new_sn(behaviour);
            self.joined += 1;
            let delay = self.cfg.join_delay;
            self.schedule(delay, Ev::RingAdd { sn: new });
            self.schedule_leave(new, false);
        }
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// A random user index.
    pub fn random_user(&mut self) -> usize {
        (self.rng.u64() % self.users.len() as u64) as usize
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Live super nodes.
    pub fn live_super_nodes(&self) -> usize {
        self.sns.iter().filter(|s| s.alive).count()
    }

    /// Run every event up to `t` (virtual time since the start).
    pub fn run_until(&mut self, t: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > t {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(ev) = self.events.remove(&seq) {
                self.handle(ev);
            }
        }
        self.now = t;
    }

    fn ring_changed(&mut self) {
        let now = self.instant();
        for i in 0..self.sns.len() {
            if self.sns[i].alive {
                self.sns[i].dht.ring_changed(now);
                self.rearm(i);
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.instant();
        let wall = self.wall();
        match ev {
            Ev::Deliver { to, from, message } => {
                if !self.sns[to].alive {
                    return;
                }
                if from == usize::MAX {
                    if let Message::IndexStore { record, .. } = message {
                        let s = &mut self.sns[to];
                        s.dht.publish(now, wall, &self.ring, *record);
                    }
                } else {
                    self.deliver(to, from, message);
                }
                self.drain(to);
            }
            Ev::Search { sn, query, user } => {
                if !self.sns[sn].alive {
                    return;
                }
                let s = &mut self.sns[sn];
                s.dht.search(
                    now,
                    wall,
                    &self.ring,
                    Origin::Client {
                        client: u64::from(query),
                        query,
                    },
                    user,
                );
                self.drain(sn);
            }
            Ev::Reply { message } => {
                if let Some((query, outcome)) = self.clients.handle_message(now, wall, &message) {
                    self.finish_lookup(query, outcome);
                }
            }
            Ev::ClientTimer => {
                for (query, outcome) in self.clients.handle_timeout(now) {
                    self.finish_lookup(query, outcome);
                }
            }
            Ev::Timer { sn } => {
                let s = &mut self.sns[sn];
                if !s.alive || s.timer_at != Some(self.now) {
                    return;
                }
                s.timer_at = None;
                s.dht.handle_timeout(now, wall, &self.ring);
                self.drain(sn);
            }
            Ev::Leave { sn } => self.fail(sn, true),
            Ev::RingRemove { sn } => {
                if self.ring.remove(self.sns[sn].entry.addr) {
                    self.ring_changed();
                }
            }
            Ev::RingAdd { sn } => {
                if self.sns[sn].alive && self.ring.insert(self.sns[sn].entry) {
                    self.ring_changed();
                }
            }
            Ev::Refresh { user } => {
                let u = &mut self.users[user];
                let seq = u.latest.sequence + 1;
                u.previous = u.latest.sequence;
                u.published = self.now;
                u.latest = Self::sign(&u.device, &u.certificate, true, seq, wall);
                self.publish(user);
                let refresh = self.cfg.refresh;
                self.schedule(refresh, Ev::Refresh { user });
            }
            Ev::Lookup { user, phase } => self.start_lookup(user, phase),
        }
    }

    fn deliver(&mut self, to: usize, from: usize, message: Message<'static>) {
        let now = self.instant();
        let wall = self.wall();
        let from_entry = self.sns[from].entry;
        let behaviour = self.sns[to].behaviour;
        if behaviour != Behaviour::Honest {
            if let Message::IndexStore { record, .. } = &message {
                self.sns[to]
                    .first_seen
                    .entry(record.user().clone())
                    .or_insert_with(|| (**record).clone());
            }
            if let Message::IndexSearch {
                query,
                user,
                full: false,
            } = &message
            {
                let answer = match behaviour {
                    Behaviour::Drop => return,
                    Behaviour::Stale => self.sns[to].first_seen.get(user).cloned(),
                    Behaviour::Forge => self.sns[to].first_seen.get(user).cloned().map(|mut r| {
                        r.sequence += 1000;
                        r
                    }),
                    Behaviour::Honest => unreachable!("checked"),
                };
                let reply = match answer {
                    Some(r) => Message::IndexResult {
                        query: *query,
                        hops: 0,
                        total: 1,
                        record: Box::new(r),
                    },
                    None => Message::IndexNotFound {
                        query: *query,
                        hops: 0,
                        definite: true,
                    },
                };
                self.send(to, from, reply);
                return;
            }
        }
        let s = &mut self.sns[to];
        s.dht
            .handle_message(now, wall, &self.ring, from_entry, &message);
    }

    fn send(&mut self, from: usize, to: usize, message: Message<'static>) {
        match &message {
            Message::IndexStore { .. } => self.store_bytes += message_bytes(&message) as u64,
            _ => self.search_messages += 1,
        }
        if !self.sns[to].alive {
            return;
        }
        let delay = Self::one_way(self.sns[from].pos, self.sns[to].pos);
        self.schedule(delay, Ev::Deliver { to, from, message });
    }

    fn drain(&mut self, sn: usize) {
        while let Some(out) = self.sns[sn].dht.poll_output() {
            match out {
                DhtOutput::Send { to, message } => {
                    if let Some(&j) = self.by_key.get(&to.static_key) {
                        self.send(sn, j, message);
                    }
                }
                DhtOutput::Reply { message, .. } => {
                    self.search_messages += 1;
                    // The client sits close to its super node: the fastest of five.
                    let delay = self.client_leg(sn);
                    self.schedule(delay, Ev::Reply { message });
                }
                DhtOutput::Done { .. } => {}
            }
        }
        self.rearm(sn);
    }

    fn client_leg(&mut self, sn: usize) -> Duration {
        // The expected one-way delay to the nearest of five random points, drawn afresh.
        let s = self.sns[sn].pos;
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let p = (self.rng.unit(), self.rng.unit());
            best = best.min(Self::one_way(s, p));
        }
        best
    }

    fn rearm(&mut self, sn: usize) {
        let Some(t) = self.sns[sn].dht.poll_timeout() else {
            return;
        };
        let at = t.saturating_duration_since(self.start).max(self.now);
        if self.sns[sn].timer_at.is_none_or(|cur| at < cur) {
            self.sns[sn].timer_at = Some(at);
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq)));
            self.events.insert(self.seq, Ev::Timer { sn });
        }
    }

    fn start_lookup(&mut self, user: Option<usize>, phase: usize) {
        let now = self.instant();
        let (name, expect) = match user {
            Some(u) => (
                Self::user_name(u),
                Some((self.users[u].latest.device(), {
                    let u = &self.users[u];
                    if self.now.saturating_sub(u.published) < Duration::from_secs(2) {
                        u.previous
                    } else {
                        u.latest.sequence
                    }
                })),
            ),
            None => (
                UserName::parse(&format!("nobody{}", self.rng.u32())).expect("valid"),
                None,
            ),
        };
        let (pos, sn) = self.attach();
        let (query, message) = self.clients.start(now, name.clone());
        self.search_messages += 1;
        self.lookups += 1;
        let _ = message;
        self.pending.insert(query, Pending { phase, expect });
        let delay = Self::one_way(pos, self.sns[sn].pos);
        self.schedule(
            delay,
            Ev::Search {
                sn,
                query,
                user: name,
            },
        );
        let timeout = self.cfg.client_timeout;
        self.schedule(timeout, Ev::ClientTimer);
    }

    fn finish_lookup(&mut self, query: u32, outcome: natter_overlay::dht::SearchOutcome) {
        let Some(p) = self.pending.remove(&query) else {
            return;
        };
        let (_, report, latencies, hops) = &mut self.phases[p.phase];
        match p.expect {
            Some((device, sequence)) => {
                report.lookups += 1;
                match &outcome.result {
                    SearchResult::Found(records) => {
                        let best = records
                            .iter()
                            .filter(|r| r.device() == device)
                            .map(|r| r.sequence)
                            .max();
                        if best.is_some_and(|s| s >= sequence) {
                            report.found += 1;
                            latencies.push(outcome.elapsed.as_secs_f64() * 1000.0);
                            hops.push(outcome.hops);
                        } else {
                            report.stale += 1;
                        }
                    }
                    SearchResult::NotFound => report.false_not_found += 1,
                    SearchResult::Unavailable => report.unavailable += 1,
                }
            }
            None => {
                report.absent_lookups += 1;
                if outcome.result == SearchResult::NotFound {
                    report.absent_not_found += 1;
                }
            }
        }
    }

    /// The results so far.
    pub fn report(&self) -> IndexReport {
        let secs = self.now.as_secs_f64().max(1.0);
        let n = self.sns.len().max(1) as f64;
        let live = self.live_super_nodes().max(1) as f64;
        let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        let phases = self
            .phases
            .iter()
            .map(|(name, r, lat, hops)| {
                let mut r = r.clone();
                let mut lat = lat.clone();
                r.latency_ms = [pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0)];
                let mut h: Vec<f64> = hops.iter().map(|&h| f64::from(h)).collect();
                r.hops = [pct(&mut h, 0.5) as u8, pct(&mut h, 0.99) as u8];
                (name.clone(), r)
            })
            .collect();
        // Membership model: every join or leave reaches every super node about twice (push
        // gossip with some redundancy) as a 60-byte entry batched into 1,200-byte datagrams;
        // every super node pings its two ring neighbours every 10 s (60-byte ping and pong).
        let events_per_sec = (self.left + self.joined) as f64 / secs;
        let membership = events_per_sec * 2.0 * 60.0 * (1.0 + FRAMING_BYTES as f64 / 1200.0)
            + 2.0 * 2.0 * 60.0 / 10.0;
        let records: usize = self
            .sns
            .iter()
            .filter(|s| s.alive)
            .map(|s| s.dht.store().len())
            .sum();
        // A record is about 330 bytes encoded, ~500 held; a ring entry ~150 with its maps.
        let memory = records as f64 * 500.0 / live + self.ring.len() as f64 * 150.0;
        IndexReport {
            phases,
            messages_per_lookup: self.search_messages as f64 / self.lookups.max(1) as f64,
            store_bytes_per_sn_sec: self.store_bytes as f64 / secs / n.min(live.max(1.0)),
            membership_bytes_per_sn_sec: membership,
            memory_per_sn: memory,
            left: self.left,
            joined: self.joined,
            forged_refused: self.sns.iter().map(|s| s.dht.stats().forged_answers).sum(),
            virtual_secs: secs,
        }
    }
}
