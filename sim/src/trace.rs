//! The simulation trace, its digest, counters and the datagram capture log.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use natter_core::sansio::Protocol;

use crate::HostId;

/// Why a packet (or stream segment) did not reach its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Random loss on a link.
    Loss,
    /// Arrived at a NAT's external address on a port with no live mapping (never created, or
    /// expired).
    NatNoMapping,
    /// A NAT's filter rejected the sender, or an inbound TCP connection hit a NAT.
    NatFiltered,
    /// A host sent to its own NAT's external address and the NAT does not hairpin.
    NatHairpinDisabled,
    /// A NAT had no free external port.
    NatPortsExhausted,
    /// A firewall (a NAT with [`block_udp`](crate::NatConfig::block_udp) or a host with
    /// [`Sim::set_udp_blocked`](crate::Sim::set_udp_blocked)) dropped UDP, or a NAT with
    /// [`tcp_ports`](crate::NatConfig::tcp_ports) a connection to another port.
    Firewall,
    /// No node owns the destination address.
    NoRoute,
    /// The packet's IP TTL ran out at a router (a NAT box, or the internet, which counts as
    /// one hop): a low-TTL hole-punching opener dies this way after crossing its own NAT.
    TtlExpired,
    /// The destination host has no socket bound to the destination address.
    NoSocket,
    /// A machine asked to send from an address its host is not bound to.
    BadSource,
    /// A machine wrote to a stream that does not exist or belongs to another host.
    UnknownStream,
    /// A machine wrote to, or data arrived for, a stream that is already closed.
    StreamClosed,
    /// The interceptor installed with [`Sim::set_interceptor`](crate::Sim::set_interceptor)
    /// dropped the datagram.
    Intercepted,
    /// A stream segment was lost more times than
    /// [`StreamConfig::max_retransmits`](crate::StreamConfig::max_retransmits) allows.
    RetransmitsExhausted,
}

impl DropReason {
    fn code(self) -> u8 {
        match self {
            DropReason::Loss => 1,
            DropReason::NatNoMapping => 2,
            DropReason::NatFiltered => 3,
            DropReason::NatHairpinDisabled => 4,
            DropReason::NatPortsExhausted => 5,
            DropReason::Firewall => 6,
            DropReason::NoRoute => 7,
            DropReason::NoSocket => 8,
            DropReason::BadSource => 9,
            DropReason::UnknownStream => 10,
            DropReason::StreamClosed => 11,
            DropReason::Intercepted => 12,
            DropReason::RetransmitsExhausted => 13,
            DropReason::TtlExpired => 14,
        }
    }
}

/// What happened to a packet or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TraceKind {
    /// A machine emitted a datagram (`src` is its local address) or wrote to a stream.
    Sent,
    /// A datagram was injected with [`Sim::inject_datagram`](crate::Sim::inject_datagram).
    Injected,
    /// A link duplicated a datagram.
    Duplicated,
    /// A NAT rewrote a packet; `src` and `dst` are the addresses after translation.
    Translated,
    /// A datagram or stream segment was handed to the destination machine.
    Delivered,
    /// A packet was dropped.
    Dropped(DropReason),
    /// A host started opening a stream (`src` is its local address).
    StreamConnect,
    /// A host accepted an inbound stream.
    StreamAccept,
    /// A stream could not be opened (refused, blocked or timed out).
    StreamFailed,
    /// A stream end was closed (locally or by the peer).
    StreamClose,
}

impl TraceKind {
    fn code(self) -> (u8, u8) {
        match self {
            TraceKind::Sent => (1, 0),
            TraceKind::Injected => (2, 0),
            TraceKind::Duplicated => (3, 0),
            TraceKind::Translated => (4, 0),
            TraceKind::Delivered => (5, 0),
            TraceKind::Dropped(r) => (6, r.code()),
            TraceKind::StreamConnect => (7, 0),
            TraceKind::StreamAccept => (8, 0),
            TraceKind::StreamFailed => (9, 0),
            TraceKind::StreamClose => (10, 0),
        }
    }
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Offset from the simulation start.
    pub at: Duration,
    /// What happened.
    pub kind: TraceKind,
    /// UDP for datagrams, TCP for streams.
    pub protocol: Protocol,
    /// Source address (at the point where the event happened).
    pub src: SocketAddr,
    /// Destination address (at the point where the event happened).
    pub dst: SocketAddr,
    /// Payload length in bytes (0 for stream lifecycle entries).
    pub len: usize,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        };
        write!(
            f,
            "{:>12.6}s {:<24} {proto} {} -> {} {}B",
            self.at.as_secs_f64(),
            format!("{:?}", self.kind),
            self.src,
            self.dst,
            self.len
        )
    }
}

/// Running totals over the trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams emitted by machines.
    pub sent: u64,
    /// Datagrams injected by the test.
    pub injected: u64,
    /// Datagram copies created by link duplication.
    pub duplicated: u64,
    /// Datagrams handed to a machine.
    pub delivered: u64,
    /// Datagrams lost on a link.
    pub dropped_loss: u64,
    /// Datagrams (and inbound stream attempts) dropped by a NAT: no mapping, filtered,
    /// hairpinning disabled or ports exhausted.
    pub dropped_nat: u64,
    /// Datagrams dropped by a UDP firewall.
    pub dropped_firewall: u64,
    /// Everything else that was dropped (no route, no socket, interceptor, bad stream, ...).
    pub dropped_other: u64,
    /// Stream writes by machines.
    pub stream_writes: u64,
    /// Stream writes handed to the far machine.
    pub stream_deliveries: u64,
    /// Bytes handed to machines on streams.
    pub stream_bytes: u64,
    /// Simulated stream segment retransmissions (each lost copy counts once).
    pub stream_retransmits: u64,
    /// Streams accepted by a remote host.
    pub streams_opened: u64,
    /// Stream connection attempts that failed.
    pub streams_failed: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The ordered record of everything that happened on the simulated network.
///
/// The [`digest`](Self::digest) is a 64-bit FNV-1a hash over a canonical binary encoding of
/// every entry (time in nanoseconds, kind, drop reason, protocol, addresses, length). It is
/// always maintained, even when entries are not kept
/// ([`SimConfig::record_trace`](crate::SimConfig::record_trace)), and is stable across runs,
/// platforms and compiler versions.
#[derive(Debug, Clone)]
pub struct Trace {
    entries: Vec<TraceEntry>,
    keep: bool,
    digest: u64,
    counters: Counters,
}

impl Trace {
    pub(crate) fn new(keep: bool) -> Self {
        Trace {
            entries: Vec::new(),
            keep,
            digest: FNV_OFFSET,
            counters: Counters::default(),
        }
    }

    /// All entries so far (empty when recording is off).
    pub fn entries(&self) -> &[TraceEntry] {
        &self.entries
    }

    /// The digest of every entry recorded so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Running totals.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Forgets the stored entries (the digest and counters keep running).
    pub fn clear_entries(&mut self) {
        self.entries.clear();
    }

    /// The entries matching `kind`.
    pub fn of_kind(&self, kind: TraceKind) -> impl Iterator<Item = &TraceEntry> + '_ {
        self.entries.iter().filter(move |e| e.kind == kind)
    }

    /// Every entry, one per line, for debugging failing tests.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }

    pub(crate) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub(crate) fn record(&mut self, entry: TraceEntry) {
        let c = &mut self.counters;
        let udp = entry.protocol == Protocol::Udp;
        match entry.kind {
            TraceKind::Sent if udp => c.sent += 1,
            TraceKind::Sent => c.stream_writes += 1,
            TraceKind::Injected => c.injected += 1,
            TraceKind::Duplicated => c.duplicated += 1,
            TraceKind::Delivered if udp => c.delivered += 1,
            TraceKind::Delivered => {
                c.stream_deliveries += 1;
                c.stream_bytes += entry.len as u64;
            }
            TraceKind::Dropped(DropReason::Loss) => c.dropped_loss += 1,
            TraceKind::Dropped(
                DropReason::NatNoMapping
                | DropReason::NatFiltered
                | DropReason::NatHairpinDisabled
                | DropReason::NatPortsExhausted,
            ) => c.dropped_nat += 1,
            TraceKind::Dropped(DropReason::Firewall) => c.dropped_firewall += 1,
            TraceKind::Dropped(_) => c.dropped_other += 1,
            TraceKind::StreamAccept => c.streams_opened += 1,
            TraceKind::StreamFailed => c.streams_failed += 1,
            TraceKind::Translated | TraceKind::StreamConnect | TraceKind::StreamClose => {}
        }
        self.digest = fnv(self.digest, &encode(&entry));
        if self.keep {
            self.entries.push(entry);
        }
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn encode_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn encode(e: &TraceEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&e.at.as_nanos().to_le_bytes());
    let (kind, reason) = e.kind.code();
    out.push(kind);
    out.push(reason);
    out.push(match e.protocol {
        Protocol::Udp => 17,
        Protocol::Tcp => 6,
    });
    encode_addr(&mut out, &e.src);
    encode_addr(&mut out, &e.dst);
    out.extend_from_slice(&(e.len as u64).to_le_bytes());
    out
}

/// Where a [`Captured`] datagram was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapturePoint {
    /// Leaving a machine (before any NAT; `src` is the host's local address).
    Sent,
    /// Injected by the test.
    Injected,
    /// Handed to a machine (after every NAT; `src` is what the receiver sees).
    Delivered,
}

/// A datagram seen on the simulated wire, with its contents.
///
/// Captured datagrams can be replayed with
/// [`Sim::inject_datagram`](crate::Sim::inject_datagram)`(c.src, c.dst, c.payload)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Offset from the simulation start.
    pub at: Duration,
    /// Where it was seen.
    pub point: CapturePoint,
    /// The sending host ([`CapturePoint::Sent`]), the receiving host
    /// ([`CapturePoint::Delivered`]) or `None` ([`CapturePoint::Injected`]).
    pub host: Option<HostId>,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// The datagram.
    pub payload: Bytes,
}

/// What the interceptor wants done with a datagram a machine just sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it unchanged.
    Pass,
    /// Drop it (traced as [`DropReason::Intercepted`]).
    Drop,
    /// Send these bytes instead.
    Replace(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, kind: TraceKind) -> TraceEntry {
        TraceEntry {
            at: Duration::from_millis(at_ms),
            kind,
            protocol: Protocol::Udp,
            src: "198.18.0.1:1".parse().unwrap(),
            dst: "198.18.0.2:2".parse().unwrap(),
            len: 3,
        }
    }

    #[test]
    fn digest_is_order_and_content_sensitive() {
        let mut a = Trace::new(true);
        let mut b = Trace::new(false);
        a.record(entry(1, TraceKind::Sent));
        a.record(entry(2, TraceKind::Delivered));
        b.record(entry(1, TraceKind::Sent));
        b.record(entry(2, TraceKind::Delivered));
        assert_eq!(a.digest(), b.digest());
        assert!(b.entries().is_empty());
        assert_eq!(a.counters(), b.counters());

        let mut c = Trace::new(true);
        c.record(entry(2, TraceKind::Delivered));
        c.record(entry(1, TraceKind::Sent));
        assert_ne!(a.digest(), c.digest());

        let mut d = Trace::new(true);
        d.record(entry(1, TraceKind::Sent));
        d.record(entry(2, TraceKind::Dropped(DropReason::Loss)));
        assert_ne!(a.digest(), d.digest());
        assert_eq!(d.counters().dropped_loss, 1);
    }

    #[test]
    fn digest_of_known_input_is_stable() {
        // Pins the canonical encoding: changing it changes every recorded digest.
        let mut t = Trace::new(false);
        assert_eq!(t.digest(), FNV_OFFSET);
        t.record(entry(1, TraceKind::Sent));
        assert_eq!(
            t.digest(),
            fnv(FNV_OFFSET, &encode(&entry(1, TraceKind::Sent)))
        );
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn display_is_readable() {
        let s = entry(1500, TraceKind::Dropped(DropReason::NatFiltered)).to_string();
        assert!(s.contains("Dropped(NatFiltered)"), "{s}");
        assert!(s.contains("198.18.0.1:1 -> 198.18.0.2:2 3B"), "{s}");
    }
}
