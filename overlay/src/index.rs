//! A super node's share of the global index: presence records it stores and answers with.
//!
//! Every record is verified when it is stored (certificate, device signature, revocation,
//! retention, skew: [`PresenceRecord::verify`]); when it is answered with, only what can change
//! is checked again (expiry and revocation: its bytes, and so its signatures, cannot). Per device only the record with the highest sequence
//! number is kept, so a replayed or stale record never replaces a fresh one. Records leave when
//! their retention (72 hours after the user's last login, configurable) runs out. Memory is
//! bounded by [`IndexStore::capacity`]; when full, the oldest record goes first.
//!
//! How records are spread over super nodes and found (the distributed part) builds on this.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use natter_core::crypto::{DeviceId, TrustedAuthorities, UnixTime, UserName};
use natter_core::overlay::{PresenceError, PresenceRecord, DEFAULT_RETENTION};

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// It did not verify.
    #[error(transparent)]
    Invalid(#[from] PresenceError),
    /// The store already has this device's record with the same or a higher sequence.
    #[error("stale record (sequence {offered} <= {held})")]
    Stale {
        /// The offered sequence.
        offered: u64,
        /// The sequence held.
        held: u64,
    },
}

/// The records a super node holds.
#[derive(Debug)]
pub struct IndexStore {
    trusted: TrustedAuthorities,
    retention: Duration,
    capacity: usize,
    by_user: BTreeMap<UserName, BTreeMap<DeviceId, PresenceRecord>>,
    /// Every record by signing time, oldest first: eviction and expiry without a scan.
    by_time: BTreeSet<(UnixTime, UserName, DeviceId)>,
    count: usize,
}

impl IndexStore {
    /// A store checking records against `trusted`, keeping them for `retention`, holding at
    /// most `capacity` records.
    pub fn new(trusted: TrustedAuthorities, retention: Duration, capacity: usize) -> Self {
        Self {
            trusted,
            retention,
            capacity,
            by_user: BTreeMap::new(),
            by_time: BTreeSet::new(),
            count: 0,
        }
    }

    /// A store with the default 72-hour retention and room for a million records.
    pub fn with_defaults(trusted: TrustedAuthorities) -> Self {
        Self::new(trusted, DEFAULT_RETENTION, 1_000_000)
    }

    /// Most records held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Verify and store `record` at wall-clock `now`.
    pub fn store(
        &mut self,
        record: PresenceRecord,
        now: UnixTime,
        is_revoked: impl Fn(DeviceId) -> bool,
    ) -> Result<(), StoreError> {
        let user = record.user().clone();
        let device = record.device();
        let held = self.by_user.get(&user).and_then(|d| d.get(&device));
        // Staleness first: it is cheap, and a copy of a held record (replicas hand records on
        // to each other) then costs no signature check.
        if let Some(held) = held {
            if !record.supersedes(held) {
                return Err(StoreError::Stale {
                    offered: record.sequence,
                    held: held.sequence,
                });
            }
        }
        record.verify(&self.trusted, now, self.retention, is_revoked)?;
        match held.map(|h| h.timestamp) {
            Some(old) => {
                self.by_time.remove(&(old, user.clone(), device));
            }
            None => {
                if self.count >= self.capacity {
                    self.evict_oldest();
                }
                self.count += 1;
            }
        }
        self.by_time
            .insert((record.timestamp, user.clone(), device));
        self.by_user.entry(user).or_default().insert(device, record);
        debug_assert_eq!(self.by_time.len(), self.count);
        Ok(())
    }

    fn evict_oldest(&mut self) {
        if let Some((_, user, device)) = self.by_time.first().cloned() {
            self.remove(&user, device);
        }
    }

    fn remove(&mut self, user: &UserName, device: DeviceId) {
        if let Some(devices) = self.by_user.get_mut(user) {
            if let Some(r) = devices.remove(&device) {
                self.count -= 1;
                self.by_time.remove(&(r.timestamp, user.clone(), device));
            }
            if devices.is_empty() {
                self.by_user.remove(user);
            }
        }
        debug_assert_eq!(self.by_time.len(), self.count);
    }

    /// Every valid record of `user` (one per device) at `now`: records that expired or whose
    /// device was revoked since are dropped. Signatures are not checked again: a record was
    /// verified when stored, against the same authorities, and its bytes never change (a
    /// replica answering a search or a new watch costs no signature check).
    pub fn lookup(
        &mut self,
        user: &UserName,
        now: UnixTime,
        is_revoked: impl Fn(DeviceId) -> bool,
    ) -> Vec<PresenceRecord> {
        let Some(devices) = self.by_user.get(user) else {
            return Vec::new();
        };
        let retention = self.retention.as_secs();
        let (good, bad): (Vec<_>, Vec<_>) = devices.values().cloned().partition(|r| {
            now.0.saturating_sub(r.timestamp.0) <= retention && !is_revoked(r.device())
        });
        for r in bad {
            self.remove(user, r.device());
        }
        good
    }

    /// The users with records here.
    pub fn users(&self) -> impl Iterator<Item = &UserName> {
        self.by_user.keys()
    }

    /// The records held for `user`, as stored (not verified again: for handing them on, since
    /// whoever receives them verifies them).
    pub fn held(&self, user: &UserName) -> Vec<PresenceRecord> {
        self.by_user
            .get(user)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the record held for `user`'s `device` says online (`None`: none held).
    pub fn online(&self, user: &UserName, device: DeviceId) -> Option<bool> {
        self.by_user
            .get(user)
            .and_then(|d| d.get(&device))
            .map(|r| r.online)
    }

    /// True when records of `user` are held.
    pub fn holds(&self, user: &UserName) -> bool {
        self.by_user.contains_key(user)
    }

    /// Forget every record of `user`.
    pub fn remove_user(&mut self, user: &UserName) {
        if let Some(devices) = self.by_user.remove(user) {
            self.count -= devices.len();
            for (device, r) in devices {
                self.by_time.remove(&(r.timestamp, user.clone(), device));
            }
        }
    }

    /// Drop every record past its retention at `now`.
    pub fn expire(&mut self, now: UnixTime) {
        let retention = self.retention.as_secs();
        while let Some((t, user, device)) = self.by_time.first().cloned() {
            if now.0.saturating_sub(t.0) <= retention {
                break;
            }
            self.remove(&user, device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::crypto::Capabilities;
    use natter_core::testkit::{TestNetwork, TEST_WALL};

    fn record(
        net: &TestNetwork,
        user: &str,
        seq: u64,
        at: UnixTime,
        online: bool,
    ) -> PresenceRecord {
        let id = net.identity(user);
        PresenceRecord::sign(
            &id.device,
            id.certificate,
            online,
            vec!["198.18.0.10:4000".parse().unwrap()],
            None,
            vec![],
            1,
            Capabilities::VOICE,
            seq,
            at,
        )
    }

    #[test]
    fn store_lookup_sequence_and_expiry() {
        let net = TestNetwork::new(1);
        let mut ix = IndexStore::with_defaults(net.trusted());
        let never = |_| false;
        ix.store(record(&net, "alice", 2, TEST_WALL, true), TEST_WALL, never)
            .unwrap();
        assert_eq!(
            ix.store(record(&net, "alice", 2, TEST_WALL, true), TEST_WALL, never),
            Err(StoreError::Stale {
                offered: 2,
                held: 2
            }),
            "a replay is refused"
        );
        assert!(ix
            .store(record(&net, "alice", 1, TEST_WALL, true), TEST_WALL, never)
            .is_err());
        // Logged out: a newer record says offline, with its time as last seen.
        let later = UnixTime(TEST_WALL.0 + 3600);
        ix.store(record(&net, "alice", 3, later, false), later, never)
            .unwrap();
        let alice = UserName::parse("alice").unwrap();
        let found = ix.lookup(&alice, later, never);
        assert_eq!(found.len(), 1);
        assert!(!found[0].online);
        assert_eq!(found[0].timestamp, later);
        // Still found 72 hours after the last login, not after.
        assert_eq!(
            ix.lookup(&alice, UnixTime(later.0 + 72 * 3600), never)
                .len(),
            1
        );
        assert!(ix
            .lookup(&alice, UnixTime(later.0 + 72 * 3600 + 1), never)
            .is_empty());
        assert!(ix.is_empty(), "dropped when found expired");
        // Expiry without lookups.
        ix.store(record(&net, "bob", 1, TEST_WALL, true), TEST_WALL, never)
            .unwrap();
        ix.expire(UnixTime(TEST_WALL.0 + 72 * 3600 + 1));
        assert!(ix.is_empty());
    }

    #[test]
    fn forged_revoked_and_capacity() {
        let net = TestNetwork::new(1);
        let mut ix = IndexStore::new(net.trusted(), DEFAULT_RETENTION, 2);
        let mut forged = record(&net, "alice", 1, TEST_WALL, true);
        forged.sequence = 99;
        assert!(matches!(
            ix.store(forged, TEST_WALL, |_| false),
            Err(StoreError::Invalid(PresenceError::BadSignature))
        ));
        let carol = record(&net, "carol", 1, TEST_WALL, true);
        let carol_device = carol.device();
        ix.store(carol, TEST_WALL, |_| false).unwrap();
        // Revoked after storing: not answered any more, and dropped.
        let carol_name = UserName::parse("carol").unwrap();
        assert!(ix
            .lookup(&carol_name, TEST_WALL, |d| d == carol_device)
            .is_empty());
        // Capacity: the oldest record makes room.
        ix.store(
            record(&net, "dave", 1, UnixTime(TEST_WALL.0 + 1), true),
            TEST_WALL,
            |_| false,
        )
        .unwrap();
        ix.store(
            record(&net, "erin", 1, UnixTime(TEST_WALL.0 + 2), true),
            TEST_WALL,
            |_| false,
        )
        .unwrap();
        ix.store(
            record(&net, "frank", 1, UnixTime(TEST_WALL.0 + 3), true),
            TEST_WALL,
            |_| false,
        )
        .unwrap();
        assert_eq!(ix.len(), 2);
        assert!(ix
            .lookup(&UserName::parse("dave").unwrap(), TEST_WALL, |_| false)
            .is_empty());
    }

    #[test]
    fn one_record_per_device() {
        let net = TestNetwork::new(1);
        let other_device = TestNetwork::new(1).identity("mallory");
        let mut ix = IndexStore::with_defaults(net.trusted());
        ix.store(record(&net, "alice", 1, TEST_WALL, true), TEST_WALL, |_| {
            false
        })
        .unwrap();
        // A second device of alice: certify mallory's keys under alice's name.
        let cert = net.authority().certify(
            &UserName::parse("alice").unwrap(),
            other_device.device.dh_public(),
            other_device.device.signing_public(),
            UnixTime(TEST_WALL.0 - 60),
            UnixTime(TEST_WALL.0 + 3600),
        );
        let second = PresenceRecord::sign(
            &other_device.device,
            cert,
            true,
            vec![],
            None,
            vec![],
            0,
            Capabilities::VOICE,
            1,
            TEST_WALL,
        );
        ix.store(second, TEST_WALL, |_| false).unwrap();
        assert_eq!(
            ix.lookup(&UserName::parse("alice").unwrap(), TEST_WALL, |_| false)
                .len(),
            2
        );
    }
}
