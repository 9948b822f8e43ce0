//! A message-level simulator of presence at scale: how fast contacts see each other's
//! changes, and what it costs.
//!
//! [`PresenceSim`] runs, per super node, the production [`Dht`] (replicas, watchers, repair)
//! and [`Watches`] (its clients' watches), with real signed [`PresenceRecord`]s, and hands
//! their messages to each other through a virtual-time event queue with the latency model of
//! [`crate::index_sim`] (20 to 200 ms of round-trip time between super nodes, a client next
//! to its super node). Devices are modelled as the node's index client does: each is linked
//! to two super nodes, watches its user's contacts through both, publishes through the first
//! with a will, and verifies nothing (every record here is genuine; signatures are checked by
//! the replicas, as in production). Like the index simulator it shares one [`Ring`], in which
//! a failed super node stays for [`PresenceSimConfig::detection_delay`]; sessions carry no
//! encryption, but bytes are counted with their framing.
//!
//! Users have 1-3 devices and 50-200 contacts (symmetric); each device comes and goes in
//! heavy-tailed sessions; some sessions end without a word (a power cut); at a chosen time a
//! fraction of the super nodes fails at once. For every change of a user's presence (online
//! when one of their devices is), the watchers (online devices of the user's contacts) are
//! checked 2 s, 10 s and 60 s later: the fraction showing the right value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::crypto::{
    Authority, Capabilities, Certificate, DeviceId, DeviceIdentity, TrustedAuthorities, UnixTime,
    UserName,
};
use natter_core::overlay::PresenceRecord;
use natter_core::rng::Rng;
use natter_core::wire::message::{HostEntry, Message};
use natter_overlay::dht::{Dht, DhtConfig, DhtOutput, Key, Ring};
use natter_overlay::watch::{WatchOutput, Watches, WATCH_REFRESH};

use crate::index_sim::{message_bytes, one_way, super_node_addr};

/// How long a super node keeps a standby will after its device's session died (the node's
/// `STANDBY_FOR`).
const STANDBY_FOR: Duration = Duration::from_secs(60);

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct PresenceSimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Super nodes.
    pub super_nodes: usize,
    /// Users.
    pub users: usize,
    /// Contacts per user, uniform in this range (inclusive; made symmetric, so a little
    /// more on average).
    pub contacts: (usize, usize),
    /// Share of users with one, two and three devices.
    pub devices: [f64; 3],
    /// Median online session of a device (Pareto, shape 1.5).
    pub median_online: Duration,
    /// Median time offline between sessions (Pareto, shape 1.5).
    pub median_offline: Duration,
    /// Fraction of sessions that end without a word (power cut, pulled cable).
    pub power_cuts: f64,
    /// Online devices publish a fresh record this often.
    pub refresh: Duration,
    /// A failed super node stays in the ring this long.
    pub detection_delay: Duration,
    /// A super node gives its clients this long without a packet (the node: 50 s).
    pub client_idle: Duration,
    /// A device notices a dead super node after at most this long (three missed keep-alives).
    pub link_timeout: Duration,
    /// Virtual time simulated.
    pub duration: Duration,
    /// When, and what fraction of the super nodes, fail at once.
    pub failure: Option<(Duration, f64)>,
}

impl PresenceSimConfig {
    /// The scenario for `users` users on `super_nodes` super nodes: 50-200 contacts,
    /// 60 / 30 / 10 % of users with 1 / 2 / 3 devices, median sessions 30 minutes online and
    /// 60 offline, 10 % power cuts, one hour, 30 % of the super nodes failing at 40 minutes.
    pub fn new(seed: u64, super_nodes: usize, users: usize) -> Self {
        Self {
            seed,
            super_nodes,
            users,
            contacts: (50, 200),
            devices: [0.6, 0.3, 0.1],
            median_online: Duration::from_secs(30 * 60),
            median_offline: Duration::from_secs(60 * 60),
            power_cuts: 0.1,
            refresh: Duration::from_secs(30 * 60),
            detection_delay: Duration::from_secs(30),
            client_idle: Duration::from_secs(50),
            link_timeout: Duration::from_secs(60),
            duration: Duration::from_secs(3600),
            failure: Some((Duration::from_secs(40 * 60), 0.3)),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceReport {
    /// Changes of a user's presence with watchers online.
    pub changes: u64,
    /// Watcher checks at 2 s, 10 s and 60 s after a change (watchers online since before
    /// it; a power cut, which nothing announces, is checked at 60 s only).
    pub checks: [u64; 3],
    /// ... that showed the right value.
    pub right: [u64; 3],
    /// The same, for changes in the two minutes after the mass failure.
    pub failure_checks: [u64; 3],
    /// See `failure_checks`.
    pub failure_right: [u64; 3],
    /// Power cuts, and how long until the user's watchers saw them (when the cut made the
    /// user offline): p50 and max, seconds.
    pub power_cuts: u64,
    /// See `power_cuts`.
    pub cut_seen_secs: [f64; 2],
    /// Bytes per user per hour: publications (client leg and replication), watching (watch
    /// lists, pushes to super nodes and to devices, wills).
    pub publish_bytes_per_user_hour: f64,
    /// See `publish_bytes_per_user_hour`.
    pub watch_bytes_per_user_hour: f64,
    /// Bytes through each super node per hour (sent and received, every kind): mean and max.
    pub sn_bytes_per_hour: [f64; 2],
    /// Virtual seconds simulated.
    pub virtual_secs: f64,
}

impl PresenceReport {
    /// Fraction right at check `i` (0: 2 s, 1: 10 s, 2: 60 s).
    pub fn right(&self, i: usize) -> f64 {
        ratio(self.right[i], self.checks[i])
    }

    /// The same, for changes right after the mass failure.
    pub fn failure_right(&self, i: usize) -> f64 {
        ratio(self.failure_right[i], self.failure_checks[i])
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

const CHECKS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
];

#[derive(Debug)]
struct Sn {
    dht: Dht,
    watches: Watches,
    entry: HostEntry,
    pos: (f64, f64),
    alive: bool,
    timer_at: Option<Duration>,
    /// Per device attached here: the will it left, and the super node holding it
    /// first-hand when this one holds it on standby.
    wills: BTreeMap<usize, (PresenceRecord, Option<usize>)>,
    /// Standby wills of devices gone without a word: (dropped then, first-hand holder,
    /// will), published if the holder leaves the ring first.
    standby: Vec<(Duration, usize, PresenceRecord)>,
    bytes: u64,
}

#[derive(Debug)]
struct Device {
    user: usize,
    identity: DeviceIdentity,
    certificate: Certificate,
    online: bool,
    /// When its session started.
    started: Duration,
    /// Bumped at every start: events of an earlier session are ignored.
    session: u64,
    links: Vec<usize>,
    seq: u64,
    pos: (f64, f64),
    /// Per watched user: the newest (sequence, online) per device.
    view: BTreeMap<usize, BTreeMap<DeviceId, (u64, bool)>>,
}

#[derive(Debug)]
struct User {
    name: UserName,
    devices: Vec<usize>,
    contacts: Vec<usize>,
    /// Online now (one of the devices is), and since when this holds.
    online: bool,
    since: Duration,
}

#[derive(Debug, Clone)]
enum Ev {
    /// A message between super nodes.
    SnMsg {
        to: usize,
        from: usize,
        message: Message<'static>,
    },
    /// A device's publication reaches its super node.
    Publish {
        sn: usize,
        record: Box<PresenceRecord>,
    },
    /// A device's will reaches one of its super nodes.
    Will {
        sn: usize,
        device: usize,
        will: Box<PresenceRecord>,
        /// On standby for this first-hand holder.
        standby: Option<usize>,
    },
    /// A super node repeats its watches to the replicas.
    WatchRefresh {
        sn: usize,
    },
    /// A device's watch list reaches its super node.
    Watch {
        sn: usize,
        device: usize,
    },
    /// A super node notices a device's session is over (publishing its will if `will`).
    Gone {
        sn: usize,
        device: usize,
        will: bool,
    },
    /// A pushed record reaches a device.
    ToDevice {
        device: usize,
        session: u64,
        record: Box<PresenceRecord>,
    },
    Timer {
        sn: usize,
    },
    On {
        device: usize,
    },
    Off {
        device: usize,
        session: u64,
    },
    Refresh {
        device: usize,
        session: u64,
    },
    LinkLost {
        device: usize,
        session: u64,
        sn: usize,
    },
    Failure {
        fraction: f64,
    },
    /// The ring forgets failed super nodes (all at once: a super node re-reads its
    /// membership into its ring every 2 s, so a mass failure is one ring change).
    RingRemove {
        sns: Vec<usize>,
    },
    Check {
        user: usize,
        online: bool,
        changed: Duration,
        stage: usize,
        /// The change is a power cut (nothing said: only the 60 s check counts it).
        cut: bool,
    },
}

/// The simulator. See the [module documentation](self).
pub struct PresenceSim {
    cfg: PresenceSimConfig,
    rng: Rng,
    start: Instant,
    wall0: UnixTime,
    now: Duration,
    seq: u64,
    queue: BTreeMap<(Duration, u64), Ev>,
    ring: Ring,
    sns: Vec<Sn>,
    by_key: HashMap<[u8; 32], usize>,
    devices: Vec<Device>,
    users: Vec<User>,
    by_name: HashMap<UserName, usize>,
    report: PresenceReport,
    failed_at: Option<Duration>,
    publish_bytes: u64,
    watch_bytes: u64,
    /// Power cuts waiting to be seen: (user, when).
    cuts: Vec<(usize, Duration)>,
    cut_seen: Vec<f64>,
}

impl std::fmt::Debug for PresenceSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceSim")
            .field("super_nodes", &self.sns.len())
            .field("users", &self.users.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn bytes_of(m: &Message<'_>) -> u64 {
    message_bytes(m) as u64
}

impl PresenceSim {
    /// Build the network, the users and their devices (each starts online or offline as the
    /// session model says, and takes its first step within the first minutes).
    pub fn new(cfg: PresenceSimConfig) -> Self {
        let mut rng = Rng::from_seed(cfg.seed);
        let authority = Authority::generate(&mut rng);
        let trusted = TrustedAuthorities::new([authority.public()]);
        let mut sim = Self {
            ring: Ring::new(4),
            rng,
            start: Instant::now(),
            wall0: UnixTime(1_800_000_000),
            now: Duration::ZERO,
            seq: 0,
            queue: BTreeMap::new(),
            sns: Vec::new(),
            by_key: HashMap::new(),
            devices: Vec::new(),
            users: Vec::new(),
            by_name: HashMap::new(),
            report: PresenceReport::default(),
            failed_at: None,
            publish_bytes: 0,
            watch_bytes: 0,
            cuts: Vec::new(),
            cut_seen: Vec::new(),
            cfg,
        };
        for i in 0..sim.cfg.super_nodes {
            let mut static_key = sim.rng.bytes32();
            static_key[0] = 0x40;
            let entry = HostEntry {
                addr: super_node_addr(i),
                static_key,
            };
            let key = Key(sim.rng.bytes32());
            sim.ring.insert(key, entry);
            sim.by_key.insert(static_key, i);
            let pos = (sim.rng.unit(), sim.rng.unit());
            sim.sns.push(Sn {
                dht: Dht::new(DhtConfig::default(), entry, key, trusted.clone()),
                watches: Watches::new(entry),
                entry,
                pos,
                alive: true,
                timer_at: None,
                wills: BTreeMap::new(),
                standby: Vec::new(),
                bytes: 0,
            });
        }
        let n = sim.cfg.users;
        let mut contacts: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        for (u, mine) in contacts.clone().iter().enumerate() {
            let (lo, hi) = sim.cfg.contacts;
            let want = lo + (sim.rng.unit() * (hi - lo + 1) as f64) as usize;
            let mut have = mine.len();
            while have < want.min(n - 1) {
                let c = (sim.rng.unit() * n as f64) as usize % n;
                if c != u && contacts[u].insert(c) {
                    contacts[c].insert(u);
                    have += 1;
                }
            }
        }
        for (u, contacts) in contacts.into_iter().enumerate() {
            let name = UserName::parse(&format!("user{u}")).expect("valid");
            let r = sim.rng.unit();
            let count = if r < sim.cfg.devices[0] {
                1
            } else if r < sim.cfg.devices[0] + sim.cfg.devices[1] {
                2
            } else {
                3
            };
            let mut devices = Vec::new();
            for _ in 0..count {
                let identity = DeviceIdentity::generate(&mut sim.rng);
                let certificate = authority.certify(
                    &name,
                    identity.dh_public(),
                    identity.signing_public(),
                    UnixTime(sim.wall0.0 - 86_400),
                    UnixTime(sim.wall0.0 + 30 * 86_400),
                );
                let pos = (sim.rng.unit(), sim.rng.unit());
                devices.push(sim.devices.len());
                sim.devices.push(Device {
                    user: u,
                    identity,
                    certificate,
                    online: false,
                    started: Duration::ZERO,
                    session: 0,
                    links: Vec::new(),
                    seq: 0,
                    pos,
                    view: BTreeMap::new(),
                });
            }
            sim.by_name.insert(name.clone(), u);
            sim.users.push(User {
                name,
                devices,
                contacts: contacts.into_iter().collect(),
                online: false,
                since: Duration::ZERO,
            });
        }
        // Each device starts online with the share of time the session model gives it, in
        // the first ten minutes (so the network is not all born at once).
        let share = sim.cfg.median_online.as_secs_f64()
            / (sim.cfg.median_online + sim.cfg.median_offline).as_secs_f64();
        for d in 0..sim.devices.len() {
            let at = Duration::from_secs_f64(sim.rng.unit() * 600.0);
            if sim.rng.unit() < share {
                sim.schedule(at, Ev::On { device: d });
            } else {
                let gap = sim.pareto(sim.cfg.median_offline);
                sim.schedule(at + gap, Ev::On { device: d });
            }
        }
        for sn in 0..sim.sns.len() {
            let at = WATCH_REFRESH.mul_f64(sim.rng.unit());
            sim.schedule(at, Ev::WatchRefresh { sn });
        }
        if let Some((at, fraction)) = sim.cfg.failure {
            sim.schedule(at, Ev::Failure { fraction });
        }
        sim
    }

    /// Run to the end and report.
    pub fn run(mut self) -> PresenceReport {
        let end = self.cfg.duration;
        while let Some((&(at, seq), _)) = self.queue.first_key_value() {
            if at > end {
                break;
            }
            let ev = self.queue.remove(&(at, seq)).expect("present");
            self.now = at;
            self.handle(ev);
        }
        self.now = end;
        let hours = end.as_secs_f64() / 3600.0;
        let users = self.users.len().max(1) as f64;
        self.report.publish_bytes_per_user_hour = self.publish_bytes as f64 / users / hours;
        self.report.watch_bytes_per_user_hour = self.watch_bytes as f64 / users / hours;
        let per_sn: Vec<f64> = self
            .sns
            .iter()
            .filter(|s| s.alive)
            .map(|s| s.bytes as f64 / hours)
            .collect();
        let mean = per_sn.iter().sum::<f64>() / per_sn.len().max(1) as f64;
        let max = per_sn.iter().copied().fold(0.0, f64::max);
        self.report.sn_bytes_per_hour = [mean, max];
        self.cut_seen.sort_by(f64::total_cmp);
        if let Some(max) = self.cut_seen.last() {
            self.report.cut_seen_secs = [self.cut_seen[self.cut_seen.len() / 2], *max];
        }
        self.report.virtual_secs = end.as_secs_f64();
        self.report
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn pareto(&mut self, median: Duration) -> Duration {
        // Shape 1.5: x_m = median / 2^(1/1.5).
        let xm = median.as_secs_f64() / 2f64.powf(1.0 / 1.5);
        let u = 1.0 - self.rng.unit();
        Duration::from_secs_f64((xm / u.powf(1.0 / 1.5)).min(30.0 * 86_400.0))
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    fn wall(&self) -> UnixTime {
        UnixTime(self.wall0.0 + self.now.as_secs())
    }

    /// A device's leg to a super node: the device sits near its own position.
    fn client_leg(&self, device: usize, sn: usize) -> Duration {
        one_way(self.devices[device].pos, self.sns[sn].pos)
    }

    fn random_live_sn(&mut self, except: &[usize]) -> Option<usize> {
        let live: Vec<usize> = (0..self.sns.len())
            .filter(|i| self.sns[*i].alive && !except.contains(i))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[(self.rng.unit() * live.len() as f64) as usize % live.len()])
    }

    fn count_sn(&mut self, sn: usize, bytes: u64) {
        self.sns[sn].bytes += bytes;
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::SnMsg { to, from, message } => {
                if !self.sns[to].alive {
                    return;
                }
                let bytes = bytes_of(&message);
                self.count_sn(to, bytes);
                let (now, wall) = (self.instant(), self.wall());
                let from_entry = self.sns[from].entry;
                let s = &mut self.sns[to];
                match message {
                    Message::IndexNotify { record } => {
                        s.watches.on_notify(&from_entry, *record, |_| true);
                    }
                    m => {
                        s.dht.handle_message(now, wall, &self.ring, from_entry, &m);
                    }
                }
                self.drain(to);
            }
            Ev::Publish { sn, record } => {
                if !self.sns[sn].alive {
                    return;
                }
                let (now, wall) = (self.instant(), self.wall());
                self.sns[sn].dht.publish(now, wall, &self.ring, *record);
                self.drain(sn);
            }
            Ev::Will {
                sn,
                device,
                will,
                standby,
            } => {
                if self.sns[sn].alive {
                    self.sns[sn].wills.insert(device, (*will, standby));
                }
            }
            Ev::WatchRefresh { sn } => {
                if self.sns[sn].alive {
                    self.sns[sn].watches.refresh();
                    self.drain(sn);
                    self.schedule(WATCH_REFRESH, Ev::WatchRefresh { sn });
                }
            }
            Ev::Watch { sn, device } => {
                if !self.sns[sn].alive || !self.devices[device].links.contains(&sn) {
                    return;
                }
                let names = self.contact_names(self.devices[device].user);
                self.sns[sn]
                    .watches
                    .client_watch(&self.ring, device as u64, &names, true);
                self.drain(sn);
            }
            Ev::Gone { sn, device, will } => {
                if !self.sns[sn].alive {
                    return;
                }
                let (now, wall) = (self.instant(), self.wall());
                let until = self.now + STANDBY_FOR;
                let s = &mut self.sns[sn];
                s.watches.client_gone(device as u64);
                if let Some((w, standby)) = s.wills.remove(&device) {
                    match standby {
                        _ if !will => {}
                        None => {
                            s.dht.publish(now, wall, &self.ring, w);
                        }
                        // As the node does: only if the first-hand holder left the ring.
                        Some(holder) => s.standby.push((until, holder, w)),
                    }
                }
                self.check_standby(sn);
                self.drain(sn);
            }
            Ev::ToDevice {
                device,
                session,
                record,
            } => {
                let Some(&u) = self.by_name.get(record.user()) else {
                    return;
                };
                let d = &mut self.devices[device];
                if !d.online || d.session != session {
                    return;
                }
                let devices = d.view.entry(u).or_default();
                if devices
                    .get(&record.device())
                    .is_none_or(|(seq, _)| *seq < record.sequence)
                {
                    devices.insert(record.device(), (record.sequence, record.online));
                }
                self.cut_noticed(u);
            }
            Ev::Timer { sn } => {
                if !self.sns[sn].alive || self.sns[sn].timer_at != Some(self.now) {
                    return;
                }
                self.sns[sn].timer_at = None;
                let (now, wall) = (self.instant(), self.wall());
                let s = &mut self.sns[sn];
                s.dht.handle_timeout(now, wall, &self.ring);
                self.drain(sn);
            }
            Ev::On { device } => self.device_on(device),
            Ev::Off { device, session } => {
                if self.devices[device].online && self.devices[device].session == session {
                    let cut = self.rng.unit() < self.cfg.power_cuts;
                    self.device_off(device, cut);
                }
            }
            Ev::Refresh { device, session } => {
                if self.devices[device].online && self.devices[device].session == session {
                    self.publish(device, true);
                    let every = self.cfg.refresh;
                    self.schedule(every, Ev::Refresh { device, session });
                }
            }
            Ev::LinkLost {
                device,
                session,
                sn,
            } => {
                let d = &self.devices[device];
                if !d.online || d.session != session || !d.links.contains(&sn) {
                    return;
                }
                let first = d.links[0] == sn;
                self.devices[device].links.retain(|l| *l != sn);
                let links = self.devices[device].links.clone();
                if let Some(new) = self.random_live_sn(&links) {
                    self.devices[device].links.push(new);
                    self.send_watch(device, new);
                }
                if first {
                    self.publish(device, true);
                }
            }
            Ev::Failure { fraction } => {
                self.failed_at = Some(self.now);
                let live: Vec<usize> = (0..self.sns.len()).filter(|i| self.sns[*i].alive).collect();
                let n = (live.len() as f64 * fraction).round() as usize;
                let mut victims = live;
                for i in 0..victims.len() {
                    let j = i + (self.rng.unit() * (victims.len() - i) as f64) as usize;
                    let last = victims.len() - 1;
                    victims.swap(i, j.min(last));
                }
                victims.truncate(n);
                let detect = self.cfg.detection_delay;
                self.schedule(
                    detect,
                    Ev::RingRemove {
                        sns: victims.clone(),
                    },
                );
                for sn in victims {
                    self.sns[sn].alive = false;
                    // Its clients notice when their keep-alives go unanswered.
                    for device in 0..self.devices.len() {
                        let d = &self.devices[device];
                        if d.online && d.links.contains(&sn) {
                            let session = d.session;
                            let after = self.cfg.link_timeout.mul_f64(0.5 + 0.5 * self.rng.unit());
                            self.schedule(
                                after,
                                Ev::LinkLost {
                                    device,
                                    session,
                                    sn,
                                },
                            );
                        }
                    }
                }
            }
            Ev::RingRemove { sns } => {
                for sn in sns {
                    self.ring.remove(self.sns[sn].entry.addr);
                }
                let now = self.instant();
                for i in 0..self.sns.len() {
                    if self.sns[i].alive {
                        self.sns[i].dht.ring_changed(now);
                        self.sns[i].watches.ring_changed(&self.ring);
                        self.check_standby(i);
                        self.drain(i);
                    }
                }
            }
            Ev::Check {
                user,
                online,
                changed,
                stage,
                cut,
            } => self.check(user, online, changed, stage, cut),
        }
    }

    fn device_on(&mut self, device: usize) {
        let Some(a) = self.random_live_sn(&[]) else {
            return;
        };
        let Some(b) = self.random_live_sn(&[a]) else {
            return;
        };
        let d = &mut self.devices[device];
        d.online = true;
        d.started = self.now;
        d.session += 1;
        d.links = vec![a, b];
        d.view.clear();
        let session = d.session;
        self.send_watch(device, a);
        self.send_watch(device, b);
        self.publish(device, true);
        let every = self.cfg.refresh;
        self.schedule(every, Ev::Refresh { device, session });
        let stay = self.pareto(self.cfg.median_online);
        self.schedule(stay, Ev::Off { device, session });
        self.truth(self.devices[device].user, false);
    }

    fn device_off(&mut self, device: usize, cut: bool) {
        let links = self.devices[device].links.clone();
        if cut {
            // Nothing said: each super node notices when the session goes idle (the last
            // keep-alive came up to one interval before the cut).
            for sn in &links {
                let after = self.cfg.client_idle - Duration::from_secs_f64(20.0 * self.rng.unit());
                self.schedule(
                    after,
                    Ev::Gone {
                        sn: *sn,
                        device,
                        will: true,
                    },
                );
            }
            self.report.power_cuts += 1;
        } else {
            self.publish(device, false);
            for sn in &links {
                let leg = self.client_leg(device, *sn);
                self.schedule(
                    leg,
                    Ev::Gone {
                        sn: *sn,
                        device,
                        will: false,
                    },
                );
            }
        }
        let d = &mut self.devices[device];
        d.online = false;
        d.links.clear();
        d.view.clear();
        let gap = self.pareto(self.cfg.median_offline);
        self.schedule(gap, Ev::On { device });
        let u = self.devices[device].user;
        let was = self.users[u].online;
        self.truth(u, cut);
        if cut && was && !self.users[u].online {
            self.cuts.push((u, self.now));
        }
    }

    /// Sign and send a record (with a will when online) through the device's first link.
    fn publish(&mut self, device: usize, online: bool) {
        let Some(&sn) = self.devices[device].links.first() else {
            return;
        };
        let wall = self.wall();
        let addrs: Vec<SocketAddr> = self.devices[device]
            .links
            .iter()
            .map(|l| self.sns[*l].entry.addr)
            .collect();
        let d = &mut self.devices[device];
        d.seq = ((wall.0) << 16).max(d.seq + 1);
        let sign = |d: &Device, online: bool, addrs: Vec<SocketAddr>, seq: u64| {
            PresenceRecord::sign(
                &d.identity,
                d.certificate.clone(),
                online,
                addrs,
                None,
                Vec::new(),
                0,
                Capabilities::VOICE,
                seq,
                wall,
            )
        };
        let record = sign(d, online, addrs, d.seq);
        let will = online.then(|| {
            d.seq += 1;
            Box::new(sign(d, false, Vec::new(), d.seq))
        });
        let bytes = bytes_of(&Message::IndexStore {
            replicate: true,
            record: Box::new(record.clone()),
        });
        // As the node does: "offline" goes through every link.
        let through = if online {
            vec![sn]
        } else {
            self.devices[device].links.clone()
        };
        for l in through {
            self.publish_bytes += bytes;
            let record = Box::new(record.clone());
            self.send_up(device, l, bytes, Ev::Publish { sn: l, record });
        }
        // The will goes with it, to the same super node, and on standby to the others.
        if let Some(will) = will {
            for l in self.devices[device].links.clone() {
                let standby = (l != sn).then_some(sn);
                let bytes = bytes_of(&Message::IndexWill {
                    record: will.clone(),
                    standby: standby.map(|h| self.sns[h].entry.addr),
                });
                self.watch_bytes += bytes;
                let will = will.clone();
                self.send_up(
                    device,
                    l,
                    bytes,
                    Ev::Will {
                        sn: l,
                        device,
                        will,
                        standby,
                    },
                );
            }
        }
    }

    /// Publish super node `sn`'s standby wills whose first-hand holder has left the ring;
    /// drop those kept long enough.
    fn check_standby(&mut self, sn: usize) {
        let (now, wall) = (self.instant(), self.wall());
        let (at, ring) = (self.now, &self.ring);
        let addrs: Vec<SocketAddr> = self.sns.iter().map(|s| s.entry.addr).collect();
        let s = &mut self.sns[sn];
        let mut publish = Vec::new();
        s.standby.retain(|(until, holder, will)| {
            if *until <= at {
                return false;
            }
            if !ring.contains(addrs[*holder]) {
                publish.push(will.clone());
                return false;
            }
            true
        });
        for will in publish {
            s.dht.publish(now, wall, ring, will);
        }
    }

    /// `ev` (`bytes` long) from `device` reaches super node `sn` after the client leg.
    fn send_up(&mut self, device: usize, sn: usize, bytes: u64, ev: Ev) {
        self.count_sn(sn, bytes);
        let leg = self.client_leg(device, sn);
        self.schedule(leg, ev);
    }

    /// The names of user `u`'s contacts: what each of its devices watches.
    fn contact_names(&self, u: usize) -> Vec<UserName> {
        self.users[u]
            .contacts
            .iter()
            .map(|c| self.users[*c].name.clone())
            .collect()
    }

    fn send_watch(&mut self, device: usize, sn: usize) {
        let names = self.contact_names(self.devices[device].user);
        let mut bytes = 0;
        for chunk in names.chunks(natter_core::wire::message::MAX_WATCH_USERS) {
            bytes += bytes_of(&Message::IndexWatch {
                full: true,
                watch: true,
                refresh: false,
                users: chunk.to_vec(),
            });
        }
        self.watch_bytes += bytes;
        self.send_up(device, sn, bytes, Ev::Watch { sn, device });
    }

    /// Hand on what super node `sn`'s index and watches produced.
    fn drain(&mut self, sn: usize) {
        loop {
            let mut moved = false;
            while let Some(out) = self.sns[sn].dht.poll_output() {
                moved = true;
                match out {
                    DhtOutput::Send { to, message } => self.send(sn, to, message),
                    DhtOutput::Changed { record } => {
                        let me = self.sns[sn].entry;
                        self.sns[sn].watches.on_notify(&me, *record, |_| true);
                    }
                    _ => {}
                }
            }
            while let Some(out) = self.sns[sn].watches.poll_output() {
                moved = true;
                match out {
                    WatchOutput::Send { to, message } => self.send(sn, to, message),
                    WatchOutput::Local {
                        watch,
                        refresh,
                        users,
                    } => {
                        let (wall, me) = (self.wall(), self.sns[sn].entry);
                        self.sns[sn].dht.watch(wall, me, &users, watch, refresh);
                    }
                    WatchOutput::Deliver { client, record } => {
                        let device = client as usize;
                        let bytes = bytes_of(&Message::IndexNotify {
                            record: record.clone(),
                        });
                        self.watch_bytes += bytes;
                        self.count_sn(sn, bytes);
                        let session = self.devices[device].session;
                        let leg = self.client_leg(device, sn);
                        self.schedule(
                            leg,
                            Ev::ToDevice {
                                device,
                                session,
                                record,
                            },
                        );
                    }
                }
            }
            if !moved {
                break;
            }
        }
        if let Some(t) = self.sns[sn].dht.poll_timeout() {
            let at = t.saturating_duration_since(self.start).max(self.now);
            if self.sns[sn].timer_at.is_none_or(|cur| at < cur) {
                self.sns[sn].timer_at = Some(at);
                self.seq += 1;
                self.queue.insert((at, self.seq), Ev::Timer { sn });
            }
        }
    }

    fn send(&mut self, from: usize, to: HostEntry, message: Message<'static>) {
        let Some(&j) = self.by_key.get(&to.static_key) else {
            return;
        };
        let bytes = bytes_of(&message);
        match &message {
            Message::IndexStore { .. } => self.publish_bytes += bytes,
            _ => self.watch_bytes += bytes,
        }
        self.count_sn(from, bytes);
        let delay = one_way(self.sns[from].pos, self.sns[j].pos);
        self.schedule(
            delay,
            Ev::SnMsg {
                to: j,
                from,
                message,
            },
        );
    }

    /// Re-read user `u`'s presence; on a change, check its watchers later.
    fn truth(&mut self, u: usize, cut: bool) {
        let online = self.users[u]
            .devices
            .iter()
            .any(|d| self.devices[*d].online);
        if online == self.users[u].online {
            return;
        }
        self.users[u].online = online;
        self.users[u].since = self.now;
        self.report.changes += 1;
        for (stage, after) in CHECKS.iter().enumerate() {
            self.schedule(
                *after,
                Ev::Check {
                    user: u,
                    online,
                    changed: self.now,
                    stage,
                    cut,
                },
            );
        }
    }

    /// What `device` shows for user `u`.
    fn shows(&self, device: usize, u: usize) -> bool {
        self.devices[device]
            .view
            .get(&u)
            .is_some_and(|devices| devices.values().any(|(_, online)| *online))
    }

    fn check(&mut self, u: usize, online: bool, changed: Duration, stage: usize, cut: bool) {
        // A later change supersedes this one; a power cut cannot be known in seconds (it is
        // checked after a minute only).
        if self.users[u].since != changed
            || self.users[u].online != online
            || (cut && stage < CHECKS.len() - 1)
        {
            return;
        }
        let after_failure = self
            .failed_at
            .is_some_and(|f| changed >= f && changed < f + Duration::from_secs(120));
        let mut checks = 0;
        let mut right = 0;
        for c in self.users[u].contacts.clone() {
            for &d in &self.users[c].devices {
                let dev = &self.devices[d];
                // Watchers online since before the change (a device that just started is
                // still learning the state of all its contacts).
                if !dev.online || dev.started + CHECKS[0] > changed {
                    continue;
                }
                checks += 1;
                if self.shows(d, u) == online {
                    right += 1;
                }
            }
        }
        self.report.checks[stage] += checks;
        self.report.right[stage] += right;
        if after_failure {
            self.report.failure_checks[stage] += checks;
            self.report.failure_right[stage] += right;
        }
    }

    /// A record reached a watcher of `u`: a pending power cut of `u`'s is seen once one of
    /// its watchers shows it.
    fn cut_noticed(&mut self, u: usize) {
        let Some(i) = self.cuts.iter().position(|(c, _)| *c == u) else {
            return;
        };
        if self.users[u].online {
            self.cuts.swap_remove(i);
            return;
        }
        let watcher_knows = self.users[u].contacts.iter().any(|c| {
            self.users[*c].devices.iter().any(|d| {
                self.devices[*d].online
                    && self.devices[*d].view.contains_key(&u)
                    && !self.shows(*d, u)
            })
        });
        if watcher_knows {
            let (_, at) = self.cuts.swap_remove(i);
            self.cut_seen.push((self.now - at).as_secs_f64());
        }
    }
}
