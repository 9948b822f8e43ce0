//! The client: building it, logging in, starting and stopping its node, searching, calling.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use natter_core::chat::MessageId;
use natter_core::crypto::{Capabilities, DeviceId, LocalIdentity, UserName};
use natter_core::login::client::{LoginClientEvent, Operation};
use natter_core::login::proto::Version;
use natter_core::overlay::{FallbackPorts, NatType};
use natter_overlay::node::{Node, NodeConfig, RolePolicy};
use natter_transport::login::client::{
    login_unstored, run_operations, Budget, DeviceStore, LoggedIn,
};
use natter_transport::netwatch::local_addresses;
use natter_transport::persist::load_host_cache;
use natter_transport::runtime::{Runtime, RuntimeHandle};
use natter_transport::{os_seed, wall_clock};

use crate::audio::{Audio, AudioConfig};
use crate::call::{Call, CallTable};
use crate::chat::{ChatMessage, ChatStore};
use crate::contacts::{Contact, Contacts, ContactsSync};
use crate::credentials::Credentials;
use crate::error::{
    parse_name, AccountError, BuildError, CallError, ChatError, ContactsError, LoginError,
    RegisterError, SearchError, ServerError, StartError, StopError,
};
use crate::events::{Event, Events};
use crate::network::Network;
use crate::presence::{Availability, Presence, PresenceError, PresenceState, MAX_MOOD};
use crate::status::{IndexStatus, MailboxStatus, NodeStatus, RelayStatus};
use crate::types::{CallId, NodeRole, RequestId, SearchId};
use crate::worker::Worker;

/// How long a login-server exchange may take.
pub(crate) const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// This build's version, as the login server sees it.
pub(crate) fn client_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_default()
}

/// Lock a mutex, taking over a poisoned one: a panicking thread must not take the client
/// down with it (the data behind every lock here stays consistent between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a client's node may become a super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Role {
    /// Never a super node: apps on phones, laptops, anything behind a NAT or on a battery.
    #[default]
    Client,
    /// Become a super node when measured suitable (a public address reachable unsolicited,
    /// two minutes up, its event loop at most half busy, and with
    /// [`ClientBuilder::uplink_kbps`] half of the uplink spare); give the role up when
    /// overloaded or no longer reachable.
    Auto,
    /// Always a super node (operators' bootstrap nodes).
    SuperNode,
}

impl Role {
    fn policy(self) -> RolePolicy {
        match self {
            Role::Client => RolePolicy::Forbid,
            Role::Auto => RolePolicy::Auto,
            Role::SuperNode => RolePolicy::Force,
        }
    }
}

/// The checked options of a client.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// None: nothing is written to disk.
    pub data_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub role: Role,
    pub relay_only: bool,
    pub stun_alternate: Option<SocketAddr>,
    pub fallback_ports: FallbackPorts,
    pub uplink_kbps: Option<u64>,
    pub max_clients: Option<usize>,
    pub audio: AudioConfig,
}

/// Options of a [`Client`], each with a default: [`Client::builder`], set what you need,
/// [`ClientBuilder::build`].
///
/// ```
/// use natter::{AudioConfig, Client, Network, Role};
/// # let dir = tempfile::tempdir()?;
/// # let net = natter_fixtures::LoginServer::start();
/// # let network = net.network();
/// let mut audio = AudioConfig::default();
/// audio.complexity = 5;                        // less CPU for Opus
/// let client = Client::builder(network)        // from Network::from_file("network.toml")
///     .data_dir(dir.path().join("alice"))      // this device's keys and certificate
///     .listen("0.0.0.0:0".parse()?)            // the default: any address, any port
///     .role(Role::Client)                      // the default: never a super node
///     .audio(audio)
///     .build()?;
/// assert!(!client.state().started);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ClientBuilder {
    network: Network,
    data_dir: Option<PathBuf>,
    no_data_dir: bool,
    credentials: Option<Credentials>,
    listen: SocketAddr,
    role: Role,
    relay_only: bool,
    stun_alternate: Option<SocketAddr>,
    fallback_ports: Option<FallbackPorts>,
    uplink_kbps: Option<u64>,
    max_clients: Option<usize>,
    audio: AudioConfig,
}

impl ClientBuilder {
    /// The device's data directory: its keys and certificate (in `DIR/device`, mode 0700)
    /// and its cache of super nodes (`DIR/hostcache.bin`). Default: `natter` in the user's
    /// data directory (`$XDG_DATA_HOME`, else `$HOME/.local/share`). Two clients in one
    /// process need two directories.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self.no_data_dir = false;
        self
    }

    /// Write nothing to disk: the device's keys and certificate stay in memory (new keys,
    /// unless [`ClientBuilder::credentials`] gives them), and so does the cache of super
    /// nodes (the next start begins from the network file's bootstrap nodes). For an
    /// application that keeps the credentials in the platform's keychain
    /// ([`Client::credentials`]).
    pub fn without_data_dir(mut self) -> Self {
        self.no_data_dir = true;
        self.data_dir = None;
        self
    }

    /// The device's keys and certificate, as exported by [`Client::credentials`] (from the
    /// platform's keychain, say). They are kept in memory and never written to disk; a data
    /// directory, if any, then holds only the cache of super nodes.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The UDP address to listen on (TCP too, for super nodes). Default `0.0.0.0:0`: any
    /// address, a port the system chooses. A super node on port 0 gets a port whose
    /// neighbours (its second STUN port, its fallback ports) are free too.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Whether the node may become a super node. Default [`Role::Client`].
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Keep this device's addresses from the people it calls: its calls stay on a super
    /// node's relay. Default false.
    pub fn relay_only(mut self, relay_only: bool) -> Self {
        self.relay_only = relay_only;
        self
    }

    /// A second IP and port of this host, for super nodes: clients classify their NAT
    /// against it (RFC 5780). It must differ from the listen address in both. Default none.
    pub fn stun_alternate(mut self, addr: SocketAddr) -> Self {
        self.stun_alternate = Some(addr);
        self
    }

    /// The fallback TCP ports (plain and TLS), overriding the network file's `[overlay]`
    /// for this node: where it listens as a super node and where it looks for super nodes.
    /// Default: the network file's.
    pub fn fallback_ports(mut self, ports: FallbackPorts) -> Self {
        self.fallback_ports = Some(ports);
        self
    }

    /// This host's uplink capacity in kilobits per second, when known: the node then
    /// promotes itself only while at most half of it is in use. Default unknown.
    pub fn uplink_kbps(mut self, kbps: u64) -> Self {
        self.uplink_kbps = Some(kbps);
        self
    }

    /// Most clients this node serves as a super node. Default 2,000.
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = Some(n);
        self
    }

    /// Audio settings: default devices, encoder complexity. Default [`AudioConfig::default`].
    pub fn audio(mut self, audio: AudioConfig) -> Self {
        self.audio = audio;
        self
    }

    /// Check the options, open the data directory and set up the event queue. Nothing
    /// touches the network yet: [`Client::register`], [`Client::login`], [`Client::start`].
    ///
    /// # Errors
    /// See [`BuildError`].
    pub fn build(self) -> Result<Client, BuildError> {
        let data_dir = match (self.data_dir, self.no_data_dir) {
            (_, true) => None,
            (Some(d), false) => Some(d),
            (None, false) => Some(default_data_dir().ok_or(BuildError::NoDataDir)?),
        };
        if let Some(alt) = self.stun_alternate {
            let listen = self.listen;
            if alt.ip() == listen.ip() || (listen.port() != 0 && alt.port() == listen.port()) {
                return Err(BuildError::StunAlternate {
                    alternate: alt,
                    listen,
                });
            }
        }
        let fallback_ports = match self.fallback_ports {
            Some(p) => {
                p.validate().map_err(BuildError::FallbackPorts)?;
                p
            }
            None => self
                .network
                .file
                .fallback_ports()
                .map_err(|e| BuildError::FallbackPorts(e.to_string()))?,
        };
        if self.audio.complexity > 10 {
            return Err(BuildError::Complexity(self.audio.complexity));
        }
        let store = match (self.credentials, &data_dir) {
            (Some(c), dir) => {
                if let Some(dir) = dir {
                    std::fs::create_dir_all(dir).map_err(|source| BuildError::DataDir {
                        path: dir.clone(),
                        source,
                    })?;
                }
                DeviceStore::in_memory(Some(c.0))
            }
            (None, None) => DeviceStore::in_memory(None),
            (None, Some(dir)) => {
                let device_dir = dir.join("device");
                DeviceStore::open(&device_dir).map_err(|source| BuildError::DataDir {
                    path: device_dir,
                    source,
                })?
            }
        };
        let events = Events::new().map_err(BuildError::Events)?;
        let contacts = Contacts::new(data_dir.as_deref());
        let chat = ChatStore::new(data_dir.as_deref());
        Ok(Client {
            shared: Arc::new(Shared {
                network: self.network,
                store,
                events,
                settings: Settings {
                    data_dir,
                    listen: self.listen,
                    role: self.role,
                    relay_only: self.relay_only,
                    stun_alternate: self.stun_alternate,
                    fallback_ports,
                    uplink_kbps: self.uplink_kbps,
                    max_clients: self.max_clients,
                    audio: self.audio,
                },
                calls: Mutex::new(CallTable::default()),
                dials: Mutex::new(Vec::new()),
                login: Mutex::new(None),
                requests: Mutex::new(Requests::default()),
                state: Mutex::new(RunState::default()),
                load: Mutex::new((0.0, 0)),
                contacts,
                chat,
                presence: Mutex::new(PresenceState::default()),
                presence_pushing: Mutex::new(()),
            }),
        })
    }
}

fn default_data_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(base.join("natter"))
}

/// A running node.
pub(crate) struct Running {
    pub rt: RuntimeHandle<Node>,
    pub udp: SocketAddr,
    pub stop: Arc<AtomicBool>,
    pub worker: JoinHandle<()>,
    pub started: Instant,
}

#[derive(Default)]
pub(crate) struct RunState {
    pub closed: bool,
    pub running: Option<Running>,
}

/// What a background request tells when it is cancelled.
type OnEnd = Box<dyn FnOnce(RequestId, Ended) -> Event + Send>;

/// What a background request's work gives: its event, made once the request is known not to
/// be cancelled (a login is committed there).
type Finish = Box<dyn FnOnce(RequestId) -> Event + Send>;

/// How a background request ended without its work's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// [`Client::cancel_request`].
    Cancelled,
    /// Its work panicked (a bug; the panic hook logged it).
    Failed,
}

/// Login-server requests running in the background.
#[derive(Default)]
pub(crate) struct Requests {
    next: u64,
    /// Running: id -> its cancel flag and the event that says it was cancelled.
    running: HashMap<u64, (Arc<AtomicBool>, OnEnd)>,
    /// Their threads (joined by [`Client::close`]; finished ones are dropped as new ones
    /// start).
    threads: Vec<JoinHandle<()>>,
}

/// What the client's threads and handles share.
pub(crate) struct Shared {
    pub network: Network,
    pub store: DeviceStore,
    pub settings: Settings,
    pub events: Events,
    pub calls: Mutex<CallTable>,
    /// Dials placed and not yet reported: node dial id -> call. Held only for a map
    /// operation (the runtime thread locks it).
    pub dials: Mutex<Vec<(u64, CallId)>>,
    /// The latest login (its certificate is replaced by renewals).
    pub login: Mutex<Option<LoggedIn>>,
    /// Background requests (lock order: `requests`, then `state`, then `login`).
    pub requests: Mutex<Requests>,
    pub state: Mutex<RunState>,
    /// The runtime's last load measure (busy fraction, bytes per second).
    pub load: Mutex<(f32, u64)>,
    /// The buddy list and its sync thread.
    pub contacts: Contacts,
    /// The chat history and the messages waiting to be delivered.
    pub chat: ChatStore,
    /// This user's presence as set here.
    pub presence: Mutex<PresenceState>,
    /// Held while the presence goes to the node: one push at a time.
    pub presence_pushing: Mutex<()>,
}

impl Shared {
    /// The running node, if any.
    pub fn runtime(&self) -> Option<RuntimeHandle<Node>> {
        lock(&self.state).running.as_ref().map(|r| r.rt.clone())
    }

    /// Logging in as `name` is possible now: not closed, and not running as someone else.
    fn check_login_target(&self, name: &UserName) -> Result<(), LoginError> {
        let st = lock(&self.state);
        if st.closed {
            return Err(LoginError::Closed);
        }
        if st.running.is_some() {
            let running = lock(&self.login)
                .as_ref()
                .map(|l| l.certificate.user.clone());
            if let Some(running) = running.filter(|r| r != name) {
                return Err(LoginError::OtherUserRunning { running });
            }
        }
        Ok(())
    }

    /// [`Client::register`] within `budget`.
    fn register(&self, user: &str, password: &str, budget: Budget) -> Result<(), RegisterError> {
        name_or(user, |name, reason| RegisterError::InvalidName {
            name,
            reason,
        })?;
        if lock(&self.state).closed {
            return Err(RegisterError::Closed);
        }
        let (device, first) = self.store.identity().map_err(|source| RegisterError::Io {
            path: self.store.location(),
            source,
        })?;
        let address = self.network.login_server().to_string();
        let events = run_operations(
            &self.network.file,
            &device,
            client_version(),
            first,
            vec![Operation::Register {
                user: user.to_string(),
                password: password.to_string(),
            }],
            budget,
        )
        .map_err(|e| RegisterError::from_connect(e, &address))?;
        for e in events {
            match e {
                LoginClientEvent::Registered => return Ok(()),
                LoginClientEvent::Failed { error, .. } => {
                    return Err(RegisterError::from_refusal(error, user))
                }
                _ => {}
            }
        }
        Err(RegisterError::Server(ServerError::Protocol(
            "no answer".into(),
        )))
    }

    /// The login exchange of [`Client::login`] within `budget` (nothing is stored and the
    /// client is not logged in until [`Shared::login_commit`]).
    fn login_exchange(
        &self,
        user: &str,
        password: Option<&str>,
        budget: Budget,
    ) -> Result<LoggedIn, LoginError> {
        let name = name_or(user, |name, reason| LoginError::InvalidName {
            name,
            reason,
        })?;
        self.check_login_target(&name)?;
        login_unstored(
            &self.network.file,
            &self.store,
            user,
            password,
            client_version(),
            budget,
        )
        .map_err(|e| {
            LoginError::from_failure(e, user, self.network.login_server(), self.store.location())
        })
    }

    /// Log in with what [`Shared::login_exchange`] got: a running node takes the new
    /// certificate.
    /// `sync_now`: with the password, sync the buddy list before returning (a foreground
    /// login), else in the background (a background login's end runs under the request
    /// lock, which `close` and `cancel_request` take).
    fn login_commit(
        self: &Arc<Self>,
        li: LoggedIn,
        password: Option<&str>,
        sync_now: bool,
    ) -> Result<LoginInfo, LoginError> {
        // For the same user only: checked again, as the client may have started meanwhile.
        self.check_login_target(&li.certificate.user)?;
        // Stored only now: a login cancelled or refused before this point leaves the store as
        // it was.
        self.store
            .save_certificate(&li.certificate)
            .map_err(|source| LoginError::Io {
                path: self.store.location(),
                source,
            })?;
        if let Some(rt) = self.runtime() {
            let cert = li.certificate.clone();
            rt.command(move |n, now| n.update_certificate(now, cert));
        }
        let info = LoginInfo {
            user: li.certificate.user.clone(),
            device: li.certificate.device,
            renewed: li.renewed,
            valid_until: SystemTime::UNIX_EPOCH + Duration::from_secs(li.certificate.not_after.0),
            upgrade_recommended: li.upgrade_recommended,
            took: li.elapsed,
        };
        let user = li.certificate.user.clone();
        self.contacts.open(&user, li.certificate.device);
        if let Err(e) = self.chat.open(&user, &li.device) {
            tracing::warn!(%e, "chat history unavailable");
        }
        *lock(&self.login) = Some(li);
        self.push_contacts();
        // The buddy list: merged with its backup. With the password in a foreground login,
        // now: the list's key is on this device when the login returns (later logins may go
        // without the password); otherwise in the background.
        self.contacts.spawn(self);
        match password.filter(|_| sync_now) {
            Some(p) => {
                let r = self.sync_contacts(Some(p), Some(self.contacts.cancel()));
                self.contacts.settle(self, r, Some((user, p.to_string())));
            }
            None => self
                .contacts
                .schedule(Duration::ZERO, password.map(|p| (user, p.to_string()))),
        }
        Ok(info)
    }
}

/// Put `presence` into effect on `node`: do not disturb refuses invites, invisible publishes
/// the device as offline.
fn apply_presence(node: &mut Node, now: Instant, presence: &Presence) {
    node.set_do_not_disturb(presence.availability == Availability::DoNotDisturb);
    node.set_online(now, presence.availability != Availability::Invisible);
}

impl Shared {
    /// Put the presence in effect on the running node, if any.
    fn push_presence(&self) {
        // One push at a time, each reading the presence once its turn comes: the last one
        // sent is the latest (lock order: this, then the presence, then the client's state).
        let _turn = lock(&self.presence_pushing);
        let presence = lock(&self.presence).effective();
        if let Some(rt) = self.runtime() {
            rt.command(move |n, now| apply_presence(n, now, &presence));
        }
    }
}

/// What a successful [`Client::login`] tells.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginInfo {
    /// The user, in canonical (lower-case) form.
    pub user: UserName,
    /// This device.
    pub device: DeviceId,
    /// True when the stored certificate was renewed without the password.
    pub renewed: bool,
    /// When the certificate expires (the client renews it in the background, at 80 % of its
    /// life, while started).
    pub valid_until: SystemTime,
    /// A newer version of Natter is available.
    pub upgrade_recommended: Option<Version>,
    /// How long the exchange took.
    pub took: Duration,
}

/// One device of the user's account ([`Client::devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccountDevice {
    /// The device.
    pub device: DeviceId,
    /// When it was first certified.
    pub first_seen: SystemTime,
    /// When it last logged in or renewed its certificate.
    pub last_seen: SystemTime,
    /// When it was revoked, if it was.
    pub revoked: Option<SystemTime>,
    /// True for the device asking.
    pub this_device: bool,
}

/// A client's state now ([`Client::state`]). `Display` describes it for people.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct State {
    /// Who is logged in on this device (a successful [`Client::login`]).
    pub user: Option<UserName>,
    /// The node runs ([`Client::start`] and not [`Client::stop`]).
    pub started: bool,
    /// The super nodes this node is attached to (none for a super node itself).
    pub super_nodes: Vec<SocketAddr>,
    /// What the node is now.
    pub role: NodeRole,
    /// The detected NAT, once detected.
    pub nat: Option<NatType>,
    /// The UDP address the node listens on, while started.
    pub local_addr: Option<SocketAddr>,
    /// How the node is joined, in words.
    pub attach: String,
    /// The live call, if any.
    pub call: Option<CallId>,
    /// Events dropped because nobody took them.
    pub events_dropped: u64,
}

impl State {
    /// Attached to a super node, or one: searches and calls can work.
    pub fn is_joined(&self) -> bool {
        self.started && (self.role == NodeRole::SuperNode || !self.super_nodes.is_empty())
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "logged in as {u}")?,
            None => f.write_str("not logged in")?,
        }
        if !self.started {
            return f.write_str("; not started");
        }
        write!(
            f,
            "; {}; NAT: {}; {}",
            self.attach,
            self.nat
                .as_ref()
                .map_or("not detected yet", NatType::describe),
            self.role
        )
    }
}

/// One user on one device: logs in, joins the network, makes and takes calls, and tells
/// what happens through [`Client::events`].
///
/// A client is `Send + Sync`: share it between threads with an `Arc`. Dropping it (or
/// [`Client::close`]) stops it cleanly: the call is hung up, the user published as offline,
/// the super-node cache saved.
///
/// It runs threads of its own once started: `natter-<address>` (sockets and the protocol),
/// `natter-node` (events, certificate renewal, the call's audio, the host cache) and one
/// `natter-media` per connected call (codec, jitter buffer); and, once logged in,
/// `natter-contacts` (the buddy list's backup and contact requests, with the login server).
///
/// ```
/// # let net = natter_fixtures::TestNet::start();
/// # let network = net.network();
/// # let dir = tempfile::tempdir()?;
/// # natter_fixtures::register(&network, "alice", "alice's password");
/// use natter::Client;
///
/// let alice = Client::builder(network).data_dir(dir.path()).build()?;
/// let info = alice.login("alice", Some("alice's password"))?;
/// println!("logged in as {} on device {}", info.user, info.device);
/// alice.start()?;
/// println!("{}", alice.state()); // "logged in as alice; attaching...; NAT: ...; ordinary node"
/// alice.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("data_dir", &self.shared.settings.data_dir)
            .field("listen", &self.shared.settings.listen)
            .finish_non_exhaustive()
    }
}

fn name_or<E>(name: &str, make: impl FnOnce(String, String) -> E) -> Result<UserName, E> {
    parse_name(name).map_err(|(n, e)| make(n, e.to_string()))
}

impl Client {
    /// Options for a client of `network`, each with a default.
    pub fn builder(network: Network) -> ClientBuilder {
        ClientBuilder {
            network,
            data_dir: None,
            no_data_dir: false,
            credentials: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            role: Role::Client,
            relay_only: false,
            stun_alternate: None,
            fallback_ports: None,
            uplink_kbps: None,
            max_clients: None,
            audio: AudioConfig::default(),
        }
    }

    /// Create the account `user` with `password` on the network's login server. Blocks for
    /// one exchange with it (up to 15 s; typically well under a second, most of it the server
    /// hashing the password). Does not log in: call [`Client::login`] next.
    ///
    /// User names are 3 to 32 characters (ASCII letters, digits, `.`, `_`, `-`, starting
    /// with a letter) and unique regardless of case; passwords have at least 10 characters
    /// and are not the user name. The password is not stored.
    ///
    /// # Errors
    /// See [`RegisterError`].
    pub fn register(&self, user: &str, password: &str) -> Result<(), RegisterError> {
        self.shared
            .register(user, password, Budget::from(LOGIN_TIMEOUT))
    }

    /// [`Client::register`] in the background: returns at once with the request's id; the
    /// outcome comes as [`Event::RegisterFinished`] with that id. The user name is checked
    /// at once.
    ///
    /// # Errors
    /// [`RegisterError::InvalidName`], [`RegisterError::Closed`]; [`RegisterError::Io`] when
    /// no thread could be started.
    pub fn begin_register(&self, user: &str, password: &str) -> Result<RequestId, RegisterError> {
        name_or(user, |name, reason| RegisterError::InvalidName {
            name,
            reason,
        })?;
        if lock(&self.shared.state).closed {
            return Err(RegisterError::Closed);
        }
        let (name, password) = (user.to_string(), password.to_string());
        let cancelled_name = name.clone();
        self.in_background(
            move |shared, budget| {
                let result = shared.register(&name, &password, budget);
                Box::new(move |request| Event::RegisterFinished {
                    request,
                    user: name,
                    result: result.map_err(Arc::new),
                })
            },
            Box::new(move |request, ended| Event::RegisterFinished {
                request,
                user: cancelled_name,
                result: Err(Arc::new(match ended {
                    Ended::Cancelled => RegisterError::Cancelled,
                    Ended::Failed => RegisterError::Server(ServerError::Protocol(
                        "internal error (a bug: see the log)".into(),
                    )),
                })),
            }),
        )
        .map_err(|source| match lock(&self.shared.state).closed {
            true => RegisterError::Closed,
            false => RegisterError::Io {
                path: self.shared.store.location(),
                source,
            },
        })
    }

    /// Log `user` in on this device: the login server certifies the device's keys (kept in
    /// the data directory). With a certificate stored by an earlier login, `password` may be
    /// `None`: the certificate is renewed without it. Blocks for one or two exchanges with
    /// the login server (up to 15 s each); [`Client::begin_login`] does not block.
    ///
    /// With the password, the login also brings the buddy list in step with its backup in
    /// the network, and exchanges contact requests, before it returns (a few more exchanges,
    /// and one password stretch of about a quarter of a second): a new install has the
    /// user's list when it returns, and this device holds the list's key from then on.
    /// Without it (and for [`Client::begin_login`]), that happens in the background
    /// ([`Event::ContactsSynced`]).
    ///
    /// While started, the client renews its certificate in the background and sends
    /// [`Event::LoginRequired`](crate::Event::LoginRequired) if that ever needs the password
    /// again. Logging in again while started is allowed for the same user (the node takes
    /// the new certificate).
    ///
    /// # Errors
    /// See [`LoginError`]; [`LoginError::PasswordNeeded`] says to ask for the password.
    pub fn login(&self, user: &str, password: Option<&str>) -> Result<LoginInfo, LoginError> {
        let li = self
            .shared
            .login_exchange(user, password, Budget::from(LOGIN_TIMEOUT))?;
        self.shared.login_commit(li, password, true)
    }

    /// [`Client::login`] in the background: returns at once with the request's id; the
    /// outcome comes as [`Event::LoginFinished`] with that id. What can be checked without
    /// the server (the user name, a client closed or running as someone else) is checked at
    /// once.
    ///
    /// # Errors
    /// [`LoginError::InvalidName`], [`LoginError::OtherUserRunning`], [`LoginError::Closed`];
    /// [`LoginError::Io`] when no thread could be started.
    pub fn begin_login(&self, user: &str, password: Option<&str>) -> Result<RequestId, LoginError> {
        let name = name_or(user, |name, reason| LoginError::InvalidName {
            name,
            reason,
        })?;
        self.shared.check_login_target(&name)?;
        let (user, password) = (user.to_string(), password.map(str::to_string));
        let cancelled_user = user.clone();
        self.in_background(
            move |shared, budget| {
                let exchanged = shared.login_exchange(&user, password.as_deref(), budget);
                let shared = Arc::clone(shared);
                // Run only if not cancelled meanwhile: a cancelled login logs nobody in.
                Box::new(move |request| Event::LoginFinished {
                    request,
                    user,
                    result: exchanged
                        .and_then(|li| shared.login_commit(li, password.as_deref(), false))
                        .map(Box::new)
                        .map_err(Arc::new),
                })
            },
            Box::new(move |request, ended| Event::LoginFinished {
                request,
                user: cancelled_user,
                result: Err(Arc::new(match ended {
                    Ended::Cancelled => LoginError::Cancelled,
                    Ended::Failed => LoginError::Server(ServerError::Protocol(
                        "internal error (a bug: see the log)".into(),
                    )),
                })),
            }),
        )
        .map_err(|source| match lock(&self.shared.state).closed {
            true => LoginError::Closed,
            false => LoginError::Io {
                path: self.shared.store.location(),
                source,
            },
        })
    }

    /// Run `work` on a thread of its own as a background request; its event goes out unless
    /// the request was cancelled first ([`Client::cancel_request`]), in which case
    /// `on_cancel` says so at once.
    fn in_background(
        &self,
        work: impl FnOnce(&Arc<Shared>, Budget) -> Finish + Send + 'static,
        on_end: OnEnd,
    ) -> std::io::Result<RequestId> {
        let cancel = Arc::new(AtomicBool::new(false));
        // Held until the thread is recorded, so that `close` (which takes this lock first)
        // either refuses the request or joins its thread.
        let mut requests = lock(&self.shared.requests);
        if lock(&self.shared.state).closed {
            return Err(std::io::Error::other("the client is closed"));
        }
        requests.next += 1;
        let id = requests.next;
        requests.running.insert(id, (Arc::clone(&cancel), on_end));
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("natter-request".into())
            .spawn(move || {
                use std::panic::{catch_unwind, AssertUnwindSafe};
                let budget = Budget {
                    timeout: LOGIN_TIMEOUT,
                    cancel: Some(cancel),
                };
                let worked = catch_unwind(AssertUnwindSafe(|| work(&shared, budget)));
                let mut requests = lock(&shared.requests);
                let Some((_, on_end)) = requests.running.remove(&id) else {
                    return;
                };
                let request = RequestId(id);
                let finished = worked
                    .ok()
                    .and_then(|finish| catch_unwind(AssertUnwindSafe(|| finish(request))).ok());
                // Exactly one event, even after a panic.
                let event = finished.unwrap_or_else(|| on_end(request, Ended::Failed));
                shared.events.push(event);
            });
        match spawned {
            Ok(thread) => {
                requests.threads.retain(|t| !t.is_finished());
                requests.threads.push(thread);
                Ok(RequestId(id))
            }
            Err(e) => {
                requests.running.remove(&id);
                Err(e)
            }
        }
    }

    /// Cancel a background request ([`Client::begin_login`], [`Client::begin_register`]):
    /// its event comes at once with a `Cancelled` error, and nothing it would have done
    /// happens (a cancelled login logs nobody in). False when the request already ended (its
    /// event is on its way or was delivered) or never existed.
    pub fn cancel_request(&self, request: RequestId) -> bool {
        let entry = lock(&self.shared.requests).running.remove(&request.0);
        match entry {
            Some((flag, on_end)) => {
                flag.store(true, Ordering::SeqCst);
                self.shared.events.push(on_end(request, Ended::Cancelled));
                true
            }
            None => false,
        }
    }

    /// This device's credentials (its keys, made now if it has none yet, and its latest
    /// certificate), to keep in the platform's keychain and give back with
    /// [`ClientBuilder::credentials`]. Export them again after every login and
    /// [`Event::CertificateRenewed`]: the certificate changes.
    ///
    /// # Errors
    /// The keys could not be read from the data directory (or made: no randomness).
    pub fn credentials(&self) -> std::io::Result<Credentials> {
        self.shared.store.credentials().map(Credentials)
    }

    /// The devices of the logged-in user's account: those in use first (oldest first), then
    /// the most recently revoked (at most 64 in all). This device proves its certificate; no
    /// password is needed. Blocks for one exchange with the login server (up to 15 s).
    ///
    /// # Errors
    /// [`AccountError::NotLoggedIn`] before [`Client::login`]; otherwise see
    /// [`AccountError`].
    pub fn devices(&self) -> Result<Vec<AccountDevice>, AccountError> {
        let (certificate, _) = self.account()?;
        let this = certificate.device;
        let events = self.account_operation(Operation::ListDevices { certificate })?;
        let at =
            |t: natter_core::crypto::UnixTime| SystemTime::UNIX_EPOCH + Duration::from_secs(t.0);
        for e in events {
            match e {
                LoginClientEvent::Devices(list) => {
                    return Ok(list
                        .into_iter()
                        .map(|d| AccountDevice {
                            device: d.device,
                            first_seen: at(d.first_seen),
                            last_seen: at(d.last_seen),
                            revoked: d.revoked_at.map(at),
                            this_device: d.device == this,
                        })
                        .collect())
                }
                LoginClientEvent::Failed { error, .. } => {
                    return Err(AccountError::from_client_error(error))
                }
                _ => {}
            }
        }
        Err(AccountError::Server(ServerError::Protocol(
            "no answer".into(),
        )))
    }

    /// Revoke another device of the logged-in user's account (its certificate stops
    /// working: super nodes learn it from the signed revocation list, and its sessions end).
    /// Needs the password. Blocks for one exchange with the login server (up to 15 s).
    ///
    /// # Errors
    /// [`AccountError::ThisDevice`] for this device itself; otherwise see [`AccountError`].
    pub fn revoke_device(&self, device: DeviceId, password: &str) -> Result<(), AccountError> {
        let (certificate, user) = self.account()?;
        if device == certificate.device {
            return Err(AccountError::ThisDevice);
        }
        self.account_done(Operation::RevokeDevice {
            user,
            password: password.to_string(),
            device,
        })
    }

    /// Change the logged-in user's password from `old` to `new`; with `revoke_others`, also
    /// revoke every other device of the account (this one stays certified): what to do after
    /// a password leaked, since whoever had it may have certified devices of their own.
    /// Blocks for one exchange with the login server (up to 15 s).
    ///
    /// # Errors
    /// See [`AccountError`].
    pub fn change_password(
        &self,
        old: &str,
        new: &str,
        revoke_others: bool,
    ) -> Result<(), AccountError> {
        let (_, user) = self.account()?;
        self.account_done(Operation::ChangePassword {
            user,
            old: old.to_string(),
            new: new.to_string(),
            revoke_others,
        })?;
        // The buddy list's key, wrapped again under the new password.
        self.shared.contacts.password_changed(new);
        Ok(())
    }

    /// The logged-in user's certificate and name.
    fn account(&self) -> Result<(natter_core::crypto::Certificate, String), AccountError> {
        if lock(&self.shared.state).closed {
            return Err(AccountError::Closed);
        }
        let login = lock(&self.shared.login);
        let li = login.as_ref().ok_or(AccountError::NotLoggedIn)?;
        Ok((li.certificate.clone(), li.certificate.user.to_string()))
    }

    /// Run one account operation with the login server.
    fn account_operation(&self, op: Operation) -> Result<Vec<LoginClientEvent>, AccountError> {
        let (device, _) = self
            .shared
            .store
            .identity()
            .map_err(|source| AccountError::Io {
                path: self.shared.store.location(),
                source,
            })?;
        let address = self.shared.network.login_server().to_string();
        run_operations(
            &self.shared.network.file,
            &device,
            client_version(),
            false,
            vec![op],
            LOGIN_TIMEOUT,
        )
        .map_err(|e| AccountError::from_connect(e, &address))
    }

    /// [`Client::account_operation`] for an operation answered with "done".
    fn account_done(&self, op: Operation) -> Result<(), AccountError> {
        for e in self.account_operation(op)? {
            match e {
                LoginClientEvent::Done => return Ok(()),
                LoginClientEvent::Failed { error, .. } => {
                    return Err(AccountError::from_client_error(error))
                }
                _ => {}
            }
        }
        Err(AccountError::Server(ServerError::Protocol(
            "no answer".into(),
        )))
    }

    /// Join the network: bind the listen address, find super nodes
    /// ([`Event::Attached`](crate::Event::Attached), [`Event::NatDetected`](crate::Event::NatDetected)...),
    /// publish the user as online, and accept calls. Returns once the sockets are bound;
    /// joining goes on in the background (typically tens of milliseconds).
    ///
    /// # Errors
    /// See [`StartError`].
    pub fn start(&self) -> Result<(), StartError> {
        let mut st = lock(&self.shared.state);
        if st.closed {
            return Err(StartError::Closed);
        }
        if st.running.is_some() {
            return Err(StartError::AlreadyStarted);
        }
        let li = lock(&self.shared.login)
            .clone()
            .ok_or(StartError::NotLoggedIn)?;
        let s = &self.shared.settings;
        let net = &self.shared.network.file;
        let cache_path = s.data_dir.as_ref().map(|d| d.join("hostcache.bin"));
        let mut cache = cache_path
            .as_deref()
            .map(load_host_cache)
            .unwrap_or_default();
        for b in self.shared.network.bootstrap() {
            cache.insert(b, None, wall_clock());
        }
        let identity = LocalIdentity {
            device: li.device.clone(),
            certificate: li.certificate.clone(),
            trusted: net
                .trusted()
                .map_err(|e| StartError::Network(e.to_string()))?,
            capabilities: Capabilities::VOICE.union(Capabilities::CHAT),
        };
        let seed = os_seed().map_err(StartError::Io)?;
        let mut cfg = NodeConfig::new(identity, seed, wall_clock(), Instant::now(), s.listen);
        cfg.role = s.role.policy();
        cfg.stun_alternate = s.stun_alternate;
        cfg.uplink_bytes_per_sec = s.uplink_kbps.map(|k| k.saturating_mul(1000) / 8);
        if let Some(n) = s.max_clients {
            cfg.max_clients = n;
        }
        cfg.host_cache = cache;
        cfg.call_paths.direct = !s.relay_only;
        // A sender hears "delivered" only once the history keeps the message.
        cfg.chat_app_receipts = true;
        // Messages this node kept for offline devices as a super node, the last time.
        cfg.mailboxes = s
            .data_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join("mailboxes.bin")).ok());
        cfg.attach.fallback_ports = s.fallback_ports;
        let sockets = crate::bind::bind(&mut cfg)
            .map_err(|(address, source)| StartError::Bind { address, source })?;
        cfg.local_addresses = local_addresses(cfg.listen);
        // Before the node's first packet: whom to refuse, and whether to publish as online.
        let blocked = self.shared.contacts.blocked();
        let watched = self.shared.contacts.watched();
        self.shared.contacts.forget_presence();
        let presence = lock(&self.shared.presence).effective();
        // The end-to-end channels of the last run, and what waits to be delivered.
        let channels = self.shared.chat.channels();
        let queued = self.shared.chat.queued();
        let rt = Runtime::spawn_bound(sockets, move |now, _| {
            cfg.clock_anchor = now;
            let mut node = Node::new(cfg, now);
            if let Some((saved, key)) = channels {
                if let Err(e) = node.restore_chat(&saved, &key) {
                    tracing::warn!(%e, "chat channels not restored: new ones are opened");
                }
            }
            for (users, item) in queued {
                node.send_chat(now, users, item);
            }
            node.set_blocked(blocked.into_iter().collect());
            node.watch_presence(now, watched);
            apply_presence(&mut node, now, &presence);
            node
        })
        .map_err(StartError::Io)?;
        let udp = rt.udp_addrs().first().copied().unwrap_or(s.listen);
        let handle = rt.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker::new(rt, self.shared.clone(), &li, cache_path, stop.clone());
        let worker = std::thread::Builder::new()
            .name("natter-node".into())
            .spawn(move || worker.run())
            .map_err(StartError::Io)?;
        st.running = Some(Running {
            rt: handle,
            udp,
            stop,
            worker,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Leave the network: the call (if any) is hung up and ends with
    /// [`EndReason::Stopped`](crate::EndReason::Stopped), the user is published as offline,
    /// the super-node cache is saved, and the node's threads and sockets are closed. The
    /// client stays logged in and can be started again. Blocks while the threads end:
    /// usually well under a second, up to 15 s when the login server accepted a background
    /// request (a renewal, the revocation list) and stopped answering.
    ///
    /// # Errors
    /// [`StopError::NotStarted`].
    pub fn stop(&self) -> Result<(), StopError> {
        let running = lock(&self.shared.state).running.take();
        let r = running.ok_or(StopError::NotStarted)?;
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.worker.join();
        self.shared.contacts.forget_presence();
        Ok(())
    }

    /// Log out on this device: stop the node if it runs (the user is published as offline),
    /// and forget the certificate, so that the next [`Client::login`] needs the password. The
    /// device keeps its keys and stays one of the account's devices (revoking it is
    /// [`Client::revoke_device`] from another device).
    ///
    /// # Errors
    /// [`AccountError::NotLoggedIn`], [`AccountError::Io`] when the certificate file cannot be
    /// removed, [`AccountError::Closed`].
    pub fn logout(&self) -> Result<(), AccountError> {
        self.account()?;
        let _ = self.stop();
        self.shared
            .store
            .clear_certificate()
            .map_err(|source| AccountError::Io {
                path: self.shared.store.location(),
                source,
            })?;
        *lock(&self.shared.login) = None;
        self.shared.contacts.forget();
        self.shared.chat.forget();
        Ok(())
    }

    /// Stop (if started) and close the event queue: receivers get what is still queued, then
    /// `Disconnected`; later operations fail with `Closed` (or `NotStarted`). Dropping the
    /// client does this too; `close` is for a client shared between threads.
    pub fn close(&self) {
        // Background requests end without an event (the queue closes), within ~20 ms (unless
        // resolving the login server's host name). Closed under the request lock, so no
        // request can start after the drain.
        let threads = {
            let mut requests = lock(&self.shared.requests);
            lock(&self.shared.state).closed = true;
            for (_, (flag, _)) in requests.running.drain() {
                flag.store(true, Ordering::SeqCst);
            }
            std::mem::take(&mut requests.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        self.shared.contacts.shut_down();
        let running = {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            st.running.take()
        };
        if let Some(r) = running {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.worker.join();
        }
        self.shared.events.close();
    }

    /// True while the node runs (between [`Client::start`] and [`Client::stop`]).
    pub fn is_started(&self) -> bool {
        lock(&self.shared.state).running.is_some()
    }

    /// The client's events. Clones of the returned [`Events`] share the queue.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// The client's events as a [`futures_core::Stream`] (feature `async`), for tokio and
    /// other async runtimes. It shares the queue with [`Client::events`]: each event is taken
    /// once, by whichever asks first.
    #[cfg(feature = "async")]
    pub fn event_stream(&self) -> crate::events::EventStream {
        crate::events::EventStream {
            events: self.shared.events.clone(),
        }
    }

    /// The client's state now: who is logged in, whether it runs, its super nodes, role, NAT,
    /// address and call.
    pub fn state(&self) -> State {
        let user = lock(&self.shared.login)
            .as_ref()
            .map(|l| l.certificate.user.clone());
        let (rt, udp) = {
            let st = lock(&self.shared.state);
            match &st.running {
                Some(r) => (Some(r.rt.clone()), Some(r.udp)),
                None => (None, None),
            }
        };
        let live = rt.and_then(|rt| {
            rt.command(|n, now| {
                (
                    n.attached(),
                    n.nat().map(|r| r.nat),
                    n.is_super_node(),
                    n.describe_attach(now),
                )
            })
        });
        let call = lock(&self.shared.calls).live().map(|c| c.id);
        let events_dropped = self.shared.events.dropped();
        match live {
            Some((super_nodes, nat, sn, attach)) => State {
                user,
                started: true,
                super_nodes,
                role: if sn {
                    NodeRole::SuperNode
                } else {
                    NodeRole::Client
                },
                nat,
                local_addr: udp,
                attach,
                call,
                events_dropped,
            },
            None => State {
                user,
                started: false,
                super_nodes: Vec::new(),
                role: NodeRole::Client,
                nat: None,
                local_addr: None,
                attach: "not started".into(),
                call,
                events_dropped,
            },
        }
    }

    /// What a running node does, for operators: role, clients served, index and relay
    /// figures, NAT, load and uptime. `None` when not started.
    pub fn status(&self) -> Option<NodeStatus> {
        let (rt, udp, started) = {
            let st = lock(&self.shared.state);
            let r = st.running.as_ref()?;
            (r.rt.clone(), r.udp, r.started)
        };
        let (cpu, bytes_per_sec) = *lock(&self.shared.load);
        rt.command(move |n, _| NodeStatus {
            listen: udp,
            uptime: started.elapsed(),
            super_node: n.is_super_node(),
            attached_to: n.attached(),
            clients: n.super_node().map_or(0, |s| s.client_count()),
            super_nodes_known: n.ring_len(),
            nat: n.nat().map(|r| r.nat),
            mapped_address: n.nat().and_then(|r| r.mapped),
            index: n.index().map(|d| IndexStatus {
                records: d.store().len(),
                stored: d.stats().stored,
                refused: d.stats().refused,
                searches: d.searches_in_progress(),
            }),
            mailbox: n.mailbox_stats().map(|m| MailboxStatus {
                messages: m.kept,
                bytes: m.bytes,
                stored: m.stored,
                refused: m.refused,
            }),
            relay: n.relay().map(|r| {
                let st = r.stats();
                RelayStatus {
                    channels: r.channels(),
                    allocated: st.allocated,
                    refused: st.refused(),
                    relayed_packets: st.relayed_packets,
                    relayed_bytes: st.relayed_bytes,
                    dropped: st.dropped_malformed
                        + st.dropped_unknown_channel
                        + st.dropped_not_party
                        + st.dropped_rate,
                }
            }),
            cpu,
            bytes_per_sec,
        })
    }

    /// Look `user` up in the global index (is the user known, which devices are online).
    /// Returns at once; the outcome comes as an
    /// [`Event::SearchResult`](crate::Event::SearchResult) with the returned id (typically
    /// within a few hundred milliseconds, at most about 3 s).
    ///
    /// # Errors
    /// [`SearchError::InvalidName`], [`SearchError::NotStarted`].
    pub fn search(&self, user: &str) -> Result<SearchId, SearchError> {
        let user = name_or(user, |name, reason| SearchError::InvalidName {
            name,
            reason,
        })?;
        let rt = self.shared.runtime().ok_or(SearchError::NotStarted)?;
        rt.command(move |n, now| SearchId(n.search(now, user)))
            .ok_or(SearchError::NotStarted)
    }

    /// Call `user` (every online device of theirs rings) with `audio`. Returns the call at
    /// once; what happens comes as events: [`Event::CallPlaced`](crate::Event::CallPlaced),
    /// [`Event::Ringing`](crate::Event::Ringing),
    /// [`Event::CallConnected`](crate::Event::CallConnected) (audio starts), and in the end
    /// [`Event::CallEnded`](crate::Event::CallEnded) (also when the user does not exist or is
    /// offline: see [`EndReason`](crate::EndReason)).
    ///
    /// # Errors
    /// [`CallError::InvalidName`], [`CallError::NotStarted`], [`CallError::InCall`] (a
    /// client has at most one call).
    pub fn call(&self, user: &str, audio: Audio) -> Result<Call, CallError> {
        let user = name_or(user, |name, reason| CallError::InvalidName { name, reason })?;
        let rt = self.shared.runtime().ok_or(CallError::NotStarted)?;
        crate::call::dial(&self.shared, &rt, user, audio)
    }

    /// The call `id` names, while the client remembers it (live calls and the last 16 ended
    /// ones).
    pub fn call_by_id(&self, id: CallId) -> Option<Call> {
        lock(&self.shared.calls).get(id).map(|_| Call {
            shared: Arc::downgrade(&self.shared),
            id,
        })
    }

    /// The call in progress, if any.
    pub fn current_call(&self) -> Option<Call> {
        let id = lock(&self.shared.calls).live().map(|c| c.id)?;
        Some(Call {
            shared: Arc::downgrade(&self.shared),
            id,
        })
    }

    /// The buddy list: every contact, blocked user and user asking to be a contact, in
    /// name order. Empty before
    /// [`Client::login`]. The list is kept in the data directory and backed up, end-to-end
    /// encrypted and signed, next to the account on the login server: a new install gets it
    /// back at its first login with the password ([`Event::ContactsSynced`]).
    pub fn contacts(&self) -> Vec<Contact> {
        self.shared.contacts.list()
    }

    /// One user's entry in the buddy list, if any.
    pub fn contact(&self, user: &str) -> Option<Contact> {
        let name = UserName::parse(user).ok()?;
        self.shared.contacts.get(&name)
    }

    fn edit_contacts(
        &self,
        user: &str,
        edit: impl FnOnce(&Contacts, &UserName) -> Result<bool, ContactsError>,
    ) -> Result<bool, ContactsError> {
        if lock(&self.shared.state).closed {
            return Err(ContactsError::Closed);
        }
        let name = name_or(user, |name, reason| ContactsError::InvalidName {
            name,
            reason,
        })?;
        let changed = edit(&self.shared.contacts, &name)?;
        if changed {
            self.shared.push_contacts();
        }
        Ok(changed)
    }

    /// Add `user` to the buddy list and ask them to add this user too, with `note` (at most
    /// 1 KiB; may be empty): the request waits for them at the login server, and reaches
    /// every device of theirs at its next sync ([`Event::ContactRequest`]); their answer
    /// comes as [`Event::ContactAccepted`]. When `user` asked first, this accepts their
    /// request (they are told). True when something changed (false: a contact already).
    /// Kept on disk at once, sent in the background (a request to a user who does not exist
    /// ends as [`Event::ContactRequestFailed`]); the recipient's online devices are poked
    /// through their super nodes and fetch it at once, the others at their next login.
    ///
    /// # Errors
    /// See [`ContactsError`]: not logged in, an invalid name, a note too long, a full list,
    /// the file.
    pub fn add_contact(&self, user: &str, note: &str) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| c.add(u, note))
    }

    /// Decline `user`'s contact request: it is deleted on every device, and they are not
    /// told (as if it were ignored). False when there was none.
    ///
    /// # Errors
    /// As [`Client::add_contact`].
    pub fn decline_contact(&self, user: &str) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| c.decline(u))
    }

    /// Remove `user` from the buddy list (true: removed). On every device, once synced: the
    /// removal is kept as such, so an older copy of the list does not bring them back.
    ///
    /// # Errors
    /// As [`Client::add_contact`].
    pub fn remove_contact(&self, user: &str) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| c.remove(u))
    }

    /// Block `user` (or, with `false`, unblock): a blocked user's calls never ring on any of
    /// this user's devices (they are dropped without an answer), and their contact requests
    /// are dropped unanswered. Whether they are a contact does not change.
    ///
    /// # Errors
    /// As [`Client::add_contact`].
    pub fn block(&self, user: &str, blocked: bool) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| c.block(u, blocked))
    }

    /// Write `text` to `user`: stored in the history at once ([`MessageStatus::Sending`](crate::MessageStatus::Sending)),
    /// sealed end to end for every device of theirs and every other device of this user, and
    /// sent through their super nodes when the node runs (queued until then, across
    /// restarts). [`Event::MessageStatus`] reports it sent, then delivered (a device of
    /// `user` holds it). A device that is offline gets it when it is next online and this
    /// node still runs (offline delivery through super nodes' mailboxes comes later).
    ///
    /// # Errors
    /// See [`ChatError`]: not logged in, an invalid name, a text over
    /// [`MAX_MESSAGE_TEXT`](crate::MAX_MESSAGE_TEXT), the history file.
    pub fn send_message(&self, user: &str, text: &str) -> Result<ChatMessage, ChatError> {
        self.write_message(user, text, None)
    }

    /// As [`Client::send_message`], as an answer to message `reply_to`.
    ///
    /// # Errors
    /// As [`Client::send_message`].
    pub fn reply_to_message(
        &self,
        user: &str,
        reply_to: MessageId,
        text: &str,
    ) -> Result<ChatMessage, ChatError> {
        self.write_message(user, text, Some(reply_to))
    }

    fn write_message(
        &self,
        user: &str,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> Result<ChatMessage, ChatError> {
        if lock(&self.shared.state).closed {
            return Err(ChatError::Closed);
        }
        let to = name_or(user, |name, reason| ChatError::InvalidName { name, reason })?;
        let device = lock(&self.shared.login)
            .as_ref()
            .map(|l| l.certificate.device)
            .ok_or(ChatError::NotLoggedIn)?;
        let mut id = [0; 16];
        id.copy_from_slice(&os_seed().map_err(|e| ChatError::Store(e.to_string()))?[..16]);
        let (item, message) =
            self.shared
                .chat
                .write(&to, text, reply_to, MessageId(id), wall_clock(), device)?;
        if let Some(rt) = self.shared.runtime() {
            rt.command(move |n, now| n.send_chat(now, BTreeSet::from([to]), item));
        }
        Ok(message)
    }

    /// The history with `user`: up to `limit` messages (at most [`MAX_PAGE`](crate::MAX_PAGE))
    /// before message `before` (the newest when `None`), oldest first, in the order every
    /// device shows. Page back by passing the first message's id as `before`.
    ///
    /// # Errors
    /// Not logged in, an invalid name, an unknown `before`, the history file.
    pub fn history(
        &self,
        user: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        let with = name_or(user, |name, reason| ChatError::InvalidName { name, reason })?;
        self.shared.chat.history(&with, before, limit)
    }

    /// Up to `limit` messages (at most [`MAX_PAGE`](crate::MAX_PAGE)) of every conversation
    /// whose text contains `text`, newest first.
    ///
    /// # Errors
    /// Not logged in, the history file.
    pub fn search_messages(&self, text: &str, limit: usize) -> Result<Vec<ChatMessage>, ChatError> {
        self.shared.chat.search(text, limit)
    }

    /// Give `user` a nickname (empty: none), at most 128 bytes of UTF-8.
    ///
    /// # Errors
    /// As [`Client::add_contact`]; [`ContactsError::Edit`] for a nickname too long.
    pub fn set_nickname(&self, user: &str, nickname: &str) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| {
            c.edit(u, |l, now| l.set_nickname(u, nickname, now))
        })
    }

    /// Put `user` in the group `label` (or, with `false`, take them out). Labels are 1 to
    /// 64 bytes of UTF-8; a contact is in at most 32 groups.
    ///
    /// # Errors
    /// As [`Client::add_contact`]; [`ContactsError::Edit`] for a label empty or too long,
    /// or too many groups.
    pub fn set_group(&self, user: &str, label: &str, member: bool) -> Result<bool, ContactsError> {
        self.edit_contacts(user, |c, u| {
            c.edit(u, |l, now| l.set_group(u, label, member, now))
        })
    }

    /// Merge the buddy list with its backup in the network now, and store it if this device
    /// holds edits the backup lacks. Blocks for up to a few exchanges with the login server
    /// (15 s each at most) and, with `password`, one password stretch (about a quarter of a
    /// second). The client does this by itself after every login and edit, when another
    /// device pokes this one (a request or answer left for this user, an edit stored by
    /// another of its devices), and every
    /// [`CONTACTS_PULL_EVERY`](crate::CONTACTS_PULL_EVERY); `password` is needed only on a
    /// device without the list's key (see [`ContactsError::PasswordNeeded`]).
    ///
    /// # Errors
    /// See [`ContactsError`]; the local list is kept whatever fails.
    pub fn sync_contacts(&self, password: Option<&str>) -> Result<ContactsSync, ContactsError> {
        if lock(&self.shared.state).closed {
            return Err(ContactsError::Closed);
        }
        self.shared.sync_contacts(password, None)
    }

    /// Set this user's presence on this device: `availability` and a `mood` (at most 256
    /// bytes; empty: none). Kept while the client lives (it starts "online"). On this device,
    /// [`Availability::DoNotDisturb`] refuses calls with Busy (they do not ring;
    /// [`Event::MissedBusy`] reports each) and [`Availability::Invisible`] publishes the
    /// device as offline in the global index (searches and callers find the user offline;
    /// this device can still call). Telling contacts comes later (see the crate's README).
    ///
    /// # Errors
    /// [`PresenceError::MoodTooLong`], [`PresenceError::Offline`] (not settable),
    /// [`PresenceError::Closed`].
    pub fn set_presence(
        &self,
        availability: Availability,
        mood: &str,
    ) -> Result<(), PresenceError> {
        if lock(&self.shared.state).closed {
            return Err(PresenceError::Closed);
        }
        if availability == Availability::Offline {
            return Err(PresenceError::Offline);
        }
        if mood.len() > MAX_MOOD {
            return Err(PresenceError::MoodTooLong(mood.len()));
        }
        lock(&self.shared.presence).set = Presence {
            availability,
            mood: mood.to_string(),
        };
        self.shared.push_presence();
        Ok(())
    }

    /// This user's presence in effect on this device: as set, "online" turned "away" while
    /// the user is idle ([`Client::set_away_after`]).
    pub fn presence(&self) -> Presence {
        lock(&self.shared.presence).effective()
    }

    /// Turn "online" into "away" once the user has been idle for `after` (`None`: never),
    /// as told by [`Client::report_idle`].
    pub fn set_away_after(&self, after: Option<Duration>) {
        lock(&self.shared.presence).away_after = after;
        self.shared.push_presence();
    }

    /// Tell how long the user has been idle (from the platform's input idle time; zero on
    /// activity). Cheap: call it every few seconds.
    pub fn report_idle(&self, idle: Duration) {
        lock(&self.shared.presence).idle = idle;
        self.shared.push_presence();
    }

    /// The network this client belongs to.
    pub fn network(&self) -> &Network {
        &self.shared.network
    }

    /// The data directory (None: [`ClientBuilder::without_data_dir`]).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.shared.settings.data_dir.as_deref()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
