//! STUN interoperability with Debian's coturn, on loopback only.
//!
//! * Our [`StunServer`] (over real sockets, `UdpNode::spawn_multi`) answers coturn's clients:
//!   `turnutils_stunclient` (Binding plus its RFC 5780 follow-ups) and `turnutils_natdiscovery`
//!   (RFC 5780 mapping and filtering tests).
//! * coturn's `turnserver` (STUN only, no auth, two listening IPs for RFC 5780) answers our
//!   codec's Binding requests, with and without CHANGE-REQUEST, and our RFC 5780 classifier
//!   ([`NatProbe`], driven over a real socket by the transport [`Runtime`]) classifies
//!   loopback against it.
//! * A full [`Node`] in the super-node role, run by the transport [`Runtime`], answers
//!   `turnutils_stunclient` and `turnutils_natdiscovery`.
//!
//! The whole of 127.0.0.0/8 answers on Linux loopback, so 127.0.0.2 serves as the alternate
//! IP. Our servers bind the ports they use (random ones, again on `AddrInUse`: they need a
//! port and the one above it); coturn is started on random ports until it has bound them all
//! (it logs a failed bind, and every address must answer with coturn's SOFTWARE). Without the
//! coturn binaries the tests print `SKIPPED: ...` and pass, unless
//! `NATTER_REQUIRE_COTURN=1` (as `make test` sets), in which case they fail.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::on_free_ports;

use natter_core::overlay::{Filtering, NatEvent, NatProbe, NatProbeConfig, NatType};
use natter_core::sansio::{Destination, Input, Machine, Transmit};
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_core::wire::stun::{Attribute, Class, Message, TransactionId};
use natter_overlay::node::{Node, NodeConfig, RolePolicy};
use natter_overlay::stun::StunServer;
use natter_transport::runtime::{Runtime, RuntimeConfig};
use natter_transport::UdpNode;

const PRIMARY_IP: &str = "127.0.0.1";
const ALTERNATE_IP: &str = "127.0.0.2";

/// True when the coturn binaries are installed; otherwise skip (or fail under
/// `NATTER_REQUIRE_COTURN`, as `make test` sets).
fn coturn_installed() -> bool {
    [
        "turnserver",
        "turnutils_stunclient",
        "turnutils_natdiscovery",
    ]
    .iter()
    .all(|b| natter_fixtures::require_tool(b, "NATTER_REQUIRE_COTURN"))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Run a command to completion, killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Everything `cmd` printed, killing it after `timeout` if it has not finished.
fn stdout_of(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{cmd:?} -> {:?}\n{text}", out.status);
    text
}

/// The addresses after `label` on every line of coturn's client output that has it, e.g.
/// `0: : IPv4. UDP reflexive addr: 127.0.0.1:40986`.
fn addresses(output: &str, label: &str) -> Vec<SocketAddr> {
    output
        .lines()
        .filter_map(|l| l.split_once(label))
        .map(|(_, rest)| {
            rest.trim_start_matches([':', ' '])
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{rest:?} after {label:?}: {e}"))
        })
        .collect()
}

/// Our server on loopback: with an alternate, bound on all four of
/// {127.0.0.1, 127.0.0.2} × {P, P + 1}.
fn spawn_server(alternate: bool) -> (UdpNode<StunServer>, SocketAddr, Option<SocketAddr>) {
    on_free_ports(2, |p| {
        let primary = addr(PRIMARY_IP, p);
        let other = alternate.then(|| addr(ALTERNATE_IP, p + 1));
        let server = StunServer::new(primary, other).unwrap();
        let addrs = server.local_addresses();
        let node = UdpNode::spawn_multi(&addrs, move |_| server)?;
        assert_eq!(node.local_addrs(), &addrs[..]);
        Ok((node, primary, other))
    })
}

/// Runs coturn's `turnutils_stunclient` against `primary`. The client never gives up on its
/// third request: its run is bounded.
fn stunclient(primary: SocketAddr) -> String {
    stdout_of(
        Command::new("turnutils_stunclient")
            .args(["-L", PRIMARY_IP, "-p"])
            .arg(primary.port().to_string())
            .arg(PRIMARY_IP),
        Duration::from_secs(4),
    )
}

/// Runs `turnutils_stunclient` against a server at `primary` whose alternate is `other`.
/// Response 1: a plain Binding; it carries OTHER-ADDRESS, so the client runs its RFC 5780
/// follow-ups. Response 2: CHANGE-REQUEST (IP and port) with RESPONSE-PORT, answered from the
/// alternate to the client's second socket, reporting the first socket's mapping.
fn stunclient_runs_rfc5780(primary: SocketAddr, other: SocketAddr) {
    let out = stunclient(primary);
    assert!(out.contains("RFC 5780 response 2"), "{out}");
    let reflexive = addresses(&out, "UDP reflexive addr:");
    assert!(reflexive.len() >= 2, "{out}");
    assert_eq!(reflexive[0].ip().to_string(), PRIMARY_IP);
    assert_ne!(reflexive[0].port(), 0);
    assert_eq!(
        reflexive[0], reflexive[1],
        "same client socket, same mapping"
    );
    let origins = addresses(&out, "Response origin:");
    assert_eq!(origins[0], primary);
    assert_eq!(
        origins.last(),
        Some(&other),
        "change IP and port: {origins:?}"
    );
    let others = addresses(&out, "Other addr:");
    assert!(
        !others.is_empty() && others.iter().all(|a| *a == other),
        "{out}"
    );
}

#[test]
fn our_server_answers_turnutils_stunclient() {
    if !coturn_installed() {
        return;
    }
    let (node, primary, other) = spawn_server(true);
    let other = other.unwrap();
    stunclient_runs_rfc5780(primary, other);
    let stats = node.command(|s, _| s.stats());

    // Its third request is RFC 5780's PADDING test, a 1532-byte message: understood and
    // answered like the others.
    assert_eq!(stats.success_responses, 3, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
    assert_eq!(stats.error_responses, 0, "{stats:?}");
}

/// Runs coturn's `turnutils_natdiscovery` against the server at `primary` (alternate
/// `other`) and checks what loopback must give: no NAT, every answer from where RFC 5780 says.
fn natdiscovery_finds_no_nat(primary: SocketAddr, other: SocketAddr) {
    // Its mapping test binds the local port given: a random one, again if it was taken.
    let (local_port, out) = on_free_ports(1, |local_port| {
        let out = stdout_of(
            Command::new("turnutils_natdiscovery")
                .args(["-m", "-f", "-L", PRIMARY_IP, "-l"])
                .arg(local_port.to_string())
                .arg("-p")
                .arg(primary.port().to_string())
                .arg(PRIMARY_IP),
            Duration::from_secs(20),
        );
        if out.contains("Address already in use") {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        Ok((local_port, out))
    });
    // Loopback has no NAT: both RFC 5780 tests find endpoint-independent behaviour.
    assert!(
        out.contains("NAT with Endpoint Independent Mapping!"),
        "mapping test:\n{out}"
    );
    assert!(
        out.contains("NAT with Endpoint Independent Filtering!"),
        "filtering test:\n{out}"
    );
    // Each test opens its own socket (the mapping test on the port we chose); every reflexive
    // address is the client socket's own address, which it prints as "Local addr".
    let reflexive = addresses(&out, "UDP reflexive addr:");
    assert!(reflexive.len() >= 4, "{out}");
    assert_eq!(reflexive, addresses(&out, "Local addr:"));
    assert_eq!(reflexive[0], addr(PRIMARY_IP, local_port));
    // The mapping test's second request goes to the alternate IP with the primary port; the
    // filtering test asks for answers from the alternate IP and port.
    let origins = addresses(&out, "Response origin:");
    assert!(
        origins.contains(&addr(ALTERNATE_IP, primary.port())),
        "{origins:?}"
    );
    assert!(origins.contains(&other), "{origins:?}");
}

#[test]
fn our_server_passes_turnutils_natdiscovery() {
    if !coturn_installed() {
        return;
    }
    let (node, primary, other) = spawn_server(true);
    let other = other.unwrap();
    natdiscovery_finds_no_nat(primary, other);

    let stats = node.command(|s, _| s.stats());
    assert_eq!(stats.malformed + stats.error_responses, 0, "{stats:?}");
}

/// Runs `turnutils_stunclient` against a server with one address at `primary`: one response
/// (the client prints its reflexive address twice, from MAPPED-ADDRESS and
/// XOR-MAPPED-ADDRESS), no OTHER-ADDRESS, and so no RFC 5780 follow-ups.
fn stunclient_sees_one_address(primary: SocketAddr) {
    let out = stdout_of(
        Command::new("turnutils_stunclient")
            .args(["-p"])
            .arg(primary.port().to_string())
            .arg(PRIMARY_IP),
        Duration::from_secs(10),
    );
    let reflexive = addresses(&out, "UDP reflexive addr:");
    assert!(!reflexive.is_empty(), "{out}");
    assert!(reflexive.iter().all(|r| *r == reflexive[0]), "{out}");
    assert_eq!(reflexive[0].ip().to_string(), PRIMARY_IP);
    assert!(addresses(&out, "Other addr:").is_empty(), "{out}");
    assert!(!out.contains("RFC 5780 response"), "{out}");
}

#[test]
fn our_server_without_alternate_answers_stunclient() {
    if !coturn_installed() {
        return;
    }
    let (node, primary, _) = spawn_server(false);
    stunclient_sees_one_address(primary);
    let stats = node.command(|s, _| s.stats());
    assert_eq!(stats.success_responses, 1, "{stats:?}");

    // Forced RFC 5780 processing (-f) sends CHANGE-REQUEST anyway: we answer 420.
    let forced = stdout_of(
        Command::new("turnutils_stunclient")
            .args(["-f", "-p"])
            .arg(primary.port().to_string())
            .arg(PRIMARY_IP),
        Duration::from_secs(4),
    );
    let stats = node.command(|s, _| s.stats());
    assert!(stats.error_responses >= 1, "{stats:?}\n{forced}");
}

/// A running `turnserver`, killed (and its log shown if the test failed) when dropped.
struct Coturn {
    child: Child,
    dir: tempfile::TempDir,
    primary: SocketAddr,
}

/// Ports of the coturn servers this test process started (two tests must not pick the same:
/// coturn binds with `SO_REUSEPORT`, so a second one on a port would share it silently).
static COTURN_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

impl Coturn {
    /// coturn in STUN-only, no-auth mode on 127.0.0.1:P (and 127.0.0.2 when `alternate`),
    /// its alternate port P + 1 (the default), no TCP, TLS, DTLS or CLI, and no config file:
    /// Debian's /etc/turnserver.conf turns RFC 5780 and MAPPED-ADDRESS off. Returns once every
    /// address answers, so the NAT probe's few tries are not spent on a server still starting.
    fn start(alternate: bool) -> Self {
        on_free_ports(2, |p| {
            if !COTURN_PORTS.lock().unwrap().insert(p) {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            Self::try_start(alternate, p)
        })
    }

    /// coturn on port `p`, once all its addresses answer; `AddrInUse` (coturn stopped) when
    /// one of its ports was taken: it logs the failed bind (and keeps retrying), and whatever
    /// holds the port answers without coturn's SOFTWARE attribute, or not at all.
    fn try_start(alternate: bool, p: u16) -> io::Result<Self> {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("turnserver.log")).unwrap();
        let mut cmd = Command::new("turnserver");
        cmd.args([
            "-n",
            "--stun-only",
            "--no-auth",
            "--listening-ip",
            PRIMARY_IP,
        ]);
        if alternate {
            cmd.args(["--listening-ip", ALTERNATE_IP]);
        }
        cmd.arg("--listening-port")
            .arg(p.to_string())
            .arg("--alt-listening-port")
            .arg((p + 1).to_string())
            .args(["--no-tcp", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--log-file", "stdout", "--simple-log"])
            .arg("--pidfile")
            .arg(dir.path().join("turnserver.pid"))
            .arg("--db")
            .arg(dir.path().join("turndb"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("turnserver starts");
        let coturn = Self {
            child,
            dir,
            primary: addr(PRIMARY_IP, p),
        };
        // With one IP coturn listens on its primary port only (no RFC 5780).
        let addresses = if alternate {
            [PRIMARY_IP, ALTERNATE_IP]
                .iter()
                .flat_map(|ip| [addr(ip, p), addr(ip, p + 1)])
                .collect()
        } else {
            vec![addr(PRIMARY_IP, p)]
        };
        let socket = UdpSocket::bind(addr(PRIMARY_IP, 0)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for (n, to) in addresses.into_iter().enumerate() {
            let request = Message::binding_request(transaction(n as u8));
            loop {
                if coturn.log().contains("Cannot bind") {
                    return Err(io::ErrorKind::AddrInUse.into());
                }
                match try_exchange(&socket, to, &request, Duration::from_millis(250)) {
                    Some((m, _)) if is_coturn(&m) => break,
                    Some(_) => return Err(io::ErrorKind::AddrInUse.into()),
                    None if Instant::now() < deadline => {}
                    None => panic!("coturn does not answer on {to}:\n{}", coturn.log()),
                }
            }
        }
        Ok(coturn)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("turnserver log:\n{}", self.log());
        }
    }
}

/// Starting coturn on a port something else holds is noticed (and `start` then tries other
/// ports): whether the holder answers STUN or not.
#[test]
fn coturn_on_a_taken_port_is_noticed() {
    if !coturn_installed() {
        return;
    }
    let (silent, p) = on_free_ports(2, |p| Ok((UdpSocket::bind(addr(PRIMARY_IP, p))?, p)));
    let started = Instant::now();
    assert_eq!(
        Coturn::try_start(false, p).err().map(|e| e.kind()),
        Some(io::ErrorKind::AddrInUse)
    );
    drop(silent);
    let (ours, primary, _) = spawn_server(false);
    assert_eq!(
        Coturn::try_start(false, primary.port())
            .err()
            .map(|e| e.kind()),
        Some(io::ErrorKind::AddrInUse)
    );
    drop(ours);
    eprintln!("both noticed in {:?}", started.elapsed());
}

fn transaction(n: u8) -> TransactionId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&(nanos as u64).to_be_bytes());
    id[8..11].copy_from_slice(&std::process::id().to_be_bytes()[1..]);
    id[11] = n;
    TransactionId(id)
}

/// Whether a STUN answer came from coturn (its SOFTWARE attribute names it).
fn is_coturn(m: &Message) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, Attribute::Software(s) if s.starts_with("Coturn")))
}

/// Send `request` to `to` until a response with its transaction id arrives (coturn may still
/// be starting); return it and the address it came from.
fn exchange(socket: &UdpSocket, to: SocketAddr, request: &Message) -> (Message, SocketAddr) {
    try_exchange(socket, to, request, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer from {to} to {request:?}"))
}

/// [`exchange`], giving up (`None`) after `timeout`.
fn try_exchange(
    socket: &UdpSocket,
    to: SocketAddr,
    request: &Message,
    timeout: Duration,
) -> Option<(Message, SocketAddr)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let bytes = request.encode();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        socket.send_to(&bytes, to).unwrap();
        let wait_until = Instant::now() + Duration::from_millis(250);
        while Instant::now() < wait_until {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let m = Message::decode(&buf[..n])
                        .unwrap_or_else(|e| panic!("the answer {:02x?}: {e}", &buf[..n]));
                    if m.transaction == request.transaction {
                        return Some((m, from));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    break
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    None
}

fn change_request(n: u8, change_ip: bool, change_port: bool) -> Message {
    Message {
        attributes: vec![Attribute::ChangeRequest {
            change_ip,
            change_port,
        }],
        ..Message::binding_request(transaction(n))
    }
}

#[test]
fn coturn_answers_our_binding_requests() {
    if !coturn_installed() {
        return;
    }
    let coturn = Coturn::start(true);
    let primary = coturn.primary;
    let alternate = addr(ALTERNATE_IP, primary.port() + 1);
    let socket = UdpSocket::bind(addr(PRIMARY_IP, 0)).unwrap();
    let me = socket.local_addr().unwrap();

    let request = Message::binding_request(transaction(1));
    let (m, from) = exchange(&socket, primary, &request);
    assert_eq!(m.class, Class::Success, "{m:?}");
    assert_eq!(from, primary);
    assert_eq!(m.mapped_address(), Some(me));
    assert!(m.attributes.contains(&Attribute::XorMappedAddress(me)));
    assert_eq!(m.other_address(), Some(alternate), "{m:?}");
    assert_eq!(m.response_origin(), Some(primary));
    assert!(
        m.attributes
            .iter()
            .any(|a| matches!(a, Attribute::Software(s) if s.contains("Coturn"))),
        "{m:?}"
    );

    // RFC 5780 CHANGE-REQUEST: coturn answers from the other IP and/or port.
    for (n, ip, port, expected) in [
        (2, true, true, alternate),
        (3, true, false, addr(ALTERNATE_IP, primary.port())),
        (4, false, true, addr(PRIMARY_IP, primary.port() + 1)),
    ] {
        let (m, from) = exchange(&socket, primary, &change_request(n, ip, port));
        assert_eq!(m.class, Class::Success, "{m:?}");
        assert_eq!(from, expected, "change ip {ip}, port {port}");
        assert_eq!(m.response_origin(), Some(expected));
        assert_eq!(m.mapped_address(), Some(me));
    }

    // A request to the alternate is answered from there. (coturn 4.6.1 then reports
    // 127.0.0.2:P as OTHER-ADDRESS, flipping the port only, where our server flips both, per
    // RFC 5780 table 1 read from the receiving address; not checked.)
    let (m, from) = exchange(
        &socket,
        alternate,
        &Message::binding_request(transaction(5)),
    );
    assert_eq!(from, alternate);
    assert_eq!(m.mapped_address(), Some(me));
    assert_eq!(m.response_origin(), Some(alternate));
    assert!(m.other_address().is_some(), "{m:?}");

    // Without FINGERPRINT, a bare header is a valid request too.
    let bare = Message::binding_request(transaction(6));
    let mut bytes = bare.encode();
    bytes.truncate(20);
    bytes[3] = 0;
    socket.send_to(&bytes, primary).unwrap();
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        Message::decode(&buf[..n]).unwrap().mapped_address(),
        Some(me)
    );
}

#[test]
fn coturn_without_alternate_sends_no_other_address_and_refuses_change_request() {
    if !coturn_installed() {
        return;
    }
    let coturn = Coturn::start(false);
    let socket = UdpSocket::bind(addr(PRIMARY_IP, 0)).unwrap();
    let me = socket.local_addr().unwrap();
    let (m, from) = exchange(
        &socket,
        coturn.primary,
        &Message::binding_request(transaction(1)),
    );
    assert_eq!(from, coturn.primary);
    assert_eq!(m.class, Class::Success);
    assert_eq!(m.mapped_address(), Some(me));
    assert_eq!(m.other_address(), None, "{m:?}");

    // Like ours, coturn answers CHANGE-REQUEST without an alternate with 420 (its reason
    // phrase explains; it sends no UNKNOWN-ATTRIBUTES).
    let (m, from) = exchange(&socket, coturn.primary, &change_request(2, true, true));
    assert_eq!(from, coturn.primary);
    assert_eq!(m.class, Class::Error, "{m:?}");
    assert_eq!(m.error_code(), Some(420), "{m:?}");
}

#[test]
fn our_client_talks_to_our_server_over_spawn_multi() {
    // No coturn needed: the same checks against our own server, so a regression shows up
    // even where coturn is missing.
    let (node, primary, other) = spawn_server(true);
    let other = other.unwrap();
    let socket = UdpSocket::bind(addr(PRIMARY_IP, 0)).unwrap();
    let me = socket.local_addr().unwrap();
    let (m, from) = exchange(&socket, primary, &Message::binding_request(transaction(1)));
    assert_eq!(from, primary);
    assert_eq!(m.mapped_address(), Some(me));
    assert_eq!(m.other_address(), Some(other));
    for (n, ip, port, expected) in [
        (2, true, true, other),
        (3, true, false, addr(ALTERNATE_IP, primary.port())),
        (4, false, true, addr(PRIMARY_IP, other.port())),
    ] {
        let (m, from) = exchange(&socket, primary, &change_request(n, ip, port));
        assert_eq!(from, expected);
        assert_eq!(m.response_origin(), Some(expected));
    }
    assert!(node.command(|s, _| s.stats()).success_responses >= 4);
}

/// A machine behind a stand-in firewall: inbound datagrams pass only as `filter` allows,
/// judged against the addresses the machine sent to (loopback has no firewall of its own, and
/// the tests must not need root to add one). Records where every datagram that passed came
/// from.
struct Firewalled<M> {
    inner: M,
    filter: Filtering,
    sent: Vec<SocketAddr>,
    passed: Vec<SocketAddr>,
    dropped: Vec<SocketAddr>,
}

impl<M: Machine> Machine for Firewalled<M> {
    type Event = M::Event;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if let Input::Datagram { source, .. } = &input {
            let pass = match self.filter {
                Filtering::EndpointIndependent => true,
                Filtering::AddressDependent => self.sent.iter().any(|a| a.ip() == source.ip()),
                Filtering::AddressAndPortDependent => self.sent.contains(source),
            };
            if !pass {
                self.dropped.push(*source);
                return;
            }
            self.passed.push(*source);
        }
        self.inner.handle_input(now, input);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.inner.poll_transmit()?;
        if let Destination::Udp(to) = t.destination {
            if !self.sent.contains(&to) {
                self.sent.push(to);
            }
        }
        Some(t)
    }

    fn poll_event(&mut self) -> Option<M::Event> {
        self.inner.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
}

/// Run our [`NatProbe`] against `server` from a UDP socket on 127.0.0.1 (bound to port 0, its
/// address handed to the probe, which knows it as its own), behind `filter`; return the
/// socket's address, the probe's event, and where the datagrams that passed and were dropped
/// came from.
fn probe_against(
    server: SocketAddr,
    filter: Filtering,
) -> (SocketAddr, NatEvent, Vec<SocketAddr>, Vec<SocketAddr>) {
    let node = Runtime::spawn(
        RuntimeConfig {
            udp: vec![addr(PRIMARY_IP, 0)],
            tcp: vec![],
        },
        move |now, bound| {
            let cfg = NatProbeConfig::new(server, vec![bound[0]], [0; 32]);
            Firewalled {
                inner: NatProbe::new(cfg, now),
                filter,
                sent: Vec::new(),
                passed: Vec::new(),
                dropped: Vec::new(),
            }
        },
    )
    .unwrap_or_else(|e| panic!("binding a probe socket: {e}"));
    let local = node.udp_addrs()[0];
    // Worst case: three tests of three tries 200 ms apart go unanswered.
    let (event, others) = node.wait_for(Duration::from_secs(5), |_| true);
    let event = event.unwrap_or_else(|| panic!("the probe did not finish: {others:?}"));
    let (passed, dropped) = node.command(|m, _| (m.passed.clone(), m.dropped.clone()));
    (local, event, passed, dropped)
}

#[test]
fn our_nat_probe_classifies_loopback_against_coturn() {
    if !coturn_installed() {
        return;
    }
    let coturn = Coturn::start(true);
    let primary = coturn.primary;
    let alternate = addr(ALTERNATE_IP, primary.port() + 1);

    // Loopback: no NAT (the mapped address is the socket's own) and no filtering (coturn's
    // answer from its other IP and port, to the CHANGE-REQUEST, came in): open.
    let (local, event, passed, dropped) = probe_against(primary, Filtering::EndpointIndependent);
    let NatEvent::Classified(report) = event else {
        panic!("{event:?}");
    };
    assert_eq!(report.nat, NatType::Open, "{report:?}");
    assert_eq!(report.mapped, Some(local));
    assert!(report.filtering_certain);
    assert!(dropped.is_empty());
    assert_eq!(
        passed,
        vec![primary, alternate],
        "Binding, then change IP and port"
    );
    eprintln!("open: classified in {:?}", report.elapsed);

    // The same public socket behind a filter that admits only IPs it sent to: coturn's
    // answer from 127.0.0.2 is kept out, the change-port one from 127.0.0.1:P+1 comes in.
    let (local, event, passed, dropped) = probe_against(primary, Filtering::AddressDependent);
    let NatEvent::Classified(report) = event else {
        panic!("{event:?}");
    };
    assert_eq!(
        report.nat,
        NatType::PublicFiltered(Filtering::AddressDependent),
        "{report:?}"
    );
    assert_eq!(report.mapped, Some(local));
    assert!(dropped.iter().all(|a| *a == alternate), "{dropped:?}");
    assert!(!dropped.is_empty());
    assert!(
        passed.contains(&addr(PRIMARY_IP, primary.port() + 1)),
        "{passed:?}"
    );

    // Admitting only exact addresses it sent to, neither change test gets through.
    let (local, event, _, dropped) = probe_against(primary, Filtering::AddressAndPortDependent);
    let NatEvent::Classified(report) = event else {
        panic!("{event:?}");
    };
    assert_eq!(
        report.nat,
        NatType::PublicFiltered(Filtering::AddressAndPortDependent),
        "{report:?}"
    );
    assert_eq!(report.mapped, Some(local));
    assert!(dropped.contains(&alternate), "{dropped:?}");
    assert!(
        dropped.contains(&addr(PRIMARY_IP, primary.port() + 1)),
        "{dropped:?}"
    );
}

#[test]
fn our_nat_probe_reports_coturn_without_alternate_as_unable() {
    if !coturn_installed() {
        return;
    }
    let coturn = Coturn::start(false);
    let (local, event, _, _) = probe_against(coturn.primary, Filtering::EndpointIndependent);
    assert_eq!(
        event,
        NatEvent::Failed {
            error: natter_core::overlay::NatProbeError::NoOtherAddress,
            mapped: Some(local),
        }
    );
}

/// A full node forced into the super-node role on 127.0.0.1:P (UDP and TCP, and TCP on its
/// fallback ports), with its STUN alternate on 127.0.0.2:P+1 when `alternate`, run by the
/// transport runtime. It knows no other super node.
fn spawn_super_node(alternate: bool) -> (Runtime<Node>, SocketAddr, Option<SocketAddr>) {
    let net = TestNetwork::new(11);
    let identity = net.identity("supernode");
    on_free_ports(3, |p| {
        let listen = addr(PRIMARY_IP, p);
        let other = alternate.then(|| addr(ALTERNATE_IP, p + 1));
        let mut cfg = NodeConfig::new(identity.clone(), [1; 32], TEST_WALL, Instant::now(), listen);
        cfg.role = RolePolicy::Force;
        cfg.stun_alternate = other;
        let bind = common::listens_on(&cfg);
        let rt = common::spawn_node(cfg, bind)?;
        assert!(rt.command(|m, _| m.is_super_node()));
        Ok((rt, listen, other))
    })
}

#[test]
fn a_super_node_answers_turnutils_stunclient() {
    if !coturn_installed() {
        return;
    }
    let (sn, primary, other) = spawn_super_node(true);
    let other = other.unwrap();
    stunclient_runs_rfc5780(primary, other);
    let stats = sn.command(|m, _| m.stats());
    // Binding, change request, and the 1532-byte PADDING request: each answered by the node.
    assert_eq!(stats.stun_answered, 3, "{stats:?}");
    assert_eq!(stats.stun_unmatched, 0, "{stats:?}");
    // (turnutils_stunclient has no option for its local port, nor prints it: that the
    // reflexive address is exactly the client socket's is checked with natdiscovery below.)
}

#[test]
fn a_super_node_passes_turnutils_natdiscovery() {
    if !coturn_installed() {
        return;
    }
    let (sn, primary, other) = spawn_super_node(true);
    let other = other.unwrap();
    natdiscovery_finds_no_nat(primary, other);
    let stats = sn.command(|m, _| m.stats());
    assert_eq!(stats.stun_unmatched, 0, "{stats:?}");
    assert!(stats.stun_answered >= 4, "{stats:?}");
}

#[test]
fn a_super_node_without_alternate_answers_turnutils_stunclient() {
    if !coturn_installed() {
        return;
    }
    let (sn, primary, _) = spawn_super_node(false);
    // A single-address super node with no partner super node has no second IP.
    stunclient_sees_one_address(primary);
    assert_eq!(sn.command(|m, _| m.stats()).stun_answered, 1);

    // The client prints RESPONSE-ORIGIN only in RFC 5780 mode: check it with our codec.
    let socket = UdpSocket::bind(addr(PRIMARY_IP, 0)).unwrap();
    let me = socket.local_addr().unwrap();
    let (m, from) = exchange(&socket, primary, &Message::binding_request(transaction(1)));
    assert_eq!(from, primary);
    assert_eq!(m.mapped_address(), Some(me));
    assert_eq!(m.response_origin(), Some(primary));
    assert_eq!(m.other_address(), None, "{m:?}");
}
