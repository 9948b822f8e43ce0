//! The buddy list merges like a CRDT (any order, any number of times, the same list); its
//! decoder never panics and accepts only its own canonical encoding; a backup opens only
//! untouched.

use natter_core::contacts::{backup, BuddyList, ListKey};
use natter_core::crypto::{DeviceId, UserName};
use natter_core::rng::Rng;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use proptest::prelude::*;

/// One local edit: (user, what, value, label), applied at a time.
#[derive(Debug, Clone)]
enum Edit {
    Contact(u8, bool),
    Block(u8, bool),
    Nickname(u8, u8),
    Group(u8, u8, bool),
}

fn user(n: u8) -> UserName {
    UserName::parse(&format!("user{}", n % 6)).unwrap()
}

fn apply(list: &mut BuddyList, edit: &Edit, now_ms: u64) {
    let _ = match *edit {
        Edit::Contact(u, v) => list.set_contact(&user(u), v, now_ms),
        Edit::Block(u, v) => list.set_blocked(&user(u), v, now_ms),
        Edit::Nickname(u, n) => list.set_nickname(&user(u), &format!("nick{}", n % 4), now_ms),
        Edit::Group(u, g, v) => list.set_group(&user(u), &format!("group{}", g % 3), v, now_ms),
    };
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u8>(), any::<bool>()).prop_map(|(u, v)| Edit::Contact(u, v)),
        (any::<u8>(), any::<bool>()).prop_map(|(u, v)| Edit::Block(u, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(u, n)| Edit::Nickname(u, n)),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(u, g, v)| Edit::Group(u, g, v)),
    ]
}

/// A step of the history: device `d` (of three) edits at a clock that may lag, or device `d`
/// takes device `e`'s list.
#[derive(Debug, Clone)]
enum Step {
    Edit(u8, Edit, u16),
    Sync(u8, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<u8>(), edit(), any::<u16>()).prop_map(|(d, e, t)| Step::Edit(d, e, t)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(d, e)| Step::Sync(d, e)),
    ]
}

proptest! {
    #[test]
    fn devices_converge_whatever_the_order(steps in prop::collection::vec(step(), 0..60)) {
        let mut devices: Vec<BuddyList> =
            (1..=3u8).map(|d| BuddyList::new(DeviceId([d; 16]))).collect();
        for s in &steps {
            match s {
                Step::Edit(d, e, t) => apply(&mut devices[usize::from(d % 3)], e, u64::from(*t)),
                Step::Sync(d, e) => {
                    let other = devices[usize::from(e % 3)].clone();
                    devices[usize::from(d % 3)].merge(&other);
                }
            }
        }
        // Merging is commutative and idempotent...
        let (a, b) = (devices[0].clone(), devices[1].clone());
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert_eq!(ab.encode().unwrap(), ba.encode().unwrap());
        let once = ab.encode().unwrap();
        prop_assert!(!ab.merge(&b));
        prop_assert_eq!(ab.encode().unwrap(), once);
        // ... and associative: every exchange order ends with the same list.
        let mut left = devices[0].clone();
        left.merge(&devices[1]);
        left.merge(&devices[2]);
        let mut right = devices[2].clone();
        let mut mid = devices[1].clone();
        mid.merge(&devices[0]);
        right.merge(&mid);
        prop_assert_eq!(left.encode().unwrap(), right.encode().unwrap());
        // The encoding round-trips.
        let bytes = left.encode().unwrap();
        let back = BuddyList::decode(&bytes, DeviceId([9; 16]), u64::MAX).unwrap();
        prop_assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn decoding_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(list) = BuddyList::decode(&bytes, DeviceId([1; 16]), u64::MAX) {
            prop_assert_eq!(list.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn a_corrupted_byte_is_refused_or_decodes_to_another_list(
        steps in prop::collection::vec((any::<u8>(), edit(), any::<u16>()), 1..20),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let mut list = BuddyList::new(DeviceId([1; 16]));
        for (_, e, t) in &steps {
            apply(&mut list, e, u64::from(*t));
        }
        let mut bytes = list.encode().unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(other) = BuddyList::decode(&bytes, DeviceId([1; 16]), u64::MAX) {
            prop_assert_eq!(other.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn a_backup_opens_only_untouched(
        steps in prop::collection::vec((edit(), any::<u16>()), 0..20),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let net = TestNetwork::new(3);
        let alice = net.identity("alice");
        let mut list = BuddyList::new(alice.certificate.device);
        for (e, t) in &steps {
            apply(&mut list, e, u64::from(*t));
        }
        let key = ListKey([7; 32]);
        let sealed = backup::seal(&list, 1, &key, &alice.device, &alice.certificate, TEST_WALL, &mut Rng::from_seed(1)).unwrap();
        let name = UserName::parse("alice").unwrap();
        let open = |b: &[u8]| backup::open(b, &name, &key, &net.trusted(), 0, DeviceId([2; 16]), TEST_WALL);
        prop_assert_eq!(open(&sealed).unwrap().list.encode().unwrap(), list.encode().unwrap());
        let mut altered = sealed.clone();
        altered[at.index(sealed.len())] ^= flip;
        prop_assert!(open(&altered).is_err());
        prop_assert!(open(&sealed[..cut.index(sealed.len())]).is_err());
    }

    #[test]
    fn opening_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let net = TestNetwork::new(3);
        let name = UserName::parse("alice").unwrap();
        prop_assert!(backup::open(&bytes, &name, &ListKey([7; 32]), &net.trusted(), 0, DeviceId([2; 16]), TEST_WALL).is_err());
    }
}
