//! Echo cancellation, noise suppression and gain control of captured speech.
//!
//! A microphone next to a speaker hears the far end again; without help the far end hears
//! itself about 100 ms later. [`VoiceProcessor`] runs, in WebRTC's order:
//!
//! 1. a high-pass filter (WebRTC's: second-order Butterworth at 100 Hz) against DC and rumble;
//! 2. **echo cancellation**: AEC3, the echo canceller of current WebRTC, in its pure-Rust port
//!    [`sonora`] (BSD-3-Clause). It finds the echo's delay itself (up to about half a second)
//!    and adapts a linear filter plus a suppressor;
//! 3. **noise suppression**: RNNoise (Xiph's recurrent network, in its pure-Rust port
//!    [`nnnoiseless`], BSD-3-Clause), at 48 kHz through the engine's resampler;
//! 4. **gain control**: AGC2's adaptive digital gain and limiter, from [`sonora`], starting at
//!    0 dB rather than WebRTC's 15 (a gain from the first frame raises the echo the canceller
//!    has not learnt yet).
//!
//! Why these: one well-kept pure-Rust port gives AEC3 and AGC2 without a C++ toolchain or
//! `unsafe` outside `ffi/`; on the same signals it matches Google's C++ module (`benches/echo.sh`
//! runs both). Its noise suppressor and high-pass filter do not: on clean speech sonora 0.2's
//! noise suppressor costs 0.8 of wideband PESQ (4.5 to 3.7; the C++ one 0.05-0.15; its output
//! is one sample off WebRTC's) and its sixth-order high-pass filter 0.9, so those two come
//! from elsewhere: RNNoise costs clean speech nothing measurable (4.57).
//!
//! The far-end reference is what is *played*: the media thread hands every frame it writes to
//! the speaker to [`VoiceProcessor::render`], and every captured frame through
//! [`VoiceProcessor::capture`] before it is encoded. Both work in 10 ms pieces (the module's
//! unit); the engine's frames (20 to 120 ms) are whole multiples of it.

use std::collections::VecDeque;

use nnnoiseless::DenoiseState;
use sonora::config::{AdaptiveDigital, EchoCanceller, GainController2};
use sonora::{AudioProcessing, Config, StreamConfig};

use super::resample::Resampler;
use super::AudioError;

/// Which of the three stages run on captured audio ([`VoiceProcessor`]).
///
/// ```
/// use natter_media::audio::processing::VoiceProcessing;
/// assert!(VoiceProcessing::OFF.is_off());
/// assert!(VoiceProcessing::ALL.echo_cancellation);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VoiceProcessing {
    /// Remove what the microphone hears of the speaker (AEC3).
    pub echo_cancellation: bool,
    /// Attenuate background noise (fans, hum, street, keyboards; RNNoise).
    pub noise_suppression: bool,
    /// Bring speech to a steady level (AGC2's adaptive digital gain and limiter).
    pub gain_control: bool,
}

impl VoiceProcessing {
    /// Nothing: captured audio is sent as it is.
    pub const OFF: Self = Self {
        echo_cancellation: false,
        noise_suppression: false,
        gain_control: false,
    };
    /// All three stages: what a microphone and a speaker need.
    pub const ALL: Self = Self {
        echo_cancellation: true,
        noise_suppression: true,
        gain_control: true,
    };

    /// True when no stage runs.
    pub fn is_off(&self) -> bool {
        *self == Self::OFF
    }

    /// Its stages, as [`Display`](std::fmt::Display) writes them and
    /// [`FromStr`](std::str::FromStr) reads them: `echo`, `noise`, `gain`.
    const STAGES: [&'static str; 3] = ["echo", "noise", "gain"];

    fn stages(&self) -> [bool; 3] {
        [
            self.echo_cancellation,
            self.noise_suppression,
            self.gain_control,
        ]
    }

    fn from_stages([echo_cancellation, noise_suppression, gain_control]: [bool; 3]) -> Self {
        Self {
            echo_cancellation,
            noise_suppression,
            gain_control,
        }
    }
}

impl std::fmt::Display for VoiceProcessing {
    /// `off`, or the stages that run, comma-separated: `echo,noise,gain`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let on = Self::STAGES
            .iter()
            .zip(self.stages())
            .filter_map(|(name, on)| on.then_some(*name));
        for (i, name) in on.enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// A [`VoiceProcessing`] that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: voice processing is off, or some of echo,noise,gain")]
pub struct ParseProcessingError(pub String);

impl std::str::FromStr for VoiceProcessing {
    type Err = ParseProcessingError;

    /// `off` (or `none`), or a comma-separated list of `echo`, `noise`, `gain`.
    ///
    /// ```
    /// use natter_media::audio::processing::VoiceProcessing;
    /// let p: VoiceProcessing = "noise, echo".parse().unwrap();
    /// assert_eq!(p.to_string(), "echo,noise");
    /// assert!("reverb".parse::<VoiceProcessing>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut on = [false; 3];
        if matches!(s.trim(), "off" | "none") {
            return Ok(Self::OFF);
        }
        for stage in s.split(',').map(str::trim) {
            let i = Self::STAGES
                .iter()
                .position(|name| *name == stage)
                .ok_or_else(|| ParseProcessingError(stage.to_string()))?;
            on[i] = true;
        }
        Ok(Self::from_stages(on))
    }
}

/// What the echo canceller reports ([`VoiceProcessor::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessingStats {
    /// Echo return loss enhancement of AEC3's linear filter, its own estimate: how much
    /// quieter its filter makes the echo, in dB (`None`: echo cancellation off). It starts
    /// near 0 and climbs while the filter learns the room; the suppressor after the filter
    /// (and noise suppression) take the echo much further down than this says.
    pub erle_db: Option<f64>,
}

/// The audio processing of one call's capture path. See the [module documentation](self).
pub struct VoiceProcessor {
    cfg: VoiceProcessing,
    /// Removes DC and rumble from captured audio (when any stage runs).
    high_pass: HighPass,
    /// AEC3, and what it needs: samples in 10 ms of capture and of render, played samples
    /// short of a whole 10 ms piece (kept for the next call), a scratch piece.
    echo: Option<AudioProcessing>,
    capture_chunk: usize,
    render_chunk: usize,
    render_carry: Vec<i16>,
    out: Vec<i16>,
    denoise: Option<Denoiser>,
    /// AGC2 (a module of its own: it runs after the noise suppressor).
    gain: Option<AudioProcessing>,
}

impl std::fmt::Debug for VoiceProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceProcessor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// RNNoise at 48 kHz behind resamplers from and back to the capture rate, keeping the
/// samples in step: what comes out of a call is as long as what went in.
struct Denoiser {
    state: Box<DenoiseState<'static>>,
    /// To and from 48 kHz (`None` at 48 kHz).
    up: Option<Resampler>,
    down: Option<Resampler>,
    /// 48 kHz samples waiting for a whole RNNoise frame.
    pending: Vec<f32>,
    frame: Vec<f32>,
    scratch: Vec<f32>,
    /// Denoised samples at the capture rate, ready to hand out.
    ready: VecDeque<i16>,
}

impl Denoiser {
    const RATE: u32 = 48_000;

    fn new(rate: u32) -> Self {
        let resampler = |from, to| (from != to).then(|| Resampler::new(from, to));
        let up = resampler(rate, Self::RATE);
        // The up-sampler holds back its latency at first: that much silence in front lines
        // 10 ms of input up with a whole RNNoise frame, so none waits for the next call.
        let lead = up.as_ref().map_or(0, Resampler::latency);
        Self {
            state: DenoiseState::new(),
            up,
            down: resampler(Self::RATE, rate),
            pending: vec![0.0; lead],
            frame: vec![0.0; DenoiseState::FRAME_SIZE],
            scratch: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// Denoise `x` in place. What comes out lags what goes in by RNNoise's 10 ms plus the
    /// resamplers' latency (about 2 ms at 16 kHz); the first call makes up that lag with
    /// silence.
    fn process(&mut self, x: &mut [i16]) {
        self.scratch.clear();
        self.scratch.extend(x.iter().map(|&s| f32::from(s)));
        match &mut self.up {
            Some(up) => up.process_f32(&self.scratch, &mut self.pending),
            None => self.pending.extend_from_slice(&self.scratch),
        }
        let n = DenoiseState::FRAME_SIZE;
        let mut done = 0;
        while self.pending.len() - done >= n {
            self.state
                .process_frame(&mut self.frame, &self.pending[done..done + n]);
            done += n;
            self.scratch.clear();
            match &mut self.down {
                Some(down) => down.process_f32(&self.frame, &mut self.scratch),
                None => self.scratch.extend_from_slice(&self.frame),
            }
            self.ready.extend(
                self.scratch
                    .iter()
                    .map(|&v| v.round().clamp(-32768.0, 32767.0) as i16),
            );
        }
        self.pending.drain(..done);
        // Short (only while starting): the lag grows by silence, once.
        let missing = x.len().saturating_sub(self.ready.len());
        for (i, s) in x.iter_mut().enumerate() {
            *s = if i < missing {
                0
            } else {
                self.ready.pop_front().unwrap_or(0)
            };
        }
    }
}

/// A second-order Butterworth high-pass filter at 100 Hz (WebRTC's capture high-pass filter:
/// `[b, a] = butter(2, 100 / (rate / 2), 'high')`), direct form II transposed.
#[derive(Debug, Clone)]
struct HighPass {
    b: [f64; 3],
    a: [f64; 2],
    z: [f64; 2],
}

impl HighPass {
    fn new(rate: u32) -> Self {
        // The bilinear transform of the analogue prototype, prewarped at the cutoff.
        let k = (std::f64::consts::PI * 100.0 / f64::from(rate)).tan();
        let q = std::f64::consts::FRAC_1_SQRT_2;
        let norm = 1.0 / (1.0 + k / q + k * k);
        Self {
            b: [norm, -2.0 * norm, norm],
            a: [2.0 * (k * k - 1.0) * norm, (1.0 - k / q + k * k) * norm],
            z: [0.0; 2],
        }
    }

    fn process(&mut self, x: &mut [i16]) {
        for s in x {
            let v = f64::from(*s);
            let y = self.b[0] * v + self.z[0];
            self.z[0] = self.b[1] * v - self.a[0] * y + self.z[1];
            self.z[1] = self.b[2] * v - self.a[1] * y;
            *s = y.round().clamp(-32768.0, 32767.0) as i16;
        }
    }
}

impl VoiceProcessor {
    /// Processing for captured audio at `capture_rate` Hz, with what is played at
    /// `render_rate` Hz as the far-end reference (mono both).
    ///
    /// # Errors
    /// [`AudioError::UnsupportedFormat`] for a rate that is not a whole number of samples
    /// per 10 ms, or that the module does not take (it takes 8 to 48 kHz).
    pub fn new(
        cfg: VoiceProcessing,
        capture_rate: u32,
        render_rate: u32,
    ) -> Result<Self, AudioError> {
        for rate in [capture_rate, render_rate] {
            if !(8_000..=48_000).contains(&rate) || rate % 100 != 0 {
                return Err(AudioError::UnsupportedFormat(format!(
                    "voice processing at {rate} Hz"
                )));
            }
        }
        let capture = StreamConfig::new(capture_rate, 1);
        let render = StreamConfig::new(render_rate, 1);
        let module = |config: Config| {
            AudioProcessing::builder()
                .config(config)
                .capture_config(capture)
                .render_config(render)
                .build()
        };
        Ok(Self {
            cfg,
            high_pass: HighPass::new(capture_rate),
            echo: cfg.echo_cancellation.then(|| {
                module(Config {
                    echo_canceller: Some(EchoCanceller {
                        // The high-pass filter is ours (see the module documentation).
                        enforce_high_pass_filtering: false,
                        ..EchoCanceller::default()
                    }),
                    ..Config::default()
                })
            }),
            capture_chunk: capture.num_frames(),
            render_chunk: render.num_frames(),
            render_carry: Vec::new(),
            out: vec![0; capture.num_frames().max(render.num_frames())],
            denoise: cfg.noise_suppression.then(|| Denoiser::new(capture_rate)),
            gain: cfg.gain_control.then(|| {
                module(Config {
                    gain_controller2: Some(GainController2 {
                        // Start at 0 dB (WebRTC's default: 15) and climb at its 6 dB/s: a
                        // gain there from the first frame raises the echo the canceller has
                        // not learnt yet. benches/echo.sh, single talk, first 2 s: 15 dB of
                        // ERLE lost at 15; the echo steady 25 dB down after 1-2 s at 0
                        // instead of 2-4.5 s, and clean speech's PESQ 4.42 against 4.38.
                        adaptive_digital: Some(AdaptiveDigital {
                            initial_gain_db: 0.0,
                            ..AdaptiveDigital::default()
                        }),
                        ..GainController2::default()
                    }),
                    ..Config::default()
                })
            }),
        })
    }

    /// The stages that run.
    pub fn config(&self) -> VoiceProcessing {
        self.cfg
    }

    /// `played` is what the speaker plays now: the echo to expect.
    pub fn render(&mut self, played: &[i16]) {
        let Self {
            echo: Some(apm),
            render_chunk: n,
            render_carry: carry,
            out,
            ..
        } = self
        else {
            return;
        };
        let n = *n;
        let mut feed = |piece: &[i16]| {
            // Only a format mismatch fails, and the formats are fixed at construction.
            let _ = apm.process_render_i16(piece, &mut out[..piece.len()]);
        };
        let mut rest = played;
        if !carry.is_empty() {
            let take = (n - carry.len()).min(rest.len());
            carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if carry.len() < n {
                return;
            }
            feed(carry);
            carry.clear();
        }
        let mut pieces = rest.chunks_exact(n);
        for piece in &mut pieces {
            feed(piece);
        }
        carry.extend_from_slice(pieces.remainder());
    }

    /// Process one captured frame in place. A tail short of 10 ms (no engine frame has one)
    /// is left out of echo cancellation and gain control.
    pub fn capture(&mut self, frame: &mut [i16]) {
        if self.cfg.is_off() {
            return;
        }
        self.high_pass.process(frame);
        let n = self.capture_chunk;
        let mut run = |module: &mut Option<AudioProcessing>, frame: &mut [i16]| {
            let Some(module) = module else { return };
            for piece in frame.chunks_exact_mut(n) {
                let out = &mut self.out[..n];
                // Only a format mismatch fails, and the formats are fixed at construction.
                if module.process_capture_i16(piece, out).is_ok() {
                    piece.copy_from_slice(out);
                }
            }
        };
        run(&mut self.echo, frame);
        if let Some(d) = &mut self.denoise {
            d.process(frame);
        }
        run(&mut self.gain, frame);
    }

    /// What the echo canceller measured so far.
    pub fn stats(&self) -> ProcessingStats {
        let Some(apm) = &self.echo else {
            return ProcessingStats::default();
        };
        let s = apm.statistics();
        ProcessingStats {
            erle_db: s.echo_return_loss_enhancement,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::{speechlike, EchoPath, Room};

    fn power(x: &[f32]) -> f64 {
        x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64
    }

    #[test]
    fn rates_the_module_cannot_take_are_refused() {
        assert!(VoiceProcessor::new(VoiceProcessing::ALL, 16_000, 16_000).is_ok());
        for bad in [4_000, 96_000, 44_123] {
            assert!(VoiceProcessor::new(VoiceProcessing::ALL, bad, 16_000).is_err());
            assert!(VoiceProcessor::new(VoiceProcessing::ALL, 16_000, bad).is_err());
        }
    }

    /// WebRTC's 16 kHz coefficients (`high_pass_filter.cc`), and the response: -3 dB at
    /// 100 Hz, flat above 300 Hz, DC gone.
    #[test]
    fn the_high_pass_filter_is_webrtcs() {
        let h = HighPass::new(16_000);
        let want = ([0.97261, -1.94523, 0.97261], [-1.94448, 0.94598]);
        for (got, want) in h.b.iter().chain(&h.a).zip(want.0.iter().chain(&want.1)) {
            assert!((got - want).abs() < 1e-4, "{got} against {want}");
        }
        let gain_db = |freq: f64| {
            let mut h = HighPass::new(16_000);
            let mut x: Vec<i16> = (0..16_000)
                .map(|i| {
                    (10_000.0 * (std::f64::consts::TAU * freq * f64::from(i) / 16e3).sin()) as i16
                })
                .collect();
            h.process(&mut x);
            let rms = |x: &[i16]| {
                (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
            };
            20.0 * (rms(&x[8000..]) / (10_000.0 / 2f64.sqrt())).log10()
        };
        assert!((gain_db(100.0) + 3.0).abs() < 0.3, "{}", gain_db(100.0));
        assert!(gain_db(300.0) > -0.3 && gain_db(1000.0) > -0.1);
        let mut dc = vec![5000i16; 8000];
        HighPass::new(16_000).process(&mut dc);
        assert!(dc[4000..].iter().all(|v| v.abs() < 5));
    }

    #[test]
    fn off_leaves_audio_untouched() {
        let mut p = VoiceProcessor::new(VoiceProcessing::OFF, 16_000, 16_000).unwrap();
        let mut frame: Vec<i16> = (0..320).map(|i| (i * 37 % 2000) as i16 - 1000).collect();
        let before = frame.clone();
        p.render(&before);
        p.capture(&mut frame);
        assert_eq!(frame, before);
        assert_eq!(p.stats(), ProcessingStats::default());
    }

    /// The far end comes back through a room 100 ms late; after two seconds the canceller
    /// takes most of it out.
    #[test]
    fn echo_through_a_room_is_cancelled() {
        let rate = 16_000;
        let cfg = VoiceProcessing {
            echo_cancellation: true,
            ..VoiceProcessing::OFF
        };
        let mut p = VoiceProcessor::new(cfg, rate, rate).unwrap();
        let far = speechlike(rate, 3.0);
        let mut room = EchoPath::new(rate, &Room::default(), 1);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for (i, played) in far.chunks_exact(320).enumerate() {
            p.render(played);
            let mut mic = room.echo(played);
            if i >= 100 {
                before.extend(mic.iter().map(|&s| f32::from(s)));
            }
            p.capture(&mut mic);
            if i >= 100 {
                after.extend(mic.iter().map(|&s| f32::from(s)));
            }
        }
        let erle = 10.0 * (power(&before) / power(&after).max(1e-9)).log10();
        assert!(erle > 20.0, "ERLE {erle:.1} dB");
    }

    /// The noise suppressor takes steady noise out of a speech pause and keeps the frame
    /// count in step: every call returns as many samples as it took.
    #[test]
    fn noise_is_suppressed_and_samples_stay_in_step() {
        let cfg = VoiceProcessing {
            noise_suppression: true,
            ..VoiceProcessing::OFF
        };
        let mut p = VoiceProcessor::new(cfg, 16_000, 16_000).unwrap();
        let mut state = 12345u32;
        let mut noise = move || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as i16 % 2000
        };
        let (mut before, mut after) = (0.0, 0.0);
        for i in 0..300 {
            let mut frame: Vec<i16> = (0..320).map(|_| noise()).collect();
            let e = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            if i >= 100 {
                before += e(&frame);
            }
            p.capture(&mut frame);
            if i >= 100 {
                after += e(&frame);
            }
        }
        let db = 10.0 * (before / after.max(1.0)).log10();
        assert!(db > 15.0, "noise down {db:.1} dB");
    }

    /// Speech through the noise suppressor comes out 10-13 ms late (RNNoise's 10 ms and the
    /// resamplers'), whatever the frame size, and the delay does not grow.
    #[test]
    fn the_noise_suppressor_adds_about_12_ms() {
        let cfg = VoiceProcessing {
            noise_suppression: true,
            ..VoiceProcessing::OFF
        };
        let speech = speechlike(16_000, 3.0);
        for frame in [160, 320, 960] {
            let mut p = VoiceProcessor::new(cfg, 16_000, 16_000).unwrap();
            let mut out = speech.clone();
            for piece in out.chunks_exact_mut(frame) {
                p.capture(piece);
            }
            // The lag (samples) at which the output matches the input best, after a second.
            let at = |lag: usize| -> f64 {
                (16_000..40_000)
                    .map(|i| f64::from(speech[i]) * f64::from(out[i + lag]))
                    .sum()
            };
            let lag = (0..400).max_by(|&a, &b| at(a).total_cmp(&at(b))).unwrap();
            let ms = lag as f64 / 16.0;
            assert!(
                (10.0..=13.0).contains(&ms),
                "{frame}-sample frames: {ms} ms"
            );
            assert!(p.denoise.as_ref().unwrap().ready.len() < frame);
        }
    }

    /// Pieces of any length add up: a render call with 7 ms and then 13 ms of audio feeds the
    /// module the same two 10 ms pieces as one call with 20 ms.
    #[test]
    fn render_pieces_of_any_length_are_carried_over() {
        let mut p = VoiceProcessor::new(VoiceProcessing::ALL, 16_000, 16_000).unwrap();
        p.render(&[1; 112]);
        assert_eq!(p.render_carry.len(), 112);
        p.render(&[1; 208]);
        assert!(p.render_carry.is_empty());
        p.render(&[1; 330]);
        assert_eq!(p.render_carry.len(), 10);
    }
}
