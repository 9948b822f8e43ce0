//! The echo bench behind `natter media-echo` and `benches/echo.sh`: a far-end recording is
//! played into a synthetic room ([`EchoPath`]), its echo is added to a near-end recording
//! (silence for single talk), and the sum goes through the [`VoiceProcessor`] the way the
//! media thread runs it: every played frame to [`VoiceProcessor::render`], then the captured
//! frame through [`VoiceProcessor::capture`].
//!
//! It measures what the canceller leaves of the echo, window by window (echo return loss
//! enhancement, the echo's power in the microphone over the output's power, where only the
//! echo is there), and the processor's CPU time per 10 ms, next to the Opus encoder's on the
//! same audio as the reference. The output goes to a WAV file, so that double talk (the near
//! end speaking over the echo) can be scored with PESQ against the clean near end.

use std::time::{Duration, Instant};

use crate::audio::processing::{VoiceProcessing, VoiceProcessor};
use crate::audio::synth::{EchoPath, Room};
use crate::audio::AudioError;
use crate::sender::{MediaSender, SenderConfig};

/// The room and the processing of an echo run.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Sample rate of both recordings, Hz.
    pub rate: u32,
    /// The room between speaker and microphone.
    pub room: Room,
    /// Seed of the room's impulse response.
    pub seed: u64,
    /// When the near end starts speaking: the canceller has the far end alone until then.
    pub near_start: Duration,
    /// What runs on the microphone's signal.
    pub processing: VoiceProcessing,
}

impl Default for EchoConfig {
    /// The default [`Room`] (a laptop in an office); all three stages of processing.
    fn default() -> Self {
        Self {
            rate: 16_000,
            room: Room::default(),
            seed: 1,
            near_start: Duration::ZERO,
            processing: VoiceProcessing::ALL,
        }
    }
}

/// Window of the ERLE curve.
pub const WINDOW: Duration = Duration::from_millis(500);

/// The most a window's ERLE counts for, dB: when the output is (nearly) silent, the ratio
/// says how loud the echo was, not how well it was removed.
pub const ERLE_CAP_DB: f64 = 60.0;

/// What an echo run measured.
#[derive(Debug, Clone, Default)]
pub struct EchoResult {
    /// What the microphone heard: the near end plus the echo.
    pub mic: Vec<i16>,
    /// What the processing made of it: what the far end would hear.
    pub output: Vec<i16>,
    /// Echo return loss enhancement per [`WINDOW`] (start time in s, dB): the echo's energy
    /// over the output's (at most [`ERLE_CAP_DB`]), over the windows where the echo is loud
    /// enough to measure (within 30 dB of its loudest window) and the near end is silent.
    pub erle: Vec<(f64, f64)>,
    /// The start of the first window with at least 25 dB, s.
    pub first_25db: Option<f64>,
    /// The start of the first window from which every later one has at least 25 dB, s.
    pub steady_25db_from: Option<f64>,
    /// Processing time per 10 ms of audio (render and capture), µs.
    pub cpu_us_per_10ms: f64,
    /// The Opus encoder's time per 10 ms of the same audio (default settings), µs: the
    /// reference the processing's cost is read against.
    pub opus_us_per_10ms: f64,
}

/// Run `far` (played) and `near` (the near end's voice, from `cfg.near_start` on) through the
/// room and the processing, until both ended (the shorter padded with silence).
///
/// # Errors
/// [`AudioError::UnsupportedFormat`] when the processing does not take `cfg.rate`.
pub fn run(far: &[i16], near: &[i16], cfg: &EchoConfig) -> Result<EchoResult, AudioError> {
    let mut processor = VoiceProcessor::new(cfg.processing, cfg.rate, cfg.rate)?;
    let mut room = EchoPath::new(cfg.rate, &cfg.room, cfg.seed);
    let frame = (cfg.rate / 50) as usize;
    let mut out = EchoResult::default();
    let mut busy = Duration::ZERO;
    let start = (cfg.near_start.as_secs_f64() * f64::from(cfg.rate)) as usize;
    let len = far.len().max(start + near.len());
    let mut near_at = vec![0i16; len];
    near_at[start..start + near.len()].copy_from_slice(near);
    let mut far_at = far.to_vec();
    far_at.resize(len, 0);
    let mut echo_only = Vec::with_capacity(len);
    for (played, voice) in far_at.chunks_exact(frame).zip(near_at.chunks_exact(frame)) {
        let echo = room.echo(played);
        let mut mic: Vec<i16> = echo
            .iter()
            .zip(voice)
            .map(|(&e, &v)| e.saturating_add(v))
            .collect();
        out.mic.extend_from_slice(&mic);
        echo_only.extend_from_slice(&echo);
        let t0 = Instant::now();
        processor.render(played);
        processor.capture(&mut mic);
        busy += t0.elapsed();
        out.output.extend_from_slice(&mic);
    }
    let tens = (out.output.len() / (frame / 2)).max(1) as f64;
    out.cpu_us_per_10ms = busy.as_secs_f64() * 1e6 / tens;
    out.opus_us_per_10ms = opus_time(&out.output, frame)? * 1e6 / tens;
    out.erle = erle_curve(&echo_only, &out.output, &near_at, cfg.rate);
    out.first_25db = out.erle.iter().find(|w| w.1 >= 25.0).map(|w| w.0);
    out.steady_25db_from = match out.erle.iter().rposition(|w| w.1 < 25.0) {
        None => out.erle.first().map(|w| w.0),
        Some(i) => out.erle.get(i + 1).map(|w| w.0),
    };
    Ok(out)
}

/// Echo return loss enhancement per [`WINDOW`]: the echo's energy in the microphone over the
/// output's (at most [`ERLE_CAP_DB`]), where the echo is active (within 30 dB of its loudest
/// window) and the near end silent.
fn erle_curve(echo: &[i16], output: &[i16], near: &[i16], rate: u32) -> Vec<(f64, f64)> {
    let win = (WINDOW.as_secs_f64() * f64::from(rate)) as usize;
    let energy = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
    let windows: Vec<(f64, f64, f64)> = echo
        .chunks_exact(win)
        .zip(output.chunks_exact(win))
        .enumerate()
        .filter(|(i, _)| energy(near.get(i * win..(i + 1) * win).unwrap_or(&[])) == 0.0)
        .map(|(i, (e, o))| (i as f64 * WINDOW.as_secs_f64(), energy(e), energy(o)))
        .collect();
    let loudest = windows.iter().map(|w| w.1).fold(0.0, f64::max);
    windows
        .iter()
        .filter(|w| w.1 > loudest * 1e-3)
        .map(|&(t, e, o)| (t, (10.0 * (e / o.max(1.0)).log10()).min(ERLE_CAP_DB)))
        .collect()
}

/// Seconds the default encoder takes for `pcm`, in frames of `frame` samples.
fn opus_time(pcm: &[i16], frame: usize) -> Result<f64, AudioError> {
    let mut sender = MediaSender::new(SenderConfig::default())
        .map_err(|e| AudioError::Backend(format!("Opus: {e}")))?;
    let mut packet = Vec::new();
    let t0 = Instant::now();
    for f in pcm.chunks_exact(frame) {
        let _ = sender.encode(f, &mut packet);
    }
    Ok(t0.elapsed().as_secs_f64())
}

impl EchoResult {
    /// The figures as one line of JSON (without the audio).
    pub fn to_json(&self, cfg: &EchoConfig) -> serde_json::Value {
        let mut after_1s: Vec<f64> = self
            .erle
            .iter()
            .filter(|w| w.0 >= 1.0)
            .map(|w| w.1)
            .collect();
        after_1s.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            (!after_1s.is_empty())
                .then(|| after_1s[((after_1s.len() - 1) as f64 * p).round() as usize])
        };
        serde_json::json!({
            "delay_ms": cfg.room.delay_ms,
            "rt60_s": cfg.room.rt60,
            "drr_db": cfg.room.drr_db,
            "echo_gain": cfg.room.gain,
            "stages": cfg.processing.to_string(),
            "first_25db_s": self.first_25db,
            "steady_25db_from_s": self.steady_25db_from,
            "erle_median_after_1s_db": pct(0.5),
            "erle_p10_after_1s_db": pct(0.1),
            "erle_db": self.erle.iter().map(|&(t, db)| [t, (db * 10.0).round() / 10.0]).collect::<Vec<_>>(),
            "cpu_us_per_10ms": self.cpu_us_per_10ms,
            "opus_us_per_10ms": self.opus_us_per_10ms,
            "cpu_vs_opus": self.cpu_us_per_10ms / self.opus_us_per_10ms.max(1e-9),
        })
    }
}

/// Arguments of `natter media-echo`.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// The far end's speech (16 kHz mono WAV): what the speaker plays.
    #[arg(long)]
    pub far: std::path::PathBuf,
    /// The near end's speech (16 kHz mono WAV), for double talk; without it, single talk.
    #[arg(long)]
    pub near: Option<std::path::PathBuf>,
    /// When the near end starts speaking, s (the canceller hears the far end alone until
    /// then).
    #[arg(long, default_value_t = 0.0)]
    pub near_start: f64,
    /// Where to write what the processing made of the microphone's signal.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Where to write the microphone's signal (near end plus echo, unprocessed).
    #[arg(long)]
    pub mic: Option<std::path::PathBuf>,
    /// The echo's delay, ms.
    #[arg(long, default_value_t = 100)]
    pub delay_ms: u32,
    /// The room's reverberation time, s.
    #[arg(long, default_value_t = 0.3)]
    pub rt60: f64,
    /// The direct path's energy over the reverberation's, dB.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub drr_db: f64,
    /// The echo's level against what is played (amplitude ratio).
    #[arg(long, default_value_t = 0.3)]
    pub echo_gain: f64,
    /// Seed of the room.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The stages that run: some of `echo`, `noise`, `gain` (comma-separated), or `off`.
    #[arg(long, default_value = "echo,noise,gain")]
    pub stages: VoiceProcessing,
}

/// `natter media-echo`: run the bench and print its figures as JSON; returns the exit code.
#[cfg(feature = "cli")]
pub fn main(args: EchoArgs) -> i32 {
    use crate::audio::wav::{read_wav, write_wav};
    let cfg = EchoConfig {
        room: Room {
            delay_ms: args.delay_ms,
            rt60: args.rt60,
            drr_db: args.drr_db,
            gain: args.echo_gain,
        },
        seed: args.seed,
        near_start: Duration::from_secs_f64(args.near_start.clamp(0.0, 3600.0)),
        processing: args.stages,
        ..EchoConfig::default()
    };
    let load = |p: &std::path::Path| -> Result<Vec<i16>, String> {
        match read_wav(p) {
            Ok((rate, pcm)) if rate == cfg.rate => Ok(pcm),
            Ok((rate, _)) => Err(format!("{}: {rate} Hz, not 16000", p.display())),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    };
    let result = (|| -> Result<EchoResult, String> {
        let far = load(&args.far)?;
        let near = args
            .near
            .as_deref()
            .map(load)
            .transpose()?
            .unwrap_or_default();
        let r = run(&far, &near, &cfg).map_err(|e| e.to_string())?;
        for (path, pcm) in [(&args.output, &r.output), (&args.mic, &r.mic)] {
            if let Some(p) = path {
                write_wav(p, cfg.rate, pcm).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        Ok(r)
    })();
    match result {
        Ok(r) => {
            println!("{}", r.to_json(&cfg));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::speechlike;

    /// Single talk in the default room: the echo is 25 dB down within a second and mostly
    /// far below after; the near end alone (no far end) comes through.
    #[test]
    fn single_talk_echo_is_down_25_db_within_a_second() {
        let far = speechlike(16_000, 4.0);
        let r = run(&far, &[], &EchoConfig::default()).unwrap();
        let first = r.first_25db.expect("never 25 dB");
        assert!(first <= 1.0, "25 dB first at {first} s: {:?}", r.erle);
        let json = r.to_json(&EchoConfig::default());
        let median = json["erle_median_after_1s_db"].as_f64().unwrap();
        assert!(median > 30.0, "{json}");
        assert!(r.cpu_us_per_10ms > 0.0 && r.opus_us_per_10ms > 0.0);
        // A silent far end: the near end passes (the gain control may raise it, never mute
        // it).
        let near = speechlike(16_000, 2.0);
        let r = run(&vec![0; near.len()], &near, &EchoConfig::default()).unwrap();
        let p = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        let kept = p(&r.output[16_000..]) / p(&near[16_000..]);
        assert!(kept > 0.3, "near end kept {kept:.2} of its power");
    }
}
