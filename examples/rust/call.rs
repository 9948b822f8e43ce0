//! A call between two users on loopback with the `natter` crate: a login server and a super
//! node start, alice and bob join, alice calls bob with a test tone, bob answers with a
//! speech recording, they talk for two seconds and both print the call's statistics.
//!
//! `cargo run -p natter --example call`

use std::time::{Duration, Instant};

use natter::{Audio, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A login server (TLS 1.3, SQLite) in a temporary directory and a super node on
    // 127.0.0.1:0; alice and bob register, log in and join the network through it.
    let net = natter_fixtures::TestNet::start();
    let (alice, bob) = (net.client("alice"), net.client("bob"));
    let speech = concat!(env!("CARGO_MANIFEST_DIR"), "/../media/testdata/speech.wav");
    let wait = Duration::from_secs(10);

    let call = alice.call("bob", Audio::tone())?;
    let Some(Event::IncomingCall { call: incoming, .. }) = bob.events().iter().find(|e| {
        println!("bob:   {e}");
        matches!(e, Event::IncomingCall { .. })
    }) else {
        return Err("no call rang".into());
    };
    incoming.answer(Audio::wav(speech, None::<&str>))?;
    let mut connected = None;
    while let Ok(event) = alice.events().recv_timeout(wait) {
        println!("alice: {event}");
        match event {
            Event::CallConnected { .. } => connected = Some(Instant::now()),
            Event::CallStats { .. } if connected.is_some_and(|t| t.elapsed().as_secs() >= 2) => {
                call.hang_up()?
            }
            Event::CallEnded { .. } => break,
            _ => {}
        }
    }
    println!("alice's side: {}", call.stats()?);
    println!("bob's side:   {}", incoming.stats()?);
    match call.stats()?.audio {
        Some(a) if a.frames_received > 0 => Ok(()),
        _ => Err("no audio reached alice".into()),
    }
}
