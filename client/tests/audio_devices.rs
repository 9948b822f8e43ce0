//! Audio devices at run time, with real ALSA devices and no sound card: ALSA's `file` plugin
//! over its `null` device, defined in a private configuration (`ALSA_CONFIG_PATH`, set before
//! ALSA is first used in this process, which is why this file holds one test). bob's
//! speaker is switched mid-call from one device to another, and both files hear alice;
//! a device added to the configuration shows up as an event.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

use natter::{audio_devices, Audio, AudioConfig, CallError, Event};
use natter_fixtures::alsa::{sink, source, Microphone, Speaker, ALSA_CONF};
use natter_fixtures::{join, wait_for, TestNet};

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_call_switches_its_speaker_and_new_devices_are_reported() {
    if !Path::new(ALSA_CONF).exists() {
        eprintln!("skipped: no ALSA configuration ({ALSA_CONF}); install libasound2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.fifo"), dir.path().join("b.fifo"));
    let (speaker_a, speaker_b) = (Speaker::new(&a), Speaker::new(&b));
    // Two microphones: one hears silence, the other a 1 kHz tone.
    let (quiet, loud) = (dir.path().join("quiet.fifo"), dir.path().join("loud.fifo"));
    let _mics = (
        Microphone::try_new(&quiet, false).unwrap(),
        Microphone::try_new(&loud, true).unwrap(),
    );
    let mics = source("natter_quiet", &quiet) + &source("natter_loud", &loud);
    let conf = dir.path().join("natter.conf");
    std::fs::write(&conf, sink("natter_a", &a) + &sink("natter_b", &b) + &mics).unwrap();
    std::env::set_var(
        "ALSA_CONFIG_PATH",
        format!("{ALSA_CONF}:{}", conf.display()),
    );
    let devices = audio_devices().expect("listing devices");
    for name in ["natter_a", "natter_b"] {
        assert!(
            devices
                .iter()
                .any(|d| d.id == format!("alsa:{name}") && d.output),
            "{name} in {devices:?}"
        );
    }

    let net = TestNet::start();
    let alice = net.client("alice");
    let mut cfg = AudioConfig::default();
    cfg.complexity = 0;
    cfg.watch_devices = true;
    let bob = net.builder("bob").audio(cfg).build().unwrap();
    join(&bob, "bob");
    net.wait_joined(&bob);

    let call = alice
        .call(
            "bob",
            Audio::new(natter::AudioInput::Tone, natter::AudioOutput::App),
        )
        .unwrap();
    // Not a device call: nothing to switch.
    assert_eq!(call.set_microphone(None), Err(CallError::NotDeviceAudio));
    assert_eq!(
        call.set_speaker(Some("natter_b")),
        Err(CallError::NotDeviceAudio)
    );
    let incoming = match wait_for(&bob, |e| matches!(e, Event::IncomingCall { .. })) {
        Some(Event::IncomingCall { call, .. }) => call,
        other => panic!("no incoming call: {other:?}"),
    };
    // bob's speaker is natter_a, his microphone the quiet one.
    incoming
        .answer(Audio::new(
            natter::AudioInput::Device(Some("natter_quiet".into())),
            natter::AudioOutput::Device(Some("natter_a".into())),
        ))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || speaker_a.loud() > 8_000),
        "natter_a heard {} samples",
        speaker_a.loud()
    );
    assert_eq!(speaker_b.loud(), 0);
    // A device that does not exist: refused, the call keeps natter_a.
    assert!(matches!(
        incoming.set_speaker(Some("no-such-speaker")),
        Err(CallError::Device(_))
    ));
    // Mid-call, to natter_b: it hears alice from now on, natter_a no more.
    incoming.set_speaker(Some("natter_b")).unwrap();
    let a_then = speaker_a.loud();
    assert!(
        wait_until(Duration::from_secs(20), || speaker_b.loud() > 8_000),
        "natter_b heard {} samples",
        speaker_b.loud()
    );
    // natter_a was closed: what it still plays is what its pipe held (under a second).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let before = speaker_a.loud();
            std::thread::sleep(Duration::from_millis(1500));
            speaker_a.loud() == before
        }),
        "natter_a still playing: {a_then} -> {}",
        speaker_a.loud()
    );
    assert_eq!(incoming.stats().unwrap().state, natter::CallState::Active);

    // What alice hears of bob's microphone: silence, then (switched mid-call to the other
    // microphone) the tone.
    let heard_loud = |within: Duration, want: usize| {
        let (mut pcm, mut loud_samples) = ([0i16; 320], 0);
        wait_until(within, || {
            if let Ok(n) = call.pull_pcm(&mut pcm) {
                loud_samples += pcm[..n].iter().filter(|s| s.unsigned_abs() > 3000).count();
            }
            loud_samples > want
        });
        loud_samples
    };
    let before = heard_loud(Duration::from_secs(1), usize::MAX);
    assert!(
        before < 1_000,
        "alice heard {before} loud samples from the quiet microphone"
    );
    incoming.set_microphone(Some("natter_loud")).unwrap();
    let after = heard_loud(Duration::from_secs(20), 8_000);
    assert!(
        after > 8_000,
        "alice heard {after} loud samples after the switch"
    );

    // A device plugged in (here: added to the configuration) is reported.
    let c = dir.path().join("c.raw");
    std::fs::write(
        &conf,
        sink("natter_a", &a) + &sink("natter_b", &b) + &mics + &sink("natter_c", &c),
    )
    .unwrap();
    match wait_for(&bob, |e| matches!(e, Event::AudioDevicesChanged { .. })) {
        Some(Event::AudioDevicesChanged { added, removed }) => {
            assert!(added.iter().any(|d| d.id == "alsa:natter_c"), "{added:?}");
            assert!(removed.is_empty(), "{removed:?}");
        }
        other => panic!("no device change: {other:?}"),
    }
    call.hang_up().unwrap();
}
