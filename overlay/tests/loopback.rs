//! Joining the network over real sockets on loopback: a login server, 5 super nodes and 50
//! nodes that log in and attach over UDP probes and TCP links; killing a super node moves its
//! clients to others (each one's time is measured), none is ever left without a super node,
//! and every user is still found through the index. The times are printed; they are measured without competing load by
//! `cargo bench -p natter-benches --bench overlay_join` (the test only bounds them loosely, as
//! it shares two cores with the rest of the suite).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    enrol, listens_on, on_free_ports, refusing_tcp, search, silent_udp, spawn_node, wait_until,
    LoginServer,
};
use natter_core::overlay::AttachEvent;
use natter_core::overlay::HostCache;
use natter_core::overlay::SearchResult;
use natter_overlay::node::{Node, NodeConfig, NodeEvent, RolePolicy};
use natter_transport::runtime::{Runtime, RuntimeConfig};
use natter_transport::wall_clock;

const SUPER_NODES: usize = 5;
const NODES: usize = 50;
/// Ports per super node: UDP and TCP on its port p, TCP on p + 1 and p + 2 (fallback and
/// TLS), UDP on p + 1 (STUN change port) and on 127.0.0.2:p + 1 (its alternate).
const SN_PORTS: u16 = 4;

#[test]
fn fifty_nodes_attach_to_five_super_nodes_and_survive_one_dying() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = LoginServer::start();

    // Super nodes: forced role, STUN alternate on 127.0.0.2, TCP on the main, fallback and TLS
    // ports; each knows them all. A block of ports is tried until all five bind.
    let sn_ids: Vec<_> = (0..SUPER_NODES)
        .map(|i| enrol(&server, dir.path(), &format!("sn{i}")))
        .collect();
    let (sn_addrs, bootstrap, mut sns) = on_free_ports(SN_PORTS * SUPER_NODES as u16, |base| {
        let sn_addrs: Vec<SocketAddr> = (0..SUPER_NODES as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i * SN_PORTS)))
            .collect();
        let mut bootstrap = HostCache::new();
        for addr in &sn_addrs {
            bootstrap.insert(*addr, None, wall_clock());
        }
        let mut sns = Vec::new();
        for (i, (addr, id)) in sn_addrs.iter().zip(&sn_ids).enumerate() {
            let mut cfg = NodeConfig::new(
                id.clone(),
                [i as u8; 32],
                wall_clock(),
                Instant::now(),
                *addr,
            );
            cfg.role = RolePolicy::Force;
            // Every super node sits on 127.0.0.1: lift the per-/24 cap of the index ring.
            cfg.ring_prefix_cap = 64;
            cfg.stun_alternate = Some(SocketAddr::from(([127, 0, 0, 2], addr.port() + 1)));
            cfg.host_cache = bootstrap.clone();
            let bind = listens_on(&cfg);
            sns.push(Some(spawn_node(cfg, bind)?));
        }
        Ok((sn_addrs, bootstrap, sns))
    });

    let mut ids = Vec::new();
    for i in 0..NODES {
        ids.push(enrol(&server, dir.path(), &format!("user{i}")));
    }
    let started = Instant::now();
    let mut nodes = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let cache = bootstrap.clone();
        let rt = Runtime::spawn(
            RuntimeConfig {
                udp: vec!["127.0.0.1:0".parse().unwrap()],
                tcp: vec![],
            },
            move |now, addrs| {
                let mut cfg = NodeConfig::new(id, [100 + i as u8; 32], wall_clock(), now, addrs[0]);
                cfg.role = RolePolicy::Forbid;
                cfg.host_cache = cache;
                cfg.ring_prefix_cap = 64;
                Node::new(cfg, now)
            },
        )
        .unwrap();
        nodes.push(rt);
    }
    let all_attached = |nodes: &Vec<Runtime<Node>>, want: usize| {
        nodes
            .iter()
            .all(|n| n.command(|m, _| m.attached().len()) >= want)
    };
    if !wait_until(Instant::now() + Duration::from_secs(60), || {
        all_attached(&nodes, 2)
    }) {
        for (i, n) in nodes.iter().enumerate() {
            let (attached, cache) = n.command(|m, now| {
                (
                    m.attached(),
                    format!("{} / {}", m.host_cache().len(), m.describe_attach(now)),
                )
            });
            if attached.len() < 2 {
                let ev: Vec<_> = n.events().try_iter().collect();
                eprintln!("node {i}: attached {attached:?}, host cache {cache}; events: {ev:?}");
            }
        }
        panic!("not every node attached twice in 60 s");
    }
    let attach_time = started.elapsed();
    eprintln!("50 nodes attached to two super nodes each in {attach_time:?}");
    // And the index ring has formed: every super node knows every other one (membership and
    // ring sync take a few seconds; records published before then sat on partial replica
    // sets until the next repair, and a kill right after attaching raced that).
    assert!(
        wait_until(Instant::now() + Duration::from_secs(30), || {
            sns.iter()
                .all(|s| s.as_ref().unwrap().command(|m, _| m.ring_len()) == SUPER_NODES)
        }),
        "the index ring did not form in 30 s"
    );
    eprintln!(
        "index ring of {SUPER_NODES} formed in {:?}",
        started.elapsed()
    );

    // Kill the busiest super node: its process goes away, its sockets close.
    let load: Vec<usize> = sns
        .iter()
        .map(|s| {
            s.as_ref()
                .unwrap()
                .command(|m, _| m.super_node().map_or(0, |r| r.client_count()))
        })
        .collect();
    let victim = (0..SUPER_NODES).max_by_key(|i| load[*i]).unwrap();
    let victim_addr = sn_addrs[victim];
    let affected: Vec<usize> = (0..NODES)
        .filter(|i| nodes[*i].command(move |m, _| m.attached().contains(&victim_addr)))
        .collect();
    assert!(!affected.is_empty());
    // From here on each node's attach events tell how many links it had at every moment.
    for n in &nodes {
        n.events().try_iter().for_each(drop);
    }
    let killed = Instant::now();
    drop(sns[victim].take());
    // Measure how long each affected node takes to be on two live links again. The issue
    // asks for 2 s; the bound here is looser because the test shares two cores with the rest
    // of the suite (the benchmark measures it without competing load).
    let bound = Duration::from_secs(10);
    let mut took: Vec<Option<Duration>> = vec![None; NODES];
    while affected.iter().any(|i| took[*i].is_none()) {
        for i in &affected {
            if took[*i].is_none() {
                let a = nodes[*i].command(|m, _| m.attached());
                if a.len() == 2 && !a.contains(&victim_addr) {
                    took[*i] = Some(killed.elapsed());
                }
            }
        }
        if killed.elapsed() > bound {
            let late: Vec<_> = affected.iter().filter(|i| took[**i].is_none()).collect();
            panic!(
                "nodes {late:?} of the dead super node were not on two live links within {bound:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times: Vec<Duration> = affected.iter().map(|i| took[*i].unwrap()).collect();
    times.sort();
    eprintln!(
        "{} clients of the dead super node back on two live links: fastest {:?}, median {:?}, \
         slowest {:?} (all: {:?})",
        affected.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times
    );
    // Nobody was ever left without a super node: replaying each node's attach events since
    // the kill, its link count never fell below one; the other nodes lost no link at all.
    for (i, n) in nodes.iter().enumerate() {
        let mut links: i64 = 2;
        let mut lowest = links;
        for e in n.events().try_iter() {
            match e {
                NodeEvent::Attach(AttachEvent::Attached { .. }) => links += 1,
                NodeEvent::Attach(AttachEvent::Detached { super_node }) => {
                    assert!(
                        affected.contains(&i) && super_node == victim_addr,
                        "node {i} lost its link to {super_node} (the dead one is {victim_addr})"
                    );
                    links -= 1;
                }
                _ => {}
            }
            lowest = lowest.min(links);
        }
        assert!(lowest >= 1, "node {i} was left without a super node");
        assert_eq!(links, 2, "node {i} ends on two links");
    }
    // Everyone else is still attached twice.
    assert!(all_attached(&nodes, 2));

    // Everyone is still findable: each node searches the index for the next one, and the
    // clients of the dead super node are found through live super nodes (their presence
    // records were re-published when their links changed).
    let started = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let target = format!("user{}", (i + 1) % NODES);
        let affected_target = affected.contains(&((i + 1) % NODES));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = search(node, &target);
            let current = match &outcome.result {
                SearchResult::Found(records) => {
                    assert_eq!(records[0].user().as_str(), target);
                    !affected_target
                        || records.iter().all(|r| {
                            !r.super_nodes.is_empty() && !r.super_nodes.contains(&victim_addr)
                        })
                }
                _ => false,
            };
            if current {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "user{i} does not find {target} through live super nodes: {outcome:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "all {NODES} users found after the kill in {:?}",
        started.elapsed()
    );
    server.shutdown();
}

/// A strict firewall: UDP and the super nodes' main and fallback TCP ports are unreachable,
/// only their TLS port answers. Nodes still attach, over TLS.
#[test]
fn nodes_behind_a_strict_firewall_attach_over_the_tls_port() {
    use natter_core::overlay::LinkTransport;
    let dir = tempfile::tempdir().unwrap();
    let mut server = LoginServer::start();
    // Two super nodes whose UDP socket sits elsewhere (nothing answers on the main port) and
    // that listen for TCP only on the TLS port (main + 2). The main UDP port and the main and
    // plain fallback TCP ports are held where nothing answers, so no other process can answer
    // there either.
    let sn_ids: Vec<_> = (0..2)
        .map(|i| enrol(&server, dir.path(), &format!("tls-sn{i}")))
        .collect();
    let (bootstrap, _sns, _held) = on_free_ports(8, |base| {
        let mut bootstrap = HostCache::new();
        let mut sns = Vec::new();
        let mut held = (Vec::new(), Vec::new());
        for (i, id) in sn_ids.iter().enumerate() {
            let p = base + 4 * i as u16;
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            bootstrap.insert(addr, None, wall_clock());
            let mut cfg = NodeConfig::new(
                id.clone(),
                [i as u8; 32],
                wall_clock(),
                Instant::now(),
                addr,
            );
            cfg.role = RolePolicy::Force;
            held.0.push(silent_udp(addr)?);
            held.1.push(refusing_tcp(addr)?);
            held.1
                .push(refusing_tcp(SocketAddr::new(addr.ip(), p + 1))?);
            let bind = RuntimeConfig {
                udp: vec!["127.0.0.1:0".parse().unwrap()],
                tcp: vec![(SocketAddr::new(addr.ip(), p + 2), true)],
            };
            sns.push(spawn_node(cfg, bind)?);
        }
        Ok((bootstrap, sns, held))
    });
    let id = enrol(&server, dir.path(), "walled");
    let cache = bootstrap.clone();
    let node = Runtime::spawn(
        RuntimeConfig {
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            tcp: vec![],
        },
        move |now, addrs| {
            let mut cfg = NodeConfig::new(id, [9; 32], wall_clock(), now, addrs[0]);
            cfg.role = RolePolicy::Forbid;
            cfg.host_cache = cache;
            Node::new(cfg, now)
        },
    )
    .unwrap();
    let mut via_tls = 0;
    let mut udp_blocked = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while via_tls < 2 && Instant::now() < deadline {
        match node.events().recv_timeout(Duration::from_millis(100)) {
            Ok(NodeEvent::Attach(AttachEvent::UdpBlocked)) => udp_blocked = true,
            Ok(NodeEvent::Attach(AttachEvent::Attached { transport, .. })) => {
                assert_eq!(transport, LinkTransport::Tls);
                via_tls += 1;
            }
            _ => {}
        }
    }
    assert!(udp_blocked, "the probes went unanswered");
    assert_eq!(via_tls, 2, "two links over the TLS port");
    server.shutdown();
}

/// A firewall that passes only the plain fallback port: UDP and the super nodes' main TCP
/// port are unreachable and nothing listens on their TLS port. The fallback ports are set
/// network-wide as absolute ports (as `[overlay] fallback_ports = [80, 443]` does), the same
/// on both super nodes, which sit on two loopback IPs. Nodes attach over the plain port.
#[test]
fn nodes_behind_a_firewall_attach_over_the_configured_plain_fallback_port() {
    use natter_core::overlay::{FallbackPorts, LinkTransport};
    let ips = ["127.0.0.1", "127.0.0.3"];
    let dir = tempfile::tempdir().unwrap();
    let mut server = LoginServer::start();
    let sn_ids: Vec<_> = (0..ips.len())
        .map(|i| enrol(&server, dir.path(), &format!("plain-sn{i}")))
        .collect();
    // On both IPs: a main port where nothing answers (UDP held silent, TCP refused), the plain
    // fallback port where the super node listens, and the TLS port, refused.
    let (ports, bootstrap, _sns, _held) = on_free_ports(3, |main| {
        let plain = main + 1;
        let ports = FallbackPorts::Absolute {
            plain,
            tls: plain + 1,
        };
        let mut bootstrap = HostCache::new();
        let mut sns = Vec::new();
        let mut held = (Vec::new(), Vec::new());
        for (i, (ip, id)) in ips.iter().zip(&sn_ids).enumerate() {
            let addr: SocketAddr = format!("{ip}:{main}").parse().unwrap();
            bootstrap.insert(addr, None, wall_clock());
            let mut cfg = NodeConfig::new(
                id.clone(),
                [i as u8; 32],
                wall_clock(),
                Instant::now(),
                addr,
            );
            cfg.role = RolePolicy::Force;
            cfg.attach.fallback_ports = ports;
            let listen = listens_on(&cfg).tcp;
            let ip = addr.ip();
            assert_eq!(
                listen,
                [
                    (addr, false),
                    (SocketAddr::new(ip, plain), false),
                    (SocketAddr::new(ip, plain + 1), true)
                ],
                "a super node listens on the configured ports"
            );
            held.0.push(silent_udp(addr)?);
            held.1.push(refusing_tcp(addr)?);
            held.1.push(refusing_tcp(SocketAddr::new(ip, plain + 1))?);
            // The firewall: its UDP socket sits elsewhere (nothing answers on the main port),
            // and of its TCP ports only the plain fallback one is reachable.
            let tcp: Vec<_> = listen
                .into_iter()
                .filter(|(a, tls)| !tls && *a != addr)
                .collect();
            let bind = RuntimeConfig {
                udp: vec![SocketAddr::new(ip, 0)],
                tcp,
            };
            sns.push(spawn_node(cfg, bind)?);
        }
        Ok((ports, bootstrap, sns, held))
    });
    let id = enrol(&server, dir.path(), "plain-walled");
    let cache = bootstrap.clone();
    let node = Runtime::spawn(
        RuntimeConfig {
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            tcp: vec![],
        },
        move |now, addrs| {
            let mut cfg = NodeConfig::new(id, [8; 32], wall_clock(), now, addrs[0]);
            cfg.role = RolePolicy::Forbid;
            cfg.host_cache = cache;
            cfg.attach.fallback_ports = ports;
            Node::new(cfg, now)
        },
    )
    .unwrap();
    let started = Instant::now();
    let mut via_fallback = Vec::new();
    let mut udp_blocked = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while via_fallback.len() < 2 && Instant::now() < deadline {
        match node.events().recv_timeout(Duration::from_millis(100)) {
            Ok(NodeEvent::Attach(AttachEvent::UdpBlocked)) => udp_blocked = true,
            Ok(NodeEvent::Attach(AttachEvent::Attached {
                transport,
                super_node,
                ..
            })) => {
                assert_eq!(transport, LinkTransport::TcpFallback);
                via_fallback.push(super_node);
            }
            _ => {}
        }
    }
    assert!(udp_blocked, "the probes went unanswered");
    via_fallback.sort();
    assert_eq!(
        via_fallback,
        bootstrap
            .entries()
            .iter()
            .map(|e| e.addr)
            .collect::<Vec<_>>(),
        "one link to each super node over its plain fallback port"
    );
    eprintln!(
        "attached over the plain fallback port in {:?}",
        started.elapsed()
    );
    server.shutdown();
}

/// A peer that connects to a super node's TCP port and stays silent, or sends bytes that never
/// make a handshake, is disconnected once the claim timeout passes; a real client on the same
/// port is served meanwhile.
#[test]
fn silent_and_junk_tcp_connections_are_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let server = LoginServer::start();
    let id = enrol(&server, dir.path(), "claim-sn");
    let (addr, sn) = on_free_ports(3, |port| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cfg = NodeConfig::new(id.clone(), [3; 32], wall_clock(), Instant::now(), addr);
        cfg.role = RolePolicy::Force;
        cfg.stream_claim_timeout = Duration::from_secs(1);
        let bind = listens_on(&cfg);
        Ok((addr, spawn_node(cfg, bind)?))
    });
    let silent = TcpStream::connect(addr).unwrap();
    let mut junk = TcpStream::connect(addr).unwrap();
    // Well-framed but meaningless: a 4-byte frame of zeros.
    junk.write_all(&[0, 4, 0, 0, 0, 0]).unwrap();
    let started = Instant::now();
    for (name, mut s) in [("silent", silent), ("junk", junk)] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        // EOF or a reset: either way the super node let go.
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "{name} connection still open");
    }
    let took = started.elapsed();
    println!("both closed after {:.2} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(20),
        "closed by the claim timeout"
    );
    let stats = sn.command(|n, _| n.stats());
    assert_eq!(stats.streams_unclaimed, 2, "{stats:?}");
}
