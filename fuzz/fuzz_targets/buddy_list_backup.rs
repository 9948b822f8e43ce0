//! Buddy-list backup opener: never panics; nothing random opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::contacts::{backup, ListKey};
use natter_core::crypto::{DeviceId, UserName};
use natter_core::testkit::TestNetwork;

fuzz_target!(|data: &[u8]| {
    let user = UserName::parse("alice").unwrap();
    let trusted = TestNetwork::new(1).trusted();
    let opened = backup::open(
        data,
        &user,
        &ListKey([1; 32]),
        &trusted,
        0,
        DeviceId([1; 16]),
        natter_core::testkit::TEST_WALL,
    );
    assert!(opened.is_err());
});
