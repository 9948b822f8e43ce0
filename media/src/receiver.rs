//! The receiving half of a stream: media frames in, PCM out.
//!
//! [`MediaReceiver::receive`] takes the plaintext of each media envelope (the frame) with its
//! arrival time; [`MediaReceiver::pull`] is called by the playout side (the device callback
//! via the playback queue, or a loop) for a block of samples at a time, and decodes whatever
//! the [`JitterBuffer`] decides: a frame, a redundant copy, an FEC rebuild, or concealment.
//! Decoding errors are concealed and counted, never propagated to the playout.
//!
//! **Hold.** [`MediaReceiver::set_held`] tells the receiver that the call is on hold (the
//! peer sends nothing on purpose): pulls give silence, and neither the loss counters, the MOS
//! window, the jitter-buffer delay, the interarrival jitter nor the bitrate take the held
//! time. [`CallAudio`](crate::call::CallAudio) calls it from its `set_paused`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::{CodecError, OpusDecoder, SampleRate};
use crate::congestion::QueueMeter;
use crate::frame::{FrameError, MediaFrame};
use crate::jitter::{InsertOutcome, JitterBuffer, JitterConfig, JitterStats, Playout, Shrink};
use crate::opus_packet::TICK_US;
use crate::quality::{
    self, InterarrivalJitter, LossSummary, LossWindow, QualityReport, RateMeter, SlotFate,
};

/// Frames quieter than this RMS may be dropped to shrink the delay (about -46 dBFS).
const QUIET_RMS: f64 = 160.0;
/// Device buffering assumed in the mouth-to-ear estimate, ms.
const DEVICE_MS: f64 = 10.0;

/// Receiver settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverConfig {
    /// The decoder's output rate.
    pub rate: SampleRate,
    /// Jitter buffer settings. The default keeps at least one frame (20 ms) of delay, so the
    /// redundant copy or FEC data of a lost frame (carried by the next frame) arrives in time
    /// from the very first loss of a call, before the buffer's loss margin has grown. It
    /// costs 20 ms: a p95 added latency of about 50 ms instead of 30 on a clean path; it
    /// raised PESQ-WB at 5 % loss by about 0.1 on `media/testdata/speech.wav`.
    pub jitter: JitterConfig,
    /// Regular interval of receiver reports ([`MediaReceiver::poll_report`]).
    pub report_interval: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            rate: SampleRate::default(),
            jitter: JitterConfig {
                min_delay: Duration::from_millis(20),
                ..JitterConfig::default()
            },
            report_interval: Duration::from_millis(500),
        }
    }
}

/// The least interval between receiver reports, even when loss calls for an early one.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// What the receiver tells the sender, regularly (carried by the call layer's media control
/// messages): the basis of FEC, redundancy and bitrate adaptation.
///
/// Loss is counted *at playout*: frames missing when their turn came, less those that turned
/// up late, so neither reordering the jitter buffer absorbs nor lateness (which the jitter
/// buffer answers by growing its delay) is taken for network loss.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiverReport {
    /// Frames due at playout since the last report.
    pub frames: u16,
    /// Of those, frames missing (before FEC and redundancy).
    pub lost: u16,
    /// Mean length of runs of missing frames since the last report (0 without loss).
    pub mean_burst: f64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Mean queuing delay of the frames received since the last report, ms
    /// ([`QueueMeter`]).
    pub queue_ms: f64,
    /// Rate received on the wire since the last report, bit/s.
    pub recv_bps: f64,
}

impl ReceiverReport {
    /// Encoded length.
    pub const LEN: usize = 11;

    /// The fraction of frames lost (0 to 1).
    pub fn fraction_lost(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            f64::from(self.lost.min(self.frames)) / f64::from(self.frames)
        }
    }

    /// `[frames u16][lost u16][mean burst × 16, u8][jitter ms, u16][queue ms, u16]`
    /// `[received rate in 100 bit/s, u16]`, big-endian (values beyond a field saturate).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let u16_of = |v: f64| v.clamp(0.0, 65_535.0) as u16;
        let [f0, f1] = self.frames.to_be_bytes();
        let [l0, l1] = self.lost.to_be_bytes();
        let b = (self.mean_burst.clamp(0.0, 15.9) * 16.0) as u8;
        let [j0, j1] = u16_of(self.jitter_ms).to_be_bytes();
        let [q0, q1] = u16_of(self.queue_ms).to_be_bytes();
        let [r0, r1] = u16_of(self.recv_bps / 100.0).to_be_bytes();
        [f0, f1, l0, l1, b, j0, j1, q0, q1, r0, r1]
    }

    /// Decode; `None` when the length is wrong.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let &[f0, f1, l0, l1, b, j0, j1, q0, q1, r0, r1] = buf else {
            return None;
        };
        Some(Self {
            frames: u16::from_be_bytes([f0, f1]),
            lost: u16::from_be_bytes([l0, l1]),
            mean_burst: f64::from(b) / 16.0,
            jitter_ms: f64::from(u16::from_be_bytes([j0, j1])),
            queue_ms: f64::from(u16::from_be_bytes([q0, q1])),
            recv_bps: f64::from(u16::from_be_bytes([r0, r1])) * 100.0,
        })
    }
}

/// Everything the receiver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiverStats {
    /// The jitter buffer's counters.
    pub jitter: JitterStats,
    /// Frames that failed to parse.
    pub bad_frames: u64,
    /// Payloads libopus refused (concealed instead).
    pub decode_errors: u64,
    /// Runs of consecutive concealed slots (for the burst ratio of the concealed loss).
    pub conceal_runs: u64,
    /// The call is on hold now ([`MediaReceiver::set_held`]).
    pub held: bool,
    /// Time spent on hold, ms (up to the last [`MediaReceiver::set_held`]).
    pub held_ms: f64,
    /// Quality summary.
    pub quality: QualityReport,
}

/// Receives one stream. See the [module documentation](self).
#[derive(Debug)]
pub struct MediaReceiver {
    jb: JitterBuffer,
    decoder: OpusDecoder,
    rate: SampleRate,
    fifo: VecDeque<i16>,
    origins: VecDeque<Option<u64>>,
    scratch: Vec<i16>,
    scratch2: Vec<i16>,
    ia_jitter: InterarrivalJitter,
    rate_meter: RateMeter,
    queue: QueueMeter,
    /// Frames received that carried two redundant copies or more (the sender then lowered
    /// its bitrate: the codec's impairment), and all frames received, over the call...
    red_frames: (u64, u64),
    /// ...and recently (as recent as the MOS window's loss: a mean age of 8/3 s).
    red_recent: f64,
    rtt: Option<Duration>,
    bad_frames: u64,
    decode_errors: u64,
    /// (slots, lost before recovery, loss runs, late) at the last report.
    last_report: (u64, u64, u64, u64),
    codec_delay_ms: f64,
    frame_ms: f64,
    last_quiet: bool,
    last_concealed: bool,
    last_report_at: Option<Instant>,
    report_interval: Duration,
    /// Loss of the recent slots, for the running MOS.
    window: LossWindow,
    /// Runs of concealed slots over the call.
    conceal_runs: u64,
    last_slot_concealed: bool,
    /// Since when the call is on hold.
    held_since: Option<Instant>,
    held_ms: f64,
}

impl MediaReceiver {
    /// A receiver decoding at `config.rate`.
    pub fn new(config: ReceiverConfig) -> Result<Self, CodecError> {
        Ok(Self {
            jb: JitterBuffer::new(config.jitter.clone()),
            decoder: OpusDecoder::new(config.rate)?,
            rate: config.rate,
            fifo: VecDeque::new(),
            origins: VecDeque::new(),
            scratch: vec![0; 120 * config.rate.hz() as usize / 1000],
            scratch2: vec![0; 120 * config.rate.hz() as usize / 1000],
            ia_jitter: InterarrivalJitter::default(),
            rate_meter: RateMeter::default(),
            queue: QueueMeter::default(),
            red_frames: (0, 0),
            red_recent: 0.0,
            rtt: None,
            bad_frames: 0,
            decode_errors: 0,
            last_report: (0, 0, 0, 0),
            codec_delay_ms: 6.5,
            frame_ms: 20.0,
            last_quiet: true,
            last_concealed: false,
            last_report_at: None,
            report_interval: config.report_interval,
            window: LossWindow::default(),
            conceal_runs: 0,
            last_slot_concealed: false,
            held_since: None,
            held_ms: 0.0,
        })
    }

    /// The call went on hold at `now` (`true`: the peer sends nothing on purpose, nothing is
    /// played) or resumed (`false`). Held time is not loss, delay, jitter or bitrate: see the
    /// [module documentation](self). Calling it again with the same state does nothing.
    pub fn set_held(&mut self, held: bool, now: Instant) {
        if held == self.held_since.is_some() {
            return;
        }
        self.jb.set_held(held);
        self.ia_jitter.restart();
        self.rate_meter.pause();
        // The media clock stood still on hold: transits after it are not a queue.
        self.queue.reset();
        self.last_slot_concealed = false;
        if held {
            self.held_since = Some(now);
            self.last_concealed = false;
        } else if let Some(since) = self.held_since.take() {
            self.held_ms += now.saturating_duration_since(since).as_secs_f64() * 1000.0;
        }
    }

    /// Whether the call is on hold.
    pub fn is_held(&self) -> bool {
        self.held_since.is_some()
    }

    /// The output sample rate.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// The round-trip time measured by the call layer (for the E-model).
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
    }

    /// The sender's algorithmic delay (its encoder look-ahead), for the mouth-to-ear estimate.
    pub fn set_codec_delay(&mut self, delay: Duration) {
        self.codec_delay_ms = delay.as_secs_f64() * 1000.0;
    }

    /// A media frame (the plaintext of a media envelope) arrived at `now`.
    pub fn receive(&mut self, now: Instant, frame: &[u8]) -> Result<InsertOutcome, FrameError> {
        let f = match MediaFrame::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                self.bad_frames += 1;
                return Err(e);
            }
        };
        let outcome = self.jb.insert(now, &f);
        if outcome == InsertOutcome::Held {
            return Ok(outcome);
        }
        self.rate_meter.on_bytes(now, frame.len());
        if !matches!(outcome, InsertOutcome::Duplicate) {
            // Whether the sender lowered its bitrate for redundancy (the codec's impairment):
            // one copy goes at the full bitrate, two or more at what the loss budget leaves.
            let red = f.red().len() >= 2;
            self.red_frames.0 += u64::from(red);
            self.red_frames.1 += 1;
            // Averaged over a third of the MOS window: the loss window weighs its slots
            // linearly down to 0 at 8 s, a mean age of 8/3 s, and so does this.
            let weight = (3.0 * self.frame_ms / quality::MOS_WINDOW_MS).clamp(0.0, 1.0);
            self.red_recent += (f64::from(u8::from(red)) - self.red_recent) * weight;
            // RFC 3550 uses the unwrapped timestamp; 16-bit ticks are unwrapped against the
            // jitter buffer's playout point.
            let base = self.jb.playout_ts();
            let diff = f.timestamp.wrapping_sub(base as u16) as i16;
            let ts = base.wrapping_add_signed(i64::from(diff));
            let media_ms = ts as f64 * TICK_US as f64 / 1000.0;
            self.ia_jitter.on_arrival(now, media_ms);
            self.queue
                .on_arrival(now, media_ms, frame.len() + crate::sender::WIRE_OVERHEAD);
        }
        Ok(outcome)
    }

    /// Fill `out` with the next samples to play at `now`.
    pub fn pull(&mut self, now: Instant, out: &mut [i16]) {
        self.fill(now, out.len());
        let n = out.len();
        for (d, s) in out.iter_mut().zip(self.fifo.drain(..n)) {
            *d = s;
        }
        self.origins.drain(..n);
    }

    /// Like [`pull`](Self::pull), also telling for each sample which media sample it plays
    /// (counted from the stream's first timestamp at the output rate), or `None` for
    /// concealment and silence. For latency measurement.
    pub fn pull_traced(&mut self, now: Instant, out: &mut [i16], origins: &mut Vec<Option<u64>>) {
        self.fill(now, out.len());
        let n = out.len();
        for (d, s) in out.iter_mut().zip(self.fifo.drain(..n)) {
            *d = s;
        }
        origins.extend(self.origins.drain(..n));
    }

    fn fill(&mut self, now: Instant, n: usize) {
        while self.fifo.len() < n {
            self.decode_next(now);
        }
    }

    fn origin(&self, ts: u64) -> Option<u64> {
        let spt = self.rate.samples_per_tick() as u64;
        self.jb
            .origin_ts()
            .and_then(|o| ts.checked_sub(o))
            .map(|t| t * spt)
    }

    /// Decode one playout decision into `buf`; returns (samples, origin of the first).
    fn decode_one(&mut self, p: &Playout, second: bool) -> (usize, Option<u64>) {
        let spt = self.rate.samples_per_tick();
        let ticks = (p.ticks() as usize).min(48);
        let want = ticks * spt;
        let mut buf = std::mem::take(if second {
            &mut self.scratch2
        } else {
            &mut self.scratch
        });
        let result: Result<usize, CodecError> = match p {
            Playout::Idle { .. } => {
                buf[..want].fill(0);
                Ok(want)
            }
            Playout::Frame { payload, .. } | Playout::Red { payload, .. } => {
                self.decoder.decode(payload, &mut buf)
            }
            Playout::Fec { next_payload, .. } => {
                self.decoder.decode_fec(next_payload, &mut buf[..want])
            }
            Playout::Conceal { .. } | Playout::Stretch { .. } | Playout::Dtx { .. } => {
                self.decoder.conceal(&mut buf[..want])
            }
        };
        let n = match result {
            Ok(n) => n.min(buf.len()),
            Err(_) => {
                self.decode_errors += 1;
                match self.decoder.conceal(&mut buf[..want]) {
                    Ok(n) => n,
                    Err(_) => {
                        buf[..want].fill(0);
                        want
                    }
                }
            }
        };
        let origin = match p {
            Playout::Frame { ts, .. } | Playout::Red { ts, .. } | Playout::Fec { ts, .. } => {
                self.origin(*ts)
            }
            _ => None,
        };
        if second {
            self.scratch2 = buf;
        } else {
            self.scratch = buf;
        }
        (n, origin)
    }

    fn push(&mut self, samples: usize, origin: Option<u64>, second: bool) {
        let buf = if second {
            &self.scratch2
        } else {
            &self.scratch
        };
        self.fifo.extend(&buf[..samples]);
        self.origins
            .extend((0..samples as u64).map(|k| origin.map(|o| o + k)));
    }

    fn decode_next(&mut self, now: Instant) {
        let shrink = self.jb.shrink_wanted();
        // Grow the loss margin in a quiet moment, or right after a concealment (the stretch
        // then only lengthens a glitch that is already there).
        let p = if (self.last_quiet || self.last_concealed) && self.jb.grow_wanted(now) {
            self.jb.stretch()
        } else {
            self.jb.pop(now)
        };
        if let Playout::Frame { ticks, .. } = p {
            self.frame_ms = f64::from(ticks) * TICK_US as f64 / 1000.0;
        }
        self.note_slot(&p);
        let (n, origin) = self.decode_one(&p, false);
        let droppable = matches!(
            p,
            Playout::Frame { .. } | Playout::Red { .. } | Playout::Dtx { .. }
        );
        let quiet = {
            let b = &self.scratch[..n];
            let energy: f64 = b.iter().map(|&s| f64::from(s).powi(2)).sum();
            (energy / n.max(1) as f64).sqrt() < QUIET_RMS
        };
        self.last_quiet = quiet;
        self.last_concealed = matches!(p, Playout::Conceal { .. } | Playout::Stretch { .. });
        let next_ready = !self.jb.is_empty();
        if droppable
            && next_ready
            && (shrink == Shrink::Now || (shrink == Shrink::IfQuiet && quiet))
        {
            // Drop this frame: cross-fade from it into the next one, in the next one's time.
            let q = self.jb.pop(now);
            self.note_slot(&q);
            let (m, origin2) = self.decode_one(&q, true);
            let fade = n.min(m);
            for i in 0..fade {
                let w = (i as f32 + 0.5) / fade as f32;
                let a = f32::from(self.scratch[i]);
                let b = f32::from(self.scratch2[i]);
                self.scratch2[i] = (a * (1.0 - w) + b * w).round() as i16;
            }
            self.jb.note_shrunk();
            self.push(m, origin2, true);
            return;
        }
        self.push(n, origin, false);
    }

    /// A slot the jitter buffer decided on, into the MOS window.
    fn note_slot(&mut self, p: &Playout) {
        let fate = match p {
            Playout::Frame { .. } => SlotFate::Played,
            Playout::Red { .. } | Playout::Fec { .. } => SlotFate::Recovered,
            Playout::Conceal { .. } => SlotFate::Concealed,
            Playout::Idle { .. } | Playout::Stretch { .. } | Playout::Dtx { .. } => return,
        };
        let concealed = fate == SlotFate::Concealed;
        if concealed && !self.last_slot_concealed {
            self.conceal_runs += 1;
        }
        self.last_slot_concealed = concealed;
        self.window
            .on_slot(f64::from(p.ticks()) * TICK_US as f64 / 1000.0, fate);
    }

    /// A report to send back to the sender, when one is due at `now`: every
    /// `report_interval`, or early (at most every 100 ms) when frames were lost since the last
    /// one, so protection starts one round trip after loss does.
    pub fn poll_report(&mut self, now: Instant) -> Option<ReceiverReport> {
        let since = self
            .last_report_at
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let lost_since = self.jb.stats().lost_before_recovery > self.last_report.1;
        let first_packet_seen = self.jb.stats().unique_received > 0;
        let due = since >= self.report_interval || (lost_since && since >= MIN_REPORT_INTERVAL);
        if !(due && first_packet_seen) {
            return None;
        }
        self.last_report_at = Some(now);
        Some(self.report(now))
    }

    /// The report to send back to the sender; counts since the previous call.
    pub fn report(&mut self, now: Instant) -> ReceiverReport {
        let s = self.jb.stats();
        let (slots0, lost0, runs0, late0) = self.last_report;
        let frames = s.slots_total().saturating_sub(slots0);
        // Frames that were missing at playout but did arrive (late) were not lost by the
        // network: the jitter buffer grows its delay for those, redundancy would not help.
        let late = s.late.saturating_sub(late0);
        let lost = s
            .lost_before_recovery
            .saturating_sub(lost0)
            .saturating_sub(late);
        let runs = s.loss_runs.saturating_sub(runs0);
        self.last_report = (s.slots_total(), s.lost_before_recovery, s.loss_runs, s.late);
        let clamp16 = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
        let q = self.queue.take(now);
        ReceiverReport {
            frames: clamp16(frames),
            lost: clamp16(lost.min(frames)),
            mean_burst: if runs == 0 || lost == 0 {
                0.0
            } else {
                (lost as f64 / runs as f64).max(1.0)
            },
            jitter_ms: self.ia_jitter.ms(),
            queue_ms: q.queue_ms,
            recv_bps: q.recv_bps,
        }
    }

    /// Everything counted so far, with the quality summary.
    pub fn stats(&self) -> ReceiverStats {
        let j = self.jb.stats();
        let rtt_ms = self.rtt.map(|r| r.as_secs_f64() * 1000.0);
        let mouth_to_ear = rtt_ms.unwrap_or(0.0) / 2.0
            + j.current_delay_ms
            + self.frame_ms
            + self.codec_delay_ms
            + DEVICE_MS;
        let recent = self.window.summary();
        let call = LossSummary::from_counts(
            j.slots_total(),
            j.lost_before_recovery,
            j.lost_after_recovery,
            self.conceal_runs,
        );
        // The codec's impairment depends on the sender's mode: with redundancy, each copy
        // has fewer bits.
        let call_red = self.red_frames.0 as f64 / self.red_frames.1.max(1) as f64;
        let now_input = quality::opus_wb_input(mouth_to_ear, &recent, self.red_recent);
        let call_input = quality::opus_wb_input(mouth_to_ear, &call, call_red);
        ReceiverStats {
            jitter: j,
            bad_frames: self.bad_frames,
            decode_errors: self.decode_errors,
            conceal_runs: self.conceal_runs,
            held: self.is_held(),
            held_ms: self.held_ms,
            quality: QualityReport {
                rtt_ms,
                network_loss: j.network_loss(),
                loss_before_recovery: j.loss_before_recovery(),
                loss_after_recovery: j.loss_after_recovery(),
                jitter_ms: self.ia_jitter.ms(),
                jitter_buffer_ms: j.current_delay_ms,
                jitter_target_ms: j.target_delay_ms,
                concealed_ms: j.concealed_ms,
                bitrate_bps: self
                    .rate_meter
                    .bps(Duration::from_secs_f64(self.frame_ms / 1000.0)),
                mouth_to_ear_ms: mouth_to_ear,
                r_wb: quality::r_wideband(&now_input),
                mos: quality::mos_wideband(&now_input),
                mos_call: quality::mos_wideband(&call_input),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::speechlike;
    use crate::sender::{MediaSender, SenderConfig};

    /// What happens to the frame sent in slot `i` (20 ms each) of a [`drive`] run.
    #[derive(Clone, Copy, PartialEq)]
    enum Slot {
        /// Sent, arrives 30 ms later.
        Sent,
        /// Sent, lost by the network.
        Lost,
        /// Not sent: the call is on hold (the sender encodes nothing, its clock stands).
        Held,
    }

    /// One value per 20 ms slot of a [`drive`] run.
    struct Sample {
        held: bool,
        stats: ReceiverStats,
    }

    /// Speech through a sender and a receiver in virtual time: slot `i` is encoded at `20 i`
    /// ms (per `plan(i)`), arrives 30 ms later, and the receiver pulls 20 ms at `20 i + 5`.
    /// The receiver is held from the first `Held` slot of a run to the first slot after it
    /// (both sides learn of the hold at once; frames in flight arrive while held).
    fn drive(slots: usize, plan: impl Fn(usize) -> Slot) -> Vec<Sample> {
        drive_with(slots, plan, |_, _| {})
    }

    /// [`drive`], with `before(i, sender)` called before slot `i` is encoded (to force a
    /// sender plan, for example).
    fn drive_with(
        slots: usize,
        plan: impl Fn(usize) -> Slot,
        mut before: impl FnMut(usize, &mut MediaSender),
    ) -> Vec<Sample> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut tx = MediaSender::new(SenderConfig::default()).unwrap();
        let mut rx = MediaReceiver::new(ReceiverConfig::default()).unwrap();
        rx.set_rtt(Duration::from_millis(60));
        let speech = speechlike(16_000, 10.0);
        let n = tx.frame_samples();
        let mut in_flight: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut frame = Vec::new();
        let mut out = vec![0i16; n];
        let mut samples = Vec::new();
        let mut spoken = 0usize;
        for i in 0..slots {
            let now_ms = 20 * i as u64;
            let slot = plan(i);
            let was_held = i > 0 && plan(i - 1) == Slot::Held;
            if slot == Slot::Held && !was_held {
                rx.set_held(true, at(now_ms));
            } else if slot != Slot::Held && was_held {
                rx.set_held(false, at(now_ms));
            }
            before(i, &mut tx);
            if slot != Slot::Held {
                let start = spoken % (speech.len() - n);
                spoken += n;
                if tx.encode(&speech[start..start + n], &mut frame).unwrap() && slot == Slot::Sent {
                    in_flight.push_back((now_ms + 30, frame.clone()));
                }
            }
            let pull_ms = now_ms + 5;
            while in_flight.front().is_some_and(|(t, _)| *t <= pull_ms) {
                let (t, f) = in_flight.pop_front().unwrap();
                rx.receive(at(t), &f).unwrap();
            }
            rx.pull(at(pull_ms), &mut out);
            samples.push(Sample {
                held: rx.is_held(),
                stats: rx.stats(),
            });
        }
        samples
    }

    /// The sender protects with redundancy for 5 s (as after a loss report) on a lossless
    /// path: the running MOS shows the codec's lower rate then, and is back to the clean
    /// figure within the MOS window after redundancy stops.
    #[test]
    fn redundancy_lowers_the_running_mos_and_its_end_restores_it() {
        use crate::codec::FrameDuration;
        use crate::sender::Plan;
        let plan = |red: u8, bitrate: u32| Plan::plain(bitrate, FrameDuration::Ms20).with_red(red);
        let run = drive_with(
            1200,
            |_| Slot::Sent,
            |i, tx| {
                if i == 400 {
                    tx.apply(plan(2, 16_000)).unwrap();
                } else if i == 650 {
                    tx.apply(plan(0, crate::codec::DEFAULT_BITRATE)).unwrap();
                }
            },
        );
        let mos: Vec<f64> = run.iter().map(|s| s.stats.quality.mos).collect();
        let clean = mos[399];
        assert!((clean - quality::tests::CLEAN_PESQ).abs() < 0.02, "{clean}");
        // After 4 s of redundancy most of the share shows.
        assert!(mos[600] < clean - 0.25, "{} vs {clean}", mos[600]);
        // Within the 8 s window after it stopped, back to clean.
        assert!(mos[650 + 400] > clean - 0.05, "{} vs {clean}", mos[1050]);
        // The call's figure keeps the whole call (a fifth of it with redundancy).
        let call = run.last().unwrap().stats.quality.mos_call;
        assert!(call < clean && call > mos[600], "{call}");
    }

    #[test]
    fn lossless_call_scores_the_calibrated_clean_mos() {
        let run = drive(500, |_| Slot::Sent);
        let q = run.last().unwrap().stats.quality;
        assert!((q.mos - quality::tests::CLEAN_PESQ).abs() < 0.02, "{q:?}");
        assert!((q.mos_call - q.mos).abs() < 0.01, "{q:?}");
    }

    #[test]
    fn mos_recovers_after_a_gap() {
        // 10 s clean, a 0.6 s outage (30 frames lost), then clean again.
        let gap = 500..530;
        let run = drive(1500, |i| {
            if gap.contains(&i) {
                Slot::Lost
            } else {
                Slot::Sent
            }
        });
        let clean = run[499].stats.quality.mos;
        assert!(clean >= quality::tests::CLEAN_PESQ - 0.02, "{clean}");
        // The outage shows at once...
        let after_gap = run[535].stats.quality.mos;
        assert!(
            after_gap < 2.5,
            "MOS {after_gap} right after a 0.6 s outage"
        );
        // ...and weighs less and less: back to the clean score within 10 s.
        let mos: Vec<f64> = run[535..].iter().map(|s| s.stats.quality.mos).collect();
        assert!(
            mos.windows(2).all(|w| w[1] >= w[0] - 1e-9),
            "not recovering monotonically"
        );
        let back = run[530 + 500].stats.quality.mos;
        assert!(
            (back - clean).abs() < 0.01,
            "MOS {back} 10 s after, {clean} before"
        );
        assert!(run[530 + 250].stats.quality.mos > after_gap + 0.5);
        // The whole-call figure and the counters still remember it.
        let last = &run.last().unwrap().stats;
        assert!((29..=30).contains(&last.jitter.lost_after_recovery));
        assert_eq!(last.conceal_runs, 1);
        assert!(last.quality.mos_call < clean - 0.3, "{:?}", last.quality);
    }

    #[test]
    fn hold_is_not_loss_delay_or_jitter() {
        // 5 s of call, 2 s on hold, 5 s of call.
        let hold = 250..350;
        let run = drive(600, |i| {
            if hold.contains(&i) {
                Slot::Held
            } else {
                Slot::Sent
            }
        });
        let before = &run[249].stats;
        let after = &run.last().unwrap().stats;
        assert!(run[250..350].iter().all(|s| s.held) && !run[350].held);
        // Not loss: no frame missing, none concealed, nothing lost on the network.
        assert_eq!(after.jitter.lost_before_recovery, 0, "{:?}", after.jitter);
        assert_eq!(after.jitter.concealed_ms, 0.0);
        assert_eq!(after.jitter.network_loss(), 0.0);
        assert_eq!(after.jitter.late, 0);
        // Frames in flight when the hold began were counted, not played.
        assert!(after.jitter.held_received >= 1, "{:?}", after.jitter);
        // Not delay: the buffer reads its real delay within a second of the resume.
        for s in &run[350 + 50..] {
            let q = s.stats.quality;
            assert!(q.jitter_buffer_ms < 60.0, "{q:?}");
            assert!(
                q.mouth_to_ear_ms < before.quality.mouth_to_ear_ms + 25.0,
                "{q:?}"
            );
        }
        assert!(run[350..]
            .iter()
            .all(|s| s.stats.quality.jitter_buffer_ms < 200.0));
        // Not jitter: the path never varied.
        assert!(run.iter().all(|s| s.stats.quality.jitter_ms < 1.0));
        // Not in the MOS: the same score before, during and after.
        for s in &run[250..] {
            assert!(
                (s.stats.quality.mos - before.quality.mos).abs() < 0.01,
                "{:?} vs {:?}",
                s.stats.quality,
                before.quality
            );
        }
        assert!((after.quality.mos_call - before.quality.mos_call).abs() < 0.01);
        // Not a lower bitrate: held time is not in the average.
        let (b0, b1) = (before.quality.bitrate_bps, after.quality.bitrate_bps);
        assert!((b1 - b0).abs() < 0.15 * b0, "{b0} bit/s before, {b1} after");
        assert!((after.held_ms - 2000.0).abs() < 1e-6, "{}", after.held_ms);
    }

    #[test]
    fn pulls_on_hold_are_silence_not_audio() {
        let t0 = Instant::now();
        let mut tx = MediaSender::new(SenderConfig::default()).unwrap();
        let mut rx = MediaReceiver::new(ReceiverConfig::default()).unwrap();
        let speech = speechlike(16_000, 1.0);
        let mut frame = Vec::new();
        let mut out = vec![0i16; 320];
        let mut origins = Vec::new();
        for (i, pcm) in speech.chunks_exact(320).enumerate() {
            let now = t0 + Duration::from_millis(20 * i as u64);
            if tx.encode(pcm, &mut frame).unwrap() {
                rx.receive(now, &frame).unwrap();
            }
            rx.pull(now, &mut out);
        }
        let before = rx.stats();
        let t1 = t0 + Duration::from_secs(1);
        rx.set_held(true, t1);
        origins.clear();
        let mut loud = 0;
        for k in 0..100u64 {
            // Concealment would be speech-like noise; a held call plays silence.
            rx.pull_traced(t1 + Duration::from_millis(20 * k), &mut out, &mut origins);
            loud += out.iter().filter(|&&s| s != 0).count();
        }
        let held = rx.stats();
        assert_eq!(loud, 0, "non-zero samples played on hold");
        assert_eq!(origins.len(), 32_000);
        assert!(
            origins.iter().all(Option::is_none),
            "held samples traced as media"
        );
        assert_eq!(held.jitter.played, before.jitter.played);
        assert_eq!(held.jitter.lost_before_recovery, 0);
        assert_eq!(held.jitter.stretched_ms, before.jitter.stretched_ms);
        assert_eq!(held.jitter.concealed_ms, 0.0);
        assert!(held.held);
    }

    #[test]
    fn report_round_trip() {
        let r = ReceiverReport {
            frames: 50,
            lost: 3,
            mean_burst: 1.5,
            jitter_ms: 37.0,
            queue_ms: 120.0,
            recv_bps: 24_300.0,
        };
        let d = ReceiverReport::decode(&r.encode()).unwrap();
        assert_eq!(d, r);
        assert!((d.fraction_lost() - 0.06).abs() < 1e-9);
        assert_eq!(ReceiverReport::decode(&[1, 2, 3]), None);
        assert_eq!(ReceiverReport::default().fraction_lost(), 0.0);
    }
}
