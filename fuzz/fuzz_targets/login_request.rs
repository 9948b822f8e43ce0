//! Login request decoder: never panics; what decodes re-encodes to a request that decodes to
//! the same value.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use natter_core::login::proto::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert!(Request::decode(&out) == Ok(req));
    }
});
