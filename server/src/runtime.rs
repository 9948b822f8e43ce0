//! The login server runtime.
//!
//! One I/O thread runs a mio loop: it accepts TCP connections, terminates TLS 1.3 (rustls),
//! feeds the plaintext to the sans-IO [`LoginServer`] and writes its framed answers back. The
//! machine's jobs (Argon2id and the account store) go to a pool of worker threads through a
//! channel; their outcomes come back through another channel and a mio waker. A slow hash
//! therefore never delays a version check or another client's TLS handshake.
//!
//! On first start the server creates, in its data directory (mode 0700):
//! `authority.key` (the Ed25519 authority secret, 0600), `tls-cert.der` and `tls-key.der` (a
//! self-signed certificate unless a CA-issued one is given; the key 0600), `accounts.sqlite`
//! (unless PostgreSQL is used) and `network.toml` (for clients and super nodes). At every
//! start `network.toml` is written again (address, pin, authority keys), keeping the
//! `[[bootstrap]]` entries and the `[overlay]` settings already in it and adding the bootstrap
//! entries of [`LoginServerOptions::bootstrap`]. Only those are read from the old file, leniently: a file that no longer parses
//! (truncated, hand-edited into garbage) is logged and replaced, never a reason not to start.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::machine::{
    JobId, JobOutcome, LoginServer, LoginServerConfig, LoginServerEvent, WorkItem,
};
use crate::password::{self, HashParams};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::crypto::{Authority, TrustedAuthorities};
use natter_core::login::proto::Version;
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, Input, Machine, StreamId};
use rustls::ServerConnection;

use crate::jobs::JobContext;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::AccountStore;
use natter_transport::login::files::{private_dir, read_key, write_private};
use natter_transport::login::network::{
    hex, unhex, AuthorityEntry, AuthorityWindow, BootstrapEntry, LoginEntry, NetworkFile,
    OverlayEntry,
};
use natter_transport::login::tls::{server_config, TlsIdentity};
use natter_transport::{os_seed, wall_clock};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// A connection that has not finished its TLS handshake and sent a request by then is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a login server.
#[derive(Debug, Clone)]
pub struct LoginServerOptions {
    /// Data directory (keys, certificate, SQLite database, network file).
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The address clients should use, written to the network file (default: `listen`).
    pub public_address: Option<String>,
    /// PostgreSQL URL; SQLite in the data directory when absent.
    pub database_url: Option<String>,
    /// The name in the TLS certificate and in the network file.
    pub server_name: String,
    /// A CA-issued certificate chain and key (PEM) instead of the self-signed one.
    pub tls_pem: Option<(PathBuf, PathBuf)>,
    /// Oldest client version accepted.
    pub minimum_version: Version,
    /// Newest client version (older ones are told an upgrade is recommended).
    pub recommended_version: Version,
    /// Certificate lifetime.
    pub certificate_lifetime: Duration,
    /// How long after expiry a certificate may still be renewed without the password
    /// (default 30 days); later renewals are refused with `LoginError::RenewalExpired`.
    pub renewal_grace: Duration,
    /// How far back certificates start, for clients whose clocks run behind.
    pub clock_skew_allowance: Duration,
    /// Argon2id cost.
    pub hash_params: HashParams,
    /// Worker threads for hashing and storage (default: the number of CPUs).
    pub workers: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// A connection idle this long (no complete request) is closed.
    pub idle_timeout: Duration,
    /// Bootstrap super nodes to list in the network file, besides those already in it (entries
    /// an operator added by hand are kept across restarts).
    pub bootstrap: Vec<SocketAddr>,
}

impl LoginServerOptions {
    /// Defaults: SQLite, self-signed TLS, `natter-login`, OWASP Argon2id, 24 h certificates.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            public_address: None,
            database_url: None,
            server_name: "natter-login".into(),
            tls_pem: None,
            minimum_version: Version::new(0, 1, 0),
            recommended_version: Version::new(0, 1, 0),
            certificate_lifetime: Duration::from_secs(24 * 3600),
            renewal_grace: Duration::from_secs(30 * 24 * 3600),
            clock_skew_allowance: Duration::from_secs(60),
            hash_params: HashParams::default(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30),
            bootstrap: Vec::new(),
        }
    }
}

/// Why a login server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// File or socket trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] natter_transport::login::tls::TlsError),
    /// The account store.
    #[error("account store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The network file.
    #[error(transparent)]
    Network(#[from] natter_transport::login::network::NetworkFileError),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

/// A running login server.
pub struct LoginServerHandle {
    addr: SocketAddr,
    network: NetworkFile,
    network_path: PathBuf,
    events: Receiver<LoginServerEvent>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LoginServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn load_or_create_authority(dir: &Path) -> Result<Authority, StartError> {
    let path = dir.join("authority.key");
    if path.exists() {
        return Ok(Authority::from_secret_bytes(
            read_key(&path).map_err(io_ctx(format!("reading {}", path.display())))?,
        ));
    }
    let seed = os_seed().map_err(io_ctx("OS randomness"))?;
    let authority = Authority::generate(&mut Rng::from_seed_bytes(seed));
    write_private(&path, &authority.secret_bytes())
        .map_err(io_ctx(format!("writing {}", path.display())))?;
    Ok(authority)
}

/// Extra trusted authority keys (older ones, during a rotation): hex, one per line, in
/// `DATA/trusted-authorities.txt`.
fn extra_trusted(dir: &Path) -> Vec<[u8; 32]> {
    std::fs::read_to_string(dir.join("trusted-authorities.txt"))
        .map(|t| t.lines().filter_map(unhex::<32>).collect())
        .unwrap_or_default()
}

/// Only the `[[bootstrap]]` entries of a network file; every other field is ignored, so an
/// old file that no longer validates (missing table, bad key) still gives its entries.
#[derive(Debug, Default, serde::Deserialize)]
struct BootstrapOnly {
    #[serde(default)]
    bootstrap: Vec<toml::Value>,
}

/// The `[[bootstrap]]` addresses already listed in the network file at `path`, read leniently:
/// a missing file gives none; a file that is not TOML (truncated, garbage) gives none with a
/// warning, as do entries without a string `address`. The file is rewritten afterwards, so it
/// must never stop the server from starting.
fn existing_bootstrap(path: &Path) -> Result<Vec<BootstrapEntry>, StartError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_ctx(format!("reading {}", path.display()))(e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let parsed: BootstrapOnly = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "the network file is unreadable; its bootstrap super nodes are lost and it is \
                 rewritten"
            );
            return Ok(Vec::new());
        }
    };
    let mut entries = Vec::new();
    for value in parsed.bootstrap {
        match value.get("address").and_then(toml::Value::as_str) {
            Some(address) => entries.push(BootstrapEntry {
                address: address.to_string(),
            }),
            None => tracing::warn!(
                file = %path.display(),
                entry = %value,
                "ignoring a [[bootstrap]] entry without an address"
            ),
        }
    }
    Ok(entries)
}

/// The `[overlay]` table of the network file at `path`, kept when the file is rewritten (the
/// operator set it); read leniently like the bootstrap entries: an unreadable or invalid
/// table gives the defaults, with a warning.
/// The `ca_file` of the `[login]` table of the network file at `path`, if any (read leniently:
/// an unreadable file has none).
fn existing_ca_file(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value
        .get("login")?
        .get("ca_file")?
        .as_str()
        .map(PathBuf::from)
}

/// The `[[authority.window]]` entries of the network file at `path` for keys still in `keys`
/// (an operator's retirement dates survive restarts); none when the file does not parse.
fn existing_windows(path: &Path, keys: &[String]) -> Vec<AuthorityWindow> {
    #[derive(Debug, Default, serde::Deserialize)]
    struct WindowsOnly {
        #[serde(default)]
        authority: Option<AuthorityWindows>,
    }
    #[derive(Debug, Default, serde::Deserialize)]
    struct AuthorityWindows {
        #[serde(default)]
        window: Vec<AuthorityWindow>,
    }
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(parsed) = toml::from_str::<WindowsOnly>(&String::from_utf8_lossy(&bytes)) else {
        return Vec::new();
    };
    parsed
        .authority
        .map(|a| a.window)
        .unwrap_or_default()
        .into_iter()
        .filter(|w| keys.iter().any(|k| k.eq_ignore_ascii_case(&w.key)))
        .collect()
}

fn existing_overlay(path: &Path) -> OverlayEntry {
    #[derive(Debug, Default, serde::Deserialize)]
    struct OverlayOnly {
        #[serde(default)]
        overlay: Option<toml::Value>,
    }
    let Ok(bytes) = std::fs::read(path) else {
        return OverlayEntry::default();
    };
    let Ok(parsed) = toml::from_str::<OverlayOnly>(&String::from_utf8_lossy(&bytes)) else {
        return OverlayEntry::default();
    };
    match parsed.overlay.map(|v| v.try_into::<OverlayEntry>()) {
        None => OverlayEntry::default(),
        Some(Ok(o)) if o.fallback_ports().is_ok() => o,
        Some(Ok(o)) => {
            tracing::warn!(
                file = %path.display(),
                error = %o.fallback_ports().unwrap_err(),
                "ignoring an invalid [overlay] table in the network file"
            );
            OverlayEntry::default()
        }
        Some(Err(e)) => {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "ignoring an invalid [overlay] table in the network file"
            );
            OverlayEntry::default()
        }
    }
}

/// The bootstrap super nodes for the network file: those already listed in the file at `path`
/// (added by the operator or by an earlier `--bootstrap`), then the new ones in `extra`.
fn bootstrap_entries(path: &Path, extra: &[SocketAddr]) -> Result<Vec<BootstrapEntry>, StartError> {
    let mut entries = existing_bootstrap(path)?;
    for a in extra {
        let address = a.to_string();
        if !entries.iter().any(|e| e.address == address) {
            entries.push(BootstrapEntry { address });
        }
    }
    Ok(entries)
}

fn load_or_create_tls(opts: &LoginServerOptions) -> Result<(TlsIdentity, bool), StartError> {
    if let Some((chain, key)) = &opts.tls_pem {
        return Ok((TlsIdentity::from_pem_files(chain, key)?, false));
    }
    let (cert, key) = (
        opts.data_dir.join("tls-cert.der"),
        opts.data_dir.join("tls-key.der"),
    );
    if cert.exists() && key.exists() {
        let id =
            TlsIdentity::load_der(&cert, &key).map_err(io_ctx("reading the TLS certificate"))?;
        return Ok((id, true));
    }
    let id = TlsIdentity::self_signed(&opts.server_name)?;
    id.save_der(&cert, &key)
        .map_err(io_ctx("writing the TLS certificate"))?;
    Ok((id, true))
}

impl LoginServerHandle {
    /// Start a login server.
    pub fn start(opts: LoginServerOptions) -> Result<Self, StartError> {
        private_dir(&opts.data_dir).map_err(io_ctx(format!(
            "creating the data directory {}",
            opts.data_dir.display()
        )))?;
        let authority = load_or_create_authority(&opts.data_dir)?;
        let (tls, self_signed) = load_or_create_tls(&opts)?;
        let tls_config = server_config(&tls)?;
        let store: Arc<dyn AccountStore> = match &opts.database_url {
            Some(url) => Arc::new(PostgresStore::connect(url)?),
            None => Arc::new(SqliteStore::open(&opts.data_dir.join("accounts.sqlite"))?),
        };
        let listener = TcpListener::bind(opts.listen)
            .map_err(io_ctx(format!("listening on {}", opts.listen)))?;
        let addr = listener.local_addr().map_err(io_ctx("local address"))?;

        let mut trusted = TrustedAuthorities::new([authority.public()]);
        let mut keys = vec![hex(&authority.public())];
        for k in extra_trusted(&opts.data_dir) {
            trusted.add(k);
            keys.push(hex(&k));
        }
        let network_path = opts.data_dir.join("network.toml");
        let network = NetworkFile {
            login: LoginEntry {
                address: opts
                    .public_address
                    .clone()
                    .unwrap_or_else(|| addr.to_string()),
                server_name: opts.server_name.clone(),
                tls_sha256: self_signed.then(|| hex(&tls.fingerprint())),
                // An operator's extra CA roots for a CA-issued certificate survive restarts.
                ca_file: if self_signed {
                    None
                } else {
                    existing_ca_file(&network_path)
                },
            },
            authority: AuthorityEntry {
                window: existing_windows(&network_path, &keys),
                keys,
            },
            bootstrap: bootstrap_entries(&network_path, &opts.bootstrap)?,
            overlay: existing_overlay(&network_path),
        };
        network.save(&network_path)?;
        // Renewals honour the windows too (a retired previous key renews nothing).
        if let Ok(t) = network.trusted() {
            trusted = t;
        }

        let now = Instant::now();
        let seed = os_seed().map_err(io_ctx("OS randomness"))?;
        let mut cfg = LoginServerConfig::new(authority, seed, wall_clock(), now);
        cfg.trusted = trusted;
        cfg.minimum_version = opts.minimum_version;
        cfg.recommended_version = opts.recommended_version;
        cfg.certificate_lifetime = opts.certificate_lifetime;
        cfg.renewal_grace = opts.renewal_grace;
        cfg.idle_timeout = opts.idle_timeout;
        cfg.clock_skew_allowance = opts.clock_skew_allowance;
        let machine = LoginServer::new(cfg);

        let poll = Poll::new().map_err(io_ctx("event loop"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_ctx("waker"))?);
        let (job_tx, job_rx) = mpsc::channel::<WorkItem>();
        let (done_tx, done_rx) = mpsc::channel::<(JobId, JobOutcome)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let dummy = Arc::new(password::dummy_hash(opts.hash_params));
        let mut workers = Vec::new();
        for i in 0..opts.workers.max(1) {
            let (rx, tx, store, waker, dummy) = (
                job_rx.clone(),
                done_tx.clone(),
                store.clone(),
                waker.clone(),
                dummy.clone(),
            );
            let params = opts.hash_params;
            let handle = std::thread::Builder::new()
                .name(format!("natter-login-worker-{i}"))
                .spawn(move || loop {
                    let item = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(item) = item else { return };
                    let ctx = JobContext {
                        store: store.as_ref(),
                        params,
                        dummy_hash: &dummy,
                    };
                    // A panic in a job (a bug, or a store driver's) answers that request
                    // "server error" and keeps the worker: otherwise its hashing slot and its
                    // connection would stay taken for good.
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run(&item)))
                            .unwrap_or_else(|_| {
                                tracing::error!(job = item.id.0, "a login job panicked");
                                JobOutcome::Failed(natter_core::login::proto::LoginError::Server)
                            });
                    if tx.send((item.id, outcome)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                })
                .map_err(io_ctx("spawning a worker"))?;
            workers.push(handle);
        }
        let (ev_tx, ev_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let io = IoLoop {
            poll,
            listener,
            tls_config,
            machine,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            jobs: job_tx,
            done: done_rx,
            events: ev_tx,
            stop: stop.clone(),
            max_connections: opts.max_connections,
        };
        let thread = std::thread::Builder::new()
            .name("natter-login-io".into())
            .spawn(move || io.run())
            .map_err(io_ctx("spawning the I/O thread"))?;
        tracing::info!(%addr, "login server listening");
        Ok(Self {
            addr,
            network,
            network_path,
            events: ev_rx,
            stop,
            waker,
            thread: Some(thread),
            workers,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The network file it wrote.
    pub fn network(&self) -> &NetworkFile {
        &self.network
    }

    /// Where it wrote the network file.
    pub fn network_path(&self) -> &Path {
        &self.network_path
    }

    /// The server's events (hellos, registrations, certifications, refusals).
    pub fn events(&self) -> &Receiver<LoginServerEvent> {
        &self.events
    }

    /// Stop the server and wait for its threads.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The I/O thread dropped the job sender: workers finish their job and exit.
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for LoginServerHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

struct Conn {
    tcp: TcpStream,
    tls: ServerConnection,
    remote: SocketAddr,
    stream: StreamId,
    accepted: Instant,
    active: bool,
    closing: bool,
    dead: bool,
}

struct IoLoop {
    poll: Poll,
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    machine: LoginServer,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    jobs: Sender<WorkItem>,
    done: Receiver<(JobId, JobOutcome)>,
    events: Sender<LoginServerEvent>,
    stop: Arc<AtomicBool>,
    max_connections: usize,
}

impl IoLoop {
    fn run(mut self) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let deadline = self.next_deadline();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => self.on_readable(token, &mut buf),
                }
            }
            let now = Instant::now();
            while let Ok((id, outcome)) = self.done.try_recv() {
                self.machine.handle_job(now, id, outcome);
            }
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
            }
            self.expire_handshakes(now);
            self.drain_machine();
            self.flush_all();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self
            .conns
            .values()
            .filter(|c| !c.active)
            .map(|c| c.accepted + HANDSHAKE_TIMEOUT)
            .min();
        match (self.machine.poll_timeout(), handshakes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut tcp, remote)) => {
                    if self.conns.len() >= self.max_connections {
                        continue; // dropped: closes the socket
                    }
                    let Ok(tls) = ServerConnection::new(self.tls_config.clone()) else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut tcp, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            tcp,
                            tls,
                            remote,
                            stream: StreamId(token.0 as u64),
                            accepted: Instant::now(),
                            active: false,
                            closing: false,
                            dead: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, token: Token, buf: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        loop {
            match conn.tls.read_tls(&mut conn.tcp) {
                Ok(0) => {
                    conn.dead = true;
                    break;
                }
                Ok(_) => {
                    if let Err(e) = conn.tls.process_new_packets() {
                        tracing::debug!(remote = %conn.remote, error = %e, "TLS error");
                        // Let rustls send its alert, then close.
                        let _ = conn.tls.write_tls(&mut conn.tcp);
                        conn.dead = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.dead = true;
                    break;
                }
            }
        }
        let mut plain = Vec::new();
        loop {
            match conn.tls.reader().read(buf) {
                Ok(0) => {
                    conn.dead = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.dead = true;
                    break;
                }
            }
        }
        if !plain.is_empty() {
            conn.active = true;
            let (stream, remote) = (conn.stream, conn.remote);
            self.machine.handle_input(
                Instant::now(),
                Input::Stream {
                    stream,
                    remote,
                    data: &plain,
                },
            );
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        for c in self.conns.values_mut() {
            if !c.active && now.saturating_duration_since(c.accepted) >= HANDSHAKE_TIMEOUT {
                c.dead = true;
            }
        }
    }

    fn drain_machine(&mut self) {
        while let Some(item) = self.machine.poll_work() {
            if self.jobs.send(item).is_err() {
                tracing::error!("login workers are gone");
            }
        }
        while let Some(t) = self.machine.poll_transmit() {
            let Destination::Stream(stream) = t.destination else {
                continue;
            };
            let token = Token(stream.0 as usize);
            if let Some(c) = self.conns.get_mut(&token) {
                if c.tls.writer().write_all(&t.payload).is_err() {
                    c.dead = true;
                }
            }
        }
        while let Some(e) = self.machine.poll_event() {
            if let LoginServerEvent::Close { stream } = &e {
                if let Some(c) = self.conns.get_mut(&Token(stream.0 as usize)) {
                    c.closing = true;
                    c.tls.send_close_notify();
                }
            }
            let _ = self.events.send(e);
        }
    }

    fn flush_all(&mut self) {
        let mut gone = Vec::new();
        for (token, c) in self.conns.iter_mut() {
            while !c.dead && c.tls.wants_write() {
                match c.tls.write_tls(&mut c.tcp) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => c.dead = true,
                }
            }
            if c.dead || (c.closing && !c.tls.wants_write()) {
                gone.push(*token);
                continue;
            }
            let interest = if c.tls.wants_write() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.tcp, *token, interest);
        }
        for token in gone {
            if let Some(mut c) = self.conns.remove(&token) {
                let _ = self.poll.registry().deregister(&mut c.tcp);
                let _ = c.tcp.shutdown(std::net::Shutdown::Both);
                self.machine
                    .handle_input(Instant::now(), Input::StreamClosed { stream: c.stream });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_added_ca_file_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network.toml");
        assert_eq!(existing_ca_file(&p), None, "no file");
        std::fs::write(
            &p,
            "[login]\naddress = \"x\"\nca_file = \"/etc/natter/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            existing_ca_file(&p),
            Some(PathBuf::from("/etc/natter/ca.pem"))
        );
        std::fs::write(&p, "not toml [").unwrap();
        assert_eq!(existing_ca_file(&p), None, "unreadable");
    }
}
