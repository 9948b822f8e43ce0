//! Chat with real clients on loopback: a message reaches the other user once, comes back
//! delivered, and is in both histories (kept across a restart, in SQLite); a message written
//! before the node runs waits in the queue and goes when it starts; limits and bad names are
//! typed errors.

use std::time::Instant;

use natter::{ChatError, Event, MessageStatus, MAX_MESSAGE_TEXT};
use natter_fixtures::{wait_for, TestNet};

#[test]
fn a_message_arrives_once_comes_back_delivered_and_stays_in_both_histories() {
    let net = TestNet::start();
    let alice = net.client("alice");
    let bob = net.client("bob");

    let start = Instant::now();
    let sent = alice.send_message("bob", "hello bob 👋").unwrap();
    assert_eq!(sent.status, MessageStatus::Sending);
    let got = match wait_for(&bob, |e| matches!(e, Event::MessageReceived { .. })) {
        Some(Event::MessageReceived { message }) => message,
        other => panic!("bob got nothing: {other:?}"),
    };
    let arrived = start.elapsed();
    assert_eq!(got.id, sent.id);
    assert_eq!(got.text, "hello bob 👋");
    assert_eq!(got.author.as_str(), "alice");
    assert!(!got.outgoing);
    let delivered = wait_for(&alice, |e| {
        matches!(
            e,
            Event::MessageStatus {
                status: MessageStatus::Delivered,
                ..
            }
        )
    });
    let receipt = start.elapsed();
    assert!(
        matches!(delivered, Some(Event::MessageStatus { id, .. }) if id == sent.id),
        "{delivered:?}"
    );
    eprintln!(
        "CHAT LOOPBACK: arrived after {arrived:?}, delivered (receipt back) after {receipt:?}"
    );

    // Bob answers; both histories show the same two messages in the same order.
    let answer = bob.send_message("alice", "hi alice").unwrap();
    assert!(wait_for(&alice, |e| matches!(e, Event::MessageReceived { .. })).is_some());
    let texts = |c: &natter::Client, with: &str| -> Vec<String> {
        c.history(with, None, 50)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect()
    };
    assert_eq!(texts(&alice, "bob"), vec!["hello bob 👋", "hi alice"]);
    assert_eq!(texts(&bob, "alice"), vec!["hello bob 👋", "hi alice"]);
    let mine = alice.history("bob", None, 50).unwrap();
    assert_eq!(mine[0].status, MessageStatus::Delivered);
    assert_eq!(mine[1].id, answer.id);
    // Paging back from the newest, and searching.
    let older = alice.history("bob", Some(answer.id), 10).unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].id, sent.id);
    let found = bob.search_messages("HELLO", 10).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, sent.id);

    // Bob restarts: the history is still there (SQLite in his data directory), and the
    // channels too (alice's next message opens in the same session).
    bob.stop().unwrap();
    let queued = alice.send_message("bob", "while you were away").unwrap();
    // Presence records are numbered by the second: a restart within the same second would
    // publish an "online" older than the "offline" it just left (a known limit).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    bob.start().unwrap();
    // It waited in bob's mailbox (or on alice's device), and comes once bob is back.
    match wait_for(&bob, |e| matches!(e, Event::MessageReceived { .. })) {
        Some(Event::MessageReceived { message }) => assert_eq!(message.id, queued.id),
        other => panic!("the message sent while bob restarted never came: {other:?}"),
    }
    assert_eq!(
        texts(&bob, "alice"),
        vec!["hello bob 👋", "hi alice", "while you were away"]
    );
}

#[test]
fn a_message_written_before_the_node_runs_is_sent_when_it_starts() {
    let net = TestNet::start();
    let bob = net.client("bob");
    let alice = net.builder("alice").build().unwrap();
    natter_fixtures::register(&net.network(), "alice", natter_fixtures::PASSWORD);
    alice
        .login("alice", Some(natter_fixtures::PASSWORD))
        .unwrap();
    let queued = alice.send_message("bob", "written offline").unwrap();
    assert_eq!(
        alice.history("bob", None, 10).unwrap()[0].status,
        MessageStatus::Sending
    );
    alice.start().unwrap();
    match wait_for(&bob, |e| matches!(e, Event::MessageReceived { .. })) {
        Some(Event::MessageReceived { message }) => {
            assert_eq!(message.id, queued.id);
            assert_eq!(message.text, "written offline");
        }
        other => panic!("the queued message never came: {other:?}"),
    }
    assert!(wait_for(&alice, |e| matches!(
        e,
        Event::MessageStatus {
            status: MessageStatus::Delivered,
            ..
        }
    ))
    .is_some());
    // Limits and names are typed errors, and store nothing.
    assert_eq!(
        alice.send_message("bob", &"x".repeat(MAX_MESSAGE_TEXT + 1)),
        Err(ChatError::TooLong {
            len: MAX_MESSAGE_TEXT + 1,
            max: MAX_MESSAGE_TEXT
        })
    );
    assert!(matches!(
        alice.send_message("no such name!", "hi"),
        Err(ChatError::InvalidName { .. })
    ));
    assert_eq!(alice.history("bob", None, 10).unwrap().len(), 1);
}
