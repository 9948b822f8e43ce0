//! The global index over real sockets on loopback: a login server, 20 super nodes and 200
//! users. Every user is found by another; a name nobody has is definitely not found; a user
//! who logged out is found as offline, with the time it left, within the retention window
//! (shortened to 20 s here) and not after it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{enrol, on_free_ports, search, spawn_node, wait_until, LoginServer};
use natter_core::crypto::UserName;
use natter_core::overlay::{HostCache, PresenceRecord, SearchResult};
use natter_core::wire::message::HostEntry;
use natter_overlay::dht::{Key, Ring};
use natter_overlay::node::{Node, NodeConfig, RolePolicy};
use natter_transport::runtime::{Runtime, RuntimeConfig};
use natter_transport::wall_clock;

const SUPER_NODES: usize = 20;
const USERS: usize = 200;
const RETENTION: Duration = Duration::from_secs(20);

/// True when every super node of `sns` that is a replica of a user in `users` (by `ring`,
/// which holds all the super nodes the test started, dead or alive) holds a record of that
/// user for which `ok` is true: the publications it waits for have landed everywhere a
/// search may ask.
fn replicas_hold(
    ring: &Ring,
    replicas: usize,
    sns: &[(SocketAddr, Runtime<Node>)],
    users: &[UserName],
    ok: fn(&PresenceRecord, &[SocketAddr]) -> bool,
    dead: &[SocketAddr],
) -> bool {
    sns.iter().all(|(addr, sn)| {
        let mine: Vec<UserName> = users
            .iter()
            .filter(|u| {
                ring.successors(Key::of_user(u), replicas)
                    .iter()
                    .any(|e| e.addr == *addr)
            })
            .cloned()
            .collect();
        let dead = dead.to_vec();
        sn.command(move |m, _| {
            let store = m.index().expect("a super node has an index").store();
            mine.iter()
                .all(|u| store.held(u).iter().any(|r| ok(r, &dead)))
        })
    })
}

fn index_settings(cfg: &mut NodeConfig) {
    cfg.index.retention = RETENTION;
    // Every super node sits on 127.0.0.1: lift the per-/24 cap.
    cfg.ring_prefix_cap = 64;
    cfg.presence_refresh = Duration::from_secs(5);
}

#[test]
fn twenty_super_nodes_two_hundred_users_all_found_and_logouts_age_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = LoginServer::start();

    let sn_ids: Vec<_> = (0..SUPER_NODES)
        .map(|i| enrol(&server, dir.path(), &format!("sn{i}")))
        .collect();
    let mut ring = Ring::new(64);
    let mut replicas = 0;
    // Each super node on UDP and TCP p and UDP p + 1 (a single-address super node's STUN
    // server also answers there); each knows them all. A block is tried until all bind.
    let (bootstrap, mut sns) = on_free_ports(2 * SUPER_NODES as u16, |base| {
        let addrs: Vec<SocketAddr> = (0..SUPER_NODES as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base + 2 * i)))
            .collect();
        let mut bootstrap = HostCache::new();
        for (addr, id) in addrs.iter().zip(&sn_ids) {
            bootstrap.insert(*addr, Some(id.device.dh_public()), wall_clock());
        }
        let mut sns = Vec::new();
        for (i, (addr, id)) in addrs.iter().zip(&sn_ids).enumerate() {
            let mut cfg = NodeConfig::new(
                id.clone(),
                [i as u8; 32],
                wall_clock(),
                Instant::now(),
                *addr,
            );
            cfg.role = RolePolicy::Force;
            cfg.host_cache = bootstrap.clone();
            index_settings(&mut cfg);
            replicas = cfg.index.replicas;
            let bind = RuntimeConfig {
                udp: Node::new(cfg.clone(), Instant::now()).bind_addresses(),
                tcp: vec![(*addr, false)],
            };
            sns.push((*addr, spawn_node(cfg, bind)?));
        }
        Ok((bootstrap, sns))
    });
    for ((addr, _), id) in sns.iter().zip(&sn_ids) {
        ring.insert(
            Key::of_certificate(&id.certificate),
            HostEntry {
                addr: *addr,
                static_key: id.device.dh_public(),
            },
        );
    }
    assert_eq!(ring.len(), SUPER_NODES);
    let sn_addrs: Vec<SocketAddr> = sns.iter().map(|(a, _)| *a).collect();
    let names: Vec<UserName> = (0..USERS)
        .map(|i| UserName::parse(&format!("user{i}")).unwrap())
        .collect();
    let mut users = Vec::new();
    for i in 0..USERS {
        let id = enrol(&server, dir.path(), &format!("user{i}"));
        let cache = bootstrap.clone();
        let rt = Runtime::spawn(
            RuntimeConfig {
                udp: vec!["127.0.0.1:0".parse().unwrap()],
                tcp: vec![],
            },
            move |now, addrs| {
                let mut cfg =
                    NodeConfig::new(id, [(i % 250) as u8 + 1; 32], wall_clock(), now, addrs[0]);
                cfg.role = RolePolicy::Forbid;
                cfg.host_cache = cache;
                index_settings(&mut cfg);
                Node::new(cfg, now)
            },
        )
        .unwrap();
        users.push(rt);
    }
    // Every super node's ring holds all 20; every user is attached (and so has published).
    let ready = wait_until(Instant::now() + Duration::from_secs(60), || {
        sns.iter()
            .all(|(_, s)| s.command(|m, _| m.ring_len()) == SUPER_NODES)
            && users
                .iter()
                .all(|u| !u.command(|m, _| m.attached()).is_empty())
    });
    assert!(
        ready,
        "not ready in 60 s: rings {:?}",
        sns.iter()
            .map(|(_, s)| s.command(|m, _| m.ring_len()))
            .collect::<Vec<_>>()
    );
    // The publications have landed: every replica holds every user's record (those published
    // before the ring was complete reach the whole replica set at the next repair or refresh).
    assert!(
        wait_until(Instant::now() + Duration::from_secs(30), || {
            replicas_hold(
                &ring,
                replicas,
                &sns,
                &names,
                |r, _| r.online && !r.super_nodes.is_empty(),
                &[],
            )
        }),
        "not every replica holds its users' records after 30 s"
    );

    // Each user looks the next one up.
    let started = Instant::now();
    let mut hops = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let target = format!("user{}", (i + 1) % USERS);
        let outcome = search(user, &target);
        let SearchResult::Found(records) = &outcome.result else {
            panic!("user{i} did not find {target}: {outcome:?}");
        };
        assert_eq!(records.len(), 1, "one device");
        assert_eq!(records[0].user().as_str(), target);
        assert!(records[0].online);
        assert!(
            !records[0].super_nodes.is_empty(),
            "it names its super node"
        );
        hops.push(outcome.hops);
    }
    eprintln!(
        "{USERS} searches in {:?}, hops {:?}..{:?}",
        started.elapsed(),
        hops.iter().min(),
        hops.iter().max()
    );
    // A super node searches too (it runs the search itself).
    let outcome = search(&sns[3].1, "user17");
    assert!(
        matches!(outcome.result, SearchResult::Found(_)),
        "{outcome:?}"
    );
    // Nobody has this name: a definite answer.
    let outcome = search(&users[0], "nobody-here");
    assert_eq!(outcome.result, SearchResult::NotFound);

    // Three super nodes die at once: their clients move, and everyone is still found (each
    // record has seven replicas; searches widen past the dead).
    let dead: Vec<SocketAddr> = sn_addrs[..3].to_vec();
    for (_, sn) in sns.drain(..3) {
        let _ = sn.shutdown();
    }
    assert!(
        wait_until(Instant::now() + Duration::from_secs(30), || {
            users.iter().all(|u| {
                let a = u.command(|m, _| m.attached());
                !a.is_empty() && !a.iter().any(|s| dead.contains(s))
            })
        }),
        "clients did not leave the dead super nodes"
    );
    // Their new records (naming live super nodes) have reached every live replica.
    assert!(
        wait_until(Instant::now() + Duration::from_secs(30), || {
            replicas_hold(
                &ring,
                replicas,
                &sns,
                &names,
                |r, dead| !r.super_nodes.iter().any(|s| dead.contains(s)),
                &dead,
            )
        }),
        "the moved clients' records did not reach their live replicas in 30 s"
    );
    let started = Instant::now();
    for i in (0..USERS).step_by(10) {
        let target = format!("user{}", (i + 37) % USERS);
        let outcome = search(&users[i], &target);
        assert!(
            matches!(outcome.result, SearchResult::Found(_)),
            "with 3 super nodes gone, user{i} looking for {target}: {outcome:?}"
        );
    }
    eprintln!(
        "20 searches with 3 super nodes dead in {:?}",
        started.elapsed()
    );

    // user42 logs out: found as offline, with the time it left, within the window.
    let left_at = wall_clock();
    users[42].command(|m, now| m.go_offline(now));
    assert!(
        wait_until(Instant::now() + Duration::from_secs(10), || {
            replicas_hold(&ring, replicas, &sns, &names[42..43], |r, _| !r.online, &[])
        }),
        "the offline record did not reach the live replicas in 10 s"
    );
    // The super node a search runs on may have cached the online record (user41 looked
    // user42 up earlier): the offline one shows within the path cache's 30 s.
    let shown_by = Instant::now() + Duration::from_secs(32);
    let outcome = loop {
        let outcome = search(&users[7], "user42");
        let offline = matches!(&outcome.result, SearchResult::Found(r) if !r[0].online);
        if offline || Instant::now() > shown_by {
            break outcome;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let SearchResult::Found(records) = &outcome.result else {
        panic!("a logged-out user is still found within the window: {outcome:?}");
    };
    assert!(!records[0].online, "found as offline");
    assert!(
        records[0].timestamp.0.abs_diff(left_at.0) <= 1,
        "last seen when it left"
    );
    // Its process goes away; after the window it is gone (a repeated search is not answered
    // from a path cache: the records there expire too).
    let _ = users.remove(42).shutdown();
    // This wait is the test: the record must age out of the index once the retention window
    // has passed (plus 2 s of margin for whole-second timestamps and the stores' expiry
    // timer), and nothing but time makes it do so.
    std::thread::sleep(RETENTION + Duration::from_secs(2));
    let outcome = search(&users[8], "user42");
    assert_eq!(outcome.result, SearchResult::NotFound, "{outcome:?}");
    // The others, online and refreshing, are still found.
    let outcome = search(&users[9], "user43");
    assert!(
        matches!(outcome.result, SearchResult::Found(_)),
        "{outcome:?}"
    );
    server.shutdown();
}
