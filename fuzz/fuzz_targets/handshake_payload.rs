//! Handshake payload decoder: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::crypto::HandshakePayload;

fuzz_target!(|data: &[u8]| {
    let _ = HandshakePayload::decode(data);
});
