//! Per-stream quality statistics: RFC 3550 interarrival jitter, bitrate, and an estimated MOS
//! from the ITU-T G.107 E-model (with the wideband scale of G.107.1).
//!
//! ## The E-model as used here
//!
//! `R_wb = 129 - Id_wb - Ie,eff,wb` (G.107.1: the wideband scale tops out at 129; the default
//! values of every other parameter, A = 0).
//!
//! * **Delay**, `Id_wb = 1.29 × Idd(Ta)` with G.107's `Idd`: 0 up to Ta = 100 ms, then
//!   `25 × ((1 + X⁶)^⅙ − 3 (1 + (X/3)⁶)^⅙ + 2)` with `X = log2(Ta / 100 ms)`. Echo terms
//!   (Idte, Idle) are left out: echo cancellation is assumed perfect. `Ta` (mouth to ear) is
//!   RTT/2 plus the local added latency (frame, codec look-ahead, jitter buffer, 10 ms of
//!   device buffering).
//! * **Codec and loss**, G.107 equation 7-29 on the wideband scale:
//!   `Ie,eff,wb = Ie,wb + (129 − Ie,wb) × Ppl / (Ppl / BurstR + Bpl)`, where `Ppl` is the
//!   percentage of frames still lost *after* FEC and redundancy (what concealment must hide)
//!   and `BurstR` the ratio of the observed mean loss run to that of random loss.
//! * **Opus parameters.** ITU-T G.113 Appendix IV lists Ie,wb and Bpl for ITU codecs but not
//!   for Opus, so they are *derived from measurements*, the way ITU-T P.834.1 derives Ie,wb
//!   from wideband PESQ: a PESQ-WB score is mapped to R with the inverse of G.107's MOS(R)
//!   curve and the impairment scaled by 1.29 to the wideband scale. Our pipeline at its
//!   default (Opus VOIP, 16 kHz, 16 kbit/s VBR target, about 14 kbit/s average) scores
//!   PESQ-WB 3.58 on `media/testdata/speech.wav` with no loss, so
//!   `Ie,wb = 1.29 × (100 − R(3.58)) = 1.29 × (100 − 69.6) = 39` ([`OPUS_WB_IE`]); with
//!   concealment alone (no FEC, no redundancy: `natter media-loopback --loss 5 --no-adapt`,
//!   mean of seeds 1 to 3) it scores 2.00 at 5 % random loss, `Ie,eff,wb = 79.1`, and solving
//!   the equation above for Bpl gives 6.2 ([`OPUS_WB_BPL`]). Both come from an instrumental
//!   model on synthetic (espeak-ng) speech, not from a listening test: treat the MOS as a
//!   relative indicator. Rerun `benches/media_quality.sh` to re-derive them.
//! * **MOS.** G.107 Annex B's MOS(R) on `R_wb / 1.29` (the mapping G.107.1 recommends for
//!   comparing with narrowband), so a perfect wideband call scores 4.5.

use std::time::{Duration, Instant};

/// Equipment impairment factor of Opus wideband (SILK, 16 kbit/s VBR) on the wideband scale,
/// derived from PESQ-WB (see the module documentation).
pub const OPUS_WB_IE: f64 = 39.0;
/// Packet-loss robustness factor of Opus wideband with its concealment, derived likewise.
pub const OPUS_WB_BPL: f64 = 6.2;

/// G.107 Annex B: MOS (conversational quality, estimated) from R (narrowband scale).
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// The inverse of [`mos_from_r`] (bisection), for deriving impairment factors from MOS.
pub fn r_from_mos(mos: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 100.0f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if mos_from_r(mid) < mos {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// G.107's delay impairment Idd for a mouth-to-ear delay `ta_ms` (narrowband scale).
pub fn idd(ta_ms: f64) -> f64 {
    if ta_ms <= 100.0 {
        return 0.0;
    }
    let x = (ta_ms / 100.0).log2();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
        + 2.0)
}

/// Inputs of the E-model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EModelInput {
    /// Mouth-to-ear delay, ms.
    pub ta_ms: f64,
    /// Frames lost after recovery, percent.
    pub ppl: f64,
    /// Burst ratio (1 for random loss).
    pub burst_r: f64,
    /// Codec impairment (wideband scale).
    pub ie_wb: f64,
    /// Codec loss robustness.
    pub bpl: f64,
}

/// The wideband rating `R_wb` (0 to 129).
pub fn r_wideband(i: &EModelInput) -> f64 {
    let id = 1.29 * idd(i.ta_ms);
    let burst_r = i.burst_r.max(1.0);
    let ppl = i.ppl.clamp(0.0, 100.0);
    let ie_eff = i.ie_wb + (129.0 - i.ie_wb) * ppl / (ppl / burst_r + i.bpl.max(0.1));
    (129.0 - id - ie_eff).clamp(0.0, 129.0)
}

/// Estimated MOS (1 to 4.5) of a wideband call.
pub fn mos_wideband(i: &EModelInput) -> f64 {
    mos_from_r(r_wideband(i) / 1.29)
}

/// RFC 3550 (section 6.4.1, appendix A.8) interarrival jitter, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct InterarrivalJitter {
    last: Option<(Instant, f64)>,
    jitter_ms: f64,
}

impl InterarrivalJitter {
    /// A frame with media time `media_ms` (its timestamp in ms) arrived at `now`.
    pub fn on_arrival(&mut self, now: Instant, media_ms: f64) {
        if let Some((at, media)) = self.last {
            let arrival_diff = if now >= at {
                now.duration_since(at).as_secs_f64() * 1000.0
            } else {
                -(at.duration_since(now).as_secs_f64() * 1000.0)
            };
            let d = arrival_diff - (media_ms - media);
            self.jitter_ms += (d.abs() - self.jitter_ms) / 16.0;
        }
        self.last = Some((now, media_ms));
    }

    /// The current estimate.
    pub fn ms(&self) -> f64 {
        self.jitter_ms
    }
}

/// A quality summary of one received stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualityReport {
    /// Round-trip time, from the call layer.
    pub rtt_ms: Option<f64>,
    /// Fraction of frames the network lost (0 to 1).
    pub network_loss: f64,
    /// Fraction of frames missing at playout, before FEC and redundancy.
    pub loss_before_recovery: f64,
    /// Fraction of frames concealed after recovery.
    pub loss_after_recovery: f64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Jitter-buffer delay now, ms.
    pub jitter_buffer_ms: f64,
    /// Jitter-buffer target delay, ms.
    pub jitter_target_ms: f64,
    /// Concealed audio, ms.
    pub concealed_ms: f64,
    /// Received media bitrate (frame bytes, without envelope or IP/UDP), bit/s.
    pub bitrate_bps: f64,
    /// Estimated mouth-to-ear delay used for the MOS, ms.
    pub mouth_to_ear_ms: f64,
    /// E-model rating on the wideband scale.
    pub r_wb: f64,
    /// Estimated MOS.
    pub mos: f64,
}

/// Bytes received over time, for the bitrate.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateMeter {
    first: Option<Instant>,
    last: Option<Instant>,
    bytes: u64,
}

impl RateMeter {
    /// `bytes` arrived at `now`.
    pub fn on_bytes(&mut self, now: Instant, bytes: usize) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.bytes += bytes as u64;
    }

    /// Average bit/s since the first arrival (0 before a span is known).
    pub fn bps(&self, frame: Duration) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => {
                let span = b.duration_since(a) + frame;
                self.bytes as f64 * 8.0 / span.as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mos_curve_and_inverse() {
        assert!((mos_from_r(93.2) - 4.41).abs() < 0.01);
        assert_eq!(mos_from_r(100.0), 4.5);
        assert_eq!(mos_from_r(-3.0), 1.0);
        for mos in [1.5, 2.5, 3.6, 4.2] {
            assert!((mos_from_r(r_from_mos(mos)) - mos).abs() < 1e-6);
        }
    }

    #[test]
    fn delay_impairment_matches_g107_shape() {
        assert_eq!(idd(80.0), 0.0);
        // G.107's curve: about 3 at 200 ms, about 24 at 400 ms.
        assert!((idd(200.0) - 3.04).abs() < 0.01, "{}", idd(200.0));
        assert!((idd(400.0) - 24.07).abs() < 0.01, "{}", idd(400.0));
    }

    #[test]
    fn e_model_orders_conditions() {
        let base = EModelInput {
            ta_ms: 60.0,
            ppl: 0.0,
            burst_r: 1.0,
            ie_wb: OPUS_WB_IE,
            bpl: OPUS_WB_BPL,
        };
        let clean = mos_wideband(&base);
        let lossy = mos_wideband(&EModelInput { ppl: 5.0, ..base });
        let bursty = mos_wideband(&EModelInput {
            ppl: 5.0,
            burst_r: 3.0,
            ..base
        });
        let slow = mos_wideband(&EModelInput {
            ta_ms: 400.0,
            ..base
        });
        // By construction the clean call maps back to the PESQ it was derived from.
        assert!((clean - 3.58).abs() < 0.02, "{clean}");
        assert!(lossy < clean && bursty < lossy && slow < clean);
    }

    #[test]
    fn rfc3550_jitter_converges_to_mean_deviation() {
        let t0 = Instant::now();
        let mut j = InterarrivalJitter::default();
        // Alternate 0 and 10 ms of extra delay: |D| is 10 ms every time.
        for i in 0..500u64 {
            let extra = if i % 2 == 0 { 0 } else { 10 };
            j.on_arrival(t0 + Duration::from_millis(20 * i + extra), 20.0 * i as f64);
        }
        assert!((j.ms() - 10.0).abs() < 0.1, "{}", j.ms());
    }
}
