//! Chat through the real node machines, in the simulator: five super nodes and users behind
//! every kind of NAT send each other end-to-end sealed messages through their super nodes;
//! each message arrives once per device, the sender hears it delivered (from the receipt,
//! sealed by the receiving device), lost pieces are sent again, and a blocked user's messages
//! go nowhere. Seeded, in virtual time.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use natter_core::chat::{Body, Item, MessageId, Target};
use natter_core::crypto::UserName;
use natter_core::testkit::TEST_WALL;
use natter_overlay::node::{ChatEvent, Node, NodeEvent};
use natter_sim::{HostId, Sim};

use common::sim::{user_node, world, world_bootstrap, World};

fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

/// `from` writes `text` to `to`; returns the message id.
fn write(sim: &mut Sim<NodeEvent>, from: HostId, to: &str, text: &str) -> MessageId {
    let to = user(to);
    sim.with_machine(from, |n: &mut Node, now| {
        let id = n.new_message_id();
        let item = Item {
            id,
            to: Target::Direct(to.clone()),
            lamport: 1,
            sent_at: TEST_WALL,
            body: Body::Text {
                text: text.into(),
                reply_to: None,
            },
        };
        n.send_chat(now, BTreeSet::from([to]), item);
        id
    })
}

/// The texts `host` received (after its first `seen` events), with their authors.
fn received(sim: &Sim<NodeEvent>, host: HostId, seen: usize) -> Vec<(String, String)> {
    sim.events(host)[seen..]
        .iter()
        .filter_map(|(_, e)| match e {
            NodeEvent::Chat(ChatEvent::Received(o)) => match &o.item.body {
                Body::Text { text, .. } => Some((o.user.to_string(), text.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// When (since the start) `host` heard message `id` delivered.
fn delivered_at(sim: &Sim<NodeEvent>, host: HostId, id: MessageId) -> Option<Duration> {
    sim.events(host).iter().find_map(|(t, e)| match e {
        NodeEvent::Chat(ChatEvent::Delivered { id: i, .. }) if *i == id => Some(*t),
        _ => None,
    })
}

#[test]
fn messages_cross_every_nat_once_and_come_back_delivered() {
    let first = cross_every_nat(31);
    // Ciphertexts differ from run to run (the ratchet keys come from the OS); what happens,
    // and when, does not.
    assert_eq!(first, cross_every_nat(31), "deterministic");
}

/// Every pair of three users writes both ways; returns when each receipt came back.
fn cross_every_nat(seed: u64) -> Vec<Duration> {
    let mut w = world(seed);
    w.sim.run_for(Duration::from_secs(10));
    // Every pair of an open user, one behind a symmetric NAT and one behind a UDP-blocking
    // firewall, both ways.
    let hosts = [(0, "user0"), (3, "user3"), (4, "user4")];
    let seen: Vec<usize> = hosts
        .iter()
        .map(|(i, _)| w.sim.events(w.users[*i]).len())
        .collect();
    let mut sent = Vec::new();
    for (i, from) in &hosts {
        for (_, to) in &hosts {
            if from != to {
                let start = w.sim.elapsed();
                let id = write(&mut w.sim, w.users[*i], to, &format!("{from} to {to}"));
                sent.push((*i, id, start));
            }
        }
    }
    w.sim.run_for(Duration::from_secs(10));
    for (k, (i, name)) in hosts.iter().enumerate() {
        let mut got = received(&w.sim, w.users[*i], seen[k]);
        got.sort();
        let mut want: Vec<(String, String)> = hosts
            .iter()
            .filter(|(_, f)| f != name)
            .map(|(_, f)| (f.to_string(), format!("{f} to {name}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name} got each message once");
    }
    let mut worst = Duration::ZERO;
    let mut times = Vec::new();
    for (i, id, start) in sent {
        let at = delivered_at(&w.sim, w.users[i], id).expect("delivered");
        worst = worst.max(at - start);
        times.push(at - start);
    }
    eprintln!("CHAT: slowest message delivered (receipt back) after {worst:?}");
    assert!(worst < Duration::from_secs(3), "{worst:?}");
    // The super nodes saw only ciphertext.
    for (i, _) in &hosts {
        let stats = w.sim.machine::<Node>(w.users[*i]).chat_stats();
        assert_eq!(stats.refused, 0, "{stats:?}");
    }
    times
}

#[test]
fn a_long_message_in_many_pieces_arrives_whole_and_a_blocked_user_is_not_heard() {
    let mut w = world(32);
    w.sim.run_for(Duration::from_secs(10));
    let (a, b) = (w.users[1], w.users[6]);
    let seen = w.sim.events(b).len();
    let long = "x".repeat(60_000);
    let id = write(&mut w.sim, a, "user6", &long);
    w.sim.run_for(Duration::from_secs(5));
    let got = received(&w.sim, b, seen);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len(), 60_000);
    assert!(delivered_at(&w.sim, a, id).is_some());
    // user6 blocks user1: nothing more is reported, and no receipt goes back.
    w.sim.with_machine(b, |n: &mut Node, _| {
        n.set_blocked(BTreeSet::from([user("user1")]))
    });
    let seen = w.sim.events(b).len();
    let id = write(&mut w.sim, a, "user6", "still there?");
    w.sim.run_for(Duration::from_secs(5));
    assert!(received(&w.sim, b, seen).is_empty());
    assert!(delivered_at(&w.sim, a, id).is_none());
    assert!(w.sim.machine::<Node>(b).chat_stats().blocked >= 1);
}

#[test]
fn under_heavy_loss_every_message_arrives_once_sent_again_until_its_receipt() {
    let mut w = world(33);
    w.sim.run_for(Duration::from_secs(10));
    // From now on a fifth of all packets is lost, each way.
    w.sim.set_internet_link(
        natter_sim::LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(10))
            .loss(0.2),
    );
    let (a, b) = (w.users[0], w.users[7]);
    let seen = w.sim.events(b).len();
    let mut ids = Vec::new();
    for n in 0..10 {
        // 1 to 5 pieces each.
        let text = format!("{n}:{}", "y".repeat(n * 500));
        ids.push(write(&mut w.sim, a, "user7", &text));
    }
    w.sim.run_for(Duration::from_secs(60));
    let mut got: Vec<String> = received(&w.sim, b, seen)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    got.sort();
    assert_eq!(
        got.len(),
        10,
        "each once: {:?}",
        got.iter().map(|t| t.len()).collect::<Vec<_>>()
    );
    got.dedup();
    assert_eq!(got.len(), 10);
    let slowest = ids
        .iter()
        .map(|id| delivered_at(&w.sim, a, *id).expect("delivered"))
        .max()
        .unwrap();
    let stats = w.sim.machine::<Node>(a).chat_stats();
    eprintln!(
        "CHAT LOSS: 10 messages at 20 % loss each way, all delivered by {slowest:?}; {stats:?}"
    );
    assert!(stats.resent > 0, "{stats:?}");
}

/// Envelopes the world's super nodes keep in mailboxes now.
fn kept(w: &World) -> usize {
    w.sns
        .iter()
        .map(|h| {
            w.sim
                .machine::<Node>(*h)
                .mailbox_stats()
                .map_or(0, |m| m.kept)
        })
        .sum()
}

/// When (since the start) `host` received message `id`.
fn received_at(sim: &Sim<NodeEvent>, host: HostId, id: MessageId) -> Option<Duration> {
    sim.events(host).iter().find_map(|(t, e)| match e {
        NodeEvent::Chat(ChatEvent::Received(o)) if o.item.id == id => Some(*t),
        _ => None,
    })
}

#[test]
fn a_message_to_an_offline_device_waits_in_its_mailbox_and_arrives_when_it_comes_online() {
    let seed = 34;
    let mut w = world(seed);
    w.sim.run_for(Duration::from_secs(10));
    // user6 logs out and its process ends.
    let (a, b) = (w.users[1], w.users[6]);
    w.sim.with_machine(b, |n: &mut Node, now| n.go_offline(now));
    w.sim.run_for(Duration::from_secs(2));
    w.sim.crash(b);
    w.sim.run_for(Duration::from_secs(2));
    let ids: Vec<MessageId> = (0..3)
        .map(|n| {
            write(
                &mut w.sim,
                a,
                "user6",
                &format!("while you were out {n}: {}", "z".repeat(n * 1500)),
            )
        })
        .collect();
    w.sim.run_for(Duration::from_secs(5));
    let sent = w
        .sim
        .events(a)
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Chat(ChatEvent::Sent { id }) if ids.contains(id)))
        .count();
    assert_eq!(sent, 3, "each message handed to the mailbox");
    // Three super nodes keep each (the user's first three ring successors).
    assert_eq!(kept(&w), 9);
    // user6 stays away an hour.
    w.sim.run_for(Duration::from_secs(3600));
    assert_eq!(kept(&w), 9, "kept while the device is away");
    // Then every super node holding them restarts, from what it kept on disk.
    let holders: Vec<(usize, HostId)> = w
        .sns
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            w.sim
                .machine::<Node>(**h)
                .mailbox_stats()
                .is_some_and(|m| m.kept > 0)
        })
        .map(|(i, h)| (i, *h))
        .collect();
    assert_eq!(holders.len(), 3);
    for &(i, h) in &holders {
        let saved = w
            .sim
            .with_machine(h, |n: &mut Node, now| n.save_mailboxes(now));
        let (_, saved) = saved.expect("a super node");
        w.sim.crash(h);
        w.sim.run_for(Duration::from_secs(1));
        let net = natter_core::testkit::TestNetwork::new(seed);
        let machine = common::sim::super_node_machine(
            &w.sim,
            net.identity(&format!("sn{i}")),
            [i as u8; 32],
            std::net::SocketAddr::from(([198, 18, i as u8, 10], 4000)),
            Some(std::net::SocketAddr::from((
                [198, 18, 100 + i as u8, 10],
                4001,
            ))),
            &world_bootstrap(seed),
            |cfg| cfg.mailboxes = Some(saved),
        );
        w.sim.restart(h, machine);
    }
    // (A minute for the membership to take the restarted super nodes back.)
    w.sim.run_for(Duration::from_secs(60));
    assert_eq!(kept(&w), 9, "kept across the restarts");
    // user6 starts again.
    let restarted = w.sim.elapsed();
    let wall = natter_core::crypto::UnixTime(TEST_WALL.0 + restarted.as_secs());
    let node = user_node(seed, 6, w.sim.now(), wall, &world_bootstrap(seed));
    w.sim.restart(b, node);
    w.sim.run_for(Duration::from_secs(10));
    let got = received(&w.sim, b, 0);
    assert_eq!(got.len(), 3, "each once: {got:?}");
    let slowest = ids
        .iter()
        .map(|id| received_at(&w.sim, b, *id).expect("received") - restarted)
        .max()
        .unwrap();
    eprintln!("CHAT MAILBOX: 3 messages kept while user6 was offline arrived {slowest:?} after it started again");
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    // Acknowledged: the mailboxes let them go; and the receipts reached the sender.
    assert_eq!(kept(&w), 0);
    for id in &ids {
        assert!(
            delivered_at(&w.sim, a, *id).is_some(),
            "no receipt for {id}"
        );
    }
}
