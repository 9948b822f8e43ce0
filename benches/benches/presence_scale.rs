//! Presence pushed to contacts at scale, in the message-level simulator
//! (`natter_benches::presence_sim`): real `Dht` and `Watches` machines on every super node,
//! real signed records, virtual time.
//!
//! The scenario: 10,000 users with 50-200 contacts each (symmetric), 60 / 30 / 10 %
//! with 1 / 2 / 3 devices, heavy-tailed device sessions (Pareto, shape 1.5, medians 30
//! minutes online and 60 offline; 10 % end in a power cut), one virtual hour, and 30 % of
//! the super nodes failing at once at 40 minutes. For each change of a user's presence, the
//! fraction of online watchers (devices of the user's contacts) showing the right value 2 s,
//! 10 s and 60 s later; how long a power cut took to show; bytes per user and per super node.
//!
//! Prints a table and writes `target/presence_scale.json`.
//! `cargo bench -p natter-benches --bench presence_scale`. Knobs: `NATTER_PRESENCE_USERS`
//! (10000), `NATTER_PRESENCE_SNS` (500).

use std::time::Instant;

use natter_benches::presence_sim::{PresenceReport, PresenceSim, PresenceSimConfig};
use serde_json::json;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a quick run then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let users = knob("NATTER_PRESENCE_USERS", if quick { 300 } else { 10_000 });
    let sns = knob("NATTER_PRESENCE_SNS", if quick { 30 } else { 500 });
    let started = Instant::now();
    let mut cfg = PresenceSimConfig::new(7, sns, users);
    if quick {
        cfg.contacts = (10, 30);
    }
    let r: PresenceReport = PresenceSim::new(cfg).run();
    let took = started.elapsed().as_secs_f64();
    println!("presence_scale: {users} users, {sns} super nodes, 1 virtual hour ({took:.0} s)");
    println!("  changes of presence with watchers online   {}", r.changes);
    for (i, at) in ["2 s", "10 s", "60 s"].iter().enumerate() {
        println!(
            "  watchers right after {at:>4}                 {:.4} of {} ({:.4} of {} after the failure)",
            r.right(i),
            r.checks[i],
            r.failure_right(i),
            r.failure_checks[i]
        );
    }
    println!(
        "  power cuts shown offline after             p50 {:.1} s, max {:.1} s ({} cuts)",
        r.cut_seen_secs[0], r.cut_seen_secs[1], r.power_cuts
    );
    println!(
        "  bytes per user per hour                    {:.0} publishing, {:.0} watching",
        r.publish_bytes_per_user_hour, r.watch_bytes_per_user_hour
    );
    println!(
        "  bytes per super node per hour              mean {:.0}, max {:.0}",
        r.sn_bytes_per_hour[0], r.sn_bytes_per_hour[1]
    );
    let out = json!({
        "users": users, "super_nodes": sns, "changes": r.changes,
        "right_2s": r.right(0), "right_10s": r.right(1), "right_60s": r.right(2),
        "checks": r.checks, "failure_right": [r.failure_right(0), r.failure_right(1), r.failure_right(2)],
        "cut_seen_secs": r.cut_seen_secs, "power_cuts": r.power_cuts,
        "publish_bytes_per_user_hour": r.publish_bytes_per_user_hour,
        "watch_bytes_per_user_hour": r.watch_bytes_per_user_hour,
        "sn_bytes_per_hour": r.sn_bytes_per_hour, "wall_secs": took,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/presence_scale.json");
    if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()) {
        eprintln!("presence_scale: writing {path}: {e}");
    }
}
