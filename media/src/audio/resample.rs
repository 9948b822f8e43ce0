//! A streaming windowed-sinc resampler for any pair of rates (device rate to codec rate and
//! back), written here to keep the dependency tree small.
//!
//! Band-limited interpolation (Smith's method): each output sample is a dot product of the
//! input around its position with a Kaiser-windowed sinc (β = 8.6, 16 zero crossings per side,
//! cut off at 95 % of the lower Nyquist frequency), taken from a table of 256 phases with
//! linear interpolation between neighbouring phases. Stop-band rejection is about 80 dB, the
//! pass band is flat to 0.1 dB up to 90 % of the lower Nyquist frequency; the delay is the
//! filter's half-length (16 zero crossings, 1 ms at 16 kHz).

const ZERO_CROSSINGS: usize = 16;
const PHASES: usize = 256;
const KAISER_BETA: f64 = 8.6;

/// Converts a stream of mono samples from one rate to another.
#[derive(Debug, Clone)]
pub struct Resampler {
    in_rate: u32,
    out_rate: u32,
    /// Input samples per output sample.
    step: f64,
    /// Taps on each side of the output position.
    half: usize,
    /// (PHASES + 1) rows of 2 * half coefficients.
    table: Vec<f32>,
    /// Pending input (with `half` samples of history before the read position).
    buf: Vec<f32>,
    /// Read position in `buf`.
    pos: f64,
}

fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..50 {
        term *= (x / (2.0 * k as f64)).powi(2);
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    sum
}

impl Resampler {
    /// A resampler from `in_rate` to `out_rate` (both nonzero; a zero is taken as 1).
    pub fn new(in_rate: u32, out_rate: u32) -> Self {
        let (in_rate, out_rate) = (in_rate.max(1), out_rate.max(1));
        let ratio = f64::from(out_rate) / f64::from(in_rate);
        let cutoff = ratio.min(1.0) * 0.95;
        let half = (ZERO_CROSSINGS as f64 / cutoff).ceil() as usize;
        let taps = 2 * half;
        let mut table = vec![0f32; (PHASES + 1) * taps];
        let i0_beta = bessel_i0(KAISER_BETA);
        for p in 0..=PHASES {
            let frac = p as f64 / PHASES as f64;
            let row = &mut table[p * taps..(p + 1) * taps];
            let mut sum = 0.0;
            let mut coefs = vec![0f64; taps];
            for (k, c) in coefs.iter_mut().enumerate() {
                // Tap k sits at input index n - half + 1 + k; its distance from the output.
                let tau = frac + half as f64 - 1.0 - k as f64;
                let x = tau / half as f64;
                if x.abs() >= 1.0 {
                    continue;
                }
                let w = bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta;
                let arg = std::f64::consts::PI * cutoff * tau;
                let sinc = if arg.abs() < 1e-12 {
                    1.0
                } else {
                    arg.sin() / arg
                };
                *c = cutoff * sinc * w;
                sum += *c;
            }
            for (r, c) in row.iter_mut().zip(&coefs) {
                *r = (c / sum) as f32;
            }
        }
        Self {
            in_rate,
            out_rate,
            step: f64::from(in_rate) / f64::from(out_rate),
            half,
            table,
            buf: vec![0.0; half],
            pos: half as f64,
        }
    }

    /// Input rate.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Output rate.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// How long the resampler waits for future input, in output samples: its latency. The
    /// output is not shifted in time (output sample `k` is the input at `k * in / out`).
    pub fn latency(&self) -> usize {
        (self.half as f64 / self.step).round() as usize
    }

    /// Resample `input` (f32, full scale ±1 or any scale), appending to `out`.
    pub fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.in_rate == self.out_rate {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        let taps = 2 * self.half;
        loop {
            let n = self.pos.floor();
            let start = n as usize + 1 - self.half.min(n as usize + 1);
            if n as usize + self.half >= self.buf.len() {
                break;
            }
            let frac = (self.pos - n) * PHASES as f64;
            let p = (frac.floor() as usize).min(PHASES - 1);
            let t = (frac - p as f64) as f32;
            let (r0, r1) = (
                &self.table[p * taps..(p + 1) * taps],
                &self.table[(p + 1) * taps..(p + 2) * taps],
            );
            let x = &self.buf[start..start + taps];
            let mut acc = 0f32;
            for ((&a, &b), &s) in r0.iter().zip(r1).zip(x) {
                acc += (a + (b - a) * t) * s;
            }
            out.push(acc);
            self.pos += self.step;
        }
        // Drop input no future output needs.
        let keep_from = (self.pos.floor() as usize + 1).saturating_sub(self.half);
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from as f64;
        }
    }

    /// Resample 16-bit samples, appending to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let f: Vec<f32> = input.iter().map(|&s| f32::from(s)).collect();
        let mut o =
            Vec::with_capacity(f.len() * self.out_rate as usize / self.in_rate as usize + 2);
        self.process_f32(&f, &mut o);
        out.extend(
            o.into_iter()
                .map(|v| v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16),
        );
    }
}

/// Resample a whole signal; the output lines up with the input (its length is
/// `input.len() * out / in`, rounded down).
pub fn resample_all(input: &[i16], in_rate: u32, out_rate: u32) -> Vec<i16> {
    if in_rate == out_rate {
        return input.to_vec();
    }
    let mut r = Resampler::new(in_rate, out_rate);
    let want =
        (input.len() as u64 * u64::from(out_rate.max(1)) / u64::from(in_rate.max(1))) as usize;
    let mut out = Vec::with_capacity(want + r.latency());
    r.process(input, &mut out);
    let pad = vec![0i16; 2 * r.half + 1];
    r.process(&pad, &mut out);
    out.resize(want, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::Tone;

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    fn snr(reference: &[i16], test: &[i16]) -> f64 {
        let (mut s, mut n) = (0.0, 0.0);
        for (&a, &b) in reference.iter().zip(test) {
            s += f64::from(a).powi(2);
            n += (f64::from(a) - f64::from(b)).powi(2);
        }
        10.0 * (s / n.max(1e-9)).log10()
    }

    #[test]
    fn round_trip_48k_16k_is_transparent_in_band() {
        let tone = Tone::new(48_000, 1000.0, 0.5).take_samples(48_000);
        let down = resample_all(&tone, 48_000, 16_000);
        assert_eq!(down.len(), 16_000);
        let expect = Tone::new(16_000, 1000.0, 0.5).take_samples(16_000);
        let s = snr(&expect[200..15_800], &down[200..15_800]);
        assert!(s > 60.0, "48k -> 16k SNR {s:.1} dB");
        let up = resample_all(&down, 16_000, 48_000);
        let s = snr(&tone[600..47_400], &up[600..47_400]);
        assert!(s > 55.0, "round trip SNR {s:.1} dB");
    }

    #[test]
    fn rejects_what_would_alias() {
        // 10 kHz cannot exist at 16 kHz: it must be filtered, not folded to 6 kHz.
        let tone = Tone::new(48_000, 10_000.0, 0.5).take_samples(48_000);
        let down = resample_all(&tone, 48_000, 16_000);
        let ratio = rms(&down[500..15_500]) / rms(&tone);
        assert!(
            20.0 * ratio.log10() < -70.0,
            "{:.1} dB",
            20.0 * ratio.log10()
        );
    }

    #[test]
    fn streaming_in_odd_chunks_matches_one_call() {
        let tone = Tone::new(44_100, 440.0, 0.5).take_samples(44_100);
        let mut a = Resampler::new(44_100, 16_000);
        let mut one = Vec::new();
        a.process(&tone, &mut one);
        let mut b = Resampler::new(44_100, 16_000);
        let mut many = Vec::new();
        for chunk in tone.chunks(37) {
            b.process(chunk, &mut many);
        }
        assert_eq!(one, many);
        // 44.1k -> 16k yields 16000 samples per second, minus the filter's tail.
        assert!((15_900..=16_000).contains(&one.len()), "{}", one.len());
    }
}
