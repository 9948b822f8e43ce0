//! Presence pushed to contacts in the message-level simulator, at a scale a test can run:
//! 30 super nodes, 300 users with 10-30 contacts, one virtual hour of device churn with power
//! cuts, and 30 % of the super nodes failing at once at 40 minutes. The targets hold:
//! at least 99 % of online watchers right 2 s after a change, 99.9 % after 10 s, none wrong
//! after a minute (power cuts included: nothing announces them, so they count at the minute
//! only). Deterministic (seeded).

use natter_benches::presence_sim::{PresenceSim, PresenceSimConfig};

fn small(seed: u64) -> PresenceSimConfig {
    let mut cfg = PresenceSimConfig::new(seed, 30, 300);
    cfg.contacts = (10, 30);
    cfg
}

#[test]
fn contacts_see_changes_within_two_seconds_through_churn_and_a_mass_failure() {
    let r = PresenceSim::new(small(3)).run();
    eprintln!("PRESENCE SIM: {r:?}");
    assert!(r.changes > 300, "{r:?}");
    assert!(r.right(0) >= 0.99, "2 s: {}", r.right(0));
    assert!(r.right(1) >= 0.999, "10 s: {}", r.right(1));
    assert_eq!(
        r.right[2], r.checks[2],
        "a watcher wrong after a minute: {r:?}"
    );
    assert!(r.power_cuts > 0 && r.cut_seen_secs[1] < 60.0, "{r:?}");
    assert_eq!(r, PresenceSim::new(small(3)).run(), "deterministic");
}
