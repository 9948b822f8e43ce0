//! Outer packet decoder: never panics; what decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::wire::packet::Packet;

fuzz_target!(|data: &[u8]| {
    let _ = natter_core::wire::classify(data);
    if let Ok(p) = Packet::decode(data) {
        let mut out = bytes::BytesMut::new();
        p.encode(&mut out);
        assert_eq!(&out[..], data);
    }
});
