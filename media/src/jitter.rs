//! The adaptive jitter buffer (sans-IO: every call takes `now`, nothing reads a clock).
//!
//! Frames go in as they arrive ([`JitterBuffer::insert`]); the playout side asks, once per
//! frame slot, what to play ([`JitterBuffer::pop`]). The buffer is codec-agnostic: it hands
//! back Opus payloads and decisions, and the [`receiver`](crate::receiver) decodes them.
//!
//! ## Delay
//!
//! Each frame's *transit* is its arrival time minus its media time (timestamp × 2.5 ms, anchored
//! at the first frame). Over a sliding window of the last 200 frames (4 s at 50 frames/s), the
//! *relative delay* of a frame is its transit minus the window's smallest transit: the queueing
//! a frame saw beyond the fastest one. The **target delay** is the 95th percentile of relative
//! delays, plus a loss-recovery margin (one frame when in-band FEC is in use and frames are
//! being lost, *n* frames when the sender's redundant copies reach *n* frames back; a reach seen in the last
//! 500 frames counts, so the margin does not flap with the sender's choice), clamped to
//! `[min_delay, max_delay]`. A smooth network gives a target near zero; jitter raises it as
//! soon as 5 % of the window is delayed; it decays once the jittery frames leave the window.
//! The **current delay** is how long the slot being played has waited beyond the fastest
//! transit: `now - media_time(slot) - min_transit`.
//!
//! ## Adapting, and clock drift
//!
//! When the current delay is below the jitter part of the target, the buffer *stretches*: it
//! plays one frame of concealment without advancing (the delay grows by a frame). The loss
//! margin is grown the same way but only at a quiet moment ([`JitterBuffer::grow_wanted`]):
//! it helps only when a loss comes, so it is not worth an audible stretch in speech. When the delay exceeds the
//! target by more than a frame for 50 consecutive slots (1 s), it asks to *shrink*
//! ([`JitterBuffer::shrink_wanted`]); the receiver drops the next frame when it is quiet
//! (cross-fading into the one after), or unconditionally after 250 slots (5 s). Playout clock drift
//! between devices shows up as a slowly growing or shrinking current delay, so this same
//! mechanism absorbs it: a receiver clock 0.1 % slow drops one quiet frame every 20 s, a fast
//! one stretches one every 20 s. We chose dropping and concealing whole frames over
//! time-stretching (WSOLA) because it is simple, codec-agnostic, and happens in silence in
//! practice; the cost is a 20 ms step in delay.
//!
//! ## Gaps
//!
//! For a slot with no frame, in order: a redundant copy (RED) carried by a later frame, the
//! in-band FEC of the frame that follows the gap, and finally Opus packet-loss concealment. A
//! gap after a frame flagged DTX, or with contiguous sequence numbers, is silence (DTX), not
//! loss. Frames older than the slot being played are late and discarded; repeated sequence
//! numbers are duplicates. Three late frames in a row mean the network delay jumped: the
//! buffer re-anchors on the latest one instead of concealing until the estimate catches up.
//! After a second of concealment with nothing buffered it goes idle and re-anchors on the
//! next frame; a frame more than 2 s ahead of playout (a sender restart) does the same.
//!
//! ## Hold
//!
//! A call on hold is a gap on purpose: [`JitterBuffer::set_held`] says so. While held the
//! buffer plays [`Playout::Idle`] (no loss, no concealment, no stretching), drops what it
//! buffered, reads a current delay of 0, and counts frames that still arrive (sent before
//! the sender heard of the hold) without playing them or taking their transit. On resume
//! the next frame re-anchors media time: the sender's timestamps did not advance through the
//! hold (or not by the time it took), so the held time is neither transit nor jitter; the
//! delay window keeps the relative delays it learned before the hold, so the target delay is
//! kept too. Playout starts again once that frame has waited the target delay, as at the start
//! of a call, and the frames missing until then are not loss.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::MediaFrame;
use crate::opus_packet::{self, TICK_US};

const TICK_MS: f64 = TICK_US as f64 / 1000.0;
/// The deepest protection (in frames) the recovery margin follows: the sender's
/// [`MAX_RED_REACH`](crate::sender::MAX_RED_REACH).
const MAX_REACH: usize = crate::sender::MAX_RED_REACH as usize;
/// How long (in frames) a protection depth seen in the stream keeps its recovery margin.
const MARGIN_MEMORY: u64 = 500;
/// Start of the extended sequence and timestamp spaces (so going back never underflows).
const EXT_BASE: u64 = 1 << 32;

/// Jitter buffer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterConfig {
    /// The least delay the buffer keeps.
    pub min_delay: Duration,
    /// The most delay it will add.
    pub max_delay: Duration,
    /// Frames in the delay-estimation window.
    pub window: usize,
    /// The percentile of relative delays the target covers (0 to 1).
    pub quantile: f64,
    /// Most frames held at once (more are dropped and counted).
    pub capacity: usize,
    /// Concealing this long with nothing buffered makes the buffer idle.
    pub idle_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::ZERO,
            max_delay: Duration::from_millis(500),
            window: 200,
            quantile: 0.95,
            capacity: 256,
            idle_after: Duration::from_secs(1),
        }
    }
}

/// What to play for the next slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Nothing to play (not started, or idle after a long gap): silence, not a loss.
    Idle {
        /// How long, in ticks of 2.5 ms.
        ticks: u32,
    },
    /// Decode this frame.
    Frame {
        /// The Opus payload.
        payload: Vec<u8>,
        /// Its media timestamp (extended ticks).
        ts: u64,
        /// Its duration in ticks.
        ticks: u32,
    },
    /// The frame was missing; decode its redundant copy.
    Red {
        /// The Opus payload (the lost frame's own primary payload).
        payload: Vec<u8>,
        /// Its media timestamp.
        ts: u64,
        /// Its duration in ticks.
        ticks: u32,
    },
    /// The frame was missing; rebuild it from the in-band FEC of the frame that follows.
    Fec {
        /// The *next* frame's Opus payload (decode with FEC for `ticks`).
        next_payload: Vec<u8>,
        /// The rebuilt frame's media timestamp.
        ts: u64,
        /// The lost frame's duration in ticks.
        ticks: u32,
    },
    /// The frame was missing and could not be rebuilt: conceal it (a loss).
    Conceal {
        /// Duration in ticks.
        ticks: u32,
    },
    /// Conceal one frame to grow the delay toward the target (not a loss).
    Stretch {
        /// Duration in ticks.
        ticks: u32,
    },
    /// Silence the sender did not transmit (DTX): comfort noise, not a loss.
    Dtx {
        /// Duration in ticks.
        ticks: u32,
    },
}

impl Playout {
    /// The slot's duration in ticks.
    pub fn ticks(&self) -> u32 {
        match *self {
            Playout::Idle { ticks }
            | Playout::Frame { ticks, .. }
            | Playout::Red { ticks, .. }
            | Playout::Fec { ticks, .. }
            | Playout::Conceal { ticks }
            | Playout::Stretch { ticks }
            | Playout::Dtx { ticks } => ticks,
        }
    }
}

/// What happened to an inserted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Buffered for playout.
    Buffered,
    /// Its sequence number was seen before.
    Duplicate,
    /// Its slot has already been played.
    Late,
    /// The buffer is full.
    Overflow,
    /// It re-anchored the playout (a delay jump, a sender restart, or the end of a long gap).
    Resync,
    /// The call is on hold ([`JitterBuffer::set_held`]): counted, not played.
    Held,
}

/// Whether the buffer wants to shed a frame of delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shrink {
    /// No.
    No,
    /// Yes, if the next frame is quiet.
    IfQuiet,
    /// Yes, now (the excess has lasted too long).
    Now,
}

/// Counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Frames inserted (including duplicates and late ones).
    pub received: u64,
    /// Duplicates discarded.
    pub duplicates: u64,
    /// Late frames discarded.
    pub late: u64,
    /// Frames dropped because the buffer was full.
    pub overflow: u64,
    /// Frames played from their own packet.
    pub played: u64,
    /// Frames missing at their slot (before recovery).
    pub lost_before_recovery: u64,
    /// Frames still missing after RED and FEC (concealed).
    pub lost_after_recovery: u64,
    /// Frames rebuilt from in-band FEC.
    pub fec_recovered: u64,
    /// Frames rebuilt from a redundant copy.
    pub red_recovered: u64,
    /// Milliseconds of loss concealment.
    pub concealed_ms: f64,
    /// Milliseconds of concealment inserted to grow the delay.
    pub stretched_ms: f64,
    /// Frames dropped to shrink the delay.
    pub shrunk: u64,
    /// Milliseconds of DTX silence.
    pub dtx_ms: f64,
    /// Re-anchorings of the playout point.
    pub resyncs: u64,
    /// Current delay (ms) at the last slot.
    pub current_delay_ms: f64,
    /// Target delay (ms).
    pub target_delay_ms: f64,
    /// Unique sequence numbers received.
    pub unique_received: u64,
    /// Sequence numbers expected (highest - first + 1).
    pub expected: u64,
    /// Runs of consecutive frames missing at playout.
    pub loss_runs: u64,
    /// Gaps in the sequence seen on arrival (runs of missing frames, before reordering).
    pub gap_runs: u64,
    /// Frames in those gaps.
    pub gap_frames: u64,
    /// Frames that arrived while the call was on hold (counted in `received`, not played).
    pub held_received: u64,
}

impl JitterStats {
    /// Network loss: the fraction of expected frames never received (0 to 1).
    pub fn network_loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.expected.saturating_sub(self.unique_received) as f64 / self.expected as f64
        }
    }

    fn slots(&self) -> u64 {
        self.played + self.lost_before_recovery
    }

    /// Fraction of frames missing at playout, before recovery.
    pub fn loss_before_recovery(&self) -> f64 {
        self.lost_before_recovery as f64 / self.slots().max(1) as f64
    }

    /// Frames played or due at playout (excluding silence, stretching and idle time).
    pub fn slots_total(&self) -> u64 {
        self.slots()
    }

    /// Fraction of frames concealed, after recovery.
    pub fn loss_after_recovery(&self) -> f64 {
        self.lost_after_recovery as f64 / self.slots().max(1) as f64
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    ticks: u32,
    payload: Vec<u8>,
    fec: bool,
    dtx: bool,
}

/// Which sequence numbers were seen, over the last 1024.
#[derive(Debug, Default)]
struct SeqWindow {
    highest: Option<u64>,
    bits: [u64; 16],
}

impl SeqWindow {
    const SIZE: u64 = 1024;

    /// Record `seq`; false when it was already seen or is too old to tell.
    fn record(&mut self, seq: u64) -> bool {
        let bit = |s: u64| ((s % Self::SIZE) / 64) as usize;
        let mask = |s: u64| 1u64 << (s % 64);
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) if seq > h => {
                if seq - h >= Self::SIZE {
                    self.bits = [0; 16];
                } else {
                    for s in h + 1..=seq {
                        self.bits[bit(s)] &= !mask(s);
                    }
                }
                self.highest = Some(seq);
            }
            Some(h) if h - seq >= Self::SIZE => return false,
            Some(_) => {}
        }
        let seen = self.bits[bit(seq)] & mask(seq) != 0;
        self.bits[bit(seq)] |= mask(seq);
        !seen
    }
}

fn extend(last: Option<u64>, v: u16) -> u64 {
    match last {
        None => EXT_BASE + u64::from(v),
        Some(l) => {
            let diff = v.wrapping_sub(l as u16) as i16;
            l.wrapping_add_signed(i64::from(diff))
        }
    }
}

/// The adaptive jitter buffer. See the [module documentation](self).
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    frames: BTreeMap<u64, Entry>,
    red: BTreeMap<u64, (u32, Vec<u8>)>,
    seqs: SeqWindow,
    last_seq: Option<u64>,
    last_ts: Option<u64>,
    first_seq: Option<u64>,
    /// Anchor of media time: (arrival instant, timestamp) of the first frame.
    anchor: Option<(Instant, u64)>,
    /// Transit (ms) of each frame in the window.
    transits: VecDeque<f64>,
    /// When (in frames received) each protection reach was last seen: FEC counts as 1,
    /// redundant blocks as how many frames back the oldest one goes (`n` for copies of the
    /// `n` frames right before, more when the sender spreads them against bursts).
    protection_seen: [Option<u64>; MAX_REACH + 1],
    min_transit: f64,
    target_ms: f64,
    jitter_ms: f64,
    started: bool,
    idle: bool,
    playout_ts: u64,
    last_ticks: u32,
    last_played_seq: Option<u64>,
    last_played_dtx: bool,
    consecutive_late: u32,
    /// End (extended ticks) of the last slot played from real audio (frame, RED or FEC).
    played_until: u64,
    concealing_ms: f64,
    excess_slots: u32,
    loss_ewma: f64,
    last_slot_lost: bool,
    /// On hold: play nothing, count nothing as lost.
    held: bool,
    /// Resumed from hold: the next frame re-anchors media time.
    resume_pending: bool,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new(JitterConfig::default())
    }
}

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        Self {
            config,
            frames: BTreeMap::new(),
            red: BTreeMap::new(),
            seqs: SeqWindow::default(),
            last_seq: None,
            last_ts: None,
            first_seq: None,
            anchor: None,
            transits: VecDeque::new(),
            min_transit: 0.0,
            target_ms: 0.0,
            jitter_ms: 0.0,
            protection_seen: [None; MAX_REACH + 1],
            started: false,
            idle: false,
            playout_ts: 0,
            last_ticks: 8,
            last_played_seq: None,
            last_played_dtx: false,
            consecutive_late: 0,
            played_until: 0,
            concealing_ms: 0.0,
            excess_slots: 0,
            loss_ewma: 0.0,
            last_slot_lost: false,
            held: false,
            resume_pending: false,
            stats: JitterStats::default(),
        }
    }

    /// The call went on hold (`true`: the peer sends nothing on purpose, and nothing is played)
    /// or was resumed (`false`). See the [module documentation](self#hold).
    pub fn set_held(&mut self, held: bool) {
        if held == self.held {
            return;
        }
        self.held = held;
        if held {
            self.frames.clear();
            self.red.clear();
            self.started = false;
            self.idle = false;
            self.concealing_ms = 0.0;
            self.excess_slots = 0;
            self.consecutive_late = 0;
            self.last_slot_lost = false;
            self.stats.current_delay_ms = 0.0;
        } else {
            self.resume_pending = true;
        }
    }

    /// Whether the call is on hold.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// The first frame after a hold (timestamp `ts`, arrived at `now`): media time restarts
    /// here; the window keeps its relative delays (shifted so its fastest frame is 0).
    fn resume(&mut self, now: Instant, ts: u64) {
        self.resume_pending = false;
        let min = self.min_transit;
        for t in &mut self.transits {
            *t -= min;
        }
        self.min_transit = 0.0;
        self.anchor = Some((now, ts));
        self.frames.clear();
        self.red.clear();
        self.playout_ts = ts;
        self.played_until = self.played_until.min(ts);
        self.started = false;
        self.idle = false;
        self.concealing_ms = 0.0;
        self.consecutive_late = 0;
        self.excess_slots = 0;
        self.last_played_seq = None;
        self.last_played_dtx = false;
        self.last_slot_lost = false;
    }

    /// Counters and gauges.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames buffered.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The target delay.
    pub fn target_delay(&self) -> Duration {
        Duration::from_secs_f64(self.target_ms / 1000.0)
    }

    /// The extended timestamp of the next slot to play.
    pub fn playout_ts(&self) -> u64 {
        self.playout_ts
    }

    /// The first frame's extended timestamp (the origin of media time), once one arrived.
    pub fn origin_ts(&self) -> Option<u64> {
        self.anchor.map(|(_, ts)| ts)
    }

    fn media_ms(&self, now: Instant, ts: u64) -> f64 {
        let (at, ts0) = self.anchor.unwrap_or((now, ts));
        let elapsed = if now >= at {
            now.duration_since(at).as_secs_f64() * 1000.0
        } else {
            -(at.duration_since(now).as_secs_f64() * 1000.0)
        };
        elapsed - (ts as f64 - ts0 as f64) * TICK_MS
    }

    /// The current delay of slot `ts` at `now`, in ms.
    fn delay_ms(&self, now: Instant, ts: u64) -> f64 {
        self.media_ms(now, ts) - self.min_transit
    }

    fn update_target(&mut self) {
        if self.transits.is_empty() {
            return;
        }
        self.min_transit = self.transits.iter().copied().fold(f64::INFINITY, f64::min);
        let mut rel: Vec<f64> = self.transits.iter().map(|t| t - self.min_transit).collect();
        rel.sort_by(f64::total_cmp);
        let idx = ((rel.len() as f64 - 1.0) * self.config.quantile.clamp(0.0, 1.0)).ceil() as usize;
        let jitter = rel[idx.min(rel.len() - 1)];
        // Recovery margin: the redundancy (or FEC) the sender used in the window, when frames
        // are being lost.
        let n = self.stats.unique_received;
        let depth = if self.loss_ewma > 0.002 {
            (1..=MAX_REACH as u32)
                .rev()
                .find(|&d| {
                    self.protection_seen[d as usize]
                        .is_some_and(|at| n.saturating_sub(at) < MARGIN_MEMORY)
                })
                .unwrap_or(0)
        } else {
            0
        };
        let margin = f64::from(depth * self.last_ticks) * TICK_MS;
        let (lo, hi) = (
            self.config.min_delay.as_secs_f64() * 1000.0,
            self.config.max_delay.as_secs_f64() * 1000.0,
        );
        self.jitter_ms = jitter.clamp(lo, hi);
        self.target_ms = (jitter + margin).clamp(lo, hi);
        self.stats.target_delay_ms = self.target_ms;
    }

    fn reanchor(&mut self, ts: u64) {
        self.frames.retain(|&t, _| t >= ts);
        self.red.retain(|&t, _| t >= ts);
        self.playout_ts = ts;
        self.idle = false;
        self.concealing_ms = 0.0;
        self.consecutive_late = 0;
        self.last_played_seq = None;
        self.last_played_dtx = false;
        self.stats.resyncs += 1;
    }

    /// Take a frame that arrived at `now`.
    pub fn insert(&mut self, now: Instant, frame: &MediaFrame<'_>) -> InsertOutcome {
        self.stats.received += 1;
        let seq = extend(self.last_seq, frame.seq);
        let ts = extend(self.last_ts, frame.timestamp);
        if !self.seqs.record(seq) {
            self.stats.duplicates += 1;
            return InsertOutcome::Duplicate;
        }
        self.stats.unique_received += 1;
        if let Some(l) = self.last_seq.filter(|&l| seq > l + 1) {
            self.stats.gap_runs += 1;
            self.stats.gap_frames += seq - l - 1;
        }
        if self.last_seq.is_none_or(|l| seq > l) {
            self.last_seq = Some(seq);
            self.last_ts = Some(ts);
        }
        let first = *self.first_seq.get_or_insert(seq);
        self.first_seq = Some(first.min(seq));
        self.stats.expected = self.last_seq.unwrap_or(seq) - self.first_seq.unwrap_or(seq) + 1;
        let ticks = opus_packet::packet_ticks(frame.payload).unwrap_or(8).max(1);

        if self.held {
            self.stats.held_received += 1;
            return InsertOutcome::Held;
        }
        if self.resume_pending {
            self.resume(now, ts);
        }
        // Delay estimation takes every frame, late ones included.
        if self.anchor.is_none() {
            self.anchor = Some((now, ts));
            self.playout_ts = ts;
        }
        let transit = self.media_ms(now, ts);
        self.transits.push_back(transit);
        let reach = frame
            .red()
            .iter()
            .map(|b| u32::from(b.offset_ticks).div_ceil(ticks) as usize)
            .max()
            .unwrap_or(0);
        let depth = reach.max(usize::from(frame.fec)).min(MAX_REACH);
        self.protection_seen[depth] = Some(self.stats.unique_received);
        while self.transits.len() > self.config.window.max(1) {
            self.transits.pop_front();
        }
        self.update_target();

        let mut outcome = InsertOutcome::Buffered;
        let ahead_limit = 2_000_000 / TICK_US;
        if self.idle || (self.started && ts > self.playout_ts + ahead_limit) {
            // After a long gap or a sender restart: start over at this frame.
            self.reanchor(ts);
            self.started = false;
            outcome = InsertOutcome::Resync;
        } else if self.started && ts < self.playout_ts {
            self.consecutive_late += 1;
            // Never rewind over audio already played from a real frame.
            if self.consecutive_late < 3 || ts < self.played_until {
                self.stats.late += 1;
                return InsertOutcome::Late;
            }
            // The delay jumped: play from this frame on rather than conceal until the
            // estimate catches up.
            self.stats.late += 1;
            self.reanchor(ts);
            outcome = InsertOutcome::Resync;
        } else if !self.started && ts < self.playout_ts {
            // Before playout starts, an earlier frame moves the start back.
            self.playout_ts = ts;
        }
        if outcome != InsertOutcome::Resync {
            self.consecutive_late = 0;
        }
        if self.frames.len() >= self.config.capacity {
            self.stats.overflow += 1;
            return InsertOutcome::Overflow;
        }
        // Redundant copies of frames not yet played (and not already here).
        for b in frame.red() {
            let Some(t) = ts.checked_sub(u64::from(b.offset_ticks)) else {
                continue;
            };
            if t >= self.playout_ts && !self.frames.contains_key(&t) && !self.red.contains_key(&t) {
                let ticks = opus_packet::packet_ticks(b.payload).unwrap_or(8).max(1);
                self.red.insert(t, (ticks, b.payload.to_vec()));
            }
        }
        self.red.remove(&ts);
        self.frames.insert(
            ts,
            Entry {
                seq,
                ticks,
                payload: frame.payload.to_vec(),
                fec: frame.fec,
                dtx: frame.dtx,
            },
        );
        outcome
    }

    /// Whether the buffer wants to drop a frame to reduce its delay (check before
    /// [`pop`](Self::pop); after dropping one, call [`note_shrunk`](Self::note_shrunk)).
    pub fn shrink_wanted(&self) -> Shrink {
        if self.excess_slots >= 250 {
            Shrink::Now
        } else if self.excess_slots >= 50 {
            Shrink::IfQuiet
        } else {
            Shrink::No
        }
    }

    /// Whether the buffer would like one more frame of delay (for its loss-recovery margin)
    /// at `now`: the receiver then plays [`stretch`](Self::stretch) instead of
    /// [`pop`](Self::pop) at a quiet moment. Growth needed to absorb jitter is not optional:
    /// `pop` does it by itself.
    pub fn grow_wanted(&self, now: Instant) -> bool {
        !self.held
            && self.started
            && !self.idle
            && self.delay_ms(now, self.playout_ts) + 1e-6 < self.target_ms
    }

    /// Play one frame of concealment without advancing: the delay grows by a frame.
    pub fn stretch(&mut self) -> Playout {
        self.stats.stretched_ms += f64::from(self.last_ticks) * TICK_MS;
        self.excess_slots = 0;
        Playout::Stretch {
            ticks: self.last_ticks,
        }
    }

    /// The receiver dropped a frame (popped and discarded it) to shrink the delay.
    pub fn note_shrunk(&mut self) {
        self.stats.shrunk += 1;
        self.excess_slots = 0;
    }

    fn record_slot(&mut self, lost: bool) {
        self.loss_ewma = 0.99 * self.loss_ewma + if lost { 0.01 } else { 0.0 };
        if lost && !self.last_slot_lost {
            self.stats.loss_runs += 1;
        }
        self.last_slot_lost = lost;
    }

    /// What to play for the next slot, at `now`.
    pub fn pop(&mut self, now: Instant) -> Playout {
        // Drop what can no longer be played.
        if self.held {
            return Playout::Idle {
                ticks: self.last_ticks,
            };
        }
        let p = self.playout_ts;
        self.red.retain(|&t, _| t >= p);

        if !self.started {
            let Some((&ts, _)) = self.frames.first_key_value() else {
                return Playout::Idle {
                    ticks: self.last_ticks,
                };
            };
            if self.idle || self.delay_ms(now, ts) + 1e-6 < self.target_ms {
                return Playout::Idle {
                    ticks: self.last_ticks,
                };
            }
            self.started = true;
            self.playout_ts = ts;
        }
        if self.idle {
            return Playout::Idle {
                ticks: self.last_ticks,
            };
        }

        let delay = self.delay_ms(now, self.playout_ts);
        self.stats.current_delay_ms = delay.max(0.0);
        let frame_ms = f64::from(self.last_ticks) * TICK_MS;
        if delay - frame_ms >= self.target_ms {
            self.excess_slots += 1;
        } else {
            self.excess_slots = 0;
        }
        // Frames before the slot (a partial overlap after a frame-size change, or a
        // rewound playout point) can no longer be played: late.
        while let Some((&t, _)) = self.frames.first_key_value() {
            if t >= self.playout_ts {
                break;
            }
            self.frames.pop_first();
            self.stats.late += 1;
        }

        // Grow toward the jitter target before anything is late (the loss margin is grown in
        // quiet moments, see grow_wanted).
        if delay + 1e-6 < self.jitter_ms {
            return self.stretch();
        }

        let slot = self.playout_ts;
        if let Some(e) = self.frames.remove(&slot) {
            self.playout_ts = slot + u64::from(e.ticks);
            self.last_ticks = e.ticks;
            self.last_played_seq = Some(e.seq);
            self.last_played_dtx = e.dtx;
            self.concealing_ms = 0.0;
            self.stats.played += 1;
            self.played_until = self.playout_ts;
            self.record_slot(false);
            return Playout::Frame {
                payload: e.payload,
                ts: slot,
                ticks: e.ticks,
            };
        }

        // A gap. Silence the sender chose not to send?
        let next = self
            .frames
            .first_key_value()
            .map(|(&t, e)| (t, e.seq, e.ticks, e.fec));
        let contiguous = matches!(
            (next, self.last_played_seq),
            (Some((_, s, _, _)), Some(l)) if s == l + 1
        );
        let gap_ticks = next
            .map(|(t, ..)| (t - slot).min(u64::from(u32::MAX)) as u32)
            .unwrap_or(self.last_ticks);
        if contiguous || (self.last_played_dtx && next.is_none()) {
            let ticks = gap_ticks.min(self.last_ticks).max(1);
            self.playout_ts = slot + u64::from(ticks);
            self.stats.dtx_ms += f64::from(ticks) * TICK_MS;
            return Playout::Dtx { ticks };
        }

        self.stats.lost_before_recovery += 1;
        self.record_slot(true);
        if let Some((ticks, payload)) = self.red.remove(&slot) {
            self.playout_ts = slot + u64::from(ticks);
            self.last_ticks = ticks;
            self.concealing_ms = 0.0;
            self.stats.red_recovered += 1;
            self.played_until = self.playout_ts;
            return Playout::Red {
                payload,
                ts: slot,
                ticks,
            };
        }
        if let Some((t, _, ticks, true)) = next {
            if t - slot == u64::from(ticks) {
                let next_payload = self.frames.get(&t).map(|e| e.payload.clone());
                if let Some(next_payload) = next_payload {
                    self.playout_ts = t;
                    self.concealing_ms = 0.0;
                    self.stats.fec_recovered += 1;
                    self.played_until = t;
                    return Playout::Fec {
                        next_payload,
                        ts: slot,
                        ticks,
                    };
                }
            }
        }
        let ticks = gap_ticks.min(self.last_ticks).max(1);
        self.playout_ts = slot + u64::from(ticks);
        self.stats.lost_after_recovery += 1;
        let ms = f64::from(ticks) * TICK_MS;
        self.stats.concealed_ms += ms;
        self.concealing_ms += ms;
        if self.frames.is_empty()
            && self.concealing_ms >= self.config.idle_after.as_secs_f64() * 1000.0
        {
            self.idle = true;
            self.started = false;
        }
        Playout::Conceal { ticks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u16 = 8; // 20 ms in ticks
    const OPUS: [u8; 2] = [9 << 3, 0x40]; // 20 ms SILK WB with LBRR

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn frame(seq: u16) -> MediaFrame<'static> {
        MediaFrame::new(seq, seq.wrapping_mul(F), &OPUS)
    }

    /// Drive a stream: frame i arrives at `arrive(i)` ms; slots are pulled every 20 ms from
    /// `pull_start` ms, by a receiver that treats every frame as quiet (so it sheds delay
    /// whenever asked). Returns the playout decisions and the target delay at each pull.
    fn run_with_targets(
        jb: &mut JitterBuffer,
        n: u16,
        arrive: impl Fn(u16) -> Option<u64>,
        pull_start: u64,
        pulls: usize,
    ) -> (Vec<Playout>, Vec<f64>) {
        let t0 = Instant::now();
        let mut arrivals: Vec<(u64, u16)> =
            (0..n).filter_map(|i| arrive(i).map(|t| (t, i))).collect();
        arrivals.sort();
        let (mut out, mut targets) = (Vec::new(), Vec::new());
        let mut k = 0;
        for p in 0..pulls {
            let now = pull_start + 20 * p as u64;
            while k < arrivals.len() && arrivals[k].0 <= now {
                jb.insert(at(t0, arrivals[k].0), &frame(arrivals[k].1));
                k += 1;
            }
            let now = at(t0, now);
            if jb.shrink_wanted() != Shrink::No && !jb.is_empty() {
                let dropped = jb.pop(now);
                assert!(!matches!(dropped, Playout::Stretch { .. }));
                jb.note_shrunk();
            }
            out.push(jb.pop(now));
            targets.push(jb.stats().target_delay_ms);
        }
        (out, targets)
    }

    fn run(
        jb: &mut JitterBuffer,
        n: u16,
        arrive: impl Fn(u16) -> Option<u64>,
        pull_start: u64,
        pulls: usize,
    ) -> Vec<Playout> {
        run_with_targets(jb, n, arrive, pull_start, pulls).0
    }

    fn played_ts(out: &[Playout]) -> Vec<u64> {
        out.iter()
            .filter_map(|p| match p {
                Playout::Frame { ts, .. } => Some((ts - EXT_BASE) / u64::from(F)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn smooth_network_plays_everything_with_no_delay() {
        let mut jb = JitterBuffer::default();
        let out = run(&mut jb, 100, |i| Some(20 * u64::from(i)), 5, 100);
        assert_eq!(played_ts(&out), (0..100).collect::<Vec<_>>());
        let s = jb.stats();
        assert!(s.target_delay_ms < 1e-6, "{}", s.target_delay_ms);
        assert!(s.current_delay_ms < 6.0, "{}", s.current_delay_ms);
        assert_eq!((s.late, s.lost_before_recovery, s.duplicates), (0, 0, 0));
    }

    #[test]
    fn reordering_is_undone() {
        let mut jb = JitterBuffer::default();
        // Swap every pair: frame 2k arrives after 2k+1, 25 ms late.
        let out = run(
            &mut jb,
            200,
            |i| Some(20 * u64::from(i) + if i % 2 == 0 { 25 } else { 0 }),
            0,
            230,
        );
        let ts = played_ts(&out);
        // Once the target has grown, everything plays in order.
        assert!(ts.windows(2).all(|w| w[1] > w[0]), "out of order: {ts:?}");
        assert!(jb.stats().target_delay_ms >= 25.0 - 1e-9);
        assert!(ts.len() >= 190, "{} played", ts.len());
        assert!(ts.ends_with(&[199]));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        assert_eq!(jb.insert(t0, &frame(0)), InsertOutcome::Buffered);
        assert_eq!(jb.insert(t0, &frame(0)), InsertOutcome::Duplicate);
        assert!(matches!(jb.pop(t0), Playout::Frame { .. }));
        // Still a duplicate after playout.
        assert_eq!(jb.insert(at(t0, 5), &frame(0)), InsertOutcome::Duplicate);
        assert_eq!(jb.stats().duplicates, 2);
        assert_eq!(jb.stats().unique_received, 1);
    }

    #[test]
    fn late_packets_are_discarded_and_counted() {
        let mut jb = JitterBuffer::default();
        // Frames 10 and 20 arrive 100 ms late, after their slots: concealed, then discarded.
        let late = |i: u16| i == 10 || i == 20;
        let out = run(
            &mut jb,
            30,
            |i| Some(20 * u64::from(i) + if late(i) { 100 } else { 0 }),
            1,
            30,
        );
        assert!(out.iter().any(|p| matches!(p, Playout::Conceal { .. })));
        let s = jb.stats();
        assert_eq!(s.late, 1);
        assert_eq!(s.lost_before_recovery, 1);
        assert_eq!(s.lost_after_recovery, 1);
        let ts = played_ts(&out);
        assert!(!ts.contains(&10));
        // The late frame taught the estimator (in a short window the 95th percentile is the
        // maximum): the delay grew to cover it, and frame 20, as late, was played.
        assert!(s.target_delay_ms >= 100.0 - 1e-6, "{}", s.target_delay_ms);
        assert!(ts.contains(&20));
        assert!(s.stretched_ms >= 100.0);
    }

    #[test]
    fn target_grows_with_jitter_and_shrinks_again() {
        let mut jb = JitterBuffer::default();
        // Smooth for 2 s, 60 ms of pseudo-random jitter for 8 s, then smooth for 10 s.
        let jitter = |i: u16| -> u64 {
            if (100..500).contains(&i) {
                u64::from(i) * 7919 % 61
            } else {
                0
            }
        };
        let (out, targets) = run_with_targets(
            &mut jb,
            1000,
            |i| Some(20 * u64::from(i) + jitter(i)),
            0,
            1020,
        );
        // A smooth start: no delay.
        assert!(targets[90] < 1e-6, "{}", targets[90]);
        // Jitter raises the target to cover about 95 % of it.
        assert!((50.0..=61.0).contains(&targets[400]), "{}", targets[400]);
        // Calm brings it (and the delay) back down.
        let s = jb.stats();
        assert!(
            s.target_delay_ms < 1e-6,
            "target {} after calm",
            s.target_delay_ms
        );
        assert!(
            s.current_delay_ms < 21.0,
            "delay {} after calm",
            s.current_delay_ms
        );
        assert!(s.late < 40, "{} late", s.late);
        assert!(played_ts(&out).len() > 900);
    }

    #[test]
    fn long_gap_goes_idle_and_resyncs() {
        let mut jb = JitterBuffer::default();
        // 50 frames, a 3 s outage (150 frames never arrive), then 50 more.
        let out = run(
            &mut jb,
            250,
            |i| (!(50..200).contains(&i)).then_some(20 * u64::from(i)),
            1,
            250,
        );
        let idle = out
            .iter()
            .filter(|p| matches!(p, Playout::Idle { .. }))
            .count();
        assert!(idle > 50, "{idle} idle slots");
        let s = jb.stats();
        // About a second of concealment, not three.
        assert!(
            (900.0..=1100.0).contains(&s.concealed_ms),
            "{}",
            s.concealed_ms
        );
        assert_eq!(s.late, 0);
        assert!(s.resyncs >= 1);
        let ts = played_ts(&out);
        assert_eq!(ts.len(), 100);
        assert_eq!(ts[50], 200);
    }

    #[test]
    fn hold_is_neither_loss_nor_delay() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        // 100 frames, then 2 s on hold (the sender's clock stands still: frame 100 follows
        // frame 99 in sequence and timestamp, 2 s later), then 100 more.
        let arrival = |i: u16| 20 * u64::from(i) + if i >= 100 { 2000 } else { 0 };
        let mut k = 0u16;
        let (mut idle_on_hold, mut delays_after) = (0, Vec::new());
        for p in 0..300u64 {
            let now_ms = 5 + 20 * p;
            if now_ms == 5 + 20 * 100 {
                jb.set_held(true);
            }
            if now_ms == 5 + 20 * 200 {
                jb.set_held(false);
            }
            while k < 200 && arrival(k) <= now_ms {
                jb.insert(at(t0, arrival(k)), &frame(k));
                k += 1;
            }
            let out = jb.pop(at(t0, now_ms));
            if (100..200).contains(&p) {
                assert!(matches!(out, Playout::Idle { .. }), "{out:?} on hold");
                idle_on_hold += 1;
            }
            if p >= 200 {
                delays_after.push(jb.stats().current_delay_ms);
            }
        }
        assert_eq!(idle_on_hold, 100);
        let s = jb.stats();
        assert_eq!(
            (s.lost_before_recovery, s.late, s.resyncs),
            (0, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.concealed_ms + s.stretched_ms, 0.0, "{s:?}");
        assert_eq!(s.played, 200);
        assert!(s.target_delay_ms < 1e-6, "{}", s.target_delay_ms);
        // Every delay read after the resume is the real one (a few ms), not the 2 s held.
        assert!(delays_after.iter().all(|&d| d < 10.0), "{delays_after:?}");
    }

    #[test]
    fn delay_jump_reanchors_quickly() {
        let mut jb = JitterBuffer::default();
        // The path delay jumps by 300 ms at frame 100.
        let out = run(
            &mut jb,
            300,
            |i| Some(20 * u64::from(i) + if i >= 100 { 300 } else { 0 }),
            1,
            330,
        );
        let s = jb.stats();
        assert!(s.resyncs >= 1);
        assert!(s.late <= 3, "{} late", s.late);
        // Everything after the jump except the first few is played.
        let ts = played_ts(&out);
        assert!(ts.iter().filter(|&&t| t >= 100).count() >= 195);
    }

    #[test]
    fn overlapping_timestamps_do_not_panic() {
        // Found by the fuzzer: a frame starting inside the previous one.
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.insert(t0, &MediaFrame::new(0, 0, &OPUS));
        jb.insert(t0, &MediaFrame::new(1, 4, &OPUS));
        assert!(matches!(jb.pop(t0), Playout::Frame { .. }));
        let p = jb.pop(at(t0, 20));
        assert!(matches!(p, Playout::Conceal { .. }), "{p:?}");
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn never_rewinds_over_played_audio() {
        // Found by the proptest: frame 3 arrives first and is played; frames 0 to 2 follow,
        // all late, which looks like a delay jump, but rewinding would replay audio.
        let mut jb = JitterBuffer::default();
        let delays = [84, 64, 44, 0];
        let out = run(
            &mut jb,
            4,
            |i| Some(20 * u64::from(i) + delays[usize::from(i)]),
            63,
            8,
        );
        let ts = played_ts(&out);
        assert!(ts.windows(2).all(|w| w[1] > w[0]), "{ts:?}");
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        for k in 0..20u16 {
            let seq = 65_530u16.wrapping_add(k);
            let f = MediaFrame::new(seq, 65_500u16.wrapping_add(k * F), &OPUS);
            jb.insert(at(t0, 20 * u64::from(k)), &f);
        }
        let mut played = 0;
        for k in 0..20 {
            if let Playout::Frame { .. } = jb.pop(at(t0, 20 * k + 1)) {
                played += 1;
            }
        }
        assert_eq!(played, 20);
        assert_eq!(jb.stats().expected, 20);
    }

    fn drift(pull_period_us: u64) -> (JitterStats, usize) {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        let n = 3000u16; // 60 s
        let mut k = 0u16;
        let mut played = 0;
        let mut p = 0u64;
        loop {
            let now_us = 3_000 + p * pull_period_us;
            if now_us > 20_000 * u64::from(n) {
                break;
            }
            while k < n && 20_000 * u64::from(k) <= now_us {
                jb.insert(t0 + Duration::from_micros(20_000 * u64::from(k)), &frame(k));
                k += 1;
            }
            let now = t0 + Duration::from_micros(now_us);
            // A receiver that treats every frame as quiet.
            if jb.shrink_wanted() != Shrink::No && matches!(jb.pop(now), Playout::Frame { .. }) {
                jb.note_shrunk();
            }
            if let Playout::Frame { .. } = jb.pop(now) {
                played += 1;
            }
            p += 1;
        }
        (jb.stats(), played)
    }

    #[test]
    fn clock_drift_is_absorbed_both_ways() {
        // Receiver clock 0.5 % slow: pulls every 20.1 ms; frames pile up and get shed.
        let (s, _) = drift(20_100);
        assert!((10..=20).contains(&s.shrunk), "shrunk {}", s.shrunk);
        assert!(s.current_delay_ms < 45.0, "delay {}", s.current_delay_ms);
        assert_eq!(s.late, 0);
        // 0.5 % fast: pulls every 19.9 ms; the buffer runs dry and stretches.
        let (s, _) = drift(19_900);
        assert!(s.stretched_ms >= 200.0, "stretched {}", s.stretched_ms);
        assert!(
            s.lost_after_recovery < 20,
            "concealed {}",
            s.lost_after_recovery
        );
        assert_eq!(s.late, 0);
    }

    proptest::proptest! {
        /// Any schedule of losses, duplicates and delays: playout never goes back in media
        /// time, never plays a frame twice, and the counters add up.
        #[test]
        fn playout_is_monotonic_and_counts_add_up(
            fates in proptest::collection::vec((0u8..10, 0u64..120), 1..400),
        ) {
            let t0 = Instant::now();
            let mut jb = JitterBuffer::default();
            // (arrival ms, seq): fate 0 = lost, 1 = duplicated, else delivered once.
            let mut arrivals = Vec::new();
            for (i, &(fate, delay)) in fates.iter().enumerate() {
                let sent = 20 * i as u64;
                if fate != 0 {
                    arrivals.push((sent + delay, i as u16));
                }
                if fate == 1 {
                    arrivals.push((sent + delay + 7, i as u16));
                }
            }
            arrivals.sort();
            let mut k = 0;
            let mut last_ts = None;
            let mut played = std::collections::HashSet::new();
            let mut slots = 0u64;
            for p in 0..fates.len() + 20 {
                let now = 3 + 20 * p as u64;
                while k < arrivals.len() && arrivals[k].0 <= now {
                    jb.insert(at(t0, arrivals[k].0), &frame(arrivals[k].1));
                    k += 1;
                }
                match jb.pop(at(t0, now)) {
                    Playout::Frame { ts, .. } => {
                        proptest::prop_assert!(last_ts.is_none_or(|l| ts > l));
                        proptest::prop_assert!(played.insert(ts));
                        last_ts = Some(ts);
                        slots += 1;
                    }
                    Playout::Red { .. } | Playout::Fec { .. } | Playout::Conceal { .. } => {
                        slots += 1;
                    }
                    _ => {}
                }
            }
            let s = jb.stats();
            proptest::prop_assert_eq!(s.played + s.lost_before_recovery, slots);
            proptest::prop_assert_eq!(
                s.lost_before_recovery,
                s.lost_after_recovery + s.fec_recovered + s.red_recovered
            );
            proptest::prop_assert!(s.unique_received <= fates.len() as u64);
            proptest::prop_assert_eq!(s.received, arrivals.len() as u64);
        }
    }
}
