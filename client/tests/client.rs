//! The client API with real parts: a login server (TLS, SQLite), a super node and users on
//! loopback sockets.

use std::time::{Duration, Instant};

use natter::{
    AccountError, Audio, CallError, CallState, Client, DeviceId, EndReason, Event, Found,
    LoginError, PasswordNeeded, PcmError, RegisterError, SearchError, ServerError, StartError,
    StopError, VoiceProcessing,
};
use natter_fixtures::{wait_for, TestNet, DEADLINE, PASSWORD};
use natter_media::audio::synth::{speechlike, EchoPath, Room};

fn ended(client: &Client) -> EndReason {
    match wait_for(client, |e| matches!(e, Event::CallEnded { .. })) {
        Some(Event::CallEnded { reason, .. }) => reason,
        other => panic!("no end: {other:?}"),
    }
}

#[test]
fn a_call_with_application_audio_both_ways() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");
    let call = alice.call("bob", Audio::app()).unwrap();
    assert_eq!(call.stats().unwrap().state, CallState::Dialing);
    // Not connected yet: no application audio.
    assert_eq!(call.push_pcm(&[0; 320]), Err(PcmError::NoAppAudio));
    let incoming = match wait_for(&bob, |e| matches!(e, Event::IncomingCall { .. })) {
        Some(Event::IncomingCall { call, from, .. }) => {
            assert_eq!(from.as_str(), "alice");
            call
        }
        other => panic!("no incoming call: {other:?}"),
    };
    assert_eq!(incoming.peer().unwrap().as_str(), "alice");
    // Only the callee answers.
    assert_eq!(call.answer(Audio::app()), Err(CallError::WrongState));
    incoming.answer(Audio::app()).unwrap();
    let connected = wait_for(&alice, |e| matches!(e, Event::CallConnected { .. }));
    assert!(
        matches!(connected, Some(Event::CallConnected { call: c, .. }) if c == call.id()),
        "{connected:?}"
    );
    assert!(wait_for(&bob, |e| matches!(e, Event::CallConnected { .. })).is_some());
    // A second call while in one is refused at once.
    assert_eq!(
        alice.call("bob", Audio::silent()).unwrap_err(),
        CallError::InCall
    );
    // alice pushes a loud square wave in real time; bob pulls until he has heard it.
    let tone: Vec<i16> = (0..320)
        .map(|i| if i % 40 < 20 { 8000 } else { -8000 })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    let mut loud = 0usize;
    let mut buf = [0i16; 320];
    let mut next = Instant::now();
    while loud < 16_000 && Instant::now() < deadline {
        call.push_pcm(&tone).unwrap();
        let got = incoming.pull_pcm(&mut buf).unwrap();
        loud += buf[..got]
            .iter()
            .filter(|s| s.unsigned_abs() > 2000)
            .count();
        next += Duration::from_millis(20);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert!(loud >= 16_000, "bob heard {loud} loud samples");
    let stats = incoming.stats().unwrap();
    assert_eq!(stats.state, CallState::Active);
    assert!(stats.path.is_some() && stats.frames_in > 0, "{stats}");
    assert!(stats.audio.unwrap().frames_received > 0, "{stats}");
    // Application audio is not processed unless asked.
    assert_eq!(stats.audio.unwrap().voice_processing, VoiceProcessing::OFF);
    // Hold and resume, mute.
    call.hold().unwrap();
    let held = wait_for(&bob, |e| matches!(e, Event::CallHoldChanged { .. }));
    assert!(
        matches!(
            held,
            Some(Event::CallHoldChanged {
                remote: true,
                local: false,
                ..
            })
        ),
        "{held:?}"
    );
    call.resume().unwrap();
    assert!(wait_for(&bob, |e| matches!(
        e,
        Event::CallHoldChanged { remote: false, .. }
    ))
    .is_some());
    call.set_muted(true).unwrap();
    assert!(call.stats().unwrap().muted);
    // bob hangs up; both see why.
    incoming.hang_up().unwrap();
    assert_eq!(ended(&bob), EndReason::HungUp { local: true });
    assert_eq!(ended(&alice), EndReason::HungUp { local: false });
    let last = call.stats().unwrap();
    assert_eq!(last.state, CallState::Ended);
    assert_eq!(last.end_reason, Some(EndReason::HungUp { local: false }));
    assert!(last.duration > Duration::ZERO);
    assert!(last.audio.unwrap().frames_sent > 0);
    assert_eq!(call.hang_up(), Err(CallError::WrongState));
    assert_eq!(call.pull_pcm(&mut buf), Err(PcmError::NoAppAudio));
    assert_eq!(alice.call_by_id(call.id()), Some(call.clone()));
    assert!(alice.current_call().is_none());
}

/// Mean power of `x`.
fn power(x: &[i16]) -> f64 {
    x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// bob's "microphone" hears his "speaker" through a synthetic room (100 ms, 10 dB quieter,
/// 300 ms of reverberation):
/// without processing alice hears herself come back; once bob turns echo cancellation on
/// mid-call, the echo she hears drops by more than 20 dB. The far-end reference is what
/// bob's media played: this is the whole path, queues, codec and jitter buffer included.
#[test]
fn echo_cancellation_removes_the_far_end_from_a_call() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");
    let call = alice.call("bob", Audio::app()).unwrap();
    let incoming = match wait_for(&bob, |e| matches!(e, Event::IncomingCall { .. })) {
        Some(Event::IncomingCall { call, .. }) => call,
        other => panic!("no incoming call: {other:?}"),
    };
    incoming.answer(Audio::app()).unwrap();
    assert!(wait_for(&alice, |e| matches!(e, Event::CallConnected { .. })).is_some());
    let speech = speechlike(16_000, 4.0);
    let mut room = EchoPath::new(16_000, &Room::default(), 5);
    let (mut played, mut heard) = ([0i16; 320], [0i16; 320]);
    let mut next = Instant::now();
    // The echo alice hears over the last `last` of `frames` frames of her talking.
    let mut talk = |frames: usize, last: usize| {
        let mut echo = Vec::new();
        for i in 0..frames {
            call.push_pcm(&speech[(i * 320) % speech.len()..][..320])
                .unwrap();
            let got = incoming.pull_pcm(&mut played).unwrap();
            played[got..].fill(0);
            incoming.push_pcm(&room.echo(&played)).unwrap();
            let got = call.pull_pcm(&mut heard).unwrap();
            if i >= frames - last {
                echo.extend_from_slice(&heard[..got]);
            }
            next += Duration::from_millis(20);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        power(&echo)
    };
    let raw = talk(150, 75);
    incoming
        .set_voice_processing(Some(VoiceProcessing {
            echo_cancellation: true,
            ..VoiceProcessing::OFF
        }))
        .unwrap();
    let cancelled = talk(200, 75);
    let erle = 10.0 * (raw / cancelled.max(1.0)).log10();
    let audio = incoming.stats().unwrap().audio.unwrap();
    assert!(audio.voice_processing.echo_cancellation);
    assert!(
        erle > 20.0,
        "echo {raw:.0} before, {cancelled:.0} after: {erle:.1} dB"
    );
    assert!(
        raw > 1e4,
        "alice heard no echo without cancellation: {raw:.0}"
    );
    drop(call);
}

#[test]
fn calls_that_cannot_happen_end_with_a_reason() {
    let net = TestNet::start();
    let alice = net.client("alice");
    // Nobody by that name: the call ends before it is placed.
    alice.call("nobody", Audio::silent()).unwrap();
    let reason = ended(&alice);
    assert_eq!(reason, EndReason::UserNotFound);
    assert!(reason.never_placed());
    assert_eq!(reason.to_string(), "no such user");
    // A user who logged out: offline.
    let bob = net.client("bob");
    bob.stop().unwrap();
    let id = alice.search("bob").unwrap();
    match wait_for(
        &alice,
        |e| matches!(e, Event::SearchResult { search, .. } if *search == id),
    ) {
        Some(Event::SearchResult { outcome, .. }) => {
            assert!(matches!(outcome.found, Found::Devices(_)), "{outcome}");
        }
        other => panic!("{other:?}"),
    }
    // Hanging up while still dialling cancels at once; the dial's call is hung up later.
    let call = alice.call("bob", Audio::silent()).unwrap();
    call.hang_up().unwrap();
    assert_eq!(ended(&alice), EndReason::Cancelled { local: true });
    // Bad input is a typed error.
    assert!(matches!(
        alice.call("1x", Audio::silent()),
        Err(CallError::InvalidName { .. })
    ));
    assert!(matches!(
        alice.search("no spaces allowed"),
        Err(SearchError::InvalidName { .. })
    ));
    drop(bob);
}

#[test]
fn logging_in_fails_for_a_reason() {
    let net = TestNet::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::builder(net.network())
        .data_dir(dir.path())
        .build()
        .unwrap();
    assert!(matches!(
        c.login("carol", None),
        Err(LoginError::PasswordNeeded(PasswordNeeded::NoCertificate))
    ));
    assert!(matches!(
        c.login("carol", Some(PASSWORD)),
        Err(LoginError::UnknownUser)
    ));
    assert!(matches!(c.start(), Err(StartError::NotLoggedIn)));
    assert_eq!(c.stop(), Err(StopError::NotStarted));
    assert!(matches!(
        c.register("carol", "short"),
        Err(RegisterError::WeakPassword)
    ));
    assert!(matches!(
        c.register("9lives", PASSWORD),
        Err(RegisterError::InvalidName { .. })
    ));
    c.register("carol", PASSWORD).unwrap();
    assert!(matches!(
        c.register("Carol", PASSWORD),
        Err(RegisterError::NameTaken(_))
    ));
    assert!(matches!(
        c.login("carol", Some("not her password")),
        Err(LoginError::WrongPassword)
    ));
    let first = c.login("carol", Some(PASSWORD)).unwrap();
    assert!(!first.renewed);
    assert_eq!(first.user.as_str(), "carol");
    // The stored certificate renews without the password.
    let again = c.login("carol", None).unwrap();
    assert!(again.renewed);
    assert_eq!(again.device, first.device);
    // A password given is checked, even with a renewable certificate stored (issue 16: a
    // wrong one used to renew and answer OK).
    assert!(matches!(
        c.login("carol", Some("not her password")),
        Err(LoginError::WrongPassword)
    ));
    assert!(!c.login("carol", Some(PASSWORD)).unwrap().renewed);
    c.start().unwrap();
    assert!(matches!(c.start(), Err(StartError::AlreadyStarted)));
    // Another user while running: stop first.
    assert!(matches!(
        c.login("supernode", Some(PASSWORD)),
        Err(LoginError::OtherUserRunning { .. })
    ));
    c.close();
    assert!(matches!(c.start(), Err(StartError::Closed)));
    assert!(c.events().is_closed());

    // A login server that is gone.
    let mut server = natter_fixtures::LoginServer::start();
    let network = server.network();
    server.shutdown();
    let d = Client::builder(network)
        .data_dir(dir.path().join("d"))
        .build()
        .unwrap();
    assert!(matches!(
        d.login("dave", Some(PASSWORD)),
        Err(LoginError::Server(ServerError::Unreachable { .. }))
    ));
    assert!(matches!(
        d.register("dave", PASSWORD),
        Err(RegisterError::Server(ServerError::Unreachable { .. }))
    ));
}

#[test]
fn the_account_lists_devices_and_a_password_change_revokes_the_others() {
    let net = TestNet::start();
    let dir = tempfile::tempdir().unwrap();
    let device = |name: &str| {
        Client::builder(net.network())
            .data_dir(dir.path().join(name))
            .build()
            .unwrap()
    };
    let (desk, phone) = (device("desk"), device("phone"));
    assert!(matches!(desk.devices(), Err(AccountError::NotLoggedIn)));
    desk.register("erin", PASSWORD).unwrap();
    let me = desk.login("erin", Some(PASSWORD)).unwrap().device;
    let other = phone.login("erin", Some(PASSWORD)).unwrap().device;
    let list = desk.devices().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|d| d.revoked.is_none()));
    assert_eq!(
        list.iter().find(|d| d.this_device).map(|d| d.device),
        Some(me)
    );
    // Each refusal says why.
    assert!(matches!(
        desk.revoke_device(me, PASSWORD),
        Err(AccountError::ThisDevice)
    ));
    assert!(matches!(
        desk.revoke_device(DeviceId([9; 16]), PASSWORD),
        Err(AccountError::UnknownDevice)
    ));
    assert!(matches!(
        desk.change_password("not the password", "a brand new password", true),
        Err(AccountError::WrongPassword)
    ));
    assert!(matches!(
        desk.change_password(PASSWORD, "short", true),
        Err(AccountError::WeakPassword)
    ));
    // A leak: a new password, and every other device out.
    desk.change_password(PASSWORD, "a brand new password", true)
        .unwrap();
    let list = desk.devices().unwrap();
    let revoked: Vec<DeviceId> = list
        .iter()
        .filter(|d| d.revoked.is_some())
        .map(|d| d.device)
        .collect();
    assert_eq!(revoked, vec![other]);
    assert!(matches!(phone.devices(), Err(AccountError::Revoked)));
    assert!(matches!(
        phone.login("erin", Some("a brand new password")),
        Err(LoginError::Revoked)
    ));
    // Revoking one device by id, from another.
    let tablet = device("tablet");
    let t = tablet
        .login("erin", Some("a brand new password"))
        .unwrap()
        .device;
    desk.revoke_device(t, "a brand new password").unwrap();
    assert!(matches!(tablet.devices(), Err(AccountError::Revoked)));
    // Logging out forgets the certificate: the next login needs the password.
    desk.logout().unwrap();
    assert!(matches!(desk.devices(), Err(AccountError::NotLoggedIn)));
    assert!(matches!(desk.logout(), Err(AccountError::NotLoggedIn)));
    assert!(matches!(
        desk.login("erin", None),
        Err(LoginError::PasswordNeeded(_))
    ));
    desk.login("erin", Some("a brand new password")).unwrap();
}

#[test]
fn dropping_a_client_mid_call_ends_the_call_on_both_sides() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");
    natter_fixtures::answer_calls(&bob);
    alice.call("bob", Audio::silent()).unwrap();
    assert!(wait_for(&alice, |e| matches!(e, Event::CallConnected { .. })).is_some());
    let events = alice.events().clone();
    drop(alice);
    // What the client said as it stopped is still queued, then the queue ends.
    let rest: Vec<Event> = events.iter().collect();
    assert!(
        rest.iter().any(|e| matches!(
            e,
            Event::CallEnded {
                reason: EndReason::Stopped,
                ..
            }
        )),
        "{rest:?}"
    );
    // bob's answering thread took his events; his call ended (he is free again).
    assert!(natter_fixtures::poll_until(DEADLINE, || bob
        .state()
        .call
        .is_none()));
    let state = bob.state();
    assert!(state.is_joined());
    assert!(
        state.to_string().starts_with("logged in as bob; "),
        "{state}"
    );
}

#[test]
fn the_status_of_a_super_node() {
    let net = TestNet::start();
    let _alice = net.client("alice");
    let status = net.super_node().status().expect("running");
    assert!(status.super_node);
    assert!(status.index.is_some() && status.relay.is_some());
    assert!(natter_fixtures::poll_until(DEADLINE, || net
        .super_node()
        .status()
        .is_some_and(|s| s.clients >= 1)));
    assert_eq!(status.listen, net.super_node_addr());
}

/// The login server's network file, pointing at another address.
fn network_at(net: &TestNet, address: std::net::SocketAddr) -> natter::Network {
    let toml = std::fs::read_to_string(net.network_path())
        .unwrap()
        .replace(&net.server().address().to_string(), &address.to_string());
    natter::Network::from_toml_str(&toml).unwrap()
}

fn finished(client: &Client) -> Event {
    wait_for(client, |e| {
        matches!(
            e,
            Event::LoginFinished { .. } | Event::RegisterFinished { .. }
        )
    })
    .expect("a finished request")
}

#[test]
fn background_requests_answer_by_event_and_cancel_at_once() {
    let net = TestNet::start();
    let c = Client::builder(net.network())
        .without_data_dir()
        .build()
        .unwrap();
    assert!(c.data_dir().is_none());
    let r = c.begin_register("frank", PASSWORD).unwrap();
    match finished(&c) {
        Event::RegisterFinished {
            request, result, ..
        } => {
            assert_eq!(request, r);
            result.unwrap();
        }
        other => panic!("{other:?}"),
    }
    // What needs no server is checked at once.
    assert!(matches!(
        c.begin_login("9lives", None),
        Err(LoginError::InvalidName { .. })
    ));
    let wrong = c.begin_login("frank", Some("not his password")).unwrap();
    assert_ne!(wrong, r);
    match finished(&c) {
        Event::LoginFinished {
            request, result, ..
        } => {
            assert_eq!(request, wrong);
            assert!(matches!(*result.unwrap_err(), LoginError::WrongPassword));
        }
        other => panic!("{other:?}"),
    }
    assert!(c.state().user.is_none());
    let right = c.begin_login("frank", Some(PASSWORD)).unwrap();
    let info = match finished(&c) {
        Event::LoginFinished {
            request, result, ..
        } => {
            assert_eq!(request, right);
            result.unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(c.state().user.unwrap().as_str(), "frank");
    // Ended: nothing to cancel.
    assert!(!c.cancel_request(right));

    // The credentials, through bytes (the keychain), make the same device elsewhere, and
    // it renews without the password; nothing is written to disk.
    let bytes = c.credentials().unwrap().to_bytes();
    let creds = natter::Credentials::from_bytes(&bytes).unwrap();
    assert_eq!(creds.user().unwrap().as_str(), "frank");
    assert_eq!(creds.device(), info.device);
    assert!(!format!("{creds:?}").contains(&format!("{:?}", &bytes[5..12])));
    let d = Client::builder(net.network())
        .without_data_dir()
        .credentials(creds)
        .build()
        .unwrap();
    let again = d.login("frank", None).unwrap();
    assert!(again.renewed);
    assert_eq!(again.device, info.device);
    d.start().unwrap();
    net.wait_joined(&d);
    d.close();
    assert!(matches!(
        natter::Credentials::from_bytes(b"not credentials"),
        Err(natter::CredentialsError::NotCredentials)
    ));

    // A login server that accepts connections and never answers: a cancel ends the
    // request at once with one event, and logs nobody in.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = Client::builder(network_at(&net, silent.local_addr().unwrap()))
        .without_data_dir()
        .build()
        .unwrap();
    let login = s.begin_login("frank", Some(PASSWORD)).unwrap();
    let register = s.begin_register("grace", PASSWORD).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    assert!(s.cancel_request(login));
    assert!(!s.cancel_request(login));
    match finished(&s) {
        Event::LoginFinished {
            request, result, ..
        } => {
            assert_eq!(request, login);
            assert!(matches!(*result.unwrap_err(), LoginError::Cancelled));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.cancel_request(register));
    match finished(&s) {
        Event::RegisterFinished {
            request, result, ..
        } => {
            assert_eq!(request, register);
            assert!(matches!(*result.unwrap_err(), RegisterError::Cancelled));
        }
        other => panic!("{other:?}"),
    }
    // Well before the 15 s the exchanges would have waited.
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(s.state().user.is_none());
    // The cancelled requests' threads end without another event.
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.events().try_recv().is_err());
}
