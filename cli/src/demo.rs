//! `natter demo`: a whole (small) network on loopback, step by step, with timings.
//!
//! Today: a login server (TLS 1.3, SQLite) starts with a fresh authority key; three users
//! register and log in, which certifies their devices. Two of them run nodes on real UDP
//! sockets that complete a Noise XX handshake (checking each other's certificates) through an
//! on-path relay that sees only ciphertext, exchange encrypted media frames both ways, measure
//! RTT; then the relay replays what it captured and a stranger sprays garbage: all of it is
//! dropped and counted while the session keeps working. A wrong password and a restart that
//! renews without the password are shown, and a second session is set up with Noise IK (one
//! round trip) using the key learnt in the first. Between, three super nodes start, the users
//! join the overlay through them and search the global index for each other, and a super
//! node dies without anyone losing their links or their records; then alice calls bob by name
//! (a relay channel on bob's super node carries the signalling, hole punching finds the direct
//! path) and they exchange an Opus tone for three seconds; bob switches his speaker mid-call,
//! and, with his microphone hearing his speaker, turns on echo cancellation, noise
//! suppression and gain control. Exits non-zero when any step fails.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter::{Audio, Client, ClientBuilder, Event, Found, LoginError, LoginInfo, Network, Role};
use natter_core::crypto::LocalIdentity;
use natter_core::endpoint::{ConnId, Endpoint, EndpointConfig, EndpointEvent};
use natter_core::rng::Rng;
use natter_core::sansio::Destination;
use natter_media::audio::fifo::{sink, Speaker};
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};
use natter_transport::login::client::DeviceStore;
use natter_transport::{os_seed, wall_clock, UdpNode};

const FRAMES: u32 = 500;
const FRAME_LEN: usize = 160;
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

type Node = UdpNode<Endpoint>;

struct Report {
    rows: Vec<(String, String)>,
    failed: bool,
    step: usize,
}

impl Report {
    fn step(&mut self, what: &str) -> Instant {
        self.step += 1;
        println!("[{}] {what}", self.step);
        Instant::now()
    }

    fn ok(&mut self, started: Instant, detail: &str) {
        println!("    ok   {detail} ({})", ms(started.elapsed()));
    }

    fn fail(&mut self, detail: &str) {
        println!("    FAIL {detail}");
        self.failed = true;
    }

    fn row(&mut self, k: &str, v: String) {
        self.rows.push((k.to_string(), v));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

const DEMO_PASSWORD: &str = "demo passphrase 1";

/// Register `user` and log its device in (its data in `dir/user`), on a client `options`
/// shapes; returns the client and what the login said.
fn enrol(
    network: &Network,
    dir: &Path,
    user: &str,
    options: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Result<(Client, LoginInfo), String> {
    let client = options(Client::builder(network.clone()).data_dir(dir.join(user)))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .register(user, DEMO_PASSWORD)
        .map_err(|e| format!("registration of {user} failed: {e}"))?;
    let li = client
        .login(user, Some(DEMO_PASSWORD))
        .map_err(|e| e.to_string())?;
    Ok((client, li))
}

/// A user's client options: any port on loopback; carol keeps her address from the people she
/// calls (her calls stay relayed).
fn user_options(b: ClientBuilder, user: &str) -> ClientBuilder {
    b.listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .relay_only(user == "carol")
}

/// The identity a session needs, from the device data a login left in `dir/user`.
fn identity(
    network: &natter_transport::login::network::NetworkFile,
    dir: &Path,
    user: &str,
) -> std::io::Result<LocalIdentity> {
    let store = DeviceStore::open(dir.join(user).join("device"))?;
    let (device, _) = store.identity()?;
    let certificate = store
        .certificate()
        .ok_or_else(|| std::io::Error::other(format!("{user} has no certificate")))?;
    let trusted = network
        .trusted()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(LocalIdentity {
        device,
        certificate,
        trusted,
        capabilities: natter_core::crypto::Capabilities::VOICE
            .union(natter_core::crypto::Capabilities::CHAT),
    })
}

/// Wait until a client has two super-node links and a NAT report; describe them.
fn joined(client: &Client) -> Option<(Vec<String>, String)> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut links = Vec::new();
    let mut nat = None;
    while Instant::now() < deadline && (links.len() < 2 || nat.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client
            .events()
            .recv_timeout(left.min(Duration::from_millis(50)))
        {
            Ok(Event::Attached {
                super_node,
                transport,
                rtt,
                ..
            }) => links.push(format!(
                "{super_node} via {}{}",
                crate::node::transport_name(transport),
                rtt.map(|r| format!(" (UDP probe RTT {:.2} ms)", r.as_secs_f64() * 1000.0))
                    .unwrap_or_default()
            )),
            Ok(Event::NatDetected { nat: n, .. }) => nat = Some(n.describe().to_string()),
            _ => {}
        }
    }
    Some((links, nat?)).filter(|(l, _)| l.len() >= 2)
}

/// What one side of the demo call saw.
#[derive(Default)]
struct CallSide {
    connected: Option<Instant>,
    first_media: Option<Instant>,
    path: Option<String>,
    rtt: Option<Duration>,
    jitter_ms: Option<f64>,
    ended: bool,
}

impl CallSide {
    fn on(&mut self, e: &Event) {
        match e {
            Event::CallConnected { .. } => self.connected = Some(Instant::now()),
            Event::FirstMedia { .. } => {
                self.first_media.get_or_insert_with(Instant::now);
            }
            Event::CallPath { path, .. } => self.path = Some(path.kind.name().to_string()),
            Event::CallStats { stats, .. } => {
                self.rtt = stats.rtt.or(self.rtt);
                if stats.frames_in > 0 {
                    self.jitter_ms = Some(stats.jitter_ms);
                }
            }
            Event::CallEnded { .. } => self.ended = true,
            _ => {}
        }
    }
}

/// The speech recording the demo plays through its call (20 s, 16 kHz mono, espeak-ng).
const SPEECH: &[u8] = include_bytes!("../../media/testdata/speech.wav");

/// `names.0` (on `a`) calls `names.1` (on `b`) through the overlay and they talk for `secs`:
/// each plays the speech recording; what each heard is saved in the system's temporary
/// `names.0` (on `a`) calls `names.1` (on `b`) through the overlay and they talk for `secs`:
/// each plays the speech recording; what each heard is saved in the system's temporary
/// directory. Rows are labelled `label`.
fn call_step(
    r: &mut Report,
    t: Instant,
    (a, b): (&Client, &Client),
    (caller, callee): (&str, &str),
    label: &str,
    secs: u64,
) {
    let dir = std::env::temp_dir().join("natter-demo");
    let speech = dir.join("speech.wav");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&speech, SPEECH)) {
        r.fail(&format!("writing {}: {e}", speech.display()));
        return;
    }
    let audio = |name: &str| Audio::wav(&speech, Some(dir.join(format!("{name}-heard.wav"))));
    let (mut sa, mut sb) = (CallSide::default(), CallSide::default());
    let dialled = Instant::now();
    let call = match a.call(callee, audio(caller)) {
        Ok(c) => c,
        Err(e) => {
            r.fail(&format!("calling {callee}: {e}"));
            return;
        }
    };
    let mut answered = None;
    let deadline = Instant::now() + STEP_TIMEOUT + Duration::from_secs(5);
    let mut hung_up = false;
    while Instant::now() < deadline && !(sa.ended && sb.ended) {
        while let Ok(e) = a.events().try_recv() {
            sa.on(&e);
        }
        while let Ok(e) = b.events().try_recv() {
            if let Event::IncomingCall { call, .. } = &e {
                let _ = call.answer(audio(callee));
                answered = Some(call.clone());
            }
            sb.on(&e);
        }
        if let (false, Some(t0)) = (hung_up, sa.connected) {
            if t0.elapsed() >= Duration::from_secs(secs) {
                hung_up = true;
                let _ = call.hang_up();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (Some(connected), true, true, Some(answered)) =
        (sa.connected, sa.ended, sb.ended, answered)
    else {
        r.fail("the call did not connect and end cleanly");
        return;
    };
    let (Ok(qa), Ok(qb)) = (call.stats(), answered.stats()) else {
        r.fail("the call's statistics are gone");
        return;
    };
    if qa.frames_in == 0 || qb.frames_in == 0 {
        r.fail("media did not flow both ways");
        return;
    }
    let path = sa.path.clone().unwrap_or_else(|| "-".into());
    r.ok(
        t,
        &format!(
            "connected, path {path}; {} frames reached {caller}, {} reached {callee}",
            qa.frames_in, qb.frames_in
        ),
    );
    r.row(
        &format!("{label} setup (dial to connected)"),
        ms(connected - dialled),
    );
    if let Some(m) = sa.first_media {
        r.row(
            &format!("{label}: dial to first media at {caller}"),
            ms(m - dialled),
        );
    }
    r.row(&format!("{label} path ({caller}'s choice)"), path);
    if let Some(rtt) = sa.rtt {
        r.row(&format!("{label} RTT"), ms(rtt));
    }
    if let (Some(ja), Some(jb)) = (sa.jitter_ms, sb.jitter_ms) {
        r.row(
            &format!("{label} jitter ({caller} / {callee})"),
            format!("{ja:.1} ms / {jb:.1} ms"),
        );
    }
    r.row(
        &format!("{label} media frames ({callee}->{caller} / {caller}->{callee})"),
        format!("{} / {}", qa.frames_in, qb.frames_in),
    );
    if let (Some(a), Some(b)) = (qa.audio, qb.audio) {
        r.row(
            &format!("{label} loss after recovery ({caller} / {callee})"),
            format!(
                "{:.1} % / {:.1} %",
                a.loss_after_recovery * 100.0,
                b.loss_after_recovery * 100.0
            ),
        );
        r.row(
            &format!("{label} jitter buffer ({caller} / {callee})"),
            format!(
                "{:.0} ms / {:.0} ms",
                a.jitter_buffer_ms, b.jitter_buffer_ms
            ),
        );
        r.row(
            &format!("{label} bitrate received ({caller} / {callee})"),
            format!("{:.1} / {:.1} kbit/s", a.bitrate_kbps, b.bitrate_kbps),
        );
        r.row(
            &format!("{label} estimated MOS ({caller} / {callee})"),
            format!("{:.2} / {:.2}", a.mos.unwrap_or(0.0), b.mos.unwrap_or(0.0)),
        );
    }
    println!(
        "    what each side heard: {} and {}",
        dir.join(format!("{caller}-heard.wav")).display(),
        dir.join(format!("{callee}-heard.wav")).display()
    );
}

fn spawn(id: LocalIdentity, seed: [u8; 32]) -> std::io::Result<Node> {
    UdpNode::spawn(
        "127.0.0.1:0".parse().expect("literal address"),
        move |now| Endpoint::new(EndpointConfig::new(id, seed, wall_clock(), now)),
    )
}

/// An on-path UDP relay between one client and one server that records every datagram it
/// forwards. It sees only ciphertext.
struct Relay {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    socket: UdpSocket,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let addr = socket.local_addr()?;
        let captured = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sock, cap, st) = (socket.try_clone()?, captured.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut client = None;
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    cap.lock()
                        .expect("relay capture lock")
                        .push(buf[..n].to_vec());
                    server
                };
                let _ = sock.send_to(&buf[..n], to);
            }
        });
        Ok(Self {
            addr,
            captured,
            stop,
            socket,
            thread: Some(thread),
        })
    }

    fn replay_to_server(&self, server: SocketAddr) -> usize {
        let packets = self.captured.lock().expect("relay capture lock").clone();
        for (i, p) in packets.iter().enumerate() {
            let _ = self.socket.send_to(p, server);
            pace(i);
        }
        packets.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Search from `node` for each `(user, should_exist)`, print the outcomes and record rows.
/// False (and a failed step) when an outcome is not the expected one.
/// Search from `client` for each `(user, should_exist)`, print the outcomes and record rows.
/// False (and a failed step) when an outcome is not the expected one.
fn search_step(r: &mut Report, client: &Client, searches: &[(&str, bool)]) -> bool {
    for (user, exists) in searches {
        let Ok(id) = client.search(user) else {
            r.fail(&format!("{user} is not a user name, or the client stopped"));
            return false;
        };
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut found = None;
        while let Ok(e) = client
            .events()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Event::SearchResult {
                search,
                user,
                outcome,
            } = e
            {
                if search == id {
                    found = Some((user, outcome));
                    break;
                }
            }
        }
        let Some((name, outcome)) = found else {
            r.fail(&format!("no answer to the search for {user}"));
            return false;
        };
        println!("    {}", crate::node::describe_search(&name, &outcome));
        let ok = match &outcome.found {
            Found::Devices(records) => *exists && !records.is_empty(),
            Found::NotFound => !*exists,
            _ => false,
        };
        if !ok {
            r.fail(&format!("unexpected answer for {user}"));
            return false;
        }
        let kind = if *exists { "found" } else { "not found" };
        let label = format!("Search {user} ({kind})");
        r.row(
            &label,
            format!("{} ({} hops)", ms(outcome.took), outcome.hops),
        );
    }
    true
}

/// the demo should show what the endpoint does with every packet, not what the kernel drops.
fn pace(i: usize) {
    if i % 32 == 31 {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn connected(node: &Node) -> Option<(ConnId, Box<natter_core::crypto::PeerInfo>)> {
    match node.wait_for(STEP_TIMEOUT, |e| {
        matches!(e, EndpointEvent::Connected { .. })
    }) {
        (Some(EndpointEvent::Connected { conn, peer, .. }), _) => Some((conn, peer)),
        _ => None,
    }
}

fn receive_media(node: &Node, count: u32) -> u32 {
    let mut got = 0;
    while got < count {
        match node.wait_for(STEP_TIMEOUT, |e| matches!(e, EndpointEvent::Media { .. })) {
            (Some(_), _) => got += 1,
            (None, _) => break,
        }
    }
    got
}

/// Run the demo; returns the process exit code.
pub fn run() -> i32 {
    match run_inner() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("natter demo: {e}");
            2
        }
    }
}

fn run_inner() -> std::io::Result<bool> {
    let mut r = Report {
        rows: Vec::new(),
        failed: false,
        step: 0,
    };
    println!("Natter demo: a network on loopback (127.0.0.1), no configuration needed.\n");
    let total = Instant::now();
    // The sound devices of the audio-device step, set up while this process has one thread
    // (ALSA reads ALSA_CONFIG_PATH at its first use, and setting the environment is safe only
    // before other threads start). They live as long as the demo.
    let sound = SoundDevices::new()?;

    let t = r.step("Start a login server: TLS 1.3, SQLite, fresh authority key, network file");
    let mut rng = Rng::from_seed_bytes(os_seed()?);
    let workdir = tempfile::tempdir()?;
    let server = LoginServerHandle::start(LoginServerOptions::new(
        workdir.path().join("login-server"),
        "127.0.0.1:0".parse().expect("literal address"),
    ))
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let net = server.network().clone();
    r.ok(
        t,
        &format!(
            "listening on {}, certificate pinned {}...",
            server.local_addr(),
            &net.login.tls_sha256.clone().unwrap_or_default()[..16]
        ),
    );
    // The super nodes bind port 0 when they start; the network file then lists them.
    let mut network = Network::from_file(server.network_path())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = workdir.path();

    let Some((clients, super_nodes, sn_addrs)) = users_and_super_nodes(&mut r, &mut network, dir)?
    else {
        return Ok(false);
    };
    index_and_calls(&mut r, &clients, super_nodes, &sn_addrs, &sound);
    drop(clients);
    if !session_layer(&mut r, &net, dir, &mut rng)? {
        return Ok(false);
    }
    server.shutdown();

    println!("\nSummary");
    let width = r.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &r.rows {
        println!("  {k:<width$}  {v}");
    }
    println!("  {:<width$}  {}", "Total", ms(total.elapsed()));
    if r.failed {
        println!("\nRESULT: FAILED");
    } else {
        println!("\nRESULT: all steps passed");
    }
    Ok(!r.failed)
}

/// carol's second device logs in; her first lists both, changes the password revoking the
/// other, and the other can no longer log in.
fn account_step(carol: &Client, laptop: &Client) -> Result<String, String> {
    laptop
        .login("carol", Some(DEMO_PASSWORD))
        .map_err(|e| format!("the laptop's login: {e}"))?;
    let before = carol
        .devices()
        .map_err(|e| format!("listing devices: {e}"))?;
    if before.len() != 2 || before.iter().filter(|d| d.this_device).count() != 1 {
        return Err(format!(
            "expected 2 devices, one of them this one: {before:?}"
        ));
    }
    carol
        .change_password(DEMO_PASSWORD, NEW_CAROL_PASSWORD, true)
        .map_err(|e| format!("changing the password: {e}"))?;
    let after = carol
        .devices()
        .map_err(|e| format!("listing devices: {e}"))?;
    let revoked = after.iter().filter(|d| d.revoked.is_some()).count();
    match laptop.login("carol", Some(NEW_CAROL_PASSWORD)) {
        Err(LoginError::Revoked) if revoked == 1 => Ok(format!(
            "2 devices listed; password changed; laptop {} revoked (its login: \"device revoked\")",
            before
                .iter()
                .find(|d| !d.this_device)
                .map(|d| d.device.to_string())
                .unwrap_or_default()
        )),
        other => Err(format!(
            "after the change: {revoked} revoked, the laptop's login -> {other:?}"
        )),
    }
}

/// bob's phone keeps his credentials in its keychain: a client with no data directory is made
/// from their bytes and logs in in the background without the password; a login to a server
/// that never answers is cancelled.
fn keychain_step(network: &Network, dir: &Path, bob: &Client) -> Result<String, String> {
    let keychain = bob
        .credentials()
        .map_err(|e| format!("exporting: {e}"))?
        .to_bytes();
    let credentials =
        natter::Credentials::from_bytes(&keychain).map_err(|e| format!("importing: {e}"))?;
    let phone = Client::builder(network.clone())
        .without_data_dir()
        .credentials(credentials)
        .build()
        .map_err(|e| e.to_string())?;
    let finished = |client: &Client, want: natter::RequestId| loop {
        match client.events().recv_timeout(Duration::from_secs(20)) {
            Ok(Event::LoginFinished {
                request, result, ..
            }) if request == want => break Ok(result),
            Ok(_) => {}
            Err(e) => break Err(format!("no answer: {e}")),
        }
    };
    let request = phone
        .begin_login("bob", None)
        .map_err(|e| format!("the phone's login: {e}"))?;
    let info = finished(&phone, request)?.map_err(|e| format!("the phone's login: {e}"))?;
    if !info.renewed {
        return Err("the phone's login needed the password".into());
    }
    // A login server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let path = dir.join("silent-network.toml");
    network.save(&path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let silent_addr = silent.local_addr().map_err(|e| e.to_string())?;
    let stuck =
        Network::from_toml_str(&text.replace(network.login_server(), &silent_addr.to_string()))
            .map_err(|e| e.to_string())?;
    let stuck = Client::builder(stuck)
        .without_data_dir()
        .build()
        .map_err(|e| e.to_string())?;
    let request = stuck
        .begin_login("bob", Some(DEMO_PASSWORD))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    stuck.cancel_request(request);
    match finished(&stuck, request)? {
        Err(e) if matches!(*e, LoginError::Cancelled) => Ok(format!(
            "device {} from {} bytes of credentials, renewed in {} without the password, nothing on disk; a login stuck on a silent server cancelled in {}",
            info.device,
            keychain.len(),
            ms(info.took),
            ms(asked.elapsed())
        )),
        other => Err(format!("the stuck login after a cancel: {other:?}")),
    }
}

/// alice asks bob to be her contact; bob's client finds the request at its next sync and
/// accepts; alice hears of it. alice's buddy list (bob with a nickname in a group, mallory
/// blocked) is backed up, and her new tablet gets it back from the network with the password
/// alone.
fn buddy_list_step(
    network: &Network,
    dir: &Path,
    alice: &Client,
    bob: &Client,
) -> Result<String, String> {
    let edit = |r: Result<bool, natter::ContactsError>| r.map_err(|e| format!("editing: {e}"));
    let sync = |c: &Client| c.sync_contacts(None).map_err(|e| format!("syncing: {e}"));
    edit(alice.add_contact("bob", "hi Bob, it's Alice"))?;
    edit(alice.set_nickname("bob", "Bob B."))?;
    edit(alice.set_group("bob", "friends", true))?;
    edit(alice.block("mallory", true))?;
    let synced = sync(alice)?;
    sync(bob)?;
    let note = bob
        .contact("alice")
        .and_then(|c| c.request)
        .ok_or("bob found no request from alice")?;
    edit(bob.add_contact("alice", ""))?;
    sync(bob)?;
    sync(alice)?;
    let accepted = std::iter::from_fn(|| alice.events().try_recv().ok())
        .any(|e| matches!(e, Event::ContactAccepted { ref user } if user.as_str() == "bob"));
    if !accepted {
        return Err("alice was not told that bob accepted".into());
    }
    let tablet = Client::builder(network.clone())
        .data_dir(dir.join("alice-tablet"))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    tablet
        .login("alice", Some(DEMO_PASSWORD))
        .map_err(|e| format!("the tablet's login: {e}"))?;
    let took = started.elapsed();
    let (mine, theirs) = (alice.contacts(), tablet.contacts());
    if mine != theirs {
        return Err(format!("the tablet has {theirs:?}, alice {mine:?}"));
    }
    let shown = theirs.iter().find(|c| c.user.as_str() == "bob");
    Ok(format!(
        "bob got the request ({note:?}) and accepted; {} entries backed up as version {} (encrypted, signed); the tablet's login with the password restored them in {} (bob as \"{}\" in {:?}, mallory blocked)",
        theirs.len(),
        synced.version,
        ms(took),
        shown.map_or("", |b| b.nickname.as_str()),
        shown.map_or(&[][..], |b| &b.groups[..]),
    ))
}

/// carol's password after the account step.
const NEW_CAROL_PASSWORD: &str = "carol's new password";

/// Steps 2-8: the users register and log in, a wrong password is refused, carol's account
/// steps (devices, a password change revoking her laptop), bob's credentials from a keychain
/// and a cancelled login, alice's buddy list restored on a new tablet, three super nodes
/// start (each on a port the system picks, added to the network file), the users join.
/// `None` when a step failed and the demo cannot go on.
#[allow(clippy::type_complexity)]
fn users_and_super_nodes(
    r: &mut Report,
    network: &mut Network,
    dir: &Path,
) -> std::io::Result<Option<(Vec<Client>, Vec<Client>, Vec<SocketAddr>)>> {
    let t =
        r.step("Register alice, bob and carol and log their devices in (Argon2id, certificates)");
    let mut clients = Vec::new();
    let mut devices = Vec::new();
    for user in ["alice", "bob", "carol"] {
        match enrol(network, dir, user, |b| user_options(b, user)) {
            Ok((client, li)) => {
                r.row(&format!("Login time ({user})"), ms(li.took));
                devices.push(li.device);
                clients.push(client);
            }
            Err(e) => {
                r.fail(&format!("{user}: {e}"));
                return Ok(None);
            }
        }
    }
    r.ok(
        t,
        &format!(
            "alice = device {}, bob = device {}, carol = device {}",
            devices[0], devices[1], devices[2]
        ),
    );

    let t = r.step("A wrong password is refused; a restart renews without the password");
    // carol types a wrong password on another device; alice's stored certificate renews.
    let carol_elsewhere = Client::builder(network.clone())
        .data_dir(dir.join("carol-laptop"))
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let wrong = carol_elsewhere.login("carol", Some("not her password"));
    let renewed = clients[0].login("alice", None);
    match (wrong, renewed) {
        (Err(LoginError::WrongPassword), Ok(li)) if li.renewed => {
            r.ok(t, "carol: wrong password; alice: certificate renewed");
            r.row("Renewal without password", ms(li.took));
        }
        (w, n) => r.fail(&format!(
            "unexpected: wrong password -> {w:?}, renewal -> {n:?}"
        )),
    }
    let t = r.step(
        "carol logs her laptop in too, then fears her password leaked: a new one, the laptop revoked",
    );
    match account_step(&clients[2], &carol_elsewhere) {
        Ok(detail) => r.ok(t, &detail),
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "bob's phone keeps his credentials in its keychain: no data directory, a login in the background; a stuck login cancelled",
    );
    match keychain_step(network, dir, &clients[1]) {
        Ok(detail) => r.ok(t, &detail),
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "alice asks bob to be her contact, bob accepts; her new tablet gets her buddy list back with the password alone",
    );
    match buddy_list_step(network, dir, &clients[0], &clients[1]) {
        Ok(detail) => r.ok(t, &detail),
        Err(e) => r.fail(&e),
    }
    let t = r.step("Start 3 super nodes: STUN with an RFC 5780 alternate on 127.0.0.2, TCP, fallback and TLS ports");
    let mut super_nodes = Vec::new();
    let mut sn_addrs = Vec::new();
    for i in 0..3 {
        // Port 0: the system picks the port, the fallback ports and the STUN server's second
        // port follow it (bound together, retried when one of them is taken), and so does the
        // RFC 5780 alternate on 127.0.0.2. Each one knows the super nodes started before it.
        let options = |b: ClientBuilder| {
            b.listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .role(Role::SuperNode)
                .stun_alternate(SocketAddr::from(([127, 0, 0, 2], 0)))
        };
        let started = enrol(network, dir, &format!("supernode{i}"), options)
            .and_then(|(sn, _)| sn.start().map(|()| sn).map_err(|e| e.to_string()))
            .and_then(|sn| {
                let addr = sn.state().local_addr.ok_or("no listen address")?;
                Ok((sn, addr))
            });
        match started {
            Ok((sn, addr)) => {
                network.add_bootstrap(addr);
                sn_addrs.push(addr);
                super_nodes.push(sn);
            }
            Err(e) => {
                r.fail(&format!("super node {i}: {e}"));
                return Ok(None);
            }
        }
    }
    r.ok(
        t,
        &format!(
            "super nodes on {}",
            sn_addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    // The users' clients were made before the super nodes existed: made again from the
    // network that lists them (their certificates renew without the password).
    let mut rebuilt = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let client = user_options(
            Client::builder(network.clone()).data_dir(dir.join(user)),
            user,
        )
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Err(e) = client.login(user, None) {
            r.fail(&format!("{user}: {e}"));
            return Ok(None);
        }
        rebuilt.push(client);
    }
    let clients = rebuilt;

    let t = r
        .step("alice, bob and carol join: UDP probes, TCP links to the two fastest, NAT detection");
    for (client, user) in clients.iter().zip(["alice", "bob", "carol"]) {
        let started = Instant::now();
        if let Err(e) = client.start() {
            r.fail(&format!("{user}: {e}"));
            return Ok(None);
        }
        match joined(client) {
            Some((links, nat)) => {
                let took = started.elapsed();
                println!(
                    "    {user}: attached to {} and {}; NAT: {nat}",
                    links[0], links[1]
                );
                r.row(&format!("Attach time ({user})"), ms(took));
            }
            None => {
                r.fail(&format!("{user} did not attach to two super nodes"));
                return Ok(None);
            }
        }
    }
    r.ok(t, "every user has two super-node links");

    Ok(Some((clients, super_nodes, sn_addrs)))
}

/// Steps 7-11: searching the global index, a super node dying and its clients moving, and
/// two calls (direct, then relayed).
fn index_and_calls(
    r: &mut Report,
    clients: &[Client],
    mut super_nodes: Vec<Client>,
    sn_addrs: &[SocketAddr],
    sound: &SoundDevices,
) {
    let t = r.step(
        "Search the global index: alice looks up bob and carol (signed, verified records) and a name nobody has",
    );
    let deadline = Instant::now() + STEP_TIMEOUT;
    while super_nodes.iter().any(|s| {
        s.status()
            .is_none_or(|st| st.super_nodes_known < super_nodes.len())
    }) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if search_step(
        r,
        &clients[0],
        &[("bob", true), ("carol", true), ("nobody", false)],
    ) {
        r.ok(
            t,
            "found both, with hops and time; a definite \"not found\" for the stranger",
        );
    }

    let t = r.step("A super node dies: its clients move to the others");
    let victim = 0;
    let victim_addr = sn_addrs[victim];
    // Measured from the moment it starts going down (a clean stop takes a few ms).
    let killed = Instant::now();
    drop(super_nodes.remove(victim));
    let mut moved = true;
    for (i, c) in clients.iter().enumerate() {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let a = c.state().super_nodes;
            if a.len() == 2 && !a.contains(&victim_addr) {
                break;
            }
            if Instant::now() > deadline {
                r.fail(&format!("user {i} still not re-attached"));
                moved = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if moved {
        r.ok(
            t,
            &format!("{victim_addr} gone; every user attached to the two others"),
        );
        r.row("Fail-over after a super node died", ms(killed.elapsed()));
    }
    let t = r.step("With a super node gone, carol still finds alice (the records are replicated)");
    if search_step(r, &clients[2], &[("alice", true)]) {
        r.ok(t, "found through the surviving replicas");
    }
    let t = r.step(
        "alice calls bob: search, a relay channel on bob's super node, IK through it, ring, answer, \
         hole punching, an Opus tone both ways for 3 s, hang up",
    );
    call_step(
        r,
        t,
        (&clients[0], &clients[1]),
        ("alice", "bob"),
        "Call",
        3,
    );
    let t = r.step(
        "carol, who keeps her address private (relay only), calls alice: the call stays on the relay",
    );
    call_step(
        r,
        t,
        (&clients[2], &clients[0]),
        ("carol", "alice"),
        "Relayed call",
        2,
    );
    let t = r.step(
        "bob switches his speaker mid-call: two sound devices (ALSA, playing into pipes at a speaker's pace), alice's tone moves from one to the other",
    );
    match audio_device_step(&clients[0], &clients[1], sound) {
        Ok((detail, switch)) => {
            r.ok(t, &detail);
            r.row("Speaker switch mid-call", ms(switch));
        }
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "bob sets \"do not disturb\", then \"invisible\": alice's call is refused busy; carol finds him offline, yet he calls",
    );
    match presence_step(&clients[0], &clients[1], &clients[2]) {
        Ok(detail) => r.ok(t, &detail),
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "bob turns invisible, then back online: alice, his contact, sees each change pushed by the super nodes",
    );
    match contact_presence_step(&clients[0], &clients[1]) {
        Ok((detail, slowest)) => {
            r.ok(t, &detail);
            r.row("Presence change reaching a contact", ms(slowest));
        }
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "carol asks alice to be her contact: alice's device, poked through her super node, shows the request at once (no waiting for its 10-minute pull); alice accepts, and carol hears it the same way",
    );
    match request_step(&clients[0], &clients[2]) {
        Ok((detail, request, acceptance)) => {
            r.ok(t, &detail);
            r.row("Contact request reaching an online device", ms(request));
            r.row("Acceptance reaching the requester", ms(acceptance));
        }
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "alice writes to bob (Olm end-to-end encryption, through bob's super node); bob answers: each message arrives once and comes back delivered",
    );
    match chat_step(&clients[0], &clients[1]) {
        Ok((detail, arrived, delivered)) => {
            r.ok(t, &detail);
            r.row("Chat message reaching an online device", ms(arrived));
            r.row("Its delivery receipt back at the sender", ms(delivered));
        }
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "bob goes offline; alice writes to him: the sealed message waits in bob's mailbox on the super nodes after his index key; bob comes back and gets it at once",
    );
    match offline_step(&clients[0], &clients[1], &super_nodes) {
        Ok((detail, arrived)) => {
            r.ok(t, &detail);
            r.row("Mailbox message reaching a device back online", ms(arrived));
        }
        Err(e) => r.fail(&e),
    }
    let t = r.step(
        "bob's microphone hears his speaker (a synthetic room: 100 ms, 300 ms of reverberation): alice hears herself, until bob turns on echo cancellation, noise suppression and gain control",
    );
    match echo_step(&clients[0], &clients[1]) {
        Ok((detail, erle)) => {
            r.ok(t, &detail);
            r.row(
                "Echo of alice removed by bob's processing",
                format!("{erle:.1} dB"),
            );
        }
        Err(e) => r.fail(&e),
    }
}

/// The devices of `user` a search from `from` finds online (`None`: no answer).
fn online_devices(from: &Client, user: &str) -> Option<usize> {
    let id = from.search(user).ok()?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while let Ok(e) = from
        .events()
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let Event::SearchResult {
            search, outcome, ..
        } = e
        {
            if search == id {
                return Some(outcome.online());
            }
        }
    }
    None
}

/// bob sets "do not disturb": alice's call is refused busy without ringing; then
/// "invisible": carol's search finds him offline, yet he calls alice; then online again.
fn presence_step(alice: &Client, bob: &Client, carol: &Client) -> Result<String, String> {
    use natter::Availability;
    let set = |a, mood| bob.set_presence(a, mood).map_err(|e| e.to_string());
    set(Availability::DoNotDisturb, "in a meeting")?;
    let call = alice
        .call("bob", Audio::silent())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let ended = loop {
        match alice
            .events()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Event::CallEnded { call: c, reason }) if c == call.id() => break reason,
            Ok(_) => {}
            Err(_) => return Err("alice's call to bob did not end".into()),
        }
    };
    if ended != natter::EndReason::Busy {
        return Err(format!("alice's call ended {ended}, not busy"));
    }
    set(Availability::Invisible, "")?;
    let mut hidden = false;
    while Instant::now() < deadline && !hidden {
        hidden = online_devices(carol, "bob") == Some(0);
    }
    if !hidden {
        return Err("carol still finds bob online".into());
    }
    let out = bob
        .call("alice", Audio::silent())
        .map_err(|e| e.to_string())?;
    let rang = loop {
        match alice
            .events()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Event::IncomingCall { from, .. }) if from.as_str() == "bob" => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = out.hang_up();
    // Both ends settle before the next step calls.
    for c in [bob, alice] {
        while let Ok(e) = c
            .events()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if matches!(e, Event::CallEnded { .. }) {
                break;
            }
        }
    }
    set(Availability::Online, "")?;
    if !rang {
        return Err("invisible bob's call did not ring at alice".into());
    }
    // Found online again once his fresh record is in the index (before the next step calls).
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut found = false;
    while Instant::now() < deadline && !found {
        found = online_devices(alice, "bob") == Some(1);
    }
    if !found {
        return Err("bob, online again, is not found online".into());
    }
    Ok(format!(
        "alice's call ended \"{ended}\" without ringing; invisible bob: carol's search says offline, yet his call to alice rang; online again"
    ))
}

/// bob turns invisible, then online again: alice (his contact since the buddy-list step)
/// hears each change, pushed. Returns the details and the slower of the two.
fn contact_presence_step(alice: &Client, bob: &Client) -> Result<(String, Duration), String> {
    use natter::Availability;
    let mut took = Vec::new();
    for (set, shown) in [
        (Availability::Invisible, Availability::Offline),
        (Availability::Online, Availability::Online),
    ] {
        let started = Instant::now();
        bob.set_presence(set, "").map_err(|e| e.to_string())?;
        let deadline = started + STEP_TIMEOUT;
        loop {
            match alice
                .events()
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Event::ContactPresence { user, availability })
                    if user.as_str() == "bob" && availability == shown =>
                {
                    break
                }
                Ok(_) => {}
                Err(_) => return Err(format!("alice never saw bob {}", shown.name())),
            }
        }
        took.push(started.elapsed());
    }
    let listed = alice.contact("bob").map(|c| c.availability);
    if listed != Some(Availability::Online) {
        return Err(format!("alice's list shows bob {listed:?}"));
    }
    Ok((
        format!(
            "alice saw bob offline after {} and online again after {} (no polling: bob's super node pushes to the replicas, which push to alice's)",
            ms(took[0]),
            ms(took[1])
        ),
        took[0].max(took[1]),
    ))
}

/// carol asks alice to be her contact, alice accepts: each side's device is poked by the
/// other's through its super node and syncs with the login server at once. Returns the
/// details and how long the request and the acceptance took.
fn request_step(alice: &Client, carol: &Client) -> Result<(String, Duration, Duration), String> {
    let edit = |r: Result<bool, natter::ContactsError>| r.map_err(|e| format!("editing: {e}"));
    let wait = wait_event;
    let started = Instant::now();
    edit(carol.add_contact("alice", "hi Alice, it's Carol"))?;
    wait(
        alice,
        "carol's request",
        &|e| matches!(e, Event::ContactRequest { from, .. } if from.as_str() == "carol"),
    )?;
    let request = started.elapsed();
    let started = Instant::now();
    edit(alice.add_contact("carol", ""))?;
    wait(
        carol,
        "alice's acceptance",
        &|e| matches!(e, Event::ContactAccepted { user } if user.as_str() == "alice"),
    )?;
    let acceptance = started.elapsed();
    Ok((
        format!(
            "the request reached alice after {}, her acceptance carol after {} (0.3 s of each is the edit delay that batches edits)",
            ms(request),
            ms(acceptance)
        ),
        request,
        acceptance,
    ))
}

/// Wait for the first event of `c` that `want` takes (others are skipped), at most
/// [`STEP_TIMEOUT`].
fn wait_event(c: &Client, what: &str, want: &dyn Fn(&Event) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match c
            .events()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(e) if want(&e) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Err(format!("{what} never came")),
        }
    }
}

/// alice writes to bob and bob answers: each message arrives once, comes back delivered,
/// and both histories show the same conversation in the same order. Returns the details,
/// how long the message took to arrive and its receipt to come back.
fn chat_step(alice: &Client, bob: &Client) -> Result<(String, Duration, Duration), String> {
    let started = Instant::now();
    let sent = alice
        .send_message("bob", "Hi Bob! Dinner at 8?")
        .map_err(|e| format!("writing: {e}"))?;
    wait_event(
        bob,
        "alice's message",
        &|e| matches!(e, Event::MessageReceived { message } if message.id == sent.id),
    )?;
    let arrived = started.elapsed();
    wait_event(alice, "bob's receipt", &|e| {
        matches!(e, Event::MessageStatus { id, status: natter::MessageStatus::Delivered, .. }
            if *id == sent.id)
    })?;
    let delivered = started.elapsed();
    let answer = bob
        .send_message("alice", "Yes, see you then.")
        .map_err(|e| format!("answering: {e}"))?;
    wait_event(
        alice,
        "bob's answer",
        &|e| matches!(e, Event::MessageReceived { message } if message.id == answer.id),
    )?;
    let texts = |c: &Client, with: &str| -> Result<Vec<String>, String> {
        Ok(c.history(with, None, 10)
            .map_err(|e| format!("history: {e}"))?
            .into_iter()
            .map(|m| m.text)
            .collect())
    };
    let (a, b) = (texts(alice, "bob")?, texts(bob, "alice")?);
    if a != b || a.len() != 2 {
        return Err(format!("the histories differ: alice {a:?}, bob {b:?}"));
    }
    Ok((
        format!(
            "alice's message reached bob after {}, his receipt (sealed end to end) came back after {}; both histories hold {a:?}, in SQLite",
            ms(arrived),
            ms(delivered)
        ),
        arrived,
        delivered,
    ))
}

/// Messages the super nodes keep in mailboxes now.
fn mailbox_messages(super_nodes: &[Client]) -> usize {
    super_nodes
        .iter()
        .filter_map(|s| s.status().and_then(|st| st.mailbox))
        .map(|m| m.messages)
        .sum()
}

/// bob stops; alice writes to him; the message goes to bob's mailbox; bob starts again and
/// gets it. Returns the details and how long after bob's start the message arrived.
fn offline_step(
    alice: &Client,
    bob: &Client,
    super_nodes: &[Client],
) -> Result<(String, Duration), String> {
    bob.stop().map_err(|e| format!("stopping bob: {e}"))?;
    let sent = alice
        .send_message("bob", "Call me when you're back")
        .map_err(|e| format!("writing: {e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while mailbox_messages(super_nodes) == 0 {
        if Instant::now() > deadline {
            return Err("the message never reached a mailbox".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept = mailbox_messages(super_nodes);
    // Presence records are numbered by the second: start in the next one.
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    bob.start().map_err(|e| format!("starting bob: {e}"))?;
    wait_event(
        bob,
        "the message from the mailbox",
        &|e| matches!(e, Event::MessageReceived { message } if message.id == sent.id),
    )?;
    let arrived = started.elapsed();
    wait_event(alice, "bob's receipt", &|e| {
        matches!(e, Event::MessageStatus { id, status: natter::MessageStatus::Delivered, .. }
            if *id == sent.id)
    })?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while mailbox_messages(super_nodes) > 0 {
        if Instant::now() > deadline {
            return Err("the mailboxes kept the delivered message".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((
        format!(
            "kept by {kept} super node(s) while bob was away; it reached bob {} after he started (attaching included), his receipt came back to alice, and the mailboxes let it go",
            ms(arrived)
        ),
        arrived,
    ))
}

/// alice talks to bob, whose "microphone" is what his "speaker" plays, through a synthetic
/// room (application PCM both ways: bob's loop is this function); bob turns his voice
/// processing on mid-call. Returns the details and how much quieter alice's echo became.
fn echo_step(alice: &Client, bob: &Client) -> Result<(String, f64), String> {
    use natter_media::audio::synth::{speechlike, EchoPath, Room};
    let (hang_up, incoming) = ring(alice, bob, Audio::app())?;
    let call = hang_up.call.clone();
    incoming.answer(Audio::app()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while call.stats().map(|s| s.state) != Ok(natter::CallState::Active) {
        if Instant::now() > deadline {
            return Err("the call did not connect".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let speech = speechlike(16_000, 4.0);
    let voice = speech.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / speech.len() as f64;
    let mut room = EchoPath::new(16_000, &Room::default(), 1);
    let (mut played, mut heard) = ([0i16; 320], [0i16; 320]);
    let mut next = Instant::now();
    // alice talks for `frames` frames; the echo she hears over the last 1.5 s, in dB of her
    // own voice.
    let mut talk = |frames: usize| -> Result<f64, String> {
        let mut echo = (0.0, 0usize);
        for i in 0..frames {
            let at = (i * 320) % (speech.len() - 320);
            call.push_pcm(&speech[at..at + 320])
                .map_err(|e| e.to_string())?;
            let got = incoming.pull_pcm(&mut played).map_err(|e| e.to_string())?;
            played[got..].fill(0);
            incoming
                .push_pcm(&room.echo(&played))
                .map_err(|e| e.to_string())?;
            let got = call.pull_pcm(&mut heard).map_err(|e| e.to_string())?;
            if i + 75 >= frames {
                echo.0 += heard[..got]
                    .iter()
                    .map(|&s| f64::from(s).powi(2))
                    .sum::<f64>();
                echo.1 += got;
            }
            next += Duration::from_millis(20);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok(10.0 * (echo.0 / echo.1.max(1) as f64 / voice).max(1e-12).log10())
    };
    let before = talk(100)?;
    incoming
        .set_voice_processing(Some(natter::VoiceProcessing::ALL))
        .map_err(|e| e.to_string())?;
    let after = talk(200)?;
    let stats = incoming.stats().map_err(|e| e.to_string())?;
    let audio = stats.audio.ok_or("no audio statistics")?;
    drop(hang_up);
    // Under load (a debug build, a busy machine) the canceller learns more slowly than the
    // 35-45 dB a quiet release build shows: a clear cut is what this step asserts.
    if after > before - 10.0 {
        return Err(format!(
            "alice's echo at {before:.1} dB of her voice before, {after:.1} dB after"
        ));
    }
    Ok((
        format!(
            "alice heard herself at {before:.1} dB; with bob's {} on, at {after:.1} dB (the canceller's linear filter alone: {})",
            audio.voice_processing,
            audio
                .echo_erle_db
                .map_or("not measured yet".into(), |e| format!("{e:.1} dB"))
        ),
        before - after,
    ))
}

/// Two sound devices for the demo: ALSA's `file` plugin over its `null` device, in a
/// configuration of their own (`ALSA_CONFIG_PATH`), writing into FIFOs the demo reads at a
/// speaker's pace (natter_media::audio::fifo).
struct SoundDevices {
    _dir: tempfile::TempDir,
    a: Speaker,
    b: Speaker,
}

impl SoundDevices {
    /// Set them up: call before any other thread starts.
    fn new() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("speaker-a"), dir.path().join("speaker-b"));
        let (speaker_a, speaker_b) = (Speaker::try_new(&a)?, Speaker::try_new(&b)?);
        let conf = dir.path().join("alsa.conf");
        std::fs::write(
            &conf,
            sink("natter_demo_a", &a) + &sink("natter_demo_b", &b),
        )?;
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        Ok(Self {
            _dir: dir,
            a: speaker_a,
            b: speaker_b,
        })
    }
}

/// Hangs a call up when dropped and waits (up to 5 s) until the callee's side ended, so that
/// its devices close before anything they write into goes away.
struct HangUp<'a> {
    call: natter::Call,
    callee: &'a Client,
}

impl Drop for HangUp<'_> {
    fn drop(&mut self) {
        let _ = self.call.hang_up();
        let deadline = Instant::now() + STEP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Event::CallEnded { .. }) = self
                .callee
                .events()
                .recv_timeout(Duration::from_millis(100))
            {
                break;
            }
        }
    }
}

/// alice calls bob with `audio`; returns what hangs up when dropped (waiting for bob's side
/// to end) and bob's ringing call.
fn ring<'a>(
    alice: &Client,
    bob: &'a Client,
    audio: Audio,
) -> Result<(HangUp<'a>, natter::Call), String> {
    let call = alice.call("bob", audio).map_err(|e| e.to_string())?;
    let hang_up = HangUp { call, callee: bob };
    loop {
        match bob.events().recv_timeout(STEP_TIMEOUT) {
            Ok(Event::IncomingCall { call, .. }) => return Ok((hang_up, call)),
            Ok(_) => {}
            Err(e) => return Err(format!("no incoming call: {e}")),
        }
    }
}

/// alice calls bob, who hears her on one sound device ([`SoundDevices`]), then switches his
/// speaker to the other mid-call. Returns the details and how long `set_speaker` took.
fn audio_device_step(
    alice: &Client,
    bob: &Client,
    sound: &SoundDevices,
) -> Result<(String, Duration), String> {
    let (speaker_a, speaker_b) = (&sound.a, &sound.b);
    let listed = natter::audio_devices().map_err(|e| e.to_string())?;
    // However this step ends, the call ends before the devices could go away.
    let (hang_up, incoming) = ring(alice, bob, Audio::tone())?;
    incoming
        .answer(Audio::new(
            natter::AudioInput::Silence,
            natter::AudioOutput::Device(Some("natter_demo_a".into())),
        ))
        .map_err(|e| e.to_string())?;
    let heard = |s: &Speaker, samples: usize| {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while s.loud() < samples && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        s.loud() >= samples
    };
    // A second of alice's tone (16,000 samples, most of them loud) on the first device.
    if !heard(speaker_a, 12_000) {
        return Err(format!(
            "the first speaker played {} samples",
            speaker_a.loud()
        ));
    }
    let asked = Instant::now();
    incoming
        .set_speaker(Some("natter_demo_b"))
        .map_err(|e| format!("switching: {e}"))?;
    let switch = asked.elapsed();
    if !heard(speaker_b, 12_000) {
        return Err(format!(
            "the second speaker played {} samples",
            speaker_b.loud()
        ));
    }
    drop(hang_up);
    Ok((
        format!(
            "{} devices listed; the first played {:.1} s of alice, the second {:.1} s after the switch; the call went on",
            listed.len(),
            speaker_a.loud() as f64 / 16_000.0,
            speaker_b.loud() as f64 / 16_000.0
        ),
        switch,
    ))
}

/// The last steps: the session layer on its own, over real UDP sockets: an on-path relay that
/// records everything, Noise XX and IK handshakes, encrypted media frames, pings, and a replay
/// attack with garbage. False when a step failed.
fn session_layer(
    r: &mut Report,
    net: &natter_transport::login::network::NetworkFile,
    dir: &Path,
    rng: &mut Rng,
) -> std::io::Result<bool> {
    let alice_id = identity(net, dir, "alice")?;
    let bob_id = identity(net, dir, "bob")?;
    let bob_static = bob_id.device.dh_public();

    let t =
        r.step("Start two nodes on real UDP sockets, and an on-path relay that records traffic");
    let alice = spawn(alice_id.clone(), rng.bytes32())?;
    let bob = spawn(bob_id, rng.bytes32())?;
    let relay = Relay::start(bob.local_addr())?;
    r.ok(
        t,
        &format!(
            "alice {} -> relay {} -> bob {}",
            alice.local_addr(),
            relay.addr,
            bob.local_addr()
        ),
    );

    let t = r.step("Noise XX handshake alice -> bob, certificates checked on both sides");
    let relay_addr = relay.addr;
    let started = Instant::now();
    alice
        .command(move |e, now| e.connect(now, Destination::Udp(relay_addr), None))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (Some((a_conn, a_peer)), Some((b_conn, b_peer))) = (connected(&alice), connected(&bob))
    else {
        r.fail("handshake did not complete");
        return Ok(false);
    };
    let setup = started.elapsed();
    r.ok(
        t,
        &format!(
            "alice sees {}, bob sees {}",
            a_peer.certificate.user, b_peer.certificate.user
        ),
    );
    r.row("XX handshake (3 messages)", ms(setup));

    let t = r.step(&format!(
        "Exchange {FRAMES} encrypted {FRAME_LEN}-byte media frames each way"
    ));
    let exchange = Instant::now();
    // In windows of 50 frames each way, each window received before the next is sent: a
    // burst of all of them at once could overflow a socket buffer on a busy machine, and the
    // step counts what the session delivers, not what a kernel queue holds.
    let (mut to_bob, mut to_alice) = (0, 0);
    for window in (0..FRAMES).step_by(50) {
        let n = (FRAMES - window).min(50);
        for i in window..window + n {
            let mut frame = vec![0u8; FRAME_LEN];
            frame[..4].copy_from_slice(&i.to_be_bytes());
            let f2 = frame.clone();
            let _ = alice.command(move |e, now| e.send_media(now, a_conn, &frame));
            let _ = bob.command(move |e, now| e.send_media(now, b_conn, &f2));
        }
        to_bob += receive_media(&bob, n);
        to_alice += receive_media(&alice, n);
    }
    let took = exchange.elapsed();
    if to_bob == FRAMES && to_alice == FRAMES {
        r.ok(
            t,
            &format!("bob decrypted {to_bob}, alice decrypted {to_alice}"),
        );
    } else {
        r.fail(&format!(
            "bob got {to_bob}/{FRAMES}, alice got {to_alice}/{FRAMES}"
        ));
    }
    r.row(
        "Frames delivered both ways",
        format!("{}/{}", to_bob + to_alice, 2 * FRAMES),
    );
    r.row(
        "Exchange throughput",
        format!("{:.0} frames/s", f64::from(2 * FRAMES) / took.as_secs_f64()),
    );

    let t = r.step("Measure round-trip time with 20 encrypted pings");
    let mut rtts = Vec::new();
    for _ in 0..20 {
        let _ = alice.command(move |e, now| e.ping(now, a_conn));
        if let (Some(EndpointEvent::Pong { rtt, .. }), _) =
            alice.wait_for(STEP_TIMEOUT, |e| matches!(e, EndpointEvent::Pong { .. }))
        {
            rtts.push(rtt);
        }
    }
    rtts.sort();
    if rtts.len() == 20 {
        let p50 = rtts[10];
        r.ok(t, &format!("p50 {} max {}", ms(p50), ms(rtts[19])));
        r.row("RTT p50 (through the relay)", ms(p50));
    } else {
        r.fail(&format!("{} of 20 pings answered", rtts.len()));
    }

    let t = r.step("Attack: the relay replays every packet it saw; a stranger sends garbage");
    let before = bob.command(move |e, _| e.session_stats(b_conn).unwrap_or_default());
    let replayed = relay.replay_to_server(bob.local_addr());
    let stranger = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..1000u32 {
        let mut junk = vec![0u8; 1 + (i as usize * 37) % 300];
        rng.fill(&mut junk);
        if i % 2 == 0 {
            junk[0] = 0x51; // looks like a Natter control packet
        }
        stranger.send_to(&junk, bob.local_addr())?;
        pace(i as usize);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = bob.command(move |e, _| e.session_stats(b_conn).unwrap_or_default());
    let stats = bob.command(|e, _| e.stats());
    let spurious = bob
        .events()
        .try_iter()
        .filter(|e| matches!(e, EndpointEvent::Media { .. } | EndpointEvent::Data { .. }))
        .count();
    if after.opened == before.opened && spurious == 0 {
        r.ok(
            t,
            &format!(
                "{replayed} replays: {} refused by the replay window, {} handshake messages answered without effect; 1000 garbage: {} not Natter, {} malformed, {} unknown session",
                after.replayed + after.too_old - before.replayed - before.too_old,
                replayed as u64 - (after.replayed + after.too_old - before.replayed - before.too_old),
                stats.dropped_not_natter,
                stats.dropped_malformed,
                stats.dropped_unknown_session
            ),
        );
    } else {
        r.fail("a replayed or forged packet was accepted");
    }
    r.row(
        "Replays accepted",
        format!("{} of {replayed}", after.opened - before.opened),
    );

    let t = r.step("The session still works after the attack");
    let _ = alice.command(move |e, now| e.send(now, a_conn, b"still here"));
    match bob.wait_for(STEP_TIMEOUT, |e| matches!(e, EndpointEvent::Data { .. })) {
        (Some(_), _) => r.ok(t, "bob received alice's message"),
        _ => r.fail("no message after the attack"),
    }

    let t = r.step("Noise IK handshake alice -> bob directly, with bob's key known (1 round trip)");
    let bob_addr = bob.local_addr();
    let started = Instant::now();
    alice
        .command(move |e, now| e.connect(now, Destination::Udp(bob_addr), Some(bob_static)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match (connected(&alice), connected(&bob)) {
        (Some(_), Some(_)) => {
            let setup = started.elapsed();
            r.ok(t, "second session established");
            r.row("IK handshake (2 messages)", ms(setup));
        }
        _ => r.fail("IK handshake did not complete"),
    }

    drop(relay);
    let _ = alice.shutdown();
    let _ = bob.shutdown();
    Ok(true)
}
