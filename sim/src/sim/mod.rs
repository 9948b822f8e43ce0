//! The simulator proper: types, event queue, machines and run control. Topology and links,
//! datagram routing through NATs, and streams live in submodules.

mod datagram;
mod streams;
mod topology;

use std::any::Any;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_core::sansio::{Destination, Input, Machine, Protocol, StreamId, Transmit};

use crate::config::SimConfig;
use crate::link::LinkConfig;
use crate::nat::{MappingInfo, NatConfig, NatRefusal, NatState};
use crate::rng::SimRng;
use crate::stream::{StreamEnd, StreamInfo, StreamStatus};
use crate::trace::{
    CapturePoint, Captured, Counters, DropReason, Trace, TraceEntry, TraceKind, Verdict,
};

/// The IP TTL of packets sent without one (Linux's default): the number of routers (NAT boxes,
/// the internet) a packet may cross.
const MAX_TTL: u8 = 64;
/// First ephemeral port used for outbound streams.
const EPHEMERAL_START: u16 = 49152;

/// Identifies a host in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(usize);

impl HostId {
    /// The host's index, in order of creation.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Identifies a NAT box in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatId(usize);

impl NatId {
    /// The NAT's index, in order of creation.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Something attached to a network: a host, or a NAT box (which is attached to its outside
/// network with its external address, and acts as the gateway of its inside LAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A host.
    Host(HostId),
    /// A NAT box.
    Nat(NatId),
}

impl From<HostId> for Node {
    fn from(h: HostId) -> Self {
        Node::Host(h)
    }
}

impl From<NatId> for Node {
    fn from(n: NatId) -> Self {
        Node::Nat(n)
    }
}

/// An address space: the public internet, or the private LAN behind a NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    /// The public internet.
    Internet,
    /// The inside of a NAT box.
    Lan(NatId),
}

/// A point in virtual time: either an [`Instant`] handed out by the simulator or a
/// [`Duration`] since the simulation started.
pub trait Deadline {
    /// The offset of this deadline from `base`, the simulation start (saturating at zero).
    fn offset_from(self, base: Instant) -> Duration;
}

impl Deadline for Duration {
    fn offset_from(self, _base: Instant) -> Duration {
        self
    }
}

impl Deadline for Instant {
    fn offset_from(self, base: Instant) -> Duration {
        self.saturating_duration_since(base)
    }
}

/// A [`Machine`] that can also be downcast to its concrete type.
trait AnyMachine<E>: Machine<Event = E> {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_machine_mut(&mut self) -> &mut dyn Machine<Event = E>;
}

impl<E, T: Machine<Event = E> + Any> AnyMachine<E> for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_machine_mut(&mut self) -> &mut dyn Machine<Event = E> {
        self
    }
}

/// A callback that sees every datagram a machine sends and decides its fate.
type Interceptor = Box<dyn FnMut(&Captured) -> Verdict>;

struct Host<E> {
    name: String,
    network: Network,
    addrs: Vec<SocketAddr>,
    machine: Box<dyn AnyMachine<E>>,
    events: Vec<(Duration, E)>,
    timer: Option<Duration>,
    timer_gen: u64,
    udp_blocked: bool,
    /// Crashed: its machine gets no more input, its sockets are gone.
    crashed: bool,
    /// Powered off ([`Sim::power_off`]): crashed, and nothing answers for it either.
    silent: bool,
    next_ephemeral: u16,
    /// Sockets its machine opened ([`StreamCommand::BindUdp`](natter_core::sansio::StreamCommand)):
    /// gone with it when it crashes.
    on_demand: Vec<SocketAddr>,
}

struct Nat {
    name: String,
    network: Network,
    lan: BTreeMap<IpAddr, Node>,
    state: NatState,
}

/// What a packet carries.
#[derive(Clone)]
enum Body {
    Datagram(Bytes),
    /// A stream connection attempt. `route` accumulates the networks crossed so far.
    Syn {
        stream: StreamId,
        sent_at: Duration,
        route: Vec<Traversal>,
    },
}

/// One direction of one link segment, which has a loss chain of its own when bursty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LossChain {
    /// What `node` sends on its network, across its access link.
    Upstream(Node),
    /// The link between two attachment points on `network`, from `from` (`None`: an injected
    /// datagram with no sender on the network) to `to`.
    Path {
        network: Network,
        from: Option<Node>,
        to: Node,
    },
    /// What `node` receives, across its access link.
    Downstream(Node),
}

#[derive(Clone)]
struct Packet {
    src: SocketAddr,
    dst: SocketAddr,
    body: Body,
    ttl: u8,
}

impl Packet {
    fn protocol(&self) -> Protocol {
        match self.body {
            Body::Datagram(_) => Protocol::Udp,
            Body::Syn { .. } => Protocol::Tcp,
        }
    }

    fn len(&self) -> usize {
        match &self.body {
            Body::Datagram(b) => b.len(),
            Body::Syn { .. } => 0,
        }
    }
}

/// One crossing of a network, from one node to another: the unit of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traversal {
    network: Network,
    from: Option<Node>,
    to: Node,
}

/// Where a packet in flight arrives.
#[derive(Clone, Copy)]
enum Hop {
    Host(HostId),
    /// The LAN side of a NAT: outbound processing.
    NatInside(NatId),
    /// The external side of a NAT: inbound processing.
    NatOutside(NatId),
}

enum Action {
    Timer {
        host: HostId,
        gen: u64,
    },
    Arrive {
        hop: Hop,
        packet: Packet,
    },
    StreamEstablished {
        stream: StreamId,
        peer: StreamId,
        route: Vec<Traversal>,
    },
    StreamFailed {
        stream: StreamId,
    },
    StreamData {
        stream: StreamId,
        data: Bytes,
    },
    StreamFin {
        stream: StreamId,
    },
    /// The answer to a machine's [`StreamCommand::BindUdp`](natter_core::sansio::StreamCommand).
    UdpBound {
        host: HostId,
        token: u64,
        local: SocketAddr,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that the max-heap pops the earliest `(at, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A deterministic discrete-event network simulator driving sans-IO [`Machine`]s.
///
/// See the [crate documentation](crate) for the model. All machines in one simulator share
/// the event type `E` (use an enum to mix machine types).
pub struct Sim<E> {
    config: SimConfig,
    base: Instant,
    now: Duration,
    steps_at_now: u64,
    rng: SimRng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    hosts: Vec<Host<E>>,
    nats: Vec<Nat>,
    internet: BTreeMap<IpAddr, Node>,
    links: BTreeMap<(Node, Node), LinkConfig>,
    access: BTreeMap<Node, LinkConfig>,
    /// The state of every bursty segment's Gilbert-Elliott chain (true: in a burst).
    loss_chains: BTreeMap<LossChain, bool>,
    streams: BTreeMap<StreamId, StreamEnd>,
    next_stream: u64,
    /// Streams machines opened with `StreamCommand::Connect`: (host, the machine's id) to the
    /// simulator's id, and back. Machine ids are per host; simulator ids are global.
    aliases: BTreeMap<(HostId, StreamId), StreamId>,
    machine_ids: BTreeMap<StreamId, StreamId>,
    trace: Trace,
    captured: Vec<Captured>,
    interceptor: Option<Interceptor>,
}

impl<E> fmt::Debug for Sim<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .field("nats", &self.nats.len())
            .field("queued", &self.queue.len())
            .field("digest", &format_args!("{:016x}", self.trace.digest()))
            .finish()
    }
}

impl<E: 'static> Sim<E> {
    /// A simulator whose virtual clock starts at `Instant::now()`.
    ///
    /// The start instant is the only thing read from the real clock; every later instant is
    /// `start + offset`, and all scheduling works on offsets, so runs are reproducible.
    pub fn new(config: SimConfig) -> Self {
        Self::with_start(config, Instant::now())
    }

    /// A simulator whose virtual clock starts at `start`.
    pub fn with_start(config: SimConfig, start: Instant) -> Self {
        Sim {
            rng: SimRng::new(config.seed),
            trace: Trace::new(config.record_trace),
            config,
            base: start,
            now: Duration::ZERO,
            steps_at_now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            hosts: Vec::new(),
            nats: Vec::new(),
            internet: BTreeMap::new(),
            links: BTreeMap::new(),
            access: BTreeMap::new(),
            loss_chains: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream: 1,
            aliases: BTreeMap::new(),
            machine_ids: BTreeMap::new(),
            captured: Vec::new(),
            interceptor: None,
        }
    }

    /// The configuration the simulator was built with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    // ----------------------------------------------------------------------------------------
    // Clock
    // ----------------------------------------------------------------------------------------

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.base + self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// The instant the simulation started at.
    pub fn start(&self) -> Instant {
        self.base
    }

    /// The instant `offset` after the start.
    pub fn instant(&self, offset: Duration) -> Instant {
        self.base + offset
    }

    // ----------------------------------------------------------------------------------------
    // Machines and events
    // ----------------------------------------------------------------------------------------

    /// Runs an application command on `host`'s machine, then drains its outputs.
    ///
    /// `f` gets the machine, downcast to `M`, and the current instant.
    ///
    /// # Panics
    ///
    /// If the machine is not an `M`.
    pub fn with_machine<M, R>(&mut self, host: HostId, f: impl FnOnce(&mut M, Instant) -> R) -> R
    where
        M: Machine<Event = E> + 'static,
    {
        let now = self.now();
        let machine = self.hosts[host.0]
            .machine
            .as_any_mut()
            .downcast_mut::<M>()
            .unwrap_or_else(|| panic!("{host:?} does not run a {}", std::any::type_name::<M>()));
        let r = f(machine, now);
        self.drain(host);
        r
    }

    /// Like [`with_machine`](Self::with_machine), without downcasting.
    pub fn with_dyn_machine<R>(
        &mut self,
        host: HostId,
        f: impl FnOnce(&mut dyn Machine<Event = E>, Instant) -> R,
    ) -> R {
        let now = self.now();
        let r = f(self.hosts[host.0].machine.as_machine_mut(), now);
        self.drain(host);
        r
    }

    /// Read-only access to `host`'s machine.
    ///
    /// # Panics
    ///
    /// If the machine is not an `M`.
    pub fn machine<M: 'static>(&self, host: HostId) -> &M {
        self.hosts[host.0]
            .machine
            .as_any()
            .downcast_ref::<M>()
            .unwrap_or_else(|| panic!("{host:?} does not run a {}", std::any::type_name::<M>()))
    }

    /// The events `host`'s machine has reported, with the offset at which each was polled.
    pub fn events(&self, host: HostId) -> &[(Duration, E)] {
        &self.hosts[host.0].events
    }

    /// Removes and returns the events `host`'s machine has reported.
    pub fn take_events(&mut self, host: HostId) -> Vec<(Duration, E)> {
        std::mem::take(&mut self.hosts[host.0].events)
    }

    /// Drains `host`'s machine in the order of the sans-IO contract: transmits, stream
    /// commands, events, then the timer, repeated until nothing new appears.
    fn drain(&mut self, host: HostId) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.hosts[host.0].machine.poll_transmit() {
                progressed = true;
                self.on_transmit(host, t);
            }
            while let Some(c) = self.hosts[host.0].machine.poll_stream_command() {
                progressed = true;
                self.on_stream_command(host, c);
            }
            while let Some(e) = self.hosts[host.0].machine.poll_event() {
                progressed = true;
                let now = self.now;
                self.hosts[host.0].events.push((now, e));
            }
            self.arm_timer(host);
            if !progressed {
                return;
            }
        }
    }

    fn arm_timer(&mut self, host: HostId) {
        let base = self.base;
        let now = self.now;
        let h = &mut self.hosts[host.0];
        let deadline = h
            .machine
            .poll_timeout()
            .map(|t| t.saturating_duration_since(base).max(now));
        if deadline != h.timer {
            h.timer = deadline;
            h.timer_gen += 1;
            let gen = h.timer_gen;
            if let Some(at) = deadline {
                self.schedule(at, Action::Timer { host, gen });
            }
        }
    }

    fn deliver(&mut self, host: HostId, input: Input<'_>) {
        if self.hosts[host.0].crashed {
            return;
        }
        let now = self.now();
        // Streams a machine opened itself are known to it by its own id.
        let local = |id: StreamId| self.machine_ids.get(&id).copied().unwrap_or(id);
        let input = match input {
            Input::Stream {
                stream,
                remote,
                data,
            } => Input::Stream {
                stream: local(stream),
                remote,
                data,
            },
            Input::StreamOpened { stream, remote } => Input::StreamOpened {
                stream: local(stream),
                remote,
            },
            Input::StreamClosed { stream } => Input::StreamClosed {
                stream: local(stream),
            },
            other => other,
        };
        self.hosts[host.0].machine.handle_input(now, input);
        self.drain(host);
    }

    /// Crash `host` as a killed process would: every stream it has is closed (peers hear it
    /// after the usual delay, as a kernel resets the connections of a dead process), nothing is
    /// delivered to it any more, its timers stop, and packets and connection attempts to it
    /// find no socket.
    pub fn crash(&mut self, host: HostId) {
        for s in self.streams_of(host) {
            self.close_stream(host, s);
        }
        let h = &mut self.hosts[host.0];
        h.crashed = true;
        // The sockets its machine opened die with its process.
        for local in std::mem::take(&mut h.on_demand) {
            h.addrs.retain(|a| *a != local);
        }
    }

    /// Stop `host` as a power cut or a pulled cable would: unlike [`crash`](Self::crash), no
    /// stream is closed (its peers hear nothing, no FIN, no reset), and nothing answers for it
    /// either: datagrams and data sent to it vanish, connection attempts to it time out after
    /// [`StreamConfig::connect_timeout`](crate::StreamConfig::connect_timeout). Its machine
    /// gets no more input and its timers stop. Peers can only notice through their own
    /// timeouts (keep-alives).
    pub fn power_off(&mut self, host: HostId) {
        let h = &mut self.hosts[host.0];
        h.crashed = true;
        h.silent = true;
    }

    /// Start `host` again with `machine`, as a process started anew after a crash: it keeps
    /// its addresses, its streams are closed (as [`crash`](Self::crash) does, if it had not
    /// crashed yet), and from now on its new machine gets input and timers.
    pub fn restart<M>(&mut self, host: HostId, machine: M)
    where
        M: Machine<Event = E> + 'static,
    {
        if !self.hosts[host.0].crashed {
            self.crash(host);
        }
        let h = &mut self.hosts[host.0];
        // (After a power cut the old machine's sockets are still listed.)
        for local in std::mem::take(&mut h.on_demand) {
            h.addrs.retain(|a| *a != local);
        }
        h.machine = Box::new(machine);
        h.crashed = false;
        h.silent = false;
        h.timer = None;
        h.timer_gen += 1;
        self.drain(host);
    }

    /// The simulator's id of a stream a machine names `id`.
    pub(super) fn sim_stream(&self, host: HostId, id: StreamId) -> StreamId {
        self.aliases.get(&(host, id)).copied().unwrap_or(id)
    }

    fn on_stream_command(&mut self, host: HostId, command: natter_core::sansio::StreamCommand) {
        use natter_core::sansio::StreamCommand;
        match command {
            // TLS is not modelled: a TLS stream is a stream.
            StreamCommand::Connect { stream, remote, .. } => {
                let id = self.connect_stream(host, remote);
                self.aliases.insert((host, stream), id);
                self.machine_ids.insert(id, stream);
            }
            StreamCommand::Close { stream } => {
                let id = self.sim_stream(host, stream);
                self.close_stream(host, id);
            }
            // A new socket on an ephemeral port of the address `near` names (or the host's
            // first), answered right away (in the next event).
            StreamCommand::BindUdp { token, near } => {
                let h = &mut self.hosts[host.0];
                let ip = h
                    .addrs
                    .iter()
                    .find(|a| a.ip() == near.ip())
                    .unwrap_or(&h.addrs[0])
                    .ip();
                let local = loop {
                    let port = h.next_ephemeral;
                    h.next_ephemeral = if port == u16::MAX {
                        EPHEMERAL_START
                    } else {
                        port + 1
                    };
                    let a = SocketAddr::new(ip, port);
                    if !h.addrs.contains(&a) {
                        break a;
                    }
                };
                h.addrs.push(local);
                h.on_demand.push(local);
                let now = self.now;
                self.schedule(now, Action::UdpBound { host, token, local });
            }
            StreamCommand::CloseUdp { local } => {
                // Only sockets the machine opened itself.
                let h = &mut self.hosts[host.0];
                if h.on_demand.contains(&local) {
                    h.on_demand.retain(|a| *a != local);
                    h.addrs.retain(|a| *a != local);
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Trace and capture
    // ----------------------------------------------------------------------------------------

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Mutable access to the trace (to [`clear_entries`](Trace::clear_entries)).
    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.trace
    }

    /// Shorthand for `self.trace().digest()`.
    pub fn digest(&self) -> u64 {
        self.trace.digest()
    }

    /// Shorthand for `self.trace().counters()`.
    pub fn counters(&self) -> &Counters {
        self.trace.counters()
    }

    /// The capture log (empty unless [`SimConfig::capture`] or
    /// [`set_capture`](Self::set_capture) turned it on).
    pub fn captured(&self) -> &[Captured] {
        &self.captured
    }

    /// Removes and returns the capture log.
    pub fn take_captured(&mut self) -> Vec<Captured> {
        std::mem::take(&mut self.captured)
    }

    /// Turns the capture log on or off.
    pub fn set_capture(&mut self, on: bool) {
        self.config.capture = on;
    }

    /// Installs a callback that sees every datagram a machine sends (before any firewall or
    /// NAT, as a [`Captured`] with [`CapturePoint::Sent`]) and may drop or rewrite it.
    /// Injected datagrams bypass it.
    pub fn set_interceptor(&mut self, f: impl FnMut(&Captured) -> Verdict + 'static) {
        self.interceptor = Some(Box::new(f));
    }

    /// Removes the interceptor.
    pub fn clear_interceptor(&mut self) {
        self.interceptor = None;
    }

    fn record(
        &mut self,
        kind: TraceKind,
        protocol: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        len: usize,
    ) {
        self.trace.record(TraceEntry {
            at: self.now,
            kind,
            protocol,
            src,
            dst,
            len,
        });
    }

    fn capture(
        &mut self,
        point: CapturePoint,
        host: Option<HostId>,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &Bytes,
    ) {
        if self.config.capture {
            self.captured.push(Captured {
                at: self.now,
                point,
                host,
                src,
                dst,
                payload: payload.clone(),
            });
        }
    }

    // ----------------------------------------------------------------------------------------
    // Run control
    // ----------------------------------------------------------------------------------------

    fn schedule(&mut self, at: Duration, action: Action) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Scheduled { at, seq, action });
    }

    /// Drops timer events that were superseded by a later re-arm.
    fn purge_stale(&mut self) {
        while let Some(top) = self.queue.peek() {
            match top.action {
                Action::Timer { host, gen } if self.hosts[host.0].timer_gen != gen => {
                    self.queue.pop();
                }
                _ => return,
            }
        }
    }

    /// When the next event is due, if any.
    pub fn next_event_time(&mut self) -> Option<Instant> {
        self.purge_stale();
        self.queue.peek().map(|s| self.base + s.at)
    }

    /// Processes the next event, advancing the clock to it. Returns `false` when nothing is
    /// left to do.
    ///
    /// # Panics
    ///
    /// After [`SimConfig::max_steps_per_instant`] consecutive steps at the same instant.
    pub fn step(&mut self) -> bool {
        self.purge_stale();
        let Some(s) = self.queue.pop() else {
            return false;
        };
        if s.at > self.now {
            self.now = s.at;
            self.steps_at_now = 0;
        } else {
            self.steps_at_now += 1;
            assert!(
                self.steps_at_now <= self.config.max_steps_per_instant,
                "livelock: {} steps at {:?} without time advancing",
                self.steps_at_now,
                self.now
            );
        }
        self.process(s.action);
        true
    }

    /// Processes every event due at or before `deadline`, then sets the clock to `deadline`
    /// (if it is in the future).
    pub fn run_until(&mut self, deadline: impl Deadline) {
        let deadline = deadline.offset_from(self.base);
        loop {
            self.purge_stale();
            match self.queue.peek() {
                Some(s) if s.at <= deadline => {
                    self.step();
                }
                _ => break,
            }
        }
        if deadline > self.now {
            self.now = deadline;
            self.steps_at_now = 0;
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now.saturating_add(duration);
        self.run_until(deadline);
    }

    /// Runs until no event is left, or `max_steps` steps were taken. Returns `true` if the
    /// simulation went idle (machines with periodic timers never do).
    pub fn run_until_idle(&mut self, max_steps: u64) -> bool {
        for _ in 0..max_steps {
            if !self.step() {
                return true;
            }
        }
        self.purge_stale();
        self.queue.is_empty()
    }

    /// Steps until `done(self)` holds or virtual time would pass `limit` (relative to now).
    /// Returns whether `done` held.
    pub fn run_until_cond(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.now.saturating_add(limit);
        loop {
            if done(self) {
                return true;
            }
            self.purge_stale();
            match self.queue.peek() {
                Some(s) if s.at <= deadline => {
                    self.step();
                }
                _ => {
                    self.run_until(deadline);
                    return done(self);
                }
            }
        }
    }

    fn process(&mut self, action: Action) {
        match action {
            Action::Timer { host, gen } => {
                let h = &mut self.hosts[host.0];
                if h.timer_gen != gen {
                    return;
                }
                h.timer = None;
                if h.crashed {
                    return;
                }
                let now = self.now();
                self.hosts[host.0].machine.handle_timeout(now);
                self.drain(host);
            }
            Action::Arrive { hop, packet } => match hop {
                Hop::Host(h) => self.arrive_host(h, packet),
                Hop::NatInside(n) => self.nat_outbound(n, packet),
                Hop::NatOutside(n) => self.nat_inbound(n, packet),
            },
            Action::StreamEstablished {
                stream,
                peer,
                route,
            } => self.stream_established(stream, peer, route),
            Action::StreamFailed { stream } => self.stream_failed(stream),
            Action::StreamData { stream, data } => self.stream_data(stream, data),
            Action::StreamFin { stream } => self.stream_fin(stream),
            Action::UdpBound { host, token, local } => {
                // A socket closed before its answer came (the machine crashed, say) is gone.
                let input = Input::UdpBound {
                    token,
                    local: self.hosts[host.0].addrs.contains(&local).then_some(local),
                };
                self.deliver(host, input);
            }
        }
    }
}

fn ordered(a: Node, b: Node) -> (Node, Node) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}
