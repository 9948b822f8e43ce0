//! # natter-transport
//!
//! The runtime that drives Natter's sans-IO machines over real sockets: a mio event loop on a
//! thread of its own, UDP sockets, timers, and the only places in Natter that read the clock
//! ([`wall_clock`], `Instant::now()` in the loop) or the operating system's randomness
//! ([`os_seed`]).
//!
//! The loop, per the contract in [`natter_core::sansio`]:
//!
//! 1. ask the machine for its next deadline (`poll_timeout`) and wait on mio until then;
//! 2. feed every datagram read, stamped with the instant it was read, and every application
//!    command that arrived through the channel (woken by a mio [`mio::Waker`]);
//! 3. call `handle_timeout` when the deadline has passed;
//! 4. flush `poll_transmit` to the socket, hand `poll_event` output to the application.
//!
//! ```no_run
//! use natter_core::testkit::TestNetwork;
//! use natter_transport::UdpNode;
//! let net = TestNetwork::new(1);
//! let node = UdpNode::spawn("127.0.0.1:0".parse().unwrap(), |now| net.endpoint("alice", now)).unwrap();
//! println!("listening on {}", node.local_addr());
//! let sessions = node.command(|endpoint, _now| endpoint.connections().count());
//! assert_eq!(sessions, 0);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
pub mod login;
mod machine_thread;
pub mod netwatch;
pub mod persist;
pub mod runtime;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::crypto::UnixTime;
use natter_core::sansio::{Destination, Input, Machine};

use machine_thread::{LoopEnds, MachineThread};

/// The waker's token; socket `i` of a node has token `i + 1`.
const WAKER: Token = Token(0);
/// Largest datagram read; anything longer is truncated by the kernel and then refused by the
/// decoders.
const RECV_BUFFER: usize = 2048;

/// The current wall-clock time, for anchoring machines' certificate checks.
pub fn wall_clock() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// 32 bytes of operating-system randomness, to seed a machine's [`natter_core::rng::Rng`].
///
/// # Errors
/// When the operating system cannot provide randomness.
pub fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(seed)
}

/// Counters kept by the driver itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverStats {
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Datagrams written to the socket.
    pub datagrams_out: u64,
    /// Transmits that could not be sent (socket error other than would-block).
    pub send_errors: u64,
}

/// A sans-IO machine running on its own thread behind one UDP socket, or several
/// ([`UdpNode::spawn_multi`]: a STUN server answering from two IPs and two ports).
///
/// Each datagram reaches the machine as [`Input::Datagram`] with `local` set to the address of
/// the socket it arrived on. A [`Transmit`](natter_core::sansio::Transmit) leaves from the socket whose address equals its
/// [`Transmit::source`](natter_core::sansio::Transmit::source); without a source, or when no socket matches, from the first one.
///
/// Application commands run on the driver thread through [`UdpNode::command`]; events come out
/// of [`UdpNode::events`] in the order the machine produced them.
pub struct UdpNode<M: Machine> {
    locals: Vec<SocketAddr>,
    thread: MachineThread<M, DriverStats>,
}

impl<M: Machine> std::fmt::Debug for UdpNode<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpNode")
            .field("locals", &self.locals)
            .finish_non_exhaustive()
    }
}

impl<M> UdpNode<M>
where
    M: Machine + Send + 'static,
    M::Event: Send + 'static,
{
    /// Bind `addr`, build the machine with the driver's start instant, and run it.
    ///
    /// # Errors
    /// When the socket cannot be bound or the event loop cannot be created.
    pub fn spawn(addr: SocketAddr, make: impl FnOnce(Instant) -> M) -> io::Result<Self> {
        Self::spawn_multi(&[addr], make)
    }

    /// Bind every address of `addrs` (in order; the first is the default for transmits without
    /// a matching [`Transmit::source`](natter_core::sansio::Transmit::source)), build the machine with the driver's start instant, and
    /// run it.
    ///
    /// # Errors
    /// When `addrs` is empty, a socket cannot be bound, or the event loop cannot be created.
    pub fn spawn_multi(addrs: &[SocketAddr], make: impl FnOnce(Instant) -> M) -> io::Result<Self> {
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UdpNode needs at least one address",
            ));
        }
        let mut sockets = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let socket = UdpSocket::bind(*addr)?;
            let local = socket.local_addr()?;
            sockets.push(Socket {
                socket,
                local,
                pending: VecDeque::new(),
                writable_registered: false,
            });
        }
        let locals: Vec<SocketAddr> = sockets.iter().map(|s| s.local).collect();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let machine = make(Instant::now());
        let thread =
            MachineThread::spawn(format!("natter-udp-{}", locals[0]), waker, move |ends| {
                run(poll, sockets, machine, ends)
            })?;
        Ok(Self { locals, thread })
    }

    /// The bound address (the first one, with [`UdpNode::spawn_multi`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.locals[0]
    }

    /// Every bound address, in the order they were given to [`UdpNode::spawn_multi`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Run `f` on the driver thread with the machine and the current instant, and return its
    /// result. Outputs it causes are flushed right after.
    ///
    /// # Panics
    /// When the driver thread has stopped (after an I/O error or [`UdpNode::shutdown`]).
    pub fn command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M, Instant) -> R + Send + 'static,
    ) -> R {
        self.thread
            .commands()
            .run(f)
            .expect("driver thread is running")
    }

    /// The machine's events.
    pub fn events(&self) -> &Receiver<M::Event> {
        self.thread.events()
    }

    /// Wait up to `timeout` for an event matching `pred`, returning it; other events are
    /// returned in the vector so nothing is lost.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&M::Event) -> bool,
    ) -> (Option<M::Event>, Vec<M::Event>) {
        self.thread.wait_for(timeout, pred)
    }

    /// Stop the driver thread and return its counters.
    ///
    /// # Errors
    /// The I/O error that stopped the loop, if one did.
    pub fn shutdown(mut self) -> io::Result<DriverStats> {
        self.thread.stop()
    }
}

/// One bound UDP socket of a node and the transmits waiting for it to become writable.
struct Socket {
    socket: UdpSocket,
    local: SocketAddr,
    pending: VecDeque<(SocketAddr, bytes::Bytes)>,
    writable_registered: bool,
}

fn token(index: usize) -> Token {
    Token(index + 1)
}

fn run<M: Machine>(
    mut poll: Poll,
    mut sockets: Vec<Socket>,
    mut machine: M,
    ends: LoopEnds<M>,
) -> io::Result<DriverStats> {
    let LoopEnds {
        commands,
        events: events_out,
        stop,
    } = ends;
    for (i, s) in sockets.iter_mut().enumerate() {
        poll.registry()
            .register(&mut s.socket, token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut stats = DriverStats::default();
    // Outputs the machine queued when it was built (a probe's first request) go out at once,
    // not after its first timeout: the first pass polls without waiting.
    let mut started = false;
    loop {
        let timeout = if started {
            machine
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
        } else {
            started = true;
            Some(Duration::ZERO)
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(stats);
        }
        for event in events.iter() {
            if event.token() == WAKER || !event.is_readable() {
                continue;
            }
            let Some(s) = sockets.get(event.token().0 - 1) else {
                continue;
            };
            loop {
                match s.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        stats.datagrams_in += 1;
                        let now = Instant::now();
                        machine.handle_input(
                            now,
                            Input::Datagram {
                                source,
                                local: s.local,
                                data: &buf[..n],
                            },
                        );
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors surface as ConnectionRefused on Linux: ignore them.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let now = Instant::now();
        while let Ok(cmd) = commands.try_recv() {
            cmd(&mut machine, now);
        }
        if machine.poll_timeout().is_some_and(|t| t <= now) {
            machine.handle_timeout(now);
        }
        // Drain outputs: transmits, then events (the timeout is read at the top of the loop).
        while let Some(t) = machine.poll_transmit() {
            let Destination::Udp(to) = t.destination else {
                // Stream transmits belong to the TCP driver; a UDP node has no streams.
                continue;
            };
            let index = t
                .source
                .and_then(|from| sockets.iter().position(|s| s.local == from))
                .unwrap_or(0);
            sockets[index].pending.push_back((to, t.payload));
        }
        for (i, s) in sockets.iter_mut().enumerate() {
            while let Some((to, payload)) = s.pending.front() {
                match s.socket.send_to(payload, *to) {
                    Ok(_) => {
                        stats.datagrams_out += 1;
                        s.pending.pop_front();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        stats.send_errors += 1;
                        s.pending.pop_front();
                    }
                }
            }
            let want_writable = !s.pending.is_empty();
            if want_writable != s.writable_registered {
                let interest = if want_writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                poll.registry()
                    .reregister(&mut s.socket, token(i), interest)?;
                s.writable_registered = want_writable;
            }
        }
        while let Some(e) = machine.poll_event() {
            if events_out.send(e).is_err() {
                // The application dropped its receiver: nobody is listening any more.
                return Ok(stats);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::sansio::Transmit;
    use std::net::UdpSocket as StdUdpSocket;

    /// Answers each datagram with "<local it arrived on>" sent from the address named in the
    /// datagram (empty: no source), so a test sees both routing directions.
    #[derive(Default)]
    struct Echo {
        out: VecDeque<Transmit>,
    }

    impl Machine for Echo {
        type Event = ();

        fn handle_input(&mut self, _now: Instant, input: Input<'_>) {
            if let Input::Datagram {
                source,
                local,
                data,
            } = input
            {
                let from = std::str::from_utf8(data).ok().and_then(|s| s.parse().ok());
                self.out.push_back(Transmit {
                    destination: Destination::Udp(source),
                    source: from,
                    payload: bytes::Bytes::from(local.to_string()),
                    ttl: None,
                });
            }
        }

        fn handle_timeout(&mut self, _now: Instant) {}

        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.pop_front()
        }

        fn poll_event(&mut self) -> Option<()> {
            None
        }

        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn spawn_multi_reports_local_and_routes_by_source() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let node = UdpNode::spawn_multi(&[any, any, any], |_| Echo::default()).unwrap();
        let locals = node.local_addrs().to_vec();
        assert_eq!(locals.len(), 3);
        assert_eq!(node.local_addr(), locals[0]);
        assert!(locals.iter().all(|a| a.port() != 0));

        let client = StdUdpSocket::bind(any).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 128];
        let unbound: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for (to, from, expected_from) in [
            (locals[1], Some(locals[2]), locals[2]),
            (locals[2], Some(locals[1]), locals[1]),
            (locals[2], None, locals[0]),
            (locals[1], Some(unbound), locals[0]),
        ] {
            let body = from.map(|f| f.to_string()).unwrap_or_default();
            client.send_to(body.as_bytes(), to).unwrap();
            let (n, sender) = client.recv_from(&mut buf).unwrap();
            assert_eq!(sender, expected_from, "sent to {to}, asked for {from:?}");
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), to.to_string());
        }
        let stats = node.shutdown().unwrap();
        assert_eq!((stats.datagrams_in, stats.datagrams_out), (4, 4));
    }

    /// Sends one datagram from its constructor and then wants a timeout only much later.
    struct Greeter {
        out: Option<Transmit>,
        later: Instant,
    }

    impl Machine for Greeter {
        type Event = ();

        fn handle_input(&mut self, _now: Instant, _input: Input<'_>) {}

        fn handle_timeout(&mut self, now: Instant) {
            self.later = now + Duration::from_secs(60);
        }

        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.take()
        }

        fn poll_event(&mut self) -> Option<()> {
            None
        }

        fn poll_timeout(&self) -> Option<Instant> {
            Some(self.later)
        }
    }

    #[test]
    fn what_a_machine_queues_when_built_is_sent_at_once() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let peer = StdUdpSocket::bind(any).unwrap();
        let to = peer.local_addr().unwrap();
        let started = Instant::now();
        let _node = UdpNode::spawn(any, |now| Greeter {
            out: Some(Transmit {
                destination: Destination::Udp(to),
                source: None,
                payload: bytes::Bytes::from_static(b"hello"),
                ttl: None,
            }),
            later: now + Duration::from_secs(10),
        })
        .unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        // Not held back until the machine's first timeout (10 s away).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn spawn_multi_needs_an_address() {
        let err = UdpNode::spawn_multi(&[], |_| Echo::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
