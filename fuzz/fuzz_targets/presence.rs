//! Presence-record decoder and verifier: never panics; what decodes re-encodes to the same
//! bytes; nothing random verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::crypto::UnixTime;
use natter_core::overlay::{PresenceRecord, DEFAULT_RETENTION};
use natter_core::testkit::TestNetwork;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = PresenceRecord::decode(data) {
        assert_eq!(r.to_bytes(), data);
        let trusted = TestNetwork::new(1).trusted();
        let now = UnixTime(1_767_225_600);
        assert!(r.verify(&trusted, now, DEFAULT_RETENTION, |_| false).is_err());
    }
});
