//! The cpal device path for real, without a sound card: ALSA's `file` plugin over its `null`
//! device, defined in a private ALSA configuration (`ALSA_CONFIG_PATH`). Capture reads a tone
//! from a raw file through ALSA, cpal and our queue; playback writes one through them into a
//! raw file. ALSA's `null` device is not paced in real time, so this checks data, not timing.
#![cfg(all(target_os = "linux", feature = "devices"))]

use std::time::{Duration, Instant};

use natter_media::audio::device::{list_devices, CaptureDevice, PlaybackDevice};
use natter_media::audio::synth::Tone;
use natter_media::audio::{AudioError, AudioSink, AudioSource, SourceRead};

const ALSA_CONF: &str = "/usr/share/alsa/alsa.conf";

/// The zero-crossing rate of the sound in `x`, and how many samples carried it. ALSA's `null`
/// device is not paced, so the stream underruns and comes out as runs of tone separated by
/// exact-zero silence (and the runs start anywhere, not on a window boundary); dropping the
/// exact zeros leaves the tone's samples back to back, since nothing in our path drops or
/// reorders them (`stats.dropped` is checked). Exact zeros inside the tone fall on its own
/// zero crossings, so dropping them changes no crossing.
fn crossing_rate(x: &[f32]) -> (f64, usize) {
    let sound: Vec<f32> = x.iter().copied().filter(|&v| v != 0.0).collect();
    let crossings = sound
        .windows(2)
        .filter(|p| (p[0] < 0.0) != (p[1] < 0.0))
        .count();
    (crossings as f64 / sound.len().max(1) as f64, sound.len())
}

#[test]
fn alsa_capture_and_playback_through_cpal() {
    if !std::path::Path::new(ALSA_CONF).exists() {
        eprintln!("skipped: no ALSA configuration ({ALSA_CONF}); install libasound2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let infile = dir.path().join("in.raw");
    let outfile = dir.path().join("out.raw");
    // A 1 kHz tone, 32-bit float (cpal's preferred format here), 16 kHz mono.
    let tone: Vec<u8> = (0..16_000 * 2)
        .flat_map(|i| {
            let v = 0.5 * (std::f32::consts::TAU * 1000.0 * i as f32 / 16_000.0).sin();
            v.to_le_bytes()
        })
        .collect();
    std::fs::write(&infile, tone).unwrap();
    let conf = dir.path().join("natter.conf");
    std::fs::write(
        &conf,
        format!(
            r#"pcm.natter_in {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{}"
    format "raw"
    hint {{ show on description "Natter test capture" }}
}}
pcm.natter_out {{
    type file
    slave.pcm "null"
    file "{}"
    format "raw"
    hint {{ show on description "Natter test playback" }}
}}
"#,
            infile.display(),
            outfile.display()
        ),
    )
    .unwrap();
    // Before ALSA is first used in this process (this file holds this one test).
    std::env::set_var(
        "ALSA_CONFIG_PATH",
        format!("{ALSA_CONF}:{}", conf.display()),
    );

    let devices = list_devices().expect("listing devices");
    assert!(
        devices.iter().any(|d| d.id == "alsa:natter_in" && d.input),
        "{devices:?}"
    );
    assert!(matches!(
        CaptureDevice::open(Some("no-such-device"), 16_000),
        Err(AudioError::DeviceNotFound { .. })
    ));
    // No sound card here: the default devices give a typed error (or work), never a panic.
    for result in [
        CaptureDevice::open(None, 16_000).map(|_| ()),
        PlaybackDevice::open(None, 16_000).map(|_| ()),
    ] {
        if let Err(e) = result {
            assert!(
                matches!(e, AudioError::NoDevice(_) | AudioError::Backend(_)),
                "{e:?}"
            );
            eprintln!("default device: {e}");
        }
    }

    // Capture: the tone comes out of the source, 1 kHz at 16 kHz.
    let mut cap = CaptureDevice::open(Some("natter_in"), 16_000).expect("opening capture");
    assert_eq!(cap.sample_rate(), 16_000);
    let mut frame = [0i16; 320];
    let mut got = Vec::new();
    let t = Instant::now();
    while got.len() < 16_000 && t.elapsed() < Duration::from_secs(5) {
        match cap.read_frame(&mut frame).unwrap() {
            SourceRead::Frame => got.extend(frame.iter().map(|&s| f32::from(s))),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    drop(cap);
    let (c, samples) = crossing_rate(&got);
    assert!(samples > 4_000, "captured {samples} samples of sound");
    assert!(
        (0.115..0.135).contains(&c),
        "1 kHz expected, crossing rate {c}"
    );

    // Playback: a 500 Hz tone written in 20 ms frames ends up in the file.
    let mut play = PlaybackDevice::open(Some("natter_out"), 16_000).expect("opening playback");
    let mut tone = Tone::new(16_000, 500.0, 0.5);
    for _ in 0..15 {
        play.write_frame(&tone.take_samples(320)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let stats = play.stats();
    drop(play);
    assert_eq!(stats.dropped, 0);
    let bytes = std::fs::read(&outfile).unwrap();
    let out: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (c, samples) = crossing_rate(&out);
    assert!(samples > 1_600, "played {samples} samples of sound");
    assert!(
        (0.055..0.07).contains(&c),
        "500 Hz expected, crossing rate {c}"
    );
}
