//! The global index over real sockets on loopback: a login server, 20 super nodes and 200
//! users. Every user is found by another; a name nobody has is definitely not found; a user
//! who logged out is found as offline, with the time it left, within the retention window
//! (shortened to 20 s here) and not after it.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::{enrol, login_server, search};
use natter_core::overlay::HostCache;
use natter_core::overlay::SearchResult;
use natter_overlay::node::{Node, NodeConfig, RolePolicy};
use natter_transport::runtime::{Runtime, RuntimeConfig};
use natter_transport::wall_clock;

const SUPER_NODES: usize = 20;
const USERS: usize = 200;
const RETENTION: Duration = Duration::from_secs(20);

/// A port p with UDP and TCP p and UDP p+1 free on 127.0.0.1 (a single-address super node's
/// STUN server also answers on p+1).
fn free_port(seed: u16) -> u16 {
    for i in 0..2000u16 {
        let p = 20_000 + (seed.wrapping_mul(131).wrapping_add(i * 11)) % 30_000;
        if UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free ports");
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
    let server = login_server(dir.path());
    let net = server.network().clone();

    let mut sn_ids = Vec::new();
    let mut sn_addrs = Vec::new();
    let mut bootstrap = HostCache::new();
    for i in 0..SUPER_NODES {
        let id = enrol(&net, dir.path(), &format!("sn{i}"));
        let p = free_port(i as u16 * 17 + std::process::id() as u16);
        let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
        bootstrap.insert(addr, Some(id.device.dh_public()), wall_clock());
        sn_ids.push((addr, id));
        sn_addrs.push(addr);
    }
    let mut sns = Vec::new();
    for (i, (addr, id)) in sn_ids.into_iter().enumerate() {
        let mut cfg = NodeConfig::new(id, [i as u8; 32], wall_clock(), Instant::now(), addr);
        cfg.role = RolePolicy::Force;
        cfg.host_cache = bootstrap.clone();
        index_settings(&mut cfg);
        let udp = Node::new(cfg.clone(), Instant::now()).bind_addresses();
        let rt = Runtime::spawn(
            RuntimeConfig {
                udp,
                tcp: vec![(addr, false)],
            },
            move |now, _| {
                cfg.clock_anchor = now;
                Node::new(cfg, now)
            },
        )
        .unwrap();
        sns.push(rt);
    }
    let mut users = Vec::new();
    for i in 0..USERS {
        let id = enrol(&net, dir.path(), &format!("user{i}"));
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rings_full = sns
            .iter()
            .all(|s| s.command(|m, _| m.ring_len()) == SUPER_NODES);
        let attached = users
            .iter()
            .all(|u| !u.command(|m, _| m.attached()).is_empty());
        if rings_full && attached {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready in 60 s: rings {:?}",
            sns.iter()
                .map(|s| s.command(|m, _| m.ring_len()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the last publications land.
    std::thread::sleep(Duration::from_secs(1));

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
    let outcome = search(&sns[3], "user17");
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
    for sn in sns.drain(..3) {
        let _ = sn.shutdown();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while users.iter().any(|u| {
        let a = u.command(|m, _| m.attached());
        a.is_empty() || a.iter().any(|s| dead.contains(s))
    }) {
        assert!(
            Instant::now() < deadline,
            "clients did not leave the dead super nodes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
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
    std::thread::sleep(Duration::from_secs(1));
    let outcome = search(&users[7], "user42");
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
