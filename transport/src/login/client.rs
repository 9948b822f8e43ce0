//! Logging in: a blocking client for the login server, and the device's stored credentials.
//!
//! [`run_operations`] connects over TCP + TLS 1.3 (checking the pinned certificate fingerprint
//! or the CA chain the network file specifies), runs the sans-IO
//! [`natter_core::login::client::LoginClient`] and returns its events. [`login`] is the usual
//! entry point: it renews the stored certificate without the password when it can, logs in
//! with the password otherwise, stores the result, and reports every failure as a typed
//! [`LoginFailure`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use natter_core::crypto::{CertError, Certificate, DeviceCredentials, DeviceIdentity, UnixTime};
use natter_core::login::client::{
    LoginClient, LoginClientConfig, LoginClientError, LoginClientEvent, Operation,
};
use natter_core::login::proto::{LoginError, Version};
use natter_core::rng::Rng;
use natter_core::sansio::{Input, Machine, StreamId};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::files::{private_dir, write_private};
use super::network::{NetworkFile, NetworkFileError};
use super::tls::{client_config, is_pin_mismatch};
use crate::{os_seed, wall_clock};

/// Why the connection to the login server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing answered at the login server's address.
    #[error("login server {address} unreachable: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// The socket error.
        source: io::Error,
    },
    /// The server's TLS certificate is not the one the network file pins.
    #[error("the login server's TLS certificate does not match the pinned fingerprint")]
    PinMismatch,
    /// Another TLS failure (for a CA-issued certificate: not trusted, wrong name, expired).
    #[error("TLS: {0}")]
    Tls(String),
    /// The network file is unusable.
    #[error(transparent)]
    Network(#[from] NetworkFileError),
    /// The connection broke.
    #[error("connection to the login server failed: {0}")]
    Io(#[from] io::Error),
    /// The exchange was cancelled ([`Budget::cancel`]).
    #[error("cancelled")]
    Cancelled,
}

/// How long a login-server exchange may take, and a flag that ends it early. A plain
/// [`Duration`] converts into a budget that cannot be cancelled.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// The longest the connection, and then the exchange, may take.
    pub timeout: Duration,
    /// Set to end the exchange at once with [`ConnectError::Cancelled`] (checked every 20 ms).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Budget {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Connect to `address` within the timeout. With a cancel flag, one non-blocking connect
    /// whose progress is checked every 20 ms (a pending `connect` answers "already in
    /// progress", then "connected" or the error), so a cancel is noticed at once and a slow
    /// network keeps the kernel's own SYN retries.
    fn connect(&self, address: &std::net::SocketAddr) -> io::Result<TcpStream> {
        if self.cancel.is_none() {
            return TcpStream::connect_timeout(address, self.timeout);
        }
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(*address),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        let target = socket2::SockAddr::from(*address);
        let deadline = Instant::now() + self.timeout;
        loop {
            match socket.connect(&target) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(Errno::ISCONN.raw_os_error()) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || [Errno::INPROGRESS, Errno::ALREADY]
                            .iter()
                            .any(|c| e.raw_os_error() == Some(c.raw_os_error())) => {}
                Err(e) => return Err(e),
            }
            if self.cancelled() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        socket.set_nonblocking(false)?;
        Ok(socket.into())
    }
}

impl From<Duration> for Budget {
    fn from(timeout: Duration) -> Self {
        Budget {
            timeout,
            cancel: None,
        }
    }
}

/// Connect to the login server, run `ops` in order, and return every event.
pub fn run_operations(
    network: &NetworkFile,
    device: &DeviceIdentity,
    version: Version,
    first_start: bool,
    ops: Vec<Operation>,
    budget: impl Into<Budget>,
) -> Result<Vec<LoginClientEvent>, ConnectError> {
    let budget = budget.into();
    let timeout = budget.timeout;
    let address = network.login_address()?;
    let config = client_config(network.pin()?, network.login.ca_file.as_deref())
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let name = ServerName::try_from(network.login.server_name.clone())
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut tcp = budget.connect(&address).map_err(|source| {
        if budget.cancelled() {
            return ConnectError::Cancelled;
        }
        ConnectError::Unreachable {
            address: network.login.address.clone(),
            source,
        }
    })?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut tls = ClientConnection::new(Arc::clone(&config), name)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;

    let start = Instant::now();
    let cfg = LoginClientConfig {
        version,
        first_start,
        device: device.clone(),
        trusted: network.trusted()?,
        wall_anchor: wall_clock(),
        clock_anchor: start,
        timeout,
    };
    let stream = StreamId(0);
    let mut machine = LoginClient::new(cfg, stream, start);
    for op in ops {
        machine.enqueue(start, op);
    }
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if budget.cancelled() {
            return Err(ConnectError::Cancelled);
        }
        while let Some(t) = machine.poll_transmit() {
            tls.writer().write_all(&t.payload)?;
        }
        while tls.wants_write() {
            tls.write_tls(&mut tcp)?;
        }
        events.extend(std::iter::from_fn(|| machine.poll_event()));
        let failed_all = events.iter().any(|e| {
            matches!(
                e,
                LoginClientEvent::Failed {
                    error: LoginClientError::Closed
                        | LoginClientError::Timeout
                        | LoginClientError::Protocol,
                    ..
                }
            )
        });
        if (machine.is_idle()
            && events
                .iter()
                .any(|e| matches!(e, LoginClientEvent::VersionChecked(_))))
            || failed_all
            || closed
        {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut tcp);
            return Ok(events);
        }
        let now = Instant::now();
        match tls.read_tls(&mut tcp) {
            Ok(0) => {
                closed = true;
                machine.handle_input(now, Input::StreamClosed { stream });
            }
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    let _ = tls.write_tls(&mut tcp);
                    return Err(if is_pin_mismatch(&e) {
                        ConnectError::PinMismatch
                    } else {
                        ConnectError::Tls(e.to_string())
                    });
                }
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            machine.handle_input(now, Input::StreamClosed { stream });
                            break;
                        }
                        Ok(n) => machine.handle_input(
                            now,
                            Input::Stream {
                                stream,
                                remote: address,
                                data: &buf[..n],
                            },
                        ),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                closed = true;
                tracing::debug!(error = %e, "login connection failed");
                machine.handle_input(now, Input::StreamClosed { stream });
            }
        }
        machine.handle_timeout(Instant::now());
    }
}

/// Everything that can go wrong when logging in, as a user should hear it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginFailure {
    /// Reaching the server failed (unreachable, pin mismatch, TLS).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Wrong password.
    #[error("wrong password")]
    WrongPassword,
    /// No such user.
    #[error("unknown user")]
    UnknownUser,
    /// Too many failed attempts.
    #[error("too many failed attempts: try again in {retry_after_secs} s")]
    Throttled {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// This client is too old for the network.
    #[error("this version of Natter is too old: upgrade to {minimum} or newer")]
    UpgradeRequired {
        /// The oldest version accepted.
        minimum: Version,
    },
    /// The user name is taken (registration).
    #[error("that user name is taken")]
    NameTaken,
    /// The user name breaks the rules.
    #[error("invalid user name: 3-32 characters, letters, digits, '.', '_', '-', starting with a letter")]
    InvalidName,
    /// The password breaks the policy.
    #[error("password too weak: at least 10 characters, and not the user name")]
    WeakPassword,
    /// This device was revoked.
    #[error("this device was revoked")]
    Revoked,
    /// The password is needed and none was given: see [`PasswordNeeded`] for why.
    #[error("{0}: log in with the password")]
    PasswordNeeded(PasswordNeeded),
    /// The server's certificate for us was unacceptable (wrong authority, wrong key).
    #[error("the login server issued an unacceptable certificate: {0}")]
    BadCertificate(CertError),
    /// Storing or reading the device's credentials failed.
    #[error("device credentials: {0}")]
    Credentials(io::Error),
    /// The server failed or broke the protocol.
    #[error("login server error: {0}")]
    Server(String),
}

/// Why [`login`] needs the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordNeeded {
    /// No certificate for this user and device is stored.
    #[error("no stored certificate for this user on this device")]
    NoCertificate,
    /// The stored certificate expired longer ago than the server's renewal grace period.
    #[error("the stored certificate expired too long ago to be renewed")]
    Expired,
    /// The server does not accept the stored certificate (issued under an authority key it
    /// dropped or does not know yet, not yet valid by its clock, or the device or account is no
    /// longer known). This may pass: the background [`Renewer`] keeps retrying.
    #[error("the login server no longer accepts the stored certificate")]
    NotAccepted,
}

impl From<LoginClientError> for LoginFailure {
    fn from(e: LoginClientError) -> Self {
        match e {
            LoginClientError::Refused(r) => match r {
                LoginError::WrongPassword => Self::WrongPassword,
                LoginError::UnknownUser => Self::UnknownUser,
                LoginError::NameTaken => Self::NameTaken,
                LoginError::InvalidName => Self::InvalidName,
                LoginError::WeakPassword => Self::WeakPassword,
                LoginError::Throttled { retry_after_secs } => Self::Throttled { retry_after_secs },
                LoginError::Revoked => Self::Revoked,
                LoginError::RenewalExpired => Self::PasswordNeeded(PasswordNeeded::Expired),
                other => Self::Server(other.to_string()),
            },
            LoginClientError::UpgradeRequired { minimum } => Self::UpgradeRequired { minimum },
            LoginClientError::BadCertificate(c) => Self::BadCertificate(c),
            other => Self::Server(other.to_string()),
        }
    }
}

/// A device's credentials: on disk in a directory (mode 0700) holding its keys
/// (`device.key`, 0600) and its latest certificate (`certificate.bin`), so a restart can renew
/// without the password; or in memory only, for an application that keeps them elsewhere (the
/// platform's keychain) as [`DeviceCredentials`] bytes. Clones share the same credentials.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    kind: StoreKind,
}

#[derive(Clone)]
enum StoreKind {
    Dir(PathBuf),
    Memory(Arc<Mutex<Memory>>),
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            StoreKind::Memory(_) => f.write_str("Memory"),
        }
    }
}

#[derive(Default)]
struct Memory {
    identity: Option<DeviceIdentity>,
    certificate: Option<Certificate>,
}

impl DeviceStore {
    /// Open (creating) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        private_dir(&dir)?;
        Ok(Self {
            kind: StoreKind::Dir(dir),
        })
    }

    /// Credentials kept in memory only: `initial` (imported), or new keys made on first use.
    pub fn in_memory(initial: Option<DeviceCredentials>) -> Self {
        let memory = initial.map_or_else(Memory::default, |c| Memory {
            identity: Some(c.identity),
            certificate: c.certificate,
        });
        Self {
            kind: StoreKind::Memory(Arc::new(Mutex::new(memory))),
        }
    }

    /// The directory, for credentials on disk.
    pub fn dir(&self) -> Option<&Path> {
        match &self.kind {
            StoreKind::Dir(d) => Some(d),
            StoreKind::Memory(_) => None,
        }
    }

    /// Where the credentials are, for messages: the directory, or `(in memory)`.
    pub fn location(&self) -> PathBuf {
        self.dir()
            .map_or_else(|| PathBuf::from("(in memory)"), Path::to_path_buf)
    }

    fn memory(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's keys, created on first use; `true` when they were just created (first
    /// start).
    pub fn identity(&self) -> io::Result<(DeviceIdentity, bool)> {
        let dir = match &self.kind {
            StoreKind::Dir(d) => d,
            StoreKind::Memory(m) => {
                let mut m = Self::memory(m);
                if let Some(id) = &m.identity {
                    return Ok((id.clone(), false));
                }
                let id = DeviceIdentity::generate(&mut Rng::from_seed_bytes(os_seed()?));
                m.identity = Some(id.clone());
                return Ok((id, true));
            }
        };
        let path = dir.join("device.key");
        match std::fs::read(&path) {
            Ok(data) if data.len() == 64 => {
                let mut dh = [0u8; 32];
                let mut sign = [0u8; 32];
                dh.copy_from_slice(&data[..32]);
                sign.copy_from_slice(&data[32..]);
                Ok((DeviceIdentity::from_secret_bytes(dh, sign), false))
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: corrupt device key", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = DeviceIdentity::generate(&mut Rng::from_seed_bytes(os_seed()?));
                let (dh, sign) = id.secret_bytes();
                let mut data = dh.to_vec();
                data.extend_from_slice(&sign);
                write_private(&path, &data)?;
                Ok((id, true))
            }
            Err(e) => Err(e),
        }
    }

    /// The stored certificate, if any.
    pub fn certificate(&self) -> Option<Certificate> {
        match &self.kind {
            StoreKind::Dir(d) => {
                let data = std::fs::read(d.join("certificate.bin")).ok()?;
                Certificate::decode(&data).ok()
            }
            StoreKind::Memory(m) => Self::memory(m).certificate.clone(),
        }
    }

    /// Store a certificate.
    pub fn save_certificate(&self, certificate: &Certificate) -> io::Result<()> {
        match &self.kind {
            StoreKind::Dir(d) => write_private(&d.join("certificate.bin"), &certificate.to_bytes()),
            StoreKind::Memory(m) => {
                Self::memory(m).certificate = Some(certificate.clone());
                Ok(())
            }
        }
    }

    /// Forget the certificate (after a revocation).
    pub fn clear_certificate(&self) -> io::Result<()> {
        match &self.kind {
            StoreKind::Dir(d) => match std::fs::remove_file(d.join("certificate.bin")) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            StoreKind::Memory(m) => {
                Self::memory(m).certificate = None;
                Ok(())
            }
        }
    }

    /// The keys (created if there are none yet) and the stored certificate, to export.
    pub fn credentials(&self) -> io::Result<DeviceCredentials> {
        let (identity, _) = self.identity()?;
        // What DeviceCredentials::decode accepts back: a certificate for these very keys.
        let certificate = self
            .certificate()
            .filter(|c| c.dh_public == identity.dh_public() && c.device == identity.device_id());
        Ok(DeviceCredentials {
            identity,
            certificate,
        })
    }
}

/// What a successful login produced.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The device's keys.
    pub device: DeviceIdentity,
    /// Its certificate.
    pub certificate: Certificate,
    /// True when it was renewed without the password.
    pub renewed: bool,
    /// An upgrade is recommended (the newest version).
    pub upgrade_recommended: Option<Version>,
    /// How long the exchange took.
    pub elapsed: Duration,
}

/// Log `user` in on this device: with `password`, a password login (the password is always
/// checked); without, renew the stored certificate while it can be renewed. The certificate
/// is stored.
///
/// Without a password, a stored certificate the server will no longer renew (expired longer
/// ago than its grace period, or not accepted any more) gives
/// [`LoginFailure::PasswordNeeded`]: ask the user for the password and call again.
pub fn login(
    network: &NetworkFile,
    store: &DeviceStore,
    user: &str,
    password: Option<&str>,
    version: Version,
    budget: impl Into<Budget>,
) -> Result<LoggedIn, LoginFailure> {
    let mode = Mode {
        try_renewal: true,
        store: true,
    };
    login_inner(network, store, user, password, mode, version, budget.into())
}

/// [`login`] without storing the new certificate: for a caller that decides afterwards
/// whether the login counts (a background login that may be cancelled meanwhile stores it
/// with [`DeviceStore::save_certificate`] when it commits). A revocation still forgets the
/// stored certificate.
pub fn login_unstored(
    network: &NetworkFile,
    store: &DeviceStore,
    user: &str,
    password: Option<&str>,
    version: Version,
    budget: impl Into<Budget>,
) -> Result<LoggedIn, LoginFailure> {
    let mode = Mode {
        try_renewal: true,
        store: false,
    };
    login_inner(network, store, user, password, mode, version, budget.into())
}

/// How [`login_inner`] goes about it.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Renew a stored certificate when no password is given.
    try_renewal: bool,
    /// Store the new certificate.
    store: bool,
}

/// Log `user` in on this device with `password`, without first trying to renew the stored
/// certificate: for a caller that already knows it cannot be renewed (it had
/// [`LoginFailure::PasswordNeeded`] from [`login`]), which saves a useless connection. The new
/// certificate replaces the stored one; on failure the stored one is left as it was.
pub fn login_with_password(
    network: &NetworkFile,
    store: &DeviceStore,
    user: &str,
    password: &str,
    version: Version,
    budget: impl Into<Budget>,
) -> Result<LoggedIn, LoginFailure> {
    login_inner(
        network,
        store,
        user,
        Some(password),
        Mode {
            try_renewal: false,
            store: true,
        },
        version,
        budget.into(),
    )
}

fn login_inner(
    network: &NetworkFile,
    store: &DeviceStore,
    user: &str,
    password: Option<&str>,
    mode: Mode,
    version: Version,
    budget: Budget,
) -> Result<LoggedIn, LoginFailure> {
    let started = Instant::now();
    let (device, first_start) = store.identity().map_err(LoginFailure::Credentials)?;
    // A password given is a password checked: renewing the stored certificate instead would
    // tell the user a wrong password was right.
    let stored = store.certificate().filter(|c| {
        mode.try_renewal
            && password.is_none()
            && c.user.as_str().eq_ignore_ascii_case(user)
            && c.dh_public == device.dh_public()
    });
    let mut ops = Vec::new();
    if let Some(certificate) = stored.clone() {
        ops.push(Operation::Renew { certificate });
    } else if let Some(password) = password {
        ops.push(Operation::Login {
            user: user.to_string(),
            password: password.to_string(),
        });
    } else {
        return Err(LoginFailure::PasswordNeeded(PasswordNeeded::NoCertificate));
    }
    let events = run_operations(network, &device, version, first_start, ops, budget)?;
    let mut upgrade_recommended = None;
    let mut failure = None;
    for e in events {
        match e {
            LoginClientEvent::VersionChecked(
                natter_core::login::proto::VersionStatus::UpgradeRecommended { latest },
            ) => upgrade_recommended = Some(latest),
            LoginClientEvent::Certified(certificate) => {
                if mode.store {
                    store
                        .save_certificate(&certificate)
                        .map_err(LoginFailure::Credentials)?;
                }
                return Ok(LoggedIn {
                    device,
                    certificate: *certificate,
                    renewed: stored.is_some(),
                    upgrade_recommended,
                    elapsed: started.elapsed(),
                });
            }
            LoginClientEvent::Failed { error, .. } => failure = Some(error),
            _ => {}
        }
    }
    // A renewal refused because of the certificate itself (expired too long ago, issued under
    // a dropped authority key, device or account unknown) needs the password; anything else
    // (revoked, throttled, server trouble) is reported as it is.
    let not_renewable = |e: LoginError| match e {
        LoginError::RenewalExpired => Some(PasswordNeeded::Expired),
        LoginError::BadProof | LoginError::UnknownDevice | LoginError::UnknownUser => {
            Some(PasswordNeeded::NotAccepted)
        }
        _ => None,
    };
    let Some(error) = failure else {
        return Err(LoginFailure::Server("no answer".into()));
    };
    match error {
        LoginClientError::Refused(LoginError::Revoked) => {
            let _ = store.clear_certificate();
            Err(LoginFailure::Revoked)
        }
        // Only a renewal (no password given) gets here with a stored certificate.
        LoginClientError::Refused(e) if stored.is_some() => match not_renewable(e) {
            Some(why) => Err(LoginFailure::PasswordNeeded(why)),
            None => Err(error.into()),
        },
        other => Err(other.into()),
    }
}

/// True when the background [`Renewer`] must give up after `failure`, because retrying can
/// never help: the device was revoked, or the certificate expired longer ago than the renewal
/// grace period. Everything else is retried with back-off, including a certificate the server
/// does not accept ([`PasswordNeeded::NotAccepted`]): that includes `BadProof` answers caused
/// by passing conditions (clock skew between login servers, a rolling authority-key rotation).
fn renewal_stops_on(failure: &LoginFailure) -> bool {
    matches!(
        failure,
        LoginFailure::PasswordNeeded(PasswordNeeded::Expired) | LoginFailure::Revoked
    )
}

/// Keeps a device's certificate fresh in the background: renews it (without the password) at
/// 80 % of its lifetime, retrying with back-off after failures, and hands each new certificate
/// out through [`Renewer::certificates`]. It stops (and logs why) only when retrying cannot
/// help: the device was revoked, or the certificate expired longer ago than the server's
/// renewal grace period. [`Renewer::certificates`] then reports
/// [`std::sync::mpsc::TryRecvError::Disconnected`]: the user must log in with the password.
pub struct Renewer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    certificates: std::sync::mpsc::Receiver<Certificate>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer").finish_non_exhaustive()
    }
}

impl Renewer {
    /// Start keeping `certificate` (stored in `store`) fresh.
    pub fn spawn(network: NetworkFile, store: DeviceStore, certificate: Certificate) -> Self {
        use natter_core::login::client::RenewalTimer;
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let user = certificate.user.as_str().to_string();
            let mut timer = RenewalTimer::new(certificate, wall_clock(), Instant::now());
            while !stop2.load(Ordering::Relaxed) {
                if !timer.is_due(Instant::now()) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let version = Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_default();
                match login(
                    &network,
                    &store,
                    &user,
                    None,
                    version,
                    Duration::from_secs(15),
                ) {
                    Ok(li) => {
                        timer.renewed(li.certificate.clone());
                        if tx.send(li.certificate).is_err() {
                            return;
                        }
                    }
                    Err(e) if renewal_stops_on(&e) => {
                        tracing::error!(error = %e, "certificate renewal stopped");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate renewal failed; will retry");
                        timer.failed(Instant::now());
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            certificates: rx,
        }
    }

    /// Each renewed certificate, as it arrives; disconnected once the renewer stopped for good.
    pub fn certificates(&self) -> &std::sync::mpsc::Receiver<Certificate> {
        &self.certificates
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Keeps a node's copy of the authority's revocation list current: fetches the signed pages
/// after the last serial seen, every `interval`, and hands newly revoked devices out through
/// [`RevocationFetcher::revoked`]. Page signatures are checked against the network file's
/// authority keys (by the login client machine) before anything is handed out.
pub struct RevocationFetcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    revoked: std::sync::mpsc::Receiver<Vec<natter_core::crypto::DeviceId>>,
}

impl std::fmt::Debug for RevocationFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationFetcher").finish_non_exhaustive()
    }
}

impl RevocationFetcher {
    /// Start fetching now and then every `interval`.
    pub fn spawn(network: NetworkFile, device: DeviceIdentity, interval: Duration) -> Self {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let version = Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_default();
            let mut since = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                // Page until complete (each page is one request on one connection).
                loop {
                    let ops = vec![Operation::FetchRevocations { since }];
                    let page = match run_operations(
                        &network,
                        &device,
                        version,
                        false,
                        ops,
                        Duration::from_secs(15),
                    ) {
                        Ok(events) => events.into_iter().find_map(|e| match e {
                            LoginClientEvent::Revocations(p) => Some(p),
                            _ => None,
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "fetching revocations failed; will retry");
                            None
                        }
                    };
                    let Some(page) = page else { break };
                    if let Some(last) = page.entries.last() {
                        since = last.serial;
                    }
                    let devices: Vec<_> = page.entries.iter().map(|r| r.device).collect();
                    if !devices.is_empty() && tx.send(devices).is_err() {
                        return;
                    }
                    if page.complete {
                        break;
                    }
                }
                let until = Instant::now() + interval;
                while Instant::now() < until && !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            revoked: rx,
        }
    }

    /// Batches of newly revoked devices.
    pub fn revoked(&self) -> &std::sync::mpsc::Receiver<Vec<natter_core::crypto::DeviceId>> {
        &self.revoked
    }
}

impl Drop for RevocationFetcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True when `certificate` should be renewed at wall-clock time `now`.
pub fn needs_renewal(certificate: &Certificate, now: UnixTime) -> bool {
    now >= natter_core::login::client::renew_at(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renewer_stops_only_when_retrying_cannot_help() {
        assert!(renewal_stops_on(&LoginFailure::Revoked));
        assert!(renewal_stops_on(&LoginFailure::PasswordNeeded(
            PasswordNeeded::Expired
        )));
        for retried in [
            // A BadProof from a login server whose clock or key set is not yet in step.
            LoginFailure::PasswordNeeded(PasswordNeeded::NotAccepted),
            LoginFailure::PasswordNeeded(PasswordNeeded::NoCertificate),
            LoginFailure::Throttled {
                retry_after_secs: 5,
            },
            LoginFailure::Server("server error".into()),
            LoginFailure::Connect(ConnectError::PinMismatch),
        ] {
            assert!(!renewal_stops_on(&retried), "{retried:?}");
        }
    }
}
