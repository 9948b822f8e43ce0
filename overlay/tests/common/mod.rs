//! Helpers shared by the integration tests: logging users in, starting nodes on ports that
//! cannot be taken from under them, waiting for conditions and searching, over real sockets
//! (the loopback tests), and [`sim`] for the scenarios in the simulator.
#![allow(dead_code)]

pub mod sim;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natter_core::crypto::UserName;
use natter_core::overlay::SearchOutcome;
use natter_overlay::node::{Node, NodeConfig, NodeEvent};
use natter_transport::runtime::{Runtime, RuntimeConfig};

use natter_core::crypto::{Capabilities, LocalIdentity};
use natter_core::login::client::{LoginClientEvent, Operation};
use natter_core::login::proto::Version;
use natter_server::password::HashParams;
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};
use natter_transport::login::client::{login, run_operations, DeviceStore};
use natter_transport::login::network::NetworkFile;

/// The client version the tests log in with.
pub const V: Version = Version::new(0, 1, 0);
const PASSWORD: &str = "loopback passphrase";

/// Register `user` at the login server of `net` and log its device in (keys kept under
/// `dir/user`).
pub fn enrol(net: &NetworkFile, dir: &std::path::Path, user: &str) -> LocalIdentity {
    let store = DeviceStore::open(dir.join(user)).unwrap();
    let (device, _) = store.identity().unwrap();
    let ev = run_operations(
        net,
        &device,
        V,
        true,
        vec![Operation::Register {
            user: user.into(),
            password: PASSWORD.into(),
        }],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(ev.contains(&LoginClientEvent::Registered), "{ev:?}");
    let li = login(
        net,
        &store,
        user,
        Some(PASSWORD),
        V,
        Duration::from_secs(10),
    )
    .unwrap();
    LocalIdentity {
        device: li.device,
        certificate: li.certificate,
        trusted: net.trusted().unwrap(),
        capabilities: Capabilities::VOICE,
    }
}

/// A login server on loopback keeping its data under `dir/login`, with cheap password hashing
/// (the tests log many users in; the real parameters are measured in `benches/login_load`).
pub fn login_server(dir: &std::path::Path) -> LoginServerHandle {
    let mut opts = LoginServerOptions::new(dir.join("login"), "127.0.0.1:0".parse().unwrap());
    opts.hash_params = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    LoginServerHandle::start(opts).unwrap()
}

/// Search the global index from `node` for `user` and wait (up to 10 s) for the outcome.
/// Other events that arrive meanwhile are dropped.
pub fn search(node: &Runtime<Node>, user: &str) -> SearchOutcome {
    let name = UserName::parse(user).unwrap();
    let id = node.command(move |m, now| m.search(now, name));
    let (found, _) = node.wait_for(
        Duration::from_secs(10),
        |e| matches!(e, NodeEvent::Search { id: i, .. } if *i == id),
    );
    match found {
        Some(NodeEvent::Search { outcome, .. }) => outcome,
        other => panic!("no answer to the search for {user}: {other:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `deadline` passes (false): for waiting on
/// what the network does, instead of sleeping for a time that a loaded machine may exceed.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ports the tests choose from: below Linux's ephemeral range (32768-60999), where sockets
/// bound to port 0 and outgoing connections get theirs.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Runs `start` with random base ports until none of the sockets it binds is taken.
///
/// `start(base)` binds everything it uses on ports `base..base + span` and fails with
/// [`io::ErrorKind::AddrInUse`] when one is taken (dropping what it had bound). The sockets it
/// binds are the ones it uses, so nothing can take a port between choosing and binding it (a
/// port checked free and released could be). For machines that cannot bind port 0: a super
/// node listens on its port and the fallback ports above it, and answers STUN "change port"
/// requests from its port + 1.
pub fn on_free_ports<T>(span: u16, mut start: impl FnMut(u16) -> io::Result<T>) -> T {
    let random = RandomState::new();
    for attempt in 0u64..100 {
        let room = u64::from(PORTS.end - PORTS.start - span);
        let base = PORTS.start + (random.hash_one(attempt) % room) as u16;
        match start(base) {
            Ok(t) => return t,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding ports {base}..{}: {e}", base + span),
        }
    }
    panic!("no free block of {span} ports in 100 tries");
}

/// Runs the node `cfg` describes on the sockets `bind` names (with its clock anchored at the
/// runtime's start).
pub fn spawn_node(mut cfg: NodeConfig, bind: RuntimeConfig) -> io::Result<Runtime<Node>> {
    Runtime::spawn(bind, move |now, _| {
        cfg.clock_anchor = now;
        Node::new(cfg, now)
    })
}

/// What a node configured as `cfg` binds and listens on (its UDP addresses, the STUN change
/// port of a super node included, and its TCP listeners).
pub fn listens_on(cfg: &NodeConfig) -> RuntimeConfig {
    let node = Node::new(cfg.clone(), Instant::now());
    RuntimeConfig {
        udp: node.bind_addresses(),
        tcp: node.tcp_listen_addresses(),
    }
}

/// A UDP port held so that nobody else can take it, where nothing answers: datagrams to it
/// are queued and never read.
pub fn silent_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}

/// A TCP port held so that nobody else can listen on it, where connections are refused: the
/// socket is bound (without `SO_REUSEADDR`, so no listener can share the port) but never
/// listens, and the kernel answers connection attempts with a reset.
pub fn refusing_tcp(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
