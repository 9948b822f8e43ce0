//! Opus through `audiopus` (the system libopus, found with pkg-config).
//!
//! Mono speech, wideband (16 kHz) by default or fullband (48 kHz), in frames of 20 ms (40,
//! 60, 80 or 120 ms for low-bandwidth links), in-band FEC with the expected-loss hint from measured loss,
//! optional DTX. The wrappers turn every libopus failure into a [`CodecError`]; libopus
//! itself validates packets, so a hostile payload yields an error, never a crash.

use audiopus::coder::{Decoder, Encoder, GenericCtl};
use audiopus::{Application, Bandwidth, Bitrate, Channels, Signal};

use crate::opus_packet::TICK_US;

/// The default Opus bitrate (see [`CodecConfig::bitrate`]).
pub const DEFAULT_BITRATE: u32 = 22_000;
/// The lowest bitrate the engine asks of Opus.
pub const MIN_BITRATE: u32 = 6_000;
/// The highest bitrate the engine asks of Opus.
pub const MAX_BITRATE: u32 = 64_000;
/// The largest Opus packet we produce (the format allows 1275 bytes).
pub const MAX_PACKET: usize = 1000;

/// The codec's sample rate: what the encoder takes and the decoder gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SampleRate {
    /// 16 kHz, wideband speech (the default).
    #[default]
    Wideband,
    /// 48 kHz, fullband.
    Fullband,
}

impl SampleRate {
    /// Samples per second.
    pub fn hz(self) -> u32 {
        match self {
            Self::Wideband => 16_000,
            Self::Fullband => 48_000,
        }
    }

    /// Samples in one 2.5 ms tick.
    pub fn samples_per_tick(self) -> usize {
        (self.hz() as usize) / 400
    }

    fn opus(self) -> audiopus::SampleRate {
        match self {
            Self::Wideband => audiopus::SampleRate::Hz16000,
            Self::Fullband => audiopus::SampleRate::Hz48000,
        }
    }
}

/// How much audio one packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum FrameDuration {
    /// 20 ms, 50 packets/s (the default).
    #[default]
    Ms20,
    /// 40 ms, 25 packets/s: less header overhead on slow links.
    Ms40,
    /// 60 ms, 16.7 packets/s: the longest single Opus frame.
    Ms60,
    /// 80 ms, 12.5 packets/s (two 40 ms Opus frames in one packet).
    Ms80,
    /// 120 ms, 8.3 packets/s (two 60 ms Opus frames in one packet): the least overhead, for
    /// the narrowest links only (each lost packet is a gap of 120 ms).
    Ms120,
}

impl FrameDuration {
    /// Milliseconds.
    pub fn ms(self) -> u32 {
        match self {
            Self::Ms20 => 20,
            Self::Ms40 => 40,
            Self::Ms60 => 60,
            Self::Ms80 => 80,
            Self::Ms120 => 120,
        }
    }

    /// Ticks of 2.5 ms.
    pub fn ticks(self) -> u32 {
        self.ms() * 1000 / TICK_US as u32
    }

    /// Samples per frame at `rate`.
    pub fn samples(self, rate: SampleRate) -> usize {
        rate.samples_per_tick() * self.ticks() as usize
    }
}

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    /// Sample rate (wideband by default).
    pub rate: SampleRate,
    /// Frame duration (20 ms by default).
    pub frame: FrameDuration,
    /// Target Opus bitrate in bit/s (VBR; payload only, without any header). The default,
    /// 22 kbit/s, is the lowest that scores a wideband PESQ of at least 4.0 clean, averaged
    /// over three recordings (two voices, two languages), within 5.5 kB/s per direction on
    /// the wire with 20 ms frames: 4.05 at 5.34-5.48 kB/s (`benches/media_quality.sh`; 20
    /// kbit/s: 3.95).
    pub bitrate: u32,
    /// In-band FEC allowed (used once the expected loss is above zero).
    pub fec: bool,
    /// Discontinuous transmission (silence suppression), off by default.
    pub dtx: bool,
    /// Encoder complexity, 0 to 10.
    pub complexity: u8,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            rate: SampleRate::Wideband,
            frame: FrameDuration::Ms20,
            bitrate: DEFAULT_BITRATE,
            fec: true,
            dtx: false,
            complexity: 10,
        }
    }
}

/// A libopus failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// libopus refused the call or the packet.
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
    /// The PCM buffer is not one whole frame.
    #[error("PCM buffer of {got} samples, expected {expected}")]
    FrameSize {
        /// Samples given.
        got: usize,
        /// Samples required.
        expected: usize,
    },
}

/// A mono Opus encoder.
pub struct OpusEncoder {
    inner: Encoder,
    rate: SampleRate,
    bitrate: u32,
    fec: bool,
    loss_pct: u8,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("rate", &self.rate)
            .field("bitrate", &self.bitrate)
            .field("fec", &self.fec)
            .field("loss_pct", &self.loss_pct)
            .finish()
    }
}

impl OpusEncoder {
    /// An encoder for VoIP speech with `config`.
    pub fn new(config: &CodecConfig) -> Result<Self, CodecError> {
        let mut inner = Encoder::new(config.rate.opus(), Channels::Mono, Application::Voip)?;
        inner.set_signal(Signal::Voice)?;
        inner.set_complexity(config.complexity.min(10))?;
        inner.set_vbr(true)?;
        inner.set_vbr_constraint(false)?;
        inner.set_dtx(config.dtx)?;
        if config.rate == SampleRate::Wideband {
            inner.set_max_bandwidth(Bandwidth::Wideband)?;
        }
        let mut enc = Self {
            inner,
            rate: config.rate,
            bitrate: 0,
            fec: false,
            loss_pct: 0,
        };
        enc.set_bitrate(config.bitrate)?;
        enc.set_fec(config.fec, 0)?;
        Ok(enc)
    }

    /// The sample rate.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Set the target bitrate (clamped to [`MIN_BITRATE`]..=[`MAX_BITRATE`]).
    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), CodecError> {
        let bps = bps.clamp(MIN_BITRATE, MAX_BITRATE);
        if bps != self.bitrate {
            self.inner.set_bitrate(Bitrate::BitsPerSecond(bps as i32))?;
            self.bitrate = bps;
        }
        Ok(())
    }

    /// The target bitrate.
    pub fn bitrate(&self) -> u32 {
        self.bitrate
    }

    /// Switch in-band FEC and set the expected packet loss hint (percent, clamped to 0..=100).
    /// With a hint of 0, libopus codes no FEC even when it is switched on.
    pub fn set_fec(&mut self, enabled: bool, expected_loss_pct: u8) -> Result<(), CodecError> {
        let pct = expected_loss_pct.min(100);
        if enabled != self.fec {
            self.inner.set_inband_fec(enabled)?;
            self.fec = enabled;
        }
        if pct != self.loss_pct {
            self.inner.set_packet_loss_perc(pct)?;
            self.loss_pct = pct;
        }
        Ok(())
    }

    /// FEC switched on and the loss hint.
    pub fn fec(&self) -> (bool, u8) {
        (self.fec, self.loss_pct)
    }

    /// Switch DTX.
    pub fn set_dtx(&mut self, enabled: bool) -> Result<(), CodecError> {
        Ok(self.inner.set_dtx(enabled)?)
    }

    /// The encoder's look-ahead (algorithmic delay) in samples.
    pub fn lookahead(&self) -> Result<usize, CodecError> {
        Ok(self.inner.lookahead()? as usize)
    }

    /// Encode one frame of `pcm` (2.5 to 120 ms of mono samples) into `out`; returns the packet
    /// length. A packet of 1 or 2 bytes is a DTX frame (nothing worth sending).
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let tick = self.rate.samples_per_tick();
        if pcm.is_empty() || !pcm.len().is_multiple_of(tick) || pcm.len() > 48 * tick {
            return Err(CodecError::FrameSize {
                got: pcm.len(),
                expected: FrameDuration::Ms20.samples(self.rate),
            });
        }
        Ok(self.inner.encode(pcm, out)?)
    }
}

/// A mono Opus decoder.
pub struct OpusDecoder {
    inner: Decoder,
    rate: SampleRate,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("rate", &self.rate)
            .finish()
    }
}

impl OpusDecoder {
    /// A decoder producing mono PCM at `rate`.
    pub fn new(rate: SampleRate) -> Result<Self, CodecError> {
        Ok(Self {
            inner: Decoder::new(rate.opus(), Channels::Mono)?,
            rate,
        })
    }

    /// The sample rate.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Decode `packet` into `out` (which must hold at least the packet's duration, up to
    /// 120 ms); returns the number of samples written.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        let packet = audiopus::packet::Packet::try_from(packet)?;
        let signals = audiopus::MutSignals::try_from(out)?;
        Ok(self.inner.decode(Some(packet), signals, false)?)
    }

    /// Rebuild the frame *before* `next_packet` from the in-band FEC data it carries, writing
    /// exactly `out.len()` samples (the lost frame's duration). Without FEC data in the packet
    /// libopus falls back to concealment.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        let packet = audiopus::packet::Packet::try_from(next_packet)?;
        let signals = audiopus::MutSignals::try_from(out)?;
        Ok(self.inner.decode(Some(packet), signals, true)?)
    }

    /// Packet-loss concealment: extrapolate `out.len()` samples (a multiple of 2.5 ms).
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        let signals = audiopus::MutSignals::try_from(out)?;
        Ok(self.inner.decode(None, signals, false)?)
    }

    /// Forget all state (after a stream restart).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        Ok(self.inner.reset_state()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::Tone;

    fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
        let (mut s, mut n) = (0f64, 0f64);
        for (&a, &b) in reference.iter().zip(test) {
            s += f64::from(a).powi(2);
            n += (f64::from(a) - f64::from(b)).powi(2);
        }
        10.0 * (s / n.max(1.0)).log10()
    }

    fn round_trip(rate: SampleRate, frame: FrameDuration, bitrate: u32) -> f64 {
        let config = CodecConfig {
            rate,
            frame,
            bitrate,
            ..CodecConfig::default()
        };
        let mut enc = OpusEncoder::new(&config).unwrap();
        let mut dec = OpusDecoder::new(rate).unwrap();
        let n = frame.samples(rate);
        let seconds = 1;
        let input = Tone::new(rate.hz(), 440.0, 0.3).take_samples(rate.hz() as usize * seconds);
        let mut output = Vec::new();
        let mut packet = [0u8; MAX_PACKET];
        let mut pcm = vec![0i16; n];
        for chunk in input.chunks_exact(n) {
            let len = enc.encode(chunk, &mut packet).unwrap();
            assert!(len > 2, "no DTX without DTX");
            assert_eq!(
                crate::opus_packet::packet_ticks(&packet[..len]).unwrap(),
                frame.ticks()
            );
            let got = dec.decode(&packet[..len], &mut pcm).unwrap();
            assert_eq!(got, n);
            output.extend_from_slice(&pcm);
        }
        // Compare after the codec's delay.
        let delay = enc.lookahead().unwrap();
        let skip = rate.hz() as usize / 10;
        snr_db(&input[skip..input.len() - delay], &output[skip + delay..])
    }

    #[test]
    fn wideband_and_fullband_round_trips() {
        for (rate, frame) in [
            (SampleRate::Wideband, FrameDuration::Ms20),
            (SampleRate::Wideband, FrameDuration::Ms40),
            (SampleRate::Wideband, FrameDuration::Ms60),
            (SampleRate::Wideband, FrameDuration::Ms80),
            (SampleRate::Wideband, FrameDuration::Ms120),
            (SampleRate::Fullband, FrameDuration::Ms20),
        ] {
            let snr = round_trip(rate, frame, 24_000);
            // CELT (fullband) does not match waveforms as closely as SILK.
            let min = if rate == SampleRate::Fullband {
                6.0
            } else {
                10.0
            };
            assert!(snr > min, "{rate:?} {frame:?}: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn hostile_packets_are_errors() {
        let mut dec = OpusDecoder::new(SampleRate::Wideband).unwrap();
        let mut pcm = [0i16; 320];
        assert!(dec.decode(&[], &mut pcm).is_err());
        // Code 3 with an impossible frame count.
        assert!(dec.decode(&[0xFB, 0x3F, 1, 2, 3], &mut pcm).is_err());
        // Output too small for a 60 ms packet.
        assert!(dec.decode(&[11 << 3, 0, 0], &mut pcm).is_err());
        let mut enc = OpusEncoder::new(&CodecConfig::default()).unwrap();
        let mut out = [0u8; 100];
        assert!(matches!(
            enc.encode(&[0; 33], &mut out),
            Err(CodecError::FrameSize { .. })
        ));
    }

    #[test]
    fn fec_packets_carry_lbrr_and_rebuild_the_lost_frame() {
        let rate = SampleRate::Wideband;
        // libopus 1.3 codes wideband FEC for a low loss hint from about 23 kbit/s.
        let mut enc = OpusEncoder::new(&CodecConfig {
            bitrate: 24_000,
            ..CodecConfig::default()
        })
        .unwrap();
        let mut input = crate::audio::synth::speechlike(rate.hz(), 2.0);
        input.truncate(32000);
        let mut packets = Vec::new();
        let mut buf = [0u8; MAX_PACKET];
        for (i, chunk) in input.chunks_exact(320).enumerate() {
            if i == 20 {
                enc.set_fec(true, 20).unwrap();
            }
            let n = enc.encode(chunk, &mut buf).unwrap();
            packets.push(buf[..n].to_vec());
        }
        let lbrr: Vec<bool> = packets
            .iter()
            .map(|p| crate::opus_packet::has_lbrr(p))
            .collect();
        assert!(lbrr[..20].iter().all(|&b| !b), "no LBRR with a 0 % hint");
        let with = lbrr[22..].iter().filter(|&&b| b).count();
        // Every active frame (the signal pauses a quarter of the time).
        assert!(with > 45, "LBRR in {with} of {} packets", lbrr.len() - 22);
        // Lose packet 50: rebuilding it from packet 51's FEC beats concealment.
        let decode_with = |recover: &dyn Fn(&mut OpusDecoder, &mut [i16])| {
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut out = Vec::new();
            let mut pcm = [0i16; 320];
            for (i, p) in packets.iter().enumerate() {
                if i == 50 {
                    recover(&mut dec, &mut pcm);
                } else {
                    dec.decode(p, &mut pcm).unwrap();
                }
                out.extend_from_slice(&pcm);
            }
            out
        };
        let clean = decode_with(&|d, pcm| {
            d.decode(&packets[50], pcm).unwrap();
        });
        let fec = decode_with(&|d, pcm| {
            d.decode_fec(&packets[51], pcm).unwrap();
        });
        let plc = decode_with(&|d, pcm| {
            d.conceal(pcm).unwrap();
        });
        let span = 50 * 320..52 * 320;
        let fec_snr = snr_db(&clean[span.clone()], &fec[span.clone()]);
        let plc_snr = snr_db(&clean[span.clone()], &plc[span]);
        assert!(
            fec_snr > plc_snr + 3.0,
            "FEC {fec_snr:.1} dB vs PLC {plc_snr:.1} dB"
        );
    }

    #[test]
    fn dtx_makes_tiny_packets_in_silence() {
        let config = CodecConfig {
            dtx: true,
            ..CodecConfig::default()
        };
        let mut enc = OpusEncoder::new(&config).unwrap();
        let silence = [0i16; 320];
        let mut out = [0u8; MAX_PACKET];
        let sizes: Vec<usize> = (0..50)
            .map(|_| enc.encode(&silence, &mut out).unwrap())
            .collect();
        assert!(
            sizes[20..].iter().filter(|&&n| n <= 2).count() > 20,
            "{sizes:?}"
        );
    }
}
