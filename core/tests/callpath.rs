//! The call path manager between two sides over a small model of NATs: checks only pass where
//! the receiving side has opened its NAT towards the sender (port-restricted), low-TTL probes
//! open the sender's NAT and arrive nowhere, and links can be cut.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::call::{PathAction, PathConfig, PathEvent, PathKind, PathManager, SwitchReason};
use natter_core::endpoint::Path;
use natter_core::sansio::Destination;
use natter_core::wire::message::{CallId, Candidate, CandidateKind, MediaReportExt, Message};

const RTT: Duration = Duration::from_millis(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn relay() -> Path {
    Path::Relayed {
        relay: Destination::Udp(addr("198.18.0.9:4000")),
        channel: 5,
    }
}

struct Side {
    pm: PathManager,
    /// The address others see this side at for each of its candidates.
    addrs: Vec<SocketAddr>,
    /// Behind a filtering NAT: accepts only from addresses it sent to.
    filtered: bool,
    opened: HashSet<SocketAddr>,
    events: Vec<PathEvent>,
    probes_sent: u32,
    active: Path,
}

struct World {
    sides: [Side; 2],
    /// Cut: direct UDP between the two sides is dropped.
    cut: bool,
    now: Instant,
}

/// A path manager of call `id` (every byte `id`), not controlling, on the relay, without
/// candidates.
fn on_relay(id: u8, now: Instant) -> PathManager {
    PathManager::new(
        PathConfig::default(),
        CallId([id; 16]),
        false,
        relay(),
        vec![],
        now,
    )
}

/// A 20 ms media frame's header (flags, sequence, timestamp in 2.5 ms ticks) and a byte.
fn media_frame(seq: u16) -> [u8; 6] {
    let ts = seq.wrapping_mul(8);
    [
        0,
        (seq >> 8) as u8,
        seq as u8,
        (ts >> 8) as u8,
        ts as u8,
        0xAA,
    ]
}

fn side(controlling: bool, local: Vec<Candidate>, filtered: bool, now: Instant) -> Side {
    let addrs = local.iter().map(|c| c.addr).collect();
    Side {
        pm: PathManager::new(
            PathConfig::default(),
            CallId([1; 16]),
            controlling,
            relay(),
            local,
            now,
        ),
        addrs,
        filtered,
        opened: HashSet::new(),
        events: Vec::new(),
        probes_sent: 0,
        active: relay(),
    }
}

impl World {
    /// Run the two managers for `d` of virtual time in 5 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(5);
            for i in 0..2 {
                let now = self.now;
                if self.sides[i].pm.poll_timeout().is_some_and(|t| t <= now) {
                    self.sides[i].pm.handle_timeout(now);
                }
                self.drain(i);
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let j = 1 - i;
        let now = self.now;
        while let Some(a) = self.sides[i].pm.poll_action() {
            match a {
                PathAction::Send(m) => {
                    if matches!(m, Message::KeepAlive) {
                        // Data on the new path: the other side's endpoint moves there.
                        let from = self.seen_from(i);
                        if self.sides[i].active != relay() || !self.sides[j].active.is_relayed() {
                            if let Some(p) = from {
                                if self.sides[j].active != p {
                                    self.sides[j].active = p.clone();
                                    self.sides[j].pm.path_changed(now, &p);
                                }
                            }
                        } else if !self.sides[j].active.is_relayed() {
                            self.sides[j].active = relay();
                            self.sides[j].pm.path_changed(now, &relay());
                        }
                        continue;
                    }
                    // Signalling goes through the relay, which always works.
                    self.sides[j].pm.handle_message(now, &m);
                }
                PathAction::Probe { path, ttl } => {
                    self.sides[i].probes_sent += 1;
                    match path.peer_udp() {
                        None => self.sides[i].pm.probe_answered(now, &path, RTT),
                        Some(to) => {
                            self.sides[i].opened.insert(to);
                            if ttl.is_some_and(|t| t < 3) || self.cut {
                                continue;
                            }
                            // No address of its own: its UDP is blocked, nothing gets out.
                            if !self.sides[j].addrs.contains(&to) || self.sides[i].addrs.is_empty()
                            {
                                continue;
                            }
                            // Which of our addresses the peer sees: the one of the same kind.
                            let mine = self.sides[i].addrs[self.sides[j]
                                .addrs
                                .iter()
                                .position(|a| *a == to)
                                .unwrap()
                                .min(self.sides[i].addrs.len() - 1)];
                            if self.sides[j].filtered && !self.sides[j].opened.contains(&mine) {
                                continue;
                            }
                            let back = Path::udp(mine);
                            self.sides[j].pm.probe_received(now, &back);
                            self.sides[i].pm.probe_answered(now, &path, RTT);
                        }
                    }
                }
                PathAction::UsePath(p) => {
                    self.sides[i].active = p;
                }
                // The relay in this model always works: nothing to check.
                PathAction::RelayQuiet => {}
                // Nor does it open ports: a rebind always fails here.
                PathAction::Rebind => self.sides[i].pm.rebind_failed(now),
                PathAction::Event(e) => self.sides[i].events.push(e),
            }
        }
    }

    /// Where side `i`'s packets on its active path appear to come from, for the other side.
    fn seen_from(&self, i: usize) -> Option<Path> {
        let j = 1 - i;
        match self.sides[i].active.peer_udp() {
            None => Some(relay()),
            Some(to) => {
                let k = self.sides[j].addrs.iter().position(|a| *a == to)?;
                let mine = self.sides[i].addrs[k.min(self.sides[i].addrs.len() - 1)];
                (!self.cut).then_some(Path::udp(mine))
            }
        }
    }

    fn switches(&self, i: usize) -> Vec<(PathKind, SwitchReason)> {
        self.sides[i]
            .events
            .iter()
            .filter_map(|e| match e {
                PathEvent::Switched { kind, reason, .. } => Some((*kind, *reason)),
                _ => None,
            })
            .collect()
    }

    /// Media keeps both sides hearing each other on their active paths.
    fn media(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            for i in 0..2 {
                let heard = match self.seen_from(1 - i) {
                    Some(p) => p == self.sides[i].active || p.is_relayed(),
                    None => false,
                };
                if heard && (self.sides[i].active.is_relayed() || !self.cut) {
                    let now = self.now;
                    self.sides[i].pm.heard(now);
                }
            }
            self.run(Duration::from_millis(20));
        }
    }
}

fn reflexive(a: &str) -> Candidate {
    Candidate {
        kind: CandidateKind::Reflexive,
        addr: addr(a),
    }
}

fn host(a: &str) -> Candidate {
    Candidate {
        kind: CandidateKind::Host,
        addr: addr(a),
    }
}

fn world(a: Vec<Candidate>, a_filtered: bool, b: Vec<Candidate>, b_filtered: bool) -> World {
    let now = Instant::now();
    World {
        sides: [
            side(true, a, a_filtered, now),
            side(false, b, b_filtered, now),
        ],
        cut: false,
        now,
    }
}

#[test]
fn two_port_restricted_nats_open_then_check_and_go_direct() {
    let mut w = world(
        vec![reflexive("198.18.1.2:4000")],
        true,
        vec![reflexive("198.18.2.2:4000")],
        true,
    );
    w.run(Duration::from_millis(500));
    assert_eq!(
        w.switches(0),
        vec![
            (PathKind::RelayUdp, SwitchReason::Better),
            (PathKind::Direct, SwitchReason::Better)
        ]
    );
    // The callee followed when the caller's first packet arrived on the direct path.
    assert_eq!(
        w.switches(1).last(),
        Some(&(PathKind::Direct, SwitchReason::Peer))
    );
    assert_eq!(w.sides[1].active, Path::udp(addr("198.18.1.2:4000")));
}

#[test]
fn without_candidates_the_call_stays_on_the_relay() {
    // The callee's UDP is blocked: it has no candidates.
    let mut w = world(vec![reflexive("198.18.1.2:4000")], true, vec![], true);
    w.run(Duration::from_secs(4));
    assert_eq!(
        w.switches(0),
        vec![(PathKind::RelayUdp, SwitchReason::Better)]
    );
    assert!(w.sides[0].active.is_relayed());
}

#[test]
fn a_lan_address_beats_the_reflexive_one() {
    let mut w = world(
        vec![host("198.19.1.2:4000"), reflexive("198.18.1.2:4000")],
        false,
        vec![host("198.19.1.3:4000"), reflexive("198.18.1.2:4001")],
        false,
    );
    w.run(Duration::from_millis(500));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::DirectLan, SwitchReason::Better))
    );
    assert_eq!(w.sides[0].active, Path::udp(addr("198.19.1.3:4000")));
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_within_a_second_and_recovers() {
    let mut w = world(
        vec![reflexive("198.18.1.2:4000")],
        true,
        vec![reflexive("198.18.2.2:4000")],
        true,
    );
    w.media(Duration::from_secs(4));
    assert_eq!(w.switches(0).last().unwrap().0, PathKind::Direct);
    w.cut = true;
    let cut_at = w.now;
    w.media(Duration::from_secs(1));
    let fell_back = w.sides[0].events.iter().any(|e| {
        matches!(
            e,
            PathEvent::Switched {
                kind: PathKind::RelayUdp,
                reason: SwitchReason::Dead,
                ..
            }
        )
    });
    assert!(fell_back, "{:?}", w.switches(0));
    assert!(w.now - cut_at <= Duration::from_secs(1));
    assert!(
        w.sides[1].active.is_relayed(),
        "the callee followed to the relay"
    );
    // Healed: after a few answers in a row the direct path wins back.
    w.cut = false;
    w.media(Duration::from_secs(5));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::Direct, SwitchReason::Better))
    );
}

#[test]
fn reported_loss_above_a_quarter_moves_the_call_to_the_relay() {
    let mut w = direct_call();
    assert_eq!(w.switches(0).last().unwrap().0, PathKind::Direct);
    let report = high_loss();
    let now = w.now;
    w.sides[0].pm.handle_message(now, &report);
    w.run(Duration::from_millis(10));
    assert_eq!(
        w.switches(0).last().unwrap().0,
        PathKind::Direct,
        "one report is not enough"
    );
    let now = w.now;
    w.sides[0].pm.handle_message(now, &report);
    w.run(Duration::from_millis(10));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::RelayUdp, SwitchReason::Loss))
    );
}

/// Loss the direct path alone has: the call moves to the relay and stays there for the
/// loss hold (30 s) although the direct path answers every probe; then it wins back.
#[test]
fn a_path_left_for_loss_is_not_taken_back_at_once() {
    let mut w = direct_call();
    let lossy = high_loss();
    for _ in 0..2 {
        let now = w.now;
        w.sides[0].pm.handle_message(now, &lossy);
    }
    w.media(Duration::from_secs(10));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::RelayUdp, SwitchReason::Loss)),
        "the direct path answers, but lost a quarter: not back within 10 s"
    );
    w.media(Duration::from_secs(25));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::Direct, SwitchReason::Better))
    );
}

/// Loss that follows the call to the relay is a bottleneck both paths share (a narrow access
/// link): the call goes back to the direct path and stops switching for loss, instead of
/// flapping between the two every few seconds (as it did behind a 16 kbit/s `tc tbf` link).
#[test]
fn loss_that_follows_the_call_switches_no_more_paths() {
    let mut w = direct_call();
    let lossy = high_loss();
    let report = |w: &mut World, n: usize| {
        for _ in 0..n {
            let now = w.now;
            w.sides[0].pm.handle_message(now, &lossy);
            w.media(Duration::from_secs(1));
        }
    };
    report(&mut w, 2);
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::RelayUdp, SwitchReason::Loss))
    );
    // Just as lossy on the relay: back to the direct path...
    report(&mut w, 2);
    w.media(Duration::from_secs(5));
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::Direct, SwitchReason::Better))
    );
    // ... and there it stays, however lossy, for the hold.
    let switches = w.switches(0).len();
    report(&mut w, 20);
    assert_eq!(w.switches(0).len(), switches, "{:?}", w.switches(0));
}

/// Two sides behind port-restricted NATs, on their direct path after a second of media.
fn direct_call() -> World {
    let mut w = world(
        vec![reflexive("198.18.1.2:4000")],
        false,
        vec![reflexive("198.18.2.2:4000")],
        false,
    );
    w.media(Duration::from_secs(1));
    w
}

/// A receiver report of 40 % loss.
fn high_loss() -> Message<'static> {
    Message::MediaReport {
        call: CallId([1; 16]),
        expected: 50,
        lost: 20,
        jitter_ms: 3,
        rtt_ms: 20,
        ext: None,
    }
}

#[test]
fn on_hold_the_active_path_is_probed_three_times_a_second() {
    let mut w = world(vec![], false, vec![], false);
    w.run(Duration::from_secs(1));
    w.sides[0].pm.set_hold(true);
    let before = w.sides[0].probes_sent;
    w.run(Duration::from_secs(3));
    let per_sec = f64::from(w.sides[0].probes_sent - before) / 3.0;
    assert!((2.5..=3.5).contains(&per_sec), "{per_sec} probes/s");
}

#[test]
fn receiver_reports_carry_loss_its_runs_and_jitter() {
    let now = Instant::now();
    let mut pm = on_relay(2, now);
    pm.set_peer_report_ext(true);
    // Frames 0..50 every 20 ms, with 7 missing in 5 runs (31 to 33 in a row) and one
    // arriving 10 ms late.
    for seq in 0u16..50 {
        if seq % 10 == 3 || seq == 31 || seq == 32 {
            continue;
        }
        let late = if seq == 20 { 10 } else { 0 };
        let at = now + Duration::from_millis(u64::from(seq) * 20 + late);
        let path = pm.active().0.clone();
        pm.media_received(at, &path, &media_frame(seq));
    }
    pm.handle_timeout(now + Duration::from_millis(1000));
    let mut report = None;
    while let Some(a) = pm.poll_action() {
        if let PathAction::Send(Message::MediaReport {
            expected,
            lost,
            jitter_ms,
            ext,
            ..
        }) = a
        {
            report = Some((expected, lost, jitter_ms, ext.expect("the peer reads it")));
        }
    }
    let (expected, lost, jitter, ext) = report.expect("a report within a second");
    let runs = Some(ext.runs);
    // A run counts once its frames are 32 behind the newest (a late frame may still come):
    // the runs at 3 and 13 now, those at 23, 31-33 and 43 in a later report.
    assert_eq!(
        (expected, lost, runs),
        (50, 7, Some(2)),
        "frames 0..=49 expected, 3, 13, 23, 31-33, 43 lost"
    );
    assert!(jitter <= 2, "{jitter}");
    // Frames 20 ms apart with one 10 ms late: almost no queue; 43 frames of 6 bytes and the
    // 54 of IPv4, UDP and envelope in the second since the first: 20.6 kbit/s.
    assert!(ext.queue_ms <= 1, "{ext:?}");
    assert!((200..=215).contains(&ext.recv_rate), "{ext:?}");

    // The peer's report with runs: the mean run of our lost media, in the call's stats.
    pm.handle_message(
        now,
        &Message::MediaReport {
            call: CallId([2; 16]),
            expected: 50,
            lost: 9,
            jitter_ms: 0,
            rtt_ms: 0,
            ext: Some(MediaReportExt {
                runs: 3,
                queue_ms: 80,
                recv_rate: 240,
            }),
        },
    );
    pm.handle_timeout(now + Duration::from_millis(2000));
    let mut stats = None;
    while let Some(a) = pm.poll_action() {
        match a {
            PathAction::Event(PathEvent::Stats(q)) => stats = Some(q),
            // This peer reads the extension: every report carries it.
            PathAction::Send(Message::MediaReport { ext, .. }) => assert!(ext.is_some()),
            _ => {}
        }
    }
    let q = stats.expect("stats within a second");
    assert_eq!(q.loss_run_out, Some(3.0));
    assert!((q.loss_out - 0.18).abs() < 1e-9);
    assert_eq!(
        (q.queue_ms_out, q.recv_bps_out),
        (Some(80.0), Some(24_000.0))
    );

    // A peer that does not read the extension (an older build) gets reports without it.
    let mut older = on_relay(2, now);
    older.handle_timeout(now + Duration::from_millis(1000));
    let mut sent = 0;
    while let Some(a) = older.poll_action() {
        if let PathAction::Send(Message::MediaReport { ext, .. }) = a {
            assert_eq!(ext, None);
            sent += 1;
        }
    }
    assert!(sent > 0);
}

/// Frames that jitter puts behind later ones are not runs of loss: with every other pair of
/// frames swapped, a loss in runs of three still reports runs of three.
#[test]
fn reordered_frames_are_not_counted_as_loss_runs() {
    let now = Instant::now();
    let mut pm = on_relay(3, now);
    pm.set_peer_report_ext(true);
    let mut order: Vec<u16> = (0u16..150)
        .filter(|s| !(10..13).contains(&(s % 25)))
        .collect();
    for pair in order.chunks_mut(2).skip(1).step_by(2) {
        pair.reverse();
    }
    let mut runs_total = 0;
    let mut lost_total = 0;
    for (i, seq) in order.into_iter().enumerate() {
        let at = now + Duration::from_millis(i as u64 * 20);
        let path = pm.active().0.clone();
        pm.media_received(at, &path, &media_frame(seq));
    }
    for s in 1..=4 {
        pm.handle_timeout(now + Duration::from_millis(1000 * s));
        while let Some(a) = pm.poll_action() {
            if let PathAction::Send(Message::MediaReport { lost, ext, .. }) = a {
                lost_total += lost;
                runs_total += ext.unwrap().runs;
            }
        }
    }
    // 10-12, 35-37, 60-62, 85-87, 110-112, 135-137: 18 frames in 6 runs; the window
    // settles all but the last 32 frames by the end (the run at 135 stays open).
    assert_eq!(lost_total, 18);
    assert_eq!(runs_total, 5, "runs of three, not one run per swap");
}

/// A hold stops the peer's media clock while ours runs on: after it, frames look late by
/// the held time. That is not a queue, and the reports must not say so (the peer's
/// congestion controller would cut its rate to the floor).
#[test]
fn a_hold_is_not_read_as_a_queue() {
    let now = Instant::now();
    let mut pm = on_relay(4, now);
    pm.set_peer_report_ext(true);
    let mut queue = Vec::new();
    let mut report = |pm: &mut PathManager, at: Instant| {
        pm.handle_timeout(at);
        while let Some(a) = pm.poll_action() {
            if let PathAction::Send(Message::MediaReport { ext: Some(e), .. }) = a {
                queue.push(e.queue_ms);
            }
        }
    };
    // One second of frames, then 5 s on hold, then frames again whose media clock carries on
    // where it stopped.
    for seq in 0u16..50 {
        let path = pm.active().0.clone();
        pm.media_received(
            now + Duration::from_millis(u64::from(seq) * 20),
            &path,
            &media_frame(seq),
        );
    }
    report(&mut pm, now + Duration::from_millis(1000));
    pm.set_hold(true);
    report(&mut pm, now + Duration::from_millis(3000));
    pm.set_hold(false);
    for seq in 50u16..100 {
        let at = now + Duration::from_millis(6000 + u64::from(seq - 50) * 20);
        let path = pm.active().0.clone();
        pm.media_received(at, &path, &media_frame(seq));
    }
    report(&mut pm, now + Duration::from_millis(7000));
    assert!(queue.iter().all(|q| *q <= 1), "{queue:?}");
}

#[test]
fn a_probe_before_the_candidates_does_not_hide_a_lan_address() {
    // On one host (or a LAN without hops) the peer's opening probe arrives before its
    // candidates: the address is first learnt as peer-reflexive, then announced as a host one.
    let now = Instant::now();
    let mut pm = PathManager::new(
        PathConfig::default(),
        CallId([3; 16]),
        true,
        relay(),
        vec![host("198.19.1.2:4000")],
        now,
    );
    let peer = Path::udp(addr("198.19.1.3:4000"));
    pm.probe_received(now, &peer);
    pm.handle_message(
        now,
        &Message::CallCandidates {
            call: CallId([3; 16]),
            opened: true,
            update: false,
            fresh: false,
            candidates: vec![host("198.19.1.3:4000")],
        },
    );
    pm.probe_answered(now, &peer, RTT);
    pm.handle_timeout(now + Duration::from_millis(200));
    pm.probe_answered(now + Duration::from_millis(200), &peer, RTT);
    assert_eq!(pm.active(), (&peer, PathKind::DirectLan));
}

#[test]
fn relay_only_never_tells_its_addresses_nor_leaves_the_relay() {
    let now = Instant::now();
    let cfg = PathConfig {
        direct: false,
        ..PathConfig::default()
    };
    let mut w = world(
        vec![reflexive("198.18.1.2:4000")],
        false,
        vec![reflexive("198.18.2.2:4000")],
        false,
    );
    w.sides[0].pm = PathManager::new(
        cfg,
        CallId([1; 16]),
        true,
        relay(),
        vec![reflexive("198.18.1.2:4000")],
        now,
    );
    w.sides[0].events.clear();
    w.run(Duration::from_secs(3));
    assert!(w.sides[0].active.is_relayed() && w.sides[1].active.is_relayed());
    assert!(w.switches(0).iter().all(|(k, _)| *k == PathKind::RelayUdp));
    // Nothing of its own went to the peer: it sent no candidates.
    assert!(!w.sides[1].events.iter().any(|e| matches!(
        e,
        PathEvent::Switched {
            kind: PathKind::Direct,
            ..
        }
    )));
}

#[test]
fn checks_after_a_move_go_gently_while_the_relay_carries_the_call() {
    let mut w = direct_call();
    // The caller moves to another port of its NAT: the direct path dies, the relay carries
    // the call, and its new candidates go to the callee.
    w.cut = true;
    w.media(Duration::from_secs(1));
    assert!(w.sides[0].active.is_relayed(), "{:?}", w.switches(0));
    w.cut = false;
    w.sides[0].addrs = vec![addr("198.18.1.2:5000")];
    let now = w.now;
    w.sides[0]
        .pm
        .update_local_candidates(now, vec![reflexive("198.18.1.2:5000")]);
    let before = w.sides.each_ref().map(|s| s.probes_sent);
    w.media(Duration::from_secs(3));
    // The checks share the narrowest link with the media: 4 a second per candidate (with
    // the opening probes and the relay's and the active path's, about 6), not 20 (22 a
    // second before they were paced).
    for (i, side) in w.sides.iter().enumerate() {
        let per_sec = f64::from(side.probes_sent - before[i]) / 3.0;
        assert!(per_sec <= 8.0, "side {i}: {per_sec} probes a second");
    }
    // And the call is back on its direct path all the same.
    assert_eq!(
        w.switches(0).last(),
        Some(&(PathKind::Direct, SwitchReason::Better)),
        "{:?}",
        w.switches(0)
    );
}
