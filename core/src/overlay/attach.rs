//! Joining the overlay as an ordinary node: finding super nodes and keeping links to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::crypto::UnixTime;
use crate::overlay::{CacheEntry, HostCache};
use crate::rng::Rng;
use crate::sansio::StreamId;
use crate::wire::message::HostEntry;
use crate::wire::stun::TransactionId;

/// How a link reaches its super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkTransport {
    /// TCP to the super node's main port.
    Tcp,
    /// TCP to its fallback port (stand-in for 80).
    TcpFallback,
    /// TLS over TCP to its TLS port (stand-in for 443).
    Tls,
}

impl LinkTransport {
    /// The next one to try when this one failed (main port, fallback port, TLS port).
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Tcp => Some(Self::TcpFallback),
            Self::TcpFallback => Some(Self::Tls),
            Self::Tls => None,
        }
    }

    /// The next one in the cycle main, fallback, TLS, main: for trying every port of a super
    /// node starting anywhere.
    pub fn cycle(self) -> Self {
        self.next().unwrap_or(Self::Tcp)
    }

    /// The super node address this transport connects to (`main`: its main address).
    pub fn address(self, main: SocketAddr, ports: FallbackPorts) -> SocketAddr {
        match self {
            Self::Tcp => main,
            Self::TcpFallback => ports.plain(main),
            Self::Tls => ports.tls(main),
        }
    }
}

/// The fallback port pair super nodes listen on besides their main port: a plain TCP port
/// (the stand-in for 80) and a TLS-wrapped one (for 443), which strict firewalls pass.
///
/// In a deployment every super node uses the same absolute pair (80 and 443, or ports that
/// a firewall or port forwarding maps to them); super nodes sharing one IP (tests, several
/// on one host) need ports of their own, which offsets from each main port give. Written
/// `80,443` (absolute) or `+1,+2` (offsets) by [`FromStr`](std::str::FromStr) and
/// [`Display`](std::fmt::Display).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackPorts {
    /// The same ports on every super node.
    Absolute {
        /// The plain TCP fallback port.
        plain: u16,
        /// The TLS port.
        tls: u16,
    },
    /// Offsets from each super node's main port.
    Offsets {
        /// Offset of the plain TCP fallback port.
        plain: u16,
        /// Offset of the TLS port.
        tls: u16,
    },
}

impl Default for FallbackPorts {
    /// Main port +1 (plain) and +2 (TLS).
    fn default() -> Self {
        Self::Offsets { plain: 1, tls: 2 }
    }
}

impl FallbackPorts {
    /// The plain TCP fallback address of the super node whose main address is `main`.
    pub fn plain(&self, main: SocketAddr) -> SocketAddr {
        match *self {
            Self::Absolute { plain, .. } => SocketAddr::new(main.ip(), plain),
            Self::Offsets { plain, .. } => {
                SocketAddr::new(main.ip(), main.port().wrapping_add(plain))
            }
        }
    }

    /// The TLS address of the super node whose main address is `main`.
    pub fn tls(&self, main: SocketAddr) -> SocketAddr {
        match *self {
            Self::Absolute { tls, .. } => SocketAddr::new(main.ip(), tls),
            Self::Offsets { tls, .. } => SocketAddr::new(main.ip(), main.port().wrapping_add(tls)),
        }
    }

    /// Check the pair makes sense: two different ports, none of them 0 (an offset of 0 would
    /// be the main port itself).
    pub fn validate(&self) -> Result<(), String> {
        let (Self::Absolute { plain, tls } | Self::Offsets { plain, tls }) = *self;
        if plain == 0 || tls == 0 {
            return Err(format!("fallback ports {self}: 0 is not a port or offset"));
        }
        if plain == tls {
            return Err(format!(
                "fallback ports {self}: plain and TLS ports must differ"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for FallbackPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absolute { plain, tls } => write!(f, "{plain},{tls}"),
            Self::Offsets { plain, tls } => write!(f, "+{plain},+{tls}"),
        }
    }
}

impl std::str::FromStr for FallbackPorts {
    type Err = String;

    /// `PLAIN,TLS`: absolute ports (`80,443`), or offsets from the main port when both carry
    /// a `+` (`+1,+2`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected PLAIN,TLS ports (80,443) or offsets (+1,+2)");
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let (a, b) = (a.trim(), b.trim());
        let offsets = match (a.strip_prefix('+'), b.strip_prefix('+')) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            _ => return Err(bad()),
        };
        let port = |x: &str| x.parse::<u16>().map_err(|_| bad());
        let ports = match offsets {
            Some((a, b)) => Self::Offsets {
                plain: port(a)?,
                tls: port(b)?,
            },
            None => Self::Absolute {
                plain: port(a)?,
                tls: port(b)?,
            },
        };
        ports.validate()?;
        Ok(ports)
    }
}

/// Settings of an [`Attacher`].
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// Attached links to keep (default 2).
    pub links: usize,
    /// Super nodes probed per round (default 5).
    pub probes: usize,
    /// How long to wait for probe answers before linking (default 300 ms).
    pub probe_window: Duration,
    /// How long a link may take from TCP connect to attach acknowledgement (default 3 s).
    pub link_timeout: Duration,
    /// Where super nodes listen besides their main port: the plain TCP and TLS fallback
    /// ports (default: main port +1 and +2). One setting for the whole network, from the
    /// network file.
    pub fallback_ports: FallbackPorts,
    /// Refresh the host cache from a super node this often (default 10 minutes).
    pub refresh_interval: Duration,
    /// Randomness (jitter, transaction ids, tie-breaks).
    pub seed: [u8; 32],
}

impl AttachConfig {
    /// Defaults.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            links: 2,
            probes: 5,
            probe_window: Duration::from_millis(300),
            link_timeout: Duration::from_secs(3),
            fallback_ports: FallbackPorts::default(),
            refresh_interval: Duration::from_secs(600),
            seed,
        }
    }
}

/// What the node facade must do for the attacher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachAction {
    /// Send a STUN Binding request with this transaction id to `addr` over UDP.
    Probe {
        /// The super node.
        addr: SocketAddr,
        /// Transaction id to match the answer.
        transaction: TransactionId,
    },
    /// Ask the driver for a TCP (or TLS) stream.
    OpenStream {
        /// The id to use.
        stream: StreamId,
        /// Where (the main, fallback or TLS port).
        remote: SocketAddr,
        /// TLS-wrapped.
        tls: bool,
    },
    /// Start a Noise session over the open stream, to the super node with that key (IK when
    /// known), and report the connection id with [`Attacher::session_established`].
    StartSession {
        /// The stream.
        stream: StreamId,
        /// The super node's static key, if known.
        static_key: Option<[u8; 32]>,
    },
    /// Send `OverlayAttach` on the session.
    SendAttach {
        /// The stream the session runs on.
        stream: StreamId,
    },
    /// Ask the super node for host cache entries.
    RequestHostCache {
        /// The stream the session runs on.
        stream: StreamId,
    },
    /// Close the stream (and its session).
    CloseStream {
        /// Which.
        stream: StreamId,
    },
}

/// What the attacher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    /// A round started.
    Connecting {
        /// Super nodes probed.
        candidates: usize,
    },
    /// UDP probes went unanswered: the node reaches super nodes over TCP only.
    UdpBlocked,
    /// A link to a super node is attached.
    Attached {
        /// The super node's main address.
        super_node: SocketAddr,
        /// How it is reached.
        transport: LinkTransport,
        /// The node's address as that super node sees it.
        reflexive: SocketAddr,
        /// Its round-trip time from the probe, when UDP answered.
        rtt: Option<Duration>,
    },
    /// A link was lost.
    Detached {
        /// The super node.
        super_node: SocketAddr,
    },
    /// No super node is attached and a round found none to attach to. Sent once when that
    /// happens, again only after one attached in between (the node keeps trying, backing off
    /// from 0.5 s to 30 s).
    NoSuperNode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Connecting,
    Handshaking,
    Attaching,
    Attached,
}

#[derive(Debug, Clone)]
struct Link {
    entry: CacheEntry,
    transport: LinkTransport,
    state: LinkState,
    since: Instant,
    rtt: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Probe {
    entry: CacheEntry,
    transaction: TransactionId,
    sent: Instant,
    rtt: Option<Duration>,
}

/// The ordinary node's attach logic.
///
/// Joining the overlay as an ordinary node: finding super nodes and keeping links to them.
///
/// The [`Attacher`] is a sub-machine of the node. It owns the [`HostCache`] and decides; the
/// node facade carries its [`AttachAction`]s out on the endpoint and the driver, and feeds the
/// outcomes back. A round, as the original network did it and better:
///
/// 1. **Probe**: STUN Binding requests over UDP to the best few (default 5) host-cache entries
///    at once. Answers give each super node's round-trip time (and the node's reflexive
///    address).
/// 2. **Link**: TCP connections to the fastest responders, each carrying a Noise session and an
///    `OverlayAttach`; the node keeps [`AttachConfig::links`] (default 2) attached links. When
///    no probe is answered within [`AttachConfig::probe_window`], UDP is treated as blocked and
///    the node goes straight to TCP with every candidate. A TCP connection refused or timing
///    out on the main port is retried on the super node's fallback port, then on its
///    TLS-wrapped port (the stand-ins for 80 and 443, [`AttachConfig::fallback_ports`]),
///    which strict firewalls pass.
/// 3. **Keep**: a lost link (its stream closed, its session timed out, a handover) starts a new
///    round at once; the other link keeps the node attached meanwhile. Rounds that attach
///    nothing back off with jitter (0.5 s doubling to 30 s, each delay drawn from its upper
///    half). When failures have pruned every host-cache entry, the entries the cache started
///    with (the bootstrap list) are put back, so the node keeps trying.
#[derive(Debug)]
pub struct Attacher {
    cfg: AttachConfig,
    cache: HostCache,
    /// The entries the cache started with (the bootstrap list, what was saved): put back when
    /// pruning has emptied it, so a node whose super nodes were all down for a while still
    /// finds them when they return.
    seeds: Vec<(SocketAddr, Option<[u8; 32]>)>,
    rng: Rng,
    links: BTreeMap<StreamId, Link>,
    probes: Vec<Probe>,
    probing_until: Option<Instant>,
    next_round: Option<Instant>,
    failed_rounds: u32,
    /// [`AttachEvent::NoSuperNode`] was sent and no super node attached since.
    reported_none: bool,
    next_stream: u64,
    next_refresh: Option<Instant>,
    udp_blocked: bool,
    actions: Vec<AttachAction>,
    events: Vec<AttachEvent>,
}

impl Attacher {
    /// An attacher with a host cache (loaded from disk and seeded with the bootstrap list).
    pub fn new(cfg: AttachConfig, cache: HostCache) -> Self {
        Self {
            rng: Rng::from_seed_bytes(cfg.seed),
            cfg,
            seeds: cache
                .entries()
                .iter()
                .map(|e| (e.addr, e.static_key))
                .collect(),
            cache,
            links: BTreeMap::new(),
            probes: Vec::new(),
            probing_until: None,
            next_round: None,
            failed_rounds: 0,
            reported_none: false,
            next_stream: 0,
            next_refresh: None,
            udp_blocked: false,
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The host cache (to persist it).
    pub fn cache(&self) -> &HostCache {
        &self.cache
    }

    /// Attached links: (stream, super node address).
    pub fn attached(&self) -> Vec<(StreamId, SocketAddr)> {
        let mut v: Vec<_> = self
            .links
            .iter()
            .filter(|(_, l)| l.state == LinkState::Attached)
            .map(|(s, l)| (*s, l.entry.addr))
            .collect();
        v.sort();
        v
    }

    /// A one-line description of the attacher's state, for status output and diagnostics.
    pub fn describe(&self, now: Instant) -> String {
        let mut links: Vec<String> = self
            .links
            .values()
            .map(|l| {
                format!(
                    "{}:{:?}/{:?} {}ms",
                    l.entry.addr,
                    l.state,
                    l.transport,
                    now.saturating_duration_since(l.since).as_millis()
                )
            })
            .collect();
        links.sort();
        format!(
            "links [{}]; probes {} (window {:?}); next round {:?}; failed rounds {}",
            links.join(", "),
            self.probes.len(),
            self.probing_until.map(|t| t.saturating_duration_since(now)),
            self.next_round.map(|t| t.saturating_duration_since(now)),
            self.failed_rounds
        )
    }

    /// How the attached links got through: the first of main port, fallback port and TLS
    /// port that an attached link uses (`None` when not attached). A stream opened to a super
    /// node for something else starts there, rather than waiting for a firewall to time out
    /// the ports before it.
    pub fn link_transport(&self) -> Option<LinkTransport> {
        let rank = |t: LinkTransport| match t {
            LinkTransport::Tcp => 0,
            LinkTransport::TcpFallback => 1,
            LinkTransport::Tls => 2,
        };
        self.links
            .values()
            .filter(|l| l.state == LinkState::Attached)
            .map(|l| l.transport)
            .min_by_key(|t| rank(*t))
    }

    /// True when UDP probes went unanswered in the last round.
    pub fn udp_blocked(&self) -> bool {
        self.udp_blocked
    }

    /// Start (or restart) joining at `now` (wall-clock `wall`).
    pub fn start(&mut self, now: Instant, wall: UnixTime) {
        self.next_round = Some(now);
        self.handle_timeout(now, wall);
    }

    fn in_progress(&self) -> usize {
        self.links
            .values()
            .filter(|l| l.state != LinkState::Attached)
            .count()
    }

    fn attached_count(&self) -> usize {
        self.links.len() - self.in_progress()
    }

    fn begin_round(&mut self, now: Instant, wall: UnixTime) {
        self.next_round = None;
        if self.attached_count() >= self.cfg.links || !self.probes.is_empty() {
            return;
        }
        self.cache.prune(wall);
        let exclude: Vec<SocketAddr> = self.links.values().map(|l| l.entry.addr).collect();
        if self.cache.is_empty() {
            // Every entry failed often enough to be pruned (all super nodes down, or this
            // host offline): start over from the entries it began with, with a clean record.
            for (addr, key) in &self.seeds {
                self.cache.insert(*addr, *key, wall);
            }
        }
        let tiebreak = self.rng.u64();
        let candidates = self.cache.best(self.cfg.probes, &exclude, wall, tiebreak);
        if candidates.is_empty() {
            self.schedule_retry(now);
            return;
        }
        self.events.push(AttachEvent::Connecting {
            candidates: candidates.len(),
        });
        for entry in candidates {
            let mut id = [0u8; 12];
            self.rng.fill(&mut id);
            let transaction = TransactionId(id);
            self.actions.push(AttachAction::Probe {
                addr: entry.addr,
                transaction,
            });
            self.probes.push(Probe {
                entry,
                transaction,
                sent: now,
                rtt: None,
            });
        }
        self.probing_until = Some(now + self.cfg.probe_window);
    }

    /// A round ended without the links wanted: try again after a back-off. With no super node
    /// at all, say so (once, until one attaches).
    fn schedule_retry(&mut self, now: Instant) {
        if self.attached_count() == 0 && self.in_progress() == 0 && !self.reported_none {
            self.reported_none = true;
            self.events.push(AttachEvent::NoSuperNode);
        }
        self.failed_rounds += 1;
        let exp = self.failed_rounds.min(7);
        let base = Duration::from_millis(250) * (1 << exp);
        let base = base.min(Duration::from_secs(30));
        // Jitter: between half and the whole of the delay, so nodes do not retry in step.
        let jitter = base.mul_f64(0.5 + 0.5 * self.rng.unit());
        self.next_round = Some(now + jitter);
    }

    /// A STUN Binding answer arrived (the facade matches answers to probes by transaction).
    /// Returns true when it was one of the attacher's probes.
    pub fn probe_answered(&mut self, now: Instant, transaction: TransactionId) -> bool {
        let first = self.probes.iter().all(|p| p.rtt.is_none());
        let Some(p) = self
            .probes
            .iter_mut()
            .find(|p| p.transaction == transaction)
        else {
            return false;
        };
        let rtt = now.saturating_duration_since(p.sent);
        if p.rtt.is_none() {
            p.rtt = Some(rtt);
        }
        // After the first answer, the others get at most twice its round trip (at least
        // 20 ms): a candidate that has not answered by then is probably gone, and waiting the
        // whole window for it only delays the links (a fail-over measured 300 ms of waiting
        // for the dead super node's probe before this).
        if first {
            let cap = now + (rtt * 2).max(Duration::from_millis(20));
            self.probing_until = Some(self.probing_until.map_or(cap, |t| t.min(cap)));
        }
        // Enough answers to fill the missing links (plus a spare), or everyone answered: no
        // need to wait any longer.
        let answered = self.probes.iter().filter(|p| p.rtt.is_some()).count();
        let want = self.cfg.links.saturating_sub(self.attached_count()) + 1;
        if answered >= want.min(self.probes.len()) {
            self.probing_until = Some(now);
        }
        true
    }

    fn end_probing(&mut self, now: Instant) {
        self.probing_until = None;
        let mut probes = std::mem::take(&mut self.probes);
        let answered = probes.iter().filter(|p| p.rtt.is_some()).count();
        self.udp_blocked = answered == 0;
        if self.udp_blocked {
            self.events.push(AttachEvent::UdpBlocked);
        }
        // Fastest responders first; with UDP blocked, every candidate in cache order.
        probes.sort_by_key(|p| p.rtt.unwrap_or(Duration::MAX));
        if !self.udp_blocked {
            probes.retain(|p| p.rtt.is_some());
        }
        let want = self.cfg.links.saturating_sub(self.attached_count());
        // One spare beyond what is needed, so a slow link does not delay attachment.
        for p in probes.into_iter().take(want + 1) {
            self.open(now, p.entry, LinkTransport::Tcp, p.rtt);
        }
        self.ensure_round(now);
    }

    fn port_for(&self, entry: &CacheEntry, transport: LinkTransport) -> SocketAddr {
        transport.address(entry.addr, self.cfg.fallback_ports)
    }

    fn open(
        &mut self,
        now: Instant,
        entry: CacheEntry,
        transport: LinkTransport,
        rtt: Option<Duration>,
    ) {
        let stream = StreamId::local(self.next_stream);
        self.next_stream += 1;
        self.actions.push(AttachAction::OpenStream {
            stream,
            remote: self.port_for(&entry, transport),
            tls: transport == LinkTransport::Tls,
        });
        self.links.insert(
            stream,
            Link {
                entry,
                transport,
                state: LinkState::Connecting,
                since: now,
                rtt,
            },
        );
    }

    /// The driver opened a stream the attacher asked for.
    pub fn stream_opened(&mut self, now: Instant, stream: StreamId) {
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        if link.state == LinkState::Connecting {
            link.state = LinkState::Handshaking;
            link.since = now;
            let static_key = link.entry.static_key;
            self.actions
                .push(AttachAction::StartSession { stream, static_key });
        }
    }

    /// The Noise session on `stream` is established with a super node whose static key is
    /// `static_key`.
    pub fn session_established(&mut self, now: Instant, stream: StreamId, static_key: [u8; 32]) {
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        link.entry.static_key = Some(static_key);
        link.state = LinkState::Attaching;
        link.since = now;
        self.actions.push(AttachAction::SendAttach { stream });
    }

    /// The super node answered the attach request.
    pub fn attach_answered(
        &mut self,
        now: Instant,
        wall: UnixTime,
        stream: StreamId,
        accepted: bool,
        reflexive: SocketAddr,
        super_nodes: &[HostEntry],
    ) {
        self.cache.merge(super_nodes, wall);
        let attached = self.attached_count();
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        if link.state != LinkState::Attaching {
            return;
        }
        if !accepted || attached >= self.cfg.links {
            // Full, or a spare we no longer need.
            self.actions.push(AttachAction::CloseStream { stream });
            self.links.remove(&stream);
            if !accepted {
                self.maybe_next_round(now);
            }
            return;
        }
        link.state = LinkState::Attached;
        link.since = now;
        if let Some(key) = link.entry.static_key {
            self.cache.success(link.entry.addr, key, wall);
        }
        self.failed_rounds = 0;
        self.reported_none = false;
        self.events.push(AttachEvent::Attached {
            super_node: link.entry.addr,
            transport: link.transport,
            reflexive,
            rtt: link.rtt,
        });
        if self.next_refresh.is_none() {
            self.next_refresh = Some(now + self.cfg.refresh_interval);
        }
        self.ensure_round(now);
        // Enough links: drop the spares still connecting.
        if self.attached_count() >= self.cfg.links {
            let spares: Vec<StreamId> = self
                .links
                .iter()
                .filter(|(_, l)| l.state != LinkState::Attached)
                .map(|(s, _)| *s)
                .collect();
            for s in spares {
                self.links.remove(&s);
                self.actions.push(AttachAction::CloseStream { stream: s });
            }
        }
    }

    /// Host cache entries arrived from a super node.
    pub fn host_cache_received(&mut self, wall: UnixTime, entries: &[HostEntry]) {
        self.cache.merge(entries, wall);
    }

    /// A super node hands its clients over: learn the entries; the link will close.
    pub fn handover(
        &mut self,
        now: Instant,
        wall: UnixTime,
        stream: StreamId,
        entries: &[HostEntry],
    ) {
        self.cache.merge(entries, wall);
        self.lost(now, stream, false);
    }

    /// The stream (or its session) closed or failed.
    pub fn stream_closed(&mut self, now: Instant, stream: StreamId) {
        self.lost(now, stream, true);
    }

    fn lost(&mut self, now: Instant, stream: StreamId, failure: bool) {
        let Some(link) = self.links.remove(&stream) else {
            return;
        };
        match link.state {
            LinkState::Attached => {
                self.events.push(AttachEvent::Detached {
                    super_node: link.entry.addr,
                });
                if failure {
                    self.cache.failure(link.entry.addr);
                }
                // Replace it at once.
                self.next_round = Some(now);
            }
            LinkState::Connecting => {
                // Refused or timed out: the next port, else the next candidate.
                if let Some(next) = link.transport.next() {
                    self.open(now, link.entry, next, link.rtt);
                } else {
                    self.cache.failure(link.entry.addr);
                    self.maybe_next_round(now);
                }
            }
            LinkState::Handshaking | LinkState::Attaching => {
                self.cache.failure(link.entry.addr);
                self.maybe_next_round(now);
            }
        }
        if !self.links.contains_key(&stream) {
            self.actions.push(AttachAction::CloseStream { stream });
        }
        self.ensure_round(now);
    }

    /// The invariant: fewer links attached or in progress than wanted, no probe round under
    /// way and none scheduled means a round is due. (A round can open fewer links than missing,
    /// when fewer super nodes answered its probes; without this nothing would look again.)
    fn ensure_round(&mut self, now: Instant) {
        if self.attached_count() + self.in_progress() < self.cfg.links
            && self.probes.is_empty()
            && self.probing_until.is_none()
            && self.next_round.is_none()
        {
            if self.attached_count() == 0 && self.in_progress() == 0 {
                self.schedule_retry(now);
            } else {
                self.next_round = Some(now);
            }
        }
    }

    fn maybe_next_round(&mut self, now: Instant) {
        if self.attached_count() + self.in_progress() < self.cfg.links && self.probes.is_empty() {
            if self.attached_count() == 0 && self.in_progress() == 0 {
                self.schedule_retry(now);
            } else {
                self.next_round = Some(now);
            }
        }
    }

    /// Timers: the probe window, link timeouts, retries, host cache refresh.
    pub fn handle_timeout(&mut self, now: Instant, wall: UnixTime) {
        if self.probing_until.is_some_and(|t| t <= now) {
            self.end_probing(now);
        }
        let stale: Vec<StreamId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.state != LinkState::Attached
                    && now.saturating_duration_since(l.since) >= self.cfg.link_timeout
            })
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            self.lost(now, s, true);
        }
        if self.next_round.is_some_and(|t| t <= now) {
            self.begin_round(now, wall);
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.next_refresh = Some(now + self.cfg.refresh_interval);
            if let Some((stream, _)) = self.attached().first().copied() {
                self.actions.push(AttachAction::RequestHostCache { stream });
            }
        }
        self.ensure_round(now);
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self
            .links
            .values()
            .filter(|l| l.state != LinkState::Attached)
            .map(|l| l.since + self.cfg.link_timeout);
        [self.probing_until, self.next_round, self.next_refresh]
            .into_iter()
            .flatten()
            .chain(links)
            .min()
    }

    /// Actions to carry out, in order.
    pub fn drain_actions(&mut self) -> Vec<AttachAction> {
        std::mem::take(&mut self.actions)
    }

    /// Events to report, in order.
    pub fn drain_events(&mut self) -> Vec<AttachEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(n: u8) -> HostCache {
        let mut c = HostCache::new();
        for i in 0..n {
            c.insert(SocketAddr::from(([198, 18, 0, i], 4000)), None, UnixTime(1));
        }
        c
    }

    /// Drive a round in which only one super node answers its probe: after that link
    /// attaches, another round must look for the second link.
    #[test]
    fn a_round_with_too_few_answers_is_followed_by_another() {
        let t0 = Instant::now();
        let mut a = Attacher::new(AttachConfig::new([1; 32]), cache(5));
        a.start(t0, UnixTime(1));
        let probes: Vec<_> = a
            .drain_actions()
            .into_iter()
            .filter_map(|x| match x {
                AttachAction::Probe { transaction, .. } => Some(transaction),
                _ => None,
            })
            .collect();
        assert_eq!(probes.len(), 5);
        // One answer, then the adaptive window closes.
        let t1 = t0 + Duration::from_millis(5);
        a.probe_answered(t1, probes[0]);
        let t2 = t1 + Duration::from_millis(30);
        a.handle_timeout(t2, UnixTime(1));
        let actions = a.drain_actions();
        let opened: Vec<StreamId> = actions
            .iter()
            .filter_map(|x| match x {
                AttachAction::OpenStream { stream, .. } => Some(*stream),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 1, "only one super node answered");
        // One link for two wanted: a new round looks for the other at once, in parallel.
        let probes_again = actions
            .iter()
            .filter(|x| matches!(x, AttachAction::Probe { .. }))
            .count();
        assert_eq!(probes_again, 4, "the other candidates are probed again");
        a.stream_opened(t2, opened[0]);
        a.session_established(t2, opened[0], [7; 32]);
        let addr: SocketAddr = "198.18.9.9:1".parse().unwrap();
        a.attach_answered(t2, UnixTime(1), opened[0], true, addr, &[]);
        assert_eq!(a.attached().len(), 1);
        assert!(a.describe(t2).contains("probes 4"), "{}", a.describe(t2));
    }
    #[test]
    fn fallback_ports_parse_as_absolute_ports_or_offsets() {
        let main: SocketAddr = "198.18.0.1:4000".parse().unwrap();
        let abs: FallbackPorts = "80,443".parse().unwrap();
        assert_eq!(
            abs,
            FallbackPorts::Absolute {
                plain: 80,
                tls: 443
            }
        );
        assert_eq!(abs.plain(main), "198.18.0.1:80".parse().unwrap());
        assert_eq!(abs.tls(main), "198.18.0.1:443".parse().unwrap());
        let off: FallbackPorts = " +7, +9".parse().unwrap();
        assert_eq!(off, FallbackPorts::Offsets { plain: 7, tls: 9 });
        assert_eq!(off.plain(main), "198.18.0.1:4007".parse().unwrap());
        assert_eq!(off.tls(main), "198.18.0.1:4009".parse().unwrap());
        assert_eq!(FallbackPorts::default().to_string(), "+1,+2");
        for s in [abs, off, FallbackPorts::default()] {
            assert_eq!(s.to_string().parse::<FallbackPorts>(), Ok(s));
        }
        for bad in [
            "80",
            "80,+443",
            "0,443",
            "+0,+1",
            "443,443",
            "80,x",
            "80,443,8080",
        ] {
            assert!(bad.parse::<FallbackPorts>().is_err(), "{bad}");
        }
    }

    /// With UDP blocked and the main port refused, the attacher tries the configured plain
    /// fallback port, then the configured TLS port.
    #[test]
    fn refused_main_ports_fall_back_to_the_configured_ports() {
        let t0 = Instant::now();
        let mut cfg = AttachConfig::new([2; 32]);
        cfg.fallback_ports = FallbackPorts::Absolute {
            plain: 8080,
            tls: 8443,
        };
        let mut a = Attacher::new(cfg, cache(1));
        a.start(t0, UnixTime(1));
        a.drain_actions();
        // No probe answered: straight to TCP on the main port.
        let t1 = t0 + Duration::from_millis(300);
        a.handle_timeout(t1, UnixTime(1));
        let open = |a: &mut Attacher| -> Vec<(StreamId, SocketAddr, bool)> {
            a.drain_actions()
                .into_iter()
                .filter_map(|x| match x {
                    AttachAction::OpenStream {
                        stream,
                        remote,
                        tls,
                    } => Some((stream, remote, tls)),
                    _ => None,
                })
                .collect()
        };
        let main = open(&mut a);
        assert_eq!(main.len(), 1);
        assert_eq!(main[0].1, "198.18.0.0:4000".parse().unwrap());
        a.stream_closed(t1, main[0].0);
        let plain = open(&mut a);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].1, "198.18.0.0:8080".parse().unwrap());
        assert!(!plain[0].2, "the plain fallback port is not TLS");
        a.stream_closed(t1, plain[0].0);
        let tls = open(&mut a);
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].1, "198.18.0.0:8443".parse().unwrap());
        assert!(tls[0].2, "the TLS port is TLS-wrapped");
        // The TLS link attaches and says so.
        a.stream_opened(t1, tls[0].0);
        a.session_established(t1, tls[0].0, [3; 32]);
        a.drain_events();
        a.attach_answered(
            t1,
            UnixTime(1),
            tls[0].0,
            true,
            "198.18.9.9:1".parse().unwrap(),
            &[],
        );
        assert!(a.drain_events().iter().any(|e| matches!(
            e,
            AttachEvent::Attached {
                transport: LinkTransport::Tls,
                ..
            }
        )));
    }
}
