//! Login response decoder: never panics; what decodes re-encodes to a response that decodes to
//! the same value.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use natter_core::login::proto::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = Response::decode(data) {
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        assert!(Response::decode(&out) == Ok(resp));
    }
});
