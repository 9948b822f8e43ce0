//! Persisted host cache decoder (a file on disk another program may have damaged): never
//! panics, never holds more than its capacity, and what decodes survives a save and load.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::overlay::HostCache;

fuzz_target!(|data: &[u8]| {
    if let Ok(cache) = HostCache::decode(data) {
        assert!(cache.len() <= HostCache::CAPACITY);
        assert_eq!(HostCache::decode(&cache.encode()), Ok(cache));
    }
});
