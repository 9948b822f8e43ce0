//! The buddy list as a state that merges: the user's contacts, the nicknames and groups the
//! user gave them, and the users the user blocked.
//!
//! Every field of every entry is a last-writer-wins register ([`Lww`]) stamped by a hybrid
//! logical clock ([`Stamp`]: the wall time in milliseconds, raised past every stamp this
//! device has seen, and the device as the tie break). Two lists merge field by field, each
//! keeping the later stamp. The merge is commutative, associative and idempotent (a
//! state-based CRDT), so devices that exchange their lists in any order, any number of times,
//! end with the same list, and:
//!
//! - edits of different contacts or different fields never conflict: one device renames bob
//!   while another, offline, adds carol, and both edits stay;
//! - two edits of one field keep the later one (by the clock, not by who synchronised last);
//! - removing a contact keeps its entry with a stamped "not a contact" (a tombstone), so an
//!   older copy of the list cannot bring the contact back.
//!
//! Whole-list last-writer-wins, which loses one device's edits whenever two devices edit
//! offline, is what this replaces.
//!
//! Sans-IO: the time comes in as an argument ([`BuddyList::set_contact`] and the other edits
//! take `now_ms`, the wall time in milliseconds since the Unix epoch).
//!
//! ## Encoding
//!
//! [`BuddyList::encode`] writes the entries only (not the device or its clock), in name
//! order, and [`BuddyList::decode`] accepts exactly that (names and group labels strictly
//! increasing), so one list has one encoding: what a backup signs.
//!
//! ```text
//! u8 format (2) ‖ u16 devices ‖ 16-byte device id* ‖ u32 entries ‖ entry*
//! entry    = u8 name length ‖ name ‖ contact ‖ blocked ‖ nickname ‖ display name ‖
//!            u8 groups ‖ (u8 label length ‖ label ‖ member)*
//! contact, blocked, member = stamp ‖ u8 (0 or 1)
//! nickname, display name   = stamp ‖ u16 length ‖ UTF-8
//! stamp    = u16 device index ‖ u64 milliseconds, or 0xFFFF alone: never set
//! ```
//!
//! (big-endian). The devices that made the stamps are listed once, in order, each used at
//! least once: a contact with a nickname takes about 46 bytes
//! (`tests::a_thousand_contacts_fit_a_frame`), so about 1,400 fit a 64 KiB frame.
//!
//! Local edits stop at [`MAX_ENTRIES`] entries and [`MAX_GROUPS`] groups per contact; a merge
//! never drops anything (dropping would break convergence), so a merged list may hold more:
//! the encoding holds up to [`DECODE_FACTOR`] times the entries, 255 groups per contact and
//! 4,096 devices, and [`BuddyList::encode`] refuses a list beyond them
//! ([`ListError::TooBig`]) rather than write one the decoder would refuse. The decoder also
//! refuses what no edit makes: a field never set that holds a value, a group membership or
//! an entry with nothing set, and a stamp more than [`MAX_AHEAD_MS`] ahead of the reader's
//! clock (one such stamp would otherwise pin every device's clock far ahead).

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};

use crate::crypto::{DeviceId, UserName};
use crate::wire::{DecodeError, Reader};

/// Most entries a device adds to its list (contacts, removed contacts and blocked users).
pub const MAX_ENTRIES: usize = 10_000;
/// Longest nickname and display name, bytes of UTF-8.
pub const MAX_NAME_TEXT: usize = 128;
/// Most groups one contact is in.
pub const MAX_GROUPS: usize = 32;
/// Longest group label, bytes of UTF-8.
pub const MAX_LABEL: usize = 64;
/// A decoded (merged) list may hold this many times the local limit of entries.
pub const DECODE_FACTOR: usize = 4;
/// How far ahead of the reader's clock a stamp may be, ms (a day of clock error).
pub const MAX_AHEAD_MS: u64 = 86_400_000;
/// Most groups one entry may hold in the encoding (merged lists included).
const MAX_GROUPS_ENCODED: usize = u8::MAX as usize;
/// The encoding's format byte.
const FORMAT: u8 = 2;
/// The stamp index meaning "never set" ([`Stamp::ZERO`]).
const NEVER: u16 = u16::MAX;
/// Most devices in one encoded list (their indices stay far below [`NEVER`]).
const MAX_DEVICES: usize = 4096;

/// When an edit was made: the hybrid logical clock's milliseconds, then the device that made
/// it. Ordered by time, then device: two devices never make equal stamps, and one device
/// never makes the same stamp twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, raised past every stamp the device had seen.
    pub ms: u64,
    /// The device that made the edit.
    pub device: DeviceId,
}

impl Stamp {
    /// Before every edit: the stamp of a field never set.
    pub const ZERO: Stamp = Stamp {
        ms: 0,
        device: DeviceId([0; 16]),
    };

    fn encode(&self, devices: &BTreeMap<DeviceId, u16>, out: &mut BytesMut) {
        if *self == Stamp::ZERO {
            out.put_u16(NEVER);
        } else {
            out.put_u16(devices[&self.device]);
            out.put_u64(self.ms);
        }
    }

    fn decode(r: &mut Reader<'_>, devices: &mut DeviceTable) -> Result<Self, DecodeError> {
        let i = r.u16()?;
        if i == NEVER {
            return Ok(Stamp::ZERO);
        }
        let device = devices.take(i)?;
        let stamp = Stamp {
            ms: r.u64()?,
            device,
        };
        if stamp == Stamp::ZERO {
            // Would have been written as "never set".
            return Err(DecodeError::Invalid("stamp"));
        }
        if stamp.ms > devices.latest_ms {
            return Err(DecodeError::Invalid("stamp ahead of the clock"));
        }
        Ok(stamp)
    }
}

/// The devices of an encoded list, as the decoder reads them: every one must be used.
struct DeviceTable {
    ids: Vec<DeviceId>,
    used: Vec<bool>,
    /// The latest stamp accepted (the reader's clock plus [`MAX_AHEAD_MS`]).
    latest_ms: u64,
}

impl DeviceTable {
    fn take(&mut self, i: u16) -> Result<DeviceId, DecodeError> {
        let i = usize::from(i);
        let id = *self
            .ids
            .get(i)
            .ok_or(DecodeError::Invalid("device index"))?;
        self.used[i] = true;
        Ok(id)
    }
}

/// A last-writer-wins register: a value and the stamp of the edit that set it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lww<T> {
    value: T,
    stamp: Stamp,
}

impl Default for Stamp {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<T: Clone + Ord> Lww<T> {
    /// The value.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// The stamp of the edit that set it ([`Stamp::ZERO`]: never set).
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Take `value` if `stamp` is later than the current one. Equal stamps (never made by
    /// honest devices) keep the greater value, so that even a forged pair merges the same
    /// way on every device. Returns whether the value or the stamp changed.
    fn offer(&mut self, value: &T, stamp: Stamp) -> bool {
        if (stamp, value) > (self.stamp, &self.value) {
            self.value = value.clone();
            self.stamp = stamp;
            true
        } else {
            false
        }
    }
}

/// One user in the list. Every field merges on its own (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    contact: Lww<bool>,
    blocked: Lww<bool>,
    nickname: Lww<String>,
    display_name: Lww<String>,
    groups: BTreeMap<String, Lww<bool>>,
}

impl Entry {
    /// Whether the user is a contact.
    pub fn is_contact(&self) -> bool {
        *self.contact.get()
    }

    /// Whether the user is blocked.
    pub fn is_blocked(&self) -> bool {
        *self.blocked.get()
    }

    /// The nickname the user gave this contact (empty: none).
    pub fn nickname(&self) -> &str {
        self.nickname.get()
    }

    /// The contact's own display name, as last learnt (empty: not known).
    pub fn display_name(&self) -> &str {
        self.display_name.get()
    }

    /// The groups the contact is in, in label order.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .filter(|(_, member)| *member.get())
            .map(|(label, _)| label.as_str())
    }

    /// Merge `other` into this entry; returns whether anything changed.
    fn merge(&mut self, other: &Entry) -> bool {
        let mut changed = self
            .contact
            .offer(&other.contact.value, other.contact.stamp);
        changed |= self
            .blocked
            .offer(&other.blocked.value, other.blocked.stamp);
        changed |= self
            .nickname
            .offer(&other.nickname.value, other.nickname.stamp);
        changed |= self
            .display_name
            .offer(&other.display_name.value, other.display_name.stamp);
        for (label, member) in &other.groups {
            changed |= self
                .groups
                .entry(label.clone())
                .or_default()
                .offer(&member.value, member.stamp);
        }
        changed
    }

    /// The latest stamp of any field.
    fn latest(&self) -> Stamp {
        let mut latest = self
            .contact
            .stamp
            .max(self.blocked.stamp)
            .max(self.nickname.stamp)
            .max(self.display_name.stamp);
        for member in self.groups.values() {
            latest = latest.max(member.stamp);
        }
        latest
    }

    /// Every stamp of the entry.
    fn stamps(&self) -> impl Iterator<Item = Stamp> + '_ {
        [
            self.contact.stamp,
            self.blocked.stamp,
            self.nickname.stamp,
            self.display_name.stamp,
        ]
        .into_iter()
        .chain(self.groups.values().map(|m| m.stamp))
    }

    fn encode(&self, devices: &BTreeMap<DeviceId, u16>, out: &mut BytesMut) {
        encode_flag(&self.contact, devices, out);
        encode_flag(&self.blocked, devices, out);
        encode_text(&self.nickname, devices, out);
        encode_text(&self.display_name, devices, out);
        // At most 255 groups ([`BuddyList::encode`] checked).
        out.put_u8(self.groups.len() as u8);
        for (label, member) in &self.groups {
            out.put_u8(label.len() as u8);
            out.put_slice(label.as_bytes());
            encode_flag(member, devices, out);
        }
    }

    fn decode(r: &mut Reader<'_>, devices: &mut DeviceTable) -> Result<Self, DecodeError> {
        let contact = decode_flag(r, devices)?;
        let blocked = decode_flag(r, devices)?;
        let nickname = decode_text(r, devices, "nickname")?;
        let display_name = decode_text(r, devices, "display name")?;
        let count = usize::from(r.u8()?);
        let mut groups = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let label = std::str::from_utf8(r.bytes_u8("group label", MAX_LABEL)?)
                .map_err(|_| DecodeError::Invalid("group label"))?;
            if label.is_empty() || last.as_deref().is_some_and(|l| l >= label) {
                return Err(DecodeError::Invalid("group order"));
            }
            last = Some(label.to_owned());
            let member = decode_flag(r, devices)?;
            if member.stamp == Stamp::ZERO {
                // A membership never set is no membership: it is not written.
                return Err(DecodeError::Invalid("group never set"));
            }
            groups.insert(label.to_owned(), member);
        }
        let entry = Self {
            contact,
            blocked,
            nickname,
            display_name,
            groups,
        };
        if entry.latest() == Stamp::ZERO {
            // An entry with nothing set is no entry.
            return Err(DecodeError::Invalid("empty entry"));
        }
        Ok(entry)
    }
}

fn encode_flag(reg: &Lww<bool>, devices: &BTreeMap<DeviceId, u16>, out: &mut BytesMut) {
    reg.stamp.encode(devices, out);
    out.put_u8(u8::from(reg.value));
}

fn decode_flag(r: &mut Reader<'_>, devices: &mut DeviceTable) -> Result<Lww<bool>, DecodeError> {
    let stamp = Stamp::decode(r, devices)?;
    let value = r.bool("flag")?;
    if stamp == Stamp::ZERO && value {
        // A field never set holds its default.
        return Err(DecodeError::Invalid("flag never set"));
    }
    Ok(Lww { value, stamp })
}

fn encode_text(reg: &Lww<String>, devices: &BTreeMap<DeviceId, u16>, out: &mut BytesMut) {
    reg.stamp.encode(devices, out);
    out.put_u16(reg.value.len() as u16);
    out.put_slice(reg.value.as_bytes());
}

fn decode_text(
    r: &mut Reader<'_>,
    devices: &mut DeviceTable,
    what: &'static str,
) -> Result<Lww<String>, DecodeError> {
    let stamp = Stamp::decode(r, devices)?;
    let value = std::str::from_utf8(r.bytes_u16(what, MAX_NAME_TEXT)?)
        .map_err(|_| DecodeError::Invalid(what))?
        .to_owned();
    if stamp == Stamp::ZERO && !value.is_empty() {
        return Err(DecodeError::Invalid(what));
    }
    Ok(Lww { value, stamp })
}

/// Why an edit of the list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// The list holds [`MAX_ENTRIES`] entries already.
    #[error("the buddy list is full ({MAX_ENTRIES} entries)")]
    Full,
    /// A nickname, display name or group label is too long.
    #[error("{what} too long: {len} bytes > {max}")]
    TooLong {
        /// Which text.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The contact is in [`MAX_GROUPS`] groups already.
    #[error("a contact is in at most {MAX_GROUPS} groups")]
    TooManyGroups,
    /// A group label is empty.
    #[error("a group label cannot be empty")]
    EmptyLabel,
    /// The (merged) list holds more than its encoding can: too many entries, groups of one
    /// entry, or devices.
    #[error("the buddy list holds {len} {what}, more than the {max} its encoding holds")]
    TooBig {
        /// What there is too much of.
        what: &'static str,
        /// How many there are.
        len: usize,
        /// The most the encoding holds.
        max: usize,
    },
}

/// The buddy list of one user, as one of the user's devices holds it (see the
/// [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuddyList {
    device: DeviceId,
    /// The clock: the latest stamp's milliseconds this device made or saw.
    clock: u64,
    entries: BTreeMap<UserName, Entry>,
}

impl BuddyList {
    /// An empty list edited by `device`.
    pub fn new(device: DeviceId) -> Self {
        Self {
            device,
            clock: 0,
            entries: BTreeMap::new(),
        }
    }

    /// The device that stamps this list's edits.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The latest stamp's milliseconds in the list (0 for none): the clock its next edit
    /// goes past.
    pub fn latest_ms(&self) -> u64 {
        self.clock
    }

    /// The entry of `user`, if the list has one (a contact, a removed contact or a blocked
    /// user).
    pub fn get(&self, user: &UserName) -> Option<&Entry> {
        self.entries.get(user)
    }

    /// Every entry, in name order (removed contacts included: see [`Entry::is_contact`]).
    pub fn entries(&self) -> impl Iterator<Item = (&UserName, &Entry)> {
        self.entries.iter()
    }

    /// The contacts, in name order.
    pub fn contacts(&self) -> impl Iterator<Item = (&UserName, &Entry)> {
        self.entries.iter().filter(|(_, e)| e.is_contact())
    }

    /// Whether `user` is a contact.
    pub fn is_contact(&self, user: &UserName) -> bool {
        self.get(user).is_some_and(Entry::is_contact)
    }

    /// Whether `user` is blocked.
    pub fn is_blocked(&self, user: &UserName) -> bool {
        self.get(user).is_some_and(Entry::is_blocked)
    }

    /// Make `user` a contact (`true`) or remove them (`false`). Returns whether the list
    /// changed.
    pub fn set_contact(
        &mut self,
        user: &UserName,
        contact: bool,
        now_ms: u64,
    ) -> Result<bool, ListError> {
        self.edit(user, now_ms, !contact, |e, stamp| {
            Ok(e.contact.offer(&contact, stamp))
        })
    }

    /// Block or unblock `user`.
    pub fn set_blocked(
        &mut self,
        user: &UserName,
        blocked: bool,
        now_ms: u64,
    ) -> Result<bool, ListError> {
        self.edit(user, now_ms, !blocked, |e, stamp| {
            Ok(e.blocked.offer(&blocked, stamp))
        })
    }

    /// Give `user` a nickname (empty: none), at most [`MAX_NAME_TEXT`] bytes.
    pub fn set_nickname(
        &mut self,
        user: &UserName,
        nickname: &str,
        now_ms: u64,
    ) -> Result<bool, ListError> {
        check_text("nickname", nickname, MAX_NAME_TEXT)?;
        let clears = nickname.is_empty();
        let nickname = nickname.to_owned();
        self.edit(user, now_ms, clears, |e, stamp| {
            Ok(e.nickname.offer(&nickname, stamp))
        })
    }

    /// Record `user`'s own display name (empty: not known), at most [`MAX_NAME_TEXT`] bytes.
    pub fn set_display_name(
        &mut self,
        user: &UserName,
        name: &str,
        now_ms: u64,
    ) -> Result<bool, ListError> {
        check_text("display name", name, MAX_NAME_TEXT)?;
        let clears = name.is_empty();
        let name = name.to_owned();
        self.edit(user, now_ms, clears, |e, stamp| {
            Ok(e.display_name.offer(&name, stamp))
        })
    }

    /// Put `user` in the group `label` (`true`) or take them out (`false`).
    pub fn set_group(
        &mut self,
        user: &UserName,
        label: &str,
        member: bool,
        now_ms: u64,
    ) -> Result<bool, ListError> {
        if label.is_empty() {
            return Err(ListError::EmptyLabel);
        }
        check_text("group label", label, MAX_LABEL)?;
        self.edit(user, now_ms, !member, |e, stamp| {
            if !e.groups.contains_key(label) {
                if !member {
                    // Out of a group it was never in: nothing to record.
                    return Ok(false);
                }
                if e.groups.len() >= MAX_GROUPS {
                    return Err(ListError::TooManyGroups);
                }
            }
            Ok(e.groups
                .entry(label.to_owned())
                .or_default()
                .offer(&member, stamp))
        })
    }

    /// Merge another copy of the list (from another device, or a backup) into this one:
    /// every field keeps the later edit. Returns whether this list changed.
    pub fn merge(&mut self, other: &BuddyList) -> bool {
        let mut changed = false;
        for (user, theirs) in &other.entries {
            self.clock = self.clock.max(theirs.latest().ms);
            changed |= self.entries.entry(user.clone()).or_default().merge(theirs);
        }
        changed
    }

    /// The entries, encoded (see the [module documentation](self)).
    ///
    /// # Errors
    /// [`ListError::TooBig`] when a merged list holds more than the encoding can.
    pub fn encode(&self) -> Result<Vec<u8>, ListError> {
        let too_big = |what, len, max| {
            if len > max {
                Err(ListError::TooBig { what, len, max })
            } else {
                Ok(())
            }
        };
        too_big("entries", self.entries.len(), MAX_ENTRIES * DECODE_FACTOR)?;
        for entry in self.entries.values() {
            too_big("groups", entry.groups.len(), MAX_GROUPS_ENCODED)?;
        }
        let mut devices: BTreeMap<DeviceId, u16> = self
            .entries
            .values()
            .flat_map(Entry::stamps)
            .filter(|s| *s != Stamp::ZERO)
            .map(|s| (s.device, 0))
            .collect();
        // More devices than an index holds would take years of new installs.
        too_big("devices", devices.len(), MAX_DEVICES)?;
        let mut out = BytesMut::new();
        out.put_u8(FORMAT);
        out.put_u16(devices.len() as u16);
        for (i, (id, index)) in devices.iter_mut().enumerate() {
            *index = i as u16;
            out.put_slice(&id.0);
        }
        out.put_u32(self.entries.len() as u32);
        for (user, entry) in &self.entries {
            let name = user.as_str();
            out.put_u8(name.len() as u8);
            out.put_slice(name.as_bytes());
            entry.encode(&devices, &mut out);
        }
        Ok(out.to_vec())
    }

    /// Decode what [`BuddyList::encode`] wrote, as the list of `device` (whose clock starts
    /// past every stamp in it), read at `now_ms` (the wall time, ms since the Unix epoch:
    /// no stamp may be more than [`MAX_AHEAD_MS`] past it).
    pub fn decode(buf: &[u8], device: DeviceId, now_ms: u64) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.u8()? != FORMAT {
            return Err(DecodeError::Invalid("buddy list format"));
        }
        let n = usize::from(r.u16()?);
        if n > MAX_DEVICES {
            return Err(DecodeError::TooLong {
                what: "devices",
                len: n,
                max: MAX_DEVICES,
            });
        }
        let mut devices = DeviceTable {
            ids: Vec::with_capacity(n),
            used: vec![false; n],
            latest_ms: now_ms.saturating_add(MAX_AHEAD_MS),
        };
        for _ in 0..n {
            let id = DeviceId(r.array()?);
            if devices.ids.last().is_some_and(|last| *last >= id) {
                return Err(DecodeError::Invalid("device order"));
            }
            devices.ids.push(id);
        }
        let count = r.u32()? as usize;
        let max = MAX_ENTRIES * DECODE_FACTOR;
        if count > max {
            return Err(DecodeError::TooLong {
                what: "buddy list",
                len: count,
                max,
            });
        }
        let mut list = Self::new(device);
        for _ in 0..count {
            let raw = std::str::from_utf8(r.bytes_u8("user name", UserName::MAX_LEN)?)
                .map_err(|_| DecodeError::Invalid("user name"))?;
            let user = UserName::parse(raw).map_err(|_| DecodeError::Invalid("user name"))?;
            // Canonical: lower case, strictly increasing.
            if user.as_str() != raw
                || list
                    .entries
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= user)
            {
                return Err(DecodeError::Invalid("entry order"));
            }
            let entry = Entry::decode(&mut r, &mut devices)?;
            list.clock = list.clock.max(entry.latest().ms);
            list.entries.insert(user, entry);
        }
        r.finish()?;
        if devices.used.contains(&false) {
            return Err(DecodeError::Invalid("unused device"));
        }
        Ok(list)
    }

    /// Apply one local edit to `user`'s entry (made if missing, within [`MAX_ENTRIES`]) with
    /// the next stamp of this device's clock. An edit that `clears` a field of a user not in
    /// the list (removing or unblocking a stranger) changes nothing.
    fn edit(
        &mut self,
        user: &UserName,
        now_ms: u64,
        clears: bool,
        f: impl FnOnce(&mut Entry, Stamp) -> Result<bool, ListError>,
    ) -> Result<bool, ListError> {
        if !self.entries.contains_key(user) {
            if clears {
                return Ok(false);
            }
            if self.entries.len() >= MAX_ENTRIES {
                return Err(ListError::Full);
            }
        }
        // The hybrid logical clock: the wall time, but always past every stamp seen (a
        // device whose clock is behind still makes edits that win over what it saw).
        let ms = now_ms.max(self.clock.saturating_add(1));
        let stamp = Stamp {
            ms,
            device: self.device,
        };
        let entry = self.entries.entry(user.clone()).or_default();
        let changed = f(entry, stamp)?;
        if changed {
            self.clock = ms;
        }
        Ok(changed)
    }
}

fn check_text(what: &'static str, text: &str, max: usize) -> Result<(), ListError> {
    if text.len() > max {
        return Err(ListError::TooLong {
            what,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        UserName::parse(name).unwrap()
    }

    fn device(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    #[test]
    fn edits_on_two_devices_offline_both_survive() {
        let mut laptop = BuddyList::new(device(1));
        laptop.set_contact(&user("bob"), true, 1_000).unwrap();
        let mut phone = laptop.clone();
        phone.device = device(2);
        // Offline, each edits: the laptop renames bob and files him under "work"; the phone
        // adds carol and blocks mallory.
        laptop.set_nickname(&user("bob"), "Bobby", 2_000).unwrap();
        laptop.set_group(&user("bob"), "work", true, 2_001).unwrap();
        phone.set_contact(&user("carol"), true, 2_000).unwrap();
        phone.set_blocked(&user("mallory"), true, 2_002).unwrap();
        let mut a = laptop.clone();
        a.merge(&phone);
        let mut b = phone.clone();
        b.merge(&laptop);
        assert_eq!(a.encode().unwrap(), b.encode().unwrap());
        assert_eq!(a.get(&user("bob")).unwrap().nickname(), "Bobby");
        assert_eq!(
            a.get(&user("bob")).unwrap().groups().collect::<Vec<_>>(),
            ["work"]
        );
        assert!(a.is_contact(&user("carol")));
        assert!(a.is_blocked(&user("mallory")));
        assert!(!a.is_contact(&user("mallory")));
    }

    #[test]
    fn a_removal_is_not_undone_by_an_older_copy() {
        let mut a = BuddyList::new(device(1));
        a.set_contact(&user("bob"), true, 1_000).unwrap();
        let old = a.clone();
        a.set_contact(&user("bob"), false, 2_000).unwrap();
        assert!(!a.merge(&old));
        assert!(!a.is_contact(&user("bob")));
        // A device whose clock is behind still edits after what it saw.
        let mut late = BuddyList::new(device(2));
        late.merge(&a);
        late.set_contact(&user("bob"), true, 500).unwrap();
        a.merge(&late);
        assert!(a.is_contact(&user("bob")));
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut l = BuddyList::new(device(1));
        let bob = user("bob");
        assert!(matches!(
            l.set_nickname(&bob, &"x".repeat(MAX_NAME_TEXT + 1), 1),
            Err(ListError::TooLong { .. })
        ));
        assert_eq!(l.set_group(&bob, "", true, 1), Err(ListError::EmptyLabel));
        for g in 0..MAX_GROUPS {
            l.set_group(&bob, &format!("g{g:02}"), true, 1).unwrap();
        }
        assert_eq!(
            l.set_group(&bob, "one-more", true, 1),
            Err(ListError::TooManyGroups)
        );
        // Taking a contact out of a group it is in is always possible.
        assert_eq!(l.set_group(&bob, "g00", false, 1), Ok(true));
        // Removing a stranger changes nothing and keeps no entry.
        assert_eq!(l.set_contact(&user("stranger"), false, 1), Ok(false));
        assert!(l.get(&user("stranger")).is_none());
    }

    #[test]
    fn encoding_is_canonical() {
        let mut l = BuddyList::new(device(1));
        l.set_contact(&user("bob"), true, 1).unwrap();
        l.set_contact(&user("amy"), true, 2).unwrap();
        let bytes = l.encode().unwrap();
        let back = BuddyList::decode(&bytes, device(1), u64::MAX).unwrap();
        assert_eq!(back.encode().unwrap(), bytes);
        // Swapping the two entries (of the same length) breaks the order. The header: the
        // format, one device, the entry count.
        let head = 1 + 2 + 16 + 4;
        let entry = (bytes.len() - head) / 2;
        let mut swapped = bytes[..head].to_vec();
        swapped.extend_from_slice(&bytes[head + entry..]);
        swapped.extend_from_slice(&bytes[head..head + entry]);
        assert_eq!(
            BuddyList::decode(&swapped, device(1), u64::MAX),
            Err(DecodeError::Invalid("entry order"))
        );
        // Upper case is not the canonical form of a name.
        let mut upper = bytes.clone();
        upper[head + 1] = b'A';
        assert!(BuddyList::decode(&upper, device(1), u64::MAX).is_err());
        // A device listed but never used is another encoding of the same list.
        let mut extra = vec![FORMAT, 0, 2];
        extra.extend_from_slice(&[0; 16]);
        extra.extend_from_slice(&bytes[3..]);
        assert_eq!(
            BuddyList::decode(&extra, device(1), u64::MAX),
            Err(DecodeError::Invalid("unused device"))
        );
    }

    #[test]
    fn states_no_edit_makes_are_refused() {
        let mut l = BuddyList::new(device(1));
        // Leaving a group never joined records nothing.
        assert_eq!(l.set_group(&user("bob"), "work", false, 5), Ok(false));
        l.set_contact(&user("bob"), true, 5).unwrap();
        assert_eq!(l.set_group(&user("bob"), "work", false, 6), Ok(false));
        let bytes = l.encode().unwrap();
        assert!(BuddyList::decode(&bytes, device(1), 0).is_ok());
        // The header (format, one device, count), the name, then `contact` (index, ms,
        // value) and `blocked`, never set: 0xFFFF and its value.
        let blocked = 1 + 2 + 16 + 4 + 1 + 3 + (2 + 8 + 1);
        assert_eq!(&bytes[blocked..blocked + 3], &[0xFF, 0xFF, 0]);
        let mut set = bytes.clone();
        set[blocked + 2] = 1;
        assert_eq!(
            BuddyList::decode(&set, device(1), 0),
            Err(DecodeError::Invalid("flag never set"))
        );
        // A stamp far ahead of the reader's clock would pin every clock after it.
        let mut ahead = BuddyList::new(device(1));
        ahead
            .set_contact(&user("bob"), true, 10 * MAX_AHEAD_MS)
            .unwrap();
        assert_eq!(
            BuddyList::decode(&ahead.encode().unwrap(), device(1), 0),
            Err(DecodeError::Invalid("stamp ahead of the clock"))
        );
    }

    #[test]
    fn a_merged_list_beyond_the_encoding_is_an_error() {
        // Nine devices, offline, each put bob in 32 groups of their own: 288 in all, more
        // than an entry's 255.
        let mut merged = BuddyList::new(device(0));
        for d in 1..=9u8 {
            let mut l = BuddyList::new(device(d));
            for g in 0..MAX_GROUPS {
                l.set_group(&user("bob"), &format!("d{d}-g{g:02}"), true, 10)
                    .unwrap();
            }
            merged.merge(&l);
        }
        assert_eq!(
            merged.encode(),
            Err(ListError::TooBig {
                what: "groups",
                len: 288,
                max: 255
            })
        );
    }

    #[test]
    fn a_thousand_contacts_fit_a_frame() {
        let mut l = BuddyList::new(device(1));
        for i in 0..1_000 {
            let u = user(&format!("contact{i}"));
            l.set_contact(&u, true, 1_000 + i).unwrap();
            l.set_nickname(&u, "Nick", 2_000 + i).unwrap();
        }
        let len = l.encode().unwrap().len();
        eprintln!("1,000 contacts with nicknames: {len} bytes");
        assert!(len < 60_000, "{len} bytes");
    }
}
