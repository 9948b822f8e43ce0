//! Presence on this device, with real clients on loopback: do not disturb refuses calls
//! with Busy, invisible looks offline in search and can still call.

use std::time::Duration;

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
