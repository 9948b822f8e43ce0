//! Inner message decoder: never panics; what decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::wire::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let mut out = bytes::BytesMut::new();
        m.encode(&mut out);
        assert_eq!(&out[..], data);
    }
});
