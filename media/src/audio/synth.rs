//! Synthetic sources: tones and silence, a speech-like test signal, and a synthetic room that
//! echoes what is played (for testing echo cancellation).

use super::{AudioError, AudioSource, SourceRead};

/// A sine tone, endless unless limited with [`Tone::with_duration`].
#[derive(Debug, Clone)]
pub struct Tone {
    rate: u32,
    step: f64,
    phase: f64,
    amplitude: f64,
    remaining: Option<usize>,
}

impl Tone {
    /// A tone of `freq` Hz at `amplitude` (0 to 1 of full scale), sampled at `rate`.
    pub fn new(rate: u32, freq: f64, amplitude: f64) -> Self {
        Self {
            rate,
            step: std::f64::consts::TAU * freq / f64::from(rate.max(1)),
            phase: 0.0,
            amplitude: amplitude.clamp(0.0, 1.0) * f64::from(i16::MAX),
            remaining: None,
        }
    }

    /// End after `samples` samples.
    pub fn with_duration(mut self, samples: usize) -> Self {
        self.remaining = Some(samples);
        self
    }

    fn next_sample(&mut self) -> i16 {
        let s = (self.phase.sin() * self.amplitude).round() as i16;
        self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        s
    }

    /// The next `n` samples as a vector.
    pub fn take_samples(&mut self, n: usize) -> Vec<i16> {
        (0..n).map(|_| self.next_sample()).collect()
    }
}

impl AudioSource for Tone {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        if let Some(rem) = self.remaining.as_mut() {
            if *rem < frame.len() {
                return Ok(SourceRead::Ended);
            }
            *rem -= frame.len();
        }
        for s in frame.iter_mut() {
            *s = self.next_sample();
        }
        Ok(SourceRead::Frame)
    }
}

/// Digital silence, endless.
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    rate: u32,
}

impl Silence {
    /// Silence at `rate`.
    pub fn new(rate: u32) -> Self {
        Self { rate }
    }
}

impl AudioSource for Silence {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        frame.fill(0);
        Ok(SourceRead::Frame)
    }
}

/// A deterministic speech-like signal for tests: a gliding glottal pitch (100 to 180 Hz)
/// through two moving formant-like resonances, syllables of about 200 ms and short pauses.
pub fn speechlike(rate: u32, seconds: f64) -> Vec<i16> {
    let fs = f64::from(rate);
    let n = (seconds * fs) as usize;
    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f64;
    for i in 0..n {
        let t = i as f64 / fs;
        let pitch = 140.0 + 40.0 * (t * 1.7).sin();
        phase += pitch / fs;
        // Syllable envelope: 5 per second, every fourth one silent.
        let syl = (t * 5.0).fract();
        let voiced = (t * 5.0) as u64 % 4 != 3;
        let env = if voiced {
            (std::f64::consts::PI * syl).sin().powi(2)
        } else {
            0.0
        };
        let f1 = 500.0 + 200.0 * (t * 3.1).sin();
        let f2 = 1500.0 + 500.0 * (t * 2.3).cos();
        let mut s = 0.0;
        for h in 1..=30 {
            let f = pitch * f64::from(h);
            if f > fs / 2.0 - 200.0 {
                break;
            }
            let g1 = 1.0 / (1.0 + ((f - f1) / 120.0).powi(2));
            let g2 = 0.6 / (1.0 + ((f - f2) / 200.0).powi(2));
            s += (g1 + g2 + 0.02) * (std::f64::consts::TAU * phase * f64::from(h)).sin();
        }
        out.push((s * env * 6000.0).clamp(-32000.0, 32000.0) as i16);
    }
    out
}

/// A room between a speaker and a microphone, as [`EchoPath`] models it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// The echo's delay: playout and capture buffers plus the sound's flight, ms.
    pub delay_ms: u32,
    /// Reverberation time: the tail falls by 60 dB in this many seconds.
    pub rt60: f64,
    /// Direct-to-reverberant ratio: the direct path's energy over the tail's, dB (a phone or
    /// a laptop, speaker and microphone a few centimetres apart: 0 to 10 dB; a speakerphone
    /// across a meeting room: below 0).
    pub drr_db: f64,
    /// The echo's level against what is played, as an amplitude ratio (0.3: about 10 dB
    /// quieter).
    pub gain: f64,
}

impl Default for Room {
    /// A laptop in an office: 100 ms of delay, 300 ms of reverberation, as much energy in
    /// the tail as in the direct path, the echo 10 dB under what is played.
    fn default() -> Self {
        Self {
            delay_ms: 100,
            rt60: 0.3,
            drr_db: 0.0,
            gain: 0.3,
        }
    }
}

/// A synthetic room between a speaker and a microphone, for testing echo cancellation: what
/// is played comes back after the [`Room`]'s delay through a room impulse response: a direct
/// path and then reverberation, exponentially decaying noise (seeded: the same room every
/// time), scaled so that the echo's power is `gain`² times what was played.
#[derive(Debug, Clone)]
pub struct EchoPath {
    rir: Vec<f32>,
    /// The last `delay + rir.len()` played samples, a ring.
    history: Vec<f32>,
    at: usize,
    delay: usize,
}

impl EchoPath {
    /// `room` at `rate` Hz, its reverberation drawn from `seed`.
    pub fn new(rate: u32, room: &Room, seed: u64) -> Self {
        let fs = f64::from(rate);
        let len = ((room.rt60 * fs) as usize).max(2);
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            // xorshift64*: plenty for a synthetic room.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut rir: Vec<f64> = (0..len)
            .map(|k| {
                let t = k as f64 / fs;
                (2.0 * uniform() - 1.0) * (-6.9 * t / room.rt60).exp()
            })
            .collect();
        // The tail scaled to the direct path's energy (1) over the ratio.
        let tail = rir[1..].iter().map(|v| v * v).sum::<f64>().max(1e-12);
        let scale = (10f64.powf(-room.drr_db / 10.0) / tail).sqrt();
        rir.iter_mut().skip(1).for_each(|v| *v *= scale);
        rir[0] = 1.0;
        let norm = rir.iter().map(|v| v * v).sum::<f64>().sqrt();
        let delay = (u64::from(room.delay_ms) * u64::from(rate) / 1000) as usize;
        Self {
            rir: rir.iter().map(|v| (v / norm * room.gain) as f32).collect(),
            history: vec![0.0; delay + len],
            at: 0,
            delay,
        }
    }

    /// What the microphone hears of `played` (the samples the speaker plays now).
    pub fn echo(&mut self, played: &[i16]) -> Vec<i16> {
        let n = self.history.len();
        played
            .iter()
            .map(|&x| {
                self.history[self.at] = f32::from(x);
                // y[t] = sum over k of rir[k] * x[t - delay - k]
                let mut y = 0.0f32;
                let mut i = (self.at + n - self.delay) % n;
                for &h in &self.rir {
                    y += h * self.history[i];
                    i = if i == 0 { n - 1 } else { i - 1 };
                }
                self.at = (self.at + 1) % n;
                y.clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_has_its_frequency_and_ends() {
        let mut t = Tone::new(16_000, 1000.0, 0.5).with_duration(640);
        let mut frame = [0i16; 320];
        assert_eq!(t.read_frame(&mut frame).unwrap(), SourceRead::Frame);
        // 1 kHz at 16 kHz: 16 samples per period, zero crossings every 8.
        let crossings = frame
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((39..=41).contains(&crossings), "{crossings}");
        assert!(frame.iter().map(|s| s.unsigned_abs()).max().unwrap() > 16_000);
        assert_eq!(t.read_frame(&mut frame).unwrap(), SourceRead::Frame);
        assert_eq!(t.read_frame(&mut frame).unwrap(), SourceRead::Ended);
        let mut s = Silence::new(16_000);
        assert_eq!(s.read_frame(&mut frame).unwrap(), SourceRead::Frame);
        assert!(frame.iter().all(|&x| x == 0));
    }

    #[test]
    fn an_echo_path_delays_and_scales() {
        let room = Room {
            delay_ms: 100,
            rt60: 0.05,
            drr_db: 0.0,
            gain: 0.5,
        };
        let mut path = EchoPath::new(16_000, &room, 3);
        let mut click = vec![0i16; 3200];
        click[0] = 10_000;
        let heard = path.echo(&click);
        // Nothing for 100 ms (1600 samples), then the direct path, the loudest tap.
        assert!(heard[..1600].iter().all(|&s| s == 0));
        let loudest = (0..heard.len())
            .max_by_key(|&i| heard[i].unsigned_abs())
            .unwrap();
        assert_eq!(loudest, 1600);
        // The response's energy is gain² (0.25) of the click's.
        let energy: f64 = heard.iter().map(|&s| f64::from(s).powi(2)).sum();
        let ratio = energy / 1e8;
        assert!((ratio - 0.25).abs() < 0.01, "{ratio}");
        // The same seed is the same room.
        assert_eq!(EchoPath::new(16_000, &room, 3).echo(&click), heard);
        // As much energy in the tail as in the direct path (0 dB).
        let direct = f64::from(heard[1600]).powi(2);
        assert!((energy / direct - 2.0).abs() < 0.05, "{}", energy / direct);
    }
}
