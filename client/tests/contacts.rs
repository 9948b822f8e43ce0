//! The buddy list end to end: a real login server (TLS, SQLite) and real clients, each with
//! a data directory of its own.

use std::time::Duration;

use natter::{Audio, Client, ContactsError, Event};
use natter_core::contacts::BackupError;
use natter_fixtures::{register, wait_for, LoginServer, TestNet, PASSWORD};

const NEW_PASSWORD: &str = "another fixture passphrase";

fn device(server: &LoginServer, name: &str) -> Client {
    Client::builder(server.network())
        .data_dir(server.dir().join(name))
        .build()
        .unwrap()
}

/// Log `c` in with `password` and wait for the background sync that follows.
fn log_in(c: &Client, password: &str) -> Event {
    c.login("alice", Some(password)).unwrap();
    wait_for(c, |e| {
        matches!(
            e,
            Event::ContactsSynced { .. } | Event::ContactsSyncFailed { .. }
        )
    })
    .expect("a sync after the login")
}

/// The list as (user, contact, blocked, nickname, groups), for comparing devices.
fn summary(c: &Client) -> Vec<(String, bool, bool, String, Vec<String>)> {
    c.contacts()
        .into_iter()
        .map(|e| {
            (
                e.user.to_string(),
                e.contact,
                e.blocked,
                e.nickname,
                e.groups,
            )
        })
        .collect()
}

fn backup_row(server: &LoginServer) -> (i64, Vec<u8>) {
    let db = rusqlite::Connection::open(server.dir().join("login/accounts.sqlite")).unwrap();
    db.query_row("SELECT version, backup FROM buddy_lists", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

fn set_backup(server: &LoginServer, version: i64, backup: &[u8]) {
    let db = rusqlite::Connection::open(server.dir().join("login/accounts.sqlite")).unwrap();
    db.execute(
        "UPDATE buddy_lists SET version = ?1, backup = ?2",
        rusqlite::params![version, backup],
    )
    .unwrap();
}

#[test]
fn the_list_follows_the_user_to_new_devices_merges_and_survives_a_password_change() {
    let mut server = LoginServer::start();
    register(&server.network(), "alice", PASSWORD);

    // The first login makes the list's key and backs up the (empty) list.
    let laptop = device(&server, "laptop");
    assert!(matches!(
        log_in(&laptop, PASSWORD),
        Event::ContactsSynced {
            version: 1,
            merged: false
        }
    ));
    assert!(laptop.add_contact("bob", "").unwrap());
    assert!(
        !laptop.add_contact("BOB", "").unwrap(),
        "names are case-insensitive"
    );
    laptop.set_nickname("bob", "Bobby").unwrap();
    laptop.set_group("bob", "work", true).unwrap();
    laptop.block("mallory", true).unwrap();
    assert!(matches!(
        laptop.add_contact("no spaces", ""),
        Err(ContactsError::InvalidName { .. })
    ));
    assert!(matches!(
        laptop.set_nickname("bob", &"x".repeat(129)),
        Err(ContactsError::Edit(_))
    ));
    let synced = laptop.sync_contacts(None).unwrap();
    assert!(synced.version >= 2, "{synced:?}");

    // A new install gets the whole list back with the password alone.
    let phone = device(&server, "phone");
    assert!(matches!(
        log_in(&phone, PASSWORD),
        Event::ContactsSynced { merged: true, .. }
    ));
    assert_eq!(summary(&phone), summary(&laptop));
    assert_eq!(
        summary(&phone)[0],
        (
            "bob".into(),
            true,
            false,
            "Bobby".into(),
            vec!["work".to_string()]
        )
    );
    assert!(phone.contact("mallory").unwrap().blocked);

    // Edits on both devices at once, neither synced first: both stay.
    laptop.add_contact("carol", "").unwrap();
    phone.set_nickname("bob", "B.").unwrap();
    phone.remove_contact("mallory").unwrap();
    for _ in 0..2 {
        laptop.sync_contacts(None).unwrap();
        phone.sync_contacts(None).unwrap();
    }
    assert_eq!(summary(&phone), summary(&laptop));
    let names: Vec<_> = laptop
        .contacts()
        .into_iter()
        .map(|c| c.user.to_string())
        .collect();
    assert_eq!(names, ["bob", "carol", "mallory"]);
    assert_eq!(laptop.contact("bob").unwrap().nickname, "B.");
    assert!(!laptop.contact("mallory").unwrap().contact);
    assert!(laptop.contact("mallory").unwrap().blocked);

    // A password change keeps the list readable by a new install with the new password.
    phone
        .change_password(PASSWORD, NEW_PASSWORD, false)
        .unwrap();
    assert!(matches!(
        wait_for(&phone, |e| matches!(e, Event::ContactsSynced { .. })),
        Some(Event::ContactsSynced { merged: false, .. })
    ));
    let tablet = device(&server, "tablet");
    assert!(matches!(
        log_in(&tablet, NEW_PASSWORD),
        Event::ContactsSynced { merged: true, .. }
    ));
    assert_eq!(summary(&tablet), summary(&laptop));

    // With the login server gone, an edit is still made: kept on disk (in this user's own
    // file) until a sync can store it, and the failed sync says it will try again.
    drop((laptop, phone));
    server.shutdown();
    queued(&tablet);
    tablet.add_contact("dave", "").unwrap();
    match wait_for(&tablet, |e| matches!(e, Event::ContactsSyncFailed { .. })) {
        Some(Event::ContactsSyncFailed { retry, .. }) => assert!(retry.is_some()),
        other => panic!("expected a failed sync: {other:?}"),
    }
    let file = std::fs::read(server.dir().join("tablet/contacts-alice.bin")).unwrap();
    assert!(file.windows(4).any(|w| w == b"dave"));
}

#[test]
fn a_tampered_or_rolled_back_backup_is_refused_and_the_local_list_kept() {
    let server = LoginServer::start();
    register(&server.network(), "alice", PASSWORD);
    let laptop = device(&server, "laptop");
    log_in(&laptop, PASSWORD);
    laptop.add_contact("bob", "").unwrap();
    laptop.sync_contacts(None).unwrap();
    let (old_version, old_backup) = backup_row(&server);
    laptop.add_contact("carol", "").unwrap();
    laptop.sync_contacts(None).unwrap();
    let (version, backup) = backup_row(&server);
    let before = summary(&laptop);
    assert_eq!(before.len(), 2);

    // One bit flipped in the stored backup.
    let mut tampered = backup.clone();
    let at = tampered.len() - 80; // in the ciphertext, which the signature covers
    tampered[at] ^= 1;
    set_backup(&server, version, &tampered);
    let err = laptop.sync_contacts(None).unwrap_err();
    assert!(
        matches!(err, ContactsError::Backup(BackupError::Signature)),
        "{err}"
    );
    assert_eq!(summary(&laptop), before);

    // Truncated.
    set_backup(&server, version, &backup[..backup.len() - 10]);
    let err = laptop.sync_contacts(None).unwrap_err();
    assert!(matches!(err, ContactsError::Backup(_)), "{err}");

    // The previous version, replayed by the server.
    set_backup(&server, old_version, &old_backup);
    let err = laptop.sync_contacts(None).unwrap_err();
    assert!(
        matches!(err, ContactsError::Backup(BackupError::RolledBack { .. })),
        "{err}"
    );
    assert_eq!(summary(&laptop), before);

    // Put back, the backup is taken again.
    set_backup(&server, version, &backup);
    assert_eq!(laptop.sync_contacts(None).unwrap().version, version as u64);
}

#[test]
fn a_blocked_users_calls_never_ring() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let mallory = net.client("mallory");
    let bob = net.client("bob");
    alice.block("mallory", true).unwrap();

    let unanswered = mallory.call("alice", Audio::silent()).unwrap();
    // Mallory's invite has seconds to ring (it takes milliseconds on loopback): it never
    // does, and mallory is not told so (no ringing, no refusal). Then bob calls: the first
    // call that rings must be bob's.
    std::thread::sleep(Duration::from_secs(3));
    let heard = queued(&mallory);
    assert!(
        !heard.iter().any(|e| matches!(
            e,
            Event::Ringing { call, .. } | Event::CallEnded { call, .. } if *call == unanswered.id()
        )),
        "{heard:?}"
    );
    let _call = bob.call("alice", Audio::silent()).unwrap();
    match wait_for(&alice, |e| matches!(e, Event::IncomingCall { .. })) {
        Some(Event::IncomingCall { from, .. }) => assert_eq!(from.as_str(), "bob"),
        other => panic!("expected bob's call: {other:?}"),
    }
}

/// `user`'s device `name`, registered and logged in with the fixture password.
fn user_device(server: &LoginServer, user: &str, name: &str) -> Client {
    register(&server.network(), user, PASSWORD);
    let c = Client::builder(server.network())
        .data_dir(server.dir().join(name))
        .build()
        .unwrap();
    c.login(user, Some(PASSWORD)).unwrap();
    c
}

/// The events `c` has queued now (after a sync that pushed them).
fn queued(c: &Client) -> Vec<Event> {
    std::iter::from_fn(|| c.events().try_recv().ok()).collect()
}

fn requests_in(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ContactRequest { from, note } => Some((from.to_string(), note.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_request_waits_for_every_device_and_is_accepted_declined_or_blocked() {
    let server = LoginServer::start();
    let alice = user_device(&server, "alice", "alice");
    let bob = user_device(&server, "bob", "bob-laptop");
    let carol = user_device(&server, "carol", "carol");
    let mallory = user_device(&server, "mallory", "mallory");
    bob.block("mallory", true).unwrap();
    bob.sync_contacts(None).unwrap();
    queued(&bob);

    // Sent while bob's devices are not looking: it waits in the network.
    alice
        .add_contact("bob", "it's alice, from the lab")
        .unwrap();
    carol.add_contact("bob", "").unwrap();
    mallory.add_contact("bob", "buy now").unwrap();
    alice.add_contact("nobody-here", "").unwrap();
    for c in [&alice, &carol, &mallory] {
        c.sync_contacts(None).unwrap();
    }
    assert!(queued(&alice).iter().any(|e| matches!(
        e,
        Event::ContactRequestFailed { user, .. } if user.as_str() == "nobody-here"
    )));

    // Every device of bob's gets it, a new install included; mallory's never comes.
    bob.sync_contacts(None).unwrap();
    let phone = user_device(&server, "bob", "bob-phone");
    for device in [&bob, &phone] {
        let got = requests_in(&queued(device));
        assert_eq!(
            got,
            [
                ("alice".to_string(), "it's alice, from the lab".to_string()),
                ("carol".to_string(), String::new()),
            ],
            "{got:?}"
        );
        let alice_entry = device.contact("alice").unwrap();
        assert!(!alice_entry.contact);
        assert_eq!(
            alice_entry.request.as_deref(),
            Some("it's alice, from the lab")
        );
        assert!(device
            .contact("mallory")
            .is_none_or(|m| m.request.is_none()));
    }
    // Once announced, not again.
    bob.sync_contacts(None).unwrap();
    assert!(requests_in(&queued(&bob)).is_empty());

    // The laptop accepts alice and declines carol; alice hears of it, carol does not.
    assert!(bob.add_contact("alice", "").unwrap());
    assert!(bob.decline_contact("carol").unwrap());
    assert!(!bob.decline_contact("carol").unwrap());
    bob.sync_contacts(None).unwrap();
    alice.sync_contacts(None).unwrap();
    assert!(queued(&alice).iter().any(|e| matches!(
        e,
        Event::ContactAccepted { user } if user.as_str() == "bob"
    )));
    carol.sync_contacts(None).unwrap();
    assert!(!queued(&carol)
        .iter()
        .any(|e| matches!(e, Event::ContactAccepted { .. })));
    // The phone sees it answered: alice a contact (through the list), no requests left.
    phone.sync_contacts(None).unwrap();
    let on_phone = phone.contacts();
    assert!(on_phone.iter().all(|c| c.request.is_none()), "{on_phone:?}");
    assert!(phone.contact("alice").unwrap().contact);
    assert!(phone.contact("carol").is_none());
    // Nothing is left waiting at the server but... nothing: mallory's was dropped there too.
    let db = rusqlite::Connection::open(server.dir().join("login/accounts.sqlite")).unwrap();
    let left: i64 = db
        .query_row(
            "SELECT count(*) FROM contact_requests WHERE recipient = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn a_password_changed_elsewhere_is_healed_by_the_next_login_with_it() {
    use natter_core::login::client::{LoginClientEvent, Operation};
    use natter_transport::login::client::{run_operations, DeviceStore};
    use natter_transport::login::network::NetworkFile;

    let server = LoginServer::start();
    let laptop = user_device(&server, "alice", "laptop");
    laptop.add_contact("bob", "").unwrap();
    laptop.sync_contacts(None).unwrap();
    // The password changes from a device that never wraps the list's key again (as if its
    // rewrap was lost): the envelope on the server stays under the old password.
    let dir = tempfile::tempdir().unwrap();
    let store = DeviceStore::open(dir.path()).unwrap();
    let (id, _) = store.identity().unwrap();
    let net = NetworkFile::load(server.network_path()).unwrap();
    let events = run_operations(
        &net,
        &id,
        natter::Version::parse("0.1.0").unwrap(),
        false,
        vec![Operation::ChangePassword {
            user: "alice".into(),
            old: PASSWORD.into(),
            new: NEW_PASSWORD.into(),
            revoke_others: false,
        }],
        Duration::from_secs(15),
    )
    .unwrap();
    assert!(events.contains(&LoginClientEvent::Done), "{events:?}");
    // A new install with the new password cannot open the envelope yet...
    let tablet = device(&server, "tablet");
    tablet.login("alice", Some(NEW_PASSWORD)).unwrap();
    assert!(matches!(
        tablet.sync_contacts(Some(NEW_PASSWORD)),
        Err(ContactsError::KeyUnavailable)
    ));
    assert!(tablet.contacts().is_empty());
    // ...until a device that holds the key logs in with it: it wraps the key again.
    laptop.login("alice", Some(NEW_PASSWORD)).unwrap();
    let synced = tablet.sync_contacts(Some(NEW_PASSWORD)).unwrap();
    assert!(synced.merged, "{synced:?}");
    assert_eq!(summary(&tablet), summary(&laptop));
}

#[test]
fn two_users_who_add_each_other_at_once_both_hear_it_accepted() {
    let server = LoginServer::start();
    let alice = user_device(&server, "alice", "alice");
    let bob = user_device(&server, "bob", "bob");
    // Each asks before seeing the other's request.
    alice.add_contact("bob", "").unwrap();
    bob.add_contact("alice", "").unwrap();
    alice.sync_contacts(None).unwrap();
    bob.sync_contacts(None).unwrap();
    alice.sync_contacts(None).unwrap();
    for (me, them) in [(&alice, "bob"), (&bob, "alice")] {
        let events = queued(me);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::ContactAccepted { user } if user.as_str() == them)),
            "{events:?}"
        );
        assert!(requests_in(&events).is_empty(), "{events:?}");
        assert!(me.contact(them).unwrap().request.is_none());
    }
}
