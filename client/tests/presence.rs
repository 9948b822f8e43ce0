//! Presence with real clients on loopback: do not disturb refuses calls with Busy, invisible
//! looks offline in search and can still call, and contacts see each other come and go,
//! pushed through the super node.

use std::time::{Duration, Instant};

use natter::{Audio, Availability, Client, EndReason, Event, PresenceError};
use natter_fixtures::{poll_until, wait_for, TestNet};

/// How many of `user`'s devices a search from `from` finds online.
fn online_devices(from: &Client, user: &str) -> usize {
    from.search(user).unwrap();
    match wait_for(from, |e| matches!(e, Event::SearchResult { .. })) {
        Some(Event::SearchResult { outcome, .. }) => outcome.online(),
        other => panic!("no search result: {other:?}"),
    }
}

#[test]
fn do_not_disturb_refuses_calls_and_invisible_looks_offline_yet_calls() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");

    assert_eq!(
        bob.set_presence(Availability::Offline, ""),
        Err(PresenceError::Offline)
    );
    assert_eq!(
        bob.set_presence(Availability::Away, &"x".repeat(257)),
        Err(PresenceError::MoodTooLong(257))
    );
    bob.set_presence(Availability::DoNotDisturb, "in a meeting")
        .unwrap();
    assert_eq!(bob.presence().mood, "in a meeting");
    let call = alice.call("bob", Audio::silent()).unwrap();
    match wait_for(&alice, |e| matches!(e, Event::CallEnded { .. })) {
        Some(Event::CallEnded { reason, .. }) => assert_eq!(reason, EndReason::Busy),
        other => panic!("expected the call to end busy: {other:?}"),
    }
    drop(call);
    // It never rang; bob is told he missed it.
    match wait_for(&bob, |e| {
        matches!(e, Event::IncomingCall { .. } | Event::MissedBusy { .. })
    }) {
        Some(Event::MissedBusy { from, .. }) => assert_eq!(from.as_str(), "alice"),
        other => panic!("expected a missed call: {other:?}"),
    }

    // Invisible: searches find bob offline, yet bob calls alice.
    assert_eq!(online_devices(&alice, "bob"), 1);
    bob.set_presence(Availability::Invisible, "").unwrap();
    assert!(
        poll_until(Duration::from_secs(10), || online_devices(&alice, "bob")
            == 0),
        "bob still looks online"
    );
    let out = bob.call("alice", Audio::silent()).unwrap();
    // Answered here, not by a helper thread: alice's searches below need her events.
    match wait_for(&alice, |e| matches!(e, Event::IncomingCall { .. })) {
        Some(Event::IncomingCall { call, .. }) => call.answer(Audio::silent()).unwrap(),
        other => panic!("invisible bob's call did not ring: {other:?}"),
    }
    assert!(matches!(
        wait_for(&bob, |e| matches!(e, Event::CallConnected { .. })),
        Some(Event::CallConnected { .. })
    ));
    out.hang_up().unwrap();
    // Back online: found again.
    bob.set_presence(Availability::Online, "").unwrap();
    assert!(poll_until(Duration::from_secs(10), || online_devices(
        &alice, "bob"
    ) == 1));
}

#[test]
fn online_turns_away_after_the_idle_time_the_app_reports() {
    let net = natter_fixtures::LoginServer::start();
    let c = Client::builder(net.network())
        .without_data_dir()
        .build()
        .unwrap();
    assert_eq!(c.presence().availability, Availability::Online);
    c.set_away_after(Some(Duration::from_secs(300)));
    c.report_idle(Duration::from_secs(301));
    assert_eq!(c.presence().availability, Availability::Away);
    c.report_idle(Duration::ZERO);
    assert_eq!(c.presence().availability, Availability::Online);
}

/// Wait for `c` to hear that `user` is `availability`; how long it took.
fn shown(c: &Client, user: &str, availability: Availability) -> Duration {
    let start = Instant::now();
    match wait_for(c, |e| {
        matches!(e, Event::ContactPresence { user: u, availability: a }
            if u.as_str() == user && *a == availability)
    }) {
        Some(_) => start.elapsed(),
        None => panic!("{user} never shown {}", availability.name()),
    }
}

#[test]
fn contacts_see_each_other_come_and_go_and_strangers_are_not_watched() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");
    let carol = net.client("carol");
    alice.add_contact("bob", "").unwrap();
    bob.add_contact("alice", "").unwrap();
    // As soon as bob is in alice's list, her node watches him: online (and carol, not a
    // contact, is never reported).
    let took = shown(&alice, "bob", Availability::Online);
    eprintln!("PRESENCE: bob first shown online after {took:?}");
    assert_eq!(
        alice.contact("bob").unwrap().availability,
        Availability::Online
    );
    // Invisible looks offline to contacts too; back online is shown online.
    bob.set_presence(Availability::Invisible, "").unwrap();
    let took = shown(&alice, "bob", Availability::Offline);
    eprintln!("PRESENCE: bob invisible, shown offline after {took:?}");
    bob.set_presence(Availability::Online, "").unwrap();
    let took = shown(&alice, "bob", Availability::Online);
    eprintln!("PRESENCE: bob back, shown online after {took:?}");
    // Bob stops: shown offline (he logs out cleanly, so at once).
    drop(bob);
    let took = shown(&alice, "bob", Availability::Offline);
    eprintln!("PRESENCE: bob closed, shown offline after {took:?}");
    assert_eq!(
        alice.contact("bob").unwrap().availability,
        Availability::Offline
    );
    // Carol was never watched: nothing about her came.
    drop(carol);
    std::thread::sleep(Duration::from_millis(500));
    let heard: Vec<Event> = std::iter::from_fn(|| alice.events().try_recv().ok()).collect();
    assert!(
        !heard
            .iter()
            .any(|e| matches!(e, Event::ContactPresence { user, .. } if user.as_str() == "carol")),
        "{heard:?}"
    );
    // A removed contact is no longer watched.
    alice.remove_contact("bob").unwrap();
    assert!(alice.contact("bob").is_none());
}

#[test]
fn a_request_and_its_acceptance_reach_online_devices_at_once() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");
    // Both in step with the login server: the next periodic pull is ten minutes away, so
    // what arrives below came because the sender's device poked the recipient's.
    alice.sync_contacts(None).unwrap();
    bob.sync_contacts(None).unwrap();
    let start = Instant::now();
    alice.add_contact("bob", "hi Bob").unwrap();
    match wait_for(&bob, |e| matches!(e, Event::ContactRequest { .. })) {
        Some(Event::ContactRequest { from, note }) => {
            assert_eq!((from.as_str(), note.as_str()), ("alice", "hi Bob"))
        }
        other => panic!("no request: {other:?}"),
    }
    let request = start.elapsed();
    let start = Instant::now();
    bob.add_contact("alice", "").unwrap();
    let accepted = wait_for(
        &alice,
        |e| matches!(e, Event::ContactAccepted { user } if user.as_str() == "bob"),
    );
    assert!(accepted.is_some(), "no acceptance");
    let acceptance = start.elapsed();
    // (Within the fixtures' deadline, far below the ten-minute pull: the pokes did it.)
    eprintln!(
        "POKE: the request reached bob after {request:?}, his acceptance alice after {acceptance:?}"
    );
}
