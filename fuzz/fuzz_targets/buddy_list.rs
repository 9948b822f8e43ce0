//! Buddy-list decoder: never panics; what decodes re-encodes to the same bytes, and merging
//! it into itself changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::contacts::BuddyList;
use natter_core::crypto::DeviceId;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut list) = BuddyList::decode(data, DeviceId([1; 16]), u64::MAX) {
        assert_eq!(list.encode().unwrap(), data);
        let copy = list.clone();
        assert!(!list.merge(&copy));
    }
});
