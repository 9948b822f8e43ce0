//! The global index at scale, in the message-level simulator
//! (`natter_benches::index_sim`): real `Dht` machines, real signed records, virtual time.
//!
//! For 1,000 and 10,000 super nodes (100,000 users at 10,000; 10 per super node at 1,000):
//! heavy-tailed super-node sessions (Pareto, shape 1.5, median 4 h), one virtual hour of
//! churn with lookups throughout, then 30 % of the super nodes fail at once; lookups right
//! after (30 s) and once the ring has healed (5 minutes later). Every lookup starts at a
//! client next to its super node (the fastest of five). 10 % of lookups are for names
//! nobody has. It also runs a Kademlia model on the same latency model (k = 8, alpha = 3,
//! iterative, no failures: its best case) for the design comparison in ARCHITECTURE.md.
//!
//! Those runs share one ring among the super nodes, with the membership's delays modelled
//! (a failure is noticed after 30 s, a join after 5 s). A second set of runs (500 and 1,000
//! super nodes: each holds every other, so memory grows with the square) runs the real
//! membership protocol on every super node, each index on its own ring, through the same
//! hour of churn and the same mass failure, and reports how fast joins and failures reached
//! every view and what the protocol cost.
//!
//! Prints a table and writes `target/index_scale.json`.
//! `cargo bench -p natter-benches --bench index_scale`. Knobs: `NATTER_INDEX_SCALES`
//! ("1000,10000"), `NATTER_MEMBERSHIP_SCALES` ("500,1000"), `NATTER_INDEX_LOOKUPS` (10000 per
//! phase at full scale).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use natter_benches::index_sim::{one_way, IndexReport, IndexSim, IndexSimConfig, PhaseReport};
use natter_core::crypto::Capabilities;
use natter_core::overlay::PresenceRecord;
use natter_core::rng::Rng;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_core::wire::message::{HostEntry, Message};
use natter_overlay::dht::{Dht, DhtConfig, Key, Ring};
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

fn lookups(sim: &mut IndexSim, phase: usize, n: usize, window: Duration) {
    let absent = n / 10;
    for i in 0..n + absent {
        let at = window.mul_f64(i as f64 / (n + absent) as f64);
        // Interleave absent names with present ones.
        let user = (i % 11 != 10).then(|| sim.random_user());
        sim.lookup_at(at, user, phase);
    }
}

fn run(super_nodes: usize, users: usize, per_phase: usize, real: bool) -> (IndexReport, f64) {
    let wall = Instant::now();
    let mut cfg = IndexSimConfig::new(7, super_nodes, users);
    cfg.real_membership = real;
    let mut sim = IndexSim::new(cfg);
    eprintln!(
        "  {super_nodes} SNs, {users} users built in {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    sim.run_until(120 * SECOND);
    let steady = sim.phase("churn (1 h)");
    lookups(&mut sim, steady, per_phase, 3600 * SECOND);
    sim.run_until(3730 * SECOND);
    sim.mass_failure(0.3);
    let after = sim.phase("right after 30 % fail (30 s)");
    lookups(&mut sim, after, per_phase / 2, 30 * SECOND);
    sim.run_until(4030 * SECOND);
    let healed = sim.phase("5 min after");
    lookups(&mut sim, healed, per_phase / 2, 60 * SECOND);
    sim.run_until(4100 * SECOND);
    (sim.report(), wall.elapsed().as_secs_f64())
}

/// Kademlia on the same latency model: routing tables of k random contacts per bucket,
/// iterative lookups with alpha parallel queries per round, finished when a node among the
/// `replicas` closest to the key answers.
fn kademlia(n: usize, lookups: usize, seed: u64) -> serde_json::Value {
    const K: usize = 8;
    const ALPHA: usize = 3;
    const REPLICAS: usize = 7;
    let mut rng = Rng::from_seed(seed);
    let mut keys: Vec<[u8; 32]> = (0..n).map(|_| rng.bytes32()).collect();
    keys.sort();
    let pos: Vec<(f64, f64)> = (0..n).map(|_| (rng.unit(), rng.unit())).collect();
    let xor = |a: &[u8; 32], b: &[u8; 32]| -> [u8; 32] {
        let mut d = [0u8; 32];
        for i in 0..32 {
            d[i] = a[i] ^ b[i];
        }
        d
    };
    // Nodes sharing at least `p` leading bits with `key`: a contiguous range of sorted keys.
    let range = |key: &[u8; 32], p: usize| -> (usize, usize) {
        let mut lo = *key;
        let mut hi = *key;
        for bit in p..256 {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            lo[byte] &= !mask;
            hi[byte] |= mask;
        }
        (
            keys.partition_point(|k| k < &lo),
            keys.partition_point(|k| k <= &hi),
        )
    };
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let mut t = Vec::new();
            for p in 0..256 {
                let (a, b) = range(&keys[i], p);
                let (c, d) = range(&keys[i], p + 1);
                // Bucket p: the nodes in [a, b) but not in [c, d).
                let bucket: Vec<usize> = (a..c).chain(d..b).collect();
                for _ in 0..K.min(bucket.len()) {
                    t.push(bucket[(rng.u64() % bucket.len() as u64) as usize] as u32);
                }
                if d - c <= 1 {
                    break;
                }
            }
            t.sort();
            t.dedup();
            t
        })
        .collect();
    let (mut hops, mut lat, mut msgs, mut ok) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for _ in 0..lookups {
        let target = rng.bytes32();
        let from = (rng.u64() % n as u64) as usize;
        let mut by_dist: Vec<usize> = (0..n).collect();
        by_dist.sort_by_key(|&i| xor(&keys[i], &target));
        let holders: BTreeSet<usize> = by_dist[..REPLICAS].iter().copied().collect();
        let mut short: BTreeSet<([u8; 32], usize)> = tables[from]
            .iter()
            .map(|&j| (xor(&keys[j as usize], &target), j as usize))
            .collect();
        let mut asked = BTreeSet::new();
        let (mut rounds, mut t) = (0, Duration::ZERO);
        let found = loop {
            let next: Vec<usize> = short
                .iter()
                .take(K)
                .map(|&(_, j)| j)
                .filter(|j| !asked.contains(j))
                .take(ALPHA)
                .collect();
            if next.is_empty() {
                break holders.contains(&from);
            }
            rounds += 1;
            msgs += 2 * next.len() as u64;
            t += next
                .iter()
                .map(|&j| 2 * one_way(pos[from], pos[j]))
                .max()
                .unwrap_or_default();
            if next.iter().any(|j| holders.contains(j)) {
                break true;
            }
            for &j in &next {
                asked.insert(j);
                let mut closest: Vec<([u8; 32], usize)> = tables[j]
                    .iter()
                    .map(|&c| (xor(&keys[c as usize], &target), c as usize))
                    .collect();
                closest.sort();
                short.extend(closest.into_iter().take(K));
            }
        };
        if found {
            ok += 1;
            hops.push(f64::from(rounds));
            lat.push(t.as_secs_f64() * 1000.0);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    json!({
        "super_nodes": n,
        "lookups": lookups,
        "success": ok as f64 / lookups as f64,
        "rounds_p50": pct(&mut hops, 0.5),
        "rounds_p99": pct(&mut hops, 0.99),
        "sn_latency_ms_p50": pct(&mut lat, 0.5),
        "sn_latency_ms_p99": pct(&mut lat, 0.99),
        "messages_per_lookup": msgs as f64 / lookups as f64,
        "routing_entries": tables.iter().map(Vec::len).sum::<usize>() as f64 / n as f64,
    })
}

fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0)
}

/// Memory of a super node's index, measured: the growth of this process's resident memory
/// while 40 super nodes are built, each with its own ring of `ring` members and
/// `records` records stored (as through replication), divided by 40.
fn measure_memory(ring: usize, records: usize) -> f64 {
    const SNS: usize = 40;
    let net = TestNetwork::new(5);
    let signed: Vec<PresenceRecord> = (0..records)
        .map(|i| {
            let id = net.identity(&format!("user{i}"));
            PresenceRecord::sign(
                &id.device,
                id.certificate,
                true,
                vec!["198.18.0.1:4000".parse().expect("literal")],
                Some("198.18.9.9:4000".parse().expect("literal")),
                vec!["10.0.0.2:4000".parse().expect("literal")],
                3,
                Capabilities::VOICE,
                1,
                TEST_WALL,
            )
        })
        .collect();
    let mut rng = Rng::from_seed(9);
    let before = resident_bytes();
    let mut kept = Vec::new();
    for s in 0..SNS {
        let mut r = Ring::new(4);
        let me = HostEntry {
            addr: format!("198.18.{}.{}:4000", s / 200, s % 200 + 1)
                .parse()
                .expect("literal"),
            static_key: rng.bytes32(),
        };
        // Ring positions come from certificates' ring salts: random here.
        let my_key = Key(rng.bytes32());
        r.insert(my_key, me);
        for i in 0..ring {
            r.insert(
                Key(rng.bytes32()),
                HostEntry {
                    addr: std::net::SocketAddr::new(
                        std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                            0x2001,
                            0xdb8,
                            i as u16,
                            (i >> 16) as u16,
                            0,
                            0,
                            0,
                            1,
                        )),
                        4000,
                    ),
                    static_key: rng.bytes32(),
                },
            );
        }
        // Only this super node in the ring it stores against: every record is its to hold.
        let mut alone = Ring::new(4);
        alone.insert(my_key, me);
        let mut dht = Dht::new(DhtConfig::default(), me, my_key, net.trusted());
        let now = Instant::now();
        for rec in &signed {
            dht.handle_message(
                now,
                TEST_WALL,
                &alone,
                me,
                &Message::IndexStore {
                    replicate: false,
                    record: Box::new(rec.clone()),
                },
            );
        }
        kept.push((r, dht));
    }
    let grown = resident_bytes() - before;
    drop(kept);
    grown / SNS as f64
}

/// One row of the table.
fn print_phase(n: usize, users: usize, name: &str, p: &PhaseReport) {
    println!(
        "{:>6} {:>7} {:<30} {:>8} {:>8.3}% {:>6} {:>6} {:>8.0} {:>8.0} {:>2}/{:<2}",
        n,
        users,
        name,
        p.lookups,
        100.0 * p.success(),
        p.stale,
        p.false_not_found,
        p.latency_ms[0],
        p.latency_ms[1],
        p.hops[0],
        p.hops[1]
    );
}

fn main() {
    let scales: Vec<usize> = std::env::var("NATTER_INDEX_SCALES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let per_phase: usize = std::env::var("NATTER_INDEX_LOOKUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // Memory first, while the allocator has no freed pages to reuse (RSS would not grow).
    let users_at = |n: usize| if n >= 10_000 { 100_000 } else { n * 10 };
    let memory: std::collections::HashMap<usize, (usize, f64)> = scales
        .iter()
        .map(|&n| {
            let records = (7 * users_at(n)).div_ceil(n);
            (n, (records, measure_memory(n, records)))
        })
        .collect();
    let mut out = Vec::new();
    println!("global index, one-hop DHT (7 replicas), message-level simulator");
    println!(
        "{:>6} {:>7} {:<30} {:>8} {:>9} {:>6} {:>6} {:>8} {:>8} {:>5}",
        "SNs", "users", "phase", "lookups", "found", "stale", "!found", "p50 ms", "p99 ms", "hops"
    );
    for &n in &scales {
        let users = users_at(n);
        let lookups_here = per_phase * n.min(10_000) / 10_000;
        let (r, secs) = run(n, users, lookups_here.max(1000), false);
        let mut phases = Vec::new();
        for (name, p) in &r.phases {
            print_phase(n, users, name, p);
            phases.push(json!({
                "phase": name,
                "lookups": p.lookups,
                "found": p.found,
                "success": p.success(),
                "stale": p.stale,
                "false_not_found": p.false_not_found,
                "unavailable": p.unavailable,
                "absent_lookups": p.absent_lookups,
                "absent_not_found": p.absent_not_found,
                "latency_ms_p50": p.latency_ms[0],
                "latency_ms_p99": p.latency_ms[1],
                "latency_ms_max": p.latency_ms[2],
                "hops_p50": p.hops[0],
                "hops_p99": p.hops[1],
            }));
        }
        println!(
            "{:>6} messages/lookup {:.1}, store+repair {:.0} B/s/SN, membership (model) {:.0} B/s/SN, \
             memory {:.0} kB/SN, {} left / {} joined, {} forged answers refused, {:.0} s of CPU",
            n,
            r.messages_per_lookup,
            r.store_bytes_per_sn_sec,
            r.membership_bytes_per_sn_sec,
            r.memory_per_sn / 1000.0,
            r.left,
            r.joined,
            r.forged_refused,
            secs
        );
        let (records_per_sn, measured) = memory[&n];
        println!(
            "{:>6} memory per SN, measured: {:.0} kB (a ring of {n} and {records_per_sn} records)",
            n,
            measured / 1000.0
        );
        let kad = kademlia(n, 2_000, 11);
        println!("{:>6} kademlia model (k=8, alpha=3, no failures): {kad}", n);
        out.push(json!({
            "super_nodes": n,
            "users": users,
            "phases": phases,
            "messages_per_lookup": r.messages_per_lookup,
            "store_bytes_per_sn_sec": r.store_bytes_per_sn_sec,
            "membership_bytes_per_sn_sec_model": r.membership_bytes_per_sn_sec,
            "memory_bytes_per_sn_estimate": r.memory_per_sn,
            "memory_bytes_per_sn_measured": measured,
            "left": r.left,
            "joined": r.joined,
            "forged_refused": r.forged_refused,
            "virtual_secs": r.virtual_secs,
            "cpu_secs": secs,
            "kademlia_model": kad,
        }));
    }
    let membership_scales: Vec<usize> = std::env::var("NATTER_MEMBERSHIP_SCALES")
        .unwrap_or_else(|_| "500,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut real_runs = Vec::new();
    if !membership_scales.is_empty() {
        println!();
        println!(
            "the same with the real membership protocol on every super node (own view, own ring)"
        );
    }
    for &n in &membership_scales {
        let users = n * 10;
        let (r, secs) = run(n, users, 2_000, true);
        let m = r.membership.clone().expect("real membership");
        for (name, p) in &r.phases {
            print_phase(n, users, name, p);
        }
        println!(
            "{:>6} departures reached every view: {} (p50 {:.1} s, p99 {:.1} s, max {:.1} s), {} overdue; \
             joins: {} (p50 {:.1} s, p99 {:.1} s, max {:.1} s), {} overdue",
            n,
            m.departures_spread,
            m.departure_ms[0] / 1000.0,
            m.departure_ms[1] / 1000.0,
            m.departure_ms[2] / 1000.0,
            m.departures_pending,
            m.joins_spread,
            m.join_ms[0] / 1000.0,
            m.join_ms[1] / 1000.0,
            m.join_ms[2] / 1000.0,
            m.joins_pending,
        );
        println!(
            "{:>6} live super nodes wrongly dropped: {}, refutations {}, views at the end: {:.4} % missing, \
             {:.4} % stale; membership {:.0} B/s/SN (probes {:.0}, updates {:.0}, digests {:.0}, \
             pulls {:.0}); {} left / {} joined; {:.0} s of CPU",
            n,
            m.false_departures,
            m.refuted,
            100.0 * m.missing,
            100.0 * m.stale,
            m.bytes_per_sn_sec,
            m.bytes_by_kind[0],
            m.bytes_by_kind[1],
            m.bytes_by_kind[2],
            m.bytes_by_kind[3],
            r.left,
            r.joined,
            secs
        );
        real_runs.push(json!({
            "super_nodes": n,
            "users": users,
            "phases": r.phases.iter().map(|(name, p)| json!({
                "phase": name,
                "lookups": p.lookups,
                "found": p.found,
                "false_not_found": p.false_not_found,
                "unavailable": p.unavailable,
                "absent_lookups": p.absent_lookups,
                "absent_not_found": p.absent_not_found,
                "latency_ms_p50": p.latency_ms[0],
                "latency_ms_p99": p.latency_ms[1],
            })).collect::<Vec<_>>(),
            "departures_spread": m.departures_spread,
            "departure_ms": m.departure_ms,
            "departures_overdue": m.departures_pending,
            "joins_spread": m.joins_spread,
            "join_ms": m.join_ms,
            "joins_overdue": m.joins_pending,
            "false_departures": m.false_departures,
            "refuted": m.refuted,
            "missing": m.missing,
            "stale": m.stale,
            "membership_bytes_per_sn_sec": m.bytes_per_sn_sec,
            "membership_bytes_by_kind": m.bytes_by_kind,
            "left": r.left,
            "joined": r.joined,
            "cpu_secs": secs,
        }));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/index_scale.json");
    let all = json!({ "shared_ring": out, "real_membership": real_runs });
    std::fs::write(&path, serde_json::to_string_pretty(&all).expect("json")).expect("write");
    println!("written: {}", path.display());
}
