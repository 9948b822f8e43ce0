//! Synthetic sources: tones and silence, and a speech-like test signal.

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
}
