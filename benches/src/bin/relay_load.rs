//! Relay load: one super node on loopback relaying N concurrent calls, 50 packets per second
//! each way per call, and what that costs it. Our half of `benches/relay_load.sh`, which runs
//! coturn under the same load and prints the ratio.
//!
//! ```text
//! cargo run --release -p natter-benches --bin relay_load -- --calls 500 --secs 10 [--json]
//! ```
//!
//! How it works:
//!
//! * **The super node** is a real [`Node`] (`RolePolicy::Force`, so it relays from the start)
//!   on a [`Runtime`] thread of its own, with one UDP socket on 127.0.0.1. Its CPU is read
//!   from `/proc/self/task/<tid>/stat` (utime + stime) for that thread alone, the thread id
//!   learnt by asking the runtime thread itself (`/proc/thread-self`).
//! * **The clients** are 2N devices, each with its own certified identity and user (so the
//!   per-user relay quotas, 8 channels and 64,000 B/s, never bind: a device sends
//!   [`FRAME_LEN`] × 50 = 7,750 B/s on one channel), its own [`Endpoint`] and its own UDP socket
//!   (the relay binds a leg to its party's session address). All of them run on ONE thread: a
//!   mio loop over the 2N sockets, so that the load generator takes at most one of the two
//!   cores. Each device opens a Noise XX session with the super node (at most 128 handshakes
//!   in flight), then device 2i asks for a channel to device 2i + 1
//!   ([`Message::RelayAllocate`]); the relay answers the requester (`RelayAllocated`) and
//!   offers the channel to the other (`RelayOffer`).
//! * **Traffic**: every device sends one relay frame every 20 ms on its channel, the devices
//!   spread over 20 one-millisecond slots. A frame is one UDP datagram of [`FRAME_LEN`] =
//!   155 bytes: the 5-byte relay header (`0x71`, channel word), then an inner packet shaped
//!   like a media data envelope: its 14-byte header (`0x61`, `0x10`, receiver index = the
//!   channel, counter = the sequence number), 120 bytes of "ciphertext" (the payload: send
//!   time in ns since the start, the sender's index, filler) and a 16-byte "tag" (filler).
//!   The relay never reads past the header, so the inner packet need not really be sealed.
//!   The receiving device checks that the frame came back with the direction bit set, from
//!   its partner, and takes send -> receive as the latency the relay path added (one clock,
//!   one process).
//! * **Measuring**: after the warm-up, a window of S seconds: packets the relay forwarded
//!   (its own counter, [`natter_overlay::relay::RelayStats::relayed_packets`], read through a
//!   runtime command at both ends of the window), the super node thread's CPU, and, for the
//!   frames *sent* inside the window, how many arrived (the clients keep going for a second
//!   after the window so that frames in flight at its end are counted) and their latency
//!   percentiles.
//!
//! Prints a summary on standard error and, with `--json`, one line on standard output:
//! `{"calls", "packets_per_sec", "cpu_seconds", "p50_ms", "p99_ms", "loss", "secs", ...}`
//! (`loss` a fraction; `secs` the window's measured length).
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use natter_core::crypto::DeviceId;
use natter_core::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};
use natter_core::sansio::{Destination, Input, Machine};
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_core::wire::message::Message;
use natter_overlay::node::{Node, NodeConfig, RolePolicy};
use natter_overlay::relay::RelayStats;
use natter_transport::runtime::{Runtime, RuntimeConfig};

/// Packets per second each way per call.
const RATE: u64 = 50;
/// Slots of the send schedule: one every millisecond, each device in one of them.
const SLOTS: u64 = 1000 / RATE;
/// Payload bytes per packet (what the coturn half sends in each ChannelData message).
const PAYLOAD: usize = 120;
/// Relay header: `0x71` and the channel word.
const RELAY_HEADER: usize = 5;
/// Data envelope header (class, type, receiver index, counter).
const ENVELOPE_HEADER: usize = 14;
/// Poly1305 tag.
const TAG: usize = 16;
/// Bytes of every relay frame, as one UDP datagram.
const FRAME_LEN: usize = RELAY_HEADER + ENVELOPE_HEADER + PAYLOAD + TAG;
/// The direction bit of the channel word.
const TO_PARTY: u32 = 1 << 31;
/// Handshakes in flight at once while the devices connect.
const CONNECTING: usize = 128;
/// Channel requests in flight at once.
const ALLOCATING: usize = 256;
/// How long the clients keep sending after the window, so frames in flight are counted.
const GRACE: Duration = Duration::from_secs(1);
/// Latency histogram: 1 µs buckets up to this many µs (beyond: 1 ms buckets).
const HIST_US: usize = 200_000;

// ------------------------------------------------------------------------------------------
// Settings.
// ------------------------------------------------------------------------------------------

/// Command-line settings.
#[derive(Debug, Clone)]
struct Args {
    /// Concurrent calls (2 devices each).
    calls: usize,
    /// Length of the measured window.
    secs: f64,
    /// Steady traffic before the window.
    warmup: f64,
    /// Print the JSON line on standard output.
    json: bool,
    /// Seed of the test authority and every key.
    seed: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: relay_load [--calls N] [--secs S] [--warmup W] [--seed X] [--json]\n\
         N concurrent calls (default 100) through one super node on loopback, 50 packets/s \
         each way, {FRAME_LEN}-byte frames ({PAYLOAD}-byte payloads); S-second window \
         (default 10) after W seconds of steady traffic (default 3)."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        calls: 100,
        secs: 10.0,
        warmup: 3.0,
        json: false,
        seed: 0x7e1a_0001,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--calls" => a.calls = value().parse().unwrap_or_else(|_| usage()),
            "--secs" => a.secs = value().parse().unwrap_or_else(|_| usage()),
            "--warmup" => a.warmup = value().parse().unwrap_or_else(|_| usage()),
            "--seed" => a.seed = value().parse().unwrap_or_else(|_| usage()),
            "--json" => a.json = true,
            _ => usage(),
        }
    }
    if a.calls == 0 || a.secs.is_nan() || a.secs <= 0.0 || a.warmup.is_sign_negative() {
        usage();
    }
    a
}

// ------------------------------------------------------------------------------------------
// /proc readings.
// ------------------------------------------------------------------------------------------

/// Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on every Linux
/// architecture this runs on; `getconf CLK_TCK` says the same).
const TICKS_PER_SEC: f64 = 100.0;

/// This thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn own_tid() -> io::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/thread-self: {link:?}")))
}

/// User + system CPU seconds of one thread of this process.
fn thread_cpu(tid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0.0;
    };
    stat_cpu(&stat)
}

/// User + system CPU seconds of the whole process.
fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0.0, |s| stat_cpu(&s))
}

/// utime + stime (fields 14 and 15) of a `stat` line, in seconds. The command name (field 2)
/// may hold spaces, so fields are counted after its closing parenthesis.
fn stat_cpu(stat: &str) -> f64 {
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    // rest starts at field 3 (state): utime is field 14, i.e. index 11 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (num(11) + num(12)) as f64 / TICKS_PER_SEC
}

/// Nanoseconds a thread spent on a CPU (`schedstat`, finer than the ticks of `stat`).
fn thread_sched_ns(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Whole machine: (busy ticks, all ticks) over every CPU, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// UDP datagrams dropped for a full receive buffer (the whole network namespace).
fn udp_rcvbuf_errors() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (udp.next(), udp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Warnings about this machine that make the numbers less telling: the kernel capping the
/// super node's receive buffer, and autogroup scheduling on a busy machine.
fn machine_warnings(machine_busy_pct: f64) -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut w = Vec::new();
    if let Ok(max) = read("/proc/sys/net/core/rmem_max").trim().parse::<u64>() {
        if max < 4 << 20 {
            w.push(format!(
                "net.core.rmem_max is {max} B: the super node's socket gets less than the 4 MiB \
                 it asks for, and loses frames whenever its loop is off the CPU for a while"
            ));
        }
    }
    let autogroup = read("/proc/sys/kernel/sched_autogroup_enabled").trim() == "1";
    let nice = read("/proc/self/autogroup")
        .split_whitespace()
        .last()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if autogroup && nice >= 0 && machine_busy_pct > 90.0 {
        w.push(format!(
            "the machine was {machine_busy_pct:.0} % busy and this process's autogroup has nice \
             {nice}: other sessions get as much CPU as this whole benchmark (as root: `echo -10 \
             > /proc/self/autogroup` in the shell that runs it)"
        ));
    }
    w
}

/// The soft limit on open files (the clients need one socket each).
fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

// ------------------------------------------------------------------------------------------
// Latency histogram.
// ------------------------------------------------------------------------------------------

/// Latencies: 1 µs buckets up to [`HIST_US`], then 1 ms buckets up to a minute.
struct Histogram {
    fine: Vec<u32>,
    coarse: Vec<u32>,
    count: u64,
    max_us: u64,
    sum_us: u64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            fine: vec![0; HIST_US],
            coarse: vec![0; 60_000],
            count: 0,
            max_us: 0,
            sum_us: 0,
        }
    }

    fn add(&mut self, us: u64) {
        match self.fine.get_mut(us as usize) {
            Some(b) => *b += 1,
            None => {
                let ms = ((us / 1000) as usize).min(self.coarse.len() - 1);
                self.coarse[ms] += 1;
            }
        }
        self.count += 1;
        self.max_us = self.max_us.max(us);
        self.sum_us += us;
    }

    /// The `p` quantile in ms.
    fn quantile_ms(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count - 1) as f64 * p).round() as u64;
        let mut seen = 0u64;
        for (us, &n) in self.fine.iter().enumerate() {
            seen += u64::from(n);
            if seen > rank {
                return us as f64 / 1000.0;
            }
        }
        for (ms, &n) in self.coarse.iter().enumerate() {
            seen += u64::from(n);
            if seen > rank {
                return ms as f64;
            }
        }
        self.max_us as f64 / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64 / 1000.0
        }
    }
}

// ------------------------------------------------------------------------------------------
// The clients: 2N endpoints on 2N sockets, one thread.
// ------------------------------------------------------------------------------------------

/// What the measuring thread and the client thread share.
struct Shared {
    /// Every timestamp is nanoseconds since this instant.
    base: Instant,
    /// Frames sent from this time on are in the window (`u64::MAX`: not open yet).
    window_start: AtomicU64,
    /// Frames sent from this time on are after it (`u64::MAX`: still open).
    window_end: AtomicU64,
    /// Stop sending and report.
    stop: AtomicBool,
}

impl Shared {
    fn ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Relaxed)
            && t < self.window_end.load(Ordering::Relaxed)
    }
}

/// One device.
struct Client {
    socket: UdpSocket,
    local: SocketAddr,
    endpoint: Endpoint,
    device: DeviceId,
    conn: Option<ConnId>,
    connected: bool,
    failed: bool,
    /// The relay channel of its call (0: none yet).
    channel: u32,
    /// When the channel was last requested (requesters only).
    requested: Option<Instant>,
    seq: u64,
}

/// Progress messages from the client thread.
enum Progress {
    /// The client thread's id (for its CPU).
    Tid(u32),
    /// Setup is over: traffic flows.
    Ready {
        connected: usize,
        channels: usize,
        setup: Duration,
    },
    /// Setup failed.
    Failed(String),
}

/// What the client thread saw.
#[derive(Default)]
struct ClientReport {
    /// Frames sent, by the millisecond of their send time (since [`Shared::base`]).
    sent_ms: Vec<u32>,
    /// Frames received, by the millisecond of their send time.
    received_ms: Vec<u32>,
    /// Sends that failed (full socket buffer...), in the window.
    send_errors_window: u64,
    /// Frames that came back from another device than the partner, or malformed.
    wrong: u64,
    /// Frames sent and received over the whole run.
    sent_total: u64,
    received_total: u64,
    /// Schedule slots run more than 2 ms late.
    late_slots: u64,
    /// The worst lag of a slot behind its schedule.
    max_lag: Duration,
    /// Offers received by the non-requesting devices.
    offers: u64,
    /// Channel requests refused.
    refused: u64,
    latency: Option<Histogram>,
}

/// Count one frame in the millisecond of `ns`.
fn count_at(per_ms: &mut Vec<u32>, ns: u64) {
    let ms = (ns / 1_000_000) as usize;
    if per_ms.len() <= ms {
        per_ms.resize(ms + 1000, 0);
    }
    per_ms[ms] += 1;
}

/// The frames counted in milliseconds `from..to`.
fn sum_ms(per_ms: &[u32], from: u64, to: u64) -> u64 {
    let end = (to as usize).min(per_ms.len());
    let start = (from as usize).min(end);
    per_ms[start..end].iter().map(|&n| u64::from(n)).sum()
}

/// Send everything the client's endpoint has queued (all of it goes to the super node, the
/// socket's connected address).
fn flush(c: &mut Client) {
    while let Some(t) = c.endpoint.poll_transmit() {
        let _ = c.socket.send(&t.payload);
    }
}

/// Act on the endpoint's events: session up or failed, relay answers.
fn drain_events(clients: &mut [Client], i: usize, report: &mut ClientReport) {
    while let Some(e) = clients[i].endpoint.poll_event() {
        match e {
            EndpointEvent::Connected { conn, .. } if Some(conn) == clients[i].conn => {
                clients[i].connected = true;
            }
            EndpointEvent::ConnectFailed { conn, .. } if Some(conn) == clients[i].conn => {
                clients[i].failed = true;
            }
            EndpointEvent::Closed { conn, .. } if Some(conn) == clients[i].conn => {
                clients[i].connected = false;
            }
            EndpointEvent::Control { message, .. } => match Message::decode(&message) {
                Ok(Message::RelayAllocated { channel, .. }) if clients[i].channel == 0 => {
                    // The partner is offered the same channel (counted below); it may send
                    // on it whether or not the offer reached it, so both legs start now.
                    clients[i].channel = channel;
                    clients[i ^ 1].channel = channel;
                }
                Ok(Message::RelayOffer { .. }) => report.offers += 1,
                Ok(Message::RelayRefused { reason, .. }) => {
                    report.refused += 1;
                    eprintln!("relay_load: device {i}: channel refused (reason {reason})");
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// Read every datagram waiting on client `i`'s socket: relay frames are measured, the rest
/// goes to its endpoint.
fn on_readable(
    shared: &Shared,
    clients: &mut [Client],
    i: usize,
    buf: &mut [u8],
    report: &mut ClientReport,
    hist: &mut Histogram,
    sn: SocketAddr,
) {
    loop {
        let n = match clients[i].socket.recv(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP port unreachable and the like: nothing to read.
            Err(_) => continue,
        };
        let data = &buf[..n];
        if data.first() == Some(&0x71) {
            let now = shared.ns();
            report.received_total += 1;
            let word = data
                .get(1..5)
                .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            let at = RELAY_HEADER + ENVELOPE_HEADER;
            let (Some(ts), Some(from)) = (data.get(at..at + 8), data.get(at + 8..at + 12)) else {
                report.wrong += 1;
                continue;
            };
            let ts = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
            let from = u32::from_be_bytes(from.try_into().expect("4 bytes")) as usize;
            if n != FRAME_LEN
                || word & TO_PARTY == 0
                || word & !TO_PARTY != clients[i].channel
                || from != i ^ 1
            {
                report.wrong += 1;
                continue;
            }
            count_at(&mut report.received_ms, ts);
            if shared.in_window(ts) {
                hist.add(now.saturating_sub(ts) / 1000);
            }
            continue;
        }
        let c = &mut clients[i];
        c.endpoint.handle_input(
            Instant::now(),
            Input::Datagram {
                source: sn,
                local: c.local,
                data,
            },
        );
        flush(c);
        drain_events(clients, i, report);
    }
}

/// Run every endpoint's due timers (handshake retransmissions, keep-alives).
fn sweep_timers(clients: &mut [Client], report: &mut ClientReport) {
    let now = Instant::now();
    for i in 0..clients.len() {
        if clients[i].endpoint.poll_timeout().is_some_and(|t| t <= now) {
            clients[i].endpoint.handle_timeout(now);
            flush(&mut clients[i]);
            drain_events(clients, i, report);
        }
    }
}

/// The client thread's event loop: its poll, read buffer and latency histogram.
struct Io {
    poll: Poll,
    events: Events,
    buf: Vec<u8>,
    hist: Histogram,
    last_sweep: Instant,
}

impl Io {
    /// One turn: wait for socket readiness up to `timeout`, read everything ready, and run
    /// the endpoints' due timers when `sweep_every` has passed since they last ran.
    fn turn(
        &mut self,
        timeout: Duration,
        sweep_every: Duration,
        shared: &Shared,
        clients: &mut [Client],
        report: &mut ClientReport,
        sn: SocketAddr,
    ) {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {
                for ev in self.events.iter() {
                    on_readable(
                        shared,
                        clients,
                        ev.token().0,
                        &mut self.buf,
                        report,
                        &mut self.hist,
                        sn,
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        if self.last_sweep.elapsed() >= sweep_every {
            self.last_sweep = Instant::now();
            sweep_timers(clients, report);
        }
    }
}

/// The client thread: build the devices, connect them, get a channel per call, then send
/// until told to stop.
fn run_clients(
    shared: Arc<Shared>,
    net: TestNetwork,
    sn: SocketAddr,
    calls: usize,
    progress: mpsc::Sender<Progress>,
) -> ClientReport {
    let started = Instant::now();
    if let Ok(tid) = own_tid() {
        let _ = progress.send(Progress::Tid(tid));
    }
    let mut report = ClientReport::default();
    let fail = |msg: String| {
        let _ = progress.send(Progress::Failed(msg));
    };
    let mut io = Io {
        poll: Poll::new().expect("mio poll"),
        events: Events::with_capacity(1024),
        buf: vec![0u8; 2048],
        hist: Histogram::new(),
        last_sweep: Instant::now(),
    };

    // Devices: one user each, so that the relay's per-user quotas never bind.
    let mut clients = Vec::with_capacity(2 * calls);
    for i in 0..2 * calls {
        let identity = net.identity(&format!("relay-load-{i}"));
        let device = identity.device.device_id();
        let mut seed = [0x5au8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let endpoint = Endpoint::new(EndpointConfig::new(
            identity,
            seed,
            TEST_WALL,
            Instant::now(),
        ));
        let std_socket = match StdUdpSocket::bind("127.0.0.1:0") {
            Ok(s) => s,
            Err(e) => {
                fail(format!("socket {i} of {}: {e}", 2 * calls));
                return report;
            }
        };
        std_socket.connect(sn).expect("connect a UDP socket");
        std_socket.set_nonblocking(true).expect("non-blocking");
        let local = std_socket.local_addr().expect("bound");
        let mut socket = UdpSocket::from_std(std_socket);
        io.poll
            .registry()
            .register(&mut socket, Token(i), Interest::READABLE)
            .expect("register a socket");
        clients.push(Client {
            socket,
            local,
            endpoint,
            device,
            conn: None,
            connected: false,
            failed: false,
            channel: 0,
            requested: None,
            seq: 0,
        });
    }

    // Sessions with the super node, CONNECTING handshakes at a time.
    let deadline = Instant::now() + Duration::from_secs(60 + calls as u64 / 20);
    let mut next = 0;
    loop {
        let done = clients.iter().filter(|c| c.connected || c.failed).count();
        let pending = next - done;
        if done == clients.len() {
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "only {done} of {} devices connected",
                clients.len()
            ));
            return report;
        }
        for _ in pending..CONNECTING {
            if next == clients.len() {
                break;
            }
            let c = &mut clients[next];
            c.conn = Some(
                c.endpoint
                    .connect(Instant::now(), Destination::Udp(sn), None)
                    .expect("start a handshake"),
            );
            flush(c);
            next += 1;
        }
        io.turn(
            Duration::from_millis(5),
            Duration::from_millis(20),
            &shared,
            &mut clients,
            &mut report,
            sn,
        );
    }
    let connected = clients.iter().filter(|c| c.connected).count();
    if connected < clients.len() {
        fail(format!(
            "{} of {} devices could not open a session with the super node",
            clients.len() - connected,
            clients.len()
        ));
        return report;
    }

    // A channel per call: device 2i asks for one to device 2i + 1; unanswered requests are
    // repeated after a second.
    let mut request = 0u32;
    loop {
        let have = (0..calls).filter(|p| clients[2 * p].channel != 0).count();
        if have == calls {
            break;
        }
        if Instant::now() > deadline || report.refused > 0 {
            fail(format!("only {have} of {calls} channels allocated"));
            return report;
        }
        let now = Instant::now();
        let waiting = (0..calls)
            .filter(|p| {
                let c = &clients[2 * p];
                c.channel == 0
                    && c.requested
                        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            })
            .count();
        let mut budget = ALLOCATING.saturating_sub(waiting);
        for p in 0..calls {
            if budget == 0 {
                break;
            }
            let peer = clients[2 * p + 1].device;
            let c = &mut clients[2 * p];
            if c.channel != 0
                || c.requested
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            {
                continue;
            }
            request += 1;
            let conn = c.conn.expect("connected");
            let _ = c.endpoint.send_control(
                now,
                conn,
                &Message::RelayAllocate {
                    request,
                    device: peer,
                },
            );
            c.requested = Some(now);
            flush(c);
            budget -= 1;
        }
        io.turn(
            Duration::from_millis(5),
            Duration::from_millis(20),
            &shared,
            &mut clients,
            &mut report,
            sn,
        );
    }
    let _ = progress.send(Progress::Ready {
        connected,
        channels: calls,
        setup: started.elapsed(),
    });

    // Traffic: device i sends in slot i % SLOTS of every 20 ms round.
    let mut frame = [0u8; FRAME_LEN];
    frame[0] = 0x71;
    frame[RELAY_HEADER] = 0x61; // media envelope, protocol version 1
    frame[RELAY_HEADER + 1] = 0x10; // data, key phase 0
    for (k, b) in frame[RELAY_HEADER + ENVELOPE_HEADER + 12..]
        .iter_mut()
        .enumerate()
    {
        *b = 0xa5 ^ k as u8;
    }
    let slot_ns = 1_000_000u64;
    let mut tick = 0u64;
    let first = shared.ns();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = shared.ns();
        let mut due = first + tick * slot_ns;
        while due <= now {
            let lag = Duration::from_nanos(now - due);
            if lag > Duration::from_millis(2) {
                report.late_slots += 1;
            }
            report.max_lag = report.max_lag.max(lag);
            let slot = (tick % SLOTS) as usize;
            for i in (slot..clients.len()).step_by(SLOTS as usize) {
                let c = &mut clients[i];
                let ts = shared.ns();
                frame[1..5].copy_from_slice(&c.channel.to_be_bytes());
                frame[RELAY_HEADER + 2..RELAY_HEADER + 6].copy_from_slice(&c.channel.to_be_bytes());
                frame[RELAY_HEADER + 6..RELAY_HEADER + 14].copy_from_slice(&c.seq.to_be_bytes());
                let p = RELAY_HEADER + ENVELOPE_HEADER;
                frame[p..p + 8].copy_from_slice(&ts.to_be_bytes());
                frame[p + 8..p + 12].copy_from_slice(&(i as u32).to_be_bytes());
                c.seq += 1;
                if c.socket.send(&frame).is_ok() {
                    report.sent_total += 1;
                    count_at(&mut report.sent_ms, ts);
                } else if shared.in_window(ts) {
                    report.send_errors_window += 1;
                }
            }
            tick += 1;
            due = first + tick * slot_ns;
        }
        let wait = Duration::from_nanos(due.saturating_sub(shared.ns()));
        io.turn(
            wait,
            Duration::from_millis(50),
            &shared,
            &mut clients,
            &mut report,
            sn,
        );
    }
    report.latency = Some(io.hist);
    report
}

// ------------------------------------------------------------------------------------------
// The super node and the measurement.
// ------------------------------------------------------------------------------------------

/// A snapshot at one end of the window.
struct Mark {
    /// On the super node's thread, when its counters were read.
    at: Instant,
    relay: RelayStats,
    sn_cpu: f64,
    sn_sched_ns: u64,
    client_cpu: f64,
    process_cpu: f64,
    machine: (u64, u64),
    rcvbuf_errors: u64,
}

fn mark(rt: &Runtime<Node>, sn_tid: u32, client_tid: Option<u32>) -> Mark {
    let (at, relay) = rt.command(|node, now| (now, node.relay().map(|r| r.stats())));
    Mark {
        at,
        relay: relay.unwrap_or_default(),
        sn_cpu: thread_cpu(sn_tid),
        sn_sched_ns: thread_sched_ns(sn_tid),
        client_cpu: client_tid.map_or(0.0, thread_cpu),
        process_cpu: process_cpu(),
        machine: machine_ticks(),
        rcvbuf_errors: udp_rcvbuf_errors(),
    }
}

fn main() {
    let args = parse_args();
    let devices = 2 * args.calls;
    if let Some(limit) = open_files_limit() {
        let need = devices as u64 + 64;
        if limit < need {
            eprintln!(
                "relay_load: {} calls need about {need} open files (one socket per device); the \
                 limit is {limit}: raise it with `ulimit -n {need}`",
                args.calls
            );
            std::process::exit(1);
        }
    }

    let net = TestNetwork::new(args.seed);
    let sn_identity = net.identity("relay-load-sn");
    let mut sn_seed = [0x11u8; 32];
    sn_seed[..8].copy_from_slice(&args.seed.to_le_bytes());
    let rt = Runtime::spawn(
        RuntimeConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tcp: vec![],
        },
        move |now, addrs| {
            let mut cfg = NodeConfig::new(sn_identity, sn_seed, TEST_WALL, now, addrs[0]);
            cfg.role = RolePolicy::Force;
            // Every device is its own user: the default quotas (8 channels, 64,000 B/s per
            // user) are far above one call's 7,750 B/s each way, and are left as they are.
            Node::new(cfg, now)
        },
    )
    .expect("super node runtime");
    let sn = rt.udp_addrs()[0];
    let sn_tid = rt
        .command(|_, _| own_tid())
        .expect("the super node thread's id");
    let relaying = rt.command(|node, _| node.relay().is_some());
    assert!(relaying, "a forced super node relays from the start");

    let shared = Arc::new(Shared {
        base: Instant::now(),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel();
    let s2 = shared.clone();
    let calls = args.calls;
    let clients = std::thread::Builder::new()
        .name("relay-clients".into())
        .spawn(move || run_clients(s2, net, sn, calls, tx))
        .expect("client thread");

    eprintln!(
        "relay_load: super node on {sn} (thread {sn_tid}); {} calls = {devices} devices, \
         {RATE} frames/s each way per call, {FRAME_LEN}-byte frames",
        args.calls
    );
    let mut client_tid = None;
    let (connected, channels, setup) = loop {
        match rx.recv() {
            Ok(Progress::Tid(t)) => client_tid = Some(t),
            Ok(Progress::Ready {
                connected,
                channels,
                setup,
            }) => break (connected, channels, setup),
            Ok(Progress::Failed(msg)) => {
                eprintln!("relay_load: setup failed: {msg}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("relay_load: the client thread ended during setup");
                std::process::exit(1);
            }
        }
    };
    eprintln!(
        "relay_load: {connected} sessions, {channels} channels in {:.1} s; warm-up {:.0} s, \
         window {:.0} s",
        setup.as_secs_f64(),
        args.warmup,
        args.secs
    );
    // The super node's events (sessions coming up) are not needed.
    while rt.events().try_recv().is_ok() {}
    std::thread::sleep(Duration::from_secs_f64(args.warmup));

    // The window opens and closes on whole milliseconds of send time, the unit frames are
    // counted in.
    let next_ms = || (shared.ns() / 1_000_000 + 1) * 1_000_000;
    let start_ns = next_ms();
    shared.window_start.store(start_ns, Ordering::Relaxed);
    let m0 = mark(&rt, sn_tid, client_tid);
    std::thread::sleep(Duration::from_secs_f64(args.secs));
    let end_ns = next_ms();
    shared.window_end.store(end_ns, Ordering::Relaxed);
    let m1 = mark(&rt, sn_tid, client_tid);
    std::thread::sleep(GRACE);
    shared.stop.store(true, Ordering::Relaxed);
    let report = clients.join().expect("client thread");
    let channels_end = rt.command(|node, _| node.relay().map_or(0, |r| r.channels()));
    let rt_stats = rt.shutdown().expect("super node runtime");

    // ---- Results ----
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    let relayed = m1.relay.relayed_packets - m0.relay.relayed_packets;
    let pps = relayed as f64 / secs;
    let cpu = m1.sn_cpu - m0.sn_cpu;
    let sched = (m1.sn_sched_ns - m0.sn_sched_ns) as f64 / 1e9;
    let us_per_pkt = if relayed > 0 {
        1e6 * cpu / relayed as f64
    } else {
        0.0
    };
    let hist = report.latency.as_ref().expect("latency histogram");
    let (p50, p99) = (hist.quantile_ms(0.5), hist.quantile_ms(0.99));
    let (from_ms, to_ms) = (start_ns / 1_000_000, end_ns / 1_000_000);
    let sent_window = sum_ms(&report.sent_ms, from_ms, to_ms);
    let received_window = sum_ms(&report.received_ms, from_ms, to_ms);
    let loss = if sent_window > 0 {
        1.0 - received_window as f64 / sent_window as f64
    } else {
        0.0
    };
    let dropped = |s: &RelayStats| {
        s.dropped_malformed + s.dropped_unknown_channel + s.dropped_not_party + s.dropped_rate
    };
    let machine_busy = {
        let busy = m1.machine.0 - m0.machine.0;
        let total = (m1.machine.1 - m0.machine.1).max(1);
        100.0 * busy as f64 / total as f64
    };
    eprintln!(
        "relay_load: {} calls, window {secs:.2} s: relayed {pps:.0} pkt/s (target {}), super \
         node CPU {:.1} % of one core ({cpu:.2} s; schedstat {sched:.2} s) = {us_per_pkt:.2} \
         us/pkt",
        args.calls,
        2 * RATE * args.calls as u64,
        100.0 * cpu / secs,
    );
    eprintln!(
        "  latency send -> receive: p50 {p50:.3} ms, p99 {p99:.3} ms, mean {:.3} ms, max {:.3} \
         ms ({} frames); loss {:.3} % ({} of {} frames sent in the window; {} send errors)",
        hist.mean_ms(),
        hist.max_us as f64 / 1000.0,
        hist.count,
        100.0 * loss,
        sent_window.saturating_sub(received_window),
        sent_window,
        report.send_errors_window,
    );
    eprintln!(
        "  relay drops in the window: {} (rate {}, unknown channel {}, not party {}, malformed \
         {}); channels at the end {channels_end}; offers {} of {}; wrong frames {}; whole \
         run: {} frames sent, {} received",
        dropped(&m1.relay) - dropped(&m0.relay),
        m1.relay.dropped_rate - m0.relay.dropped_rate,
        m1.relay.dropped_unknown_channel - m0.relay.dropped_unknown_channel,
        m1.relay.dropped_not_party - m0.relay.dropped_not_party,
        m1.relay.dropped_malformed - m0.relay.dropped_malformed,
        report.offers,
        args.calls,
        report.wrong,
        report.sent_total,
        report.received_total,
    );
    eprintln!(
        "  client thread CPU {:.1} %, whole process {:.1} %, machine busy {machine_busy:.0} % \
         of {} CPUs; UDP receive-buffer drops {}; client slots > 2 ms late {} (worst {:.1} \
         ms); super node runtime: {} datagrams in, {} out, {} send errors (whole run)",
        100.0 * (m1.client_cpu - m0.client_cpu) / secs,
        100.0 * (m1.process_cpu - m0.process_cpu) / secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        m1.rcvbuf_errors - m0.rcvbuf_errors,
        report.late_slots,
        report.max_lag.as_secs_f64() * 1000.0,
        rt_stats.datagrams_in,
        rt_stats.datagrams_out,
        rt_stats.errors,
    );
    for w in machine_warnings(machine_busy) {
        eprintln!("  warning: {w}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "calls": args.calls,
                "packets_per_sec": (pps * 10.0).round() / 10.0,
                "cpu_seconds": cpu,
                "p50_ms": p50,
                "p99_ms": p99,
                "loss": loss,
                "secs": secs,
                "frame_bytes": FRAME_LEN,
                "us_per_packet": us_per_pkt,
                "cpu_sched_seconds": sched,
                "client_cpu_seconds": m1.client_cpu - m0.client_cpu,
                "relay_drops": dropped(&m1.relay) - dropped(&m0.relay),
                "rcvbuf_errors": m1.rcvbuf_errors - m0.rcvbuf_errors,
            })
        );
    }
}
