//! STUN decoder: never panics; what decodes re-encodes to bytes that decode to the same
//! message (byte equality is not expected: padding bytes are ignored, FINGERPRINT optional).
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::wire::stun::Message;

fuzz_target!(|data: &[u8]| {
    let _ = natter_core::wire::classify(data);
    if let Ok(m) = Message::decode(data) {
        let _ = (m.mapped_address(), m.other_address(), m.response_origin());
        let _ = (m.change_request(), m.unknown_required());
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
    }
});
