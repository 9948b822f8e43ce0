//! Capture and playback devices through cpal (ALSA on Linux; CoreAudio, WASAPI elsewhere).
//!
//! A device runs its own callback thread (cpal's): the capture callback downmixes to mono,
//! resamples to the codec rate and pushes into a [`super::pcm`] queue; the playback
//! callback pulls from one and resamples to the device rate. The media thread sees only the
//! queue ends: [`CaptureDevice`] is an [`AudioSource`], [`PlaybackDevice`] an [`AudioSink`].
//! Where no device exists (no sound card, no sound server, a container) every call returns a
//! typed [`AudioError`], never a panic. Keep a device on the thread that opened it: cpal's
//! stream is not `Send` on every platform.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, SizedSample};

use super::pcm::{self, CaptureReader, PlaybackWriter, QueueStats};
use super::resample::Resampler;
use super::{AudioError, AudioSink, AudioSource, SourceRead};

/// How long the queues between a device and the media thread may grow: 200 ms.
const QUEUE_MS: u32 = 200;
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// One audio device as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human-readable name ([`CaptureDevice::open`] takes it, the id, or the id without its
    /// host prefix, e.g. `null` for `alsa:null`).
    pub name: String,
    /// The host's stable identifier.
    pub id: String,
    /// It can capture.
    pub input: bool,
    /// It can play.
    pub output: bool,
    /// It is the host's default input.
    pub default_input: bool,
    /// It is the host's default output.
    pub default_output: bool,
}

fn backend(e: impl std::fmt::Display) -> AudioError {
    AudioError::Backend(e.to_string())
}

fn device_name(d: &cpal::Device) -> String {
    d.description()
        .map(|desc| desc.name().to_string())
        .unwrap_or_else(|_| d.to_string())
}

fn device_id(d: &cpal::Device) -> String {
    d.id().map(|id| id.to_string()).unwrap_or_default()
}

/// List the host's devices.
pub fn list_devices() -> Result<Vec<DeviceInfo>, AudioError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| device_id(&d));
    let default_out = host.default_output_device().map(|d| device_id(&d));
    let mut out = Vec::new();
    for d in host.devices().map_err(backend)? {
        let id = device_id(&d);
        out.push(DeviceInfo {
            name: device_name(&d),
            input: d.supports_input(),
            output: d.supports_output(),
            default_input: default_in.as_deref() == Some(id.as_str()),
            default_output: default_out.as_deref() == Some(id.as_str()),
            id,
        });
    }
    Ok(out)
}

fn find(name: Option<&str>, input: bool) -> Result<cpal::Device, AudioError> {
    let host = cpal::default_host();
    let kind = if input { "input" } else { "output" };
    match name {
        None => {
            let d = if input {
                host.default_input_device()
            } else {
                host.default_output_device()
            };
            d.ok_or(AudioError::NoDevice(kind))
        }
        Some(name) => {
            let mut devices = host.devices().map_err(backend)?;
            devices
                .find(|d| {
                    let id = device_id(d);
                    let bare = id.split_once(':').map_or(id.as_str(), |(_, b)| b);
                    (device_name(d) == name || id == name || bare == name)
                        && if input {
                            d.supports_input()
                        } else {
                            d.supports_output()
                        }
                })
                .ok_or_else(|| AudioError::DeviceNotFound {
                    kind,
                    name: name.to_string(),
                })
        }
    }
}

/// Pick a stream configuration: f32 or i16 samples, the codec rate when the device has it
/// (no resampling), otherwise its default rate.
fn choose_config(
    device: &cpal::Device,
    input: bool,
    rate: u32,
) -> Result<(cpal::StreamConfig, SampleFormat), AudioError> {
    let ranges: Vec<_> = if input {
        device.supported_input_configs().map_err(backend)?.collect()
    } else {
        device
            .supported_output_configs()
            .map_err(backend)?
            .collect()
    };
    let usable = |f: SampleFormat| matches!(f, SampleFormat::F32 | SampleFormat::I16);
    let exact = ranges
        .iter()
        .filter(|r| usable(r.sample_format()) && r.contains_rate(rate))
        .min_by_key(|r| (r.channels(), r.sample_format() != SampleFormat::F32));
    if let Some(r) = exact {
        let c = (*r).with_sample_rate(rate);
        return Ok((c.config(), c.sample_format()));
    }
    let default = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(backend)?;
    if usable(default.sample_format()) {
        return Ok((default.config(), default.sample_format()));
    }
    let any = ranges
        .into_iter()
        .find(|r| usable(r.sample_format()))
        .ok_or_else(|| AudioError::Backend("no f32 or i16 stream format".into()))?;
    let c = any.with_max_sample_rate();
    Ok((c.config(), c.sample_format()))
}

type ErrorSlot = Arc<Mutex<Option<String>>>;

fn error_callback(slot: &ErrorSlot) -> impl FnMut(cpal::Error) + Send + 'static {
    let slot = slot.clone();
    move |e| {
        if let Ok(mut s) = slot.lock() {
            *s = Some(e.to_string());
        }
    }
}

fn take_error(slot: &ErrorSlot) -> Option<String> {
    slot.lock().ok().and_then(|mut s| s.take())
}

/// A microphone: an [`AudioSource`] of mono frames at the codec rate.
pub struct CaptureDevice {
    _stream: cpal::Stream,
    reader: CaptureReader,
    pusher: pcm::CapturePusher,
    name: String,
    device_rate: u32,
    errors: ErrorSlot,
}

impl std::fmt::Debug for CaptureDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureDevice")
            .field("name", &self.name)
            .field("device_rate", &self.device_rate)
            .finish_non_exhaustive()
    }
}

fn capture_callback<T>(
    channels: usize,
    mut resampler: Resampler,
    pusher: pcm::CapturePusher,
) -> impl FnMut(&[T], &cpal::InputCallbackInfo) + Send + 'static
where
    T: SizedSample + Send + 'static,
    f32: cpal::FromSample<T>,
{
    let (mut mono, mut out_f, mut out_i) = (Vec::new(), Vec::new(), Vec::new());
    move |data: &[T], _| {
        mono.clear();
        mono.extend(data.chunks(channels.max(1)).map(|frame| {
            frame
                .iter()
                .map(|&s| <f32 as cpal::FromSample<T>>::from_sample_(s))
                .sum::<f32>()
                / channels.max(1) as f32
        }));
        out_f.clear();
        resampler.process_f32(&mono, &mut out_f);
        out_i.clear();
        out_i.extend(
            out_f
                .iter()
                .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
        );
        pusher.push(&out_i);
    }
}

impl CaptureDevice {
    /// Open the input device called `name` (or the default one) and start capturing, delivering
    /// mono frames at `rate` (the codec rate).
    pub fn open(name: Option<&str>, rate: u32) -> Result<Self, AudioError> {
        let device = find(name, true)?;
        let (config, format) = choose_config(&device, true, rate)?;
        let channels = usize::from(config.channels);
        let device_rate = config.sample_rate;
        let (pusher, reader) = pcm::capture_channel(rate, (rate * QUEUE_MS / 1000) as usize);
        let errors: ErrorSlot = Arc::default();
        let resampler = Resampler::new(device_rate, rate);
        let stream = match format {
            SampleFormat::F32 => device.build_input_stream::<f32, _, _>(
                config,
                capture_callback::<f32>(channels, resampler, pusher.clone()),
                error_callback(&errors),
                Some(OPEN_TIMEOUT),
            ),
            _ => device.build_input_stream::<i16, _, _>(
                config,
                capture_callback::<i16>(channels, resampler, pusher.clone()),
                error_callback(&errors),
                Some(OPEN_TIMEOUT),
            ),
        }
        .map_err(backend)?;
        stream.play().map_err(backend)?;
        Ok(Self {
            _stream: stream,
            reader,
            pusher,
            name: device_name(&device),
            device_rate,
            errors,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate the device runs at (before resampling).
    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    /// Queue counters (samples captured, dropped because the media thread fell behind).
    pub fn stats(&self) -> QueueStats {
        self.pusher.stats()
    }
}

impl AudioSource for CaptureDevice {
    fn sample_rate(&self) -> u32 {
        self.reader.sample_rate()
    }

    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        if let Some(e) = take_error(&self.errors) {
            return Err(AudioError::Backend(e));
        }
        self.reader.read_frame(frame)
    }

    fn discard_backlog(&mut self, keep: usize) {
        self.reader.discard_backlog(keep);
    }
}

/// A speaker: an [`AudioSink`] of mono frames at the codec rate.
pub struct PlaybackDevice {
    _stream: cpal::Stream,
    writer: PlaybackWriter,
    puller: pcm::PlaybackPuller,
    name: String,
    device_rate: u32,
    errors: ErrorSlot,
}

impl std::fmt::Debug for PlaybackDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackDevice")
            .field("name", &self.name)
            .field("device_rate", &self.device_rate)
            .finish_non_exhaustive()
    }
}

fn playback_callback<T>(
    channels: usize,
    mut resampler: Resampler,
    puller: pcm::PlaybackPuller,
) -> impl FnMut(&mut [T], &cpal::OutputCallbackInfo) + Send + 'static
where
    T: SizedSample + cpal::FromSample<f32> + Send + 'static,
{
    let mut pending: std::collections::VecDeque<f32> = Default::default();
    let (mut chunk, mut chunk_f, mut resampled) = (Vec::new(), Vec::new(), Vec::new());
    let ratio = f64::from(resampler.in_rate()) / f64::from(resampler.out_rate());
    move |data: &mut [T], _| {
        let frames = data.len() / channels.max(1);
        while pending.len() < frames {
            let need = ((frames - pending.len()) as f64 * ratio).ceil() as usize + 1;
            chunk.resize(need, 0i16);
            puller.pull(&mut chunk);
            chunk_f.clear();
            chunk_f.extend(chunk.iter().map(|&s| f32::from(s) / 32768.0));
            resampled.clear();
            resampler.process_f32(&chunk_f, &mut resampled);
            pending.extend(&resampled);
        }
        for frame in data.chunks_mut(channels.max(1)) {
            let v = pending.pop_front().unwrap_or(0.0);
            for s in frame {
                *s = T::from_sample(v);
            }
        }
    }
}

impl PlaybackDevice {
    /// Open the output device called `name` (or the default one) and start playing what is
    /// written to it (mono frames at `rate`, the codec rate).
    pub fn open(name: Option<&str>, rate: u32) -> Result<Self, AudioError> {
        let device = find(name, false)?;
        let (config, format) = choose_config(&device, false, rate)?;
        let channels = usize::from(config.channels);
        let device_rate = config.sample_rate;
        let (writer, puller) = pcm::playback_channel(rate, (rate * QUEUE_MS / 1000) as usize);
        let errors: ErrorSlot = Arc::default();
        let resampler = Resampler::new(rate, device_rate);
        let stream = match format {
            SampleFormat::F32 => device.build_output_stream::<f32, _, _>(
                config,
                playback_callback::<f32>(channels, resampler, puller.clone()),
                error_callback(&errors),
                Some(OPEN_TIMEOUT),
            ),
            _ => device.build_output_stream::<i16, _, _>(
                config,
                playback_callback::<i16>(channels, resampler, puller.clone()),
                error_callback(&errors),
                Some(OPEN_TIMEOUT),
            ),
        }
        .map_err(backend)?;
        stream.play().map_err(backend)?;
        Ok(Self {
            _stream: stream,
            writer,
            puller,
            name: device_name(&device),
            device_rate,
            errors,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate the device runs at (after resampling).
    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    /// Samples written and not yet played.
    pub fn buffered(&self) -> usize {
        self.writer.buffered()
    }

    /// Queue counters (samples played, silence played on underrun).
    pub fn stats(&self) -> QueueStats {
        self.puller.stats()
    }
}

impl AudioSink for PlaybackDevice {
    fn sample_rate(&self) -> u32 {
        self.writer.sample_rate()
    }

    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        if let Some(e) = take_error(&self.errors) {
            return Err(AudioError::Backend(e));
        }
        self.writer.write_frame(frame)
    }

    fn write_silence(&mut self, samples: usize) -> Result<(), AudioError> {
        if let Some(e) = take_error(&self.errors) {
            return Err(AudioError::Backend(e));
        }
        self.writer.write_silence(samples)
    }
}
