//! One test suite for both account stores.
//!
//! The checks in [`suite`] are written against `&dyn AccountStore`; each runs twice, as
//! `sqlite_*` (a fresh file in a temporary directory) and as `postgres_*` (a fresh schema in
//! the database named by `NATTER_TEST_POSTGRES`, so the tests run in parallel on one server).
//! Without that variable the PostgreSQL tests print a SKIPPED line and pass, unless
//! `NATTER_REQUIRE_POSTGRES=1` is set (as `make test` does), when they fail.
//!
//! A throwaway server: `url=$(scripts/pg-test.sh start /tmp/natter-pg 55432 | tail -n1)`,
//! then `NATTER_TEST_POSTGRES=$url cargo test -p natter-transport --test store`, then
//! `scripts/pg-test.sh stop /tmp/natter-pg`.

use std::path::PathBuf;
use std::sync::Barrier;

use natter_core::crypto::{DeviceId, UnixTime, UserName};
use natter_server::store::postgres::PostgresStore;
use natter_server::store::sqlite::SqliteStore;
use natter_server::store::{
    AccountRecord, AccountStore, DeviceRecord, RequestAdded, Revocation, StoreError,
    StoredBuddyList,
};

/// Opens the store under test afresh (same file, same schema) each time it is called.
type Open<'a> = &'a (dyn Fn() -> Box<dyn AccountStore> + Sync);

fn name(s: &str) -> UserName {
    UserName::parse(s).expect("valid user name")
}

fn hash(tag: &str) -> String {
    format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdC{tag}$aGFzaC{tag}")
}

fn account(user: &str, tag: &str, at: u64) -> AccountRecord {
    AccountRecord {
        user: name(user),
        password_hash: hash(tag),
        created_at: UnixTime(at),
    }
}

fn device(user: &UserName, seed: u8, first_seen: u64) -> DeviceRecord {
    let signing_public = [seed; 32];
    DeviceRecord {
        user: user.clone(),
        device: DeviceId::from_signing_key(&signing_public),
        signing_public,
        dh_public: [seed ^ 0xa5; 32],
        first_seen: UnixTime(first_seen),
        last_seen: UnixTime(first_seen),
        revoked_at: None,
    }
}

fn all_revocations(s: &dyn AccountStore) -> Vec<Revocation> {
    s.revocations_since(0, usize::MAX).expect("revocations")
}

/// The checks, each against any [`AccountStore`].
mod suite {
    use super::*;

    pub fn accounts(s: &dyn AccountStore) {
        let alice = account("Alice", "a1", 1000);
        assert_eq!(alice.user.as_str(), "alice");
        s.create_account(&alice).expect("create");
        assert_eq!(
            s.account(&name("alice")).expect("lookup"),
            Some(alice.clone())
        );
        assert_eq!(
            s.account(&name("ALICE")).expect("lookup"),
            Some(alice.clone())
        );

        // The same name in another case is the same name.
        let again = account("aLiCe", "other", 2000);
        assert!(matches!(
            s.create_account(&again),
            Err(StoreError::NameTaken)
        ));
        assert_eq!(
            s.account(&name("alice")).expect("lookup"),
            Some(alice.clone())
        );

        assert_eq!(s.account(&name("bob")).expect("lookup"), None);
        s.create_account(&account("bob", "b1", 1001))
            .expect("create bob");

        // Password change: only the hash moves; the value is stored verbatim.
        let new_hash = "$argon2id$v=19$m=65536,t=3,p=4$'quoted\"salt$NEW;--";
        s.set_password_hash(&name("Alice"), new_hash)
            .expect("set hash");
        let got = s.account(&name("alice")).expect("lookup").expect("exists");
        assert_eq!(got.password_hash, new_hash);
        assert_eq!(got.created_at, UnixTime(1000));
        assert_eq!(
            s.account(&name("bob"))
                .expect("lookup")
                .map(|a| a.password_hash),
            Some(hash("b1"))
        );

        assert!(matches!(
            s.set_password_hash(&name("carol"), "x"),
            Err(StoreError::NoSuchAccount)
        ));
        assert!(matches!(
            s.delete_account(&name("carol"), UnixTime(5)),
            Err(StoreError::NoSuchAccount)
        ));
    }

    pub fn devices(s: &dyn AccountStore) {
        let alice = name("alice");
        let d1 = device(&alice, 1, 100);
        assert!(matches!(
            s.upsert_device(&d1),
            Err(StoreError::NoSuchAccount)
        ));
        s.create_account(&account("alice", "a", 1)).expect("create");

        let d2 = device(&alice, 2, 50);
        s.upsert_device(&d1).expect("insert d1");
        s.upsert_device(&d2).expect("insert d2");
        assert_eq!(s.device(&d1.device).expect("lookup"), Some(d1.clone()));
        assert_eq!(
            s.devices(&alice).expect("list"),
            vec![d2.clone(), d1.clone()],
            "first_seen order"
        );

        // A renewal: last_seen moves, first_seen stays.
        let renewed = DeviceRecord {
            first_seen: UnixTime(999),
            last_seen: UnixTime(200),
            ..d1.clone()
        };
        s.upsert_device(&renewed).expect("update d1");
        let got = s.device(&d1.device).expect("lookup").expect("exists");
        assert_eq!(got.first_seen, UnixTime(100));
        assert_eq!(got.last_seen, UnixTime(200));
        assert_eq!(got.revoked_at, None);
        assert_eq!(s.devices(&alice).expect("list").len(), 2);

        assert_eq!(s.device(&DeviceId([7; 16])).expect("lookup"), None);
        assert_eq!(s.devices(&name("nobody")).expect("list"), vec![]);
    }

    pub fn device_key_in_use(s: &dyn AccountStore) {
        let alice = name("alice");
        let bob = name("bob");
        s.create_account(&account("alice", "a", 1)).expect("create");
        s.create_account(&account("bob", "b", 1)).expect("create");
        let d = device(&alice, 9, 100);
        s.upsert_device(&d).expect("insert");
        // Another device, of another account or the same one, with d's X25519 key.
        for user in [&bob, &alice] {
            let copy = DeviceRecord {
                user: user.clone(),
                dh_public: d.dh_public,
                ..device(user, 10, 200)
            };
            assert!(matches!(s.upsert_device(&copy), Err(StoreError::KeyInUse)));
            assert_eq!(s.device(&copy.device).expect("lookup"), None);
        }
        // An existing device moving to another device's key is refused too.
        let other = device(&alice, 11, 300);
        s.upsert_device(&other).expect("insert");
        let moved = DeviceRecord {
            dh_public: d.dh_public,
            ..other.clone()
        };
        assert!(matches!(s.upsert_device(&moved), Err(StoreError::KeyInUse)));
        assert_eq!(s.device(&other.device).expect("lookup"), Some(other));
        // A revoked device keeps its key for good.
        s.revoke_device(&alice, &d.device, UnixTime(400))
            .expect("revoke");
        let reuse = DeviceRecord {
            dh_public: d.dh_public,
            ..device(&bob, 12, 500)
        };
        assert!(matches!(s.upsert_device(&reuse), Err(StoreError::KeyInUse)));
        // The device itself renews with its own key.
        let d2 = device(&bob, 13, 600);
        s.upsert_device(&d2).expect("insert");
        s.upsert_device(&DeviceRecord {
            last_seen: UnixTime(700),
            ..d2.clone()
        })
        .expect("renew");
    }

    pub fn device_owned_elsewhere(s: &dyn AccountStore) {
        let alice = name("alice");
        let bob = name("bob");
        s.create_account(&account("alice", "a", 1)).expect("create");
        s.create_account(&account("bob", "b", 1)).expect("create");
        let d = device(&alice, 9, 100);
        s.upsert_device(&d).expect("insert");

        let stolen = DeviceRecord {
            user: bob.clone(),
            last_seen: UnixTime(500),
            ..d.clone()
        };
        assert!(matches!(
            s.upsert_device(&stolen),
            Err(StoreError::DeviceOwnedElsewhere)
        ));
        assert_eq!(s.device(&d.device).expect("lookup"), Some(d.clone()));
        assert_eq!(s.devices(&bob).expect("list"), vec![]);
        // Nor can bob revoke it.
        assert!(matches!(
            s.revoke_device(&bob, &d.device, UnixTime(600)),
            Err(StoreError::NoSuchDevice)
        ));
        assert_eq!(
            s.device(&d.device).expect("lookup").map(|d| d.revoked_at),
            Some(None)
        );
    }

    pub fn revoke(s: &dyn AccountStore) {
        let alice = name("alice");
        s.create_account(&account("alice", "a", 1)).expect("create");
        s.create_account(&account("bob", "b", 1)).expect("create");
        let d1 = device(&alice, 1, 100);
        let d2 = device(&alice, 2, 110);
        s.upsert_device(&d1).expect("insert");
        s.upsert_device(&d2).expect("insert");

        let s1 = s
            .revoke_device(&alice, &d1.device, UnixTime(300))
            .expect("revoke");
        let got = s.device(&d1.device).expect("lookup").expect("exists");
        assert_eq!(got.revoked_at, Some(UnixTime(300)));

        // Idempotent: same serial, first revocation time kept, listed once.
        let again = s
            .revoke_device(&alice, &d1.device, UnixTime(400))
            .expect("again");
        assert_eq!(again, s1);
        let got = s.device(&d1.device).expect("lookup").expect("exists");
        assert_eq!(got.revoked_at, Some(UnixTime(300)));
        assert_eq!(
            all_revocations(s),
            vec![Revocation {
                serial: s1,
                device: d1.device,
                user: alice.clone(),
                revoked_at: UnixTime(300),
            }]
        );

        // A renewal does not un-revoke.
        s.upsert_device(&DeviceRecord {
            last_seen: UnixTime(500),
            ..d1.clone()
        })
        .expect("renew revoked");
        let got = s.device(&d1.device).expect("lookup").expect("exists");
        assert_eq!(got.revoked_at, Some(UnixTime(300)));
        assert_eq!(got.last_seen, UnixTime(500));

        for (user, dev) in [
            (name("bob"), d2.device),
            (name("nobody"), d2.device),
            (alice.clone(), DeviceId([3; 16])),
        ] {
            assert!(
                matches!(
                    s.revoke_device(&user, &dev, UnixTime(1)),
                    Err(StoreError::NoSuchDevice)
                ),
                "{user} {dev}"
            );
        }

        let s2 = s
            .revoke_device(&alice, &d2.device, UnixTime(600))
            .expect("revoke d2");
        assert!(s2 > s1);
        assert_eq!(all_revocations(s).len(), 2);
    }

    pub fn revocations_paging(s: &dyn AccountStore) {
        let alice = name("alice");
        s.create_account(&account("alice", "a", 1)).expect("create");
        assert_eq!(all_revocations(s), vec![]);
        let mut expected = Vec::new();
        for i in 0..7u8 {
            let d = device(&alice, 10 + i, 100 + u64::from(i));
            s.upsert_device(&d).expect("insert");
            let at = UnixTime(1000 + u64::from(i));
            let serial = s.revoke_device(&alice, &d.device, at).expect("revoke");
            expected.push(Revocation {
                serial,
                device: d.device,
                user: alice.clone(),
                revoked_at: at,
            });
        }
        assert!(expected.windows(2).all(|w| w[0].serial < w[1].serial));

        let mut paged = Vec::new();
        let mut since = 0;
        let mut pages = 0;
        loop {
            let page = s.revocations_since(since, 3).expect("page");
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            since = page.last().map(|r| r.serial).unwrap_or(since);
            paged.extend(page);
            pages += 1;
        }
        assert_eq!(pages, 3);
        assert_eq!(paged, expected);

        assert_eq!(
            s.revocations_since(expected[2].serial, 100).expect("since"),
            expected[3..].to_vec()
        );
        assert_eq!(s.revocations_since(0, 0).expect("limit 0"), vec![]);
        assert_eq!(
            s.revocations_since(expected[6].serial, 10)
                .expect("after last"),
            vec![]
        );
        assert_eq!(
            s.revocations_since(u64::MAX, 10).expect("huge since"),
            vec![]
        );
        assert_eq!(
            s.revocations_since(0, usize::MAX).expect("huge limit"),
            expected
        );
    }

    pub fn delete_account(s: &dyn AccountStore) {
        let alice = name("alice");
        s.create_account(&account("alice", "a", 1)).expect("create");
        s.create_account(&account("bob", "b", 1)).expect("create");
        let d1 = device(&alice, 1, 100);
        let d2 = device(&alice, 2, 110);
        let d3 = device(&alice, 3, 120);
        let b1 = device(&name("bob"), 4, 130);
        for d in [&d1, &d2, &d3, &b1] {
            s.upsert_device(d).expect("insert");
        }
        let r1 = s
            .revoke_device(&alice, &d1.device, UnixTime(150))
            .expect("revoke");

        s.delete_account(&name("ALICE"), UnixTime(200))
            .expect("delete");
        assert_eq!(s.account(&alice).expect("lookup"), None);
        assert_eq!(s.devices(&alice).expect("list"), vec![]);
        for d in [&d1, &d2, &d3] {
            assert_eq!(s.device(&d.device).expect("lookup"), None);
        }
        // Bob is untouched.
        assert!(s.account(&name("bob")).expect("lookup").is_some());
        assert_eq!(s.device(&b1.device).expect("lookup"), Some(b1.clone()));

        // Its live devices were revoked, the revoked one not twice; the list survives.
        let after: Vec<_> = s
            .revocations_since(r1, 10)
            .expect("since")
            .into_iter()
            .map(|r| (r.device, r.user, r.revoked_at))
            .collect();
        assert_eq!(
            after,
            vec![
                (d2.device, alice.clone(), UnixTime(200)),
                (d3.device, alice.clone(), UnixTime(200)),
            ]
        );
        let all = all_revocations(s);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].serial, r1);
        assert!(matches!(
            s.delete_account(&alice, UnixTime(210)),
            Err(StoreError::NoSuchAccount)
        ));
        assert!(matches!(
            s.revoke_device(&alice, &d2.device, UnixTime(210)),
            Err(StoreError::NoSuchDevice)
        ));

        // The name is free again; the old revocations stay.
        s.create_account(&account("Alice", "new", 300))
            .expect("re-create");
        assert_eq!(s.devices(&alice).expect("list"), vec![]);
        assert_eq!(all_revocations(s), all);

        // A device id freed by the deletion can be certified anew, and then revoked anew.
        let d2_again = device(&alice, 2, 310);
        s.upsert_device(&d2_again).expect("insert again");
        assert_eq!(s.device(&d2.device).expect("lookup"), Some(d2_again));
        let r = s
            .revoke_device(&alice, &d2.device, UnixTime(320))
            .expect("revoke again");
        assert!(r > all[2].serial);
        assert_eq!(
            s.revoke_device(&alice, &d2.device, UnixTime(330))
                .expect("idempotent"),
            r
        );
        assert_eq!(all_revocations(s).len(), 4);
    }

    pub fn time_range(s: &dyn AccountStore) {
        let max = UnixTime(i64::MAX as u64);
        let far = AccountRecord {
            created_at: max,
            ..account("alice", "a", 0)
        };
        s.create_account(&far).expect("i64::MAX fits");
        assert_eq!(s.account(&far.user).expect("lookup"), Some(far));
        let too_far = AccountRecord {
            created_at: UnixTime(u64::MAX),
            ..account("bob", "b", 0)
        };
        assert!(matches!(
            s.create_account(&too_far),
            Err(StoreError::Backend(_))
        ));
        assert_eq!(s.account(&name("bob")).expect("lookup"), None);
    }

    pub fn reopen(open: Open<'_>) {
        let alice = name("alice");
        let bob = name("bob");
        let (accounts, devices, revocations) = {
            let s = open();
            s.create_account(&account("alice", "a", 1)).expect("create");
            s.create_account(&account("bob", "b", 2)).expect("create");
            s.set_password_hash(&alice, &hash("a2")).expect("set");
            let d1 = device(&alice, 1, 100);
            let d2 = device(&alice, 2, 110);
            s.upsert_device(&d1).expect("insert");
            s.upsert_device(&d2).expect("insert");
            s.upsert_device(&device(&bob, 3, 120)).expect("insert");
            s.revoke_device(&alice, &d1.device, UnixTime(130))
                .expect("revoke");
            s.delete_account(&bob, UnixTime(140)).expect("delete");
            (
                (s.account(&alice).expect("a"), s.account(&bob).expect("b")),
                s.devices(&alice).expect("list"),
                all_revocations(s.as_ref()),
            )
        };
        assert_eq!(revocations.len(), 2);

        let s = open();
        assert_eq!(
            (s.account(&alice).expect("a"), s.account(&bob).expect("b")),
            accounts
        );
        assert_eq!(s.devices(&alice).expect("list"), devices);
        assert_eq!(all_revocations(s.as_ref()), revocations);
        // Serials go on increasing after the reopen.
        let d2 = device(&alice, 2, 110);
        let serial = s
            .revoke_device(&alice, &d2.device, UnixTime(150))
            .expect("revoke");
        assert!(serial > revocations[1].serial);
        assert!(matches!(
            s.create_account(&account("ALICE", "x", 3)),
            Err(StoreError::NameTaken)
        ));
    }

    /// Two stores (two login servers) register the same name at the same moment, in
    /// different cases: exactly one wins, every round.
    pub fn concurrent_registration(a: &dyn AccountStore, b: &dyn AccountStore) {
        for round in 0..50 {
            let barrier = Barrier::new(2);
            let upper = account(&format!("Racer{round}"), &format!("A{round}"), 1);
            let lower = account(&format!("racer{round}"), &format!("B{round}"), 1);
            let (ra, rb) = std::thread::scope(|scope| {
                let ta = scope.spawn(|| {
                    barrier.wait();
                    a.create_account(&upper)
                });
                let tb = scope.spawn(|| {
                    barrier.wait();
                    b.create_account(&lower)
                });
                (ta.join().expect("thread a"), tb.join().expect("thread b"))
            });
            let winner = match (&ra, &rb) {
                (Ok(()), Err(StoreError::NameTaken)) => &upper,
                (Err(StoreError::NameTaken), Ok(())) => &lower,
                other => panic!("round {round}: expected one success and one NameTaken: {other:?}"),
            };
            assert_eq!(
                a.account(&winner.user).expect("lookup").as_ref(),
                Some(winner)
            );
            assert_eq!(
                b.account(&winner.user).expect("lookup").as_ref(),
                Some(winner)
            );
        }
    }

    /// Two stores revoke the same devices at the same moment: one serial per device, both
    /// told the same one, the list strictly increasing.
    pub fn concurrent_revocation(a: &dyn AccountStore, b: &dyn AccountStore) {
        let alice = name("alice");
        a.create_account(&account("alice", "a", 1)).expect("create");
        let devices: Vec<_> = (0..20u8).map(|i| device(&alice, i, u64::from(i))).collect();
        for d in &devices {
            b.upsert_device(d).expect("insert");
        }
        let barrier = Barrier::new(2);
        let revoke_all = |s: &dyn AccountStore| {
            barrier.wait();
            devices
                .iter()
                .map(|d| {
                    s.revoke_device(&alice, &d.device, UnixTime(100))
                        .expect("revoke")
                })
                .collect::<Vec<_>>()
        };
        let (sa, sb) = std::thread::scope(|scope| {
            let ta = scope.spawn(|| revoke_all(a));
            let tb = scope.spawn(|| revoke_all(b));
            (ta.join().expect("a"), tb.join().expect("b"))
        });
        assert_eq!(sa, sb);
        let list = all_revocations(a);
        assert_eq!(list.len(), devices.len());
        assert!(list.windows(2).all(|w| w[0].serial < w[1].serial));
        assert_eq!(list.iter().map(|r| r.serial).collect::<Vec<_>>(), sa);
    }

    /// One store deletes an account while another revokes its devices: no deadlock, and
    /// every device ends on the revocation list exactly once.
    pub fn concurrent_delete_and_revoke(a: &dyn AccountStore, b: &dyn AccountStore) {
        for round in 0..20u8 {
            let user = name(&format!("victim{round}"));
            a.create_account(&account(user.as_str(), "v", 1))
                .expect("create");
            let devices: Vec<_> = (0..5u8)
                .map(|i| device(&user, round * 8 + i, u64::from(i)))
                .collect();
            for d in &devices {
                a.upsert_device(d).expect("insert");
            }
            let barrier = Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    barrier.wait();
                    a.delete_account(&user, UnixTime(200)).expect("delete");
                });
                scope.spawn(|| {
                    barrier.wait();
                    for d in devices.iter().rev() {
                        match b.revoke_device(&user, &d.device, UnixTime(100)) {
                            Ok(_) | Err(StoreError::NoSuchDevice) => {}
                            Err(e) => panic!("revoke: {e}"),
                        }
                    }
                });
            });
            let mut revoked: Vec<_> = all_revocations(a)
                .into_iter()
                .filter(|r| r.user == user)
                .map(|r| r.device)
                .collect();
            revoked.sort();
            let mut want: Vec<_> = devices.iter().map(|d| d.device).collect();
            want.sort();
            assert_eq!(revoked, want, "round {round}");
            assert_eq!(a.account(&user).expect("lookup"), None);
        }
    }

    fn list(version: u64, backup: &[u8], envelope: &[u8]) -> StoredBuddyList {
        StoredBuddyList {
            version,
            backup: backup.to_vec(),
            envelope: envelope.to_vec(),
        }
    }

    pub fn buddy_lists(s: &dyn AccountStore) {
        let alice = name("alice");
        assert!(matches!(
            s.put_buddy_list(&alice, 0, &list(1, b"b1", b"e1")),
            Err(StoreError::NoSuchAccount)
        ));
        s.create_account(&account("alice", "a1", 1000))
            .expect("create");
        assert_eq!(s.buddy_list(&alice).expect("read"), None);
        // The first backup replaces "none" (version 0), and only that.
        assert!(!s
            .put_buddy_list(&alice, 3, &list(4, b"b1", b"e1"))
            .expect("put"));
        assert!(s
            .put_buddy_list(&alice, 0, &list(1, b"b1", b"e1"))
            .expect("put"));
        assert_eq!(
            s.buddy_list(&alice).expect("read"),
            Some(list(1, b"b1", b"e1"))
        );
        // A device that did not see version 1 is refused, and nothing changes.
        assert!(!s
            .put_buddy_list(&alice, 0, &list(2, b"stale", b"e9"))
            .expect("put"));
        // An empty envelope keeps the stored one; a new one replaces it.
        assert!(s
            .put_buddy_list(&alice, 1, &list(2, b"b2", b""))
            .expect("put"));
        assert_eq!(
            s.buddy_list(&alice).expect("read"),
            Some(list(2, b"b2", b"e1"))
        );
        assert!(s
            .put_buddy_list(&alice, 2, &list(3, b"b3", b"e2"))
            .expect("put"));
        assert_eq!(
            s.buddy_list(&alice).expect("read"),
            Some(list(3, b"b3", b"e2"))
        );
        // Out of the database's range: an error, not a wrapped number.
        assert!(s
            .put_buddy_list(&alice, 3, &list(u64::MAX, b"b", b"e"))
            .is_err());
        // The backup goes with the account.
        s.delete_account(&alice, UnixTime(2000)).expect("delete");
        s.create_account(&account("alice", "a2", 3000))
            .expect("create again");
        assert_eq!(s.buddy_list(&alice).expect("read"), None);
    }

    /// Two login servers store updates of one account's list at once: every update is
    /// stored or refused as a conflict, none is lost, and the versions never go back.
    pub fn concurrent_buddy_lists(a: &dyn AccountStore, b: &dyn AccountStore) {
        let alice = name("alice");
        a.create_account(&account("alice", "a1", 1000))
            .expect("create");
        let stored = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for s in [a, b] {
                let (alice, stored) = (&alice, &stored);
                scope.spawn(move || {
                    for _ in 0..50 {
                        let base = s.buddy_list(alice).expect("read").map_or(0, |l| l.version);
                        let next = list(base + 1, &(base + 1).to_be_bytes(), b"e");
                        if s.put_buddy_list(alice, base, &next).expect("put") {
                            stored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let last = a.buddy_list(&alice).expect("read").expect("stored");
        assert_eq!(last.version, stored.into_inner());
        assert_eq!(last.backup, last.version.to_be_bytes());
    }

    /// Requests wait for their recipient until deleted by them; a second one from the same
    /// sender replaces the first; senders and recipients have limits.
    pub fn contact_requests(s: &dyn AccountStore) {
        use natter_core::login::proto::{MAX_REQUESTS_SENT, MAX_REQUESTS_WAITING};
        let (alice, bob) = (name("alice"), name("bob"));
        assert!(matches!(
            s.add_contact_request(&alice, &bob, "hi", false, UnixTime(1)),
            Err(StoreError::NoSuchAccount)
        ));
        s.create_account(&account("alice", "a1", 1000))
            .expect("create");
        assert_eq!(
            s.add_contact_request(&alice, &bob, "hi", false, UnixTime(1))
                .expect("add"),
            RequestAdded::NoSuchRecipient
        );
        s.create_account(&account("bob", "b1", 1000))
            .expect("create");
        assert_eq!(
            s.add_contact_request(&alice, &bob, "hi", false, UnixTime(1))
                .expect("add"),
            RequestAdded::Stored
        );
        assert_eq!(
            s.add_contact_request(&alice, &bob, "hi again", true, UnixTime(2))
                .expect("add"),
            RequestAdded::Stored
        );
        let waiting = s.contact_requests(&bob, 10).expect("list");
        assert_eq!(waiting.len(), 1, "{waiting:?}");
        let first_id = waiting[0].id;
        assert_eq!(
            (
                waiting[0].from.as_str(),
                waiting[0].note.as_str(),
                waiting[0].sent_at
            ),
            ("alice", "hi again", UnixTime(2))
        );
        assert!(waiting[0].accepting);
        assert!(s.contact_requests(&alice, 10).expect("list").is_empty());
        // Replaced in place: the same id.
        s.add_contact_request(&alice, &bob, "third", false, UnixTime(3))
            .expect("add");
        assert_eq!(s.contact_requests(&bob, 10).expect("list")[0].id, first_id);
        // Only the recipient deletes it.
        s.delete_contact_requests(&alice, &[waiting[0].id])
            .expect("delete");
        assert_eq!(s.contact_requests(&bob, 10).expect("list").len(), 1);
        s.delete_contact_requests(&bob, &[waiting[0].id, 999_999])
            .expect("delete");
        assert!(s.contact_requests(&bob, 10).expect("list").is_empty());

        // A sender with many requests waiting is held back.
        for i in 0..MAX_REQUESTS_SENT {
            let u = name(&format!("user{i}"));
            s.create_account(&account(u.as_str(), "h", 1000))
                .expect("create");
            assert_eq!(
                s.add_contact_request(&alice, &u, "", false, UnixTime(3))
                    .expect("add"),
                RequestAdded::Stored
            );
        }
        assert_eq!(
            s.add_contact_request(&alice, &bob, "", false, UnixTime(4))
                .expect("add"),
            RequestAdded::SenderLimit
        );
        // A flood under many names fills no more than the recipient's limit.
        let mut full = 0;
        for i in 0..MAX_REQUESTS_WAITING + 5 {
            let u = name(&format!("flood{i}"));
            s.create_account(&account(u.as_str(), "h", 1000))
                .expect("create");
            match s
                .add_contact_request(&u, &bob, "buy now", false, UnixTime(5))
                .expect("add")
            {
                RequestAdded::Stored => {}
                RequestAdded::RecipientFull => full += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(full, 5);
        let listed = s.contact_requests(&bob, 1000).expect("list");
        assert_eq!(listed.len(), MAX_REQUESTS_WAITING);
        assert!(listed.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
        assert_eq!(s.contact_requests(&bob, 7).expect("list").len(), 7);
        // A month later the unanswered ones have left: both limits are free again.
        let later = UnixTime(5 + natter_core::login::proto::REQUEST_LIFETIME_SECS + 1);
        assert_eq!(
            s.add_contact_request(&alice, &bob, "still there?", false, later)
                .expect("add"),
            RequestAdded::Stored
        );
        assert_eq!(s.contact_requests(&bob, 1000).expect("list").len(), 1);
    }
}

// ---------------------------------------------------------------------------------------
// SQLite: a fresh file per test.

struct SqliteFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accounts.db");
        Self { _dir: dir, path }
    }

    fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.path).expect("open sqlite store")
    }
}

fn sqlite(check: fn(&dyn AccountStore)) {
    let file = SqliteFile::new();
    check(&file.open());
}

fn sqlite_pair(check: fn(&dyn AccountStore, &dyn AccountStore)) {
    let file = SqliteFile::new();
    check(&file.open(), &file.open());
}

#[test]
fn sqlite_accounts() {
    sqlite(suite::accounts);
}

#[test]
fn sqlite_devices() {
    sqlite(suite::devices);
}

#[test]
fn sqlite_device_key_in_use() {
    sqlite(suite::device_key_in_use);
}

#[test]
fn sqlite_device_owned_elsewhere() {
    sqlite(suite::device_owned_elsewhere);
}

#[test]
fn sqlite_revoke() {
    sqlite(suite::revoke);
}

#[test]
fn sqlite_revocations_paging() {
    sqlite(suite::revocations_paging);
}

#[test]
fn sqlite_delete_account() {
    sqlite(suite::delete_account);
}

#[test]
fn sqlite_time_range() {
    sqlite(suite::time_range);
}

#[test]
fn sqlite_reopen() {
    let file = SqliteFile::new();
    suite::reopen(&|| Box::new(file.open()));
}

#[test]
fn sqlite_concurrent_registration() {
    sqlite_pair(suite::concurrent_registration);
}

#[test]
fn sqlite_concurrent_revocation() {
    sqlite_pair(suite::concurrent_revocation);
}

#[test]
fn sqlite_concurrent_delete_and_revoke() {
    sqlite_pair(suite::concurrent_delete_and_revoke);
}

#[test]
fn sqlite_buddy_lists() {
    sqlite(suite::buddy_lists);
}

#[test]
fn sqlite_contact_requests() {
    sqlite(suite::contact_requests);
}

#[test]
fn sqlite_concurrent_buddy_lists() {
    sqlite_pair(suite::concurrent_buddy_lists);
}

#[test]
fn sqlite_open_fails_cleanly_on_a_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = SqliteStore::open(&dir.path().join("no/such/dir/accounts.db"))
        .expect_err("no parent directory");
    assert!(matches!(err, StoreError::Backend(_)));
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: a fresh schema per test in the server named by NATTER_TEST_POSTGRES.

fn postgres_url() -> Option<String> {
    match std::env::var("NATTER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("NATTER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "NATTER_REQUIRE_POSTGRES=1 but NATTER_TEST_POSTGRES is not set: \
                 the PostgreSQL tests must not be skipped"
            );
            println!("SKIPPED: NATTER_TEST_POSTGRES not set (make test sets it)");
            None
        }
    }
}

/// A schema of its own for one test, dropped when the test ends (pass or fail).
struct PgSchema {
    url: String,
    schema: String,
}

impl PgSchema {
    fn new(test: &str) -> Option<Self> {
        let url = postgres_url()?;
        let schema = format!("t_{test}_{}", std::process::id());
        let this = Self { url, schema };
        this.drop_schema();
        Some(this)
    }

    fn open(&self) -> PostgresStore {
        PostgresStore::connect_with_schema(&self.url, &self.schema).expect("connect to postgres")
    }

    fn drop_schema(&self) {
        let mut client =
            postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to postgres");
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .expect("drop schema");
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

fn postgres(test: &str, check: fn(&dyn AccountStore)) {
    let Some(pg) = PgSchema::new(test) else {
        return;
    };
    check(&pg.open());
}

fn postgres_pair(test: &str, check: fn(&dyn AccountStore, &dyn AccountStore)) {
    let Some(pg) = PgSchema::new(test) else {
        return;
    };
    check(&pg.open(), &pg.open());
}

#[test]
fn postgres_accounts() {
    postgres("accounts", suite::accounts);
}

#[test]
fn postgres_devices() {
    postgres("devices", suite::devices);
}

#[test]
fn postgres_device_key_in_use() {
    postgres("device_key_in_use", suite::device_key_in_use);
}

#[test]
fn postgres_device_owned_elsewhere() {
    postgres("device_owned_elsewhere", suite::device_owned_elsewhere);
}

#[test]
fn postgres_revoke() {
    postgres("revoke", suite::revoke);
}

#[test]
fn postgres_revocations_paging() {
    postgres("revocations_paging", suite::revocations_paging);
}

#[test]
fn postgres_delete_account() {
    postgres("delete_account", suite::delete_account);
}

#[test]
fn postgres_buddy_lists() {
    postgres("buddy_lists", suite::buddy_lists);
}

#[test]
fn postgres_contact_requests() {
    postgres("contact_requests", suite::contact_requests);
}

#[test]
fn postgres_concurrent_buddy_lists() {
    postgres_pair("concurrent_buddy_lists", suite::concurrent_buddy_lists);
}

#[test]
fn postgres_time_range() {
    postgres("time_range", suite::time_range);
}

#[test]
fn postgres_reopen() {
    let Some(pg) = PgSchema::new("reopen") else {
        return;
    };
    suite::reopen(&|| Box::new(pg.open()));
}

#[test]
fn postgres_concurrent_registration() {
    postgres_pair("concurrent_registration", suite::concurrent_registration);
}

#[test]
fn postgres_concurrent_revocation() {
    postgres_pair("concurrent_revocation", suite::concurrent_revocation);
}

#[test]
fn postgres_concurrent_delete_and_revoke() {
    postgres_pair(
        "concurrent_delete_and_revoke",
        suite::concurrent_delete_and_revoke,
    );
}

/// Two servers starting at once on an empty schema both come up (the advisory lock keeps
/// their `CREATE TABLE IF NOT EXISTS` from racing).
#[test]
fn postgres_concurrent_schema_creation() {
    let Some(url) = postgres_url() else {
        return;
    };
    for round in 0..10 {
        let pg = PgSchema {
            url: url.clone(),
            schema: format!("t_schema_race_{round}_{}", std::process::id()),
        };
        pg.drop_schema();
        let barrier = Barrier::new(2);
        let (a, b) = std::thread::scope(|scope| {
            let connect = || {
                barrier.wait();
                PostgresStore::connect_with_schema(&pg.url, &pg.schema)
            };
            let ta = scope.spawn(connect);
            let tb = scope.spawn(connect);
            (ta.join().expect("a"), tb.join().expect("b"))
        });
        let (a, b) = (a.expect("first server"), b.expect("second server"));
        a.create_account(&account("alice", "a", 1)).expect("create");
        assert!(b.account(&name("alice")).expect("lookup").is_some());
    }
}

/// The plain `connect` works too (tables in the default schema, `public`).
#[test]
fn postgres_connect_default_schema() {
    let Some(url) = postgres_url() else {
        return;
    };
    let store = PostgresStore::connect(&url).expect("connect");
    assert_eq!(
        store.account(&name("no-such-user-here")).expect("lookup"),
        None
    );
    assert!(matches!(
        PostgresStore::connect_with_schema(&url, "Bad-Name"),
        Err(StoreError::Backend(_))
    ));
    // Nothing listens on port 1: the message says why, without the password.
    match PostgresStore::connect("postgres://postgres:SECRETPW@127.0.0.1:1/natter") {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains("connecting"), "{msg}");
            assert!(!msg.contains("SECRETPW"), "{msg}");
        }
        other => panic!("expected a connection failure, got {other:?}"),
    }
}
