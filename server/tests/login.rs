//! The login server end to end: real TLS 1.3 over loopback, SQLite and PostgreSQL.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use natter_core::crypto::{Authority, Certificate, TrustedAuthorities, UnixTime, UserName};
use natter_core::login::client::{LoginClientError, LoginClientEvent, Operation};
use natter_core::login::proto::{LoginError, Version, VersionStatus};
use natter_core::rng::Rng;
use natter_server::password::HashParams;
use natter_server::runtime::{LoginServerHandle, LoginServerOptions};
use natter_transport::login::client::{
    login, run_operations, ConnectError, DeviceStore, LoginFailure, PasswordNeeded, Renewer,
    RevocationFetcher,
};
use natter_transport::login::files::{read_key, write_private};
use natter_transport::login::network::{hex, NetworkFile};
use natter_transport::wall_clock;

const V: Version = Version::new(0, 1, 0);
const T: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery";

fn options(dir: &Path) -> LoginServerOptions {
    let mut o = LoginServerOptions::new(dir, "127.0.0.1:0".parse().unwrap());
    // Cheap hashing keeps the suite fast; the defaults are tested in core.
    o.hash_params = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    o.workers = 2;
    o
}

fn start(dir: &Path) -> LoginServerHandle {
    LoginServerHandle::start(options(dir)).unwrap()
}

/// A running login server, one user registered on it, and that user's device.
struct Registered {
    dir: tempfile::TempDir,
    server: LoginServerHandle,
    net: NetworkFile,
    _device_dir: tempfile::TempDir,
    dev: DeviceStore,
}

fn registered(user: &str) -> Registered {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let net = server.network().clone();
    let device_dir = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(device_dir.path()).unwrap();
    assert_eq!(
        register(&net, &dev, user, PASSWORD),
        LoginClientEvent::Registered
    );
    Registered {
        dir,
        server,
        net,
        _device_dir: device_dir,
        dev,
    }
}

fn ops(net: &NetworkFile, device: &DeviceStore, ops: Vec<Operation>) -> Vec<LoginClientEvent> {
    let (id, _) = device.identity().unwrap();
    run_operations(net, &id, V, false, ops, T).unwrap()
}

fn register(
    net: &NetworkFile,
    device: &DeviceStore,
    user: &str,
    password: &str,
) -> LoginClientEvent {
    let events = ops(
        net,
        device,
        vec![Operation::Register {
            user: user.into(),
            password: password.into(),
        }],
    );
    events
        .into_iter()
        .find(|e| !matches!(e, LoginClientEvent::VersionChecked(_)))
        .unwrap()
}

fn refused(e: &LoginClientEvent) -> Option<LoginError> {
    match e {
        LoginClientEvent::Failed {
            error: LoginClientError::Refused(r),
            ..
        } => Some(*r),
        _ => None,
    }
}

fn full_account_lifecycle(net: &NetworkFile, tag: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path().join("dev")).unwrap();
    let alice = format!("alice{tag}");
    assert_eq!(
        register(net, &dev, &alice, PASSWORD),
        LoginClientEvent::Registered
    );
    // Names are unique case-insensitively.
    assert_eq!(
        refused(&register(net, &dev, &alice.to_uppercase(), PASSWORD)),
        Some(LoginError::NameTaken)
    );
    assert_eq!(
        refused(&register(net, &dev, "x", PASSWORD)),
        Some(LoginError::InvalidName)
    );
    assert_eq!(
        refused(&register(net, &dev, "bobby", "short")),
        Some(LoginError::WeakPassword)
    );
    assert_eq!(
        refused(&register(net, &dev, "bobby12345", "BOBBY12345")),
        Some(LoginError::WeakPassword)
    );

    // Wrong password, unknown user.
    assert!(matches!(
        login(net, &dev, &alice, Some("wrong password!"), V, T),
        Err(LoginFailure::WrongPassword)
    ));
    assert!(matches!(
        login(net, &dev, "nobody-here", Some(PASSWORD), V, T),
        Err(LoginFailure::UnknownUser)
    ));

    // Login: a certificate for this device, from a trusted authority.
    let li = login(net, &dev, &alice, Some(PASSWORD), V, T).unwrap();
    assert!(!li.renewed);
    let trusted = net.trusted().unwrap();
    let now = natter_transport::wall_clock();
    li.certificate
        .verify_for_key(&trusted, now, &li.device.dh_public())
        .unwrap();
    assert_eq!(li.certificate.user, UserName::parse(&alice).unwrap());
    assert!(li.certificate.not_after.0 >= now.0 + 23 * 3600);

    // A restart renews without the password.
    let again = login(net, &dev, &alice, None, V, T).unwrap();
    assert!(again.renewed);
    assert_eq!(again.certificate.device, li.certificate.device);

    // Password change.
    let ev = ops(
        net,
        &dev,
        vec![Operation::ChangePassword {
            user: alice.clone(),
            old: PASSWORD.into(),
            new: "a new passphrase".into(),
            revoke_others: false,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    dev.clear_certificate().unwrap();
    assert!(matches!(
        login(net, &dev, &alice, Some(PASSWORD), V, T),
        Err(LoginFailure::WrongPassword)
    ));
    login(net, &dev, &alice, Some("a new passphrase"), V, T).unwrap();

    // A password change that revokes the account's other devices (one the user does not know
    // of, certified with the old password): this device stays, the other is revoked.
    let stranger = DeviceStore::open(tmp.path().join("stranger")).unwrap();
    login(net, &stranger, &alice, Some("a new passphrase"), V, T).unwrap();
    let ev = ops(
        net,
        &dev,
        vec![Operation::ChangePassword {
            user: alice.clone(),
            old: "a new passphrase".into(),
            new: "a newer passphrase".into(),
            revoke_others: true,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    stranger.clear_certificate().unwrap();
    assert!(matches!(
        login(net, &stranger, &alice, Some("a newer passphrase"), V, T),
        Err(LoginFailure::Revoked)
    ));
    login(net, &dev, &alice, Some("a newer passphrase"), V, T).unwrap();
    let ev = ops(
        net,
        &dev,
        vec![Operation::ChangePassword {
            user: alice.clone(),
            old: "a newer passphrase".into(),
            new: "a new passphrase".into(),
            revoke_others: false,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");

    // Revocation: renewal refused, and listed (signed) for super nodes.
    let device = li.certificate.device;
    let ev = ops(
        net,
        &dev,
        vec![Operation::RevokeDevice {
            user: alice.clone(),
            password: "a new passphrase".into(),
            device,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    assert!(matches!(
        login(net, &dev, &alice, Some("a new passphrase"), V, T),
        Err(LoginFailure::Revoked)
    ));
    let ev = ops(net, &dev, vec![Operation::FetchRevocations { since: 0 }]);
    let page = ev
        .iter()
        .find_map(|e| match e {
            LoginClientEvent::Revocations(p) => Some(p.clone()),
            _ => None,
        })
        .expect("a page");
    assert!(page.entries.iter().any(|r| r.device == device));

    // Account deletion frees the name.
    let dev2 = DeviceStore::open(tmp.path().join("dev2")).unwrap();
    let ev = ops(
        net,
        &dev2,
        vec![Operation::DeleteAccount {
            user: alice.clone(),
            password: "a new passphrase".into(),
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    assert!(matches!(
        login(net, &dev2, &alice, Some("a new passphrase"), V, T),
        Err(LoginFailure::UnknownUser)
    ));
    assert_eq!(
        register(net, &dev2, &alice, PASSWORD),
        LoginClientEvent::Registered
    );
}

#[test]
fn sqlite_account_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    full_account_lifecycle(server.network(), "");
}

fn postgres_url() -> Option<String> {
    match std::env::var("NATTER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("NATTER_REQUIRE_POSTGRES").is_err(),
                "NATTER_REQUIRE_POSTGRES is set but NATTER_TEST_POSTGRES is not"
            );
            eprintln!("SKIPPED: NATTER_TEST_POSTGRES not set (make test sets it)");
            None
        }
    }
}

fn o_restart(dir: &tempfile::TempDir, running: &LoginServerHandle) -> LoginServerOptions {
    let mut o = options(dir.path());
    o.database_url = std::env::var("NATTER_TEST_POSTGRES").ok();
    o.listen = running.local_addr();
    o
}

#[test]
fn postgres_account_lifecycle_and_concurrent_registration_on_two_servers() {
    let Some(url) = postgres_url() else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut o1 = options(d1.path());
    o1.database_url = Some(url.clone());
    let mut o2 = options(d2.path());
    o2.database_url = Some(url);
    let s1 = LoginServerHandle::start(o1).unwrap();
    let s2 = LoginServerHandle::start(o2).unwrap();
    let tag = format!("{}", std::process::id());
    full_account_lifecycle(s1.network(), &tag);

    // Restarting a PostgreSQL-backed server loses nothing.
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    let keeper = format!("keep{tag}");
    assert_eq!(
        register(s1.network(), &dev, &keeper, PASSWORD),
        LoginClientEvent::Registered
    );
    let pg = o_restart(&d1, &s1);
    drop(s1);
    let s1 = LoginServerHandle::start(pg).unwrap();
    dev.clear_certificate().unwrap();
    login(s1.network(), &dev, &keeper, Some(PASSWORD), V, T).unwrap();

    // The same name registered through both servers at the same moment: exactly one wins.
    for round in 0..10 {
        let name = format!("race{tag}x{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let results: Vec<LoginClientEvent> = [s1.network().clone(), s2.network().clone()]
            .into_iter()
            .map(|net| {
                let (b, name) = (barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    let tmp = tempfile::tempdir().unwrap();
                    let dev = DeviceStore::open(tmp.path()).unwrap();
                    b.wait();
                    register(&net, &dev, &name, PASSWORD)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let ok = results
            .iter()
            .filter(|e| **e == LoginClientEvent::Registered)
            .count();
        let taken = results
            .iter()
            .filter(|e| refused(e) == Some(LoginError::NameTaken))
            .count();
        assert_eq!((ok, taken), (1, 1), "round {round}: {results:?}");
    }
}

#[test]
fn restart_loses_no_account_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    let (key, pin) = {
        let server = start(dir.path());
        let net = server.network().clone();
        assert_eq!(
            register(&net, &dev, "carol", PASSWORD),
            LoginClientEvent::Registered
        );
        (net.authority.keys.clone(), net.login.tls_sha256.clone())
    };
    let server = start(dir.path());
    let net = server.network();
    assert_eq!(net.authority.keys, key, "authority key persisted");
    assert_eq!(net.login.tls_sha256, pin, "TLS certificate persisted");
    login(net, &dev, "carol", Some(PASSWORD), V, T).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["authority.key", "tls-key.der"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}

#[test]
fn version_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.minimum_version = Version::new(1, 0, 0);
    o.recommended_version = Version::new(1, 2, 0);
    let server = LoginServerHandle::start(o).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    let (id, _) = dev.identity().unwrap();
    let net = server.network();
    let old = run_operations(
        net,
        &id,
        Version::new(0, 9, 0),
        true,
        vec![Operation::Register {
            user: "dave".into(),
            password: PASSWORD.into(),
        }],
        T,
    )
    .unwrap();
    assert!(
        matches!(old[0], LoginClientEvent::VersionChecked(VersionStatus::UpgradeRequired { minimum }) if minimum == Version::new(1, 0, 0))
    );
    assert!(matches!(
        &old[1],
        LoginClientEvent::Failed {
            error: LoginClientError::UpgradeRequired { .. },
            ..
        }
    ));
    assert!(matches!(
        login(net, &dev, "dave", Some(PASSWORD), Version::new(0, 9, 0), T),
        Err(LoginFailure::UpgradeRequired { .. })
    ));
    let mid = run_operations(net, &id, Version::new(1, 1, 0), false, vec![], T).unwrap();
    assert_eq!(
        mid,
        vec![LoginClientEvent::VersionChecked(
            VersionStatus::UpgradeRecommended {
                latest: Version::new(1, 2, 0)
            }
        )]
    );
    let new = run_operations(net, &id, Version::new(1, 2, 0), false, vec![], T).unwrap();
    assert_eq!(
        new,
        vec![LoginClientEvent::VersionChecked(VersionStatus::Ok)]
    );
}

#[test]
fn throttling_per_account_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let net = server.network();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(net, &dev, "erin", PASSWORD),
        LoginClientEvent::Registered
    );
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(login(net, &dev, "erin", Some("not the password"), V, T));
    }
    let throttled = outcomes
        .iter()
        .filter(|o| matches!(o, Err(LoginFailure::Throttled { .. })))
        .count();
    assert!(throttled >= 2, "{outcomes:?}");
    // Even the right password is refused while the account is throttled.
    assert!(matches!(
        login(net, &dev, "erin", Some(PASSWORD), V, T),
        Err(LoginFailure::Throttled { .. })
    ));
    // One address guessing across many accounts is throttled too.
    let mut last = None;
    for i in 0..30 {
        last = Some(login(net, &dev, &format!("ghost{i}"), Some(PASSWORD), V, T));
    }
    assert!(
        matches!(last, Some(Err(LoginFailure::Throttled { .. }))),
        "{last:?}"
    );
    // Errors never contain the password.
    for o in outcomes {
        if let Err(e) = o {
            assert!(!format!("{e} {e:?}").contains("not the password"));
        }
    }
}

#[test]
fn an_account_adds_at_most_five_devices_a_day() {
    // Each new device key is a new, unpredictable position in the super nodes' index ring:
    // the limit is what makes trying for one next to a victim cost accounts and days.
    let r = registered("gwen");
    login(&r.net, &r.dev, "gwen", Some(PASSWORD), V, T).unwrap();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut outcomes = Vec::new();
    for d in &dirs {
        let dev = DeviceStore::open(d.path()).unwrap();
        outcomes.push(login(&r.net, &dev, "gwen", Some(PASSWORD), V, T).map(|_| ()));
    }
    // The first device and four more; the sixth new one waits for a day to pass.
    assert!(outcomes[..4].iter().all(Result::is_ok), "{outcomes:?}");
    match &outcomes[4] {
        Err(LoginFailure::Throttled { retry_after_secs }) => {
            assert!(
                (86_000..=86_400).contains(retry_after_secs),
                "{retry_after_secs}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Devices it already has log in as before.
    login(&r.net, &r.dev, "gwen", Some(PASSWORD), V, T).unwrap();
    let dev = DeviceStore::open(dirs[0].path()).unwrap();
    login(&r.net, &dev, "gwen", Some(PASSWORD), V, T).unwrap();
}

#[test]
fn pin_mismatch_unreachable_and_tampered_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    let mut wrong_pin = server.network().clone();
    wrong_pin.login.tls_sha256 = Some(hex(&[7; 32]));
    assert!(matches!(
        login(&wrong_pin, &dev, "frank", Some(PASSWORD), V, T),
        Err(LoginFailure::Connect(ConnectError::PinMismatch))
    ));
    let mut unreachable = server.network().clone();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    unreachable.login.address = closed.to_string();
    assert!(matches!(
        login(&unreachable, &dev, "frank", Some(PASSWORD), V, T),
        Err(LoginFailure::Connect(ConnectError::Unreachable { .. }))
    ));

    // A tampered certificate is refused at renewal.
    let net = server.network();
    assert_eq!(
        register(net, &dev, "frank", PASSWORD),
        LoginClientEvent::Registered
    );
    let li = login(net, &dev, "frank", Some(PASSWORD), V, T).unwrap();
    let mut forged = li.certificate.clone();
    forged.not_after = UnixTime(forged.not_after.0 + 365 * 86_400);
    let ev = ops(
        net,
        &dev,
        vec![Operation::Renew {
            certificate: forged,
        }],
    );
    assert!(
        ev.iter().any(|e| refused(e) == Some(LoginError::BadProof)),
        "{ev:?}"
    );
    // Someone else's certificate cannot be renewed (no proof of its key).
    let tmp2 = tempfile::tempdir().unwrap();
    let mallory = DeviceStore::open(tmp2.path()).unwrap();
    let ev = ops(
        net,
        &mallory,
        vec![Operation::Renew {
            certificate: li.certificate.clone(),
        }],
    );
    assert!(
        ev.iter().any(|e| refused(e) == Some(LoginError::BadProof)),
        "{ev:?}"
    );
}

fn raw_tls(
    addr: SocketAddr,
    net: &NetworkFile,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = natter_transport::login::tls::client_config(net.pin().unwrap(), None).unwrap();
    let conn =
        rustls::ClientConnection::new(cfg, net.login.server_name.clone().try_into().unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn garbage_oversized_and_truncated_requests_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.idle_timeout = Duration::from_secs(1);
    let server = LoginServerHandle::start(o).unwrap();
    let net = server.network().clone();
    let addr = server.local_addr();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(&net, &dev, "grace", PASSWORD),
        LoginClientEvent::Registered
    );

    let logins = {
        let net = net.clone();
        let dir = tmp.path().to_owned();
        std::thread::spawn(move || {
            let dev = DeviceStore::open(dir).unwrap();
            (0..10)
                .map(|_| login(&net, &dev, "grace", Some(PASSWORD), V, T).is_ok())
                .filter(|ok| *ok)
                .count()
        })
    };
    let mut closed = 0;
    for kind in 0..5 {
        let mut s = raw_tls(addr, &net);
        let payload: Vec<u8> = match kind {
            0 => vec![0x00, 0x05, 0xEE, 1, 2, 3, 4], // unknown request type
            1 => vec![0xFF, 0xFF],                   // announces a 64 KiB frame, then stops
            2 => vec![0x00, 0x02, 0x01, 0x00],       // a whole frame holding half a hello
            3 => {
                // A register request whose password field is over the limit.
                let mut f = vec![0x00, 0x00, 0x02, 5];
                f.extend_from_slice(b"grace");
                f.push(200);
                f.extend_from_slice(&[b'x'; 200]);
                let len = (f.len() - 2) as u16;
                f[..2].copy_from_slice(&len.to_be_bytes());
                f
            }
            _ => vec![0x00, 0x00], // empty frame
        };
        s.write_all(&payload).unwrap();
        let _ = s.flush();
        let mut buf = [0u8; 256];
        // Either an error answer then close, or (for the incomplete frame) the idle close.
        let mut got = Vec::new();
        loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        if kind != 1 {
            assert!(!got.is_empty(), "kind {kind}: no error answer");
        }
    }
    // Not TLS at all: the server answers with at most a TLS alert, then closes.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let mut answered = 0;
    loop {
        match std::io::Read::read(&mut raw, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answered += n;
                assert!(
                    answered < 4096,
                    "the server keeps talking to a non-TLS client"
                );
            }
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the non-TLS connection was not closed within 10 s"
                );
                break; // reset by the server: closed too
            }
        }
    }
    assert_eq!(closed, 5, "every bad connection was closed");
    assert_eq!(
        logins.join().unwrap(),
        10,
        "logins went on during the garbage"
    );
}

#[test]
fn ca_issued_certificate_is_accepted_and_untrusted_ca_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate it issued for "login.natter.test".
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["login.natter.test".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (chain, key, ca_file) = (
        dir.path().join("chain.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&chain, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let mut o = options(&dir.path().join("data"));
    o.server_name = "login.natter.test".into();
    o.tls_pem = Some((chain, key));
    let server = LoginServerHandle::start(o).unwrap();
    let mut net = server.network().clone();
    assert_eq!(
        net.login.tls_sha256, None,
        "no pin for a CA-issued certificate"
    );
    net.login.ca_file = Some(ca_file);
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(&net, &dev, "heidi", PASSWORD),
        LoginClientEvent::Registered
    );
    // Without the CA, the certificate is not trusted.
    net.login.ca_file = None;
    assert!(matches!(
        login(&net, &dev, "heidi", Some(PASSWORD), V, T),
        Err(LoginFailure::Connect(ConnectError::Tls(_)))
    ));
}

#[test]
fn certificates_are_renewed_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.certificate_lifetime = Duration::from_secs(3);
    o.clock_skew_allowance = Duration::ZERO;
    let server = LoginServerHandle::start(o).unwrap();
    let net = server.network().clone();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(&net, &dev, "judy", PASSWORD),
        LoginClientEvent::Registered
    );
    let first = login(&net, &dev, "judy", Some(PASSWORD), V, T)
        .unwrap()
        .certificate;
    let renewer = Renewer::spawn(net, dev.clone(), first.clone());
    // Renewal is due at 80 % of 3 s; allow generous slack for a loaded machine.
    let next = renewer
        .certificates()
        .recv_timeout(Duration::from_secs(20))
        .expect("renewed");
    assert!(next.not_after > first.not_after);
    assert_eq!(next.device, first.device);
    assert_eq!(
        dev.certificate().unwrap(),
        next,
        "the renewed certificate is stored"
    );
}

#[test]
fn super_nodes_fetch_the_signed_revocation_list() {
    // Everything bound: the server and the directories must live to the end of the test.
    let Registered {
        dir: _dir,
        server: _server,
        net,
        dev,
        _device_dir: tmp,
    } = registered("kim");
    let li = login(&net, &dev, "kim", Some(PASSWORD), V, T).unwrap();
    let sn = DeviceStore::open(tmp.path().join("sn")).unwrap();
    let (sn_id, _) = sn.identity().unwrap();
    let fetcher = RevocationFetcher::spawn(net.clone(), sn_id, Duration::from_millis(300));
    let ev = ops(
        &net,
        &dev,
        vec![Operation::RevokeDevice {
            user: "kim".into(),
            password: PASSWORD.into(),
            device: li.certificate.device,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    let batch = fetcher
        .revoked()
        .recv_timeout(Duration::from_secs(10))
        .expect("the revocation arrives");
    assert_eq!(batch, vec![li.certificate.device]);
    // Nothing is handed out twice.
    assert!(fetcher
        .revoked()
        .recv_timeout(Duration::from_millis(800))
        .is_err());
}

const DAY: u64 = 86_400;

/// A certificate for `dev`'s keys signed by the authority key in the server's data directory,
/// valid from `not_before` to `not_after` (unix seconds): certificates of any age, without
/// waiting for one to expire.
fn certificate_at(
    data: &Path,
    dev: &DeviceStore,
    user: &str,
    not_before: u64,
    not_after: u64,
) -> Certificate {
    let authority = Authority::from_secret_bytes(read_key(&data.join("authority.key")).unwrap());
    let (id, _) = dev.identity().unwrap();
    authority.certify(
        &UserName::parse(user).unwrap(),
        id.dh_public(),
        id.signing_public(),
        UnixTime(not_before),
        UnixTime(not_after),
    )
}

fn renew(net: &NetworkFile, dev: &DeviceStore, certificate: Certificate) -> Vec<LoginClientEvent> {
    ops(net, dev, vec![Operation::Renew { certificate }])
}

fn certified(events: &[LoginClientEvent]) -> Option<Certificate> {
    events.iter().find_map(|e| match e {
        LoginClientEvent::Certified(c) => Some((**c).clone()),
        _ => None,
    })
}

#[test]
fn expired_certificates_renew_within_the_grace_period_only() {
    // The default grace: 30 days.
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path());
    assert_eq!(o.renewal_grace, Duration::from_secs(30 * DAY));
    let server = LoginServerHandle::start(o).unwrap();
    let net = server.network().clone();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(&net, &dev, "lena", PASSWORD),
        LoginClientEvent::Registered
    );
    let first = login(&net, &dev, "lena", Some(PASSWORD), V, T).unwrap();
    let now = wall_clock().0;

    // Expired 29 days ago: renewed without the password, for another full lifetime.
    let old = certificate_at(dir.path(), &dev, "lena", now - 30 * DAY, now - 29 * DAY);
    dev.save_certificate(&old).unwrap();
    let li = login(&net, &dev, "lena", None, V, T).unwrap();
    assert!(li.renewed);
    assert_eq!(li.certificate.device, first.certificate.device);
    assert!(li.certificate.not_after.0 >= now + 23 * 3600);
    li.certificate
        .verify_for_key(
            &net.trusted().unwrap(),
            wall_clock(),
            &li.device.dh_public(),
        )
        .unwrap();
    assert_eq!(dev.certificate().unwrap(), li.certificate, "stored");

    // Expired 31 days ago: refused with its own error, not as a bad proof.
    let stale = certificate_at(dir.path(), &dev, "lena", now - 32 * DAY, now - 31 * DAY);
    let ev = renew(&net, &dev, stale.clone());
    assert!(
        ev.iter()
            .any(|e| refused(e) == Some(LoginError::RenewalExpired)),
        "{ev:?}"
    );
    // Without a password the caller is told the password is needed; with it, it logs in.
    dev.save_certificate(&stale).unwrap();
    assert!(matches!(
        login(&net, &dev, "lena", None, V, T),
        Err(LoginFailure::PasswordNeeded(PasswordNeeded::Expired))
    ));
    let li = login(&net, &dev, "lena", Some(PASSWORD), V, T).unwrap();
    assert!(!li.renewed, "logged in with the password");

    // A revoked device is refused even inside the grace period.
    let ev = ops(
        &net,
        &dev,
        vec![Operation::RevokeDevice {
            user: "lena".into(),
            password: PASSWORD.into(),
            device: li.certificate.device,
        }],
    );
    assert!(ev.contains(&LoginClientEvent::Done), "{ev:?}");
    let recent = certificate_at(dir.path(), &dev, "lena", now - 2 * DAY, now - DAY);
    let ev = renew(&net, &dev, recent.clone());
    assert!(
        ev.iter().any(|e| refused(e) == Some(LoginError::Revoked)),
        "{ev:?}"
    );
    dev.save_certificate(&recent).unwrap();
    assert!(matches!(
        login(&net, &dev, "lena", None, V, T),
        Err(LoginFailure::Revoked)
    ));
}

#[test]
fn the_renewal_grace_period_is_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.renewal_grace = Duration::from_secs(3600);
    let server = LoginServerHandle::start(o).unwrap();
    let net = server.network().clone();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    assert_eq!(
        register(&net, &dev, "milo", PASSWORD),
        LoginClientEvent::Registered
    );
    login(&net, &dev, "milo", Some(PASSWORD), V, T).unwrap();
    let now = wall_clock().0;
    // Expired 10 minutes ago: inside the hour.
    let ev = renew(
        &net,
        &dev,
        certificate_at(dir.path(), &dev, "milo", now - DAY, now - 600),
    );
    assert!(certified(&ev).is_some(), "{ev:?}");
    // Expired 2 hours ago: past it.
    let ev = renew(
        &net,
        &dev,
        certificate_at(dir.path(), &dev, "milo", now - DAY, now - 7200),
    );
    assert!(
        ev.iter()
            .any(|e| refused(e) == Some(LoginError::RenewalExpired)),
        "{ev:?}"
    );
}

#[test]
fn certificates_from_the_old_authority_key_renew_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dev = DeviceStore::open(tmp.path()).unwrap();
    let (old_key, before) = {
        let server = start(dir.path());
        let net = server.network().clone();
        assert_eq!(
            register(&net, &dev, "nina", PASSWORD),
            LoginClientEvent::Registered
        );
        let li = login(&net, &dev, "nina", Some(PASSWORD), V, T).unwrap();
        (net.authority.keys.clone(), li.certificate)
    };
    assert_eq!(old_key.len(), 1);

    // The operator's rotation, as README describes it: the old public key (hex) goes into
    // trusted-authorities.txt and authority.key is replaced by a new key.
    let new = Authority::generate(&mut Rng::from_seed_bytes(
        natter_transport::os_seed().unwrap(),
    ));
    std::fs::write(
        dir.path().join("trusted-authorities.txt"),
        format!("{}\n", old_key[0]),
    )
    .unwrap();
    write_private(&dir.path().join("authority.key"), &new.secret_bytes()).unwrap();

    let server = start(dir.path());
    let net = server.network().clone();
    assert_eq!(
        net.authority.keys,
        vec![hex(&new.public()), old_key[0].clone()],
        "both keys are listed in the network file"
    );
    // The certificate issued under the old key renews without the password...
    assert_eq!(dev.certificate().unwrap(), before);
    let li = login(&net, &dev, "nina", None, V, T).unwrap();
    assert!(li.renewed);
    assert_eq!(li.certificate.device, before.device);
    // ...into one signed by the new key alone.
    assert_eq!(li.certificate.authority, new.key_id());
    assert_ne!(li.certificate.authority, before.authority);
    li.certificate
        .verify_for_key(
            &TrustedAuthorities::new([new.public()]),
            wall_clock(),
            &li.device.dh_public(),
        )
        .unwrap();
    // New logins are signed by the new key too.
    dev.clear_certificate().unwrap();
    let fresh = login(&net, &dev, "nina", Some(PASSWORD), V, T).unwrap();
    assert_eq!(fresh.certificate.authority, new.key_id());
    drop(server);

    // Once the old key is dropped from trusted-authorities.txt, its certificates no longer
    // renew: the device needs the password.
    std::fs::remove_file(dir.path().join("trusted-authorities.txt")).unwrap();
    let server = start(dir.path());
    let net = server.network().clone();
    assert_eq!(net.authority.keys, vec![hex(&new.public())]);
    dev.save_certificate(&before).unwrap();
    assert!(matches!(
        login(&net, &dev, "nina", None, V, T),
        Err(LoginFailure::PasswordNeeded(PasswordNeeded::NotAccepted))
    ));
    assert!(
        !login(&net, &dev, "nina", Some(PASSWORD), V, T)
            .unwrap()
            .renewed
    );
}

#[test]
fn the_network_file_keeps_bootstrap_super_nodes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network.toml");
    let addrs = |net: &NetworkFile| -> Vec<String> {
        net.bootstrap.iter().map(|b| b.address.clone()).collect()
    };
    // The option writes its entries.
    let mut o = options(dir.path());
    o.bootstrap = vec!["198.18.0.10:4000".parse().unwrap()];
    let first = LoginServerHandle::start(o).unwrap();
    assert_eq!(addrs(first.network()), ["198.18.0.10:4000"]);
    assert_eq!(
        addrs(&NetworkFile::load(&path).unwrap()),
        ["198.18.0.10:4000"]
    );
    drop(first);

    // An operator adds one by hand, and sets the super nodes' fallback ports.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[bootstrap]]\naddress = \"198.18.0.11:4000\"\n");
    text.push_str("\n[overlay]\nfallback_ports = [80, 443]\n");
    std::fs::write(&path, text).unwrap();

    // A restart without the option keeps both, and the fallback ports (and still rewrites
    // the rest of the file).
    let second = start(dir.path());
    let want = ["198.18.0.10:4000", "198.18.0.11:4000"];
    assert_eq!(addrs(second.network()), want);
    let on_disk = NetworkFile::load(&path).unwrap();
    assert_eq!(addrs(&on_disk), want);
    assert_eq!(
        on_disk.fallback_ports().unwrap(),
        natter_core::overlay::FallbackPorts::Absolute {
            plain: 80,
            tls: 443
        }
    );
    assert_eq!(second.network().overlay, on_disk.overlay);
    assert_eq!(on_disk.login.address, second.local_addr().to_string());
    drop(second);

    // The option adds only what is new.
    let mut o = options(dir.path());
    o.bootstrap = vec![
        "198.18.0.11:4000".parse().unwrap(),
        "[2001:db8::1]:4000".parse().unwrap(),
    ];
    let third = LoginServerHandle::start(o).unwrap();
    let want = ["198.18.0.10:4000", "198.18.0.11:4000", "[2001:db8::1]:4000"];
    assert_eq!(addrs(third.network()), want);
    assert_eq!(addrs(&NetworkFile::load(&path).unwrap()), want);
}

#[test]
fn an_unreadable_network_file_does_not_stop_the_server_and_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network.toml");
    let addrs = |net: &NetworkFile| -> Vec<String> {
        net.bootstrap.iter().map(|b| b.address.clone()).collect()
    };
    let mut o = options(dir.path());
    o.bootstrap = vec!["198.18.0.10:4000".parse().unwrap()];
    drop(LoginServerHandle::start(o).unwrap());

    // Truncated in the middle (a crash while writing, a full disk), then plain garbage.
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.find("address").unwrap() + 12;
    for broken in [&text[..cut], "\u{0}\u{1}[[[ not toml = = ="] {
        std::fs::write(&path, broken).unwrap();
        let server = start(dir.path());
        let on_disk = NetworkFile::load(&path).expect("rewritten valid");
        assert_eq!(&on_disk, server.network());
        assert_eq!(on_disk.login.address, server.local_addr().to_string());
        assert!(on_disk.bootstrap.is_empty(), "nothing could be kept");
    }

    // Valid TOML that no longer validates as a network file (no [login] table, a bad
    // authority key, an entry without an address): its bootstrap entries are still kept.
    std::fs::write(
        &path,
        "[authority]\nkeys = [\"not hex\"]\n\n[[bootstrap]]\naddress = \"198.18.0.11:4000\"\n\
         \n[[bootstrap]]\nport = 4000\n\n[[bootstrap]]\naddress = \"198.18.0.12:4000\"\n",
    )
    .unwrap();
    let server = start(dir.path());
    let want = ["198.18.0.11:4000", "198.18.0.12:4000"];
    assert_eq!(addrs(server.network()), want);
    assert_eq!(addrs(&NetworkFile::load(&path).unwrap()), want);
}

#[test]
fn the_renewer_keeps_retrying_a_certificate_not_accepted_and_stops_when_it_expired() {
    use natter_server::machine::LoginServerEvent;
    use std::sync::mpsc::RecvTimeoutError;

    // The device directory must outlive the test body: bind it.
    let Registered {
        dir,
        server,
        net,
        dev,
        _device_dir: _keep,
    } = registered("oscar");
    login(&net, &dev, "oscar", Some(PASSWORD), V, T).unwrap();
    let now = wall_clock().0;
    let refusal = |server: &LoginServerHandle| loop {
        match server.events().recv_timeout(Duration::from_secs(20)) {
            Ok(LoginServerEvent::Refused { error, .. }) => return error,
            Ok(_) => {}
            Err(e) => panic!("no refusal: {e}"),
        }
    };

    // Signed by a key this server does not trust yet (another login server already signs with
    // the next key of a rolling rotation), expired an hour ago so renewal is due at once: the
    // server answers BadProof, which may pass, so the renewer keeps going.
    let (id, _) = dev.identity().unwrap();
    let next_key = Authority::generate(&mut Rng::from_seed(7));
    let ahead = next_key.certify(
        &UserName::parse("oscar").unwrap(),
        id.dh_public(),
        id.signing_public(),
        UnixTime(now - DAY),
        UnixTime(now - 3600),
    );
    dev.save_certificate(&ahead).unwrap();
    let renewer = Renewer::spawn(net.clone(), dev.clone(), ahead);
    assert_eq!(refusal(&server), LoginError::BadProof);
    assert_eq!(
        renewer
            .certificates()
            .recv_timeout(Duration::from_secs(2))
            .unwrap_err(),
        RecvTimeoutError::Timeout,
        "still running, backing off"
    );
    drop(renewer);

    // Expired longer ago than the grace period: only the password helps, so it stops and
    // its channel says so.
    let stale = certificate_at(dir.path(), &dev, "oscar", now - 32 * DAY, now - 31 * DAY);
    dev.save_certificate(&stale).unwrap();
    let renewer = Renewer::spawn(net, dev.clone(), stale);
    assert_eq!(refusal(&server), LoginError::RenewalExpired);
    assert_eq!(
        renewer
            .certificates()
            .recv_timeout(Duration::from_secs(20))
            .unwrap_err(),
        RecvTimeoutError::Disconnected,
        "stopped for good"
    );
}

#[test]
fn logging_in_with_the_password_skips_the_refused_certificate() {
    use natter_server::machine::LoginServerEvent;
    use natter_transport::login::client::login_with_password;

    // The device directory must outlive the test body: bind it.
    let Registered {
        dir,
        server,
        net,
        dev,
        _device_dir: _keep,
    } = registered("pia");
    let now = wall_clock().0;
    let stale = certificate_at(dir.path(), &dev, "pia", now - 32 * DAY, now - 31 * DAY);
    dev.save_certificate(&stale).unwrap();
    assert!(matches!(
        login(&net, &dev, "pia", None, V, T),
        Err(LoginFailure::PasswordNeeded(PasswordNeeded::Expired))
    ));
    let drain = || server.events().try_iter().collect::<Vec<_>>();
    drain();

    // A wrong password leaves the stored certificate alone.
    assert!(matches!(
        login_with_password(&net, &dev, "pia", "not pia's password", V, T),
        Err(LoginFailure::WrongPassword)
    ));
    assert_eq!(dev.certificate().unwrap(), stale);
    // So does `login` with a wrong password (it tries the certificate, then the password).
    assert!(matches!(
        login(&net, &dev, "pia", Some("not pia's password"), V, T),
        Err(LoginFailure::WrongPassword)
    ));
    assert_eq!(dev.certificate().unwrap(), stale);
    drain();

    // The right one: one password login, no renewal attempt with the refused certificate.
    let li = login_with_password(&net, &dev, "pia", PASSWORD, V, T).unwrap();
    assert!(!li.renewed);
    assert_eq!(dev.certificate().unwrap(), li.certificate, "stored");
    let events = drain();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LoginServerEvent::Refused { .. })),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, LoginServerEvent::Certified { renewal: false, .. }))
            .count(),
        1,
        "{events:?}"
    );
}

/// Issue 18's buddy list through a real login server: a new install that knows only the
/// password gets the list back; two devices storing at once conflict instead of losing an
/// edit; after a password change the list is still readable, with the new password only.
#[test]
fn a_new_install_gets_the_buddy_list_back_with_the_password_alone() {
    use natter_core::contacts::{backup, envelope, BuddyList, ListKey, StretchParams};

    let r = registered("alice");
    let alice = UserName::parse("alice").unwrap();
    let trusted = r.net.trusted().unwrap();
    let mut rng = Rng::from_seed(18);
    let laptop = login(&r.net, &r.dev, "alice", Some(PASSWORD), V, T).unwrap();
    let mut list = BuddyList::new(laptop.certificate.device);
    let bob = UserName::parse("bob").unwrap();
    list.set_contact(&bob, true, 1_000).unwrap();
    list.set_nickname(&bob, "Bobby", 1_001).unwrap();
    let key = ListKey(rng.bytes32());
    let store = |dev: &DeviceStore, cert: &Certificate, base, version, list: &BuddyList, env| {
        let (id, _) = dev.identity().unwrap();
        let sealed = backup::seal(
            list,
            version,
            &key,
            &id,
            cert,
            natter_transport::wall_clock(),
            &mut Rng::from_seed(version),
        )
        .unwrap();
        ops(
            &r.net,
            dev,
            vec![Operation::StoreBuddyList {
                certificate: cert.clone(),
                base,
                version,
                backup: sealed,
                envelope: env,
            }],
        )
        .pop()
        .unwrap()
    };
    let wrapped = envelope::wrap(&key, &alice, PASSWORD, StretchParams::FLOOR, &mut rng).unwrap();
    assert_eq!(
        store(&r.dev, &laptop.certificate, 0, 1, &list, wrapped),
        LoginClientEvent::BuddyListStored { version: 1 }
    );

    // A new install: its own keys, the password, nothing else.
    let fetch = |dev: &DeviceStore, cert: &Certificate| match ops(
        &r.net,
        dev,
        vec![Operation::FetchBuddyList {
            certificate: cert.clone(),
        }],
    )
    .pop()
    .unwrap()
    {
        LoginClientEvent::BuddyList {
            version,
            backup,
            envelope,
        } => (version, backup, envelope),
        other => panic!("unexpected {other:?}"),
    };
    let phone_dir = tempfile::tempdir().unwrap();
    let phone_dev = DeviceStore::open(phone_dir.path()).unwrap();
    let phone = login(&r.net, &phone_dev, "alice", Some(PASSWORD), V, T).unwrap();
    let (version, sealed, wrapped) = fetch(&phone_dev, &phone.certificate);
    assert_eq!(version, 1);
    let key_back = envelope::unwrap(&wrapped, &alice, PASSWORD, StretchParams::FLOOR).unwrap();
    let opened = backup::open(
        &sealed,
        &alice,
        &key_back,
        &trusted,
        0,
        phone.certificate.device,
        natter_transport::wall_clock(),
    )
    .unwrap();
    assert_eq!(opened.list.encode().unwrap(), list.encode().unwrap());

    // Both devices edit and store on version 1: the second is told to merge and retry.
    let mut on_phone = opened.list;
    on_phone
        .set_contact(&UserName::parse("carol").unwrap(), true, 2_000)
        .unwrap();
    assert_eq!(
        store(&phone_dev, &phone.certificate, 1, 2, &on_phone, Vec::new()),
        LoginClientEvent::BuddyListStored { version: 2 }
    );
    list.set_group(&bob, "work", true, 2_001).unwrap();
    assert_eq!(
        refused(&store(&r.dev, &laptop.certificate, 1, 2, &list, Vec::new())),
        Some(LoginError::VersionConflict)
    );
    let (version, sealed, _) = fetch(&r.dev, &laptop.certificate);
    let theirs = backup::open(
        &sealed,
        &alice,
        &key,
        &trusted,
        1,
        laptop.certificate.device,
        natter_transport::wall_clock(),
    )
    .unwrap();
    list.merge(&theirs.list);
    assert_eq!(
        store(
            &r.dev,
            &laptop.certificate,
            version,
            version + 1,
            &list,
            Vec::new()
        ),
        LoginClientEvent::BuddyListStored { version: 3 }
    );

    // A password change: the laptop rewraps the same key; a third install reads the list
    // with the new password, and the old one no longer opens the envelope.
    let new_password = "a whole new passphrase";
    let done = ops(
        &r.net,
        &r.dev,
        vec![Operation::ChangePassword {
            user: "alice".into(),
            old: PASSWORD.into(),
            new: new_password.into(),
            revoke_others: false,
        }],
    );
    assert!(done.contains(&LoginClientEvent::Done), "{done:?}");
    let rewrapped =
        envelope::wrap(&key, &alice, new_password, StretchParams::FLOOR, &mut rng).unwrap();
    assert_eq!(
        store(&r.dev, &laptop.certificate, 3, 4, &list, rewrapped),
        LoginClientEvent::BuddyListStored { version: 4 }
    );
    let tablet_dir = tempfile::tempdir().unwrap();
    let tablet_dev = DeviceStore::open(tablet_dir.path()).unwrap();
    let tablet = login(&r.net, &tablet_dev, "alice", Some(new_password), V, T).unwrap();
    let (_, sealed, wrapped) = fetch(&tablet_dev, &tablet.certificate);
    assert!(envelope::unwrap(&wrapped, &alice, PASSWORD, StretchParams::FLOOR).is_err());
    let key_back = envelope::unwrap(&wrapped, &alice, new_password, StretchParams::FLOOR).unwrap();
    let last = backup::open(
        &sealed,
        &alice,
        &key_back,
        &trusted,
        0,
        tablet.certificate.device,
        natter_transport::wall_clock(),
    )
    .unwrap();
    assert!(last.list.is_contact(&UserName::parse("carol").unwrap()));
    assert_eq!(
        last.list.get(&bob).unwrap().groups().collect::<Vec<_>>(),
        ["work"]
    );
    // A revoked device reads and writes nothing more.
    let revoked = ops(
        &r.net,
        &r.dev,
        vec![Operation::RevokeDevice {
            user: "alice".into(),
            password: new_password.into(),
            device: phone.certificate.device,
        }],
    );
    assert!(revoked.contains(&LoginClientEvent::Done), "{revoked:?}");
    let asked = ops(
        &r.net,
        &phone_dev,
        vec![Operation::FetchBuddyList {
            certificate: phone.certificate.clone(),
        }],
    );
    assert_eq!(refused(asked.last().unwrap()), Some(LoginError::Revoked));
    assert_eq!(
        refused(&store(
            &phone_dev,
            &phone.certificate,
            4,
            5,
            &list,
            Vec::new()
        )),
        Some(LoginError::Revoked)
    );
    // A device that saw version 4 refuses the older copy the server could hand it.
    assert_eq!(
        backup::open(
            &sealed,
            &alice,
            &key,
            &trusted,
            5,
            laptop.certificate.device,
            natter_transport::wall_clock()
        )
        .unwrap_err(),
        backup::BackupError::RolledBack { seen: 5, found: 4 }
    );
}
