//! `natter node`: run a node of a Natter network (an ordinary node or a super node).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use natter_core::crypto::UserName;
use natter_core::crypto::{Capabilities, LocalIdentity};
use natter_core::overlay::AttachEvent;
use natter_core::overlay::{SearchOutcome, SearchResult};
use natter_overlay::node::{Load, Node, NodeConfig, NodeEvent, RolePolicy};
use natter_transport::login::client::{DeviceStore, Renewer, RevocationFetcher};
use natter_transport::login::network::NetworkFile;
use natter_transport::netwatch::{local_addresses, NetWatch};
use natter_transport::persist::{load_host_cache, save_host_cache};
use natter_transport::runtime::{Runtime, RuntimeConfig};
use natter_transport::{os_seed, wall_clock};

use crate::accounts::{login_or_ask, read_password};
use crate::status;

/// Options of `natter node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The network file from the login server.
    #[arg(long)]
    pub network: PathBuf,
    /// Data directory: device keys, certificate, host cache (created 0700).
    #[arg(long)]
    pub data: PathBuf,
    /// The account this node logs in as.
    #[arg(long)]
    pub user: String,
    /// UDP and TCP address to listen on.
    #[arg(long, default_value = "0.0.0.0:4000")]
    pub listen: SocketAddr,
    /// Always be a super node.
    #[arg(long, conflicts_with = "no_supernode")]
    pub supernode: bool,
    /// Never be a super node.
    #[arg(long)]
    pub no_supernode: bool,
    /// A second IP and port of this host, for NAT-behaviour tests (super nodes).
    #[arg(long)]
    pub stun_alternate: Option<SocketAddr>,
    /// Fallback TCP ports, overriding the network file's `[overlay]` setting for this node:
    /// `PLAIN,TLS` absolute ports (`80,443`) or offsets from the main port (`+1,+2`). A super
    /// node listens there; the node also looks for super nodes there.
    #[arg(long, value_name = "PLAIN,TLS")]
    pub fallback_ports: Option<natter_core::overlay::FallbackPorts>,
    /// This host's uplink capacity in kilobits per second, when known: the node then promotes
    /// itself only while at most half of it is in use (promotion also needs spare CPU, an open
    /// address and two minutes of uptime).
    #[arg(long, value_name = "KBIT/S")]
    pub uplink_kbps: Option<u64>,
    /// Most clients this node serves as a super node (default 2,000).
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Read the password from standard input (when it is needed: first start, or a certificate
    /// that can no longer be renewed).
    #[arg(long)]
    pub password_stdin: bool,
    /// Search the global index for this user once joined (repeatable).
    #[arg(long, value_name = "USER")]
    pub search: Vec<String>,
    /// Keep this device's addresses private in calls: never tell the peer where it is, so
    /// calls stay on a super node's relay.
    #[arg(long)]
    pub relay_only: bool,
}

/// Options of `natter node`: a node's options, and those only a long-running node has.
#[derive(clap::Args, Debug)]
pub struct NodeCommand {
    /// The node's options.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Write this node's status (role, clients, index size, relay counters, NAT type, uptime)
    /// as JSON to this file every 5 seconds (default: DIR/status.json in --data); `natter
    /// status` reads it.
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// Read options from this TOML file: each flag is a key (its name with underscores, e.g.
    /// `max_clients = 500`, `supernode = true`, `search = ["alice"]`); flags given on the
    /// command line override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

/// Run a node until interrupted (Ctrl-C, SIGINT or SIGTERM: it saves its host cache and
/// exits with 0); returns an exit code on a startup failure.
pub fn run(args: NodeCommand) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("natter node: {e}");
            1
        }
    }
}

fn run_inner(cmd: NodeCommand) -> Result<(), String> {
    let args = cmd.node;
    let mut searches = args
        .search
        .iter()
        .map(|u| UserName::parse(u).map_err(|e| format!("--search {u}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut node = Started::start(&args, None)?;
    let status_path = cmd
        .status_file
        .unwrap_or_else(|| args.data.join(status::DEFAULT_NAME));
    let cx = status::Context {
        started,
        user: args.user.clone(),
        listen: args.listen,
        role: role_policy(&args),
    };
    let mut status_written: Option<Instant> = None;
    let mut status_logged = Instant::now();
    let mut status_failed = false;
    loop {
        if node.stopping() {
            node.save_cache();
            let mut last = status::Status::gather(&node.rt, &cx);
            last.running = false;
            // Best effort: a status file that says "running" would go stale anyway.
            let _ = last.write(&status_path);
            say!(
                "stopping: host cache saved to {}",
                node.cache_path.display()
            );
            return Ok(());
        }
        node.housekeeping();
        if status_written.is_none_or(|t| t.elapsed() >= status::WRITE_EVERY) {
            status_written = Some(Instant::now());
            let s = status::Status::gather(&node.rt, &cx);
            match s.write(&status_path) {
                Ok(()) => status_failed = false,
                // Once per failure streak, not every 5 seconds.
                Err(e) if !status_failed => {
                    status_failed = true;
                    tracing::warn!(path = %status_path.display(), error = %e, "writing the status file");
                }
                Err(_) => {}
            }
            if status_logged.elapsed() >= status::LOG_EVERY {
                status_logged = Instant::now();
                tracing::info!("status: {}", s.summary());
            }
        }
        if let Ok(e) = node.rt.events().recv_timeout(Duration::from_secs(1)) {
            describe(&e);
        }
        // Search once joined: attached to a super node, or one.
        if !searches.is_empty() && node.joined() {
            for user in searches.drain(..) {
                say!("searching for {user}");
                node.rt.command(move |n, now| n.search(now, user));
            }
        }
    }
}

/// The role the flags choose.
fn role_policy(args: &NodeArgs) -> RolePolicy {
    if args.supernode {
        RolePolicy::Force
    } else if args.no_supernode {
        RolePolicy::Forbid
    } else {
        RolePolicy::Auto
    }
}

/// A running node with what keeps it logged in and its host cache saved.
pub struct Started {
    /// The runtime driving the node.
    pub rt: Runtime<Node>,
    /// Where the host cache is saved.
    pub cache_path: PathBuf,
    renewer: Renewer,
    revocations: RevocationFetcher,
    _watch: NetWatch,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    last_save: Instant,
    renewing: bool,
    network: PathBuf,
    user: String,
    data: PathBuf,
}

impl Started {
    /// Log in (asking for the password when needed), start the node and install the signal
    /// handler. `role` overrides the role the flags choose.
    pub fn start(args: &NodeArgs, role: Option<RolePolicy>) -> Result<Started, String> {
        let net = NetworkFile::load(&args.network).map_err(|e| e.to_string())?;
        let store = DeviceStore::open(args.data.join("device")).map_err(|e| e.to_string())?;
        let li = login_or_ask(&net, &store, &args.user, || {
            read_password(args.password_stdin, "Password: ")
        })
        .map_err(|e| format!("login failed: {e}"))?;
        say!(
            "logged in as {} (device {})",
            li.certificate.user,
            li.certificate.device
        );
        let renewer = Renewer::spawn(net.clone(), store.clone(), li.certificate.clone());
        // Every node refuses revoked devices; the list is small and fetched every 5 minutes.
        let revocations =
            RevocationFetcher::spawn(net.clone(), li.device.clone(), Duration::from_secs(300));

        let cache_path = args.data.join("hostcache.bin");
        let mut cache = load_host_cache(&cache_path);
        for b in &net.bootstrap {
            if let Ok(a) = b.address.parse() {
                cache.insert(a, None, wall_clock());
            }
        }
        let identity = LocalIdentity {
            device: li.device,
            certificate: li.certificate,
            trusted: net.trusted().map_err(|e| e.to_string())?,
            capabilities: Capabilities::VOICE.union(Capabilities::CHAT),
        };
        let role = role.unwrap_or(role_policy(args));
        let seed = os_seed().map_err(|e| e.to_string())?;
        let mut cfg = NodeConfig::new(identity, seed, wall_clock(), Instant::now(), args.listen);
        cfg.role = role;
        if let Some(alt) = args.stun_alternate {
            // RFC 5780 needs another IP *and* another port; anything else would be ignored.
            if alt.ip() == args.listen.ip() || alt.port() == args.listen.port() {
                return Err(format!(
                    "--stun-alternate {alt}: needs another IP and another port than --listen {}",
                    args.listen
                ));
            }
        }
        cfg.stun_alternate = args.stun_alternate;
        cfg.uplink_bytes_per_sec = args.uplink_kbps.map(|k| k.saturating_mul(1000) / 8);
        if let Some(n) = args.max_clients {
            cfg.max_clients = n;
        }
        cfg.host_cache = cache;
        cfg.call_paths.direct = !args.relay_only;
        cfg.local_addresses = local_addresses(args.listen);
        cfg.attach.fallback_ports = match args.fallback_ports {
            Some(p) => p,
            None => net.fallback_ports().map_err(|e| e.to_string())?,
        };
        let cfg_fallback = cfg.attach.fallback_ports;
        let probe = Node::new(cfg.clone(), Instant::now());
        let (udp, tcp) = (probe.bind_addresses(), probe.tcp_listen_addresses());
        drop(probe);
        let rt = Runtime::spawn(RuntimeConfig { udp, tcp }, move |now, _| {
            cfg.clock_anchor = now;
            Node::new(cfg, now)
        })
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
        say!(
            "node listening on {} (role: {role:?}; fallback TCP ports {})",
            args.listen,
            cfg_fallback
        );
        let handle = rt.handle();
        let watch = NetWatch::spawn(args.listen, move |addrs| {
            handle.command(move |n, now| n.set_local_addresses(now, addrs));
        });
        // From now on (not while asking for a password), stop cleanly on Ctrl-C / SIGINT /
        // SIGTERM: the loop sees the flag within a second.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let stop = stop.clone();
            ctrlc::set_handler(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))
                .map_err(|e| format!("installing the signal handler: {e}"))?;
        }
        Ok(Started {
            rt,
            cache_path,
            renewer,
            revocations,
            _watch: watch,
            stop,
            last_save: Instant::now(),
            renewing: true,
            network: args.network.clone(),
            user: args.user.clone(),
            data: args.data.clone(),
        })
    }

    /// Ctrl-C, SIGINT or SIGTERM arrived.
    pub fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Attached to a super node, or one.
    pub fn joined(&self) -> bool {
        self.rt
            .command(|n, _| n.is_super_node() || !n.attached().is_empty())
    }

    /// Save the host cache now.
    pub fn save_cache(&mut self) {
        let cache = self.rt.command(|n, _| n.host_cache().clone());
        if let Err(e) = save_host_cache(&self.cache_path, &cache) {
            tracing::warn!(error = %e, "saving the host cache");
        }
        self.last_save = Instant::now();
    }

    /// Revocations, renewed certificates, load reports and the periodic host-cache save: call
    /// this about once a second.
    pub fn housekeeping(&mut self) {
        while let Ok(devices) = self.revocations.revoked().try_recv() {
            say!("{} device(s) revoked by the login authority", devices.len());
            self.rt.command(move |n, now| n.revoke(now, devices));
        }
        while self.renewing {
            match self.renewer.certificates().try_recv() {
                Ok(cert) => {
                    self.rt.command(move |n, _| n.update_certificate(cert));
                    say!("certificate renewed");
                }
                Err(TryRecvError::Empty) => break,
                // The renewer gave up (its reason is logged): say what to do, once.
                Err(TryRecvError::Disconnected) => {
                    self.renewing = false;
                    eprintln!(
                        "natter: this device's certificate can no longer be renewed \
                         without the password; run `natter login --network {} --user {} --data {}` \
                         with the password, then restart this node (or just restart it: it asks \
                         for the password)",
                        self.network.display(),
                        self.user,
                        self.data.join("device").display()
                    );
                }
            }
        }
        let (cpu, bytes_per_sec) = self.rt.load();
        self.rt
            .command(move |n, now| n.report_load(now, Load { cpu, bytes_per_sec }));
        if self.last_save.elapsed() >= Duration::from_secs(60) {
            self.save_cache();
        }
    }
}

/// One line per event, as a person reads it.
pub fn describe(e: &NodeEvent) {
    match e {
        NodeEvent::Attach(AttachEvent::Connecting { candidates }) => {
            say!("connecting: probing {candidates} super nodes")
        }
        NodeEvent::Attach(AttachEvent::UdpBlocked) => {
            say!("UDP seems blocked: connecting over TCP")
        }
        NodeEvent::Attach(AttachEvent::Attached {
            super_node,
            transport,
            reflexive,
            rtt,
        }) => say!(
            "attached to super node {super_node} via {transport:?} (seen as {reflexive}{})",
            rtt.map(|r| format!(", UDP RTT {:.1} ms", r.as_secs_f64() * 1000.0))
                .unwrap_or_default()
        ),
        NodeEvent::Attach(AttachEvent::Detached { super_node }) => {
            say!("lost super node {super_node}")
        }
        NodeEvent::Attach(AttachEvent::NoSuperNode) => say!("no super node reachable yet"),
        NodeEvent::Nat(r) => say!(
            "NAT: {} (mapped address {}, probed in {:.0} ms)",
            r.nat.describe().trim_start_matches("NAT: "),
            r.mapped
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            r.elapsed.as_secs_f64() * 1000.0
        ),
        NodeEvent::Promoted => say!("promoted to super node"),
        NodeEvent::Demoted => say!("gave up the super-node role"),
        NodeEvent::SuperNode(ev) => tracing::info!(?ev, "super node"),
        NodeEvent::Session(ev) => tracing::debug!(?ev, "session"),
        NodeEvent::Search { outcome, .. } => say!("{}", describe_search(outcome)),
        NodeEvent::Dial { dial, outcome } => say!("dial {dial}: {outcome:?}"),
        NodeEvent::Call(ev) => say!("call: {ev:?}"),
        NodeEvent::CallPath { kind, reason, .. } => {
            say!("call path {} ({reason:?})", kind.name())
        }
        NodeEvent::CallQuality { quality, .. } => tracing::info!(?quality, "call quality"),
        NodeEvent::CallMedia { .. } => {}
    }
}

/// A search's outcome as a person reads it.
pub fn describe_search(o: &SearchOutcome) -> String {
    let took = format!("{:.1} ms", o.elapsed.as_secs_f64() * 1000.0);
    match &o.result {
        SearchResult::Found(records) => {
            let devices: Vec<String> = records
                .iter()
                .map(|r| {
                    let state = if r.online {
                        "online".to_string()
                    } else {
                        format!("offline, last seen at {} (Unix time)", r.timestamp.0)
                    };
                    let via = r
                        .super_nodes
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("device {} {state} via {via}", r.device())
                })
                .collect();
            format!(
                "found {}: {} ({} hops, {took})",
                o.user,
                devices.join("; "),
                o.hops
            )
        }
        SearchResult::NotFound => format!("{} not found ({took})", o.user),
        SearchResult::Unavailable => {
            format!("{}: the index could not answer, try again ({took})", o.user)
        }
    }
}
