//! The client behind a `NatterClient` handle, in safe Rust: logging in, the running node, its
//! event thread, and the commands the C functions map to.
//!
//! ```text
//!  C threads ──natter_*──> Client ──RuntimeHandle::command──> runtime thread (mio, Node)
//!                            │                                      │ NodeEvent
//!                            │                                      ▼
//!                            │                     event thread "natter-node": calls, audio,
//!                            │                     renewals, revocations, host cache
//!                            ▼                                      │ Event
//!                         Events queue <────────────────────────────┘
//!                  (fd + natter_client_next_event, or the callback thread)
//! ```
//!
//! **Locks.** `State` (start and stop), the call table, the dial bindings and the event queue
//! each have a mutex. The runtime thread never waits for any of them except the dial
//! bindings, which are held only for a map operation: a closure run on the runtime thread
//! binds a dial to its C id there, before the dial's outcome can be reported. So a thread may
//! hold the call table's lock while it waits for the runtime (ending a call joins its media
//! thread, which may be waiting for the runtime to send a frame) without a cycle. Commands
//! found while handling an event are still run after the call table is released
//! ([`FollowUp`]), to keep that lock short. The event thread never waits for the callback
//! thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natter_core::crypto::UserName;
use natter_core::crypto::{Capabilities, LocalIdentity};
use natter_core::login::client::{LoginClientError, LoginClientEvent, Operation};
use natter_core::login::proto::{LoginError, Version};
use natter_core::overlay::AttachEvent;
use natter_core::overlay::{Filtering, NatType};
use natter_core::overlay::{SearchOutcome, SearchResult};
use natter_overlay::node::{Load, Node, NodeConfig, NodeEvent};
use natter_transport::login::client::{
    login, login_with_password, run_operations, DeviceStore, LoggedIn, LoginFailure, Renewer,
    RevocationFetcher,
};
use natter_transport::login::network::NetworkFile;
use natter_transport::netwatch::{local_addresses, NetWatch};
use natter_transport::persist::{load_host_cache, save_host_cache};
use natter_transport::runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use natter_transport::{os_seed, wall_clock};

use crate::boundary::lock;
use crate::call::NatterEndReason;
use crate::calltable::{call_error, CallTable, FollowUp};
use crate::client::{NatterNatType, NatterNodeRole, NatterSearchResult};
use crate::events::{Event, Events, NatterEventKind};
use crate::options::{AudioSettings, Settings};
use crate::result::NatterResult;

/// How long a login-server exchange may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// This build's version, as the login server sees it.
fn client_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_default()
}

/// What the event thread and the C functions share.
pub(crate) struct Shared {
    /// The event queue.
    pub events: Arc<Events>,
    /// The calls.
    pub calls: Mutex<CallTable>,
    /// Dials placed and not yet reported: node dial id -> C call id. Held only for a map
    /// operation (the runtime thread locks it).
    dials: Mutex<Vec<(u64, u64)>>,
    /// The latest login (its certificate is replaced by renewals).
    login: Mutex<Option<LoggedIn>>,
}

struct Running {
    rt: RuntimeHandle<Node>,
    udp: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    worker: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    closed: bool,
    running: Option<Running>,
}

/// One client. See the [module documentation](self).
pub(crate) struct Client {
    settings: Settings,
    network: NetworkFile,
    store: DeviceStore,
    /// Shared with the event thread.
    pub shared: Arc<Shared>,
    state: Mutex<State>,
}

/// What `natter_client_get_state` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeState {
    pub logged_in: bool,
    pub started: bool,
    pub super_nodes: u32,
    pub role: NatterNodeRole,
    pub nat: NatterNatType,
    pub udp_port: u16,
    pub events_dropped: u64,
}

fn login_result(e: &LoginFailure) -> NatterResult {
    match e {
        LoginFailure::Connect(_) => NatterResult::NatterLoginUnreachable,
        LoginFailure::WrongPassword => NatterResult::NatterWrongPassword,
        LoginFailure::UnknownUser => NatterResult::NatterUnknownUser,
        LoginFailure::Throttled { .. } => NatterResult::NatterThrottled,
        LoginFailure::UpgradeRequired { .. } => NatterResult::NatterUpgradeRequired,
        LoginFailure::NameTaken => NatterResult::NatterNameTaken,
        LoginFailure::InvalidName => NatterResult::NatterInvalidUserName,
        LoginFailure::WeakPassword => NatterResult::NatterWeakPassword,
        LoginFailure::Revoked => NatterResult::NatterRevoked,
        LoginFailure::PasswordNeeded(_) => NatterResult::NatterPasswordNeeded,
        LoginFailure::Credentials(_) => NatterResult::NatterIoError,
        _ => NatterResult::NatterLoginFailed,
    }
}

fn user_name(user: &str) -> Result<UserName, NatterResult> {
    UserName::parse(user).map_err(|_| NatterResult::NatterInvalidUserName)
}

impl Client {
    /// A client with these settings: loads the network file and opens the data directory
    /// (nothing touches the network yet).
    pub fn new(settings: Settings) -> Result<Client, NatterResult> {
        init_logging();
        let network = NetworkFile::load(&settings.network_file).map_err(|e| {
            tracing::warn!(error = %e, "loading the network file");
            NatterResult::NatterIoError
        })?;
        let store = DeviceStore::open(settings.data_dir.join("device"))
            .map_err(|_| NatterResult::NatterIoError)?;
        let events = Events::new().map_err(|_| NatterResult::NatterIoError)?;
        Ok(Client {
            settings,
            network,
            store,
            shared: Arc::new(Shared {
                events,
                calls: Mutex::new(CallTable::default()),
                dials: Mutex::new(Vec::new()),
                login: Mutex::new(None),
            }),
            state: Mutex::new(State::default()),
        })
    }

    fn runtime(&self) -> Result<RuntimeHandle<Node>, NatterResult> {
        let st = lock(&self.state);
        st.running
            .as_ref()
            .map(|r| r.rt.clone())
            .ok_or(NatterResult::NatterNotStarted)
    }

    /// Create the account `user` with `password` (blocking: one exchange with the login
    /// server). Does not log in.
    pub fn register(&self, user: &str, password: &str) -> Result<(), NatterResult> {
        user_name(user)?;
        let (device, first) = self
            .store
            .identity()
            .map_err(|_| NatterResult::NatterIoError)?;
        let events = run_operations(
            &self.network,
            &device,
            client_version(),
            first,
            vec![Operation::Register {
                user: user.to_string(),
                password: password.to_string(),
            }],
            LOGIN_TIMEOUT,
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "registering");
            NatterResult::NatterLoginUnreachable
        })?;
        for e in events {
            match e {
                LoginClientEvent::Registered => return Ok(()),
                LoginClientEvent::Failed { error, .. } => {
                    return Err(match error {
                        LoginClientError::Refused(LoginError::NameTaken) => {
                            NatterResult::NatterNameTaken
                        }
                        other => login_result(&LoginFailure::from(other)),
                    })
                }
                _ => {}
            }
        }
        Err(NatterResult::NatterLoginFailed)
    }

    /// Log `user` in: renew the stored certificate without the password when the server
    /// allows it, else log in with `password` (blocking).
    pub fn login(&self, user: &str, password: Option<&str>) -> Result<(), NatterResult> {
        let name = user_name(user)?;
        let li = match login(
            &self.network,
            &self.store,
            user,
            None,
            client_version(),
            LOGIN_TIMEOUT,
        ) {
            Err(LoginFailure::PasswordNeeded(why)) => match password {
                Some(pw) => login_with_password(
                    &self.network,
                    &self.store,
                    user,
                    pw,
                    client_version(),
                    LOGIN_TIMEOUT,
                ),
                None => Err(LoginFailure::PasswordNeeded(why)),
            },
            other => other,
        }
        .map_err(|e| {
            tracing::warn!(error = %e, "logging in");
            login_result(&e)
        })?;
        // A running node takes the new certificate, if it is for the same user.
        let rt = {
            let st = lock(&self.state);
            if st.closed {
                return Err(NatterResult::NatterInvalidHandle);
            }
            if st.running.is_some() {
                let same = lock(&self.shared.login)
                    .as_ref()
                    .is_some_and(|l| l.certificate.user == name);
                if !same {
                    return Err(NatterResult::NatterAlreadyStarted);
                }
            }
            st.running.as_ref().map(|r| r.rt.clone())
        };
        if let Some(rt) = rt {
            let cert = li.certificate.clone();
            rt.command(move |n, _| n.update_certificate(cert));
        }
        *lock(&self.shared.login) = Some(li);
        Ok(())
    }

    /// Join the network: bind, start the node and its event thread.
    pub fn start(&self) -> Result<(), NatterResult> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(NatterResult::NatterInvalidHandle);
        }
        if st.running.is_some() {
            return Err(NatterResult::NatterAlreadyStarted);
        }
        let li = lock(&self.shared.login)
            .clone()
            .ok_or(NatterResult::NatterNotLoggedIn)?;
        let cache_path = self.settings.data_dir.join("hostcache.bin");
        let mut cache = load_host_cache(&cache_path);
        for b in &self.network.bootstrap {
            if let Ok(a) = b.address.parse() {
                cache.insert(a, None, wall_clock());
            }
        }
        let identity = LocalIdentity {
            device: li.device.clone(),
            certificate: li.certificate.clone(),
            trusted: self
                .network
                .trusted()
                .map_err(|_| NatterResult::NatterIoError)?,
            capabilities: Capabilities::VOICE.union(Capabilities::CHAT),
        };
        let seed = os_seed().map_err(|_| NatterResult::NatterIoError)?;
        let listen = self.settings.listen;
        let mut cfg = NodeConfig::new(identity, seed, wall_clock(), Instant::now(), listen);
        cfg.role = self.settings.role;
        cfg.host_cache = cache;
        cfg.local_addresses = local_addresses(listen);
        cfg.attach.fallback_ports = self
            .network
            .fallback_ports()
            .map_err(|_| NatterResult::NatterIoError)?;
        let probe = Node::new(cfg.clone(), Instant::now());
        let (udp, tcp) = (probe.bind_addresses(), probe.tcp_listen_addresses());
        drop(probe);
        let rt = Runtime::spawn(RuntimeConfig { udp, tcp }, move |now, bound| {
            // A client may listen on port 0: the node must know the port it got.
            if let Some(&addr) = bound.first() {
                if cfg.listen.port() == 0 {
                    cfg.listen = addr;
                    cfg.local_addresses = local_addresses(addr);
                }
            }
            cfg.clock_anchor = now;
            Node::new(cfg, now)
        })
        .map_err(|e| {
            tracing::warn!(error = %e, %listen, "binding");
            NatterResult::NatterIoError
        })?;
        let udp = rt.udp_addrs().first().copied().unwrap_or(listen);
        let handle = rt.handle();
        let watch_handle = rt.handle();
        let watch = NetWatch::spawn(udp, move |addrs| {
            watch_handle.command(move |n, now| n.set_local_addresses(now, addrs));
        });
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            renewer: Renewer::spawn(
                self.network.clone(),
                self.store.clone(),
                li.certificate.clone(),
            ),
            revocations: RevocationFetcher::spawn(
                self.network.clone(),
                li.device.clone(),
                Duration::from_secs(300),
            ),
            _watch: watch,
            handle: rt.handle(),
            rt,
            shared: self.shared.clone(),
            audio: self.settings.audio.clone(),
            cache_path,
            stop: stop.clone(),
            renewing: true,
            last_save: Instant::now(),
        };
        let worker = std::thread::Builder::new()
            .name("natter-node".into())
            .spawn(move || worker.run())
            .map_err(|_| NatterResult::NatterIoError)?;
        st.running = Some(Running {
            rt: handle,
            udp,
            stop,
            worker,
        });
        Ok(())
    }

    /// Leave the network: end the call, publish "offline", save the host cache, stop the
    /// node and its threads.
    pub fn stop(&self) -> Result<(), NatterResult> {
        let running = lock(&self.state).running.take();
        let r = running.ok_or(NatterResult::NatterNotStarted)?;
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.worker.join();
        Ok(())
    }

    /// Tear the client down (`natter_client_free`): stop, then close the event queue.
    pub fn close(&self) {
        let running = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.running.take()
        };
        if let Some(r) = running {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.worker.join();
        }
        self.shared.events.close();
    }

    /// The node's state.
    pub fn state(&self) -> NodeState {
        let logged_in = lock(&self.shared.login).is_some();
        let (rt, udp) = {
            let st = lock(&self.state);
            match &st.running {
                Some(r) => (Some(r.rt.clone()), r.udp.port()),
                None => (None, 0),
            }
        };
        let live = rt.and_then(|rt| {
            rt.command(|n, _| {
                (
                    n.attached().len(),
                    n.nat().map(|r| r.nat),
                    n.is_super_node(),
                )
            })
        });
        let (super_nodes, nat, sn) = live.unwrap_or((0, None, false));
        NodeState {
            logged_in,
            started: live.is_some(),
            super_nodes: u32::try_from(super_nodes).unwrap_or(u32::MAX),
            role: if sn {
                NatterNodeRole::NatterNodeSuperNode
            } else {
                NatterNodeRole::NatterNodeClient
            },
            nat: nat_type(nat),
            udp_port: if live.is_some() { udp } else { 0 },
            events_dropped: self.shared.events.dropped(),
        }
    }

    /// A one-paragraph description of the client, for people.
    pub fn describe(&self) -> String {
        let user = lock(&self.shared.login)
            .as_ref()
            .map(|l| format!("logged in as {}", l.certificate.user))
            .unwrap_or_else(|| "not logged in".into());
        let node = self.runtime().ok().and_then(|rt| {
            rt.command(|n, now| {
                format!(
                    "{}; NAT: {}; {}",
                    n.describe_attach(now),
                    n.nat().map_or("not detected yet", |r| r.nat.describe()),
                    if n.is_super_node() {
                        "super node"
                    } else {
                        "ordinary node"
                    }
                )
            })
        });
        match node {
            Some(n) => format!("{user}; {n}"),
            None => format!("{user}; not started"),
        }
    }

    /// Search the index for `user`; the outcome arrives as an event with the returned id.
    pub fn search(&self, user: &str) -> Result<u64, NatterResult> {
        let user = user_name(user)?;
        let rt = self.runtime()?;
        rt.command(move |n, now| n.search(now, user))
            .ok_or(NatterResult::NatterNotStarted)
    }

    /// Call `user`; returns the call's C id at once (events follow).
    pub fn call(&self, user: &str) -> Result<u64, NatterResult> {
        let user = user_name(user)?;
        let rt = self.runtime()?;
        let handle = {
            let mut t = lock(&self.shared.calls);
            if t.live().is_some() {
                return Err(NatterResult::NatterInCall);
            }
            t.add_outgoing(&user)
        };
        let shared = self.shared.clone();
        // The dial is bound to its C id on the runtime thread, before its outcome can be
        // reported (events are handed out after commands run).
        let placed = rt.command(move |n, now| {
            let dial = n.call(now, user);
            lock(&shared.dials).push((dial, handle));
        });
        if placed.is_none() {
            lock(&self.shared.calls).forget(handle);
            return Err(NatterResult::NatterNotStarted);
        }
        Ok(handle)
    }

    /// Run a call command (answer, decline, hang up, hold, resume) on call `handle`.
    pub fn call_command(&self, handle: u64, op: CallOp) -> Result<(), NatterResult> {
        let rt = self.runtime()?;
        let target = lock(&self.shared.calls).command_target(handle)?;
        let Some(id) = target else {
            // Still dialling: only hanging up makes sense, and ends the call at once.
            if op != CallOp::HangUp {
                return Err(NatterResult::NatterWrongCallState);
            }
            let e = lock(&self.shared.calls).cancel_dial(handle);
            if let Some(e) = e {
                self.shared.events.push(e);
            }
            return Ok(());
        };
        let r = rt
            .command(move |n, now| match op {
                CallOp::Answer => n.answer(now, id),
                CallOp::Decline => n.decline(now, id),
                CallOp::HangUp => n.hang_up(now, id),
                CallOp::Hold => n.hold(now, id),
                CallOp::Resume => n.resume(now, id),
            })
            .ok_or(NatterResult::NatterNotStarted)?;
        r.map_err(call_error)
    }
}

/// A call command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOp {
    Answer,
    Decline,
    HangUp,
    Hold,
    Resume,
}

fn nat_type(nat: Option<NatType>) -> NatterNatType {
    match nat {
        None => NatterNatType::NatterNatUnknown,
        Some(NatType::Open) => NatterNatType::NatterNatOpen,
        Some(NatType::PublicFiltered(_)) => NatterNatType::NatterNatPublicFiltered,
        Some(NatType::EndpointIndependent(Filtering::EndpointIndependent)) => {
            NatterNatType::NatterNatFullCone
        }
        Some(NatType::EndpointIndependent(Filtering::AddressDependent)) => {
            NatterNatType::NatterNatRestrictedCone
        }
        Some(NatType::EndpointIndependent(Filtering::AddressAndPortDependent)) => {
            NatterNatType::NatterNatPortRestrictedCone
        }
        Some(NatType::Symmetric) => NatterNatType::NatterNatSymmetric,
        Some(NatType::UdpBlocked) => NatterNatType::NatterNatUdpBlocked,
    }
}

/// Logging to standard error when `NATTER_LOG` is set (e.g. `NATTER_LOG=info`), once per
/// process.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("NATTER_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// The event thread of a started client.
struct Worker {
    rt: Runtime<Node>,
    handle: RuntimeHandle<Node>,
    shared: Arc<Shared>,
    audio: AudioSettings,
    renewer: Renewer,
    revocations: RevocationFetcher,
    _watch: NetWatch,
    cache_path: PathBuf,
    stop: Arc<AtomicBool>,
    renewing: bool,
    last_save: Instant,
}

impl Worker {
    fn run(mut self) {
        let mut last_housekeeping = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                self.housekeeping();
                last_housekeeping = Instant::now();
            }
            match self.rt.events().recv_timeout(Duration::from_millis(50)) {
                Ok(e) => self.on_event(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // The runtime thread died (an I/O error): nothing more will come.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shutdown();
    }

    /// End the calls, say goodbye to the network, save the host cache.
    fn shutdown(self) {
        let (events, hang_up) = lock(&self.shared.calls).end_all(NatterEndReason::NatterEndStopped);
        for id in hang_up {
            self.handle.command(move |n, now| {
                let _ = n.hang_up(now, id);
            });
        }
        self.handle.command(|n, now| n.go_offline(now));
        if let Some(cache) = self.handle.command(|n, _| n.host_cache().clone()) {
            if let Err(e) = save_host_cache(&self.cache_path, &cache) {
                tracing::warn!(error = %e, "saving the host cache");
            }
        }
        for e in events {
            self.shared.events.push(e);
        }
        // Dropping the runtime stops its thread (the offline record and hang-ups were flushed
        // when their commands ran); the renewer, revocation fetcher and address watcher join
        // their threads as they drop.
    }

    fn housekeeping(&mut self) {
        while let Ok(devices) = self.revocations.revoked().try_recv() {
            self.handle.command(move |n, now| n.revoke(now, devices));
        }
        while self.renewing {
            match self.renewer.certificates().try_recv() {
                Ok(cert) => {
                    if let Some(li) = lock(&self.shared.login).as_mut() {
                        li.certificate = cert.clone();
                    }
                    self.handle.command(move |n, _| n.update_certificate(cert));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.renewing = false;
                    self.shared.events.push(
                        Event::new(NatterEventKind::NatterEventLoginRequired).detail(
                            "the certificate can no longer be renewed without the password",
                        ),
                    );
                }
            }
        }
        let (cpu, bytes_per_sec) = self.rt.load();
        self.handle
            .command(move |n, now| n.report_load(now, Load { cpu, bytes_per_sec }));
        if self.last_save.elapsed() >= Duration::from_secs(60) {
            if let Some(cache) = self.handle.command(|n, _| n.host_cache().clone()) {
                let _ = save_host_cache(&self.cache_path, &cache);
            }
            self.last_save = Instant::now();
        }
    }

    fn attached(&self) -> u32 {
        self.handle
            .command(|n, _| n.attached().len())
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    fn on_event(&mut self, e: NodeEvent) {
        let mut events = Vec::new();
        let mut follow = Vec::new();
        match e {
            NodeEvent::Attach(AttachEvent::Attached {
                super_node,
                transport,
                ..
            }) => events.push(
                Event::new(NatterEventKind::NatterEventAttached)
                    .detail(format!("{super_node} via {transport:?}"))
                    .count(self.attached()),
            ),
            NodeEvent::Attach(AttachEvent::Detached { super_node }) => events.push(
                Event::new(NatterEventKind::NatterEventDetached)
                    .detail(super_node.to_string())
                    .count(self.attached()),
            ),
            NodeEvent::Attach(AttachEvent::NoSuperNode) => {
                events.push(Event::new(NatterEventKind::NatterEventNoSuperNode))
            }
            NodeEvent::Attach(_) => {}
            NodeEvent::Nat(r) => events.push(
                Event::new(NatterEventKind::NatterEventNatDetected)
                    .code(nat_type(Some(r.nat)) as u32)
                    .detail(r.nat.describe()),
            ),
            NodeEvent::Promoted => events.push(
                Event::new(NatterEventKind::NatterEventRoleChanged)
                    .code(NatterNodeRole::NatterNodeSuperNode as u32)
                    .detail("promoted to super node"),
            ),
            NodeEvent::Demoted => events.push(
                Event::new(NatterEventKind::NatterEventRoleChanged)
                    .code(NatterNodeRole::NatterNodeClient as u32)
                    .detail("gave the super-node role up"),
            ),
            NodeEvent::SuperNode(_) | NodeEvent::Session(_) => {}
            NodeEvent::Search { id, outcome } => events.push(search_event(id, &outcome)),
            NodeEvent::Dial { dial, outcome } => {
                let handle = {
                    let mut dials = lock(&self.shared.dials);
                    let i = dials.iter().position(|(d, _)| *d == dial);
                    i.map(|i| dials.swap_remove(i).1)
                };
                lock(&self.shared.calls).on_dial(handle, outcome, &mut events, &mut follow)
            }
            NodeEvent::Call(ev) => {
                lock(&self.shared.calls).on_call_event(ev, &self.handle, &self.audio, &mut events)
            }
            NodeEvent::CallPath {
                call,
                path,
                kind,
                reason,
            } => events.extend(lock(&self.shared.calls).on_path(
                call,
                kind,
                format!("{} ({reason:?}): {path:?}", kind.name()),
            )),
            NodeEvent::CallQuality { call, quality } => {
                events.extend(lock(&self.shared.calls).on_quality(call, quality))
            }
            NodeEvent::CallMedia { call, data } => lock(&self.shared.calls).on_media(call, &data),
        }
        for f in follow {
            match f {
                FollowUp::HangUp(id) => {
                    self.handle.command(move |n, now| {
                        let _ = n.hang_up(now, id);
                    });
                }
            }
        }
        for e in events {
            self.shared.events.push(e);
        }
    }
}

fn search_event(id: u64, o: &SearchOutcome) -> Event {
    let took = format!("{:.1} ms", o.elapsed.as_secs_f64() * 1000.0);
    let (code, count, detail) = match &o.result {
        SearchResult::Found(records) => {
            let online = records.iter().filter(|r| r.online).count();
            (
                NatterSearchResult::NatterSearchFound,
                online,
                format!(
                    "found {}: {} device(s), {online} online ({} hops, {took})",
                    o.user,
                    records.len(),
                    o.hops
                ),
            )
        }
        SearchResult::NotFound => (
            NatterSearchResult::NatterSearchNotFound,
            0,
            format!("{} not found ({took})", o.user),
        ),
        SearchResult::Unavailable => (
            NatterSearchResult::NatterSearchUnavailable,
            0,
            format!("{}: the index could not answer, try again ({took})", o.user),
        ),
    };
    let mut e = Event::new(NatterEventKind::NatterEventSearchResult)
        .user(o.user.as_str())
        .code(code as u32)
        .count(u32::try_from(count).unwrap_or(u32::MAX))
        .detail(detail);
    e.search = id;
    e
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
