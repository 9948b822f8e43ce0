//! Certificate decoder and verifier: never panics; nothing random verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::crypto::{Certificate, UnixTime};
use natter_core::testkit::TestNetwork;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::decode(data) {
        assert_eq!(c.to_bytes(), data);
        let trusted = TestNetwork::new(1).trusted();
        assert!(c.verify(&trusted, UnixTime(1_767_225_600)).is_err());
    }
});
