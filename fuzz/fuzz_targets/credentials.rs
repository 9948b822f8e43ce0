//! Device-credentials decoder: never panics; what it accepts it writes back byte for byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::crypto::DeviceCredentials;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = DeviceCredentials::decode(data) {
        assert_eq!(c.to_bytes(), data);
    }
});
