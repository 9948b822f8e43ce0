//! Call machines wired back to back in virtual time.

use super::*;
use bytes::BytesMut;
use std::collections::BTreeSet;

const WALL: UnixTime = UnixTime(1_700_000_000);

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn name(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

struct Node {
    user: UserName,
    m: CallMachine,
    events: Vec<CallEvent>,
}

/// Devices by id; messages travel through the wire encoding, in order, without delay.
struct Net {
    now: Instant,
    nodes: Vec<Node>,
    queue: VecDeque<(DeviceId, DeviceId, Vec<u8>)>,
    /// Devices that are gone: nothing reaches them, nothing leaves them.
    offline: BTreeSet<DeviceId>,
    /// Every encoded message sent, for replay tests.
    log: Vec<(DeviceId, DeviceId, Vec<u8>)>,
}

impl Net {
    fn new(devices: &[(&str, u8)], seed: u8) -> Self {
        let now = Instant::now();
        let nodes = devices
            .iter()
            .map(|(u, d)| Node {
                user: name(u),
                m: CallMachine::new(dev(*d), CallConfig::new([seed ^ d; 32], WALL), now),
                events: Vec::new(),
            })
            .collect();
        Self {
            now,
            nodes,
            queue: VecDeque::new(),
            offline: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    fn idx(&self, d: u8) -> usize {
        self.nodes
            .iter()
            .position(|n| n.m.device() == dev(d))
            .unwrap()
    }

    fn m(&mut self, d: u8) -> &mut CallMachine {
        let i = self.idx(d);
        &mut self.nodes[i].m
    }

    fn devices_of(&self, user: &str) -> Vec<DeviceId> {
        self.nodes
            .iter()
            .filter(|n| n.user.as_str() == user)
            .map(|n| n.m.device())
            .collect()
    }

    /// Move every machine's output into the queue and the event logs.
    fn collect(&mut self) {
        for n in &mut self.nodes {
            let from = n.m.device();
            while let Some(t) = n.m.poll_transmit() {
                let mut b = BytesMut::new();
                t.message.encode(&mut b);
                assert!(b.len() <= crate::wire::message::MAX_APP_DATA);
                if !self.offline.contains(&from) && !self.offline.contains(&t.device) {
                    self.log.push((from, t.device, b.to_vec()));
                    self.queue.push_back((from, t.device, b.to_vec()));
                }
            }
            while let Some(e) = n.m.poll_event() {
                n.events.push(e);
            }
        }
    }

    fn inject(&mut self, from: DeviceId, to: DeviceId, bytes: &[u8]) {
        let user = self
            .nodes
            .iter()
            .find(|n| n.m.device() == from)
            .unwrap()
            .user
            .clone();
        let now = self.now;
        let Some(n) = self.nodes.iter_mut().find(|n| n.m.device() == to) else {
            return;
        };
        let msg = Message::decode(bytes).unwrap();
        assert!(n.m.handle_message(now, from, &user, &msg));
    }

    /// Deliver one queued message; false when the queue is empty.
    fn step(&mut self) -> bool {
        self.collect();
        let Some((from, to, bytes)) = self.queue.pop_front() else {
            return false;
        };
        self.inject(from, to, &bytes);
        self.collect();
        true
    }

    fn deliver(&mut self) {
        while self.step() {}
    }

    /// Run timers and deliver messages until `d` has passed.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.deliver();
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|n| !self.offline.contains(&n.m.device()))
                .filter_map(|n| n.m.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in &mut self.nodes {
                        if !self.offline.contains(&n.m.device())
                            && n.m.poll_timeout().is_some_and(|t| t <= now)
                        {
                            n.m.handle_timeout(now);
                        }
                    }
                    self.deliver();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn events(&self, d: u8) -> &[CallEvent] {
        &self.nodes[self.idx(d)].events
    }

    fn state(&self, d: u8, call: CallId) -> Option<CallState> {
        self.nodes[self.idx(d)].m.state(call)
    }

    fn stats(&self, d: u8) -> CallStats {
        self.nodes[self.idx(d)].m.stats()
    }

    fn ended(&self, d: u8, call: CallId) -> Option<EndReason> {
        self.events(d).iter().find_map(|e| match e {
            CallEvent::Ended { call: c, reason } if *c == call => Some(*reason),
            _ => None,
        })
    }

    fn count_incoming(&self, d: u8) -> usize {
        self.events(d)
            .iter()
            .filter(|e| matches!(e, CallEvent::Incoming { .. }))
            .count()
    }

    fn place(&mut self, from: u8, to_user: &str) -> CallId {
        let devices = self.devices_of(to_user);
        let now = self.now;
        self.m(from).call(now, name(to_user), &devices).unwrap()
    }
}

fn active() -> CallState {
    CallState::Active {
        local_hold: false,
        remote_hold: false,
    }
}

/// Alice (device 1) and Bob (device 2).
fn pair() -> Net {
    Net::new(&[("alice", 1), ("bob", 2)], 0)
}

/// Alice has called Bob and his device rings.
fn ringing_pair() -> (Net, CallId) {
    let mut n = pair();
    let call = n.place(1, "bob");
    n.deliver();
    (n, call)
}

/// Carol called Bob and he answered; Alice is there too, free.
fn bob_busy_with_carol() -> (Net, CallId) {
    let mut n = Net::new(&[("alice", 1), ("bob", 2), ("carol", 3)], 0);
    let first = n.place(3, "bob");
    n.deliver();
    let now = n.now;
    n.m(2).answer(now, first).unwrap();
    n.deliver();
    (n, first)
}

/// Alice called Bob and he answered: the call is active on both sides.
fn active_pair() -> (Net, CallId) {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(2).answer(now, call).unwrap();
    n.deliver();
    (n, call)
}

#[test]
fn invite_ring_answer_hang_up() {
    let mut n = pair();
    let call = n.place(1, "bob");
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: false })
    );
    n.deliver();
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: true })
    );
    assert_eq!(n.state(2, call), Some(CallState::Incoming));
    assert!(matches!(
        n.events(2)[0],
        CallEvent::Incoming { call: c, device, .. } if c == call && device == dev(1)
    ));
    assert_eq!(
        n.events(1)[0],
        CallEvent::Ringing {
            call,
            device: dev(2)
        }
    );
    let now = n.now;
    n.m(2).answer(now, call).unwrap();
    assert_eq!(n.state(2, call), Some(CallState::Answering));
    n.deliver();
    assert_eq!(n.state(1, call), Some(active()));
    assert_eq!(n.state(2, call), Some(active()));
    // Connected on both sides, and keep-alives hold it up for a minute.
    n.advance(Duration::from_secs(60));
    assert_eq!(n.state(1, call), Some(active()));
    n.m(2).hang_up(now, call).unwrap();
    n.deliver();
    assert_eq!(n.ended(2, call), Some(EndReason::HungUp { local: true }));
    assert_eq!(n.ended(1, call), Some(EndReason::HungUp { local: false }));
    assert_eq!(n.m(1).poll_timeout(), None);
    assert_eq!(n.m(2).poll_timeout(), None);
    assert_eq!(n.stats(1), CallStats::default());
    assert_eq!(n.stats(2), CallStats::default());
}

#[test]
fn decline() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(2).decline(now, call).unwrap();
    n.deliver();
    assert_eq!(n.ended(2, call), Some(EndReason::Declined { local: true }));
    assert_eq!(n.ended(1, call), Some(EndReason::Declined { local: false }));
    assert_eq!(
        n.state(1, call),
        Some(CallState::Ended(EndReason::Declined { local: false }))
    );
}

#[test]
fn busy_when_in_another_call() {
    let (mut n, first) = bob_busy_with_carol();
    let call = n.place(1, "bob");
    n.deliver();
    assert_eq!(n.ended(1, call), Some(EndReason::Busy));
    assert!(n.events(2).contains(&CallEvent::RejectedBusy {
        call,
        user: name("alice")
    }));
    assert_eq!(n.stats(2).busy_rejected, 1);
    assert_eq!(n.state(2, first), Some(active()));
    assert_eq!(n.count_incoming(2), 1);
}

#[test]
fn do_not_disturb_answers_busy_without_ringing_until_lifted() {
    let mut n = pair();
    n.m(2).set_do_not_disturb(true);
    let call = n.place(1, "bob");
    n.deliver();
    assert_eq!(n.ended(1, call), Some(EndReason::Busy));
    assert_eq!(n.count_incoming(2), 0);
    assert!(n.events(2).contains(&CallEvent::RejectedBusy {
        call,
        user: name("alice")
    }));
    n.m(2).set_do_not_disturb(false);
    let again = n.place(1, "bob");
    n.deliver();
    assert_eq!(n.count_incoming(2), 1);
    assert_eq!(
        n.state(1, again),
        Some(CallState::Outgoing { ringing: true })
    );
}

#[test]
fn busy_retransmission_is_answered_busy_again() {
    let (mut n, _) = bob_busy_with_carol();
    let call = n.place(1, "bob");
    // The invite arrives, Bob's Busy is lost; Alice retransmits and hears Busy then.
    n.step();
    n.queue.clear();
    n.advance(Duration::from_millis(1500));
    assert_eq!(n.ended(1, call), Some(EndReason::Busy));
    assert_eq!(n.stats(2).duplicate_invites, 1);
    assert_eq!(n.stats(2).busy_rejected, 1);
}

#[test]
fn cancel_before_answer() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(1).hang_up(now, call).unwrap();
    n.deliver();
    assert_eq!(n.ended(1, call), Some(EndReason::Cancelled { local: true }));
    assert_eq!(
        n.ended(2, call),
        Some(EndReason::Cancelled { local: false })
    );
    // Answering now is an error, not a panic.
    assert_eq!(n.m(2).answer(now, call), Err(CallError::UnknownCall));
}

#[test]
fn missed_after_ring_timeout() {
    let mut n = pair();
    let call = n.place(1, "bob");
    n.advance(Duration::from_secs(44));
    assert_eq!(n.state(2, call), Some(CallState::Incoming));
    n.advance(Duration::from_secs(2));
    assert_eq!(n.ended(1, call), Some(EndReason::Missed));
    assert_eq!(n.ended(2, call), Some(EndReason::Missed));
    assert_eq!(n.count_incoming(2), 1, "retransmissions never ring twice");
}

#[test]
fn lost_invite_is_retransmitted_and_rings_once() {
    let mut n = pair();
    let call = n.place(1, "bob");
    n.collect();
    n.queue.clear(); // the first invite is lost
    n.advance(Duration::from_millis(1100));
    assert_eq!(n.state(2, call), Some(CallState::Incoming));
    n.advance(Duration::from_secs(10));
    assert_eq!(n.count_incoming(2), 1);
}

#[test]
fn lost_ringing_gets_a_duplicate_invite_answered_again() {
    let mut n = pair();
    let call = n.place(1, "bob");
    n.step(); // invite delivered
    n.queue.clear(); // Ringing lost
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: false })
    );
    n.advance(Duration::from_millis(1100));
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: true })
    );
    assert_eq!(n.stats(2).duplicate_invites, 1);
    assert_eq!(n.count_incoming(2), 1);
}

#[test]
fn peer_vanished_while_active() {
    let (mut n, call) = active_pair();
    n.advance(Duration::from_secs(3));
    n.offline.insert(dev(2));
    n.advance(Duration::from_secs(4));
    assert_eq!(
        n.state(1, call),
        Some(active()),
        "not before 5 s of silence"
    );
    n.advance(Duration::from_millis(1100));
    assert_eq!(n.ended(1, call), Some(EndReason::PeerVanished));
}

#[test]
fn media_counts_as_liveness() {
    let (mut n, call) = active_pair();
    // Signalling from Bob is lost, but the transport keeps hearing his media.
    n.offline.insert(dev(2));
    for _ in 0..20 {
        n.advance(Duration::from_secs(1));
        let now = n.now;
        n.m(1).handle_heard(now, dev(2));
    }
    assert_eq!(n.state(1, call), Some(active()));
}

#[test]
fn caller_vanished_while_ringing() {
    let (mut n, call) = ringing_pair();
    n.offline.insert(dev(1));
    n.advance(Duration::from_secs(6));
    assert_eq!(n.ended(2, call), Some(EndReason::PeerVanished));
}

#[test]
fn unconfirmed_answer_times_out() {
    let (mut n, call) = ringing_pair();
    n.offline.insert(dev(1));
    let now = n.now;
    n.m(2).answer(now, call).unwrap();
    n.advance(Duration::from_secs(6));
    assert_eq!(n.ended(2, call), Some(EndReason::PeerVanished));
}

#[test]
fn lost_confirmation_is_repaired_by_answer_retransmission() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(2).answer(now, call).unwrap();
    n.step(); // the answer reaches Alice
    n.queue.clear(); // her confirmation (and AnsweredElsewhere to nobody) is lost
    assert_eq!(n.state(1, call), Some(active()));
    assert_eq!(n.state(2, call), Some(CallState::Answering));
    n.advance(Duration::from_millis(1100));
    assert_eq!(n.state(2, call), Some(active()));
}

#[test]
fn hold_and_resume_both_sides() {
    let (mut n, call) = active_pair();
    let now = n.now;
    n.m(1).hold(now, call).unwrap();
    n.deliver();
    let held = |l, r| CallState::Active {
        local_hold: l,
        remote_hold: r,
    };
    assert_eq!(n.state(1, call), Some(held(true, false)));
    assert_eq!(n.state(2, call), Some(held(false, true)));
    n.m(2).hold(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(held(true, true)));
    assert_eq!(n.state(2, call), Some(held(true, true)));
    n.m(1).resume(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(held(false, true)));
    assert_eq!(n.state(2, call), Some(held(true, false)));
    n.m(2).resume(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(active()));
    assert_eq!(n.state(2, call), Some(active()));
    assert!(n.events(2).contains(&CallEvent::HoldChanged {
        call,
        local_hold: false,
        remote_hold: true
    }));
    // Held calls stay up (keep-alives continue).
    n.m(1).hold(now, call).unwrap();
    n.advance(Duration::from_secs(30));
    assert_eq!(n.state(2, call), Some(held(false, true)));
}

#[test]
fn lost_hold_is_repaired_by_keepalive() {
    let (mut n, call) = active_pair();
    let now = n.now;
    n.m(1).hold(now, call).unwrap();
    n.collect();
    n.queue.clear();
    assert_eq!(n.state(2, call), Some(active()));
    n.advance(Duration::from_millis(1100));
    assert_eq!(
        n.state(2, call),
        Some(CallState::Active {
            local_hold: false,
            remote_hold: true
        })
    );
}

#[test]
fn replayed_invite_never_rings_twice() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(1).hang_up(now, call).unwrap();
    n.deliver();
    let (from, to, invite) = n
        .log
        .iter()
        .find(|(_, _, b)| b[0] == MessageType::CallInvite as u8)
        .cloned()
        .unwrap();
    // Right away, and 50 s later (still young enough to pass the age check).
    n.inject(from, to, &invite);
    n.advance(Duration::from_secs(50));
    n.inject(from, to, &invite);
    assert_eq!(n.count_incoming(2), 1);
    assert_eq!(n.stats(2).replayed_invites, 2);
    // After the age limit it is refused as stale (the seen entry may have expired).
    n.advance(Duration::from_secs(40));
    n.inject(from, to, &invite);
    assert_eq!(n.count_incoming(2), 1);
    assert_eq!(n.stats(2).stale_invites, 1);
    assert_eq!(n.m(2).current(), None);
    // An invite from the future is refused as well.
    let future = Message::CallInvite {
        call: CallId([9; 16]),
        caller: dev(1),
        nonce: 1,
        media: 1,
        timestamp: UnixTime(WALL.0 + 1000),
    };
    let mut b = BytesMut::new();
    future.encode(&mut b);
    n.inject(dev(1), dev(2), &b);
    assert_eq!(n.stats(2).stale_invites, 2);
    assert_eq!(n.count_incoming(2), 1);
}

#[test]
fn replay_protection_survives_eviction() {
    let now = Instant::now();
    let mut cfg = CallConfig::new([1; 32], WALL);
    cfg.max_seen = 2;
    let mut bob = CallMachine::new(dev(2), cfg, now);
    let alice = name("alice");
    let invite = |id: u8, ts: u64| Message::CallInvite {
        call: CallId([id; 16]),
        caller: dev(1),
        nonce: 7,
        media: 1,
        timestamp: UnixTime(ts),
    };
    for (id, ts) in [(1, WALL.0 - 3), (2, WALL.0 - 2), (3, WALL.0 - 1)] {
        bob.handle_message(now, dev(1), &alice, &invite(id, ts));
        if let Some(c) = bob.current() {
            bob.hang_up(now, c).unwrap();
        }
    }
    assert_eq!(bob.stats().seen_evictions, 1);
    // Call 1 was evicted, but its timestamp is under the floor: still refused.
    bob.handle_message(now, dev(1), &alice, &invite(1, WALL.0 - 3));
    assert_eq!(bob.current(), None);
    assert_eq!(bob.stats().stale_invites, 1);
    let mut incoming = 0;
    while let Some(e) = bob.poll_event() {
        incoming += usize::from(matches!(e, CallEvent::Incoming { .. }));
    }
    assert_eq!(incoming, 3);
}

/// Incoming-call events drained from a lone machine.
fn drain_incoming(m: &mut CallMachine) -> Vec<CallId> {
    let mut calls = Vec::new();
    while let Some(e) = m.poll_event() {
        if let CallEvent::Incoming { call, .. } = e {
            calls.push(call);
        }
    }
    calls
}

#[test]
fn an_invite_at_the_skew_limit_is_never_replayed_when_forgotten() {
    // Stamped as far in the future as the skew allows, it stays young enough for the age
    // check until `max_skew + max_invite_age` after it arrived: its entry must outlive that.
    let now = Instant::now();
    let cfg = CallConfig::new([1; 32], WALL);
    let span = (cfg.max_skew + cfg.max_invite_age).as_secs();
    let mut bob = CallMachine::new(dev(2), cfg.clone(), now);
    let alice = name("alice");
    let invite = Message::CallInvite {
        call: CallId([1; 16]),
        caller: dev(1),
        nonce: 7,
        media: 1,
        timestamp: UnixTime(WALL.0 + cfg.max_skew.as_secs()),
    };
    bob.handle_message(now, dev(1), &alice, &invite);
    bob.hang_up(now, CallId([1; 16])).unwrap();
    for ms in (0..=(span + 2) * 1000).step_by(250) {
        bob.handle_message(now + Duration::from_millis(ms), dev(1), &alice, &invite);
        assert_eq!(bob.current(), None, "rang again {ms} ms later");
    }
    assert_eq!(drain_incoming(&mut bob).len(), 1);
}

/// An invite from device `caller` for call `n`, stamped `ts`.
fn invite_from(caller: u8, n: u32, ts: u64) -> Message<'static> {
    let mut id = [caller; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    Message::CallInvite {
        call: CallId(id),
        caller: dev(caller),
        nonce: u64::from(n),
        media: 1,
        timestamp: UnixTime(ts),
    }
}

/// Hand Bob an invite from `caller`; true when it rings (then declined, to make way).
fn rings(bob: &mut CallMachine, now: Instant, caller: u8, invite: &Message) -> bool {
    bob.handle_message(now, dev(caller), &name("caller"), invite);
    let rang = !drain_incoming(bob).is_empty();
    if let Some(c) = bob.current() {
        bob.hang_up(now, c).unwrap();
    }
    while bob.poll_transmit().is_some() {}
    rang
}

#[test]
fn an_invite_flood_from_one_device_does_not_shut_out_the_others() {
    let start = Instant::now();
    let cfg = CallConfig::new([1; 32], WALL);
    let (per_device, max_seen) = (cfg.max_seen_per_device, cfg.max_seen);
    let mut bob = CallMachine::new(dev(2), cfg, start);

    // Mallory's device (9) bursts: more invites than Bob remembers in all, within one second,
    // all stamped now. Her first 16 ring (and are declined); the next evicts her oldest, which
    // raises her floor to now: the rest are refused. (One global floor would have been raised
    // to now for every device.)
    let burst = max_seen as u32 + 200;
    let mut rang = 0;
    for n in 0..burst {
        let now = start + Duration::from_micros(800 * u64::from(n));
        rang += u64::from(rings(&mut bob, now, 9, &invite_from(9, n, WALL.0)));
    }
    let s = bob.stats();
    assert_eq!(rang, per_device as u64);
    assert_eq!(s.stale_invites, u64::from(burst) - rang);
    assert_eq!((s.seen_evictions, s.seen_device_evictions), (1, 1));
    assert_eq!(bob.floors.get(&dev(9)), Some(&WALL));
    assert_eq!(bob.floor, None);
    let hers = |bob: &CallMachine| bob.seen.values().filter(|s| s.from == dev(9)).count();
    assert_eq!(hers(&bob), per_device - 1);
    // Other devices still get through, stamped as fresh as the burst, or a bit older.
    let now = start + Duration::from_millis(999);
    assert!(rings(&mut bob, now, 1, &invite_from(1, 1, WALL.0)));
    assert!(rings(&mut bob, now, 3, &invite_from(3, 1, WALL.0 - 5)));
    // Her evicted invite replayed is refused; a remembered one does not ring either.
    let stale = bob.stats().stale_invites;
    assert!(!rings(&mut bob, now, 9, &invite_from(9, 0, WALL.0)));
    assert_eq!(bob.stats().stale_invites, stale + 1);
    assert!(!rings(&mut bob, now, 9, &invite_from(9, 5, WALL.0)));

    // A longer flood: 500 invites over 25 s, 20 a second, each stamped with the time it is
    // sent. 16 a second pass, each evicting her own oldest; then her floor is this second.
    let flood = 500;
    let (mut rang, mut now, mut ts) = (0, start, WALL.0);
    let before = bob.stats();
    for n in 0..flood {
        now = start + Duration::from_secs(1) + Duration::from_millis(50 * u64::from(n));
        ts = bob.wall(now).0;
        rang += u64::from(rings(&mut bob, now, 9, &invite_from(9, burst + n, ts)));
    }
    let s = bob.stats();
    let stale = s.stale_invites - before.stale_invites;
    assert_eq!(rang + stale, u64::from(flood));
    assert_eq!((rang, stale), (25 * per_device as u64, 25 * 4));
    // Each second she starts with 15 remembered (the last eviction made room that was not
    // used): 15 of the last second's evicted, then one of this second's, which raises her floor.
    assert_eq!(s.seen_evictions - before.seen_evictions, rang);
    assert_eq!(s.seen_device_evictions, s.seen_evictions);
    assert_eq!(hers(&bob), per_device - 1);
    assert_eq!(s.global_floor_raises, 0);
    assert_eq!(bob.floor, None);
    let stale = s.stale_invites;
    // Others still get through, as fresh as the flood's latest, or older.
    assert!(rings(&mut bob, now, 1, &invite_from(1, 2, ts)));
    assert!(rings(&mut bob, now, 3, &invite_from(3, 2, ts - 5)));
    assert_eq!(bob.stats().stale_invites, stale);
    // Her evicted invites replayed are refused, and so is a new one at her floor; a fresher
    // one rings.
    assert!(!rings(&mut bob, now, 9, &invite_from(9, burst, WALL.0 + 1)));
    assert!(!rings(
        &mut bob,
        now,
        9,
        &invite_from(9, burst + 300, WALL.0 + 16)
    ));
    let floor = bob.floors[&dev(9)].0;
    assert!(!rings(
        &mut bob,
        now,
        9,
        &invite_from(9, burst + flood, floor)
    ));
    assert_eq!(bob.stats().stale_invites, stale + 3);
    let later = now + Duration::from_secs(1);
    assert!(rings(
        &mut bob,
        later,
        9,
        &invite_from(9, burst + flood + 1, ts + 1)
    ));
    // Past the age limit her floor is forgotten: the age check refuses all under it.
    let much_later = later + Duration::from_secs(62);
    let fresh = bob.wall(much_later).0;
    assert!(rings(&mut bob, much_later, 3, &invite_from(3, 3, fresh)));
    assert!(bob.floors.is_empty());
    assert_eq!(bob.seen.len(), 1);
}

#[test]
fn a_full_table_raises_the_floor_of_the_evicted_entrys_device_only() {
    let now = Instant::now();
    let mut cfg = CallConfig::new([1; 32], WALL);
    cfg.max_seen = 4;
    let mut bob = CallMachine::new(dev(2), cfg, now);
    let caller = name("caller");
    // Alice's invite, the oldest, rings and keeps ringing.
    let alice = invite_from(1, 1, WALL.0 - 20);
    bob.handle_message(now, dev(1), &caller, &alice);
    let ringing = bob.current().unwrap();
    // Three more from three devices (Busy) fill the table.
    for d in 10..=12u8 {
        bob.handle_message(
            now,
            dev(d),
            &caller,
            &invite_from(d, 1, WALL.0 - 20 + u64::from(d)),
        );
    }
    assert_eq!(bob.seen.len(), 4);
    // A fifth evicts the oldest entry that is not the ringing call's: device 10's.
    bob.handle_message(now, dev(13), &caller, &invite_from(13, 1, WALL.0 - 5));
    assert_eq!(bob.stats().seen_evictions, 1);
    assert_eq!(bob.stats().seen_device_evictions, 0);
    assert_eq!(bob.floors.get(&dev(10)), Some(&UnixTime(WALL.0 - 10)));
    assert_eq!(bob.floor, None);
    // Alice's retransmission is still answered: Ringing again.
    while bob.poll_transmit().is_some() {}
    bob.handle_message(now, dev(1), &caller, &alice);
    assert_eq!(bob.stats().duplicate_invites, 1);
    assert_eq!(
        bob.poll_transmit(),
        Some(CallTransmit {
            device: dev(1),
            message: Message::CallRinging { call: ringing }
        })
    );
    // Device 10's evicted invite replayed: refused.
    bob.handle_message(now, dev(10), &caller, &invite_from(10, 1, WALL.0 - 10));
    assert_eq!(bob.stats().stale_invites, 1);
    // Another device's invite older than the evicted one is not refused (Busy: Alice rings);
    // it evicts device 11's entry.
    bob.handle_message(now, dev(14), &caller, &invite_from(14, 1, WALL.0 - 15));
    let s = bob.stats();
    assert_eq!(
        (s.stale_invites, s.busy_rejected, s.seen_evictions),
        (1, 5, 2)
    );
    assert_eq!(bob.floors.get(&dev(11)), Some(&UnixTime(WALL.0 - 9)));
    assert_eq!(bob.current(), Some(ringing));
    assert_eq!(drain_incoming(&mut bob), vec![ringing]);
}

#[test]
fn a_full_floor_map_folds_the_lowest_floor_into_one_for_all() {
    let now = Instant::now();
    let mut cfg = CallConfig::new([1; 32], WALL);
    cfg.max_seen = 2;
    let mut bob = CallMachine::new(dev(2), cfg, now);
    let w = |back: u64| WALL.0 - back;
    assert!(rings(&mut bob, now, 10, &invite_from(10, 1, w(30))));
    assert!(rings(&mut bob, now, 11, &invite_from(11, 1, w(20))));
    // Each new device evicts the oldest entry: floors for 10, then 11.
    assert!(rings(&mut bob, now, 12, &invite_from(12, 1, w(10))));
    assert!(rings(&mut bob, now, 13, &invite_from(13, 1, w(5))));
    assert_eq!(bob.floors.len(), 2);
    assert_eq!(bob.stats().global_floor_raises, 0);
    // A third floor (device 12's) finds the map full: the lowest, device 10's, goes to all.
    assert!(rings(&mut bob, now, 14, &invite_from(14, 1, w(4))));
    assert_eq!(bob.stats().global_floor_raises, 1);
    assert_eq!(bob.floor, Some(UnixTime(w(30))));
    assert_eq!(bob.floors.len(), 2);
    assert!(bob.floors.contains_key(&dev(12)) && !bob.floors.contains_key(&dev(10)));
    // Device 10's replay is refused by that floor, as is anyone's invite at or under it.
    assert!(!rings(&mut bob, now, 10, &invite_from(10, 1, w(30))));
    assert!(!rings(&mut bob, now, 15, &invite_from(15, 1, w(30))));
    assert_eq!(bob.stats().stale_invites, 2);
    // A fresher one rings; every evicted invite replayed is still refused.
    assert!(rings(&mut bob, now, 15, &invite_from(15, 2, w(3))));
    assert_eq!(bob.stats().global_floor_raises, 2);
    assert_eq!(bob.floor, Some(UnixTime(w(20))));
    for (d, back) in [(10, 30), (11, 20), (12, 10), (13, 5)] {
        assert!(!rings(&mut bob, now, d, &invite_from(d, 1, w(back))));
    }
    assert_eq!(bob.stats().stale_invites, 6);
    assert!(bob.floors.len() <= 2 && bob.seen.len() <= 2);
}

#[test]
fn multi_device_second_answers_first_and_the_others_are_told() {
    let mut n = Net::new(&[("alice", 1), ("bob", 11), ("bob", 12), ("bob", 13)], 0);
    let call = n.place(1, "bob");
    n.deliver();
    for d in [11, 12, 13] {
        assert_eq!(n.state(d, call), Some(CallState::Incoming));
        assert!(n.events(1).contains(&CallEvent::Ringing {
            call,
            device: dev(d)
        }));
    }
    // Devices 12 and 13 answer at once; 12's answer arrives first.
    let now = n.now;
    n.m(12).answer(now, call).unwrap();
    n.m(13).answer(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(active()));
    assert_eq!(n.state(12, call), Some(active()));
    assert!(n.events(1).contains(&CallEvent::Connected {
        call,
        device: dev(12),
        media: 1
    }));
    assert_eq!(n.ended(11, call), Some(EndReason::AnsweredElsewhere));
    assert_eq!(n.ended(13, call), Some(EndReason::AnsweredElsewhere));
    assert_eq!(n.stats(1).late_answers, 1);
    // The call carries on with device 12 only.
    n.advance(Duration::from_secs(20));
    assert_eq!(n.state(1, call), Some(active()));
    let now = n.now;
    n.m(1).hang_up(now, call).unwrap();
    n.deliver();
    assert_eq!(n.ended(12, call), Some(EndReason::HungUp { local: false }));
}

#[test]
fn late_answer_after_the_call_ended_is_told_so() {
    let mut n = Net::new(&[("alice", 1), ("bob", 11), ("bob", 12)], 0);
    let call = n.place(1, "bob");
    n.deliver();
    let now = n.now;
    n.m(11).answer(now, call).unwrap();
    n.deliver();
    n.m(1).hang_up(now, call).unwrap();
    n.deliver();
    // Device 12's answer, delayed in the network, arrives after the call is over.
    let late = Message::CallAnswer { call, media: 1 };
    let mut b = BytesMut::new();
    late.encode(&mut b);
    n.inject(dev(12), dev(1), &b);
    n.collect();
    let (_, to, reply) = n.queue.pop_front().unwrap();
    assert_eq!(to, dev(12));
    assert_eq!(
        Message::decode(&reply).unwrap(),
        Message::CallAnsweredElsewhere { call }
    );
}

#[test]
fn decline_on_one_device_stops_the_others() {
    let mut n = Net::new(&[("alice", 1), ("bob", 11), ("bob", 12), ("bob", 13)], 0);
    let call = n.place(1, "bob");
    n.deliver();
    let now = n.now;
    n.m(13).decline(now, call).unwrap();
    n.deliver();
    assert_eq!(n.ended(1, call), Some(EndReason::Declined { local: false }));
    assert_eq!(
        n.ended(11, call),
        Some(EndReason::Cancelled { local: false })
    );
    assert_eq!(
        n.ended(12, call),
        Some(EndReason::Cancelled { local: false })
    );
}

#[test]
fn busy_on_every_device_ends_busy_but_one_free_device_rings() {
    let mut n = Net::new(&[("alice", 1), ("bob", 11), ("bob", 12), ("carol", 3)], 0);
    // Carol is in a call with Bob's device 11.
    let now = n.now;
    let first = n.m(3).call(now, name("bob"), &[dev(11)]).unwrap();
    n.deliver();
    let now = n.now;
    n.m(11).answer(now, first).unwrap();
    n.deliver();
    let call = n.place(1, "bob");
    n.deliver();
    assert_eq!(n.state(12, call), Some(CallState::Incoming));
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: true })
    );
    let now = n.now;
    n.m(12).answer(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(active()));
}

/// Both users call each other at once; whatever the ids, they end up in one call.
#[test]
fn glare_resolves_to_the_lower_call_id() {
    let mut seen = BTreeSet::new();
    for seed in 0..16u8 {
        let mut n = Net::new(&[("alice", 1), ("bob", 11), ("bob", 12)], seed);
        let a = n.place(1, "bob");
        let now = n.now;
        let b = n.m(11).call(now, name("alice"), &[dev(1)]).unwrap();
        n.deliver();
        let (kept, dropped) = if a < b { (a, b) } else { (b, a) };
        seen.insert(a < b);
        assert_eq!(n.state(1, kept), Some(active()), "seed {seed}");
        assert_eq!(n.state(11, kept), Some(active()), "seed {seed}");
        assert_eq!(n.m(1).current(), Some(kept));
        assert_eq!(n.m(11).current(), Some(kept));
        // Bob's other device rang for Alice's call and was told to stop.
        assert!(n
            .state(12, a)
            .is_some_and(|s| matches!(s, CallState::Ended(_))));
        assert_eq!(n.m(12).current(), None);
        // The side whose call lost reports the merge.
        let loser = if dropped == a { 1 } else { 11 };
        assert!(n
            .events(loser)
            .contains(&CallEvent::GlareMerged { dropped, kept }));
        // And it stays one call.
        n.advance(Duration::from_secs(10));
        assert_eq!(n.state(1, kept), Some(active()));
        assert_eq!(n.state(11, kept), Some(active()));
        assert_eq!(n.count_incoming(1), 0);
    }
    assert_eq!(seen.len(), 2, "both orders covered");
}

#[test]
fn bad_input_is_dropped_and_counted() {
    let mut n = Net::new(&[("alice", 1), ("bob", 2), ("mallory", 9)], 0);
    let call = n.place(1, "bob");
    n.deliver();
    let now = n.now;
    let mallory = name("mallory");
    // Answer from a device never invited.
    let m = Message::CallAnswer { call, media: 1 };
    assert!(n.m(1).handle_message(now, dev(9), &mallory, &m));
    assert_eq!(n.stats(1).unexpected_device, 1);
    assert_eq!(
        n.state(1, call),
        Some(CallState::Outgoing { ringing: true })
    );
    // Unknown call id.
    let m = Message::CallHangup {
        call: CallId([0xEE; 16]),
    };
    n.m(1).handle_message(now, dev(2), &name("bob"), &m);
    assert_eq!(n.stats(1).unknown_call, 1);
    // Wrong state: hold while ringing, a cancel sent to the caller.
    let m = Message::CallHold { call };
    n.m(2).handle_message(now, dev(1), &name("alice"), &m);
    let m = Message::CallCancel { call };
    n.m(1).handle_message(now, dev(2), &name("bob"), &m);
    assert_eq!(n.stats(2).wrong_state, 1);
    assert_eq!(n.stats(1).wrong_state, 1);
    // An invite whose caller field is not the session's device.
    let m = Message::CallInvite {
        call: CallId([5; 16]),
        caller: dev(1),
        nonce: 1,
        media: 1,
        timestamp: WALL,
    };
    n.m(2).handle_message(now, dev(9), &mallory, &m);
    assert_eq!(n.stats(2).unexpected_device, 1);
    // Not a call message at all.
    assert!(!n
        .m(2)
        .handle_message(now, dev(1), &name("alice"), &Message::KeepAlive));
    assert_eq!(n.stats(2).not_call, 1);
    // Commands in the wrong state are errors.
    assert_eq!(n.m(1).hold(now, call), Err(CallError::WrongState));
    assert_eq!(n.m(1).answer(now, call), Err(CallError::WrongState));
    assert_eq!(n.m(2).hold(now, call), Err(CallError::WrongState));
    assert_eq!(
        n.m(1).call(now, name("bob"), &[dev(2)]),
        Err(CallError::InCall)
    );
    assert_eq!(
        n.m(9).call(now, name("bob"), &[dev(9)]),
        Err(CallError::NoDevices)
    );
    let many: Vec<DeviceId> = (20..30).map(dev).collect();
    assert_eq!(
        n.m(9).call(now, name("bob"), &many),
        Err(CallError::TooManyDevices)
    );
    // None of it disturbed the call.
    n.deliver();
    assert_eq!(n.state(2, call), Some(CallState::Incoming));
    assert_eq!(n.count_incoming(2), 1);
}

use crate::wire::message::MessageType;
use proptest::prelude::*;

proptest! {
    /// Arbitrary call messages from arbitrary devices, at arbitrary times, around a real call:
    /// never a panic, and once left alone both devices agree on the call.
    #[test]
    fn arbitrary_input_never_panics(
        ops in proptest::collection::vec(
            (0u8..0x0C, 0u8..3, any::<bool>(), any::<u8>(), 0u64..3000),
            0..64,
        ),
    ) {
        let mut n = pair();
        let call = n.place(1, "bob");
        n.deliver();
        for (ty, who, real, extra, ms) in ops {
            n.advance(Duration::from_millis(ms));
            let id = if real { call } else { CallId([extra; 16]) };
            let msg = match ty {
                0 => Message::CallInvite {
                    call: id,
                    caller: dev(who),
                    nonce: u64::from(extra),
                    media: extra,
                    timestamp: UnixTime(WALL.0 + u64::from(extra)),
                },
                1 => Message::CallRinging { call: id },
                2 => Message::CallAnswer { call: id, media: extra },
                3 => Message::CallDecline { call: id },
                4 => Message::CallBusy { call: id },
                5 => Message::CallCancel { call: id },
                6 => Message::CallHangup { call: id },
                7 => Message::CallHold { call: id },
                8 => Message::CallResume { call: id },
                9 => Message::CallAnsweredElsewhere { call: id },
                10 => Message::CallKeepAlive { call: id, held: extra & 1 == 1 },
                _ => Message::Ping { id: 1 },
            };
            let target = if extra & 1 == 0 { 1 } else { 2 };
            let now = n.now;
            let user = name(if who == 1 { "alice" } else { "bob" });
            n.m(target).handle_message(now, dev(who), &user, &msg);
            if extra & 6 == 6 {
                let _ = n.m(2).answer(now, call);
            }
            n.deliver();
        }
        // Left alone for two minutes, the two devices agree: the same call, or none.
        n.advance(Duration::from_secs(120));
        prop_assert_eq!(n.m(1).current(), n.m(2).current());
        // A machine with no call wants no timer, one with a call does (it keeps it alive).
        for d in [1, 2] {
            prop_assert_eq!(n.m(d).poll_timeout().is_some(), n.m(d).current().is_some());
        }
    }
}

#[test]
fn a_lost_decline_is_repeated_when_the_invite_comes_again() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(2).decline(now, call).unwrap();
    // The decline is lost on the way.
    n.collect();
    n.queue.clear();
    assert_eq!(n.ended(2, call), Some(EndReason::Declined { local: true }));
    // The caller still rings; its next invite retransmission is answered with the decline.
    n.advance(Duration::from_millis(1500));
    assert_eq!(n.ended(1, call), Some(EndReason::Declined { local: false }));
    assert_eq!(n.stats(2).repeated_endings, 1);
}

#[test]
fn a_lost_hang_up_is_repeated_when_the_peer_keeps_the_call_alive() {
    let (mut n, call) = ringing_pair();
    let now = n.now;
    n.m(2).answer(now, call).unwrap();
    n.deliver();
    assert_eq!(n.state(1, call), Some(active()));
    let now = n.now;
    n.m(2).hang_up(now, call).unwrap();
    n.collect();
    n.queue.clear();
    // Alice's next keep-alive gets the hang-up again, well before she would give up on Bob.
    n.advance(Duration::from_millis(1500));
    assert_eq!(n.ended(1, call), Some(EndReason::HungUp { local: false }));
    assert_eq!(n.stats(2).repeated_endings, 1);
}
