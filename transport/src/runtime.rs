//! The full runtime: any sans-IO machine over UDP sockets, TCP listeners and outbound TCP/TLS
//! streams, on one mio thread.
//!
//! [`Runtime`] binds the UDP sockets and TCP listeners it is given, then loops: wait on mio
//! until the machine's deadline; feed datagrams (stamped with their read time), accepted and
//! connected streams ([`Input::StreamOpened`]), stream bytes and closes; run application
//! commands; call `handle_timeout`; then drain the machine in the contract's order
//! (transmits, stream commands, events). Streams the machine asks for
//! ([`StreamCommand::Connect`]) are connected without blocking, TLS-wrapped when asked.
//!
//! TLS on the fallback port exists so that strict firewalls, which pass only TLS on 443, pass
//! Natter too. It is camouflage, not authentication: the Noise session inside it authenticates
//! both ends with certificates from the login authority. So the listener uses a throwaway
//! self-signed certificate and the connecting side accepts any server certificate.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::sansio::{Destination, Input, Machine, StreamCommand, StreamId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConnection, Connection, DigitallySignedStruct, ServerConnection, SignatureScheme,
};

use crate::login::tls::{server_config, TlsIdentity};
use crate::machine_thread::{Commands, LoopEnds, MachineThread};

const WAKER: Token = Token(0);
const RECV_BUFFER: usize = 2048;
/// Most bytes buffered for a stream that does not drain (then it is closed).
const MAX_STREAM_BACKLOG: usize = 1 << 20;
/// Receive buffer asked for on every UDP socket. A super node relaying a thousand calls takes
/// 100,000 small datagrams a second on one socket; the usual default (208 KiB, a few hundred
/// datagrams once the kernel's per-packet overhead is counted) overflows whenever the event
/// loop is off the CPU for a few milliseconds. The kernel caps the request at
/// `net.core.rmem_max` (raise it on super nodes); coturn asks for 2 MiB per socket.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// What to bind.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// UDP sockets (the first is the default source).
    pub udp: Vec<SocketAddr>,
    /// TCP listeners, with whether each is TLS-wrapped.
    pub tcp: Vec<(SocketAddr, bool)>,
}

/// Sockets bound before the runtime starts, for [`Runtime::spawn_bound`]: a caller that must
/// choose ports together (a super node on an ephemeral port needs its neighbours free too)
/// binds them itself and hands them over, so no port is ever released and taken again.
#[derive(Debug, Default)]
pub struct BoundSockets {
    /// UDP sockets (the first is the default source).
    pub udp: Vec<std::net::UdpSocket>,
    /// TCP listeners, with whether each is TLS-wrapped.
    pub tcp: Vec<(std::net::TcpListener, bool)>,
}

impl BoundSockets {
    /// Bind everything `config` names, in order.
    ///
    /// # Errors
    /// The first socket that cannot be bound.
    pub fn bind(config: &RuntimeConfig) -> io::Result<Self> {
        let mut out = Self::default();
        for a in &config.udp {
            out.udp.push(std::net::UdpSocket::bind(a)?);
        }
        for (a, tls) in &config.tcp {
            out.tcp.push((std::net::TcpListener::bind(a)?, *tls));
        }
        Ok(out)
    }
}

/// Counters kept by the runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeStats {
    /// Datagrams read.
    pub datagrams_in: u64,
    /// Datagrams written.
    pub datagrams_out: u64,
    /// Bytes in datagrams read and written.
    pub datagram_bytes: u64,
    /// Bytes read from streams.
    pub stream_bytes_in: u64,
    /// Bytes written to streams.
    pub stream_bytes_out: u64,
    /// Streams accepted.
    pub accepted: u64,
    /// Streams connected.
    pub connected: u64,
    /// Send or connect failures.
    pub errors: u64,
}

/// A machine running on its own thread behind UDP sockets and TCP streams.
pub struct Runtime<M: Machine> {
    load: Arc<LoadMeter>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    thread: MachineThread<M, RuntimeStats>,
}

impl<M: Machine> std::fmt::Debug for Runtime<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl<M> Runtime<M>
where
    M: Machine + Send + 'static,
    M::Event: Send + 'static,
{
    /// Bind everything in `config`, build the machine with the start instant and the bound
    /// UDP addresses (ports resolved), and run it.
    ///
    /// # Errors
    /// When a socket cannot be bound or the event loop cannot be created.
    pub fn spawn(
        config: RuntimeConfig,
        make: impl FnOnce(Instant, &[SocketAddr]) -> M,
    ) -> io::Result<Self> {
        Self::spawn_bound(BoundSockets::bind(&config)?, make)
    }

    /// Like [`Runtime::spawn`], with sockets the caller bound (see [`BoundSockets`]).
    ///
    /// # Errors
    /// When a socket cannot be made non-blocking or the event loop cannot be created.
    pub fn spawn_bound(
        sockets: BoundSockets,
        make: impl FnOnce(Instant, &[SocketAddr]) -> M,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut udp = Vec::new();
        for s in sockets.udp {
            s.set_nonblocking(true)?;
            let socket = UdpSocket::from_std(s);
            // Best effort: a smaller buffer than asked for still works.
            let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(UDP_RECV_BUFFER);
            udp.push(socket);
        }
        let mut tcp = Vec::new();
        let mut any_tls = false;
        for (l, tls) in sockets.tcp {
            l.set_nonblocking(true)?;
            any_tls |= tls;
            tcp.push((TcpListener::from_std(l), tls));
        }
        let udp_addrs: Vec<SocketAddr> = udp
            .iter()
            .map(|s| s.local_addr())
            .collect::<io::Result<_>>()?;
        let tcp_addrs: Vec<SocketAddr> = tcp
            .iter()
            .map(|(l, _)| l.local_addr())
            .collect::<io::Result<_>>()?;
        let tls = if any_tls {
            let id = TlsIdentity::self_signed("natter-node")
                .map_err(|e| io::Error::other(e.to_string()))?;
            Some(server_config(&id).map_err(|e| io::Error::other(e.to_string()))?)
        } else {
            None
        };
        let machine = make(Instant::now(), &udp_addrs);
        let load = Arc::new(LoadMeter::default());
        let name = format!(
            "natter-{}",
            udp_addrs.first().map(|a| a.to_string()).unwrap_or_default()
        );
        let (meter, addrs) = (load.clone(), udp_addrs.clone());
        let thread = MachineThread::spawn(name, waker, move |ends| {
            Loop {
                load: meter,
                poll,
                udp,
                udp_addrs: addrs,
                extra_udp: HashMap::new(),
                listeners: tcp,
                server_tls: tls,
                client_tls: client_config(),
                streams: HashMap::new(),
                tokens: HashMap::new(),
                next_token: 1,
                next_inbound: 0,
                machine,
                ends,
                stats: RuntimeStats::default(),
            }
            .run()
        })?;
        Ok(Self {
            load,
            udp: udp_addrs,
            tcp: tcp_addrs,
            thread,
        })
    }

    /// The last second's load: (busy fraction of the event loop, bytes per second moved).
    pub fn load(&self) -> (f32, u64) {
        (
            self.load.busy_permille.load(Ordering::Relaxed) as f32 / 1000.0,
            self.load.bytes_per_sec.load(Ordering::Relaxed),
        )
    }

    /// The bound UDP addresses.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// Run `f` on the runtime thread with the machine and the current instant.
    ///
    /// # Panics
    /// When the runtime thread has stopped.
    pub fn command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M, Instant) -> R + Send + 'static,
    ) -> R {
        self.thread
            .commands()
            .run(f)
            .expect("runtime thread is running")
    }

    /// A handle other threads can use to send commands.
    pub fn handle(&self) -> RuntimeHandle<M> {
        RuntimeHandle {
            commands: self.thread.commands().clone(),
        }
    }

    /// The machine's events.
    pub fn events(&self) -> &Receiver<M::Event> {
        self.thread.events()
    }

    /// Wait up to `timeout` for an event matching `pred`; the others are returned too.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&M::Event) -> bool,
    ) -> (Option<M::Event>, Vec<M::Event>) {
        self.thread.wait_for(timeout, pred)
    }

    /// Stop the runtime (its sockets close, as when a process dies) and return its counters.
    ///
    /// # Errors
    /// The I/O error that stopped the loop, if one did.
    pub fn shutdown(mut self) -> io::Result<RuntimeStats> {
        self.thread.stop()
    }
}

/// The runtime's own measure of its load, updated every second: the fraction of time the
/// event loop spent working rather than waiting, and the bytes per second it moved.
#[derive(Debug, Default)]
struct LoadMeter {
    busy_permille: std::sync::atomic::AtomicU32,
    bytes_per_sec: std::sync::atomic::AtomicU64,
}

/// Sends commands to a [`Runtime`] from any thread.
pub struct RuntimeHandle<M: Machine> {
    commands: Commands<M>,
}

impl<M: Machine> Clone for RuntimeHandle<M> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
        }
    }
}

impl<M: Machine> std::fmt::Debug for RuntimeHandle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl<M: Machine + 'static> RuntimeHandle<M> {
    /// Run `f` on the runtime thread; `None` when the runtime has stopped.
    pub fn command<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M, Instant) -> R + Send + 'static,
    ) -> Option<R> {
        self.commands.run(f)
    }
}

/// Accepts any server certificate: see the module documentation (TLS here is camouflage; the
/// Noise session inside authenticates).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

enum Tls {
    None,
    Wrapped(Box<Connection>),
}

struct Stream {
    tcp: TcpStream,
    tls: Tls,
    remote: SocketAddr,
    token: Token,
    connecting: bool,
    /// Plaintext waiting to be written (or encrypted).
    out: Vec<u8>,
    dead: bool,
    closing: bool,
}

impl Stream {
    fn write_plain(&mut self, data: &[u8]) {
        match &mut self.tls {
            Tls::None => self.out.extend_from_slice(data),
            Tls::Wrapped(c) => {
                if c.writer().write_all(data).is_err() {
                    self.dead = true;
                }
            }
        }
    }

    fn wants_write(&self) -> bool {
        match &self.tls {
            Tls::None => !self.out.is_empty(),
            Tls::Wrapped(c) => c.wants_write(),
        }
    }

    /// Write what can be written; returns bytes written.
    fn flush(&mut self) -> usize {
        let mut written = 0;
        loop {
            let r = match &mut self.tls {
                Tls::None => {
                    if self.out.is_empty() {
                        return written;
                    }
                    self.tcp.write(&self.out).inspect(|n| {
                        self.out.drain(..*n);
                    })
                }
                Tls::Wrapped(c) => {
                    if !c.wants_write() {
                        return written;
                    }
                    c.write_tls(&mut self.tcp)
                }
            };
            match r {
                Ok(0) => return written,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return written;
                }
            }
        }
    }

    /// Read everything available; returns the plaintext.
    fn read(&mut self, buf: &mut [u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        match &mut self.tls {
            Tls::None => loop {
                match self.tcp.read(buf) {
                    Ok(0) => {
                        self.dead = true;
                        break;
                    }
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.dead = true;
                        break;
                    }
                }
            },
            Tls::Wrapped(c) => {
                loop {
                    match c.read_tls(&mut self.tcp) {
                        Ok(0) => {
                            self.dead = true;
                            break;
                        }
                        Ok(_) => {
                            if c.process_new_packets().is_err() {
                                self.dead = true;
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.dead = true;
                            break;
                        }
                    }
                }
                loop {
                    match c.reader().read(buf) {
                        Ok(0) => {
                            self.dead = true;
                            break;
                        }
                        Ok(n) => plain.extend_from_slice(&buf[..n]),
                        Err(_) => break,
                    }
                }
            }
        }
        plain
    }
}

struct Loop<M: Machine> {
    load: Arc<LoadMeter>,
    poll: Poll,
    udp: Vec<UdpSocket>,
    udp_addrs: Vec<SocketAddr>,
    /// Sockets the machine opened on demand ([`StreamCommand::BindUdp`]), by token.
    extra_udp: HashMap<Token, (UdpSocket, SocketAddr)>,
    listeners: Vec<(TcpListener, bool)>,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    client_tls: Arc<rustls::ClientConfig>,
    streams: HashMap<StreamId, Stream>,
    tokens: HashMap<Token, StreamId>,
    next_token: usize,
    next_inbound: u64,
    machine: M,
    /// Its owner's ends: commands in, events out, the stop flag.
    ends: LoopEnds<M>,
    stats: RuntimeStats,
}

/// Tokens: 0 waker, 1..=n UDP sockets, then listeners, then streams.
impl<M: Machine> Loop<M> {
    fn run(mut self) -> io::Result<RuntimeStats> {
        for (i, s) in self.udp.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(s, Token(1 + i), Interest::READABLE)?;
        }
        let base = 1 + self.udp.len();
        for (i, (l, _)) in self.listeners.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(l, Token(base + i), Interest::READABLE)?;
        }
        self.next_token = base + self.listeners.len();
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; RECV_BUFFER.max(16 * 1024)];
        self.drain();
        let mut window_start = Instant::now();
        let mut busy = Duration::ZERO;
        let mut window_bytes = self.bytes_moved();
        loop {
            let now = Instant::now();
            if now.saturating_duration_since(window_start) >= Duration::from_secs(1) {
                let span = now.saturating_duration_since(window_start).as_secs_f64();
                let permille = (busy.as_secs_f64() / span * 1000.0).min(1000.0) as u32;
                self.load.busy_permille.store(permille, Ordering::Relaxed);
                let moved = self.bytes_moved();
                let rate = (moved.saturating_sub(window_bytes) as f64 / span) as u64;
                self.load.bytes_per_sec.store(rate, Ordering::Relaxed);
                window_start = now;
                window_bytes = moved;
                busy = Duration::ZERO;
            }
            let timeout = self
                .machine
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let woke = Instant::now();
            if self.ends.stop.load(Ordering::SeqCst) {
                return Ok(self.stats);
            }
            for event in events.iter() {
                let t = event.token().0;
                if t == 0 {
                    continue;
                } else if t <= self.udp.len() {
                    self.read_udp(t - 1, &mut buf);
                } else if t < base + self.listeners.len() {
                    self.accept(t - base);
                } else if let Some((socket, local)) = self.extra_udp.get(&event.token()) {
                    read_socket(socket, *local, &mut self.machine, &mut self.stats, &mut buf);
                } else if let Some(id) = self.tokens.get(&event.token()).copied() {
                    self.on_stream_event(id, event.is_writable(), &mut buf);
                }
            }
            let now = Instant::now();
            while let Ok(cmd) = self.ends.commands.try_recv() {
                cmd(&mut self.machine, now);
            }
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
            }
            self.drain();
            self.reap();
            busy += woke.elapsed();
        }
    }

    fn bytes_moved(&self) -> u64 {
        self.stats.stream_bytes_in + self.stats.stream_bytes_out + self.stats.datagram_bytes
    }

    fn read_udp(&mut self, i: usize, buf: &mut [u8]) {
        read_socket(
            &self.udp[i],
            self.udp_addrs[i],
            &mut self.machine,
            &mut self.stats,
            buf,
        );
    }

    /// Opens a UDP socket on the IP of `near` for the machine ([`StreamCommand::BindUdp`]) and
    /// tells it where.
    fn bind_udp(&mut self, token: u64, near: SocketAddr) {
        let bound = (|| {
            let std = std::net::UdpSocket::bind(SocketAddr::new(near.ip(), 0))?;
            std.set_nonblocking(true)?;
            let mut socket = UdpSocket::from_std(std);
            let local = socket.local_addr()?;
            let t = Token(self.next_token);
            self.poll
                .registry()
                .register(&mut socket, t, Interest::READABLE)?;
            self.next_token += 1;
            self.extra_udp.insert(t, (socket, local));
            io::Result::Ok(local)
        })();
        if bound.is_err() {
            self.stats.errors += 1;
        }
        self.machine.handle_input(
            Instant::now(),
            Input::UdpBound {
                token,
                local: bound.ok(),
            },
        );
    }

    /// Closes a socket the machine opened ([`StreamCommand::CloseUdp`]).
    fn close_udp(&mut self, local: SocketAddr) {
        let token = self
            .extra_udp
            .iter()
            .find(|(_, (_, l))| *l == local)
            .map(|(t, _)| *t);
        if let Some((mut socket, _)) = token.and_then(|t| self.extra_udp.remove(&t)) {
            let _ = self.poll.registry().deregister(&mut socket);
        }
    }

    fn register(&mut self, id: StreamId, mut stream: Stream, interest: Interest) {
        let token = Token(self.next_token);
        self.next_token += 1;
        stream.token = token;
        if self
            .poll
            .registry()
            .register(&mut stream.tcp, token, interest)
            .is_ok()
        {
            self.tokens.insert(token, id);
            self.streams.insert(id, stream);
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            let (tcp, remote) = match self.listeners[i].0.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let _ = tcp.set_nodelay(true);
            let tls = if self.listeners[i].1 {
                match self.server_tls.clone().map(ServerConnection::new) {
                    Some(Ok(c)) => Tls::Wrapped(Box::new(Connection::Server(c))),
                    _ => continue,
                }
            } else {
                Tls::None
            };
            let id = StreamId(self.next_inbound);
            self.next_inbound += 1;
            self.stats.accepted += 1;
            let stream = Stream {
                tcp,
                tls,
                remote,
                token: Token(0),
                connecting: false,
                out: Vec::new(),
                dead: false,
                closing: false,
            };
            self.register(id, stream, Interest::READABLE);
            self.machine
                .handle_input(Instant::now(), Input::StreamOpened { stream: id, remote });
        }
    }

    fn connect(&mut self, id: StreamId, remote: SocketAddr, tls: bool) {
        let tcp = match TcpStream::connect(remote) {
            Ok(s) => s,
            Err(_) => {
                self.stats.errors += 1;
                self.machine
                    .handle_input(Instant::now(), Input::StreamClosed { stream: id });
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = if tls {
            let name = ServerName::IpAddress(remote.ip().into());
            match ClientConnection::new(self.client_tls.clone(), name) {
                Ok(c) => Tls::Wrapped(Box::new(Connection::Client(c))),
                Err(_) => {
                    self.machine
                        .handle_input(Instant::now(), Input::StreamClosed { stream: id });
                    return;
                }
            }
        } else {
            Tls::None
        };
        let stream = Stream {
            tcp,
            tls,
            remote,
            token: Token(0),
            connecting: true,
            out: Vec::new(),
            dead: false,
            closing: false,
        };
        self.register(id, stream, Interest::READABLE | Interest::WRITABLE);
    }

    fn on_stream_event(&mut self, id: StreamId, writable: bool, buf: &mut [u8]) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.connecting {
            if !writable {
                return;
            }
            // A non-blocking connect completed: check how.
            match (s.tcp.take_error(), s.tcp.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    s.connecting = false;
                    self.stats.connected += 1;
                    let remote = s.remote;
                    self.machine
                        .handle_input(Instant::now(), Input::StreamOpened { stream: id, remote });
                }
                _ => {
                    s.dead = true;
                    self.stats.errors += 1;
                    return;
                }
            }
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let plain = s.read(buf);
        self.stats.stream_bytes_out += s.flush() as u64;
        if !plain.is_empty() {
            self.stats.stream_bytes_in += plain.len() as u64;
            let remote = s.remote;
            self.machine.handle_input(
                Instant::now(),
                Input::Stream {
                    stream: id,
                    remote,
                    data: &plain,
                },
            );
        }
    }

    fn drain(&mut self) {
        for _ in 0..64 {
            let mut progressed = false;
            while let Some(t) = self.machine.poll_transmit() {
                progressed = true;
                match t.destination {
                    Destination::Udp(to) => {
                        // From the socket the machine names; the first one when it names
                        // none, or an address that is none of ours (a configured address
                        // a wildcard socket stands for).
                        let named = t.source.and_then(|s| {
                            let own = self.udp_addrs.iter().position(|a| *a == s);
                            own.and_then(|i| self.udp.get(i)).or_else(|| {
                                self.extra_udp
                                    .values()
                                    .find(|(_, l)| *l == s)
                                    .map(|(socket, _)| socket)
                            })
                        });
                        let socket = named.or(self.udp.first());
                        let sent = socket.map(|s| match t.ttl {
                            None => s.send_to(&t.payload, to),
                            // One datagram with its own TTL (hole punching): set it, send, and
                            // put the socket's default back. On IPv6 the TTL cannot be set this
                            // way; the datagram goes with the default.
                            Some(ttl) => {
                                let old = s.ttl().ok();
                                let set = s.set_ttl(u32::from(ttl)).is_ok();
                                let r = s.send_to(&t.payload, to);
                                if let (true, Some(old)) = (set, old) {
                                    let _ = s.set_ttl(old);
                                }
                                r
                            }
                        });
                        match sent {
                            Some(Ok(n)) => {
                                self.stats.datagrams_out += 1;
                                self.stats.datagram_bytes += n as u64;
                            }
                            _ => self.stats.errors += 1,
                        }
                    }
                    Destination::Stream(id) => {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.write_plain(&t.payload);
                            if s.out.len() > MAX_STREAM_BACKLOG {
                                s.dead = true;
                            }
                        }
                    }
                }
            }
            while let Some(c) = self.machine.poll_stream_command() {
                progressed = true;
                match c {
                    StreamCommand::Connect {
                        stream,
                        remote,
                        tls,
                    } => self.connect(stream, remote, tls),
                    StreamCommand::Close { stream } => {
                        if let Some(s) = self.streams.get_mut(&stream) {
                            s.closing = true;
                            if let Tls::Wrapped(c) = &mut s.tls {
                                c.send_close_notify();
                            }
                        }
                    }
                    StreamCommand::BindUdp { token, near } => self.bind_udp(token, near),
                    StreamCommand::CloseUdp { local } => self.close_udp(local),
                }
            }
            while let Some(e) = self.machine.poll_event() {
                progressed = true;
                if self.ends.events.send(e).is_err() {
                    // Nobody listens any more: keep running for the network's sake.
                }
            }
            if !progressed {
                break;
            }
        }
        // Flush streams and keep their interest right.
        for s in self.streams.values_mut() {
            if s.connecting {
                continue;
            }
            self.stats.stream_bytes_out += s.flush() as u64;
            let interest = if s.wants_write() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut s.tcp, s.token, interest);
        }
    }

    fn reap(&mut self) {
        let gone: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.dead || (s.closing && !s.wants_write()))
            .map(|(id, _)| *id)
            .collect();
        let reaped = !gone.is_empty();
        for id in gone {
            if let Some(mut s) = self.streams.remove(&id) {
                self.tokens.remove(&s.token);
                let _ = self.poll.registry().deregister(&mut s.tcp);
                let _ = s.tcp.shutdown(std::net::Shutdown::Both);
                if !s.closing {
                    self.machine
                        .handle_input(Instant::now(), Input::StreamClosed { stream: id });
                }
            }
        }
        if reaped {
            // The machine heard about closed streams and may have something to say.
            self.drain();
        }
    }
}

/// Reads every datagram waiting on `socket` (at `local`) into `machine`.
fn read_socket<M: Machine>(
    socket: &UdpSocket,
    local: SocketAddr,
    machine: &mut M,
    stats: &mut RuntimeStats,
    buf: &mut [u8],
) {
    loop {
        match socket.recv_from(buf) {
            Ok((n, source)) => {
                stats.datagrams_in += 1;
                stats.datagram_bytes += n as u64;
                machine.handle_input(
                    Instant::now(),
                    Input::Datagram {
                        source,
                        local,
                        data: &buf[..n],
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
