//! The sans-IO contract shared by every Natter state machine.
//!
//! Every protocol machine in `natter-core` and `natter-overlay` has the same shape, taken from
//! quinn-proto and str0m:
//!
//! * **Inputs** are method calls that carry the current [`Instant`]: [`Machine::handle_input`]
//!   for network input ([`Input::Datagram`], [`Input::Stream`]) and
//!   [`Machine::handle_timeout`] when the deadline announced by [`Machine::poll_timeout`] has
//!   passed. Application commands are inherent methods of each machine and also take `now`.
//! * **Outputs** are polled: [`Machine::poll_transmit`] (bytes to send and where),
//!   [`Machine::poll_timeout`] (the next instant at which the machine wants
//!   [`Machine::handle_timeout`]) and [`Machine::poll_event`] (things the application should
//!   hear about).
//!
//! Nothing else crosses the boundary: a machine never reads a clock, opens a socket, spawns a
//! thread, draws OS randomness (a seed comes in through its configuration) or calls back into
//! its driver.
//!
//! # Drain order
//!
//! After **any** input or command, the driver drains outputs in this order, and repeats until
//! nothing new appears:
//!
//! 1. `poll_transmit` until `None` (send every packet),
//! 2. `poll_stream_command` until `None` (open or close streams),
//! 3. `poll_event` until `None` (deliver every event),
//! 4. `poll_timeout` once (re-arm the single timer).
//!
//! # Streams
//!
//! A machine that needs TCP (a super-node link when UDP is blocked, the TLS fallback port)
//! asks its driver with [`StreamCommand::Connect`], naming the stream with an id it allocates
//! itself from the upper half of the id space ([`StreamId::is_local`]); the driver answers
//! with [`Input::StreamOpened`] or, on failure, [`Input::StreamClosed`]. Streams the driver
//! accepts get ids from the lower half and are announced with [`Input::StreamOpened`] too.
//!
//! # Sockets on demand
//!
//! A machine that needs a UDP port of its own (a call moving its direct paths to a flow no
//! stale NAT state clashes with) asks with [`StreamCommand::BindUdp`]; the driver opens a
//! socket on the IP of the named local address and answers with [`Input::UdpBound`]. Its
//! datagrams arrive with its address as `local`; [`Transmit::source`] sends from it;
//! [`StreamCommand::CloseUdp`] closes it.
//!
//! A machine may only produce output in response to an input, so a driver that follows this
//! order never misses work. The same loop drives a machine over real sockets
//! (`natter-transport`) and in virtual time (`natter-sim`).
//!
//! ```
//! use std::time::Instant;
//! use natter_core::sansio::{Input, Machine};
//!
//! fn drive<M: Machine>(m: &mut M, now: Instant, input: Input<'_>) {
//!     m.handle_input(now, input);
//!     while let Some(t) = m.poll_transmit() {
//!         // socket.send_to(&t.payload, t.destination) in a real driver
//!         let _ = t;
//!     }
//!     while let Some(e) = m.poll_event() {
//!         let _ = e; // hand to the application
//!     }
//!     let _next_wakeup: Option<Instant> = m.poll_timeout();
//! }
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

/// Which transport protocol a packet travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// One message per UDP datagram.
    Udp,
    /// Length-prefixed frames on a TCP stream (see [`crate::wire::frame`]).
    Tcp,
}

/// Identifies one TCP stream (or any reliable byte stream) inside a driver.
///
/// Ids of streams a machine opens itself have the top bit set ([`StreamId::local`]); the driver
/// numbers the streams it accepts below that, so the two never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    const LOCAL_BIT: u64 = 1 << 63;

    /// The `n`th stream a machine opens itself.
    pub fn local(n: u64) -> Self {
        Self(n | Self::LOCAL_BIT)
    }

    /// True for ids allocated by a machine ([`StreamId::local`]).
    pub fn is_local(&self) -> bool {
        self.0 & Self::LOCAL_BIT != 0
    }
}

/// A machine's request to its driver about streams, and about UDP sockets it opens on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    /// Open a TCP connection to `remote` (TLS-wrapped when `tls`), known as `stream`. The
    /// driver answers with [`Input::StreamOpened`] or [`Input::StreamClosed`].
    Connect {
        /// The id the machine chose ([`StreamId::local`]).
        stream: StreamId,
        /// Where to connect.
        remote: SocketAddr,
        /// Wrap the connection in TLS (the fallback port that passes strict firewalls).
        tls: bool,
    },
    /// Close a stream once what was already sent on it is written.
    Close {
        /// Which stream.
        stream: StreamId,
    },
    /// Open one more UDP socket on the IP address of `near` (one of the driver's sockets), on
    /// a port the system chooses. The driver answers with [`Input::UdpBound`] carrying the
    /// same `token`; the new socket's datagrams then arrive as [`Input::Datagram`] with its
    /// address as `local`, and [`Transmit::source`] names it to send from it. A call uses one
    /// to reach its peer from a port no NAT holds stale state for. Drivers that cannot open
    /// sockets answer with `local: None`.
    BindUdp {
        /// The machine's name for the request.
        token: u64,
        /// A local address of the driver's: the new socket gets its IP.
        near: SocketAddr,
    },
    /// Close a UDP socket opened with [`StreamCommand::BindUdp`] (the driver's own sockets are
    /// never closed this way).
    CloseUdp {
        /// The socket's address, as [`Input::UdpBound`] gave it.
        local: SocketAddr,
    },
}

/// Network input handed to a machine.
#[derive(Debug)]
pub enum Input<'a> {
    /// A UDP datagram arrived.
    Datagram {
        /// The sender as seen by the local socket.
        source: SocketAddr,
        /// The local address it arrived on.
        local: SocketAddr,
        /// The datagram's contents.
        data: &'a [u8],
    },
    /// Bytes arrived on a reliable stream; they may contain partial or several frames.
    Stream {
        /// Which stream.
        stream: StreamId,
        /// The far end of the stream.
        remote: SocketAddr,
        /// The bytes, in order.
        data: &'a [u8],
    },
    /// A stream is open: one the driver accepted, or one the machine asked for with
    /// [`StreamCommand::Connect`].
    StreamOpened {
        /// Which stream.
        stream: StreamId,
        /// The far end.
        remote: SocketAddr,
    },
    /// A reliable stream was closed by the peer or failed (or could not be opened).
    StreamClosed {
        /// Which stream.
        stream: StreamId,
    },
    /// The answer to [`StreamCommand::BindUdp`].
    UdpBound {
        /// The request's token.
        token: u64,
        /// The new socket's address, or `None` when none could be opened.
        local: Option<SocketAddr>,
    },
}

/// Where a transmit goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A UDP datagram to this address.
    Udp(SocketAddr),
    /// A frame on an existing stream.
    Stream(StreamId),
}

/// One packet a machine wants sent.
///
/// For UDP the payload is exactly one datagram. For streams the payload is already framed
/// (length prefix included) and is written to the stream as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: Destination,
    /// The local address to send from, when the machine cares (multi-homed hosts).
    pub source: Option<SocketAddr>,
    /// The bytes.
    pub payload: Bytes,
    /// Send this one UDP datagram with this IP TTL (hop limit) instead of the socket's
    /// default: hole punching sends packets that open its own NAT but die before the far one.
    pub ttl: Option<u8>,
}

/// The common shape of every sans-IO state machine in Natter.
///
/// See the [module documentation](self) for the contract and drain order.
pub trait Machine {
    /// What the machine reports to the application.
    type Event;

    /// Feed network input that arrived at `now`.
    fn handle_input(&mut self, now: Instant, input: Input<'_>);

    /// Tell the machine that `now` is at or past the deadline it returned from
    /// [`Machine::poll_timeout`]. Calling it early is harmless.
    fn handle_timeout(&mut self, now: Instant);

    /// The next packet to send, if any.
    fn poll_transmit(&mut self) -> Option<Transmit>;

    /// The next event for the application, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// When the machine next wants [`Machine::handle_timeout`], if ever.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The next stream to open or close, if any. Machines that use no streams of their own
    /// keep the default.
    fn poll_stream_command(&mut self) -> Option<StreamCommand> {
        None
    }
}
