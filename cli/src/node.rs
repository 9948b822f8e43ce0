//! `natter node`: run a node of a Natter network (an ordinary node or a super node), on
//! [`natter::Client`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter::{BuildError, Client, Event, Found, LinkTransport, Network, Role, SearchOutcome};

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
    pub fallback_ports: Option<natter::FallbackPorts>,
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
    let mut searches = args.search.clone();
    for u in &searches {
        natter::UserName::parse(u).map_err(|e| format!("--search {u}: {e}"))?;
    }
    let node = Running::start(&args, None)?;
    let status_path = cmd
        .status_file
        .unwrap_or_else(|| args.data.join(status::DEFAULT_NAME));
    let cx = status::Context {
        user: args.user.clone(),
        listen: args.listen,
        role: node.role,
    };
    let mut status_written: Option<Instant> = None;
    let mut status_logged = Instant::now();
    let mut status_failed = false;
    loop {
        if node.stopping() {
            let mut last = status::Status::gather(&node.client, &cx);
            node.client.close();
            if let Some(last) = last.as_mut() {
                last.running = false;
                // Best effort: a status file that says "running" would go stale anyway.
                let _ = last.write(&status_path);
            }
            say!(
                "stopping: host cache saved to {}",
                args.data.join("hostcache.bin").display()
            );
            return Ok(());
        }
        if status_written.is_none_or(|t| t.elapsed() >= status::WRITE_EVERY) {
            status_written = Some(Instant::now());
            if let Some(s) = status::Status::gather(&node.client, &cx) {
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
        }
        if let Ok(e) = node.client.events().recv_timeout(Duration::from_secs(1)) {
            node.describe(&e);
        }
        // Search once joined: attached to a super node, or one.
        if !searches.is_empty() && node.client.state().is_joined() {
            for user in searches.drain(..) {
                say!("searching for {user}");
                let _ = node.client.search(&user);
            }
        }
    }
}

/// The role the flags choose.
fn role(args: &NodeArgs) -> Role {
    if args.supernode {
        Role::SuperNode
    } else if args.no_supernode {
        Role::Client
    } else {
        Role::Auto
    }
}

/// The role policy's name, as `natter node` prints it.
pub fn policy_name(role: Role) -> &'static str {
    match role {
        Role::SuperNode => "Force",
        Role::Client => "Forbid",
        _ => "Auto",
    }
}

/// A logged-in, running client, and the signal handler's flag.
pub struct Running {
    /// The client.
    pub client: Client,
    /// Its role policy.
    pub role: Role,
    stop: Arc<AtomicBool>,
    network: PathBuf,
    user: String,
    data: PathBuf,
}

impl Running {
    /// Log in (asking for the password when needed), start the node and install the signal
    /// handler. `role` overrides the role the flags choose; `audio` sets the calls' audio.
    pub fn start(
        args: &NodeArgs,
        over: Option<(Role, natter::AudioConfig)>,
    ) -> Result<Running, String> {
        let network = Network::from_file(&args.network).map_err(|e| e.to_string())?;
        let role = over.as_ref().map_or(role(args), |(r, _)| *r);
        let mut b = Client::builder(network)
            .data_dir(&args.data)
            .listen(args.listen)
            .role(role)
            .relay_only(args.relay_only);
        if let Some(alt) = args.stun_alternate {
            b = b.stun_alternate(alt);
        }
        if let Some(p) = args.fallback_ports {
            b = b.fallback_ports(p);
        }
        if let Some(k) = args.uplink_kbps {
            b = b.uplink_kbps(k);
        }
        if let Some(n) = args.max_clients {
            b = b.max_clients(n);
        }
        if let Some((_, audio)) = over {
            b = b.audio(audio);
        }
        // Credentials kept elsewhere (a keychain, a secret store), in hex: used in memory,
        // never written to --data.
        if let Some(hex) = std::env::var_os("NATTER_CREDENTIALS").filter(|v| !v.is_empty()) {
            let bytes = hex
                .to_str()
                .and_then(from_hex)
                .ok_or("NATTER_CREDENTIALS: not hexadecimal")?;
            let c = natter::Credentials::from_bytes(&bytes)
                .map_err(|e| format!("NATTER_CREDENTIALS: {e}"))?;
            b = b.credentials(c);
        }
        let client = b.build().map_err(|e| match e {
            BuildError::StunAlternate { alternate, listen } => format!(
                "--stun-alternate {alternate}: needs another IP and another port than --listen {listen}"
            ),
            other => other.to_string(),
        })?;
        let li = login_or_ask(&client, &args.user, || {
            read_password(args.password_stdin, "Password: ")
        })
        .map_err(|e| format!("login failed: {e}"))?;
        say!("logged in as {} (device {})", li.user, li.device);
        client.start().map_err(|e| e.to_string())?;
        let fallback = match args.fallback_ports {
            Some(p) => p,
            None => client
                .network()
                .fallback_ports()
                .map_err(|e| e.to_string())?,
        };
        // The address bound (with --listen on port 0, the port the system picked).
        let listening = client.state().local_addr.unwrap_or(args.listen);
        say!(
            "node listening on {} (role: {}; fallback TCP ports {})",
            listening,
            policy_name(role),
            fallback
        );
        // From now on (not while asking for a password), stop cleanly on Ctrl-C / SIGINT /
        // SIGTERM: the loop sees the flag within a second.
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
                .map_err(|e| format!("installing the signal handler: {e}"))?;
        }
        Ok(Running {
            client,
            role,
            stop,
            network: args.network.clone(),
            user: args.user.clone(),
            data: args.data.clone(),
        })
    }

    /// Ctrl-C, SIGINT or SIGTERM arrived.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// One line per event, as a person reads it.
    pub fn describe(&self, e: &Event) {
        match e {
            Event::LoginRequired => eprintln!(
                "natter: this device's certificate can no longer be renewed \
                 without the password; run `natter login --network {} --user {} --data {}` \
                 with the password, then restart this node (or just restart it: it asks \
                 for the password)",
                self.network.display(),
                self.user,
                self.data.display()
            ),
            other => describe(other),
        }
    }
}

/// One line for a joining, search or contacts event (nothing for call events), as a person
/// reads it.
pub fn describe(e: &Event) {
    match e {
        Event::Connecting { candidates } => {
            say!("connecting: probing {candidates} super nodes")
        }
        Event::UdpBlocked => say!("UDP seems blocked: connecting over TCP"),
        Event::Attached {
            super_node,
            transport,
            seen_as,
            rtt,
            ..
        } => say!(
            "attached to super node {super_node} via {} (seen as {seen_as}{})",
            transport_name(*transport),
            rtt.map(|r| format!(", UDP RTT {:.1} ms", r.as_secs_f64() * 1000.0))
                .unwrap_or_default()
        ),
        Event::Detached { super_node, .. } => say!("lost super node {super_node}"),
        Event::NoSuperNode { .. } => say!("no super node reachable yet"),
        Event::NatDetected { nat, mapped, took } => say!(
            "NAT: {} (mapped address {}, probed in {:.0} ms)",
            nat.describe().trim_start_matches("NAT: "),
            mapped.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            took.as_secs_f64() * 1000.0
        ),
        Event::SearchResult { user, outcome, .. } => say!("{}", describe_search(user, outcome)),
        Event::RoleChanged { .. }
        | Event::CertificateRenewed
        | Event::DevicesRevoked { .. }
        | Event::LoginRequired
        | Event::ContactRequest { .. }
        | Event::ContactAccepted { .. }
        | Event::ContactRequestFailed { .. }
        | Event::ContactPresence { .. }
        | Event::ContactsSyncFailed { .. } => say!("{e}"),
        other => tracing::debug!(event = %other, "event"),
    }
}

/// How `natter` names a link's transport: `Tcp`, `TcpFallback`, `Tls`.
pub fn transport_name(t: LinkTransport) -> &'static str {
    match t {
        LinkTransport::Tcp => "Tcp",
        LinkTransport::TcpFallback => "TcpFallback",
        _ => "Tls",
    }
}

/// A search's outcome as a person reads it.
pub fn describe_search(user: &natter::UserName, o: &SearchOutcome) -> String {
    match &o.found {
        Found::Devices(_) => format!(
            "found {user}: {}",
            o.to_string().trim_start_matches("found: ")
        ),
        Found::NotFound => format!("{user} not found ({:.1} ms)", o.took.as_secs_f64() * 1000.0),
        _ => format!("{user}: {o}"),
    }
}

/// Bytes as lower-case hexadecimal.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hexadecimal (either case, whitespace around ignored) as bytes; None if it is not.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
