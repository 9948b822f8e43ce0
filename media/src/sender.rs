//! The sending half of a stream: PCM frames in, media frames out, adapting to the receiver's
//! reports.
//!
//! ## Adaptation policy ([`plan`])
//!
//! The sender estimates loss over its latest [`ReceiverReport`]s covering at least 250
//! frames (5 s): lost frames over frames due, and the mean run of lost frames. Early in a
//! call the window is short and the receiver reports early when it loses a frame, so
//! protection starts within a round trip of the first loss; later, one stray loss moves the
//! estimate by 0.4 %, below the FEC threshold. From these, and the available bandwidth when the call
//! layer knows it:
//!
//! * **Redundancy (RED)**: one previous frame from 3 % loss, two from 5 % (4 % when losses
//!   come in runs of 2 or more), three when runs average 2.5 frames or more at 10 %.
//!   Hysteresis: one copy stays on down to 1 % loss, deeper levels down to two thirds of
//!   their thresholds, so a noisy estimate does not flap between FEC and RED.
//! * **In-band FEC**: from 0.5 % loss while RED is off, with the loss percentage as Opus's
//!   expected-loss hint (capped at 30); off under RED, where it would only duplicate what the
//!   redundant copy rebuilds better.
//! * **Bitrate**: the configured bitrate, raised with FEC to the least rate at which libopus
//!   codes wideband FEC at all ([`fec_min_bitrate`]: 24 kbit/s up to 5 % loss); with
//!   redundancy, each copy at most [`RED_COPY_BITRATE`] (16 kbit/s, the rate the levels were
//!   tuned with, below the 22 kbit/s default), so that primary plus redundant copies stay
//!   within 64 kbit/s; and, when a bandwidth estimate
//!   exists, within 90 % of it after headers. If even 10 kbit/s of primary audio does not
//!   fit, redundancy goes first, then frames grow to 40 and 60 ms (fewer headers), and the
//!   bitrate goes down to 6 kbit/s.

use std::collections::VecDeque;

use crate::codec::{CodecConfig, CodecError, FrameDuration, OpusEncoder, MAX_BITRATE, MAX_PACKET};
use crate::frame::{MediaFrame, RedBlock, HEADER_LEN};
use crate::receiver::ReceiverReport;

/// The loss estimate covers the latest reports totalling at least this many frames (5 s).
const LOSS_WINDOW_FRAMES: u64 = 250;

/// With redundancy on, each copy carries at most this bitrate (the redundancy levels were
/// measured with it).
pub const RED_COPY_BITRATE: u32 = 16_000;

/// Bytes per packet outside the media frame: IPv4 (20) + UDP (8) + Natter's short media
/// envelope (26: a 10-byte header and the 16-byte tag).
pub const WIRE_OVERHEAD: usize = 20 + 8 + 26;

/// Sender settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Codec settings (the bitrate is the base the adaptation starts from).
    pub codec: CodecConfig,
    /// Adapt FEC, redundancy, bitrate and frame size to reports (on by default).
    pub adapt: bool,
    /// Most redundant copies per frame (0 to 3).
    pub max_red: u8,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            codec: CodecConfig::default(),
            adapt: true,
            max_red: 3,
        }
    }
}

/// What the adaptation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Opus bitrate of the primary payload, bit/s.
    pub bitrate: u32,
    /// Opus in-band FEC on.
    pub fec: bool,
    /// The expected-loss hint given to Opus, percent.
    pub loss_hint: u8,
    /// Redundant copies per frame.
    pub red: u8,
    /// Frame duration.
    pub frame: FrameDuration,
}

/// Inputs of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInput {
    /// Configured base bitrate.
    pub base_bitrate: u32,
    /// Configured frame duration.
    pub base_frame: FrameDuration,
    /// Smoothed loss (0 to 1).
    pub loss: f64,
    /// Mean loss run length (frames).
    pub burst: f64,
    /// Redundancy in use now (for hysteresis).
    pub current_red: u8,
    /// Most redundant copies allowed.
    pub max_red: u8,
    /// FEC allowed by configuration.
    pub fec_allowed: bool,
    /// Available bandwidth on the wire, bit/s, if known.
    pub bandwidth: Option<u32>,
}

/// The least bitrate at which libopus (1.3) codes wideband in-band FEC for a loss hint:
/// measured (`codec` tests), below it libopus drops FEC (hint up to 5 %) or narrows the
/// audio band to medium band (above 5 %).
pub fn fec_min_bitrate(loss: f64) -> u32 {
    if loss <= 0.05 {
        24_000
    } else {
        22_000
    }
}

/// The adaptation policy (see the [module documentation](self)); a pure function.
pub fn plan(i: &PlanInput) -> Plan {
    let loss = i.loss.clamp(0.0, 1.0);
    let bursty = i.burst >= 2.0;
    // Hysteresis: a level switches on at `on` and off below `off`.
    let level =
        |on: f64, off: f64, current_at_least: bool| loss >= if current_at_least { off } else { on };
    let mut red = 0u8;
    if level(0.03, 0.01, i.current_red >= 1) {
        red = 1;
    }
    let depth2 = if bursty { 0.04 } else { 0.05 };
    if level(depth2, depth2 * 2.0 / 3.0, i.current_red >= 2) {
        red = 2;
    }
    if i.burst >= 2.5 && level(0.10, 0.07, i.current_red >= 3) {
        red = 3;
    }
    red = red.min(i.max_red).min(crate::frame::MAX_RED_BLOCKS as u8);

    let mut frame = i.base_frame;
    let fec_for = |red: u8| i.fec_allowed && red == 0 && loss >= 0.005;
    let bitrate_for = |red: u8, frame: FrameDuration| -> u32 {
        let mut b = f64::from(i.base_bitrate);
        if fec_for(red) {
            b = b.max(f64::from(fec_min_bitrate(loss)));
        }
        let copies = f64::from(red) + 1.0;
        if red > 0 {
            // Each copy at most the rate the redundancy was measured with: the clean default
            // went up for quality, and must not multiply into the lossy link.
            b = b.min(f64::from(RED_COPY_BITRATE));
        }
        b = b.min(f64::from(MAX_BITRATE) / copies);
        if let Some(bw) = i.bandwidth {
            let packets = 1000.0 / f64::from(frame.ms());
            let header_bps = packets * ((WIRE_OVERHEAD + HEADER_LEN + 2 * red as usize) * 8) as f64;
            b = b.min((f64::from(bw) * 0.9 - header_bps) / copies);
        }
        b.max(0.0) as u32
    };
    if i.bandwidth.is_some() {
        while red > 0 && bitrate_for(red, frame) < 10_000 {
            red -= 1;
        }
        for f in [FrameDuration::Ms40, FrameDuration::Ms60] {
            if bitrate_for(red, frame) < 10_000 && f > frame {
                frame = f;
            }
        }
    }
    let fec = fec_for(red);
    Plan {
        bitrate: bitrate_for(red, frame).max(crate::codec::MIN_BITRATE),
        fec,
        loss_hint: if fec {
            (loss * 100.0).round().clamp(1.0, 30.0) as u8
        } else {
            0
        },
        red,
        frame,
    }
}

/// What the sender counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Frames encoded.
    pub encoded: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames not sent because of DTX.
    pub dtx_suppressed: u64,
    /// Media frame bytes sent (without envelope, UDP, IP).
    pub bytes: u64,
    /// Opus bytes in primary payloads.
    pub primary_bytes: u64,
    /// Redundant blocks sent.
    pub red_blocks: u64,
    /// Frames whose primary payload carried in-band FEC.
    pub fec_frames: u64,
}

/// Why a frame could not be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The encoder failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Sends one stream. See the [module documentation](self).
#[derive(Debug)]
pub struct MediaSender {
    config: SenderConfig,
    encoder: OpusEncoder,
    plan: Plan,
    seq: u16,
    ts: u64,
    history: VecDeque<(u64, Vec<u8>)>,
    in_dtx: bool,
    reports: VecDeque<ReceiverReport>,
    loss: f64,
    burst: f64,
    bandwidth: Option<u32>,
    packet: Vec<u8>,
    stats: SenderStats,
}

impl MediaSender {
    /// A sender with `config`.
    pub fn new(config: SenderConfig) -> Result<Self, CodecError> {
        let encoder = OpusEncoder::new(&config.codec)?;
        let plan = Plan {
            bitrate: config.codec.bitrate,
            fec: false,
            loss_hint: 0,
            red: 0,
            frame: config.codec.frame,
        };
        Ok(Self {
            config,
            encoder,
            plan,
            seq: 0,
            ts: 0,
            history: VecDeque::new(),
            in_dtx: false,
            reports: VecDeque::new(),
            loss: 0.0,
            burst: 0.0,
            bandwidth: None,
            packet: vec![0; MAX_PACKET],
            stats: SenderStats::default(),
        })
    }

    /// Samples the next [`encode`](Self::encode) call takes (the current frame duration).
    pub fn frame_samples(&self) -> usize {
        self.plan.frame.samples(self.config.codec.rate)
    }

    /// The current plan.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The encoder's look-ahead in samples.
    pub fn lookahead(&self) -> usize {
        self.encoder.lookahead().unwrap_or(0)
    }

    /// The available bandwidth on the wire (bit/s), from the call layer's estimate.
    pub fn set_bandwidth(&mut self, bps: Option<u32>) -> Result<(), CodecError> {
        self.bandwidth = bps;
        self.replan()
    }

    /// Take a report from the receiver.
    pub fn on_report(&mut self, report: &ReceiverReport) -> Result<(), CodecError> {
        if report.frames > 0 {
            self.reports.push_back(*report);
            while self.reports.len() > 1
                && self
                    .reports
                    .iter()
                    .skip(1)
                    .map(|r| u64::from(r.frames))
                    .sum::<u64>()
                    >= LOSS_WINDOW_FRAMES
            {
                self.reports.pop_front();
            }
        }
        let frames: u64 = self.reports.iter().map(|r| u64::from(r.frames)).sum();
        let lost: u64 = self
            .reports
            .iter()
            .map(|r| u64::from(r.lost.min(r.frames)))
            .sum();
        let runs: f64 = self
            .reports
            .iter()
            .filter(|r| r.mean_burst > 0.0)
            .map(|r| f64::from(r.lost) / r.mean_burst)
            .sum();
        self.loss = if frames == 0 {
            0.0
        } else {
            lost as f64 / frames as f64
        };
        self.burst = if runs > 0.0 { lost as f64 / runs } else { 0.0 };
        self.replan()
    }

    fn replan(&mut self) -> Result<(), CodecError> {
        if !self.config.adapt {
            return Ok(());
        }
        let next = plan(&PlanInput {
            base_bitrate: self.config.codec.bitrate,
            base_frame: self.config.codec.frame,
            loss: self.loss,
            burst: self.burst,
            current_red: self.plan.red,
            max_red: self.config.max_red,
            fec_allowed: self.config.codec.fec,
            bandwidth: self.bandwidth,
        });
        self.apply(next)
    }

    /// Force a plan (adaptation off, or tests).
    pub fn apply(&mut self, plan: Plan) -> Result<(), CodecError> {
        self.encoder.set_bitrate(plan.bitrate)?;
        self.encoder.set_fec(plan.fec, plan.loss_hint)?;
        self.plan = plan;
        Ok(())
    }

    /// Encode one frame of [`frame_samples`](Self::frame_samples) samples. Returns `true`
    /// when `out` (cleared first) holds a media frame to send, `false` when DTX suppressed it.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<bool, SendError> {
        out.clear();
        let expected = self.frame_samples();
        if pcm.len() != expected {
            return Err(CodecError::FrameSize {
                got: pcm.len(),
                expected,
            }
            .into());
        }
        let len = self.encoder.encode(pcm, &mut self.packet)?;
        let ts = self.ts;
        self.ts += u64::from(self.plan.frame.ticks());
        self.stats.encoded += 1;
        let dtx_frame = len <= 2;
        if dtx_frame && self.in_dtx {
            self.stats.dtx_suppressed += 1;
            return Ok(false);
        }
        let payload = &self.packet[..len];
        let mut frame = MediaFrame::new(self.seq, ts as u16, payload);
        frame.fec = crate::opus_packet::has_lbrr(payload);
        frame.dtx = dtx_frame;
        self.in_dtx = dtx_frame;
        let depth = usize::from(self.plan.red);
        let skip = self.history.len().saturating_sub(depth);
        for (hts, p) in self.history.iter().skip(skip) {
            let offset = ts - hts;
            if let Ok(offset_ticks) = u8::try_from(offset) {
                if frame.push_red(RedBlock {
                    offset_ticks,
                    payload: p,
                }) {
                    self.stats.red_blocks += 1;
                }
            }
        }
        frame.encode(out);
        self.seq = self.seq.wrapping_add(1);
        self.stats.sent += 1;
        self.stats.bytes += out.len() as u64;
        self.stats.primary_bytes += len as u64;
        self.stats.fec_frames += u64::from(frame.fec);
        if !dtx_frame {
            self.history.push_back((ts, payload.to_vec()));
            while self.history.len() > crate::frame::MAX_RED_BLOCKS {
                self.history.pop_front();
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(loss: f64, burst: f64, current_red: u8) -> PlanInput {
        PlanInput {
            base_bitrate: 16_000,
            base_frame: FrameDuration::Ms20,
            loss,
            burst,
            current_red,
            max_red: 3,
            fec_allowed: true,
            bandwidth: None,
        }
    }

    #[test]
    fn plan_follows_loss_with_hysteresis() {
        let p = plan(&input(0.0, 0.0, 0));
        assert_eq!((p.red, p.fec, p.bitrate), (0, false, 16_000));
        let p = plan(&input(0.02, 1.0, 0));
        assert_eq!((p.red, p.fec, p.loss_hint, p.bitrate), (0, true, 2, 24_000));
        assert_eq!(plan(&input(0.04, 1.0, 0)).red, 1);
        assert_eq!(plan(&input(0.05, 1.0, 0)).red, 2);
        assert_eq!(
            plan(&input(0.015, 1.0, 1)).red,
            1,
            "hysteresis keeps RED on"
        );
        assert_eq!(plan(&input(0.009, 1.0, 1)).red, 0);
        assert_eq!(plan(&input(0.04, 1.0, 2)).red, 2);
        assert_eq!(plan(&input(0.03, 1.0, 2)).red, 1);
        assert_eq!(plan(&input(0.2, 1.0, 0)).red, 2);
        assert_eq!(
            plan(&input(0.07, 2.0, 0)).red,
            2,
            "bursty loss wants depth 2 sooner"
        );
        let p = plan(&input(0.2, 3.0, 0));
        assert_eq!((p.red, p.fec), (3, false));
        assert_eq!(p.bitrate, 16_000, "4 copies of 16 kbit/s fit in 64");
    }

    #[test]
    fn the_default_bitrate_is_not_multiplied_by_redundancy() {
        let base = crate::codec::DEFAULT_BITRATE;
        let with = |loss, burst| {
            plan(&PlanInput {
                base_bitrate: base,
                ..input(loss, burst, 0)
            })
        };
        assert_eq!(with(0.0, 0.0).bitrate, base);
        for (loss, burst) in [(0.05, 1.0), (0.1, 1.0), (0.2, 1.0), (0.2, 3.0)] {
            let p = with(loss, burst);
            assert!(
                p.red > 0 && p.bitrate <= RED_COPY_BITRATE,
                "{loss} {burst}: {p:?}"
            );
        }
    }

    #[test]
    fn plan_fits_the_bandwidth() {
        // 20 kbit/s on the wire: 20 ms frames would leave ~-5 kbit/s for audio after headers.
        let p = plan(&PlanInput {
            bandwidth: Some(20_000),
            ..input(0.05, 1.0, 1)
        });
        assert_eq!(p.red, 0);
        assert!(p.frame > FrameDuration::Ms20);
        let packets = 1000.0 / f64::from(p.frame.ms());
        let wire = f64::from(p.bitrate) + packets * ((WIRE_OVERHEAD + HEADER_LEN) * 8) as f64;
        assert!(wire <= 20_000.0 * 0.9 + 1.0, "{wire}");
        // Plenty of bandwidth changes nothing.
        let p = plan(&PlanInput {
            bandwidth: Some(1_000_000),
            ..input(0.0, 0.0, 0)
        });
        assert_eq!((p.frame, p.bitrate), (FrameDuration::Ms20, 16_000));
    }

    #[test]
    fn sender_numbers_frames_and_carries_redundancy() {
        let mut s = MediaSender::new(SenderConfig::default()).unwrap();
        let pcm = crate::audio::synth::speechlike(16_000, 0.2);
        let mut out = Vec::new();
        s.apply(Plan { red: 2, ..s.plan() }).unwrap();
        let mut frames = Vec::new();
        for chunk in pcm.chunks_exact(320) {
            assert!(s.encode(chunk, &mut out).unwrap());
            frames.push(out.clone());
        }
        let f0 = MediaFrame::decode(&frames[0]).unwrap();
        let f2 = MediaFrame::decode(&frames[2]).unwrap();
        let f1 = MediaFrame::decode(&frames[1]).unwrap();
        assert_eq!((f0.seq, f0.timestamp, f0.red().len()), (0, 0, 0));
        assert_eq!((f2.seq, f2.timestamp, f2.red().len()), (2, 16, 2));
        assert_eq!(f2.red()[0].offset_ticks, 16);
        assert_eq!(f2.red()[0].payload, f0.payload);
        assert_eq!(f2.red()[1].payload, f1.payload);
        assert!(s.encode(&pcm[..100], &mut out).is_err());
    }

    #[test]
    fn dtx_sends_one_marker_then_nothing() {
        let config = SenderConfig {
            codec: CodecConfig {
                dtx: true,
                ..CodecConfig::default()
            },
            ..SenderConfig::default()
        };
        let mut s = MediaSender::new(config).unwrap();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..100 {
            if s.encode(&[0; 320], &mut out).unwrap() {
                sent.push(MediaFrame::decode(&out).unwrap().dtx);
            }
        }
        assert!(s.stats().dtx_suppressed > 50, "{:?}", s.stats());
        assert!(sent.iter().any(|&d| d));
        // Sequence numbers stay contiguous across suppressed frames.
        assert_eq!(s.stats().sent as usize, sent.len());
    }
}
