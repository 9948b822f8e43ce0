//! WAV files through `hound`: a source (16-bit or float, mono or downmixed to mono, any rate)
//! and a sink (16-bit mono).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use super::{AudioError, AudioSink, AudioSource, SourceRead};

/// Reads a WAV file frame by frame, downmixing to mono.
pub struct WavSource {
    reader: hound::WavReader<BufReader<File>>,
    spec: hound::WavSpec,
    remaining: usize,
}

impl std::fmt::Debug for WavSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSource")
            .field("spec", &self.spec)
            .finish()
    }
}

impl WavSource {
    /// Open `path`. 8 to 32-bit integer and 32-bit float files are taken.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AudioError> {
        let reader = hound::WavReader::open(path)?;
        let spec = reader.spec();
        match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, 8..=32) | (hound::SampleFormat::Float, 32) => {}
            (f, b) => {
                return Err(AudioError::UnsupportedFormat(format!("{f:?} {b}-bit")));
            }
        }
        if spec.channels == 0 {
            return Err(AudioError::UnsupportedFormat("zero channels".into()));
        }
        let remaining = reader.len() as usize / usize::from(spec.channels);
        Ok(Self {
            reader,
            spec,
            remaining,
        })
    }

    /// Remaining length in (mono) samples.
    pub fn len(&self) -> usize {
        self.remaining
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_mono(&mut self) -> Result<Option<i16>, AudioError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let channels = usize::from(self.spec.channels);
        let mut sum = 0f64;
        for _ in 0..channels {
            let v = match self.spec.sample_format {
                hound::SampleFormat::Float => match self.reader.samples::<f32>().next() {
                    Some(v) => f64::from(v?) * 32768.0,
                    None => return Ok(None),
                },
                hound::SampleFormat::Int => match self.reader.samples::<i32>().next() {
                    Some(v) => {
                        let shift = i32::from(self.spec.bits_per_sample) - 16;
                        let v = f64::from(v?);
                        if shift >= 0 {
                            v / f64::from(1u32 << shift)
                        } else {
                            v * f64::from(1u32 << -shift)
                        }
                    }
                    None => return Ok(None),
                },
            };
            sum += v;
        }
        Ok(Some(
            (sum / channels as f64)
                .round()
                .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16,
        ))
    }

    /// Read everything left.
    pub fn read_all(&mut self) -> Result<Vec<i16>, AudioError> {
        let mut out = Vec::with_capacity(self.len());
        while let Some(s) = self.next_mono()? {
            out.push(s);
        }
        Ok(out)
    }
}

impl AudioSource for WavSource {
    fn sample_rate(&self) -> u32 {
        self.spec.sample_rate
    }

    /// Fills the frame; a last partial frame is padded with silence, then the source ends.
    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        if self.is_empty() {
            return Ok(SourceRead::Ended);
        }
        for s in frame.iter_mut() {
            *s = self.next_mono()?.unwrap_or(0);
        }
        Ok(SourceRead::Frame)
    }
}

/// Writes 16-bit mono WAV.
pub struct WavSink {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    rate: u32,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink").field("rate", &self.rate).finish()
    }
}

impl WavSink {
    /// Create (or truncate) `path` for 16-bit mono at `rate`.
    pub fn create(path: impl AsRef<Path>, rate: u32) -> Result<Self, AudioError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        Ok(Self {
            writer: Some(hound::WavWriter::create(path, spec)?),
            rate,
        })
    }
}

impl AudioSink for WavSink {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| AudioError::Backend("WAV sink already finished".into()))?;
        let mut i16w = w.get_i16_writer(frame.len() as u32);
        for &s in frame {
            i16w.write_sample(s);
        }
        Ok(i16w.flush()?)
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        if let Some(w) = self.writer.take() {
            w.finalize()?;
        }
        Ok(())
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        // Best effort: an explicit finish() reports errors.
        let _ = self.finish();
    }
}

/// Read a whole WAV file as mono samples; returns (sample rate, samples).
pub fn read_wav(path: impl AsRef<Path>) -> Result<(u32, Vec<i16>), AudioError> {
    let mut src = WavSource::open(path)?;
    let rate = src.sample_rate();
    Ok((rate, src.read_all()?))
}

/// Write `samples` as a 16-bit mono WAV file.
pub fn write_wav(path: impl AsRef<Path>, rate: u32, samples: &[i16]) -> Result<(), AudioError> {
    let mut sink = WavSink::create(path, rate)?;
    sink.write_frame(samples)?;
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::synth::Tone;

    #[test]
    fn wav_round_trip_frame_by_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let input = Tone::new(16_000, 300.0, 0.4).take_samples(16_000 + 100);
        let mut sink = WavSink::create(&path, 16_000).unwrap();
        for chunk in input.chunks(320) {
            sink.write_frame(chunk).unwrap();
        }
        sink.finish().unwrap();

        let mut src = WavSource::open(&path).unwrap();
        assert_eq!(src.sample_rate(), 16_000);
        assert_eq!(src.len(), input.len());
        let mut out = Vec::new();
        let mut frame = [0i16; 320];
        while src.read_frame(&mut frame).unwrap() == SourceRead::Frame {
            out.extend_from_slice(&frame);
        }
        // The last partial frame is padded with silence.
        assert_eq!(out.len(), 51 * 320);
        assert_eq!(&out[..input.len()], &input[..]);
        assert!(out[input.len()..].iter().all(|&s| s == 0));
    }

    #[test]
    fn stereo_float_is_downmixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..10 {
            w.write_sample(0.5f32).unwrap();
            w.write_sample(-0.25f32).unwrap();
        }
        w.finalize().unwrap();
        let (rate, s) = read_wav(&path).unwrap();
        assert_eq!(rate, 48_000);
        assert_eq!(s, vec![4096; 10]);
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(matches!(
            WavSource::open("/nonexistent/x.wav"),
            Err(AudioError::Wav(_))
        ));
    }
}
