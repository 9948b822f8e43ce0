//! Chat decoders and the channel opener: an envelope or an item that decodes re-encodes to the
//! same bytes; opening arbitrary bytes as an envelope never panics and never succeeds (nothing
//! random authenticates), and leaves the channels without a peer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::chat::{Channels, Envelope, Item};
use natter_core::rng::Rng;
use natter_core::testkit::{TestNetwork, TEST_WALL};

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        assert_eq!(item.to_bytes().expect("within its limits"), data);
    }
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.to_bytes(), data);
    }
    let net = TestNetwork::new(1);
    let bob = net.identity("bob");
    let mut channels = Channels::new(&bob.device, bob.certificate, TEST_WALL, &mut Rng::from_seed(2));
    // Addressed to bob, so the opener goes past its first check.
    let mut addressed = data.to_vec();
    if addressed.len() > 49 {
        addressed[33..49].copy_from_slice(&channels.keys().device().0);
    }
    for bytes in [data, &addressed[..]] {
        if let Ok(envelope) = Envelope::decode(bytes) {
            assert!(channels.open(&net.trusted(), TEST_WALL, &envelope).is_err());
        }
    }
    assert_eq!(channels.peers(), 0);
});
