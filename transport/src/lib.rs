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
pub mod store;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::identity::UnixTime;
use natter_core::sansio::{Destination, Input, Machine, Transmit};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
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

type Command<M> = Box<dyn FnOnce(&mut M, Instant) + Send>;

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

/// A sans-IO machine running on its own thread behind one UDP socket.
///
/// Application commands run on the driver thread through [`UdpNode::command`]; events come out
/// of [`UdpNode::events`] in the order the machine produced them.
pub struct UdpNode<M: Machine> {
    local: SocketAddr,
    commands: Sender<Command<M>>,
    waker: Arc<Waker>,
    events: Receiver<M::Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<DriverStats>>>,
}

impl<M: Machine> std::fmt::Debug for UdpNode<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpNode")
            .field("local", &self.local)
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
        let socket = UdpSocket::bind(addr)?;
        let local = socket.local_addr()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let machine = make(Instant::now());
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("natter-udp-{local}"))
            .spawn(move || run(poll, socket, local, machine, cmd_rx, ev_tx, stop2))?;
        Ok(Self {
            local,
            commands: cmd_tx,
            waker,
            events: ev_rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
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
        let (tx, rx) = mpsc::sync_channel(1);
        let cmd: Command<M> = Box::new(move |m, now| {
            let _ = tx.send(f(m, now));
        });
        self.commands.send(cmd).expect("driver thread is running");
        let _ = self.waker.wake();
        rx.recv().expect("driver thread is running")
    }

    /// The machine's events.
    pub fn events(&self) -> &Receiver<M::Event> {
        &self.events
    }

    /// Wait up to `timeout` for an event matching `pred`, returning it; other events are
    /// returned in the vector so nothing is lost.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&M::Event) -> bool,
    ) -> (Option<M::Event>, Vec<M::Event>) {
        let deadline = Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return (Some(e), others),
                Ok(e) => others.push(e),
                Err(_) => return (None, others),
            }
        }
    }

    /// Stop the driver thread and return its counters.
    ///
    /// # Errors
    /// The I/O error that stopped the loop, if one did.
    pub fn shutdown(mut self) -> io::Result<DriverStats> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> io::Result<DriverStats> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("driver thread panicked"))),
            None => Ok(DriverStats::default()),
        }
    }
}

impl<M: Machine> Drop for UdpNode<M> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<M: Machine>(
    mut poll: Poll,
    mut socket: UdpSocket,
    local: SocketAddr,
    mut machine: M,
    commands: Receiver<Command<M>>,
    events_out: Sender<M::Event>,
    stop: Arc<AtomicBool>,
) -> io::Result<DriverStats> {
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut pending: VecDeque<Transmit> = VecDeque::new();
    let mut writable_registered = false;
    let mut stats = DriverStats::default();
    loop {
        let timeout = machine
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(stats);
        }
        for event in events.iter() {
            if event.token() == SOCKET && event.is_readable() {
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok((n, source)) => {
                            stats.datagrams_in += 1;
                            let now = Instant::now();
                            machine.handle_input(
                                now,
                                Input::Datagram {
                                    source,
                                    local,
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
        }
        let now = Instant::now();
        while let Ok(cmd) = commands.try_recv() {
            cmd(&mut machine, now);
        }
        if machine.poll_timeout().is_some_and(|t| t <= now) {
            machine.handle_timeout(now);
        }
        // Drain outputs: transmits, then events (the timeout is read at the top of the loop).
        pending.extend(std::iter::from_fn(|| machine.poll_transmit()));
        while let Some(t) = pending.front() {
            let Destination::Udp(to) = t.destination else {
                // Stream transmits belong to the TCP driver; a UDP node has no streams.
                pending.pop_front();
                continue;
            };
            match socket.send_to(&t.payload, to) {
                Ok(_) => {
                    stats.datagrams_out += 1;
                    pending.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    stats.send_errors += 1;
                    pending.pop_front();
                }
            }
        }
        let want_writable = !pending.is_empty();
        if want_writable != writable_registered {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(&mut socket, SOCKET, interest)?;
            writable_registered = want_writable;
        }
        while let Some(e) = machine.poll_event() {
            if events_out.send(e).is_err() {
                // The application dropped its receiver: nobody is listening any more.
                return Ok(stats);
            }
        }
    }
}
